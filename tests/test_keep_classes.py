"""data.classes: keep chosen classes of a data set, relabelled in the order given."""
from __future__ import annotations

import pytest
import torch

from poisonlab.config import ExperimentConfig, from_dict
from poisonlab.data.base import Dataset
from poisonlab.data.splits import keep_classes
from poisonlab.errors import PoisonlabError


def test_keep_classes_relabels_in_the_order_given():
    data = Dataset(torch.arange(6.0).reshape(6, 1), torch.tensor([0, 1, 7, 7, 1, 3]), [str(i) for i in range(8)],
                   {"id": __import__("numpy").arange(6)})
    kept = keep_classes(data, [7, 1])
    assert kept.x.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert kept.y.tolist() == [1, 0, 0, 1]  # 7 -> 0, 1 -> 1
    assert kept.classes == ["7", "1"] and kept.meta["id"].tolist() == [1, 2, 3, 4]
    assert keep_classes(data, []) is data


def test_keep_classes_errors():
    data = Dataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]), ["a", "b", "c"])
    with pytest.raises(PoisonlabError, match=r"^data.classes holds 5; the data set has classes 0..2$"):
        keep_classes(data, [0, 5])
    for bad, msg in (([1], "at least two distinct"), ([1, 1], "at least two distinct"), ([1, -2], "data.classes")):
        cfg = from_dict(ExperimentConfig, {"data": {"name": "digits", "classes": bad}})
        with pytest.raises(PoisonlabError, match=msg):
            cfg.validate()
