"""``poisonlab doctor``: what it refuses and why, read-only, with the exit status a script reads."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_data_idx import write_set

from poisonlab.cli import main


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POISONLAB_DATA", raising=False)


def doctor(capsys, *args: str) -> tuple[int, list[dict[str, str]]]:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--json", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return exc.value.code or 0, json.loads(out.out)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` with its size and mtime, links not followed."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def test_clean_subset_loads_and_exits_zero(tmp_path, capsys):
    data = tmp_path / "data"
    write_set(data / "mnist")
    code, rows = doctor(capsys, "--data-dir", str(data), "-d", "mnist", "--runs", str(tmp_path / "runs"))
    assert code == 0
    mnist = [r for r in rows if r["item"] == "mnist"]
    assert [r["status"] for r in mnist if r["status"] == "refused"] == []
    loaded = [r["detail"] for r in mnist if r["detail"].startswith("loads:")]
    assert loaded and "3 train + 2 test rows of 1x28x28, 10 classes" in loaded[0]
    # the fixture is a subset: parsed, not checksummed, and said so
    assert sum("not the official size" in r["detail"] for r in mnist) == 4
    assert [r["status"] for r in rows if r["area"] == "store"] == ["missing"]


def test_links_fifos_and_a_bad_file_are_refused_read_only(tmp_path, capsys):
    data = tmp_path / "data"
    paths = write_set(data / "mnist", gz=False)
    (data / "mnist" / "extra").symlink_to("/etc/passwd")
    os.mkfifo(data / "mnist" / "pipe")
    paths["test_labels"].write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(2))  # says 9 labels, has 2
    before = listing(data)
    code, rows = doctor(capsys, "--data-dir", str(data), "-d", "mnist")
    assert code == 1
    refused = {r["detail"] for r in rows if r["status"] == "refused"}
    assert any(d.startswith(str(data / "mnist" / "extra")) and "outside the data folder" in d for d in refused)
    assert any(d.startswith(str(data / "mnist" / "pipe")) and "FIFO" in d for d in refused)
    assert any("truncated IDX file" in d and "t10k-labels-idx1-ubyte" in d for d in refused)
    assert listing(data) == before  # nothing repaired, moved or written


def test_no_load_skips_the_loader(tmp_path, capsys):
    data = tmp_path / "data"
    paths = write_set(data / "mnist", gz=False)
    paths["test_labels"].write_bytes(b"garbage")
    code, rows = doctor(capsys, "--data-dir", str(data), "-d", "mnist", "--no-load")
    details = [r["detail"] for r in rows if r["item"] == "mnist"]
    assert not any(d.startswith("loads:") for d in details)
    # the checksum step still parses each header, so the garbage file is named
    assert code == 1 and any("t10k-labels-idx1-ubyte" in d for d in details)


def test_store_problems_and_config_errors(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "20260101-000000-x-abcdef").mkdir(parents=True)
    (runs / "20260101-000000-x-abcdef" / "metrics.json").write_text("[]")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0}\n")
    good = tmp_path / "good.yaml"
    good.write_text("name: ok\n")
    code, rows = doctor(capsys, "-d", "digits", "--runs", str(runs), "-c", str(bad), "-c", str(good))
    assert code == 1
    by_item = {(r["area"], r["item"]): r for r in rows if r["area"] == "config"}
    assert by_item[("config", str(bad))]["status"] == "refused"
    assert "train.epochs" in by_item[("config", str(bad))]["detail"]
    assert by_item[("config", str(good))] == {"area": "config", "item": str(good), "status": "ok",
                                               "detail": "valid experiment (poisonlab run) config"}
    store = [r for r in rows if r["area"] == "store" and r["status"] == "refused"]
    assert any("metrics.json" in r["item"] + r["detail"] for r in store)
    assert [r for r in rows if r["item"] == "digits"][0]["status"] == "ok"


def test_table_output_escapes_markup_in_names(tmp_path, capsys):
    data = tmp_path / "data"
    write_set(data / "mnist")
    (data / "mnist" / "[red]x").symlink_to("/etc/passwd")
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--data-dir", str(data), "-d", "mnist", "--no-load", "--runs", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert exc.value.code == 1
    assert "[red]x" in out.replace("\n", "").replace(" ", "").replace("│", "")
    assert "1 problem(s) found" in out


def test_sha256sums_manifest_is_checked_and_untrusted(tmp_path, capsys):
    import hashlib

    data = tmp_path / "data"
    paths = write_set(data / "mnist")
    good = paths["train_images"]
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    (data / "mnist" / "alias").symlink_to(good)
    (data / "SHA256SUMS").write_text(
        f"{digest}  ./mnist/{good.name}\n"
        f"{'0' * 64}  ./mnist/{paths['test_labels'].name}\n"
        f"{digest}  ../outside\n"
        "not a checksum line\n"
        f"{digest}  ./mnist/alias\n"
        f"{digest}  ./adult/adult.data\n"  # another data set's file: not reported under mnist
    )
    code, rows = doctor(capsys, "--data-dir", str(data), "-d", "mnist", "--no-load")
    details = [(r["status"], r["detail"]) for r in rows if r["item"] == "mnist"]
    assert code == 1
    assert ("ok", f"{good}: SHA-256 matches SHA256SUMS") in details
    bad = [d for s, d in details if s == "refused"]
    assert any(d.startswith(str(paths["test_labels"])) and f"SHA256SUMS says {'0' * 64}" in d for d in bad)
    assert any("line 3 names '../outside', outside the manifest's folder" in d for d in bad)
    assert any("line 4 is not '<sha256>  <path>'" in d for d in bad)
    assert any(d.startswith(str(data / "mnist" / "alias")) and "link" in d for d in bad)
    assert not any("adult" in d for _, d in details)
