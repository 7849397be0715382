"""Config parsing: strict keys, types, overrides, malformed YAML."""
import pytest

from poisonlab.config import apply_overrides, config_hash, load_config
from poisonlab.errors import PoisonlabError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "name: x\ntrain:\n  epochs: 3\n")
    cfg = load_config(p, ["train.lr=0.5", "data.name=mnist", "model.options={hidden: [4]}"], seed=7)
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.name, cfg.seed) == (3, 0.5, "mnist", 7)
    assert cfg.model.options == {"hidden": [4]}


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(PoisonlabError, match=r"unknown config key 'train.epoch' \(did you mean 'epochs'\?\)"):
        load_config(p)


def test_unknown_section(tmp_path):
    with pytest.raises(PoisonlabError, match="unknown config key 'dataa'"):
        load_config(write(tmp_path, "dataa: {}\n"))


def test_wrong_types(tmp_path):
    with pytest.raises(PoisonlabError, match="'train.epochs' must be an integer, got 'ten'"):
        load_config(write(tmp_path, "train: {epochs: ten}\n"))
    with pytest.raises(PoisonlabError, match="'train.optimizer' must be one of sgd, adam"):
        load_config(write(tmp_path, "train: {optimizer: rmsprop}\n"))
    with pytest.raises(PoisonlabError, match="train.lr must be > 0"):
        load_config(write(tmp_path, "train: {lr: -1}\n"))


def test_malformed_yaml_gives_line(tmp_path):
    with pytest.raises(PoisonlabError, match=r"not valid YAML at line 3, column 5"):
        load_config(write(tmp_path, "train:\n  epochs: [1, 2\n  lr: 3\n"))


def test_top_level_not_mapping(tmp_path):
    with pytest.raises(PoisonlabError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(PoisonlabError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override():
    with pytest.raises(PoisonlabError, match="--set needs key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(PoisonlabError, match="'lr' is not a section"):
        apply_overrides({"lr": 1}, ["lr.x=2"])


def test_val_fraction_range(tmp_path):
    with pytest.raises(PoisonlabError, match=r"data.val_fraction must be in \[0, 1\)"):
        load_config(None, ["data.val_fraction=1.5"])


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
