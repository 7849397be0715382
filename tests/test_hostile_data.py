"""Hostile data files (CIFAR-10 pickles, IDX, archives): each is built here (tiny on disk),
loaded in a child process under an address-space cap, and must end in one ``error:`` line
naming the file and the problem, exit status 2, bounded memory and time (docs/security.md,
"The rules")."""
from __future__ import annotations

import gzip
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from hostile import assert_one_line_error, run_cli
from hostile_files import (
    GIB,
    GTSRB_IMAGE,
    MIB,
    ROOT,
    N,
    _py2,
    _Zeros,
    array_ops,
    batch_pickle,
    gzip_bomb,
    idx_header,
    load,
    patch_zip_sizes,
    png,
    ppm,
    tar_member_header,
)
from test_data_cifar10 import write_batches
from test_data_gtsrb import make_tree as make_gtsrb_tree
from test_data_gtsrb import make_zip as make_gtsrb_zip
from test_data_idx import write_set

# ---------------------------------------------------------------- CIFAR-10 pickles



def _cifar_with(tmp_path: Path, test_batch: bytes) -> Path:
    """A valid tiny batches folder whose test_batch is ``test_batch``."""
    return write_batches(tmp_path / "cifar", {"test_batch": test_batch})


def test_cifar_object_dtype_pickle_is_refused_not_a_segfault(tmp_path: Path) -> None:
    # labels as an object array over attacker bytes (dtype flags 0: no list pickling), which
    # numpy's own reconstructor fills with these "pointers" and converting the labels follows
    pointers = struct.pack("<4Q", *[0x4141414141414141] * 4)
    evil = batch_pickle(array_ops((N, 3072), bytes(N * 3072)), array_ops((4,), pointers, b"O8", 0, 8))
    out = load("cifar10", _cifar_with(tmp_path, evil))
    assert_one_line_error(out, "test_batch", "refused numpy dtype", "only uint8")


def test_cifar_huge_declared_array(tmp_path: Path) -> None:
    evil = batch_pickle(array_ops((1_500_000, 3072), bytes(16)), b"]")  # 4.6 GB claimed, 16 bytes held
    out = load("cifar10", _cifar_with(tmp_path, evil))
    assert_one_line_error(out, "test_batch", "declares shape (1500000, 3072) (4608000000 bytes)", "holds 16 bytes")


@pytest.mark.parametrize("ops, needle", [
    (b"\x80\x02]r\xff\xff\xff\x7f.", "memo index 2147483647"),           # LONG_BINPUT: a 16 GiB memo
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.", "corrupt pickle"),  # BINBYTES8 of 1 TiB
    (b"\x80\x02G?\xf0\x00\x00\x00\x00\x00\x00.", "pickle opcode BINFLOAT"),
])
def test_cifar_pickle_opcodes_cannot_allocate(tmp_path: Path, ops: bytes, needle: str) -> None:
    out = load("cifar10", _cifar_with(tmp_path, ops))
    assert_one_line_error(out, "test_batch", needle, max_seconds=15)


@pytest.mark.parametrize("function, needle", [(b"cposix\nsystem\n", "posix.system"),
                                              (b"c__builtin__\neval\n", "__builtin__.eval")])
def test_cifar_code_execution_refused_in_child(tmp_path: Path, function: bytes, needle: str) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if b"system" in function else f"__import__('os').system('touch {marker}')"
    out = load("cifar10", _cifar_with(tmp_path, b"\x80\x02" + function + b"(" + _py2(command.encode()) + b"tR."))
    assert_one_line_error(out, "test_batch", "refused to unpickle", needle)
    assert not marker.exists()


def test_cifar_archive_member_of_huge_declared_size(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with gzip.open(data / "cifar-10-python.tar.gz", "wb") as f:
        f.write(tar_member_header("cifar-10-batches-py/test_batch", 3 * GIB) + bytes(1024))
    out = load("cifar10", data)
    assert_one_line_error(out, "cifar-10-python.tar.gz:cifar-10-batches-py/test_batch", "member declares 3072 MiB",
                          "POISONLAB_MAX_FILE_MB")


# ---------------------------------------------------------------- IDX


def test_idx_gzip_bomb_of_zeros(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist")
    gzip_bomb(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", b"", GIB)
    out = load("mnist", tmp_path / "mnist")
    assert_one_line_error(out, "train-images-idx3-ubyte.gz", "wrong IDX magic number 0x00000000")


def test_idx_gzip_bomb_after_a_valid_header(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist")
    gzip_bomb(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", idx_header(60000, 28, 28), GIB)
    out = load("mnist", tmp_path / "mnist")
    assert_one_line_error(out, "train-images-idx3-ubyte.gz", "1048576+ bytes after the IDX data")


def test_idx_gzip_header_over_the_cap_is_refused_before_inflating(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist")
    gzip_bomb(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", idx_header(1_000_000, 28, 28), GIB)
    out = load("mnist", tmp_path / "mnist", env={"POISONLAB_MAX_FILE_MB": "100"})
    assert_one_line_error(out, "train-images-idx3-ubyte.gz", "declares 1000000x28x28 = 784000016 bytes",
                          "over the 100 MiB size cap")
    assert out.seconds < 10


def test_idx_dims_overflowing_int64(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte").write_bytes(idx_header(2**32 - 1, 2**32 - 1, 2**32 - 1))
    out = load("mnist", tmp_path / "mnist")
    assert_one_line_error(out, "t10k-images-idx3-ubyte", "declares 4294967295x4294967295x4294967295", "size cap")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_declared_size_against_bytes_present(tmp_path: Path, gz: bool) -> None:
    write_set(tmp_path / "mnist", gz=gz)
    body = idx_header(60000, 28, 28) + bytes(100)
    path = tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(body) if gz else body)
    out = load("mnist", tmp_path / "mnist")
    assert_one_line_error(out, path.name, "truncated IDX file, header says 60000x28x28 (47040016 bytes) but it has 116")


def test_idx_gzip_bomb_through_poisonlab_run(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist")
    gzip_bomb(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", idx_header(60000, 28, 28), GIB)
    out = run_cli(["run", str(ROOT / "examples" / "digits_badnets.yaml"), "--set", "data.name=mnist",
                   "--data-dir", str(tmp_path), "--output", str(tmp_path / "runs"), "--quiet"], cwd=tmp_path)
    assert_one_line_error(out, "train-images-idx3-ubyte.gz", "bytes after the IDX data")


# ---------------------------------------------------------------- archives and images (GTSRB)



def test_gtsrb_tar_member_of_huge_declared_size(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "GTSRB-huge.tar.gz", "wb") as f:
        f.write(tar_member_header(GTSRB_IMAGE, 3 * GIB) + ppm(32, 32))  # 3 GiB claimed, body cut short
    out = load("gtsrb", tmp_path)
    assert_one_line_error(out, f"GTSRB-huge.tar.gz:{GTSRB_IMAGE}", "member declares 3072 MiB", "size cap")


def test_gtsrb_zip_member_of_huge_declared_size(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "GTSRB.zip", "w") as zf:
        zf.writestr(GTSRB_IMAGE, ppm(32, 32))
    patch_zip_sizes(tmp_path / "GTSRB.zip", 3 * GIB)
    out = load("gtsrb", tmp_path)
    assert_one_line_error(out, f"GTSRB.zip:{GTSRB_IMAGE}", "member declares 3072 MiB")


def test_zip_member_lying_about_its_size(tmp_path: Path) -> None:
    archive = tmp_path / "GTSRB.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(GTSRB_IMAGE, "w") as f:
        for _ in range(64):  # 64 MiB inflated, declared below as 100 bytes
            f.write(bytes(MIB))
    patch_zip_sizes(archive, 100)
    out = load("gtsrb", tmp_path)
    assert_one_line_error(out, GTSRB_IMAGE, "GTSRB.zip", "Bad CRC-32")


def test_tar_extended_header_bomb(tmp_path: Path) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 100 * MIB
    with gzip.open(tmp_path / "GTSRB.tar.gz", "wb") as f:
        f.write(info.tobuf(tarfile.USTAR_FORMAT) + bytes(4096))
    out = load("gtsrb", tmp_path)
    assert_one_line_error(out, "GTSRB.tar.gz", "an extended header declares 104857600 bytes")


def _many_members(path: Path, count: int, size: int) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"GTSRB/Final_Test/Images/{i:05d}.ppm")
            info.size = size
            tar.addfile(info, _Zeros(size))



@pytest.mark.parametrize("env, count, size, needle", [
    ({"POISONLAB_MAX_ARCHIVE_MB": "4"}, 8, MIB, "inflates to more than 4 MiB"),
    ({"POISONLAB_MAX_ARCHIVE_MEMBERS": "5"}, 8, 10, "more than 5 members"),
])
def test_archive_caps_from_the_environment(tmp_path: Path, env: dict, count: int, size: int, needle: str) -> None:
    _many_members(tmp_path / "GTSRB.tar.gz", count, size)
    out = load("gtsrb", tmp_path, env=env)
    assert_one_line_error(out, "GTSRB.tar.gz", needle)


def test_cap_setting_must_be_a_number(tmp_path: Path) -> None:
    write_set(tmp_path / "mnist")
    out = load("mnist", tmp_path / "mnist", env={"POISONLAB_MAX_FILE_MB": "lots"})
    assert_one_line_error(out, "$POISONLAB_MAX_FILE_MB must be a whole number", "'lots'")


@pytest.mark.parametrize("image, needle", [
    (ppm(20000, 20000), "a decompression bomb"),   # Pillow's own error (over twice its limit)
    (png(20000, 20000), "a decompression bomb"),
    (png(12000, 12000), "a decompression bomb"),   # Pillow's warning, made an error
    (ppm(4000, 4000), "declares 4000x4000 pixels, more than the 1,048,576 allowed"),  # under Pillow's limit
], ids=["ppm-400MP", "png-400MP", "png-144MP", "ppm-16MP"])
def test_gtsrb_image_decompression_bomb(tmp_path: Path, image: bytes, needle: str) -> None:
    make_gtsrb_tree(tmp_path)
    (tmp_path / GTSRB_IMAGE).write_bytes(image)
    out = load("gtsrb", tmp_path)
    assert_one_line_error(out, "GTSRB: cannot decode image", "00001_00000.ppm", needle)


def test_gtsrb_image_bomb_inside_a_zip(tmp_path: Path) -> None:
    tree = make_gtsrb_tree(tmp_path / "tree")
    (tree / GTSRB_IMAGE).write_bytes(ppm(20000, 20000))
    make_gtsrb_zip(tree, tmp_path / "GTSRB.zip")
    out = load("gtsrb", tmp_path)
    assert_one_line_error(out, f"GTSRB.zip:{GTSRB_IMAGE}", "a decompression bomb")
