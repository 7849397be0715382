"""Further victims retrained on the same poisoned set with other seeds (``victim.seeds``).

A targeted attack's success depends on the victim's initialisation and batch order as much as
on its poisons: Witches' Brew (Geiping et al. 2021, Sec. 5) counts a target as poisoned over
several victims trained from scratch. Each further victim is trained by the run's victim recipe
with its own seed and measured by the family's measure; a measure with ``over_victims`` also
summarises all victims together (``metrics["over_victims"]``)."""
from __future__ import annotations

from typing import Any

from ..resources import timed
from .context import Victim
from .extras import EXTRAS
from .fit import fit_poisoned
from .measuring import measure_victim


@EXTRAS.register("victim-seeds")
class VictimSeedsStep:
    key = "victim_seeds"

    @staticmethod
    def enabled(cfg: Any) -> bool:
        """With ``victim.seeds``, or for a family whose measure summarises its victims (targeted)."""
        from ..families import get_family
        from ..families.step_family import attack_family

        measure = getattr(get_family(attack_family(cfg.attack)), "measure", None)
        return bool(cfg.victim.seeds) or hasattr(measure, "over_victims")

    def add_victims(self, ctx: Any) -> None:
        if ctx.poison is None:
            return
        label = ctx.family.victim_label
        with timed(ctx.times, "victim_seeds_seconds"):
            for seed in ctx.cfg.victim.seeds:
                trained = fit_poisoned(ctx, ctx.poison.dataset, f"victim (seed {seed})", seed=int(seed))
                victim = Victim(f"victim_seed_{seed}", f"{label} (seed {seed})", trained)
                measure_victim(ctx, victim, f"victim seed {seed}")
                victim.metrics["seed"] = int(seed)
                ctx.victims.append(victim)
        summarise = getattr(ctx.family.measure, "over_victims", None)
        if summarise is not None:
            ctx.metrics["over_victims"] = summarise([v.metrics for v in ctx.victims if v.key == "victim"
                                                     or v.key.startswith("victim_seed_")])
