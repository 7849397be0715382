"""StingRay (Suciu, Marginean, Kaya, Daumé III, Dumitras, "When Does Machine Learning FAIL?
Generalized Transferability for Evasion and Poisoning Attacks", USENIX Security 2018, Sec. 4)
on images with a torch surrogate: the paper's loop (bases nearest to the target, a crafted
change per base, the negative-impact test, the local success check), with the feature space,
the crafting step and the local model below chosen by poisonlab.

The feature space is the reference network's output at ``attack.layer`` (``auto``: the input of
its last ``nn.Linear``), ``f``. For a target ``t``, the training images of the poison class are
taken nearest first by ``||f(b) - f(t)||`` (Euclidean). Each base ``b`` becomes a candidate
poison by ``attack.steps`` signed-gradient steps on ``||f(x) - f(t)||^2``, each projected on the
l_inf ball of radius ``attack.eps`` around ``b`` and the pixel box [0, 1]; the step is
``2.5 eps / steps`` (a common PGD rule: the walk can travel 2.5 eps in all, enough to reach
the ball's edge from the base and come back, while each step stays small enough to settle), and
the iterate of the smallest feature distance is kept (the base itself when no step helped).
The label stays the poison class (clean label); poisons are appended as new rows.

The local model is the transfer setting (features frozen, the last layer retrained): a
multinomial logistic regression on the inputs of the reference's last ``nn.Linear``
(penultimate features, computed once for the training, validation and target rows), fitted
full batch in float64 by ``LOCAL_ITERATIONS`` L-BFGS iterations (strong Wolfe line search)
from the reference's own last-layer weights, deterministic. A small penalty ``LOCAL_L2`` on the
weights makes the optimum unique: unpenalised, a fit on separable features drifts towards the
hard-margin solution, which a single poison near the boundary flips while victims trained for
a finite number of epochs do not (a local success that does not transfer). Its accuracy on
the clean rows alone is the negative-impact baseline; a candidate whose refit (clean rows, the
poisons kept so far, the candidate) lowers the validation accuracy by more than ``tau_ni`` is
discarded, as on tabular rows, and so are the stop rules (success, N_max, max_candidates x N_max).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..data.base import Dataset
from ..errors import PoisonlabError
from .features import feature_map, resolve_feature_layer
from .targets import perturbation_norms

LOCAL_ITERATIONS = 100
"""L-BFGS iterations of one refit of the local model's last layer."""
LOCAL_L2 = 1e-3
"""The local refit's penalty ``LOCAL_L2 / 2 * ||W||^2`` on the mean cross-entropy (bias unpenalised)."""
BATCH = 512
"""Images per forward pass when caching features."""
STEP_FACTOR = 2.5
"""The signed-gradient step is ``STEP_FACTOR * eps / steps``."""


def last_linear_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the last ``nn.Linear`` of ``model``; one-line error if it has none."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise PoisonlabError(f"stingray on images retrains the last nn.Linear of the reference (the transfer "
                             f"setting); {type(model).__name__} has none (use a CNN or MLP with a linear output)")
    return found[-1]


def check_image_model(model: nn.Module, layer: str) -> None:
    """The feature layer exists and the network has a last linear layer to retrain."""
    resolve_feature_layer(model, layer)
    last_linear_layer(model)


class _Stop(Exception):
    """Raised by the pre-hook: the last layer itself is not computed."""


@torch.no_grad()
def head_inputs(model: nn.Module, linear: nn.Linear, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The inputs of ``linear`` for every row of ``x`` (N, D), float64, on ``device``."""
    out: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        out.append(args[0].reshape(len(args[0]), -1).double())
        raise _Stop

    handle = linear.register_forward_pre_hook(hook)
    try:
        for start in range(0, len(x), BATCH):
            try:
                model(x[start:start + BATCH].float().to(device))
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(out) if out else torch.zeros(0, linear.in_features, dtype=torch.float64, device=device)


@torch.no_grad()
def batched(features: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``features`` of every row of ``x``, a batch at a time (float32, on ``device``)."""
    parts = [features(x[s:s + BATCH].float().to(device)).float() for s in range(0, len(x), BATCH)]
    return torch.cat(parts)


class LocalHead:
    """The local model: the reference's last linear layer refitted on penultimate features."""

    def __init__(self, linear: nn.Linear, num_classes: int) -> None:
        self.w0 = linear.weight.detach().double().clone()
        bias = linear.bias
        self.b0 = None if bias is None else bias.detach().double().clone()
        self.num_classes = num_classes
        self.w, self.b = self.w0, self.b0

    def fit(self, h: torch.Tensor, y: torch.Tensor) -> "LocalHead":
        """Refit from the reference's weights on features ``h`` and labels ``y`` (deterministic)."""
        w = self.w0.clone().requires_grad_(True)
        b = None if self.b0 is None else self.b0.clone().requires_grad_(True)
        params = [w] if b is None else [w, b]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=LOCAL_ITERATIONS, history_size=20,
                                tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        yy = y.to(h.device)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(self._logits(h, w, b), yy) + 0.5 * LOCAL_L2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w, self.b = w.detach(), None if b is None else b.detach()
        return self

    @staticmethod
    def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return h @ w.T if b is None else h @ w.T + b

    @torch.no_grad()
    def predict(self, h: torch.Tensor) -> torch.Tensor:
        return self._logits(h, self.w, self.b).argmax(1).cpu()

    def accuracy(self, h: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(h) == y).float().mean())


def approach(features: Callable[[torch.Tensor], torch.Tensor], base: torch.Tensor, target_feat: torch.Tensor,
             eps: float, steps: int) -> tuple[torch.Tensor, float, float]:
    """``base`` (1, C, H, W) moved by signed-gradient steps towards ``target_feat`` in feature space,
    inside the l_inf ball of ``eps`` and [0, 1]; (the best iterate, start and end feature distance)."""
    step = STEP_FACTOR * eps / steps
    lo, hi = ball_bounds(base, eps)
    with torch.no_grad():
        start = float(((features(base) - target_feat) ** 2).sum())
    best, best_d, x = base.clone(), start, base.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        dist = ((features(x) - target_feat) ** 2).sum()
        (grad,) = torch.autograd.grad(dist, x)
        with torch.no_grad():
            if float(dist) < best_d:
                best, best_d = x.detach().clone(), float(dist)
            x = torch.minimum(torch.maximum(x.detach() - step * grad.sign(), lo), hi)
    with torch.no_grad():
        end = float(((features(x) - target_feat) ** 2).sum())
        if end < best_d:
            best, best_d = x, end
    return best, start ** 0.5, best_d ** 0.5


def ball_bounds(base: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel bounds ``lo, hi`` in ``base``'s dtype, inside [0, 1], with ``base - eps <= lo`` and
    ``hi <= base + eps`` exactly (float64 differences): ``base -+ eps`` rounded in the data's
    precision can land a hair outside the ball, so such a bound moves one float step inwards."""
    b64 = base.double()
    lo = (b64 - eps).clamp(0.0, 1.0).to(base.dtype)
    hi = (b64 + eps).clamp(0.0, 1.0).to(base.dtype)
    for _ in range(4):
        low, high = lo.double() - b64 < -eps, hi.double() - b64 > eps
        if not bool(low.any() or high.any()):
            break
        lo = torch.where(low, torch.nextafter(lo, base), lo)
        hi = torch.where(high, torch.nextafter(hi, base), hi)
    return lo, hi


def craft_images(cfg: Any, train: Dataset, poison_class: int, target_x: torch.Tensor,
                 reference: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """StingRay's poisons on images (see module docstring): (source rows, poisons, report)."""
    val = reference.val
    if val is None or len(val) == 0:
        raise PoisonlabError("stingray's negative-impact test reads the attacker's clean validation rows; "
                             "set data.val_fraction > 0")
    own = (train.y == poison_class).nonzero().flatten()
    if len(own) == 0:
        raise PoisonlabError(f"stingray found no training image of the poison class {poison_class} to use as a base")
    device = torch.device(reference.device)
    model = reference.model.to(device).eval()
    layer = resolve_feature_layer(model, cfg.layer)
    features = feature_map(model, layer)
    _, linear = last_linear_layer(model)
    h_train = head_inputs(model, linear, train.x, device)
    h_val, h_target = head_inputs(model, linear, val.x, device), head_inputs(model, linear, target_x, device)
    _check_head(model, linear, val.x[:64], h_val[:64], device)
    head = LocalHead(linear, train.num_classes)
    n_max = max(1, int(float(cfg.max_poisons) * len(train)))
    budget = math.ceil(float(cfg.max_candidates) * n_max)
    clean_acc = head.fit(h_train, train.y).accuracy(h_val, val.y)
    clean_flips = int((head.predict(h_target) == poison_class).sum())
    own_feat = batched(features, train.x[own], device)
    target_feat = batched(features, target_x, device)
    eps, steps = float(cfg.eps), int(cfg.steps)
    sources: list[int] = []
    poisons: list[torch.Tensor] = []
    h_poisons: list[torch.Tensor] = []
    per_target: list[dict[str, Any]] = []
    fits = 0
    for k in range(len(target_x)):
        kept_before, success, discarded, tried = len(poisons), False, 0, 0
        starts: list[float] = []
        ends: list[float] = []
        order = own[torch.argsort(((own_feat - target_feat[k]) ** 2).sum(1).cpu(), stable=True)]
        for b in order.tolist():
            if len(poisons) - kept_before >= n_max or tried >= budget:
                break
            cand, start, end = approach(features, train.x[b:b + 1].float().to(device), target_feat[k:k + 1], eps, steps)
            h_cand = head_inputs(model, linear, cand, device)
            trial_h = torch.cat([h_train, *h_poisons, h_cand])
            trial_y = torch.cat([train.y, torch.full((len(poisons) + 1,), poison_class, dtype=train.y.dtype)])
            head.fit(trial_h, trial_y)
            fits += 1
            tried += 1
            if clean_acc - head.accuracy(h_val, val.y) > float(cfg.tau_ni):
                discarded += 1
                continue
            poisons.append(cand[0].cpu())
            h_poisons.append(h_cand)
            sources.append(b)
            starts.append(start)
            ends.append(end)
            if int(head.predict(h_target[k:k + 1])[0]) == poison_class:
                success = True
                break
        per_target.append({"poisons": len(poisons) - kept_before, "local_success": success,
                           "discarded_by_ni": discarded,
                           "feature_distance_start": _mean(starts), "feature_distance_end": _mean(ends)})
    if not poisons:
        discarded = sum(p["discarded_by_ni"] for p in per_target)
        raise PoisonlabError(f"stingray's negative-impact test discarded all {discarded} candidate poisons "
                             f"(each lowered the local model's validation accuracy by more than "
                             f"attack.tau_ni = {float(cfg.tau_ni)}); raise attack.tau_ni")
    x_new = torch.stack(poisons).to(train.x.dtype)
    src = torch.tensor(sources, dtype=torch.int64)
    starts_all = [p["feature_distance_start"] for p in per_target if p["poisons"]]
    ends_all = [p["feature_distance_end"] for p in per_target if p["poisons"]]
    return src, x_new, {"n_poison_images": len(poisons), "n_max_per_target": n_max, "local_fits": fits,
                        "per_target": per_target, "clean_val_accuracy": clean_acc,
                        "clean_local_poison_class_targets": clean_flips, "feature_layer": layer or "input",
                        "feature_dim": int(own_feat.shape[1]), "eps": eps, "steps": steps,
                        "feature_distance_start_mean": _mean(starts_all), "feature_distance_end_mean": _mean(ends_all),
                        **{f"perturbation_{k}": v for k, v in perturbation_norms(x_new, train.x[src]).items()}}


def _check_head(model: nn.Module, linear: nn.Linear, x: torch.Tensor, h: torch.Tensor, device: torch.device) -> None:
    """The last linear layer must produce the model's output (the local model refits just it)."""
    with torch.no_grad():
        out = model(x.float().to(device)).double()
        mine = linear(h.to(linear.weight.dtype)).double()
    if out.shape != mine.shape or not torch.allclose(out, mine, rtol=1e-4, atol=1e-4 * (1 + float(out.abs().max()))):
        raise PoisonlabError("stingray on images retrains the reference's last nn.Linear, but its output is not the "
                             "model's output (a layer follows it); use a network that ends with its linear layer")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
