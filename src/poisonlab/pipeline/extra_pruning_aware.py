"""The pruning-aware attack of Liu et al. 2018 (Sec. 4) as an optional second victim
(``pruning_aware:``): trained on the same poisoned data so that its backdoor survives pruning
(:mod:`poisonlab.attacks.pruning_aware`); every defense is applied to it too."""
from __future__ import annotations

from typing import Any

from ..attacks.pruning_aware import pruning_aware_backdoor, pruning_aware_config
from ..defenses.pruning import resolve_layer
from ..errors import PoisonlabError
from ..resources import timed
from ..train import TrainResult
from .context import TrainedModel, Victim
from .extras import EXTRAS
from .fit import new_model
from .measuring import measure_victim


@EXTRAS.register("pruning-aware")
class PruningAwareStep:
    key = "pruning_aware"

    @staticmethod
    def enabled(cfg: Any) -> bool:
        return cfg.pruning_aware is not None

    def check(self, ctx: Any) -> None:
        if ctx.attack is None:
            raise PoisonlabError("pruning_aware trains a backdoored model; add an attack: section (BadNets)")
        ctx.state["pruning_aware"] = pruning_aware_config(ctx.cfg.pruning_aware, ctx.cfg.train)
        resolve_layer(new_model(ctx, ctx.train), ctx.cfg.pruning_aware.get("layer"))

    def add_victims(self, ctx: Any) -> None:
        pa_cfg, cfg = ctx.state["pruning_aware"], ctx.cfg
        with timed(ctx.times, "pruning_aware_seconds"):
            model, info = pruning_aware_backdoor(
                lambda: new_model(ctx, ctx.train), ctx.train, ctx.poison.dataset, ctx.val, pa_cfg.layer, pa_cfg,
                cfg.seed, ctx.device, clean_model=ctx.clean.model)
        history = info["poison_history"]
        trained = TrainedModel(model.cpu(), TrainResult(history, len(history), ctx.times["pruning_aware_seconds"]))
        victim = Victim(self.key, "pruning-aware BadNet", trained, weights="pruning_aware.safetensors")
        measure_victim(ctx, victim, "pruning-aware")
        victim.metrics.update({k: v for k, v in info.items() if "history" not in k})
        ctx.victims.append(victim)
