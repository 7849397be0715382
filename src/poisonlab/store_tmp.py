"""Temporary files and folders of the run store, named after their owner.

A run is written into ``.tmp-<owner>-<random>`` (made like :func:`tempfile.mkdtemp`, so two
runs never share one) and renamed into place when complete. ``<owner>`` is
``<host><boot>-<pid>-<start>``: a hash of the host name, a hash of the kernel's boot id, the
process id and the process's start time (clock ticks since boot, from ``/proc``). A later
run can then tell the leftovers of a killed process from the work of a live one:

* ``live``: same host and boot, the pid runs and started at the recorded time;
* ``dead``: same host, and the machine rebooted since, or the pid is gone, a zombie, or
  reused by a process that started at another time; safe to delete;
* ``foreign``: made on another host (a shared folder): left alone;
* ``unknown``: a name this scheme did not make (an older poisonlab): left alone.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^\.tmp-([0-9a-f]{6})([0-9a-f]{6})-(\d{1,10})-(\d{1,20})-")


def _short(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=3).hexdigest()


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return _short(socket.gethostname())


@functools.lru_cache(maxsize=1)
def _boot() -> str:
    try:
        return _short(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        return _short("")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in ticks) of ``pid`` from ``/proc``; None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def owner() -> str:
    """This process's owner tag (recomputed after a fork: the pid changes)."""
    pid = os.getpid()
    st = _proc_stat(pid)
    return f"{_host()}{_boot()}-{pid}-{st[1] if st else 0}"


def owner_status(name: str) -> tuple[str, int | None]:
    """(``live``, ``dead``, ``foreign`` or ``unknown``, pid) of a temporary file or folder name."""
    m = _NAME.match(name)
    if m is None:
        return "unknown", None
    host, boot, pid, start = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    if host != _host():
        return "foreign", pid
    if boot != _boot():
        return "dead", pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead", pid
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, OSError):
        return "dead", pid
    st = _proc_stat(pid)
    if st is not None and (st[0] in ("Z", "X") or (start and st[1] != start)):
        return "dead", pid  # a zombie, or the pid now belongs to a younger process
    return "live", pid


def temporaries(folder: Path) -> list[tuple[Path, str, int | None]]:
    """Every ``.tmp-*`` entry directly in ``folder`` with its owner status and pid (sorted)."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.startswith(TMP_PREFIX))
    except OSError:
        return []
    return [(folder / n, *owner_status(n)) for n in names]


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """Give a finished temporary the permissions of a normally created file or folder (the
    user's umask): temporaries are made private (0700 / 0600) while they are written."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def make_dir(folder: Path) -> Path:
    """A new, empty, uniquely named temporary folder in ``folder``, owned by this process."""
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{owner()}-", dir=folder))


def make_file(folder: Path, suffix: str = "") -> Path:
    """A new, empty, uniquely named temporary file in ``folder``, owned by this process."""
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{owner()}-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def _claim_and_delete(folder: Path, path: Path) -> bool:
    """Delete stale ``path``; False when another process removed it first or it cannot go."""
    if not path.is_dir() or path.is_symlink():
        try:
            path.unlink()
        except OSError:
            return False
        return True
    try:
        mine = make_dir(folder)
    except OSError:
        return False
    try:
        os.replace(path, mine)  # onto an empty folder of ours: atomic, and it is ours from now on
    except OSError:  # gone already (another run claimed it), or not removable
        mine.rmdir()
        return False
    shutil.rmtree(mine, ignore_errors=True)
    return True


def remove_stale(folder: Path) -> list[str]:
    """Delete the temporaries of dead owners in ``folder``; returns their names.

    A stale folder is first renamed to a temporary name of this process (so two runs never
    delete the same folder, and a run killed while deleting leaves a folder that is stale
    in its turn), then deleted. Live, foreign and unknown ones are left alone.
    """
    return [path.name for path, status, _pid in temporaries(folder)
            if status == "dead" and _claim_and_delete(folder, path)]
