"""poisonlab: training-data poisoning attacks, victims, defenses and measurements."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import PoisonlabError  # noqa: E402

__all__ = ["PoisonlabError", "__version__"]
