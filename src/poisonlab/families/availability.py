"""The ``availability`` family: the step pipeline with the availability measure
(:mod:`poisonlab.measures.availability`); its grids also write the test error against the
poisoning rate (:mod:`poisonlab.availability.curves`) as CSV and PNG. On regression data
(Jagielski et al., S&P 2018) the headline is the test MSE and its ratio to the clean
reference's, and the curves plot the test MSE."""
from __future__ import annotations

from typing import Any

from . import FAMILIES
from .step_family import StepFamily, is_regression_run


class AvailabilityFamily(StepFamily):
    """A :class:`StepFamily` whose grid folder adds ``tables/error_curves.csv`` and ``plots/error_curves.png``."""

    def cell_summary(self, metrics: dict[str, Any], defenses: list[str]) -> dict[str, dict[str, Any]]:
        """The step family's summary; a regression run's also gets each model's MSE over the clean one's."""
        out = super().cell_summary(metrics, defenses)
        if is_regression_run(metrics):
            clean = metrics["baseline"]["test_mse"]
            for row in out.values():
                mse = row.get("test_mse")
                row["test_mse_ratio"] = None if mse is None or not clean else mse / clean
        return out

    def grid_outputs(self, folder: Any, cells: list[dict[str, Any]], grid: Any) -> None:
        from .. import report
        from ..availability.curves import error_curves, plot_error_curves

        rows = error_curves(cells, grid.attacks, grid.defenses)
        folder.write_text("tables/error_curves.csv", report.to_csv(rows))
        what = "test MSE" if rows and "test_mse_mean" in rows[0] else "test error"
        if rows and grid.output.plots:
            plot_error_curves(rows, folder.file("plots", "error_curves.png"), f"{grid.name}: {what} against rate")


FAMILIES.register("availability")(AvailabilityFamily("availability", "availability", victim_label="poisoned victim"))
