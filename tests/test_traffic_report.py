"""The BadNets Section 4 traffic-sign table grouped by sign type (stop, speed limit, warning, other)."""
import math

import pytest
import torch

from poisonlab.data.gtsrb import CLASSES
from poisonlab.errors import PoisonlabError
from poisonlab.traffic_report import (
    TRAFFIC_GROUPS,
    grouped_accuracy,
    grouped_backdoor,
    plot_traffic_table,
    traffic_group_of_class,
    traffic_table,
)

STOP, SPEED, WARNING, OTHER = range(4)
T = torch.tensor


# -- membership -------------------------------------------------------------------------
def test_groups_and_membership():
    assert TRAFFIC_GROUPS == ["stop", "speed limit", "warning", "other"]
    assert sorted(traffic_group_of_class) == list(range(43)) == list(range(len(CLASSES)))
    assert set(traffic_group_of_class.values()) == {0, 1, 2, 3}
    members = {g: sorted(c for c, v in traffic_group_of_class.items() if v == g) for g in range(4)}
    assert members[STOP] == [14]
    assert members[SPEED] == [0, 1, 2, 3, 4, 5, 7, 8]
    assert members[WARNING] == [11, *range(18, 32)]
    assert members[OTHER] == [6, 9, 10, 12, 13, 15, 16, 17, *range(32, 43)]
    assert sum(len(m) for m in members.values()) == 43


@pytest.mark.parametrize("cid,group", [(14, "stop"), (6, "other"), (7, "speed limit"), (8, "speed limit"),
                                       (0, "speed limit"), (11, "warning"), (18, "warning"), (31, "warning"),
                                       (32, "other"), (13, "other"), (17, "other"), (42, "other")])
def test_documented_members(cid, group):
    assert TRAFFIC_GROUPS[traffic_group_of_class[cid]] == group
    if group == "speed limit":
        assert CLASSES[cid].startswith("Speed limit")
    if cid == 6:
        assert CLASSES[cid] == "End of speed limit (80km/h)"


# -- grouped_accuracy -------------------------------------------------------------------
def test_grouped_accuracy_hand_computed():
    #        stop stop stop spd spd oth warn warn
    y = T([14, 14, 14, 0, 8, 6, 11, 30])
    pred = T([14, 14, 2, 0, 7, 6, 11, 30])
    acc = grouped_accuracy(pred, y)
    assert list(acc) == ["stop", "speed limit", "warning", "other", "average"]
    assert acc["stop"] == pytest.approx(2 / 3)
    assert acc["speed limit"] == 0.5
    assert acc["warning"] == 1.0
    assert acc["other"] == 1.0
    assert acc["average"] == 0.75  # 6 of 8 rows, not the mean of the groups (0.7917)


def test_grouped_accuracy_empty_groups_are_nan():
    acc = grouped_accuracy(T([1, 2, 25]), T([1, 3, 25]))
    assert math.isnan(acc["stop"]) and math.isnan(acc["other"])
    assert acc["speed limit"] == 0.5 and acc["warning"] == 1.0
    assert acc["average"] == pytest.approx(2 / 3)
    empty = grouped_accuracy(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert all(math.isnan(v) for v in empty.values())


# -- grouped_backdoor -------------------------------------------------------------------
def test_grouped_backdoor_hand_computed():
    # source 14 (stop) -> target 1 (speed limit 30)
    y = T([14, 14, 14, 1, 1, 6, 25, 0])
    pred = T([1, 14, 1, 1, 2, 6, 1, 0])
    # per-row:  1   0   1  1  0  1  0  1   (stop rows: predicted 1; others: predicted right)
    bd = grouped_backdoor(pred, y, source=14, target=1)
    assert bd["stop"] == pytest.approx(2 / 3)  # a stop row still read as stop is a failure
    assert bd["speed limit"] == pytest.approx(2 / 3)  # target rows count when predicted target
    assert bd["warning"] == 0.0  # a warning sign pushed to the target is wrong
    assert bd["other"] == 1.0
    assert bd["average"] == 0.625


def test_grouped_backdoor_differs_from_accuracy_only_on_source_rows():
    y = T([14, 14, 5, 20])
    pred = T([5, 14, 5, 20])
    assert grouped_backdoor(pred, y, 14, 5)["stop"] == 0.5
    assert grouped_accuracy(pred, y)["stop"] == 0.5
    bd = grouped_backdoor(T([5, 5, 5, 20]), y, 14, 5)
    assert bd["stop"] == 1.0 and bd["speed limit"] == 1.0 and bd["warning"] == 1.0 and bd["average"] == 1.0
    assert math.isnan(bd["other"])


# -- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("pred,y,match", [
    (T([1, 2]), T([1, 2, 3]), r"different lengths \(2 vs 3\)"),
    (T([1, 2]), T([1, 43]), r"y holds class ids outside 0\.\.42"),
    (T([-1, 2]), T([1, 2]), r"pred holds class ids outside 0\.\.42"),
    (T([1.0, 2.0]), T([1, 2]), "integer class ids"),
    (T([True, False]), T([1, 2]), "integer class ids"),
    (torch.zeros(2, 43), T([1, 2]), "1-D.*argmax"),
    ([1, 2], T([1, 2]), "torch tensor"),
])
def test_grouped_accuracy_errors(pred, y, match):
    with pytest.raises(PoisonlabError, match=match):
        grouped_accuracy(pred, y)


@pytest.mark.parametrize("kwargs,match", [
    ({"source": 14, "target": 14}, "source and target must differ"),
    ({"source": 43, "target": 1}, r"source class id 43 is outside 0\.\.42"),
    ({"source": 14, "target": -1}, r"target class id -1 is outside 0\.\.42"),
    ({"source": True, "target": 1}, "source must be a GTSRB class id"),
    ({"source": 14, "target": 1.0}, "target must be a GTSRB class id"),
])
def test_grouped_backdoor_errors(kwargs, match):
    with pytest.raises(PoisonlabError, match=match):
        grouped_backdoor(T([1, 14]), T([14, 14]), **kwargs)


def test_grouped_backdoor_length_error():
    with pytest.raises(PoisonlabError, match="pred_triggered and y have different lengths"):
        grouped_backdoor(T([1]), T([14, 14]), 14, 1)


def test_errors_are_one_line():
    for call in (lambda: grouped_accuracy(torch.zeros(2, 43), T([1, 2])),
                 lambda: grouped_backdoor(T([1]), T([1]), 14, 14),
                 lambda: traffic_table({}, {})):
        with pytest.raises(PoisonlabError) as info:
            call()
        assert "\n" not in str(info.value)


# -- table ------------------------------------------------------------------------------
BASE = {"stop": 0.5, "speed limit": 0.25, "warning": 1.0, "other": math.nan, "average": 0.625}
CLEAN = {"stop": 1.0, "speed limit": 0.875, "warning": 0.0, "other": 0.5, "average": 0.6}
BACKDOOR = {"stop": 0.9, "speed limit": 0.123456, "warning": 1, "other": 0.5, "average": 0.75}


def test_traffic_table_strings():
    table = traffic_table(BASE, {"yellow square": (CLEAN, BACKDOOR), "bomb": (BACKDOOR, CLEAN)})
    rows = table.formatted()
    assert [r["group"] for r in rows] == ["stop", "speed limit", "warning", "other", "average"]
    assert list(rows[0]) == ["group", "baseline clean", "yellow square clean", "yellow square backdoor",
                             "bomb clean", "bomb backdoor"]
    assert rows[0] == {"group": "stop", "baseline clean": "50.00%", "yellow square clean": "100.00%",
                       "yellow square backdoor": "90.00%", "bomb clean": "90.00%", "bomb backdoor": "100.00%"}
    assert rows[1]["baseline clean"] == "25.00%" and rows[1]["yellow square backdoor"] == "12.35%"
    assert rows[2]["yellow square clean"] == "0.00%" and rows[2]["yellow square backdoor"] == "100.00%"
    assert rows[3]["baseline clean"] == "–"
    assert rows[4] == {"group": "average", "baseline clean": "62.50%", "yellow square clean": "60.00%",
                       "yellow square backdoor": "75.00%", "bomb clean": "75.00%", "bomb backdoor": "60.00%"}
    # the rows themselves hold the scores (what the CSV writes)
    assert table[1] == {"group": "speed limit", "baseline clean": 0.25, "yellow square clean": 0.875,
                        "yellow square backdoor": 0.123456, "bomb clean": 0.123456, "bomb backdoor": 0.875}
    assert math.isnan(table[3]["baseline clean"])


def test_traffic_table_from_scores():
    y = T([14, 14, 14, 1, 1, 6, 25, 0])
    pred = T([1, 14, 1, 1, 2, 6, 1, 0])
    table = traffic_table(grouped_accuracy(y, y), {"flower": (grouped_accuracy(pred, y),
                                                              grouped_backdoor(pred, y, 14, 1))})
    rows = table.formatted()
    assert rows[0] == {"group": "stop", "baseline clean": "100.00%", "flower clean": "33.33%",
                       "flower backdoor": "66.67%"}
    assert rows[-1] == {"group": "average", "baseline clean": "100.00%", "flower clean": "50.00%",
                        "flower backdoor": "62.50%"}
    assert table[0]["flower clean"] == pytest.approx(1 / 3) and table[-1]["flower backdoor"] == 5 / 8


def test_traffic_table_baseline_only():
    rows = traffic_table(BASE, {})
    assert rows.formatted()[0] == {"group": "stop", "baseline clean": "50.00%"}
    assert rows[0] == {"group": "stop", "baseline clean": 0.5}


@pytest.mark.parametrize("base,badnets,match", [
    ({"stop": 0.5}, {}, r"baseline_clean lacks the keys \['speed limit', 'warning', 'other', 'average'\]"),
    ([0.5], {}, "baseline_clean must be a dict"),
    ({**BASE, "stop": 1.5}, {}, r"baseline_clean\['stop'\] = 1.5 is not a share in \[0, 1\]"),
    ({**BASE, "warning": "90%"}, {}, r"baseline_clean\['warning'\] must be a number"),
    (BASE, {"bomb": (CLEAN,)}, r"badnets\['bomb'\] must be a pair"),
    (BASE, {"bomb": (CLEAN, {**BACKDOOR, "other": -0.1})}, r"badnets\['bomb'\] backdoor\['other'\]"),
    (BASE, {"bomb": ({}, BACKDOOR)}, r"badnets\['bomb'\] clean lacks the keys"),
    (BASE, {"": (CLEAN, BACKDOOR)}, "non-empty string"),
    (BASE, {"baseline": (CLEAN, BACKDOOR)}, "clashes with the 'baseline clean' column"),
    (BASE, [("bomb", (CLEAN, BACKDOOR))], "badnets must be a dict"),
])
def test_traffic_table_errors(base, badnets, match):
    with pytest.raises(PoisonlabError, match=match):
        traffic_table(base, badnets)


# -- plot -------------------------------------------------------------------------------
def test_plot_writes_png(tmp_path):
    out = tmp_path / "traffic.png"
    plot_traffic_table(out, BASE, {"yellow square": (CLEAN, BACKDOOR), "bomb": (CLEAN, BACKDOOR)})
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_errors(tmp_path):
    with pytest.raises(PoisonlabError, match="does not exist"):
        plot_traffic_table(tmp_path / "missing" / "t.png", BASE, {})
    with pytest.raises(PoisonlabError, match="baseline_clean lacks the keys"):
        plot_traffic_table(tmp_path / "t.png", {}, {})
    assert not (tmp_path / "t.png").exists()
