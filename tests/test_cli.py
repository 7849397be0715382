"""The command line: one-line errors with exit status 2, listings, a real run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from poisonlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def config(tmp_path, body: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(body)
    return p


BASE = """
name: t
data: {name: digits}
model: {name: digits-cnn}
train: {epochs: 1, batch_size: 128}
output: {dir: %s, plots: false}
attack: {name: badnets, p: 0.1, target: 0, trigger: {kind: pattern, margin: 0}}
"""


@pytest.mark.parametrize("edit,message", [
    ("data: {name: mnistt}", "unknown data set 'mnistt' (did you mean 'mnist'?)"),
    ("model: {name: lenet}", "unknown model 'lenet'"),
    ("attack: {name: badnets, p: 1.5}", "attack.p must be in (0, 1], got 1.5"),
    ("attack: {name: badnets, target: 12}", "attack.target 12 is out of range; the data set has classes 0..9"),
    ("attack: {name: badnets, trigger: {kind: patch, size: 9}}", "trigger is 9x9 pixels but the image is only 8x8"),
    ("bogus: 1", "unknown config key 'bogus'"),
    ("data: {name: mnist, dir: /nonexistent-dir}", "data dir '/nonexistent-dir' does not exist"),
])
def test_bad_input_one_line_error(tmp_path, capsys, edit, message):
    key = edit.split(":")[0]
    lines = [ln for ln in (BASE % (tmp_path / "runs")).splitlines() if not ln.startswith(key + ":")]
    cfg = config(tmp_path, "\n".join(lines) + "\n" + edit + "\n")
    code, out, err = run_cli(["run", str(cfg), "-q"], capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if p.name.startswith(".tmp")]


def test_missing_mnist_files_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("POISONLAB_DATA", raising=False)
    cfg = config(tmp_path, (BASE % (tmp_path / "runs")).replace("{name: digits}", "{name: mnist}")
                 .replace("digits-cnn", "badnet-mnist"))
    code, _, err = run_cli(["run", str(cfg), "-q", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "train-images-idx3-ubyte" in err and "--download" in err


def test_malformed_yaml_and_missing_config(tmp_path, capsys):
    code, _, err = run_cli(["run", str(config(tmp_path, "a: [1,\n")), "-q"], capsys)
    assert code == 2 and "not valid YAML" in err
    code, _, err = run_cli(["run", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and "not found" in err


def test_bad_set_and_device(tmp_path, capsys):
    cfg = config(tmp_path, BASE % (tmp_path / "runs"))
    code, _, err = run_cli(["run", str(cfg), "--set", "train.epochs"], capsys)
    assert code == 2 and "--set needs key=value" in err
    code, _, err = run_cli(["run", str(cfg), "--device", "tpu"], capsys)
    assert code == 2 and "--device must be cpu, cuda or auto" in err


def test_datasets_listing(capsys):
    code, out, _ = run_cli(["datasets"], capsys)
    assert code == 0
    for name in ("digits", "mnist", "fashion-mnist", "gtsrb", "cifar10"):
        assert name in out
    assert "embedded" in out and "/usr/share/datasets" in out


def test_run_then_runs_and_show(tmp_path, capsys):
    runs = tmp_path / "runs"
    cfg = config(tmp_path, BASE % runs)
    code, out, _ = run_cli(["run", str(cfg), "-q", "--seed", "3"], capsys)
    assert code in (0, None)
    assert "average" in out and "run folder:" in out
    folder = Path(out.split("run folder:")[1].split()[0])
    m = json.loads((folder / "metrics.json").read_text())
    assert m["seed"] == 3 and m["attack"]["n_poison"] == 121
    assert (folder / "weights" / "victim.safetensors").is_file()
    code, out, _ = run_cli(["runs", "--dir", str(runs)], capsys)
    assert folder.name[:12] in out
    code, out, _ = run_cli(["show", folder.name[:15], "--dir", str(runs)], capsys)
    assert "BadNet backdoor error" in out
    code, _, err = run_cli(["show", "nope", "--dir", str(runs)], capsys)
    assert code == 2 and "no run 'nope'" in err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    cfg = config(tmp_path, "train: {epochs: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "poisonlab.cli", "run", str(cfg)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.epochs must be >= 1, got -1"


def test_corrupt_index_and_metrics_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "index.sqlite").write_text("not a database")
    code, _, err = run_cli(["runs", "--dir", str(tmp_path)], capsys)
    assert code == 2 and "run index" in err and "is unreadable" in err and err.count("\n") == 1
    run = tmp_path / "r1"
    run.mkdir()
    (run / "metrics.json").write_text("{")
    code, _, err = run_cli(["show", str(run)], capsys)
    assert code == 2 and "metrics.json' is corrupt" in err and err.count("\n") == 1
