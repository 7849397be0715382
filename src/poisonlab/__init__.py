"""poisonlab: training-data poisoning attacks, victims, defenses and measurements.

The library API is importable from here, lazily (PEP 562): ``import poisonlab`` loads
neither torch nor scikit-learn until a name is used.

>>> import poisonlab
>>> attack = poisonlab.BadNets(p=0.1, target=0)  # doctest: +SKIP
>>> x_poisoned, y_poisoned, mask = attack.poison(x, y, seed=0)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import PoisonlabError

#: public name -> the module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    # attacks
    "ATTACKS": ".attacks", "BadNets": ".attacks", "BadNetsConfig": ".attacks", "PoisonResult": ".attacks",
    "build_attack": ".attacks",
    # defenses
    "DEFENSES": ".defenses", "register_defense": ".defenses",
    "SpectralSignatures": ".defenses.estimators", "ActivationClustering": ".defenses.estimators",
    # learners
    "MODELS": ".models", "build_model": ".models", "EstimatorModel": ".models",
    # data
    "DATASETS": ".data", "READERS": ".data", "Dataset": ".data", "DataSplit": ".data",
    "from_arrays": ".data", "register_dataset": ".data", "load_data": ".data",
    # families, measures, runners
    "FAMILIES": ".families", "load_any_config": ".families", "run_config": ".families",
    "MEASURES": ".measures",
    "load_config": ".config", "run_experiment": ".experiment",
    "load_grid": ".matrix", "run_matrix": ".matrix",
    # results
    "Run": ".results", "load_run": ".results",
}

__all__ = [
    "ATTACKS",
    "DATASETS",
    "DEFENSES",
    "FAMILIES",
    "MEASURES",
    "MODELS",
    "READERS",
    "ActivationClustering",
    "BadNets",
    "BadNetsConfig",
    "DataSplit",
    "Dataset",
    "EstimatorModel",
    "PoisonResult",
    "PoisonlabError",
    "Run",
    "SpectralSignatures",
    "__version__",
    "build_attack",
    "build_model",
    "from_arrays",
    "load_any_config",
    "load_config",
    "load_data",
    "load_grid",
    "load_run",
    "register_dataset",
    "register_defense",
    "run_config",
    "run_experiment",
    "run_matrix",
]


def __getattr__(name: str) -> object:
    """Import the module defining public ``name`` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    """The public names, the dunders and the submodules loaded so far."""
    loaded = (k for k, v in globals().items() if getattr(v, "__name__", "").startswith(f"{__name__}.") and
              getattr(v, "__file__", None) is not None)
    return sorted({*__all__, *loaded, *(k for k in globals() if k.startswith("__"))})


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names above load on first use
    from .attacks import ATTACKS, BadNets, BadNetsConfig, PoisonResult, build_attack
    from .config import load_config
    from .data import (
        DATASETS,
        READERS,
        Dataset,
        DataSplit,
        from_arrays,
        load_data,
        register_dataset,
    )
    from .defenses import DEFENSES, register_defense
    from .defenses.estimators import ActivationClustering, SpectralSignatures
    from .experiment import run_experiment
    from .families import FAMILIES, load_any_config, run_config
    from .matrix import load_grid, run_matrix
    from .measures import MEASURES
    from .models import MODELS, EstimatorModel, build_model
    from .results import Run, load_run
