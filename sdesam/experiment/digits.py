"""The network protocol of the theory figures: scikit-learn's 8x8 digits, a small MLP, and a
poor, sharp minimum reached by full-batch gradient descent on the clean training set plus a
block of samples with random labels (after Zhu et al. 2019, "The anisotropic noise in SGD").

Every optimizer and seed then continues from that same point on the clean training set
(:func:`continue_training`), logging test accuracy, clean training loss, tr V (exact, on the
full clean training set) and the distance travelled. The poor minimum is cached to a file keyed
by its settings, so all runs start from bit-identical weights. The data ship with scikit-learn:
nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from sdesam.progress import progress_bar

from .. import per_sample
from .outputs import RUNS_DIR, check_writable
from .records import atomic_write
from sdesam import validation
from sdesam.validation import InputError


@dataclass(frozen=True)
class DigitsData:
    """The split used by the protocol; images are flattened to 64 features."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    random_x: torch.Tensor
    random_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_data(n_train: int = 1000, n_random: int = 200, seed: int = 0,
                     device: str | torch.device = "cpu") -> DigitsData:
    """Split the 1797 digits into a clean training set, a random-label block and a test set.

    Pixels are scaled to [0, 1] and centred by the training mean. The random-label block uses
    images disjoint from both other sets, with labels drawn uniformly from ``seed``.
    """
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    validation.positive_int("n_train", n_train)
    validation.int_at_least("n_random", n_random, 0)
    if n_train + n_random >= len(labels) - 100:
        raise InputError(f"n_train + n_random must leave at least 100 of the {len(labels)} digits "
                         f"for testing; got {n_train} + {n_random}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    x = torch.tensor(images[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(labels[order], dtype=torch.long)
    x = x - x[:n_train].mean(dim=0)
    random_y = torch.tensor(rng.integers(0, 10, n_random), dtype=torch.long)
    cut = n_train + n_random
    parts = (x[:n_train], y[:n_train], x[n_train:cut], random_y, x[cut:], y[cut:])
    return DigitsData(*(t.to(device) for t in parts))


def make_model(hidden: int = 128, seed: int = 0) -> nn.Sequential:
    """The MLP 64 -> hidden -> 10 (ReLU), initialised from ``seed`` (PyTorch's default init)."""
    validation.positive_int("hidden", hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def per_sample_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``[B]``, the ``loss_fn`` every optimizer and statistic takes."""
    return F.cross_entropy(outputs, targets, reduction="none")


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on a data set."""
    outputs = model(inputs)
    return (float(per_sample_loss(outputs, targets).mean()),
            float((outputs.argmax(dim=1) == targets).float().mean()))


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one detached vector (for distances travelled)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def poor_minimum(data: DigitsData, *, hidden: int = 128, lr: float = 0.5, steps: int = 4000,
                 seed: int = 0, cache_dir: str | Path | None = None,
                 progress: bool = True) -> tuple[nn.Sequential, dict[str, Any]]:
    """The MLP after ``steps`` of full-batch gradient descent on clean + random-label samples.

    Returns the model and a summary (losses, accuracies). With ``cache_dir`` the weights are
    stored in a file named by a hash of the settings and of the data, and loaded from there on
    the next call, so every optimizer and seed starts from the same point; a ``cache_dir`` that
    cannot take that file is refused before the descent (:func:`check_cache`).
    """
    validation.positive_number("lr", lr)
    validation.positive_int("steps", steps)
    device = data.train_x.device
    settings = _minimum_settings(data, hidden=hidden, lr=lr, steps=steps, seed=seed)
    path = None if cache_dir is None else check_cache(cache_dir, settings, argument="cache_dir")
    model = make_model(hidden, seed).to(device)
    if path is not None and path.exists():
        stored = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(stored["state_dict"])
        return model, stored["summary"]
    inputs = torch.cat([data.train_x, data.random_x])
    targets = torch.cat([data.train_y, data.random_y])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in progress_bar(range(steps), desc="full-batch GD to the poor minimum", show=progress):
        optimizer.zero_grad(set_to_none=True)
        per_sample_loss(model(inputs), targets).mean().backward()
        optimizer.step()
    summary = protocol_summary(model, data)
    if path is not None:
        state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                 "summary": summary, "settings": settings}
        atomic_write(path, lambda handle: torch.save(state, handle), mode="wb")
    return model, summary


def protocol_summary(model: nn.Module, data: DigitsData) -> dict[str, float]:
    """Clean training loss/accuracy, random-block accuracy and test loss/accuracy."""
    train_loss, train_acc = evaluate(model, data.train_x, data.train_y)
    _, random_acc = evaluate(model, data.random_x, data.random_y) if len(data.random_y) else (0, 0)
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    return {"clean_train_loss": train_loss, "clean_train_accuracy": train_acc,
            "random_label_accuracy": random_acc, "test_loss": test_loss, "test_accuracy": test_acc}


def continue_training(start: nn.Module, rule: str, data: DigitsData, *, lr: float,
                      batch: int, steps: int, seed: int, log_every: int,
                      micro: int | None = None, rho: float = 0.05, lam: float = 1.0,
                      delta: float = 1e-3, trace: bool = True,
                      return_model: bool = False) -> dict[str, Any]:
    """Run ``rule`` (an :func:`sdesam.optim.create` name) from a copy of ``start`` on the
    clean training set and log, every ``log_every`` steps (and at step 0): test accuracy,
    clean training loss, tr V on the full clean training set and the distance from ``start``.

    Mini-batches are drawn without replacement within epochs, from ``seed``. The log also
    holds ``optimizer_seconds``, the wall time spent in the optimizer's steps (for cost
    comparisons), and with ``return_model`` the trained ``model``.
    """
    from ..algorithms import get_rule, rule_options
    from ..optim import create

    validation.positive_int("steps", steps)
    validation.positive_int("log_every", log_every)
    n = len(data.train_y)
    if validation.positive_int("batch", batch) > n:
        raise validation.InputError(f"batch must be at most the {n} training samples; got {batch!r}")
    model = make_model(start[0].out_features).to(data.train_x.device)
    model.load_state_dict(start.state_dict())
    origin = flat_parameters(model)
    facts = get_rule(rule)
    options = rule_options(facts, rho=rho, micro=micro, lam=lam, delta=delta)
    optimizer = create(facts, model.parameters(), base=torch.optim.SGD, lr=lr, **options)
    generator = torch.Generator(device=data.train_x.device).manual_seed(seed)
    log: dict[str, Any] = {"step": [], "test_accuracy": [], "clean_train_loss": [],
                           "trace_V": [], "distance": [], "optimizer_seconds": 0.0}

    def record(step: int) -> None:
        log["step"].append(step)
        log["test_accuracy"].append(evaluate(model, data.test_x, data.test_y)[1])
        log["clean_train_loss"].append(evaluate(model, data.train_x, data.train_y)[0])
        log["distance"].append(float((flat_parameters(model) - origin).norm()))
        if trace:
            log["trace_V"].append(float(per_sample.gradient_noise_trace(
                model, per_sample_loss, data.train_x, data.train_y, chunk_size=250)))

    record(0)
    order = torch.empty(0, dtype=torch.long, device=data.train_x.device)
    for step in range(1, steps + 1):
        if len(order) < batch:
            order = torch.randperm(n, generator=generator, device=data.train_x.device)
        idx, order = order[:batch], order[batch:]
        model.train()
        began = time.perf_counter()
        optimizer.step(model, per_sample_loss, data.train_x[idx], data.train_y[idx])
        log["optimizer_seconds"] += time.perf_counter() - began
        if step % log_every == 0:
            record(step)
    if return_model:
        log["model"] = model
    return log


def default_cache_dir() -> Path:
    """Where the poor-minimum weights are cached unless ``--cache`` says otherwise:
    ``runs/cache`` (git-ignored, shared by every run, so the minimum is computed once)."""
    return Path(RUNS_DIR) / "cache"


def _minimum_settings(data: DigitsData, *, hidden: int, lr: float, steps: int,
                      seed: int) -> dict[str, Any]:
    """What a poor minimum depends on (its cache key): the GD settings and the data's hash."""
    return {"hidden": hidden, "lr": lr, "steps": steps, "seed": seed, "data": _fingerprint(data)}


def check_cache(cache_dir: str | Path, settings: dict[str, Any], *, argument: str) -> Path:
    """The cache file of the poor minimum of ``settings`` (see :func:`_minimum_settings`) in
    ``cache_dir``; unless it is there already, ``cache_dir`` must take a file (an
    :class:`~sdesam.validation.InputError` naming ``argument`` otherwise), checked before the
    gradient descent rather than after it."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"digits_poor_minimum_{key}.pt"
    if not path.is_file():
        check_writable(cache_dir, argument=argument)
    return path


def check_protocol_cache(settings: dict[str, Any], cache_dir: str | Path | None, *,
                         argument: str = "--cache") -> None:
    """Refuse, before any work, a cache folder that cannot take the poor minimum of a theory
    experiment whose ``settings`` are those of :func:`protocol_start` (the digits are loaded
    on the CPU to find its key; a folder that holds it already may be read-only)."""
    data = load_digits_data(settings["n_train"], settings["n_random"], seed=0)
    minimum = _minimum_settings(data, hidden=settings["hidden"], lr=settings["gd_lr"],
                                steps=settings["gd_steps"], seed=0)
    check_cache(default_cache_dir() if cache_dir is None else cache_dir, minimum,
                argument=argument)


def protocol_start(settings: dict[str, Any], *, cache_dir: str | Path | None = None,
                   device: str | torch.device = "cpu", progress: bool = True,
                   ) -> tuple[DigitsData, nn.Sequential, dict[str, float]]:
    """The data, the poor minimum and its record (summary plus RW-SAM's ``lam``) of a theory
    experiment whose ``settings`` hold n_train, n_random, hidden, gd_lr and gd_steps.

    The minimum is cached in ``cache_dir`` (default :func:`default_cache_dir`). ``lam`` is the
    inverse of the mean exact per-sample gradient norm at the poor minimum, so that
    ``lam |g_i|`` is of order one there (the rule every theory figure uses).
    """
    data = load_digits_data(settings["n_train"], settings["n_random"], seed=0, device=device)
    poor, summary = poor_minimum(data, hidden=settings["hidden"], lr=settings["gd_lr"],
                                 steps=settings["gd_steps"], seed=0,
                                 cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
                                 progress=progress)
    norms = per_sample.per_sample_grad_norms(poor, per_sample_loss, data.train_x, data.train_y)
    return data, poor, {"lam": 1.0 / float(norms.mean()), **summary}


def _fingerprint(data: DigitsData) -> str:
    """A short hash of the data split, so a cached minimum is never reused for other data."""
    digest = hashlib.sha256()
    for tensor in (data.train_x, data.train_y, data.random_x, data.random_y):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
