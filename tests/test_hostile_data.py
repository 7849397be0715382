"""Hostile data files: each is built here (tiny on disk), loaded in a child process under an
address-space cap, and must end in one ``error:`` line naming the file and the problem, exit
status 2, bounded memory and time (docs/security.md, "The rules")."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_line_error, run_cli, run_python
from test_data_adult import write_files as write_adult
from test_data_cifar10 import write_batches
from test_data_gtsrb import make_tree as make_gtsrb_tree
from test_data_gtsrb import make_zip as make_gtsrb_zip
from test_data_idx import write_set
from test_data_imdb import make_tree as make_imdb_tree

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
MIB = 1 << 20
LOADERS = {  # loader call on one folder only: nothing else on the machine can answer
    "mnist": "from poisonlab.data import idx; idx.load_mnist([Path({d!r})])",
    "cifar10": "from poisonlab.data import cifar10; cifar10.load_cifar10([Path({d!r})])",
    "gtsrb": "from poisonlab.data import gtsrb; gtsrb.load_gtsrb([Path({d!r})])",
    "imdb": "from poisonlab.data import imdb; imdb.load_imdb([Path({d!r})])",
    "adult": "from poisonlab.data import adult; adult.load_adult([Path({d!r})])",
}


def load(name: str, folder: Path, **kwargs):
    return run_python("from pathlib import Path\n" + LOADERS[name].format(d=str(folder)), timeout=60, **kwargs)


# ---------------------------------------------------------------- crafted files


def gzip_bomb(path: Path, prefix: bytes, zeros: int) -> Path:
    """A gzip file of ``prefix`` + ``zeros`` zero bytes, written as one repeated deflate block
    (about 1 KiB per MiB), so neither the test nor the disk ever holds the inflated data."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MIB)
    crc = zlib.crc32(prefix)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        f.write(c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH))
        block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB
        for _ in range(zeros // MIB):
            f.write(block)
            crc = zlib.crc32(chunk, crc)
        f.write(c.flush())
        f.write(struct.pack("<II", crc, (len(prefix) + zeros) & 0xFFFFFFFF))
    assert path.stat().st_size < zeros // 500 + 4096
    return path


def idx_header(*dims: int) -> bytes:
    return struct.pack(">I", 0x800 | len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _py2(b: bytes) -> bytes:
    """A Python 2 ``str`` opcode, as the official (cPickle) batches write strings."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def array_ops(shape: tuple[int, ...], raw: bytes, code: bytes = b"u1", flags: int = 0, elsize: int = -1) -> bytes:
    """Opcodes of a numpy array exactly as numpy pickles one, with every field chosen by the test."""
    dtype = (b"cnumpy\ndtype\n" + _py2(code) + b"\x89\x88\x87R(" + _int(3) + _py2(b"|") + b"NNN"
             + _int(elsize) + _int(-1) + _int(flags) + b"tb")
    shape_ops = b"(" + b"".join(_int(d) for d in shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _py2(b"b") + b"\x87R"
            + b"(" + _int(1) + shape_ops + dtype + b"\x89" + _py2(raw) + b"tb")


def batch_pickle(data_ops: bytes, labels_ops: bytes) -> bytes:
    return b"\x80\x02}(" + _py2(b"data") + data_ops + _py2(b"labels") + labels_ops + b"u."


def png(w: int, h: int) -> bytes:
    """A PNG whose header declares ``w`` x ``h`` RGB pixels, with almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


def ppm(w: int, h: int) -> bytes:
    return f"P6\n{w} {h}\n255\n".encode() + bytes(64)


def tar_member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def patch_zip_sizes(path: Path, file_size: int) -> None:
    """Rewrite the uncompressed size of every member in both the local and the central headers."""
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        while at >= 0:
            data[at + offset: at + offset + 4] = struct.pack("<I", file_size)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- CIFAR-10 pickles

N = 4


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

GTSRB_IMAGE = "GTSRB/Final_Training/Images/00001/00001_00000.ppm"


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


class _Zeros:
    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


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


# ---------------------------------------------------------------- trigger images


def _trigger(path: Path):
    code = (f"from poisonlab.triggers import ImageTrigger\n"
            f"ImageTrigger(path={str(path)!r}, size=2).check_fits((3, 8, 8))")
    return run_python(code, timeout=60)


@pytest.mark.parametrize("image, needle", [
    (png(20000, 20000), "decompression bomb"),   # Pillow's own error (over twice its limit)
    (png(12000, 12000), "decompression bomb"),   # Pillow's warning, made an error
    (ppm(20000, 20000), "decompression bomb"),
    (png(3000, 3000), "declares 3000x3000 pixels, more than the 4,194,304 allowed"),  # under Pillow's limit
], ids=["png-400MP", "png-144MP", "ppm-400MP", "png-9MP"])
def test_trigger_image_decompression_bomb(tmp_path: Path, image: bytes, needle: str) -> None:
    (tmp_path / "key.png").write_bytes(image)
    assert_one_line_error(_trigger(tmp_path / "key.png"), "cannot read trigger image", "key.png", needle)


def test_trigger_image_through_a_link_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGBA", (2, 2)).save(tmp_path / "real.png")
    (tmp_path / "key.png").symlink_to(tmp_path / "real.png")
    assert_one_line_error(_trigger(tmp_path / "key.png"), "trigger image", "key.png", "is a symbolic link")


# ---------------------------------------------------------------- extracted folders


def _fixture(name: str, folder: Path) -> tuple[str, str | None]:
    """Write a valid tiny ``name`` set in ``folder``; return one file and one sub-folder to replace."""
    if name == "mnist":
        write_set(folder, gz=False)
        return "train-images-idx3-ubyte", None
    if name == "cifar10":
        write_batches(folder / "cifar-10-batches-py")
        return "cifar-10-batches-py/test_batch", "cifar-10-batches-py"
    if name == "gtsrb":
        make_gtsrb_tree(folder)
        return GTSRB_IMAGE, "GTSRB/Final_Training/Images/00001"
    if name == "imdb":
        make_imdb_tree(folder)
        return "aclImdb/train/neg/1_2.txt", "aclImdb/train/neg"
    write_adult(folder)
    return "adult.data", None


def _replace(victim: Path, kind: str, outside: Path) -> str:
    """Turn ``victim`` into a hostile entry of ``kind``; return the words the error must use."""
    outside.mkdir(exist_ok=True)
    copy = outside / victim.name
    shutil.copy(victim, copy)
    victim.unlink()
    if kind == "dev-zero":
        victim.symlink_to("/dev/zero")
        return "is a symbolic link"
    if kind == "outside-file":
        victim.symlink_to(copy)
        return "is a symbolic link"
    if kind == "fifo":
        os.mkfifo(victim)
        return "is a FIFO"
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(victim))
        sock.close()
        return "is a socket"
    try:
        os.mknod(victim, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return "is a character device"


@pytest.mark.parametrize("kind", ["dev-zero", "outside-file", "fifo", "socket", "char-device"])
def test_folder_entry_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "data"
    rel, _ = _fixture("mnist", folder)
    words = _replace(folder / rel, kind, tmp_path / "outside")
    out = load("mnist", folder)  # a FIFO would block a plain open() for ever: the child has a timeout
    assert_one_line_error(out, rel, words, max_seconds=20)


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    _, sub = _fixture("gtsrb", folder)
    shutil.move(folder / sub, tmp_path / "elsewhere")
    (folder / sub).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert_one_line_error(load("gtsrb", folder), "Images/00001", "is a symbolic link")


_EVERY_CASE = """
import json
from pathlib import Path
from poisonlab.errors import PoisonlabError
{imports}
out = []
for name, folder in json.loads({cases!r}):
    try:
        {{'cifar10': cifar10.load_cifar10, 'gtsrb': gtsrb.load_gtsrb, 'imdb': imdb.load_imdb,
         'adult': adult.load_adult}}[name]([Path(folder)])
        out.append(None)
    except PoisonlabError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def test_every_loader_refuses_links_fifos_and_linked_folders(tmp_path: Path) -> None:
    """The other loaders, every kind of entry, in one capped child (one process start, not 15)."""
    cases, expected = [], []
    for name in ("cifar10", "gtsrb", "imdb", "adult"):
        for kind in ("dev-zero", "outside-file", "fifo", "linked-folder"):
            folder = tmp_path / f"{name}-{kind}"
            rel, sub = _fixture(name, folder)
            if kind == "linked-folder":
                if sub is None:
                    continue
                shutil.move(folder / sub, tmp_path / f"{name}-moved")
                (folder / sub).symlink_to(tmp_path / f"{name}-moved", target_is_directory=True)
                rel, words = sub, "is a symbolic link"
            else:
                words = _replace(folder / rel, kind, tmp_path / f"{name}-{kind}-outside")
            cases.append((name, str(folder)))
            expected.append((str(folder / rel), words))
    code = _EVERY_CASE.format(imports="from poisonlab.data import adult, cifar10, gtsrb, imdb", cases=json.dumps(cases))
    out = run_python(code, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    messages = json.loads(out.stdout)
    assert len(messages) == len(expected) == 15
    for (path, words), message in zip(expected, messages):
        assert message is not None and "\n" not in message, (path, message)
        assert path in message and words in message, (path, words, message)
    assert out.seconds < 30


def test_linked_data_folder_itself_is_fine(tmp_path: Path) -> None:
    write_set(tmp_path / "real")
    (tmp_path / "mnist").symlink_to(tmp_path / "real", target_is_directory=True)
    out = load("mnist", tmp_path / "mnist")
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- extraction and the folder scan


def test_safe_extract_refuses_hard_links_and_huge_members(tmp_path: Path) -> None:
    from poisonlab.data.safe_files import safe_extract
    from poisonlab.errors import PoisonlabError

    hard = tarfile.TarInfo("b.txt")
    hard.type, hard.linkname = tarfile.LNKTYPE, "a.txt"
    with tarfile.open(tmp_path / "hard.tar", "w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, _Zeros(1))
        tar.addfile(hard)
    with pytest.raises(PoisonlabError, match=r"member 'b.txt' has a hard link \(to 'a.txt'\)"):
        safe_extract(tmp_path / "hard.tar", tmp_path / "out1")
    (tmp_path / "huge.tar").write_bytes(tar_member_header("big.bin", 3 * GIB) + bytes(1024))
    with pytest.raises(PoisonlabError, match="member declares 3072 MiB"):
        safe_extract(tmp_path / "huge.tar", tmp_path / "out2")
    assert not list((tmp_path / "out1").iterdir()) and not list((tmp_path / "out2").iterdir())


def test_safe_extract_refuses_zip_symlink(tmp_path: Path) -> None:
    from poisonlab.data.safe_files import safe_extract
    from poisonlab.errors import PoisonlabError

    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(PoisonlabError, match="member 'link' has a symbolic link"):
        safe_extract(tmp_path / "l.zip", tmp_path / "out")
    assert not (tmp_path / "out" / "link").exists()


def test_scan_data_folder_lists_what_loaders_refuse(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_set(folder / "mnist")
    (folder / "sub").mkdir()
    (tmp_path / "secret.txt").write_text("x")
    (folder / "sub" / "out.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "in.txt").symlink_to(folder / "mnist" / "train-labels-idx1-ubyte.gz")
    (folder / "zero").symlink_to("/dev/zero")
    (folder / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(folder / "sub" / "pipe")
    with open(folder / "big.bin", "wb") as f:  # sparse: 3 MiB on paper, nothing on disk
        f.truncate(3 * MIB)
    with open(folder / "big.tar.gz", "wb") as f:  # archives are streamed: not over the file cap
        f.truncate(3 * MIB)
    code = ("import json\nfrom pathlib import Path\nfrom poisonlab.data.scan import scan_data_folder\n"
            f"print(json.dumps(scan_data_folder(Path({str(folder)!r}))))")
    out = run_python(code, timeout=30, env={"POISONLAB_MAX_FILE_MB": "2"})
    assert out.returncode == 0, out.stderr
    found = {Path(p).relative_to(folder).as_posix(): why for p, why in json.loads(out.stdout)}
    assert sorted(found) == ["big.bin", "in.txt", "linked-dir", "sub/out.txt", "sub/pipe", "zero"]
    assert "3 MiB, over the 2 MiB size cap" in found["big.bin"]
    assert "outside the data folder" in found["sub/out.txt"] and "outside the data folder" in found["zero"]
    assert "inside the data folder" in found["in.txt"] and "outside" in found["linked-dir"]
    assert found["sub/pipe"].startswith("a FIFO (named pipe), not a regular file")
    assert out.seconds < 20


def test_object_dtype_never_reaches_numpy(tmp_path: Path) -> None:
    """In-process too: the stand-ins refuse the object dtype before numpy sees the bytes."""
    from poisonlab.data import cifar10
    from poisonlab.errors import PoisonlabError

    evil = batch_pickle(array_ops((N, 3072), bytes(N * 3072)), array_ops((1,), struct.pack("<Q", 8), b"O8", 63, 8))
    with pytest.raises(PoisonlabError, match="refused numpy dtype"):
        cifar10.unpickle_batch(evil, "x")
    good = cifar10.unpickle_batch(batch_pickle(array_ops((2, 3), bytes(range(6))), b"]"), "x")
    assert np.array_equal(good["data"], np.arange(6, dtype=np.uint8).reshape(2, 3)) and good["labels"] == []


def test_folder_swapped_for_a_link_between_reads_is_refused(tmp_path: Path) -> None:
    """The cache that spares a realpath per file must not outlive the folder it describes."""
    from poisonlab.data.safe_files import read_regular_file
    from poisonlab.errors import PoisonlabError

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.txt").write_text("inside")
    assert read_regular_file(root / "sub" / "x.txt", root) == b"inside"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.txt").write_text("outside")
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(PoisonlabError, match=r"x.txt: resolves to .*elsewhere/x.txt, outside the data folder"):
        read_regular_file(root / "sub" / "x.txt", root)
