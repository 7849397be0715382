"""GTSRB regrouped into the BadNets Swedish-task categories, and the teacher/student split."""
import numpy as np
import pytest
import torch

from poisonlab.data.base import Dataset
from poisonlab.data.gtsrb import CLASSES
from poisonlab.data.gtsrb_groups import (
    GROUP_OF_CLASS,
    SWEDISH_GROUPS,
    disjoint_split,
    disjoint_split_indices,
    group_of,
    group_table,
    regroup,
)
from poisonlab.errors import PoisonlabError


def _gtsrb_like(per_class=lambda c: 2) -> Dataset:
    """A fake 43-class GTSRB set; x holds each row's index so rows can be traced."""
    y = torch.cat([torch.full((per_class(c),), c) for c in range(43)])
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1)
    return Dataset(x, y, list(CLASSES), {"row": np.arange(len(y))})


def test_every_class_has_exactly_one_group_with_expected_counts():
    assert sorted(GROUP_OF_CLASS) == list(range(43))
    assert set(GROUP_OF_CLASS.values()) == {0, 1, 2, 3}
    counts = {g: sum(1 for v in GROUP_OF_CLASS.values() if SWEDISH_GROUPS[v] == g) for g in SWEDISH_GROUPS}
    assert counts == {"prohibitory": 13, "warning": 15, "mandatory": 8, "other": 7}
    assert SWEDISH_GROUPS == ["prohibitory", "warning", "mandatory", "other"]


@pytest.mark.parametrize("cid,name,group", [
    (14, "Stop", "other"), (1, "Speed limit (30km/h)", "prohibitory"), (25, "Road work", "warning"),
    (38, "Keep right", "mandatory"), (17, "No entry", "prohibitory"), (13, "Yield", "other"),
    (12, "Priority road", "other"), (11, "Right-of-way at the next intersection", "warning"),
    (6, "End of speed limit (80km/h)", "other"), (32, "End of all speed and passing limits", "other"),
    (9, "No passing", "prohibitory"), (15, "No vehicles", "prohibitory"), (40, "Roundabout mandatory", "mandatory"),
    (31, "Wild animals crossing", "warning"), (42, "End of no passing by vehicles over 3.5 metric tons", "other"),
])
def test_documented_examples(cid, name, group):
    assert CLASSES[cid] == name
    assert group_of(cid) == group
    assert group_table()[cid] == {"id": str(cid), "class": name, "group": group}


def test_group_of_unknown_id():
    with pytest.raises(PoisonlabError, match="outside 0..42"):
        group_of(43)


def test_regroup_remaps_labels_and_keeps_original_class():
    ds = _gtsrb_like()
    out = regroup(ds)
    assert out.classes == SWEDISH_GROUPS and out.num_classes == 4
    assert out.y.tolist() == [GROUP_OF_CLASS[int(c)] for c in ds.y]
    assert out.meta["gtsrb_class"].tolist() == ds.y.tolist()
    assert out.meta["row"] is ds.meta["row"] and out.x is ds.x
    assert ds.num_classes == 43 and "gtsrb_class" not in ds.meta  # input untouched
    # subsets carry the original class along
    sub = out.subset(torch.tensor([28, 29]))  # class 14 (stop)
    assert sub.y.tolist() == [3, 3] and sub.meta["gtsrb_class"].tolist() == [14, 14]


def test_regroup_rejects_wrong_inputs():
    with pytest.raises(PoisonlabError, match="43 GTSRB classes; this data set has 3"):
        regroup(Dataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]), ["a", "b", "c"]))
    with pytest.raises(PoisonlabError, match="already regrouped"):
        regroup(regroup(_gtsrb_like()))


def test_disjoint_split_is_disjoint_complete_stratified_and_seeded():
    ds = _gtsrb_like(lambda c: 3 + c % 7)
    teacher, student = disjoint_split(ds, 0.3, seed=5)
    t_rows, s_rows = teacher.meta["row"], student.meta["row"]
    assert set(t_rows).isdisjoint(s_rows)
    assert sorted(np.concatenate([t_rows, s_rows]).tolist()) == list(range(len(ds)))
    assert teacher.x.flatten().long().tolist() == t_rows.tolist()  # images follow their rows
    for c in range(43):
        n_c = 3 + c % 7
        assert int((teacher.y == c).sum()) == int(np.floor(0.3 * n_c + 0.5))
        assert int((student.y == c).sum()) == n_c - int(np.floor(0.3 * n_c + 0.5))
    again, _ = disjoint_split(ds, 0.3, seed=5)
    other, _ = disjoint_split(ds, 0.3, seed=6)
    assert again.meta["row"].tolist() == t_rows.tolist()
    assert other.meta["row"].tolist() != t_rows.tolist()


def test_disjoint_split_of_regrouped_set_is_stratified_by_gtsrb_class():
    ds = regroup(_gtsrb_like(lambda c: 4))
    t_idx, s_idx = disjoint_split_indices(ds, 0.5, seed=0)
    orig = ds.meta["gtsrb_class"]
    assert np.bincount(orig[t_idx], minlength=43).tolist() == [2] * 43
    assert np.bincount(orig[s_idx], minlength=43).tolist() == [2] * 43


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "half"])
def test_disjoint_split_rejects_bad_fraction(fraction):
    with pytest.raises(PoisonlabError, match="teacher_fraction must be a number in"):
        disjoint_split(_gtsrb_like(), fraction, seed=0)


def test_disjoint_split_rejects_empty_part_and_bad_seed():
    with pytest.raises(PoisonlabError, match="leaves the teacher or the student part empty"):
        disjoint_split(_gtsrb_like(lambda c: 1), 0.2, seed=0)
    with pytest.raises(PoisonlabError, match="seed must be"):
        disjoint_split(_gtsrb_like(), 0.5, seed=-1)
