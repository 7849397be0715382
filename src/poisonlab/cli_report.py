"""What ``poisonlab run`` prints after a run, per family: the tables a person reads first."""
from __future__ import annotations

import csv
from typing import Any, Callable

from . import report


def _print_csv(path: Any, title: str) -> None:
    if path.is_file():
        with path.open() as fh:
            report.print_table(list(csv.DictReader(fh)), title)


def print_step_run(cfg: Any, outcome: Any, echo: Callable[[str], None]) -> None:
    """A step-family run: summary, per-class (seed) table, defenses and optional tables."""
    from .run_outputs import summary_table

    m = outcome.metrics
    report.print_table(summary_table(m), f"{cfg.name}: summary")
    report.print_table(outcome.table, f"{cfg.name}: per-class error (seed table)")
    _print_csv(outcome.path / "tables" / "defenses.csv", f"{cfg.name}: attack x defense")
    for extra, title in (("traffic_groups", "by sign type"), ("transfer", "transfer learning")):
        _print_csv(outcome.path / "tables" / f"{extra}.csv", f"{cfg.name}: {title}")
    a = m.get("attack")
    if a is not None:
        parts = [f"{a['n_poison']} poison rows"]
        if "labels" in a:
            parts.insert(0, f"{a['labels']}, trigger {a['trigger']}")
        if "mode" in a:
            parts[-1] += f" ({a['mode']})"
        if "test_triggered" in a:
            parts.append(f"{a['test_triggered']} triggered test inputs")
        echo("attack: " + ", ".join(parts))
    echo(f"time {m['time']['total_seconds']:.1f}s, peak memory {m['peak_memory_mb']['rss']:.0f} MiB")
    echo(f"run folder: {outcome.path}")


def print_sweep(cfg: Any, outcome: Any, echo: Callable[[str], None]) -> None:
    """A subpopulation sweep: worst-k target damage, hardest-hit subpopulations, costs."""
    from .subpop.experiment import fairness_rows, summary_rows

    m = outcome.metrics
    report.print_table(summary_rows(m["summary"]), f"{cfg.name}: worst-k target damage")
    report.print_table(fairness_rows(m["rows"]), f"{cfg.name}: hardest-hit subpopulations")
    echo(f"clean accuracy {100 * m['model']['clean_accuracy']:.2f}%, {m['subpopulations']['count']} "
         f"subpopulations x {len(cfg.attack.alphas)} alphas = {m['retrainings']} retrainings on {m['workers']} "
         f"worker(s), {m['seconds_per_retraining']:.2f}s each")
    echo(f"time {m['time']['total_seconds']:.1f}s, peak memory {m['peak_memory_mb']['rss']:.0f} MiB")
    echo(f"run folder: {outcome.path}")
