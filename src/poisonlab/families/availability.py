"""The ``availability`` family: the step pipeline with the availability measure
(:mod:`poisonlab.measures.availability`); its grids also write the test error against the
poisoning rate (:mod:`poisonlab.availability.curves`) as CSV and PNG."""
from __future__ import annotations

from typing import Any

from . import FAMILIES
from .step_family import StepFamily


class AvailabilityFamily(StepFamily):
    """A :class:`StepFamily` whose grid folder adds ``tables/error_curves.csv`` and ``plots/error_curves.png``."""

    def grid_outputs(self, folder: Any, cells: list[dict[str, Any]], grid: Any) -> None:
        from .. import report
        from ..availability.curves import error_curves, plot_error_curves

        rows = error_curves(cells, grid.attacks, grid.defenses)
        folder.write_text("tables/error_curves.csv", report.to_csv(rows))
        if rows and grid.output.plots:
            plot_error_curves(rows, folder.file("plots", "error_curves.png"), f"{grid.name}: test error against rate")


FAMILIES.register("availability")(AvailabilityFamily("availability", "availability", victim_label="poisoned victim"))
