"""The clean-baseline cache of a run store (``<output.dir>/.cache``), so that a grid of attacks
trains its clean baseline once.

An entry is ``baseline-<key>.safetensors`` (the weights) and ``baseline-<key>.json`` (how
they were trained, the full key and the SHA-256 of the weights file). Both are written to a
temporary file of this process and renamed into place, weights first, so a kill leaves no
half of one; a JSON that does not name the weights beside it (another run replaced them)
makes the pair a miss.

The key covers everything that determines the weights: the data (a digest of the training
and validation tensors themselves, so another data folder or changed files never match),
the model and training settings, the seed, the code (a digest of poisonlab's source files,
not only its version), the torch version and the device type.

Store files may be damaged or hostile: an entry whose JSON is not of this shape, too
large or too deep, whose weights do not match their digest or the model, or hold a value
that is not finite (NaN, inf) is a cache miss: the baseline is trained again and the entry
rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from . import store_tmp
from .data.base import Dataset
from .provenance import code_fingerprint, data_fingerprint  # noqa: F401  (part of this API)
from .store import CACHE_DIR, save_weights  # noqa: F401  (CACHE_DIR: part of this API)
from .store_json import StoreDamage, is_number, loads, read_bytes
from .train import TrainResult

FORMAT = 1
MAX_WEIGHTS_BYTES = 4 << 30
MAX_INFO_BYTES = 4 << 20
MAX_EPOCHS = 100_000


def baseline_key(what: dict[str, Any], train: Dataset, val: Dataset | None, device: torch.device | str,
                 model_fp: str | None = None) -> str:
    """The full cache key (hex SHA-256) of a baseline configured by ``what`` (data settings, model,
    training, seed, version...) and trained on ``train`` with validation split ``val``.

    ``model_fp`` (:func:`poisonlab.models.learners.model_fingerprint` of the untrained model: its
    class, a user's model file, its parameter shapes) is part of the key when given, so an edited
    bring-your-own model never reuses an old baseline; without it the key is as before."""
    from . import __version__

    full = {**what, "train_data": data_fingerprint(train), "val_data": data_fingerprint(val),
            "code": code_fingerprint(), "version": __version__, "torch": torch.__version__,
            "device": torch.device(device).type}
    if model_fp is not None:
        full["model_fp"] = model_fp
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()


def entry_paths(cache: Path, key: str) -> tuple[Path, Path]:
    """(weights, info) file of the entry of ``key``."""
    stem = f"baseline-{key[:20]}"
    return cache / f"{stem}.safetensors", cache / f"{stem}.json"


def _train_result(obj: Any, what: str) -> TrainResult:
    if not isinstance(obj, dict):
        raise StoreDamage(f"{what}: result is not a mapping")
    hist, chosen = obj.get("history"), obj.get("chosen_epoch")
    if not isinstance(hist, list) or len(hist) > MAX_EPOCHS:
        raise StoreDamage(f"{what}: history is not a list of epochs")
    for rec in hist:
        if not isinstance(rec, dict) or not all(isinstance(k, str) and is_number(v) for k, v in rec.items()):
            raise StoreDamage(f"{what}: a history entry is not a mapping of numbers")
    if not isinstance(chosen, int) or isinstance(chosen, bool) or not 0 <= chosen <= len(hist):
        raise StoreDamage(f"{what}: chosen_epoch is not an epoch of the history")
    for k in ("seconds", "images_per_second"):
        if not is_number(obj.get(k)) or not obj[k] >= 0:
            raise StoreDamage(f"{what}: {k} is not a number >= 0")
    return TrainResult(hist, chosen, float(obj["seconds"]), float(obj["images_per_second"]))


def read_entry(weights: Path, info: Path, key: str | None = None) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """The weights and training record of a cache entry, every part checked (shape of the JSON,
    ``key`` when given, the weights' digest, safetensors format, finite values); a
    :class:`StoreDamage` otherwise."""
    what = f"cache entry '{info}'"
    meta = loads(read_bytes(info, what, MAX_INFO_BYTES), what)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreDamage(f"{what} is not a baseline cache entry of this poisonlab (format {FORMAT})")
    if key is not None and meta.get("key") != key:
        raise StoreDamage(f"{what} was made for another configuration, data or code")
    result = _train_result(meta.get("result"), what)
    try:
        blob = read_bytes(weights, f"cache weights '{weights}'", MAX_WEIGHTS_BYTES)
    except FileNotFoundError:
        raise StoreDamage(f"{what} has no weights file beside it") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise StoreDamage(f"cache weights '{weights}' do not match the digest in {info.name}")
    try:
        state = load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise StoreDamage(f"cache weights '{weights}' are not valid safetensors ({type(exc).__name__})") from None
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise StoreDamage(f"cache weights '{weights}' hold a value that is not finite in {name}")
    return state, result


def load(cache: Path, key: str, model: nn.Module) -> TrainResult | None:
    """The cached training of ``key`` loaded into ``model``; None (a miss) when absent or damaged."""
    weights, info = entry_paths(cache, key)
    try:
        state, result = read_entry(weights, info, key)
        model.load_state_dict(state, strict=True)
    except (FileNotFoundError, StoreDamage, RuntimeError):
        return None
    return result


def _replace(tmp: Path, final: Path) -> None:
    try:
        store_tmp.publish_mode(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(cache: Path, key: str, model: nn.Module, result: TrainResult) -> None:
    """Write the entry of ``key`` (temporary files renamed into place: weights, then the JSON)."""
    cache.mkdir(parents=True, exist_ok=True)
    store_tmp.remove_stale(cache)
    weights, info = entry_paths(cache, key)
    tmp = store_tmp.make_file(cache, ".safetensors")
    try:
        save_weights(model, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, weights)
    meta = {"format": FORMAT, "key": key, "weights_sha256": digest, "result": vars(result)}
    tmp = store_tmp.make_file(cache, ".json")
    try:
        tmp.write_text(json.dumps(meta))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, info)


def check_cache(cache: Path) -> list[tuple[str, str]]:
    """(path, problem) for every damaged entry in ``cache`` (for ``poisonlab doctor``); changes nothing."""
    problems: list[tuple[str, str]] = []
    if not cache.is_dir():
        return problems
    for f in sorted(cache.glob("baseline-*.json")):
        try:
            read_entry(f.with_suffix(".safetensors"), f)
        except (FileNotFoundError, StoreDamage) as exc:
            problems.append((str(f), f"damaged baseline cache entry ({exc}); delete it, the next run retrains"))
    for f in sorted(cache.glob("baseline-*.safetensors")):
        if not f.with_suffix(".json").exists():
            problems.append((str(f), "baseline cache weights without their .json (unused); delete them"))
    return problems
