"""GTSRB regrouped into the sign categories of the BadNets transfer task.

BadNets (Gu, Dolan-Gavitt & Garg 2017, arXiv 1708.06733, Section 5) retrain a backdoored
U.S. traffic-sign network for Swedish traffic signs in four categories: information,
mandatory, prohibitory and warning. The Swedish set is not bundled here; as a stand-in,
GTSRB's 43 classes are regrouped into those four categories by what each sign *means*
(the legal category of the sign in the Vienna-Convention systems used in Germany and
Sweden), with "other" standing for the information category:

* ``prohibitory`` (13 classes): speed limits 0-5, 7, 8; no passing 9, 10; no vehicles 15;
  no vehicles over 3.5 t 16; no entry 17. GTSRB's *detection* benchmark groups signs by
  shape and colour and puts "No entry" (red disc, white bar) in "other"; by meaning it is
  a prohibition (in Sweden a C sign, the prohibitory category), so it is prohibitory here.
* ``warning`` (15 classes): 11 (right-of-way at the next intersection, a triangular
  warning sign) and 18-31 (general caution ... wild animals crossing).
* ``mandatory`` (8 classes): 33-40 (turn right/left ahead, ahead only, go straight or
  right/left, keep right/left, roundabout).
* ``other`` (7 classes), i.e. information and everything else:
  - 12 priority road, 13 yield (give way), 14 stop: in the Swedish system these are
    priority signs (the B signs), a category of their own that is neither prohibitory
    nor warning; the seed's four categories have no priority group, so they fall under
    information/other. (Stop is thus *not* prohibitory here.)
  - 6, 32, 41, 42: the "end of ..." signs lift a restriction rather than impose one.

Use :func:`disjoint_split` to carve the teacher's (U.S.-analogue, 43 classes) and the
student's (Swedish-analogue, 4 groups) training sets from disjoint images.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import PoisonlabError
from .base import Dataset
from .gtsrb import CLASSES

SWEDISH_GROUPS: list[str] = ["prohibitory", "warning", "mandatory", "other"]
"""The four categories of the seed's Swedish task ("other" = information/other)."""

_MEMBERS: dict[str, tuple[int, ...]] = {
    "prohibitory": (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 15, 16, 17),
    "warning": (11, *range(18, 32)),
    "mandatory": tuple(range(33, 41)),
    "other": (6, 12, 13, 14, 32, 41, 42),
}

GROUP_OF_CLASS: dict[int, int] = {
    cls: SWEDISH_GROUPS.index(group) for group, members in _MEMBERS.items() for cls in members
}
"""GTSRB class id (0-42) -> index into :data:`SWEDISH_GROUPS`."""

META_KEY = "gtsrb_class"
"""The ``Dataset.meta`` key that keeps the original GTSRB class id after :func:`regroup`."""


def group_of(class_id: int) -> str:
    """The group name of one GTSRB class id, e.g. ``group_of(14) == "other"`` (stop)."""
    if class_id not in GROUP_OF_CLASS:
        raise PoisonlabError(f"GTSRB class id {class_id!r} is outside 0..{len(CLASSES) - 1}")
    return SWEDISH_GROUPS[GROUP_OF_CLASS[class_id]]


def group_table() -> list[dict[str, str]]:
    """One row per GTSRB class: id, name, group (for documentation and reports)."""
    return [{"id": str(i), "class": name, "group": group_of(i)} for i, name in enumerate(CLASSES)]


def regroup(ds: Dataset) -> Dataset:
    """GTSRB (43 classes) -> the 4 Swedish-analogue groups of BadNets Section 5.

    Labels are remapped with :data:`GROUP_OF_CLASS`, ``classes`` becomes
    :data:`SWEDISH_GROUPS` and ``meta["gtsrb_class"]`` keeps each row's original class id.
    Images and other metadata are shared, not copied.
    """
    if META_KEY in ds.meta:
        raise PoisonlabError("this data set is already regrouped (meta has 'gtsrb_class'); regroup the 43-class GTSRB set")
    if ds.num_classes != len(CLASSES):
        raise PoisonlabError(f"regroup needs the 43 GTSRB classes; this data set has {ds.num_classes} classes")
    if len(ds) and (int(ds.y.min()) < 0 or int(ds.y.max()) >= len(CLASSES)):
        raise PoisonlabError(f"regroup: labels must be GTSRB class ids 0..{len(CLASSES) - 1}")
    lookup = torch.tensor([GROUP_OF_CLASS[i] for i in range(len(CLASSES))], dtype=torch.int64)
    original = ds.y.cpu()
    meta = dict(ds.meta)
    meta[META_KEY] = original.numpy().copy()
    return Dataset(ds.x, lookup[original].to(ds.y.device), list(SWEDISH_GROUPS), meta)


def _strata(ds: Dataset) -> np.ndarray:
    """Labels to stratify by: the original GTSRB class when regrouped, else ``y``."""
    if META_KEY in ds.meta:
        return np.asarray(ds.meta[META_KEY])
    return ds.y.cpu().numpy()


def disjoint_split_indices(train: Dataset, teacher_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices (teacher, student): a seeded split stratified by class.

    In every class, ``floor(teacher_fraction * n_c + 0.5)`` randomly chosen rows go to the
    teacher and the rest to the student, so the two parts are disjoint, cover every row
    and keep the class proportions (up to rounding).
    """
    if isinstance(teacher_fraction, bool) or not isinstance(teacher_fraction, (int, float)) \
            or not 0 < teacher_fraction < 1:
        raise PoisonlabError(f"teacher_fraction must be a number in (0, 1), got {teacher_fraction!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise PoisonlabError(f"seed must be a whole number >= 0, got {seed!r}")
    strata = _strata(train)
    rng = np.random.default_rng([int(seed), 0x7EAC])
    teacher: list[np.ndarray] = []
    for c in np.unique(strata):
        rows = np.flatnonzero(strata == c)
        take = math.floor(teacher_fraction * len(rows) + 0.5)
        teacher.append(rng.permutation(rows)[:take])
    t_idx = np.sort(np.concatenate(teacher)) if teacher else np.zeros(0, np.int64)
    s_idx = np.setdiff1d(np.arange(len(train)), t_idx)
    if len(t_idx) == 0 or len(s_idx) == 0:
        raise PoisonlabError(f"teacher_fraction {teacher_fraction} leaves the teacher or the student part empty "
                             f"({len(t_idx)} / {len(s_idx)} of {len(train)} rows); use a fraction nearer 0.5")
    return t_idx, s_idx


def disjoint_split(train: Dataset, teacher_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(teacher_part, student_part) of a training set, with no image in both.

    The teacher (the U.S. network of BadNets Section 5) trains on one part; the student
    (the Swedish network) on the other, so transfer is measured on images the teacher
    never saw. Stratified by class (the original GTSRB class if ``train`` is regrouped)
    and seeded: the same seed gives the same split.
    """
    t_idx, s_idx = disjoint_split_indices(train, teacher_fraction, seed)
    return train.subset(t_idx), train.subset(s_idx)
