"""``poisonlab doctor``: verify data folders, a run store and configs without running anything.

It answers, before an experiment, the question a supply-chain audit asks of every input:
would poisonlab accept this file, and if not, why? Each data set found in the search
folders is scanned for entries a loader refuses (links, devices, FIFOs, files over the
size cap, paths leaving the folder), checked against the official checksums where they
are known and against a ``SHA256SUMS`` manifest beside it (see :mod:`poisonlab.data.manifest`), and (unless ``load=False``) loaded through the same hardened loader a run
uses; the run store's index, run folders, baseline cache and temporary folders are
checked read-only; each config is parsed and validated. Nothing is written or repaired.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import PoisonlabError, one_line

OK, REFUSED, WARNING, MISSING, INFO = "ok", "refused", "warning", "missing", "info"
PROBLEMS = (REFUSED, WARNING)


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report: which area, which item, its status and why."""

    area: str
    item: str
    status: str
    detail: str

    def as_row(self) -> dict[str, str]:
        return {"area": self.area, "item": self.item, "status": self.status, "detail": self.detail}


def _official_checksums(name: str, folder: Path) -> list[Finding]:
    """Digest checks of the files whose official checksums poisonlab knows."""
    from .data import cifar10, idx
    from .data.safe_files import check_checksum

    out: list[Finding] = []
    if name in idx.IDX_SETS:
        spec = idx.IDX_SETS[name]
        for base in idx.FILES.values():
            path = idx._pick(folder, base)
            if not path.is_file():
                continue
            try:
                raw = idx.read_idx_bytes(path)
                official = len(raw) == idx.OFFICIAL_SIZES[base]
                if official:
                    idx._check_md5(raw, path, spec, base)
            except PoisonlabError as exc:
                out.append(Finding("data", name, REFUSED, one_line(str(exc))))
                continue
            out.append(Finding("data", name, OK if official else INFO,
                               f"{path.name}: MD5 matches the official file" if official
                               else f"{path.name}: not the official size, so a subset: parsed, not checksummed"))
    elif name == "cifar10" and (folder / cifar10.ARCHIVE).is_file():
        archive = folder / cifar10.ARCHIVE
        try:
            check_checksum(archive, md5=cifar10.ARCHIVE_MD5)
        except PoisonlabError as exc:
            out.append(Finding("data", name, REFUSED, one_line(str(exc))))
        else:
            out.append(Finding("data", name, OK, f"{archive.name}: MD5 matches the official archive"))
    return out


def _manifest_checks(name: str, folder: Path) -> list[Finding]:
    """The data set's files against a ``SHA256SUMS`` manifest in its folder or the one above."""
    from .data.manifest import find_manifest, verify_manifest

    manifest = find_manifest(folder)
    if manifest is None:
        return []
    try:
        results = verify_manifest(manifest, folder)
    except PoisonlabError as exc:
        return [Finding("data", name, REFUSED, one_line(str(exc)))]
    return [Finding("data", name, OK if ok else REFUSED, f"{path}: {detail}") for path, ok, detail in results]


def _describe_split(split) -> str:
    dims = tuple(split.train.x.shape[1:])
    what = "texts" if dims in ((), (0,)) and "text" in split.train.meta else "rows of " + "x".join(map(str, dims))
    return f"loads: {len(split.train):,} train + {len(split.test):,} test {what}, {split.train.num_classes} classes"


def check_dataset(name: str, data_dir: str | Path | None = None, load: bool = True) -> list[Finding]:
    """Scan, checksum and (with ``load``) load one registered data set where a run would find it."""
    from .data import DATASETS
    from .data.scan import scan_data_folder

    spec = DATASETS.get(name)
    if spec.embedded:
        return [Finding("data", name, OK, "embedded in the package")]
    present, folder = spec.present(data_dir)
    if not present or folder is None:
        return [Finding("data", name, MISSING, "not in the search folders (poisonlab datasets lists them)")]
    out = [Finding("data", name, REFUSED, f"{path}: {problem}") for path, problem in scan_data_folder(folder)]
    out += _official_checksums(name, folder)
    out += _manifest_checks(name, folder)
    if load:
        start = time.perf_counter()
        try:
            split = spec.load([folder], False)
        except PoisonlabError as exc:
            out.append(Finding("data", name, REFUSED, one_line(str(exc))))
        else:
            out.append(Finding("data", name, OK, f"{_describe_split(split)} from {folder} "
                                                 f"in {time.perf_counter() - start:.1f}s"))
    elif not any(f.status == REFUSED for f in out):
        out.append(Finding("data", name, OK, f"found in {folder} (not loaded: --no-load)"))
    return out


def check_data(data_dir: str | Path | None = None, names: Iterable[str] | None = None, load: bool = True,
               on_item: Callable[[str], None] | None = None) -> list[Finding]:
    """:func:`check_dataset` for ``names`` (default: every registered data set that is not embedded)."""
    from .data import DATASETS

    chosen = list(names) if names else [n for n in DATASETS.names() if not DATASETS.get(n).embedded]
    out: list[Finding] = []
    for name in chosen:
        if on_item is not None:
            on_item(f"data set {name}")
        out += check_dataset(name, data_dir, load)
    return out


def check_runs(root: str | Path) -> list[Finding]:
    """The run store's problems (read-only): index, run folders, baseline cache, temporary folders."""
    from .store_check import check_store

    root = Path(root)
    if not root.exists():
        return [Finding("store", str(root), MISSING, "no run store here yet (a run creates it)")]
    if not root.is_dir():
        return [Finding("store", str(root), REFUSED, "is not a folder; runs could not be written here")]
    found = [Finding("store", path, status, problem) for path, status, problem in check_store(root)]
    if not any(f.status in PROBLEMS for f in found):
        found.append(Finding("store", str(root), OK, "index, run folders and cache are sound"))
    return found


def check_configs(paths: Iterable[Path]) -> list[Finding]:
    """Parse and validate each config as the command that takes it would (by its top-level keys)."""
    out: list[Finding] = []
    for path in paths:
        try:
            kind = _validate_config(Path(path))
        except PoisonlabError as exc:
            out.append(Finding("config", str(path), REFUSED, one_line(str(exc))))
        else:
            out.append(Finding("config", str(path), OK, f"valid {kind} config"))
    return out


def _validate_config(path: Path) -> str:
    """Validate ``path`` as a grid, a subpopulation sweep or an experiment; returns which."""
    from .config import load_config, read_yaml

    raw = read_yaml(path)
    if "attacks" in raw and "base" in raw:
        from .matrix import load_grid

        load_grid(path)
        return "grid (poisonlab matrix)"
    attack = raw.get("attack")
    if "subpopulations" in raw or (isinstance(attack, dict) and "alphas" in attack):
        from .subpop.config import load_subpop_config

        load_subpop_config(path)
        return "subpopulation (poisonlab subpop)"
    load_config(path)
    return "experiment (poisonlab run)"


def problem_count(findings: Iterable[Finding]) -> int:
    """How many findings are problems (refused or warnings)."""
    return sum(f.status in PROBLEMS for f in findings)


def findings_table(findings: Iterable[Finding]):
    """The findings as a rich table; every shown text is escaped (file names may hold markup)."""
    from rich.markup import escape
    from rich.table import Table

    colour = {OK: "green", REFUSED: "red", WARNING: "yellow"}
    table = Table(title="poisonlab doctor")
    for col in ("area", "item", "status", "detail"):
        table.add_column(col, overflow="fold")
    for f in findings:
        style = colour.get(f.status)
        status = f"[{style}]{f.status}[/]" if style else f.status
        table.add_row(escape(f.area), escape(f.item), status, escape(f.detail))
    return table
