"""Checked downloads (against a local http.server) and safe archive handling."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from local_http import serve

from poisonlab.data.safe_files import (
    bytes_md5,
    download,
    file_md5,
    file_sha256,
    iter_archive,
    read_member,
    safe_extract,
)
from poisonlab.errors import PoisonlabError

PAYLOAD = b"poisonlab test payload\n" * 1000


@contextlib.contextmanager
def serve_at(folder: Path) -> Iterator[str]:
    with serve(folder) as base:
        yield base + "/"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "payload.bin").write_bytes(PAYLOAD)
    with serve_at(www) as url:
        yield url


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- checksums


def test_checksum_helpers_match_known_vectors(tmp_path: Path) -> None:
    f = tmp_path / "abc"
    f.write_bytes(b"abc")
    assert file_md5(f) == "900150983cd24fb0d6963f7d28e17f72"
    assert bytes_md5(b"abc") == "900150983cd24fb0d6963f7d28e17f72"
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------- downloads


def test_download_verifies_sha256_and_md5(served: str, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "payload.bin"
    got = download(
        served + "payload.bin", dest, quiet=True,
        sha256=hashlib.sha256(PAYLOAD).hexdigest(), md5=hashlib.md5(PAYLOAD).hexdigest(),
    )
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["payload.bin"]  # no temp file left


def test_download_checksum_mismatch_leaves_nothing(served: str, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "payload.bin"
    wrong = "0" * 64
    with pytest.raises(PoisonlabError) as err:
        download(served + "payload.bin", dest, sha256=wrong, quiet=True)
    msg = str(err.value)
    assert "payload.bin" in msg and wrong in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert "\n" not in msg
    assert _leftovers(dest.parent) == []


def test_download_custom_verify_can_reject(served: str, tmp_path: Path) -> None:
    def reject(path: Path) -> None:
        assert path.read_bytes() == PAYLOAD  # called on the complete temp file
        raise PoisonlabError("rejected by verify")

    dest = tmp_path / "payload.bin"
    with pytest.raises(PoisonlabError, match="rejected by verify"):
        download(served + "payload.bin", dest, verify=reject, quiet=True)
    assert not dest.exists() and not list(tmp_path.glob("*.part"))


def test_download_http_error_is_one_line(served: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(PoisonlabError, match="404") as err:
        download(served + "missing.bin", out / "missing.bin", quiet=True)
    assert "missing.bin" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(out) == []


def test_download_refuses_non_http_scheme(tmp_path: Path) -> None:
    with pytest.raises(PoisonlabError, match="only http"):
        download(f"file://{tmp_path}/x", tmp_path / "x", quiet=True)


# ---------------------------------------------------------------- archives


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def test_safe_extract_and_read_good_archives(tmp_path: Path) -> None:
    members = [("top/a.txt", b"alpha"), ("top/sub/b.txt", b"beta")]
    for archive in (_tar(tmp_path / "good.tar.gz", members), _zip(tmp_path / "good.zip", members)):
        dest = tmp_path / f"x-{archive.name}"
        safe_extract(archive, dest)
        assert (dest / "top" / "a.txt").read_bytes() == b"alpha"
        assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"beta"
        assert dict(iter_archive(archive)) == dict(members)
        assert dict(iter_archive(archive, lambda n: n.endswith("b.txt"))) == {"top/sub/b.txt": b"beta"}
        assert read_member(archive, "top/a.txt") == b"alpha"


def test_internal_link_is_allowed(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "link.tar.gz", [("d/real.txt", b"x"), _link("d/alias.txt", "real.txt")])
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "alias.txt").read_bytes() == b"x"


@pytest.mark.parametrize(
    "member, why",
    [
        (("../evil", b"x"), "'..'"),
        (("ok/../../evil", b"x"), "'..'"),
        (("/tmp/evil-abs", b"x"), "absolute"),
        (_link("evil-link", "../../outside"), "outside"),
        (_link("evil-abs-link", "/etc/passwd"), "outside"),
        (_link("evil-hard", "../outside", tarfile.LNKTYPE), "outside"),
    ],
)
def test_unsafe_tar_member_refused_before_writing(tmp_path: Path, member, why: str) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", [("first.txt", b"first"), member])
    dest = tmp_path / "a" / "b"
    with pytest.raises(PoisonlabError) as err:
        safe_extract(archive, dest)
    name = member.name if isinstance(member, tarfile.TarInfo) else member[0]
    assert name in str(err.value) and why in str(err.value)
    assert _leftovers(dest) == []  # validation happens before anything is written
    assert not (tmp_path / "evil").exists() and not (tmp_path / "a" / "evil").exists()


def test_symlink_chain_escape_refused(tmp_path: Path) -> None:
    # each link looks harmless lexically; through the first one the second leads out
    archive = _tar(tmp_path / "chain.tar.gz", [_link("a", "."), _link("a/b", "..")])
    dest = tmp_path / "out"
    with pytest.raises(PoisonlabError, match="a/b"):
        safe_extract(archive, dest)
    assert not (dest / "b").exists()


def test_unsafe_zip_member_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bad.zip", [("fine.txt", b"ok"), ("../evil", b"x")])
    with pytest.raises(PoisonlabError, match=r"\.\./evil"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists() and _leftovers(tmp_path / "out") == []


def test_reading_unsafe_archive_refused(tmp_path: Path) -> None:
    for archive in (_tar(tmp_path / "r.tar.gz", [("../evil", b"x")]), _zip(tmp_path / "r.zip", [("../evil", b"x")])):
        with pytest.raises(PoisonlabError, match=r"\.\./evil"):
            list(iter_archive(archive))


def test_corrupt_archive_is_reported(tmp_path: Path) -> None:
    good = _tar(tmp_path / "t.tar.gz", [("a.txt", os.urandom(50_000))])
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(PoisonlabError, match="cut.tar.gz"):
        list(iter_archive(bad))
    not_zip = tmp_path / "bad.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(PoisonlabError, match="bad.zip"):
        list(iter_archive(not_zip))
