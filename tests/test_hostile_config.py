"""Hostile configs: alias bombs, deep nesting, absurd numbers; each is one 'error:' line, exit 2,
bounded memory and time (bomb-type cases run in a capped child, see tests/hostile.py)."""
from __future__ import annotations

import pytest

from hostile import assert_one_line_error, run_cli
from poisonlab import safe_yaml
from poisonlab.attacks import build_attack
from poisonlab.cli import main
from poisonlab.config import load_config, parse_override, read_yaml
from poisonlab.data import DATASETS
from poisonlab.errors import PoisonlabError
from poisonlab.matrix import grid_from_dict
from poisonlab.subpop.config import load_subpop_config

MAX_SECONDS = 20.0  # a child imports torch (~2 s on an idle machine); the suite shares two cores


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """Billion laughs: ``width ** levels`` scalars from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def flow_bomb(levels: int = 9, width: int = 10) -> str:
    """The same bomb as one flow value (fits a --set)."""
    parts = ["&a0 [" + ",".join(["lol"] * width) + "]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


BASE = "name: hostile\ndata: {name: digits}\nmodel: {name: digits-cnn}\n"

# (config text appended to BASE, the same thing as --set, needles of the one error line)
HOSTILE = {
    "alias-bomb": (alias_bomb(), "a9=" + flow_bomb(), ["expands to more than 100000 values", "alias"]),
    "deep-nesting": ("train: " + "[" * 30_000 + "]" * 30_000 + "\n", "train.x=" + "[" * 2000 + "]" * 2000,
                     ["nests deeper than 50 levels"]),
    "epochs-1e12": ("train: {epochs: 1e12}\n", "train.epochs=1e12", ["'train.epochs' must be an integer"]),
    "lr-inf": ("train: {lr: .inf}\n", "train.lr=.inf", ["'train.lr' must be a finite number, got inf"]),
    "lr-1e300": ("train: {lr: 1e300}\n", "train.lr=1e300", ["train.lr must be in (0, 10], got 1e+300"]),
    "seed-2**64": (f"seed: {2**64}\n", f"seed={2**64}", ["'seed' must be an integer within ±2**63",
                                                         str(2**64)]),
}


@pytest.mark.parametrize("how", ["file", "set"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_experiment_config_is_one_bounded_error(tmp_path, case, how):
    text, override, needles = HOSTILE[case]
    path = tmp_path / "c.yaml"
    path.write_text(BASE + (text if how == "file" else ""))
    args = ["run", str(path), "-q"] + (["--set", override] if how == "set" else [])
    assert_one_line_error(run_cli(args, cwd=tmp_path), *needles, max_seconds=MAX_SECONDS)


@pytest.mark.parametrize("command", ["subpop", "matrix"])
def test_alias_bomb_is_refused_by_every_command(tmp_path, command):
    path = tmp_path / "g.yaml"
    path.write_text(alias_bomb())
    out = run_cli([command, str(path)], cwd=tmp_path)
    assert_one_line_error(out, "expands to more than 100000 values", max_seconds=MAX_SECONDS)


def test_integer_epochs_beyond_the_bound_never_build_a_schedule(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "train: {epochs: 1000000000000, schedule: cosine}\n")
    out = run_cli(["run", str(path), "-q"], cwd=tmp_path)
    assert_one_line_error(out, "train.epochs must be in 1..10000, got 1000000000000", max_seconds=MAX_SECONDS)


# -- the loader itself (in process: every case is bounded before it is built) -------------------

def test_small_anchors_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults: &t {epochs: 2, lr: 1e-3}\ntrain:\n  <<: *t\n  batch_size: 16\n")
    raw = read_yaml(path)
    assert raw["train"] == {"epochs": 2, "lr": 0.001, "batch_size": 16}
    assert safe_yaml.load("a: &x [1, 2]\nb: [*x, *x]\n", "text") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    # a key given by a merge may be overridden; only a key written twice is refused
    assert safe_yaml.load("a: &x {b: 1}\nc: {<<: *x, b: 2}\n", "text") == {"a": {"b": 1}, "c": {"b": 2}}


def test_scientific_notation_is_a_number():
    assert safe_yaml.load("[1e-3, 2E5, -1e+2, 1.5e3, .5e1]", "text") == [0.001, 200000.0, -100.0, 1500.0, 5.0]
    assert safe_yaml.load("[e5, 1e, 0x1F, 1_000]", "text") == ["e5", "1e", 31, 1000]


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", "alias *a refers to a collection that contains it"),
    ("\n".join(["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 60)]),
     "nests deeper than 50 levels through its aliases"),
    ("seed: " + "9" * 5000 + "\n", "holds a number written with more than 100 characters"),
    ("a: [" + "1," * 100_001 + "]\n", "holds more than 100000 values"),
    ("a: [1, 2\n", "is not valid YAML at line 2"),
    ("a: !!python/object:os.system x\n", "is not valid YAML"),
    ("train:\n  lr: 0.01\n  epochs: 2\n  lr: 10\n", "repeats the key 'lr' in one mapping; keep one of them (line 4"),
])
def test_loader_bounds(text, message):
    with pytest.raises(PoisonlabError, match=message.replace("*", r"\*").replace("(", r"\(")) as err:
        safe_yaml.load(text, "config file 'x'")
    assert str(err.value).startswith("config file 'x' ") and "\n" not in str(err.value)


def test_file_and_override_sizes_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# padding\n" * 110_000)
    with pytest.raises(PoisonlabError, match=r"big.yaml' is larger than 1024 KiB"):
        read_yaml(big)
    with pytest.raises(PoisonlabError, match="more than the 4096 allowed"):
        parse_override("name=" + "x" * 5000)
    with pytest.raises(PoisonlabError, match="at most 8"):
        parse_override("a.b.c.d.e.f.g.h.i=1")


def test_messages_show_values_briefly(tmp_path):
    for override in ["train.optimizer=" + "x" * 3000, "train.epochs=[" + "1, " * 1000 + "]",
                     "data.name=" + "y" * 3000, "attack={name: badnets, trigger: {kind: " + "z" * 3000 + "}}"]:
        with pytest.raises(PoisonlabError) as err:
            cfg = load_config(None, [override])
            DATASETS.get(cfg.data.name)
            build_attack(cfg.attack)
        message = str(err.value)
        assert len(message) < 400 and "\n" not in message, message


def test_generic_walk_names_the_key_path_in_free_form_sections():
    with pytest.raises(PoisonlabError, match=r"config key 'attack.trigger.center\[1\]' must be a finite number"):
        load_config(None, ["attack={name: badnets, trigger: {kind: patch, center: [0.5, .nan]}}"])
    with pytest.raises(PoisonlabError, match=r"config key 'defenses\[0\].step' must be an integer within ±2\*\*63"):
        load_config(None, [f"defenses=[{{name: pruning, step: {2**70}}}]"])
    with pytest.raises(PoisonlabError, match=r"config key 'model.options.width' must be a finite number"):
        load_config(None, ["model.options={width: -.inf}"])
    with pytest.raises(PoisonlabError, match=r"config key 'defenses\[0\].rounds' must be a finite number"):
        load_subpop_config(None, ["defenses=[{name: sever, rounds: .inf}]"])
    with pytest.raises(PoisonlabError, match=r"config key 'seeds\[1\]' must be an integer within"):
        grid_from_dict({"attacks": {"a": {"name": "badnets"}}, "seeds": [0, 2**64]})


# -- per-field bounds through the CLI (in process, as tests/test_cli.py does) -----------------------

EXPERIMENT_BOUNDS = [
    ("train.epochs=10001", "train.epochs must be in 1..10000, got 10001"),
    ("train.epochs=2.0", "'train.epochs' must be an integer, got 2.0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.batch_size=2000000", "train.batch_size must be in 1..1048576"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.lr=11", "train.lr must be in (0, 10], got 11.0"),
    ("train.momentum=1", "train.momentum must be in [0, 1), got 1.0"),
    ("train.weight_decay=5", "train.weight_decay must be in [0, 1], got 5.0"),
    ("train.step_every=10001", "train.step_every must be in 1..10000"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be >= 1"),
    ("seed=-1", "seed must be in 0..4294967295, got -1"),
    (f"seed={2**32}", f"seed must be in 0..4294967295, got {2**32}"),
    ("data.train_limit=0", "data.train_limit must be in 1..1000000000, got 0"),
    ("data.val_fraction=1", "data.val_fraction must be in [0, 1), got 1.0"),
    ("analysis.z=1e9", "analysis.z must be in [0, 1000]"),
    ("model.options={hidden: [100000]}", "model.options.hidden[0] must be in 1..16384"),
    ("model.options={hidden: [" + ", ".join(["4"] * 17) + "]}", "model.options.hidden lists 17 layers"),
    ("model.options={width: 100000}", "model.options.width must be in 1..512"),
    ("transfer={epochs: 20000}", "transfer.epochs must be in 1..10000"),
    ("transfer={lr: 1e3}", "transfer.lr must be in (0, 10]"),
    ("transfer={strengthen_k: [1e300]}", "transfer.strengthen_k must be in (0, 1e+06]"),
    ("transfer={strengthen_channels: [10000000]}", "transfer.strengthen_channels must be in 0..1000000"),
    ("defenses=[" + ", ".join(["{name: strip}"] * 33) + "]", "defenses lists 33 entries; at most 32"),
]

ATTACK_DEFENSE_BOUNDS = [
    ("attack={name: badnets, target: 1000000}", "attack.target must be in 0..100000"),
    ("attack={name: badnets, p: 1e-400}", "attack.p must be in (0, 1], got 0.0"),
    ("attack={name: badnets, trigger: {kind: patch, size: 5000}}", "`size` must be whole pixels in 1..4096"),
    ("attack={name: badnets, trigger: {kind: pattern, margin: 100000}}", "`margin` must be a whole number of pixels in 0..4096"),
    ("attack={name: badnets, trigger: {kind: patch, position: [0, 99999]}}", "`position` must be [row, col] of whole numbers in 0..4096"),
    ("attack={name: badnets, trigger: {kind: blend, seed: 4294967296}}", "`seed` must be a whole number in 0..4294967295"),
    ("attack={name: badnets, trigger: {kind: compose, triggers: [" + ", ".join(["{kind: patch}"] * 17) + "]}}",
     "at most 16 trigger configs"),
    ("defenses=[{name: fine-pruning, fine_tune_epochs: 1000000}]", "defense.fine_tune_epochs must be in 0..10000"),
    ("defenses=[{name: fine-pruning, fine_tune_epochs: 3.0}]", "'defense.fine_tune_epochs' must be an integer"),
    ("defenses=[{name: fine-pruning, step: 10000000}]", "defense.step must be at most 1000000 channels"),
    ("defenses=[{name: fine-pruning, fine_tune_lr: 100}]", "defense.fine_tune_lr must be in (0, 10]"),
    ("defenses=[{name: strip, n_overlays: 1000000}]", "defense.n_overlays must be in 1..10000"),
    ("defenses=[{name: strip, n_overlays: 1e6}]", "'defense.n_overlays' must be an integer, got 1000000.0"),
    ("defenses=[{name: neural-cleanse, steps: 10000000}]", "defense.steps must be in 1..100000"),
    ("defenses=[{name: neural-cleanse, unlearn_epochs: 100000}]", "defense.unlearn_epochs must be in 1..10000"),
    ("defenses=[{name: activation-clustering, dims: 1000000}]", "defense.dims must be in 1..10000"),
    ("defenses=[{name: spectral-signatures, batch_size: 0}]", "defense.batch_size must be in 1..1048576, got 0"),
    ("pruning_aware={max_bias_rounds: 100000}", "pruning_aware.max_bias_rounds must be in 1..1000"),
    ("pruning_aware={retrain: {epochs: 100000}}", "pruning_aware.retrain.epochs must be in 1..10000"),
]


def cli_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("override, message", EXPERIMENT_BOUNDS + ATTACK_DEFENSE_BOUNDS,
                         ids=[o[:40] for o, _ in EXPERIMENT_BOUNDS + ATTACK_DEFENSE_BOUNDS])
def test_experiment_bounds(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("name: bounds\ndata: {name: digits, val_fraction: 0.1}\nmodel: {name: digits-cnn}\n"
                    "attack: {name: badnets}\ntrain: {epochs: 1}\n")
    line = cli_error(capsys, ["run", str(path), "-q", "--set", override])
    assert message in line, line


SUBPOP_BOUNDS = [
    ("seed=4294967296", "seed must be in 0..4294967295"),
    ("workers=5000", "workers must be in 1..1024"),
    ("data.text_features=10000000", "data.text_features must be in 1..100000"),
    ("data.train_limit=1e12", "'data.train_limit' must be an integer"),
    ("subpopulations.n_clusters=10000000", "subpopulations.n_clusters must be in 1..100000"),
    ("subpopulations.pca_dims=100000", "subpopulations.pca_dims must be in 0..10000"),
    ("attack.alphas=[1e300]", "attack.alphas must be in (0, 100]"),
    ("attack.label=1000000", "attack.label must be in 0..100000"),
    ("model.train.epochs=100000", "model.train.epochs must be in 1..10000"),
    ("model.train.lr=.inf", "'model.train.lr' must be a finite number"),
    ("model.options={hidden: [1000000]}", "model.options.hidden[0] must be in 1..16384"),
    ("defenses=[{name: trim, max_iters: 1000000}]", "defenses[0].max_iters must be in 1..1000"),
    ("defenses=[{name: sever, rounds: 1000000}]", "defenses[0].rounds must be in 1..1000"),
    ("defenses=[{name: certified, lam: 1e300}]", "defenses[0].lam must be in (0, 1e+12]"),
    ("defenses=[{name: certified, curve_rows: 1e9}]", "defenses[0].curve_rows must be an integer"),
    ("defenses=[{name: fine-pruning, fine_tune_epochs: 1000000}]", "defenses[0].fine_tune_epochs must be in 0..10000"),
]


@pytest.mark.parametrize("override, message", SUBPOP_BOUNDS, ids=[o[:40] for o, _ in SUBPOP_BOUNDS])
def test_subpop_bounds(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndata: {name: adult, val_fraction: 0.1}\n")
    assert message in cli_error(capsys, ["subpop", str(path), "--set", override])


def _grid(**extra):
    return {"name": "g", "base": {"data": {"name": "digits", "val_fraction": 0.1}, "model": {"name": "digits-cnn"}},
            "attacks": {"a": {"name": "badnets"}}, "seeds": [0], **extra}


@pytest.mark.parametrize("extra, message", [
    ({"seeds": [2**32]}, "seeds must be in 0..4294967295 (each seed)"),
    ({"seeds": list(range(1001))}, "grid key 'seeds' lists 1001 seeds; at most 1000"),
    ({"attacks": {f"a{i}": {"name": "badnets", "p": 0.01 + i / 1e4} for i in range(101)},
      "seeds": list(range(10))}, "101 attacks x 10 seeds = 1010 cells; at most 1000"),
    ({"kind": "subpop", "workers": 10**6, "attacks": {"f": {"attack": {"alphas": [1.0]}}}},
     "workers must be in 1..1024"),
    ({"defenses": [{"name": "strip", "label": f"s{i}"} for i in range(33)]},
     "grid key 'defenses' lists 33 entries; at most 32"),
    ({"base": {"data": {"name": "digits"}, "train": {"epochs": 10**6}}}, "base: train.epochs must be in 1..10000"),
    ({"base": {"data": {"name": "digits"}, "pruning_aware": {"max_bias_rounds": 10**6}}},
     "base: pruning_aware.max_bias_rounds must be in 1..1000"),
    ({"base": {"data": {"name": "digits", "val_fraction": 0.1}, "model": {"name": "digits-cnn"},
               "analysis": {"layer": ["x"] * 3000}}, "attacks": {f"a{i}": {"name": "badnets", "p": 0.01 + i / 1e4}
                                                               for i in range(50)},
      "seeds": list(range(20))}, "would hold"),
])
def test_grid_bounds(extra, message):
    with pytest.raises(PoisonlabError) as err:
        grid_from_dict(_grid(**extra))
    assert message in str(err.value) and "\n" not in str(err.value)
