"""The ``poisonlab`` command line: run experiments, list data sets and runs, show a run.

Every user error prints one line, ``error: ...``, and exits with status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from . import __version__
from .errors import PoisonlabError, one_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="poisonlab: training-data poisoning attacks, victims, defenses and measurements.",
)

RUNS_DIR_HELP = "folder holding run folders and index.sqlite (default: runs, or output.dir of the config)"


def _console():
    """A rich console; wide when output goes to a file or pipe, so tables are not squeezed."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poisonlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """poisonlab: training-data poisoning attacks, victims, defenses and measurements."""


TRUST_HELP = "allow model: names that are .py files (./mynet.py:MyNet): runs that file's code"


def _run_config(config: Path, overrides: list[str], quiet: bool, trust_code: bool, family: str | None = None,
                save_reference: Optional[Path] = None, **top: Any) -> None:
    """Load any family's config, run it and print what a person reads first."""
    from . import progress
    from .families import load_any_config
    from .models.imports import set_trust_code
    from .reference_export import check_save_reference, save_reference_weights

    set_trust_code(trust_code)
    fam, cfg = load_any_config(config, overrides, family=family, **top)
    if save_reference is not None:
        check_save_reference(cfg, save_reference)
    if quiet:
        progress.set_enabled(False)
    outcome = fam.run(cfg)
    fam.print_run(cfg, outcome, typer.echo)
    if save_reference is not None:
        save_reference_weights(outcome, save_reference)
        typer.echo(f"clean reference's weights: {save_reference}")


def _paths(set_: list[str], data_dir: Optional[Path], output: Optional[Path], download: bool = False) -> list[str]:
    overrides = list(set_)
    if data_dir is not None:
        overrides.append(f"data.dir={data_dir}")
    if download:
        overrides.append("data.download=true")
    if output is not None:
        overrides.append(f"output.dir={output}")
    return overrides


@app.command()
def run(
    config: Path = typer.Argument(..., help="experiment YAML file of any attack family (see examples/)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=5 (repeatable)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where data files are (also $POISONLAB_DATA)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (overrides the config's)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (default: the config's, auto)"),
    download: bool = typer.Option(False, "--download", help="fetch missing data files (checksums verified)"),
    output: Optional[Path] = typer.Option(None, "--output", help="runs folder (overrides output.dir)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="subpopulation sweeps: parallel retrainings "
                                          "(default: one per core)"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    save_reference: Optional[Path] = typer.Option(None, "--save-reference", help="also copy the clean reference's "
                                                  "weights to this .safetensors file (for another config's "
                                                  "model.weights: a feature extractor trained on other data)"),
) -> None:
    """Run an experiment: fit the clean reference, poison, fit the victim, defend, measure, save a run folder.

    The attack family is the config's family: key, else its attack's (BadNets: backdoor;
    feature-collision, gradient-matching, random-noise, stingray, influence: targeted;
    label-flip, gradient-poisoning: availability). Without an attack: the clean model only
    (--save-reference keeps its weights). A subpopulation config (family: subpopulation) runs its
    sweep, as poisonlab subpop does."""
    if device is not None and device not in ("cpu", "cuda", "auto"):
        raise PoisonlabError(f"--device must be cpu, cuda or auto, got '{device}'")
    _run_config(config, _paths(set_, data_dir, output, download), quiet, trust_code, seed=seed, device=device,
                workers=workers, save_reference=save_reference)


@app.command()
def datasets(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="extra folder to search first")) -> None:
    """List every known data set, the files it expects, where it looks, and whether they are present."""
    from rich.table import Table

    from .data import DATASETS
    from .data.base import search_roots

    table = Table(title="data sets")
    for col in ("name", "description", "files", "status"):
        table.add_column(col)
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        ok, where = spec.present(data_dir)
        status = "embedded" if spec.embedded else (f"[green]present[/] in {where}" if ok else "[red]missing[/]")
        if not ok and spec.downloadable:
            status += " (--download)"
        files = "\n".join(spec.files) if spec.files else "-"
        table.add_row(name, spec.description, files, status)
    console = _console()
    console.print(table)
    console.print("searched, in order (each with the data set's folder name, e.g. mnist/): "
                  + ", ".join(str(r) for r in search_roots(data_dir)))


@app.command()
def models() -> None:
    """List the registered models."""
    from .models import MODELS

    for name in MODELS.names():
        typer.echo(f"{name:20s} {MODELS.get(name).description}")


@app.command()
def defenses() -> None:
    """List the registered defenses (use them in a config's defenses: list)."""
    from .defenses import DEFENSES

    for name in DEFENSES.names():
        typer.echo(f"{name:22s} {DEFENSES.get(name).description}")


@app.command()
def runs(
    dir: Path = typer.Option(Path("runs"), "--dir", help=RUNS_DIR_HELP),
    limit: int = typer.Option(20, "--limit", help="show at most this many runs (newest first)"),
    as_json: bool = typer.Option(False, "--json", help="print the index rows as JSON"),
    wide: bool = typer.Option(False, "--wide", help="every column, even on a terminal too narrow for them"),
) -> None:
    """List stored runs of every family: id, name, attack and key metrics (on a narrow terminal the
    columns that fit; --wide: all of them)."""
    from .store import list_runs
    from .store_view import print_runs, run_cells

    rows = list_runs(dir, limit=max(limit, 0), with_metrics=False)
    for r in rows:
        run_cells(r, dir)  # damage: one line, before any output
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no runs in {dir} (start one with: poisonlab run examples/digits_badnets.yaml)")
        return
    print_runs(rows, dir, wide)


@app.command()
def show(
    run_id: str = typer.Argument(..., metavar="RUN", help="run id, unique prefix of one, or a run folder"),
    dir: Path = typer.Option(Path("runs"), "--dir", help=RUNS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the run's index summary and metrics.json as JSON "
                                 "(nothing else on standard output; NaN as null)"),
) -> None:
    """Print a run's tables and where its plots and weights are."""
    from .store import find_run, read_metrics
    from .store_view import plot_names, run_json, table_texts

    path = find_run(dir, run_id)
    metrics = read_metrics(path)  # checked: time.total_seconds and peak_memory_mb.rss are numbers
    if as_json:
        typer.echo(run_json(path, metrics))
        return
    typer.echo(f"run folder: {path}")
    for text in table_texts(path):
        typer.echo("")
        typer.echo(text)
    typer.echo("")
    typer.echo(f"time {metrics['time']['total_seconds']:.1f}s, peak memory {metrics['peak_memory_mb']['rss']:.0f} MiB")
    plots = plot_names(path)
    if plots:
        typer.echo("plots: " + ", ".join(plots))


@app.command()
def subpop(
    config: Path = typer.Argument(..., help="subpopulation YAML file (see examples/subpop_*.yaml)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set attack.alphas=[1] (repeatable)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where data files are (also $POISONLAB_DATA)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (overrides the config's)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="parallel retrainings (default: one per core)"),
    output: Optional[Path] = typer.Option(None, "--output", help="runs folder (overrides output.dir)"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Subpopulation poisoning sweep (Jagielski et al. 2021): target damage and collateral.

    Finds subpopulations (FeatureMatch or ClusterMatch), poisons each by label flipping at
    every alpha, retrains the victim and measures against the clean model. A defenses: list
    (trim, sever, spectral-signatures, activation-clustering, certified, fine-pruning) runs
    in every task (see examples/subpop_adult_defenses.yaml). Same as poisonlab run on a
    config with family: subpopulation."""
    _run_config(config, _paths(set_, data_dir, output), quiet, trust_code, family="subpopulation", seed=seed,
                workers=workers)


@app.command("traffic-table")
def traffic_table_cmd(
    run_ids: List[str] = typer.Argument(..., metavar="RUN...", help="GTSRB runs, one per trigger (id, prefix or folder)"),
    dir: Path = typer.Option(Path("runs"), "--dir", help=RUNS_DIR_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also write the grouped bar chart to this PNG"),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="also write the table to this CSV file"),
) -> None:
    """GTSRB runs side by side, by sign type (BadNets Sec. 4 table).

    Clean accuracy of the baseline and, per trigger, the BadNet's clean and backdoor accuracy
    for stop, speed limit, warning and other signs."""
    from . import report
    from .store import find_run, read_metrics
    from .store_view import traffic_groups
    from .traffic_report import plot_traffic_table, traffic_table

    baseline = None
    nets: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for run_id in run_ids:
        path = find_run(dir, run_id)
        name, base, pair = traffic_groups(read_metrics(path), path)  # checked: damage is one line
        baseline = baseline or base
        while name in nets:
            name += "'"
        nets[name] = pair
    for out in (csv_out, plot):
        if out is not None and not out.parent.is_dir():
            raise PoisonlabError(f"cannot write {out}: folder {out.parent} does not exist")
    rows = traffic_table(baseline or {}, nets)
    report.print_table(rows, "BadNets on traffic signs, by sign type")
    if csv_out is not None:
        csv_out.write_text(report.to_csv(rows))
    if plot is not None:
        plot_traffic_table(plot, baseline or {}, nets)


@app.command()
def matrix(
    grid: Path = typer.Argument(..., help="grid YAML file: kind, base, attacks, defenses, seeds "
                                "(see examples/matrix_*.yaml)"),
    set_: List[str] = typer.Option([], "--set", help="override a grid key, e.g. --set base.train.epochs=2 "
                                   "(repeatable)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where data files are (also $POISONLAB_DATA)"),
    output: Optional[Path] = typer.Option(None, "--output", help="runs folder (overrides output.dir)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="subpopulation grids: parallel retrainings in "
                                          "each cell (overrides the grid's workers:; default one per core); "
                                          "changes neither the numbers nor which cells are reused"),
    executor: str = typer.Option("inprocess", "--executor", help="how cells run: inprocess (one after the other) "
                                 "or pool (--jobs cells at once in local worker processes)"),
    jobs: int = typer.Option(2, "--jobs", help="cells at once with --executor pool"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Attacks x defenses x seeds in one table (mean ± std over seeds).

    kind: backdoor (default; also badnets): BadNets experiments (Gu et al. 2017), clean accuracy
    and attack success per attack and defense. kind: subpopulation (also subpop): subpopulation
    attacks (Jagielski et al. 2021), worst-5 target damage, collateral, clean accuracy and rows
    removed per attack, alpha and defense. One experiment per (attack, seed); finished ones are
    reused from the run store. One line per finished cell, with its time."""
    from . import progress
    from .executors import make_executor
    from .matrix import load_grid, print_matrix, run_matrix
    from .models.imports import set_trust_code

    set_trust_code(trust_code)
    run_with = make_executor(executor, jobs)
    g = load_grid(grid, data_dir=data_dir, output_dir=output, workers=workers, overrides=list(set_))
    if quiet:
        progress.set_enabled(False)
    outcome = run_matrix(g, echo=lambda line: typer.echo(line) or sys.stdout.flush(), executor=run_with)
    print_matrix(outcome.table, f"{g.name}: attack x defense over {len(g.seeds)} seed(s)")
    for note in outcome.notes:
        typer.echo(note)
    typer.echo(f"cells: {len(outcome.computed)} computed, {len(outcome.reused)} reused; "
               f"time {outcome.metrics['time']['total_seconds']:.1f}s")
    typer.echo(f"run folder: {outcome.path}")


@app.command()
def doctor(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="data folder to check first (also $POISONLAB_DATA)"),
    dataset: List[str] = typer.Option([], "--dataset", "-d", help="check only this data set (repeatable; "
                                      "default: every one that is not embedded)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help="run store to check (index, run folders, cache)"),
    config: List[Path] = typer.Option([], "--config", "-c", help="also parse and validate this config (repeatable)"),
    load: bool = typer.Option(True, "--load/--no-load", help="load each data set found with the run's loader "
                              "(--no-load: scan and checksum only, much faster)"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON"),
) -> None:
    """Check data folders, a run store and configs without running an experiment.

    Says what poisonlab would refuse and why: links, devices, FIFOs and oversized files in
    data folders, checksum mismatches against the official files, files a loader rejects,
    a damaged run index, run folders or cache entries, stale temporary folders, invalid
    configs. Read-only. Exit status 0 when nothing is refused, 1 otherwise."""
    from . import doctor as doc

    findings: list[doc.Finding] = []
    for path in config:
        findings += doc.check_configs([path])
    with _status("checking") as say:
        findings += doc.check_data(data_dir, dataset or None, load, on_item=say)
        say(f"run store {runs_dir}")
        findings += doc.check_runs(runs_dir)
    problems = doc.problem_count(findings)
    if as_json:
        typer.echo(json.dumps([f.as_row() for f in findings], indent=2))
    else:
        _console().print(doc.findings_table(findings))
        typer.echo(f"{problems} problem(s) found" if problems else "no problems found")
    if problems:
        raise typer.Exit(1)


def _status(prefix: str):
    """A transient spinner naming the item being checked (none when bars are off)."""
    import contextlib

    from . import progress

    @contextlib.contextmanager
    def spinner():
        if not progress.enabled():
            yield lambda text: None
            return
        with progress.console.status(prefix) as status:
            yield lambda text: status.update(f"{prefix} {text}")

    return spinner()


def guarded(fn: Callable[[], Any]) -> None:
    """Call ``fn``; a :class:`PoisonlabError` becomes one ``error:`` line and exit status 2.

    Memory exhaustion is the last line of defense only (loaders bound their allocations
    before making them): it too ends in one line, exit status 3, never a traceback.
    """
    try:
        fn()
    except PoisonlabError as exc:
        typer.secho(f"error: {one_line(str(exc), 4000)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except MemoryError:
        typer.secho("error: out of memory; the input asks for more memory than this machine has "
                    "(see docs/security.md)", fg=typer.colors.RED, err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors and exit status 2 for bad input."""
    guarded(lambda: app(args=argv, prog_name="poisonlab", standalone_mode=True))


if __name__ == "__main__":
    main()
