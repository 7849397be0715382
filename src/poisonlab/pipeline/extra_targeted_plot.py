"""The targeted run's picture (``plots/targeted_examples.png``): its targets with the main victim's
answers and a few poisons beside their clean images (:mod:`poisonlab.targeted.plots`); for
image data, when the run writes plots."""
from __future__ import annotations

from typing import Any

from .extras import EXTRAS


@EXTRAS.register("targeted-plot")
class TargetedPlotStep:
    key = "targeted_plot"

    @staticmethod
    def enabled(cfg: Any) -> bool:
        from ..families.step_family import attack_family

        return cfg.attack is not None and cfg.output.plots and attack_family(cfg.attack) == "targeted"

    def finish(self, ctx: Any) -> None:
        victim, evaluation = ctx.victim, ctx.evaluation
        if victim is None or evaluation is None or not ctx.poison.dataset.is_image or "targets" not in victim.preds:
            return
        from ..targeted.plots import plot_targeted_examples

        rows = ctx.poison.poison_mask.nonzero().flatten()[:6]
        source = ctx.poison.source_index[rows]
        bases = ctx.train.x[source] if len(ctx.train) == len(ctx.poison.dataset) else ctx.poison.dataset.x[source]
        a = ctx.cfg.attack
        plot_targeted_examples(ctx.folder.file("plots", "targeted_examples.png"), evaluation.x, evaluation.true,
                               evaluation.target, victim.preds["targets"], bases, ctx.poison.dataset.x[rows],
                               ctx.test.classes, f"{ctx.cfg.name}: {a.get('name')} on {ctx.cfg.data.name}")
