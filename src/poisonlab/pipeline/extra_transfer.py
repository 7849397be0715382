"""The transfer experiment of BadNets (Gu et al. 2017, Sec. 5) as an optional step
(``transfer:``): the teacher trains on one part of the training set, students on the other,
relabelled for the new task (:mod:`poisonlab.transfer_run`)."""
from __future__ import annotations

from typing import Any

from .. import report
from ..models.layers import conv_layers
from ..resources import timed
from ..transfer import conv_layer
from ..transfer_run import plot_transfer, prepare_task, run_transfer, transfer_table
from .extras import EXTRAS
from .fit import new_model


@EXTRAS.register("transfer")
class TransferStep:
    key = "transfer"

    @staticmethod
    def enabled(cfg: Any) -> bool:
        return cfg.transfer is not None

    def check(self, ctx: Any) -> None:
        layer = ctx.cfg.transfer.strengthen_layer
        if layer is not None:
            conv_layer(new_model(ctx, ctx.train), layer)

    def after_data(self, ctx: Any) -> None:
        cfg = ctx.cfg
        task = prepare_task(cfg.transfer, ctx.train, ctx.val, ctx.test, cfg.seed)
        ctx.state["transfer"] = task
        ctx.train = task.teacher_train  # the teacher (U.S. network) never sees the student's images
        ctx.baseline_key_extra["teacher_fraction"] = cfg.transfer.teacher_fraction

    def finish(self, ctx: Any) -> None:
        cfg, task = ctx.cfg, ctx.state["transfer"]
        victim = ctx.victim
        neurons = ctx.metrics.get("backdoor_neurons") or {}
        convs = conv_layers(ctx.clean.model)
        with timed(ctx.times, "transfer_seconds"):
            ctx.metrics["transfer"] = run_transfer(
                cfg.transfer, cfg.train, task, ctx.clean.model, victim.trained.model if victim else None,
                ctx.attack.trigger if ctx.attack is not None else None,
                cfg.transfer.strengthen_layer or neurons.get("layer") or (convs[-1] if convs else None),
                neurons.get("flagged"), neurons.get("ranking"), cfg.seed, ctx.device)
        ctx.metrics["data"]["student_train"] = len(task.student_train)
        table = transfer_table(ctx.metrics["transfer"])
        ctx.folder.write_text("tables/transfer.md", report.to_markdown(table, f"{cfg.name}: transfer ({cfg.transfer.mode})"))
        ctx.folder.write_text("tables/transfer.csv", report.to_csv(table))
        if cfg.output.plots:
            plot_transfer(ctx.folder.file("plots", "transfer.png"), ctx.metrics["transfer"])
