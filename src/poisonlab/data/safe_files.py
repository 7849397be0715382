"""Checked downloads, checksums, regular-file reads and (re-exported) safe archive access.

* :func:`download` fetches one URL into a temp file next to its destination, verifies
  its checksum and only then renames it into place (no half-written or unverified file
  is ever left under the real name).
* :func:`open_regular_file` / :func:`read_regular_file` open a data file only if it is a
  regular file inside its data folder: ``O_NOFOLLOW | O_NONBLOCK`` (a final symlink is
  refused, a FIFO cannot block), ``fstat`` on the open descriptor (devices, FIFOs,
  sockets and folders refused; a swap after ``lstat`` detected), the size checked against
  ``$POISONLAB_MAX_FILE_MB`` (:mod:`.limits`) before reading, and the real path kept
  under the data folder (a symlinked parent folder cannot lead out).
* :func:`safe_extract`, :func:`iter_archive` and :func:`read_member` live in
  :mod:`.archives` and are re-exported here.
* :func:`file_md5`, :func:`file_sha256` and :func:`bytes_md5` are the checksum helpers.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import stat
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import PoisonlabError, one_line
from .archives import (  # noqa: F401  (re-exported: the loaders' one place for data access)
    ARCHIVE_SUFFIXES,
    check_member_name,
    is_archive,
    iter_archive,
    member_label,
    read_member,
    safe_extract,
)
from .limits import check_file_size, max_file_bytes

CHUNK = 1 << 20
UNCAPPED = 1 << 62  # max_bytes for files that are streamed, never read whole (archives)


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



# ---------------------------------------------------------------- regular files

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words (``"a FIFO (named pipe)"``)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def refuse_special(label: str, mode: int) -> PoisonlabError:
    """The one-line error for a data-folder entry that is not a regular file."""
    if stat.S_ISLNK(mode):
        return PoisonlabError(f"{label}: is a symbolic link; data files must be regular files inside the data "
                              "folder, replace the link with the file itself")
    return PoisonlabError(f"{label}: is {file_kind(mode)}, not a regular file; remove it from the data folder "
                          "and put the real file there")


def check_real_dir(path: str | Path, label: str | None = None) -> None:
    """Refuse a data sub-folder that is a symbolic link or not a folder at all (never followed)."""
    name = label or str(path)
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        raise PoisonlabError(f"cannot list {name}: {e.strerror or e}") from e
    if not stat.S_ISDIR(mode):
        raise refuse_special(name, mode)


def outside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path``'s real location leaves ``root``'s real location."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) != base


# (folder, data folder) -> (folder's st_dev, st_ino, whether it lies inside): a hit is used only
# while the folder still is that directory, so a large tree costs one stat per file, not a
# realpath (a stat per path component)
_INSIDE: dict[tuple[str, str], tuple[int, int, bool]] = {}


def _inside(path: str | Path, root: str | Path) -> bool:
    """Whether a file (whose last component is known not to be a link) really lies under ``root``."""
    parent, base = os.path.dirname(os.fspath(path)) or ".", os.fspath(root)
    st = os.stat(parent)
    hit = _INSIDE.get((parent, base))
    if hit is not None and hit[:2] == (st.st_dev, st.st_ino):
        return hit[2]
    real, real_base = os.path.realpath(parent), os.path.realpath(base)
    ok = real == real_base or real.startswith(real_base.rstrip(os.sep) + os.sep)
    if len(_INSIDE) > 4096:
        _INSIDE.clear()
    _INSIDE[(parent, base)] = (st.st_dev, st.st_ino, ok)
    return ok


_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_NOCTTY", 0)


def _open(path: str | Path, root: str | Path | None, limit: int, label: str | None) -> tuple[int, int]:
    """The open descriptor and the file's size; see :func:`open_regular_file`. Messages are built
    only on failure (a large tree opens tens of thousands of files)."""
    def name() -> str:
        return one_line(label or str(path), 400)

    try:
        before = os.lstat(path)  # a FIFO or device is refused without being opened
    except OSError as e:
        raise PoisonlabError(f"cannot read {name()}: {e.strerror or e}") from e
    if not stat.S_ISREG(before.st_mode):
        raise refuse_special(name(), before.st_mode)
    try:
        fd = os.open(path, _FLAGS)  # O_NOFOLLOW: a link swapped in since the lstat fails here
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise refuse_special(name(), stat.S_IFLNK) from e
        raise PoisonlabError(f"cannot read {name()}: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise PoisonlabError(f"{name()}: changed while being opened (now {file_kind(st.st_mode)}); "
                                 "something is modifying the data folder, try again when it is done")
        if root is not None and not _inside(path, root):
            raise PoisonlabError(f"{name()}: resolves to {one_line(os.path.realpath(path), 200)}, outside the data "
                                 f"folder {root} (through a linked folder); put the real files in the data folder")
        if st.st_size > limit:
            check_file_size(name(), st.st_size)  # the file cap's own message
            raise PoisonlabError(f"{name()}: is {st.st_size} bytes, more than the {limit} expected; not a genuine file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size  # O_NONBLOCK is left on: it means nothing for a regular file


def open_regular_file(path: str | Path, root: str | Path | None = None, *, max_bytes: int | None = None,
                      label: str | None = None) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (see the module docstring), else a one-line error.

    ``root`` is the data folder the file must stay in (None: no folder check); ``max_bytes``
    the largest size accepted (None: ``$POISONLAB_MAX_FILE_MB``; :data:`UNCAPPED` for
    archives, which are streamed); ``label`` names the file in messages (shown on one line).
    """
    fd, _ = _open(path, root, max_file_bytes() if max_bytes is None else max_bytes, label)
    return os.fdopen(fd, "rb")


def read_regular_file(path: str | Path, root: str | Path | None = None, max_bytes: int | None = None,
                      label: str | None = None) -> bytes:
    """The bytes of a regular file inside ``root`` (see :func:`open_regular_file`), read with a bound:
    at most the cap plus one byte, however much the file grows meanwhile."""
    limit = max_file_bytes() if max_bytes is None else max_bytes
    fd, size = _open(path, root, limit, label)
    try:
        parts = [os.read(fd, min(size, limit) + 1)]
        got = len(parts[0])
        while got <= limit and (got > size or got < size):  # a short read, or the file grew: read on
            more = os.read(fd, min(CHUNK, limit + 1 - got))
            if not more:
                break
            parts.append(more)
            got += len(more)
    except OSError as e:
        raise PoisonlabError(f"cannot read {one_line(label or str(path), 400)}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if got > limit:
        name = one_line(label or str(path), 400)
        check_file_size(name, got)
        raise PoisonlabError(f"{name}: more than the {limit} bytes expected; not a genuine file")
    return parts[0] if len(parts) == 1 else b"".join(parts)
