"""BadNets Sec. 4's traffic-sign table (stop, speed limit, warning, other) as an optional step
(``analysis.traffic_signs: true``): a single-source, single-target attack on the 43 GTSRB
classes. The victim's backdoor column comes from every test image with the trigger stamped
(:func:`poisonlab.traffic_report.grouped_backdoor`)."""
from __future__ import annotations

from typing import Any

from .. import report
from ..errors import PoisonlabError
from ..traffic_report import grouped_accuracy, grouped_backdoor, plot_traffic_table, traffic_table
from ..train import predict
from .extras import EXTRAS


def trigger_label(trigger_cfg: dict[str, Any]) -> str:
    """A short name for a trigger in tables: the icon's name, else its kind (``patch`` -> ``square``)."""
    kind = str(trigger_cfg.get("kind", "trigger"))
    return str(trigger_cfg.get("icon") or {"patch": "square"}.get(kind, kind))


@EXTRAS.register("traffic-signs")
class TrafficSignStep:
    key = "traffic_groups"

    @staticmethod
    def enabled(cfg: Any) -> bool:
        return bool(cfg.analysis.traffic_signs)

    def check(self, ctx: Any) -> None:
        a = ctx.cfg.attack or {}
        source = a.get("source")
        if ctx.test.num_classes != 43:
            raise PoisonlabError(f"analysis.traffic_signs groups the 43 GTSRB classes; this data set has "
                                 f"{ctx.test.num_classes}; set analysis.traffic_signs: false")
        if a.get("labels", "single-target") != "single-target" or not isinstance(source, int) \
                or isinstance(source, bool):
            raise PoisonlabError("analysis.traffic_signs needs a single-source, single-target attack "
                                 "(attack.labels: single-target, attack.source: one class)")

    def analyse(self, ctx: Any) -> None:
        cfg, victim, test = ctx.cfg, ctx.victim, ctx.test
        if victim is None:
            return
        a = cfg.attack or {}
        triggered = predict(victim.trained.model, ctx.attack.trigger.apply(test.x), cfg.train.eval_batch_size,
                            ctx.device, desc="victim, every test image triggered")
        groups = {"trigger": trigger_label(a.get("trigger") or {}), "source": a["source"],
                  "target": a.get("target", 0),
                  "baseline_clean": grouped_accuracy(ctx.clean_preds["clean"], test.y),
                  "badnet_clean": grouped_accuracy(victim.preds["clean"], test.y),
                  "badnet_backdoor": grouped_backdoor(triggered, test.y, a["source"], int(a.get("target", 0)))}
        ctx.metrics["traffic_groups"] = groups
        nets = {groups["trigger"]: (groups["badnet_clean"], groups["badnet_backdoor"])}
        table = traffic_table(groups["baseline_clean"], nets)
        ctx.folder.write_text("tables/traffic_groups.md", report.to_markdown(table, f"{cfg.name}: by sign type"))
        ctx.folder.write_text("tables/traffic_groups.csv", report.to_csv(table))
        if cfg.output.plots:
            plot_traffic_table(ctx.folder.file("plots", "traffic_groups.png"), groups["baseline_clean"], nets)
