"""Checksum manifests (``SHA256SUMS``, the format ``sha256sum`` writes) beside data sets.

A data folder may carry a manifest of ``<64 hex digits>  <path>`` lines, written when the
files were fetched. :func:`verify_manifest` checks the files of one data set against it,
for ``poisonlab doctor``. The manifest is as untrusted as the data: it is read with the
regular-file rules and a size cap, a malformed line is reported (not guessed at), and a
listed path that is absolute, climbs out with ``..`` or is not a regular file inside the
manifest's folder is refused, never opened.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from ..errors import PoisonlabError, one_line
from .safe_files import CHUNK, UNCAPPED, open_regular_file, read_regular_file

MANIFEST = "SHA256SUMS"
MAX_MANIFEST_BYTES = 1 << 20
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def find_manifest(folder: Path) -> Path | None:
    """The manifest in ``folder`` or the folder above it (a data root holding every set), or None."""
    for d in (folder, folder.parent):
        if (d / MANIFEST).is_file():
            return d / MANIFEST
    return None


def read_manifest(manifest: Path) -> tuple[dict[str, str], list[str]]:
    """``(relative path -> sha256, problems)``: the well-formed entries and one problem per bad line."""
    text = read_regular_file(manifest, max_bytes=MAX_MANIFEST_BYTES, label=str(manifest))
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise PoisonlabError(f"{manifest} is not UTF-8 text; a checksum manifest is sha256sum output") from None
    entries: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            problems.append(f"line {number} is not '<sha256>  <path>': {one_line(line, 80)}")
            continue
        name = PurePosixPath(match.group(2).removeprefix("./"))
        if name.is_absolute() or ".." in name.parts:
            problems.append(f"line {number} names '{one_line(str(name), 80)}', outside the manifest's folder")
            continue
        entries[str(name)] = match.group(1).lower()
    return entries, problems


def _sha256(path: Path, root: Path) -> str:
    digest = hashlib.sha256()
    with open_regular_file(path, root, max_bytes=UNCAPPED, label=str(path)) as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(manifest: Path, under: Path) -> list[tuple[str, bool, str]]:
    """``(path, ok, detail)`` for each manifest entry inside folder ``under``, and each bad line."""
    root = manifest.parent
    entries, problems = read_manifest(manifest)
    out: list[tuple[str, bool, str]] = [(str(manifest), False, p) for p in problems]
    try:
        prefix = under.resolve().relative_to(root.resolve())
    except ValueError:
        return out
    for name, expected in sorted(entries.items()):
        path = root / name
        if prefix.parts and PurePosixPath(name).parts[: len(prefix.parts)] != prefix.parts:
            continue
        try:
            actual = _sha256(path, root)
        except PoisonlabError as exc:
            out.append((str(path), False, f"listed in {manifest.name} but {one_line(str(exc), 300)}"))
            continue
        if actual == expected:
            out.append((str(path), True, f"SHA-256 matches {manifest.name}"))
        else:
            out.append((str(path), False, f"SHA-256 is {actual}, {manifest.name} says {expected}: "
                                          "the file changed since the manifest was written"))
    return out
