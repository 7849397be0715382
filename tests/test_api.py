"""The direct library API: lazy top-level names, BadNets.poison on arrays, the filtering
defenses as scikit-learn estimators, and a run's tables as DataFrames and JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import poisonlab
from poisonlab import (
    ActivationClustering,
    BadNets,
    PoisonlabError,
    SpectralSignatures,
    load_run,
)
from poisonlab.attacks import BadNetsConfig
from poisonlab.data.base import Dataset
from poisonlab.defenses import DEFENSES, DefenseInputs


def one_line_error(fn, *args, match: str = "", **kw) -> str:
    with pytest.raises(PoisonlabError, match=match) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# -- lazy top-level API ---------------------------------------------------------------------
def test_import_poisonlab_does_not_import_torch_and_every_name_resolves():
    code = ("import sys, poisonlab; assert 'torch' not in sys.modules, 'torch'; "
            "assert 'sklearn' not in sys.modules, 'sklearn'; print(len(poisonlab.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    wanted = {"BadNets", "ATTACKS", "DEFENSES", "MODELS", "DATASETS", "READERS", "FAMILIES", "MEASURES",
              "from_arrays", "register_dataset", "load_data", "load_config", "load_any_config", "run_experiment",
              "run_config", "load_grid", "run_matrix", "SpectralSignatures", "ActivationClustering",
              "EstimatorModel", "build_model", "load_run", "PoisonlabError", "__version__"}
    assert wanted <= set(poisonlab.__all__) <= set(dir(poisonlab))
    for name in poisonlab.__all__:
        assert getattr(poisonlab, name) is not None, name
    assert poisonlab.BadNets is BadNets and poisonlab.DEFENSES is DEFENSES
    assert not hasattr(poisonlab, "no_such_name")
    with pytest.raises(AttributeError, match="no_such_name"):
        poisonlab.no_such_name  # noqa: B018


# -- BadNets.poison on arrays ---------------------------------------------------------------
PATCH = {"kind": "patch", "color": 1.0, "size": 2, "corner": "bottom-right", "margin": 0}


def images(n: int = 40, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.random((n, channels, 6, 6)) * 0.5).astype(np.float32), np.arange(n) % 4


def test_badnets_poison_numpy_exact():
    x, y = images()
    attack = BadNets(p=0.25, target=0, trigger=PATCH)
    xp, yp, mask = attack.poison(x, y, seed=3)
    n_poison = round(0.25 * len(x))
    assert isinstance(xp, np.ndarray) and isinstance(yp, np.ndarray) and isinstance(mask, np.ndarray)
    assert xp.dtype == x.dtype and mask.dtype == bool and xp.shape == (len(x) + n_poison, 1, 6, 6)
    assert mask.tolist() == [False] * len(x) + [True] * n_poison
    assert np.array_equal(xp[:len(x)], x) and np.array_equal(yp[:len(x)], y)
    assert (yp[mask] == 0).all()
    poison = xp[mask]
    assert (poison[:, :, 4:, 4:] == 1.0).all()  # the 2x2 patch, bottom-right
    untouched = np.ones((6, 6), dtype=bool)
    untouched[4:, 4:] = False
    for row in poison:  # every poison row is a source-class row of x with the patch stamped
        same = [j for j in range(len(x)) if np.array_equal(x[j][:, untouched], row[:, untouched])]
        assert len(same) == 1 and y[same[0]] != 0
    again = attack.poison(x, y, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((xp, yp, mask), again))
    other = attack.poison(x, y, seed=4)
    assert not np.array_equal(other[0], xp)


def test_badnets_poison_tensor_and_dataset_agree():
    x, y = images()
    attack = BadNets(p=0.25, target=0, trigger=PATCH)
    xp, yp, mask = attack.poison(x, y, seed=5)
    xt, yt, mt = attack.poison(torch.from_numpy(x), torch.from_numpy(y).int(), seed=5)
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float32 and yt.dtype == torch.int32
    assert mt.dtype == torch.bool
    assert np.array_equal(xt.numpy(), xp) and np.array_equal(yt.numpy(), yp) and np.array_equal(mt.numpy(), mask)
    # the pipeline's call, unchanged: a Dataset and an rng give a PoisonResult
    res = attack.poison(Dataset(torch.from_numpy(x), torch.from_numpy(y), list("abcd")), np.random.default_rng(5))
    assert torch.equal(res.dataset.x, xt) and torch.equal(res.poison_mask, mt)
    # (N, H, W) images stay without a channel axis
    x3, _, m3 = attack.poison(x[:, 0], y, seed=5)
    assert x3.shape == (50, 6, 6) and np.array_equal(x3, xp[:, 0]) and np.array_equal(m3, mask)


def test_badnets_keyword_construction_and_checks():
    assert BadNets(p=0.1, target=0, trigger={"kind": "pattern"}).cfg == BadNetsConfig(p=0.1, target=0)
    assert BadNets.make(p=0.2, labels="all-to-all").cfg == BadNetsConfig(p=0.2, labels="all-to-all")
    assert BadNets(BadNetsConfig(p=0.3)).get_params()["p"] == 0.3
    assert BadNets().cfg == BadNetsConfig()
    assert "p=0.1" in repr(BadNets(p=0.1))
    one_line_error(BadNets, p=0.1, colour="red", match="attack.colour")
    one_line_error(BadNets, p=1.5, match="attack.p")
    x, y = images()
    one_line_error(BadNets(target=7).poison, x, y, match="attack.target 7")  # attack.check runs first
    one_line_error(BadNets().poison, x.reshape(40, -1), y, match="no images")
    one_line_error(BadNets().poison, x * 4, y, match=r"\[0, 1\]")
    one_line_error(BadNets().poison, (x * 255).astype(np.uint8), y, match="floats")
    one_line_error(BadNets().poison, x, y[:5], match="one label per row")
    one_line_error(BadNets().poison, x, y, seed=-1, match="seed")


# -- filtering defenses as estimators -------------------------------------------------------
def planted_spectral() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = np.repeat([0, 1], 100)
    planted = np.array([101, 120, 150, 170, 199])
    direction = np.ones(8, dtype=np.float32) / np.sqrt(8)
    x[planted] += 9 * direction
    return x, y, planted


def registered_removal(name: str, x: np.ndarray, y: np.ndarray, val: tuple | None = None, **params) -> np.ndarray:
    """What registered defense ``name`` removes when the suspect model's representations are ``x``
    (a single Linear layer reads its input: the representations are the rows themselves)."""
    spec = DEFENSES.get(name)
    model = nn.Sequential(nn.Linear(x.shape[1], 2))
    train = Dataset(torch.from_numpy(x), torch.from_numpy(y), ["a", "b"])
    val_ds = Dataset(torch.from_numpy(val[0]), torch.from_numpy(val[1]), ["a", "b"]) if val else None
    ctx = DefenseInputs(train=train, retrain=lambda ds, label: model, model=model, val=val_ds)
    return spec.run(spec.from_config(params), ctx).removed


def test_spectral_signatures_ranks_planted_rows_first_and_matches_the_defense():
    x, y, planted = planted_spectral()
    est = SpectralSignatures(epsilon=0.05)
    assert est.fit(x, y) is est
    in_class = np.flatnonzero(y == 1)
    top = in_class[np.argsort(-est.scores_[in_class])[:len(planted)]]
    assert set(top) == set(planted)
    budget = math.floor(1.5 * 0.05 * 100 + 0.5)  # round half up, per class
    assert est.mask_.dtype == bool and est.mask_.sum() == 2 * budget and est.mask_[planted].all()
    assert est.per_class_[1]["removed"] == budget and est.n_removed_ == 2 * budget
    assert np.array_equal(est.mask_, registered_removal("spectral-signatures", x, y, epsilon=0.05))
    val = (np.random.default_rng(2).normal(size=(60, 8)).astype(np.float32), np.repeat([0, 1], 30))
    est_val = SpectralSignatures(rule="validation").fit(x, y, *val)
    assert est_val.mask_[planted].all()
    assert np.array_equal(est_val.mask_, registered_removal("spectral-signatures", x, y, val, rule="validation"))


def test_activation_clustering_flags_the_small_blob():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(160, 6)).astype(np.float32)
    y = np.repeat([0, 1], [92, 68])
    x[80:92] += 12  # 12 of class 0's rows form a second, small blob
    est = ActivationClustering(dims=4).fit(x, y)
    expected = np.zeros(160, dtype=bool)
    expected[80:92] = True
    assert np.array_equal(est.mask_, expected)
    assert est.per_class_[0]["flagged"] and not est.per_class_[1]["flagged"]
    assert est.per_class_[0]["sizes"] == [80, 12] and (est.cluster_[80:92] == 1).all()
    assert np.array_equal(est.mask_, registered_removal("activation-clustering", x, y, dims=4))


def test_estimators_follow_scikit_learn():
    from sklearn.base import clone

    for est, name in ((SpectralSignatures(), "spectral-signatures"), (ActivationClustering(), "activation-clustering")):
        defaults = {f.name: f.default for f in dataclasses.fields(DEFENSES.get(name).config)}
        params = est.get_params()
        assert {k: v for k, v in params.items() if k != "random_state"} == {k: defaults[k] for k in params
                                                                           if k != "random_state"}
    est = SpectralSignatures(epsilon=0.1, rule="validation")
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert est.set_params(epsilon=0.2) is est and est.epsilon == 0.2
    x, y, _ = planted_spectral()
    fitted = SpectralSignatures().fit(x, y)
    assert not hasattr(clone(fitted), "mask_")
    assert clone(ActivationClustering(dims=3, random_state=7)).get_params()["random_state"] == 7


def test_estimators_reject_bad_inputs_in_one_line():
    x, y, _ = planted_spectral()
    for est in (SpectralSignatures(), ActivationClustering()):
        one_line_error(est.fit, x[:, 0], y, match="2-D")
        one_line_error(est.fit, x, y[:50], match="200 rows but labels have 50")
        bad = x.copy()
        bad[3, 2] = np.nan
        one_line_error(est.fit, bad, y, match="NaN")
    one_line_error(SpectralSignatures(epsilon=2).fit, x, y, match="SpectralSignatures.epsilon")
    one_line_error(SpectralSignatures(rule="validation").fit, x, y, match="val_features")
    one_line_error(ActivationClustering(dims=0).fit, x, y, match="ActivationClustering.dims")
    one_line_error(ActivationClustering(random_state=None).fit, x, y, match="random_state")


# -- a run's tables -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from poisonlab import load_config, run_experiment

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("examples/digits_badnets.yaml", [
        "train.epochs=1", "data.train_limit=200", f"output.dir={root}", "device=cpu", "output.plots=false",
        "output.save_weights=false", "output.cache_baseline=false", "analysis.backdoor_neurons=false"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_experiment(cfg, quiet=True), root
    finally:
        torch.set_num_threads(threads)


def test_load_run_tables_equal_metrics(tiny_run):
    out, root = tiny_run
    run = load_run(out.run_id, root=root)
    assert run.id == out.run_id and run.path.is_dir()
    metrics = json.loads((out.path / "metrics.json").read_text())
    assert run.metrics["victim"]["clean_accuracy"] == metrics["victim"]["clean_accuracy"]
    assert {"summary", "seed_table"} <= set(run.tables)
    summary = run.table("summary").set_index("model")
    assert summary.loc["BadNet", "clean accuracy"] == metrics["victim"]["clean_accuracy"]
    assert summary.loc["clean baseline", "clean accuracy"] == metrics["baseline"]["clean_accuracy"]
    assert summary.loc["BadNet", "attack success"] == metrics["victim"]["attack_success_rate"]
    seed = run.table("seed_table.csv")
    classes = seed[seed["class"] != "average"]
    assert classes["BadNet clean error"].tolist() == metrics["victim"]["per_class_clean_error"]
    assert math.isnan(classes["BadNet backdoor error"].iloc[0])  # the target class: an empty cell
    assert load_run(out.run_id[:12], root=root).id == run.id and load_run(out).id == run.id
    doc = json.loads(run.to_json())
    assert doc["id"] == run.id and doc["tables"]["seed_table"][0]["BadNet backdoor error"] is None
    row = next(r for r in doc["tables"]["summary"] if r["model"] == "BadNet")
    assert row["clean accuracy"] == metrics["victim"]["clean_accuracy"]
    one_line_error(run.table, "nope", match="no table 'nope'")


def test_load_run_errors_are_one_line(tiny_run, tmp_path, monkeypatch):
    out, root = tiny_run
    one_line_error(load_run, "no-such-run", root=root, match="no run 'no-such-run'")
    broken = tmp_path / out.run_id
    shutil.copytree(out.path, broken)
    (broken / "metrics.json").write_text("{not json")
    one_line_error(load_run, str(broken), root=tmp_path, match="metrics.json")
    run = load_run(out.path, root=root)
    monkeypatch.setitem(sys.modules, "pandas", None)
    one_line_error(run.table, "summary", match=r"pip install pandas \(or poisonlab\[analysis\]\)")
    assert run.rows("summary")[0]["model"] == "clean baseline"  # rows and JSON need no pandas
