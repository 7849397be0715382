"""Safe reading and extraction of .tar/.tar.gz/.tgz/.zip data archives (POSIX ustar/pax, PKZIP).

* :func:`safe_extract` unpacks an archive after refusing (before writing anything) any
  member with an absolute path, a ``..`` component, a link pointing outside the target
  folder, a hard link, a device/FIFO, a declared size over the cap, or too many members.
* :func:`iter_archive` and :func:`read_member` read members in memory without extracting.

Every archive is opened as a regular file (never through a link, see
:func:`.safe_files.open_regular_file`); tar streams are inflated by a bounded streaming
reader (:class:`.limits.BudgetReader`), members declaring more than
``$POISONLAB_MAX_FILE_MB`` are refused before they are read, and every member read is
bounded, since a zip can lie about its sizes (:mod:`.limits`).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator

from ..errors import PoisonlabError, one_line
from .limits import (
    BudgetReader,
    check_file_size,
    max_archive_bytes,
    max_archive_members,
    max_file_bytes,
    mib,
    read_exactly,
)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_HEADER = 1 << 20  # a tar PAX or GNU long-name header is a few hundred bytes
# what a damaged stream can raise from tarfile, zipfile and the decompressors
CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
           zlib.error, lzma.LZMAError, struct.error, UnicodeError, NotImplementedError, RuntimeError,
           IndexError, KeyError, OverflowError)


def member_label(archive: Path, name: str) -> str:
    """``archive:name`` for messages, on one line (a member name can hold any character)."""
    return f"{archive}:{name}" if name.isprintable() and len(name) <= 300 else f"{archive}:{one_line(name, 300)}"


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
        f"unsafe archive {archive}: member '{one_line(member, 200)}' has {why}; refusing this archive "
        "(use the official one)"
    )


def _corrupt(archive: Path, e: BaseException, member: str | None = None) -> PoisonlabError:
    what = f"'{one_line(member, 200)}' from {archive}" if member else f"archive {archive}"
    reason = one_line(str(e) or type(e).__name__, 200)
    return PoisonlabError(f"cannot read {what}: {reason}; the file is corrupt or truncated, fetch it again")


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


def _check_size(archive: Path, name: str, size: int) -> None:
    if size > max_file_bytes():
        check_file_size(member_label(archive, name), size, "member declares")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    check_member_name(archive, member.name)
    if (member.issym() or member.islnk()) and _link_escapes(member):
        raise _refuse(archive, member.name, f"a link to '{one_line(member.linkname, 200)}' outside the target folder")
    if member.islnk():
        raise _refuse(archive, member.name, f"a hard link (to '{one_line(member.linkname, 200)}')")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise _refuse(archive, member.name, "a special file type (device or FIFO)")
    if member.isfile():
        _check_size(archive, member.name, member.size)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses PAX and GNU long-name headers bigger than :data:`MAX_HEADER` before tarfile reads them."""

    def _proc_member(self, tarfile_: tarfile.TarFile):  # the documented override point of TarInfo
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)
        if self.type in extended and self.size > MAX_HEADER:
            raise tarfile.HeaderError(f"an extended header declares {self.size} bytes")
        return super()._proc_member(tarfile_)


def _open_raw(archive: Path) -> BinaryIO:
    from .safe_files import UNCAPPED, open_regular_file  # imported here: safe_files re-exports this module

    return open_regular_file(archive, None, max_bytes=UNCAPPED, label=str(archive))


def _inflated(raw: BinaryIO) -> BinaryIO:
    """``raw`` through a streaming decompressor chosen by its magic bytes (gzip, bzip2, xz), or as is."""
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if head == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    return raw


def _tar_stream(archive: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Each member of a tar (optionally compressed) archive, read in one bounded sequential pass."""
    limit = max_archive_members()
    with _open_raw(archive) as raw:
        stream = BudgetReader(_inflated(raw), max_archive_bytes(), str(archive))
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:  # type: ignore[arg-type]
                count = 0
                while (member := tar.next()) is not None:
                    count += 1
                    if count > limit:
                        raise PoisonlabError(f"{archive}: more than {limit} members; not a genuine data archive "
                                             "(raise $POISONLAB_MAX_ARCHIVE_MEMBERS if it is)")
                    tar.members.clear()  # stream mode keeps every header otherwise
                    yield tar, member
        except PoisonlabError:
            raise
        except CORRUPT as e:
            raise _corrupt(archive, e) from e


def _validate_tar(archive: Path) -> None:
    for _, member in _tar_stream(archive):
        _check_tar_member(archive, member)


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _extract_tar(archive: Path, dest: Path) -> list[Path]:
    _validate_tar(archive)  # everything checked, sizes included, before writing anything
    root = os.path.realpath(dest)
    out: list[Path] = []
    with _open_raw(archive) as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r:*", tarinfo=_BoundedTarInfo) as tar:
                members = tar.getmembers()
                for m in members:  # the same checks again: the file may have changed
                    _check_tar_member(archive, m)
                for m in members:
                    target = dest / m.name
                    # links extracted earlier could redirect a later member: check the real path
                    if not _within(root, os.path.realpath(target.parent)):
                        raise _refuse(archive, m.name, "a path that leads outside the target folder through a link")
                    if m.issym() and not _within(root, os.path.realpath(target.parent / m.linkname)):
                        raise _refuse(archive, m.name, f"a link to '{m.linkname}' outside the target folder")
                    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extract(m, dest, set_attrs=False, **kwargs)
                    out.append(target)
        except PoisonlabError:
            raise
        except CORRUPT as e:
            raise PoisonlabError(f"cannot extract {archive}: {one_line(str(e), 200)}; fetch the archive again") from e
    return out


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _zip_infos(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members, after the name, count, declared-size and total-size checks."""
    infos = zf.infolist()
    if len(infos) > max_archive_members():
        raise PoisonlabError(f"{archive}: {len(infos)} members, more than {max_archive_members()}; "
                             "not a genuine data archive (raise $POISONLAB_MAX_ARCHIVE_MEMBERS if it is)")
    total = 0
    for info in infos:
        check_member_name(archive, info.filename)
        _check_size(archive, info.filename, info.file_size)
        total += info.file_size
    if total > max_archive_bytes():
        raise PoisonlabError(f"{archive}: members declare {mib(total)} in all, over the {mib(max_archive_bytes())} "
                             "archive size cap; not a genuine data archive (raise $POISONLAB_MAX_ARCHIVE_MB if it is)")
    return infos


def _bounded_member(archive: Path, name: str, open_member: Callable[[], Any], size: int) -> bytes:
    """Exactly the ``size`` bytes a member declares, read with a bound; a member that holds
    more or less, or whose stream is corrupt, is a one-line error naming it."""
    try:
        f = open_member()
        if f is None:
            return b""
        with f:
            data = read_exactly(f, size, member_label(archive, name), "member")
            if f.read(1):
                raise zipfile.BadZipFile("more data than declared")
    except PoisonlabError:
        raise
    except CORRUPT as e:
        raise _corrupt(archive, e, name) from e
    return bytes(data)


def _zip_read(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One member, read with a bound: zipfile stops at the declared size and checks the CRC."""
    return _bounded_member(archive, info.filename, lambda: zf.open(info), info.file_size)


@contextlib.contextmanager
def _zip(archive: Path) -> Iterator[zipfile.ZipFile]:
    """The archive opened as a zip (through :func:`_open_raw`); a corrupt one is a one-line error."""
    with _open_raw(archive) as raw:
        try:
            zf = zipfile.ZipFile(raw)
        except CORRUPT as e:
            raise _corrupt(archive, e) from e
        with zf:
            yield zf


def _with_zip(archive: Path, fn: Callable[[zipfile.ZipFile], object]):
    with _zip(archive) as zf:
        return fn(zf)


def _extract_zip(archive: Path, dest: Path) -> list[Path]:
    def run(zf: zipfile.ZipFile) -> list[Path]:
        infos = _zip_infos(archive, zf)
        for info in infos:
            if _zip_is_link(info):
                raise _refuse(archive, info.filename, "a symbolic link")
        root = os.path.realpath(dest)
        out: list[Path] = []
        for info in infos:
            target = dest / info.filename
            try:
                (target if info.is_dir() else target.parent).mkdir(parents=True, exist_ok=True)
                if not _within(root, os.path.realpath(target if info.is_dir() else target.parent)):
                    raise _refuse(archive, info.filename, "a path that leads outside the target folder through a link")
                if not info.is_dir():
                    target.write_bytes(_zip_read(archive, zf, info))  # bounded: at most the declared size
            except OSError as e:
                raise PoisonlabError(f"cannot extract '{one_line(info.filename, 200)}' from {archive}: "
                                     f"{e.strerror or e}; fetch the archive again") from e
            out.append(target)
        return out

    return _with_zip(archive, run)  # type: ignore[return-value]


def safe_extract(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract a .tar/.tar.gz/.tgz/.zip into ``dest`` after validating every member.

    Refuses (before writing anything) absolute names, ``..`` components, links whose
    target leaves ``dest``, hard links, zip symlinks, special files and members over the
    size caps. Returns the extracted paths.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if str(archive).lower().endswith(".zip"):
        return _extract_zip(archive, dest)
    if is_archive(archive):
        return _extract_tar(archive, dest)
    raise PoisonlabError(f"{archive}: not a supported archive; expected one of {', '.join(ARCHIVE_SUFFIXES)}")


def _iter_tar(archive: Path, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    for tar, m in _tar_stream(archive):
        check_member_name(archive, m.name)
        if m.isfile():
            _check_size(archive, m.name, m.size)  # before reading, selected or not
        if not m.isfile() or (select is not None and not select(m.name)):
            continue
        yield m.name, _bounded_member(archive, m.name, lambda: tar.extractfile(m), m.size)


def _iter_zip(archive: Path, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    with _zip(archive) as zf:
        for info in _zip_infos(archive, zf):
            if info.is_dir() or _zip_is_link(info) or (select is not None and not select(info.filename)):
                continue
            yield info.filename, _zip_read(archive, zf, info)


def iter_archive(archive: str | Path, select: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for each regular file, in archive order, without extracting.

    ``select(name)`` limits which members are read. Every member name is validated
    (absolute or ``..`` names raise) and every declared size checked against the caps;
    links, folders and special files are skipped.
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
