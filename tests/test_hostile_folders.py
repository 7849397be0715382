"""Hostile images and data folders (decompression bombs, links, FIFOs, devices, linked
folders), and the folder scan of ``poisonlab doctor``: one ``error:`` line, exit status 2,
bounded memory and time, no hang (docs/security.md, "Files and folders")."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_line_error, run_python
from hostile_files import (
    GIB,
    GTSRB_IMAGE,
    MIB,
    N,
    _Zeros,
    array_ops,
    batch_pickle,
    load,
    png,
    ppm,
    tar_member_header,
)
from test_data_adult import write_files as write_adult
from test_data_cifar10 import write_batches
from test_data_gtsrb import make_tree as make_gtsrb_tree
from test_data_idx import write_set
from test_data_imdb import make_tree as make_imdb_tree

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
