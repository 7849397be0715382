"""What a loader would refuse in a data folder, listed without loading anything.

:func:`scan_data_folder` walks a folder with ``lstat`` only (it never follows a link,
never opens a FIFO or device, never reads a file) and reports every entry a loader of
:mod:`poisonlab.data` refuses: symbolic links (saying when the target leaves the folder),
FIFOs, sockets and devices, and files over ``$POISONLAB_MAX_FILE_MB`` (archives excepted:
they are streamed, and their members are checked when read). For ``poisonlab doctor``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import one_line
from .archives import is_archive
from .limits import max_file_bytes, mib
from .safe_files import file_kind, outside

MAX_ENTRIES = 2_000_000  # a scan stops (and says so) after this many entries


def _link_problem(path: str, root: str) -> str:
    try:
        target = os.readlink(path)
    except OSError as e:
        return f"symbolic link that cannot be read ({e.strerror or e}); loaders refuse links"
    where = "outside the data folder" if outside(path, root) else "inside the data folder"
    return (f"symbolic link to '{one_line(target, 120)}' ({where}); loaders refuse links: "
            "replace it with the file or folder itself")


def scan_data_folder(folder: Path) -> list[tuple[str, str]]:
    """``(path, problem)`` for every entry under ``folder`` that a loader would refuse, in path order.

    An empty list means nothing there would be refused for its type, place or size (the
    contents are not parsed). ``folder`` itself may be a link (to the real data folder).
    """
    root = os.path.realpath(folder)
    cap = max_file_bytes()
    problems: list[tuple[str, str]] = []
    pending = [str(folder)]
    seen = 0
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append((current, f"cannot list this folder ({e.strerror or e})"))
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_ENTRIES:
                problems.append((str(folder), f"more than {MAX_ENTRIES:,} entries: scan stopped"))
                return sorted(problems)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                problems.append((entry.path, f"cannot be examined ({e.strerror or e})"))
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                problems.append((entry.path, _link_problem(entry.path, root)))
            elif stat.S_ISDIR(mode):
                pending.append(entry.path)
            elif not stat.S_ISREG(mode):
                problems.append((entry.path, f"{file_kind(mode)}, not a regular file; loaders refuse it"))
            elif st.st_size > cap and not is_archive(entry.name):
                why = f"{mib(st.st_size)}, over the {mib(cap)} size cap ($POISONLAB_MAX_FILE_MB); loaders refuse it"
                problems.append((entry.path, why))
    return sorted(problems)
