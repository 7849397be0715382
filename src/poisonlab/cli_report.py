"""What ``poisonlab run`` prints after a run, per family: the tables a person reads first.

Tables are printed formatted (percentages, "–"), never read back from the run folder's CSV,
which holds plain numbers for programs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import report


def _print_markdown(path: Path, title: str, echo: Callable[[str], None]) -> None:
    """A table of the run folder written by another step, read back from its markdown (the
    formatted copy): printed as a table, or as text when it is not one table."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = report.from_markdown(text)
    if rows:
        report.print_table(rows, title)
    elif text.strip():
        echo(text.rstrip())


def print_step_run(cfg: Any, outcome: Any, echo: Callable[[str], None]) -> None:
    """A step-family run: summary, per-class (seed) table, defenses and optional tables."""
    from .run_outputs import summary_table

    m = outcome.metrics
    report.print_table(summary_table(m), f"{cfg.name}: summary")
    report.print_table(outcome.table, f"{cfg.name}: per-class error (seed table)")
    _print_markdown(outcome.path / "tables" / "defenses.md", f"{cfg.name}: attack x defense", echo)
    groups = m.get("traffic_groups")
    if groups is not None:
        from .traffic_report import traffic_table

        nets = {groups["trigger"]: (groups["badnet_clean"], groups["badnet_backdoor"])}
        report.print_table(traffic_table(groups["baseline_clean"], nets), f"{cfg.name}: by sign type")
    if "transfer" in m:
        from .transfer_run import transfer_table

        report.print_table(transfer_table(m["transfer"]), f"{cfg.name}: transfer learning")
    if "over_victims" in m:
        from .measures.targeted import over_victims_table

        report.print_table(over_victims_table(m["over_victims"]), f"{cfg.name}: targets poisoned over victims")
    a = m.get("attack")
    if a is not None:
        parts = [f"{a['n_poison']} poison rows"]
        if "labels" in a:
            parts.insert(0, f"{a['labels']}, trigger {a['trigger']}")
        if "mode" in a:
            parts[-1] += f" ({a['mode']})"
        if "test_triggered" in a:
            parts.append(f"{a['test_triggered']} triggered test inputs")
        if "targets" in a:
            parts.insert(0, f"{a['name']}, {a['targets']} target(s) -> class {a['poison_class']}")
            if "perturbation_linf_max" in a and len(m["data"]["shape"]) == 3:  # pixels in [0, 1]
                parts.append(f"max perturbation {255 * a['perturbation_linf_max']:.1f}/255 (l-inf)")
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
