"""Every committed example config parses and validates; a short smoke run on the real MNIST files when present."""
from pathlib import Path

import pytest

from poisonlab.attacks import build_attack
from poisonlab.attacks.pruning_aware import pruning_aware_config
from poisonlab.defend import check_defenses
from poisonlab.config import ExperimentConfig, load_config
from poisonlab.experiment import run_experiment
from poisonlab.data import DATASETS, READERS
from poisonlab.models import MODELS
from poisonlab.matrix import load_grid
from poisonlab.subpop.config import SubpopConfig, load_subpop_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.name.startswith(("subpop_", "matrix_")))
SUBPOP_EXAMPLES = sorted((ROOT / "examples").glob("subpop_*.yaml"))
MATRIX_EXAMPLES = sorted((ROOT / "examples").glob("matrix_*.yaml"))
SHARED = ROOT.parent / "shared" / "data"


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"digits_badnets.yaml", "mnist_badnets_single_target.yaml", "mnist_badnets_all_to_all.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.model.name in MODELS
    if cfg.attack is not None:
        build_attack(cfg.attack)
    check_defenses(cfg.defenses)
    if cfg.pruning_aware is not None:
        assert pruning_aware_config(cfg.pruning_aware, cfg.train).train == cfg.train


@pytest.mark.parametrize("path", SUBPOP_EXAMPLES, ids=lambda p: p.name)
def test_subpop_example_config_is_valid(path):
    cfg = load_subpop_config(path)
    assert cfg.model.name in MODELS and (cfg.data.name in DATASETS or cfg.data.name in READERS)


def test_there_are_subpop_examples():
    assert {"subpop_adult_featurematch_mlp.yaml", "subpop_adult_clustermatch_mlp.yaml", "subpop_imdb_clustermatch.yaml",
            "subpop_fashion_mnist_clustermatch.yaml"} <= {p.name for p in SUBPOP_EXAMPLES}


@pytest.mark.parametrize("path", MATRIX_EXAMPLES, ids=lambda p: p.name)
def test_matrix_example_grid_is_valid(path, tmp_path, monkeypatch):
    """A grid validates every cell's config (BadNets experiment or subpop) before anything runs
    (a pretrained feature extractor it names, written by another example, is stood in for)."""
    import yaml

    weights = ((yaml.safe_load(path.read_text()).get("base") or {}).get("model") or {}).get("weights")
    if weights:
        monkeypatch.chdir(tmp_path)
        (tmp_path / weights).parent.mkdir(parents=True)
        (tmp_path / weights).write_bytes(b"stand-in: only its digest is read when the grid is built")
    grid = load_grid(path, output_dir="/nonexistent-never-written")
    assert len(grid.cells) == len(grid.attacks) * len(grid.seeds) > 0
    for cell in grid.cells:
        assert cell.config.model.name in MODELS and (cell.config.data.name in DATASETS or
                                                     cell.config.data.name in READERS)
        assert isinstance(cell.config, SubpopConfig if grid.kind == "subpopulation" else ExperimentConfig)
        assert cell.config.output.dir == "/nonexistent-never-written"


def test_there_are_matrix_examples():
    assert {"matrix_digits.yaml", "matrix_adult_subpop.yaml"} <= {p.name for p in MATRIX_EXAMPLES}


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/data/mnist not present (smoke run skipped)")
def test_mnist_example_smoke_on_real_files(tmp_path):
    cfg = load_config(ROOT / "examples" / "mnist_badnets_all_to_all.yaml",
                      [f"data.dir={SHARED}", "data.train_limit=3000", "train.epochs=2", "train.batch_size=64", f"output.dir={tmp_path}",
                       "output.plots=false"], device="cpu")
    m = run_experiment(cfg).metrics
    assert m["data"]["train"] == 2700 and m["data"]["test"] == 10000
    assert m["attack"]["n_poison"] == 270 and m["attack"]["test_triggered"] == 10000
    assert m["baseline"]["clean_accuracy"] > 0.8


@pytest.mark.skipif(not (SHARED / "adult").is_dir(), reason="../shared/data/adult not present (smoke run skipped)")
def test_adult_subpop_example_smoke_on_real_files(tmp_path):
    from poisonlab.subpop.experiment import run_subpop_experiment

    cfg = load_subpop_config(ROOT / "examples" / "subpop_adult_featurematch_mlp.yaml",
                             [f"data.dir={SHARED}", "subpopulations.limit=3", "attack.alphas=[2.0]", "model.train.epochs=5",
                              f"output.dir={tmp_path}", "output.plots=false", "workers=1"])
    _, m = run_subpop_experiment(cfg)
    assert (m["data"]["victim"], m["data"]["attacker"], m["data"]["test"]) == (16280, 16281, 16281)
    assert m["data"]["features"] == 108 and m["subpopulations"]["count"] == 3 and m["retrainings"] == 3
    assert m["model"]["clean_accuracy"] > 0.8
    for r in m["rows"]:
        assert 10 <= r["test_size"] <= 100 and r["n_poison"] == int(2.0 * r["attacker_size"] + 0.5)
