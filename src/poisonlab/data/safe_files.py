"""Checked downloads, checksums and safe archive access for the data-set loaders.

* :func:`download` fetches one URL into a temp file next to its destination, verifies
  its checksum and only then renames it into place (no half-written or unverified file
  is ever left under the real name).
* :func:`safe_extract` unpacks .tar/.tar.gz/.tgz/.zip archives after refusing any member
  with an absolute path, a ``..`` component, a link pointing outside the target folder
  or a device/FIFO; :func:`iter_archive` and :func:`read_member` read members in memory
  without extracting (GTSRB and CIFAR-10 are read straight from their archives).
* :func:`file_md5`, :func:`file_sha256` and :func:`bytes_md5` are the checksum helpers.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from ..errors import PoisonlabError

CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


# ---------------------------------------------------------------- checksums


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_md5(path: str | Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    return _hash_file(Path(path), "md5")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    return _hash_file(Path(path), "sha256")


def bytes_md5(data: bytes) -> str:
    """Hex MD5 of in-memory bytes (e.g. a decompressed IDX file)."""
    return hashlib.md5(data).hexdigest()


def check_checksum(path: Path, *, md5: str | None = None, sha256: str | None = None, label: str | None = None) -> None:
    """Raise a one-line :class:`PoisonlabError` when ``path`` does not have the expected digest."""
    name = label or path.name
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = _hash_file(path, algo)
        if actual != expected.lower():
            raise PoisonlabError(
                f"checksum mismatch for {name}: expected {algo} {expected.lower()}, got {actual}; "
                "the file is corrupt or not the official one, delete it and fetch it again"
            )


# ---------------------------------------------------------------- downloads


def _progress(total: int, label: str, quiet: bool):
    """A rich byte-progress bar on stderr, or None when quiet (``--quiet``) or not a terminal."""
    try:
        from ..progress import enabled  # honours poisonlab run --quiet
    except ImportError:
        enabled = sys.stderr.isatty
    if quiet or not enabled():
        return None
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )
    except ImportError:  # rich is a dependency, but a bar is never essential
        return None
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=Console(stderr=True), transient=True,
    )
    return bar, bar.add_task(label, total=total or None)


def _fetch(url: str, out, timeout: float, label: str, quiet: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "poisonlab"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        bar = _progress(total, label, quiet)
        if bar is None:
            for block in iter(lambda: resp.read(CHUNK), b""):
                out.write(block)
            return
        progress, task = bar
        with progress:
            for block in iter(lambda: resp.read(CHUNK), b""):
                out.write(block)
                progress.advance(task, len(block))


def download(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch ``url`` (http/https only) to ``dest``, verified before it gets its real name.

    The body goes to a temp file in ``dest``'s folder; then the ``sha256``/``md5`` digests
    are checked and ``verify(temp_path)`` (which raises :class:`PoisonlabError` to reject)
    is called; only then is the file renamed atomically onto ``dest``. On any failure the
    temp file is deleted and nothing appears at ``dest``.
    """
    dest = Path(dest)
    if not url.lower().startswith(("http://", "https://")):
        raise PoisonlabError(f"refusing to download '{url}': only http:// and https:// URLs are allowed")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise PoisonlabError(f"cannot write to {dest.parent} ({e.strerror or e}); pick a writable --data-dir") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, timeout, dest.name, quiet)
        check_checksum(tmp, md5=md5, sha256=sha256, label=f"{dest.name} (downloaded from {url})")
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are world-readable
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, urllib.error.HTTPError):
            e.close()  # it holds the open response
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = getattr(e, "reason", None) or e
        raise PoisonlabError(
            f"download of {url} failed ({reason}); check the network or mirror, "
            f"or put the file at {dest} by hand"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


# ---------------------------------------------------------------- archives


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` has one of the archive suffixes handled here."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name is unsafe, or None."""
    if not name:
        return "an empty name"
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return "an absolute path"
    if ".." in unified.split("/"):
        return "a '..' component"
    return None


def _refuse(archive: Path, member: str, why: str) -> PoisonlabError:
    return PoisonlabError(
        f"unsafe archive {archive}: member '{member}' has {why}; refusing this archive "
        "(use the official one)"
    )


def check_member_name(archive: Path, name: str) -> None:
    """Raise when an archive member name is absolute or contains ``..``."""
    why = _unsafe_reason(name)
    if why:
        raise _refuse(archive, name, why)


def _link_escapes(member: tarfile.TarInfo) -> bool:
    """Whether a tar link's target, taken lexically, leaves the archive root."""
    target = member.linkname.replace("\\", "/")
    if target.startswith("/"):
        return True
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath(".")
    depth = 0
    for part in (base / target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    check_member_name(archive, member.name)
    if (member.issym() or member.islnk()) and _link_escapes(member):
        raise _refuse(archive, member.name, f"a link to '{member.linkname}' outside the target folder")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise _refuse(archive, member.name, "a special file type (device or FIFO)")


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _open_tar(archive: Path, mode: str = "r:*") -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PoisonlabError(f"cannot open archive {archive}: {e}; the file is corrupt, fetch it again") from e


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise PoisonlabError(f"cannot open archive {archive}: {e}; the file is corrupt, fetch it again") from e


def _extract_tar(archive: Path, dest: Path) -> list[Path]:
    root = os.path.realpath(dest)
    out: list[Path] = []
    with _open_tar(archive) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise PoisonlabError(f"cannot read archive {archive}: {e}; the file is corrupt or truncated, fetch it again") from e
        for m in members:  # validate everything before writing anything
            _check_tar_member(archive, m)
        has_filter = hasattr(tarfile, "data_filter")
        for m in members:
            target = dest / m.name
            # links extracted earlier could redirect a later member: check the real path
            if not _within(root, os.path.realpath(target.parent)):
                raise _refuse(archive, m.name, "a path that leads outside the target folder through a link")
            if m.issym() and not _within(root, os.path.realpath(target.parent / m.linkname)):
                raise _refuse(archive, m.name, f"a link to '{m.linkname}' outside the target folder")
            kwargs = {"filter": "data"} if has_filter else {}
            try:
                tar.extract(m, dest, set_attrs=False, **kwargs)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise PoisonlabError(f"cannot extract '{m.name}' from {archive}: {e}; fetch the archive again") from e
            out.append(target)
    return out


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(archive: Path, dest: Path) -> list[Path]:
    out: list[Path] = []
    with _open_zip(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            check_member_name(archive, info.filename)
            if _zip_is_link(info):
                raise _refuse(archive, info.filename, "a symbolic link")
        for info in infos:
            out.append(Path(zf.extract(info, dest)))
    return out


def safe_extract(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract a .tar/.tar.gz/.tgz/.zip into ``dest`` after validating every member.

    Refuses (before writing anything) absolute names, ``..`` components, links whose
    target leaves ``dest``, zip symlinks and special files. Returns the extracted paths.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if str(archive).lower().endswith(".zip"):
        return _extract_zip(archive, dest)
    if is_archive(archive):
        return _extract_tar(archive, dest)
    raise PoisonlabError(f"{archive}: not a supported archive; expected one of {', '.join(ARCHIVE_SUFFIXES)}")


def _iter_tar(archive: Path, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    # stream mode: one sequential pass, no seeking back in the compressed stream
    with _open_tar(archive, "r|*") as tar:
        try:
            for m in tar:
                check_member_name(archive, m.name)
                if not m.isfile() or (select is not None and not select(m.name)):
                    continue
                f = tar.extractfile(m)
                yield m.name, f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            raise PoisonlabError(f"cannot read archive {archive}: {e}; the file is corrupt or truncated, fetch it again") from e


def _iter_zip(archive: Path, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    with _open_zip(archive) as zf:
        for info in zf.infolist():
            check_member_name(archive, info.filename)
            if info.is_dir() or _zip_is_link(info) or (select is not None and not select(info.filename)):
                continue
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise PoisonlabError(f"cannot read '{info.filename}' from {archive}: {e}; fetch the archive again") from e
            yield info.filename, data


def iter_archive(archive: str | Path, select: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for each regular file, in archive order, without extracting.

    ``select(name)`` limits which members are read. Every member name is validated
    (absolute or ``..`` names raise); links, folders and special files are skipped.
    """
    archive = Path(archive)
    if str(archive).lower().endswith(".zip"):
        return _iter_zip(archive, select)
    if is_archive(archive):
        return _iter_tar(archive, select)
    raise PoisonlabError(f"{archive}: not a supported archive; expected one of {', '.join(ARCHIVE_SUFFIXES)}")


def read_member(archive: str | Path, name: str) -> bytes:
    """The bytes of one member (matched by its name, ignoring a leading ``./``)."""
    wanted = name.removeprefix("./")
    for _, data in iter_archive(archive, lambda n: n.removeprefix("./") == wanted):
        return data
    raise PoisonlabError(f"'{name}' is not in archive {archive}; check that it is the right archive")
