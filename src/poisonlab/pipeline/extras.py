"""Optional steps of an experiment, switched on by its config and registered in :data:`EXTRAS`.

An extra is an object with a ``key`` and ``enabled(cfg)``, and any of these stage methods,
each called with the run's :class:`~poisonlab.pipeline.context.Context`:

* ``check(ctx)``: before any training (layer names, needs); fail here, not after an hour;
* ``after_data(ctx)``: once the data are split (the transfer experiment keeps its students' part);
* ``analyse(ctx)``: after the clean reference and the victim are measured (traffic-sign table,
  backdoor neurons);
* ``add_victims(ctx)``: another model trained on the poisoned data (the pruning-aware BadNet);
* ``finish(ctx)``: after the defenses (transfer students of both teachers).

Registration order is run order. A new optional analysis is one file plus one
``@EXTRAS.register`` line.
"""
from __future__ import annotations

from typing import Any

from ..registry import Registry

EXTRAS: Registry[Any] = Registry("optional step")

STAGES = ("check", "after_data", "analyse", "add_victims", "finish")


def enabled_extras(cfg: Any) -> list[Any]:
    """Instances of the optional steps ``cfg`` switches on, in registration order."""
    return [EXTRAS.get(name)() for name in EXTRAS._items if EXTRAS.get(name).enabled(cfg)]


def run_stage(ctx: Any, stage: str) -> None:
    """Call ``stage`` of every enabled optional step that has it."""
    assert stage in STAGES, stage
    for extra in ctx.extras:
        hook = getattr(extra, stage, None)
        if hook is not None:
            hook(ctx)


# registered in run order
from . import extra_transfer, extra_traffic, extra_neurons, extra_pruning_aware, extra_victim_seeds  # noqa: E402,F401,I001
from . import extra_targeted_plot, extra_attacker_loss  # noqa: E402,F401,I001
