"""The availability run's picture of the attack at work (``plots/attacker_loss.png``): the
attacker's validation loss after every step of an optimised attack (``val_loss_curve`` of
gradient poisoning), the figure Biggio et al. 2012 (Fig. 1) and Demontis et al. 2019 draw."""
from __future__ import annotations

from typing import Any

from .extras import EXTRAS


@EXTRAS.register("attacker-loss-plot")
class AttackerLossPlotStep:
    key = "attacker_loss_plot"
    regression = True
    """Also drawn for OptP on regression data (its validation MSE)."""

    @staticmethod
    def enabled(cfg: Any) -> bool:
        from ..families.step_family import attack_family

        return cfg.attack is not None and cfg.output.plots and attack_family(cfg.attack) == "availability"

    def finish(self, ctx: Any) -> None:
        curve = (getattr(ctx.attack, "report_", None) or {}).get("val_loss_curve")
        if not curve:
            return
        from ..report import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        ax.plot(range(len(curve)), curve, marker="." if len(curve) < 60 else None)
        ax.set_xlabel("attack step (0: poisons at their start)")
        ax.set_ylabel("attacker's validation loss")
        ax.set_title(f"{ctx.cfg.name}: {ctx.cfg.attack.get('name')} on {ctx.cfg.data.name}", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(ctx.folder.file("plots", "attacker_loss.png"), dpi=110)
        plt.close(fig)
