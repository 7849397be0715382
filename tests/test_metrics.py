"""Metrics against values computed by hand."""
import math

import numpy as np
import pytest

from poisonlab.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    mean_class_error,
    per_class_error,
)


def test_accuracy_by_hand():
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 0])) == 0.5
    assert math.isnan(accuracy(np.array([]), np.array([])))


def test_confusion_matrix_by_hand():
    pred = np.array([0, 0, 1, 2, 2, 2])
    true = np.array([0, 1, 1, 2, 0, 2])
    m = confusion_matrix(pred, true, 3)
    assert m.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert m.sum() == 6


def test_per_class_clean_error_by_hand():
    true = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 0, 1, 0, 2])
    err = per_class_error(pred, true, true, 4)
    assert err[0] == pytest.approx(0.25)
    assert err[1] == pytest.approx(0.5)
    assert err[2] == 0.0
    assert math.isnan(err[3])  # no rows of class 3


def test_per_class_backdoor_error_uses_attacker_labels():
    # triggered images of classes 1,1,2,2,2 that the attacker wants as 0
    true = np.array([1, 1, 2, 2, 2])
    wanted = np.zeros(5, dtype=int)
    pred = np.array([0, 1, 0, 0, 2])
    err = per_class_error(pred, true, wanted, 3)
    assert math.isnan(err[0])
    assert err[1] == pytest.approx(0.5)
    assert err[2] == pytest.approx(1 / 3)
    assert attack_success_rate(pred, wanted) == pytest.approx(3 / 5)
    assert mean_class_error(err) == pytest.approx((0.5 + 1 / 3) / 2)
