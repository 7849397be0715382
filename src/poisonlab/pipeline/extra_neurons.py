"""Backdoor neurons of the victim (BadNets Sec. 5.3) as an optional step (``analysis.backdoor_neurons``,
on by default): mean activation per channel of a conv layer on the attacked classes' clean
validation images vs the same images triggered; a CSV table and a plot in the run folder.
Models without convolutions, or no attacked validation rows, are skipped."""
from __future__ import annotations

from typing import Any

from .. import report
from ..analysis import backdoor_neuron_rows, channel_activation_stats, flag_backdoor_channels, plot_backdoor_neurons
from ..models.layers import conv_layers
from ..transfer import conv_layer
from .extras import EXTRAS
from .fit import new_model


@EXTRAS.register("backdoor-neurons")
class BackdoorNeuronStep:
    key = "backdoor_neurons"

    @staticmethod
    def enabled(cfg: Any) -> bool:
        """For a backdoor attack (a trigger to stamp on the validation images) with the analysis on."""
        from ..families.step_family import attack_family

        return cfg.attack is not None and bool(cfg.analysis.backdoor_neurons) and attack_family(cfg.attack) == "backdoor"

    def check(self, ctx: Any) -> None:
        if ctx.cfg.analysis.layer is not None:
            conv_layer(new_model(ctx, ctx.train), ctx.cfg.analysis.layer)

    def analyse(self, ctx: Any) -> None:
        cfg, victim, val = ctx.cfg, ctx.victim, ctx.val
        if victim is None or val is None or not conv_layers(victim.trained.model) \
                or not hasattr(ctx.attack, "evaluation_set"):
            return
        pairs = ctx.attack.evaluation_set(val)
        if len(pairs.x) == 0:
            return
        a = cfg.analysis
        stats = channel_activation_stats(victim.trained.model, a.layer, val.x[pairs.rows], pairs.x,
                                         cfg.train.eval_batch_size)
        flagged = flag_backdoor_channels(stats, a.z, a.clean_quantile)
        ctx.folder.write_text("tables/backdoor_neurons.csv", report.to_csv(backdoor_neuron_rows(stats, flagged)))
        if cfg.output.plots:
            plot_backdoor_neurons(ctx.folder.file("plots", "backdoor_neurons.png"), stats, flagged)
        ctx.metrics["backdoor_neurons"] = {
            "layer": stats.layer, "read_at": stats.read_at, "images": stats.n_clean, "flagged": flagged,
            "ranking": [int(c) for c in stats.ranking], "clean_mean": stats.clean_mean.tolist(),
            "triggered_mean": stats.triggered_mean.tolist()}
