"""Weak error between a discrete algorithm and its SDE, with Monte-Carlo error bars and fitted
orders.

The weak error up to the horizon T for a test function g is
``max_k |E g(x_k) - E g(X_{k eta})|`` over the steps k <= T/eta. Both expectations are
Monte-Carlo means over independent chains, accumulated chunk by chunk (sums and sums of
squares), so the chain count is limited by time, not memory; the standard error reported is
that of the difference of the two means at the maximising step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from scipy import stats

from . import ensemble, sde
from .ensemble import check_positive_int
from .problems.base import Problem

TestFunction = Callable[[Problem, torch.Tensor], torch.Tensor]

TEST_FUNCTIONS: dict[str, TestFunction] = {
    "loss": lambda problem, x: problem.loss(x),
    "sq_norm": lambda problem, x: x.square().sum(dim=-1),
    "coord0": lambda problem, x: x[..., 0],
    "trace_V": lambda problem, x: problem.trace_V(x),
}


def check_test_functions(names: Iterable[str]) -> list[str]:
    """Return ``names`` as a list if each names a test function, else raise a ValueError."""
    names = list(names)
    unknown = [name for name in names if name not in TEST_FUNCTIONS]
    if not names or unknown:
        raise ValueError(f"test_fns must be a non-empty list drawn from {sorted(TEST_FUNCTIONS)}; "
                         f"got {names!r}")
    return names


@dataclass
class Moments:
    """Per-step Monte-Carlo mean and variance of one test function over ``count`` chains."""

    mean: torch.Tensor
    var: torch.Tensor
    count: int


def path_moments(problem: Problem, sample: Callable[[int, int], torch.Tensor], *, chains: int,
                 chunk: int, test_fns: Sequence[str], seed: int) -> dict[str, Moments]:
    """Means and variances of ``g(x_k)`` for every step k and test function, over ``chains``
    paths drawn as ``sample(seed_of_chunk, chunk_size) -> [steps+1, chunk_size, d]``."""
    check_positive_int("chains", chains)
    check_positive_int("chunk", chunk)
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    done = 0
    while done < chains:
        size = min(chunk, chains - done)
        paths = sample(seed * 100_003 + done, size)
        with torch.no_grad():
            for name in test_fns:
                values = TEST_FUNCTIONS[name](problem, paths).to(torch.float64)
                sums[name] = sums.get(name, 0) + values.sum(dim=1)
                squares[name] = squares.get(name, 0) + values.square().sum(dim=1)
        done += size
    out = {}
    for name in test_fns:
        mean = sums[name] / chains
        var = (squares[name] / chains - mean.square()).clamp_min(0) * chains / max(chains - 1, 1)
        out[name] = Moments(mean.cpu(), var.cpu(), chains)
    return out


def weak_error(a: Moments, b: Moments) -> tuple[float, float, int]:
    """``max_k |mean_a - mean_b|``, its Monte-Carlo standard error and the maximising step."""
    gap = (a.mean - b.mean).abs()
    k = int(gap.argmax())
    stderr = math.sqrt(float(a.var[k]) / a.count + float(b.var[k]) / b.count)
    return float(gap[k]), stderr, k


def compare_algorithm(problem: Problem, algorithm: str, *, eta: float, rho: float, batch: int,
                      micro: int | None = None, x0: Any, horizon: float, chains: int, seed: int,
                      test_fns: Sequence[str] = ("loss", "sq_norm", "coord0", "trace_V"),
                      chunk: int = 50_000, sampling: str = "with-replacement",
                      device: str | torch.device = "cpu", dt: float | None = None
                      ) -> list[dict[str, Any]]:
    """Weak errors of the SDE of ``algorithm``, with and without its noise-induced drift term,
    against the discrete algorithm, one record per test function (the experiment's rows)."""
    test_fns = check_test_functions(test_fns)
    steps = round(horizon / ensemble.check_eta(eta))
    common = dict(eta=eta, rho=rho, batch=batch, micro=micro, x0=x0, sampling=sampling,
                  device=device)

    def discrete(chunk_seed: int, size: int) -> torch.Tensor:
        return ensemble.run(problem, algorithm, steps=steps, chains=size, seed=chunk_seed, **common)

    def continuous(drop: tuple[str, ...]) -> Callable[[int, int], torch.Tensor]:
        def sample(chunk_seed: int, size: int) -> torch.Tensor:
            return sde.simulate(problem, algorithm, horizon=horizon, chains=size,
                                seed=chunk_seed, dt=dt, drop_terms=drop, **common)[1]
        return sample

    moments = {key: path_moments(problem, fn, chains=chains, chunk=chunk, test_fns=test_fns,
                                 seed=seed + offset)
               for offset, (key, fn) in enumerate((("discrete", discrete),
                                                   ("sde", continuous(())),
                                                   ("sde_without", continuous(("trace_V",)))))}
    rows = []
    for name in test_fns:
        error, stderr, step = weak_error(moments["discrete"][name], moments["sde"][name])
        error_without, stderr_without, _ = weak_error(moments["discrete"][name],
                                                      moments["sde_without"][name])
        rows.append({"algorithm": algorithm, "micro": micro, "batch": batch, "eta": eta,
                     "rho": rho, "test_fn": name, "weak_error": error, "stderr": stderr,
                     "argmax_step": step, "weak_error_without_variance_term": error_without,
                     "stderr_without_variance_term": stderr_without, "chains": chains})
    return rows


def fit_order(scales: Sequence[float], errors: Sequence[float],
              confidence: float = 0.95) -> dict[str, float]:
    """Slope of ``log error`` against ``log scale`` by least squares, with its ``confidence``
    interval from the regression's t statistic: the fitted order of convergence."""
    if len(scales) != len(errors) or len(scales) < 3:
        raise ValueError("scales and errors must have the same length, at least 3")
    if min(scales) <= 0 or min(errors) <= 0:
        raise ValueError("scales and errors must be positive to fit on log-log axes")
    fit = stats.linregress([math.log(s) for s in scales], [math.log(e) for e in errors])
    half = stats.t.ppf(0.5 + confidence / 2, len(scales) - 2) * fit.stderr
    return {"order": float(fit.slope), "ci_low": float(fit.slope - half),
            "ci_high": float(fit.slope + half), "intercept": float(fit.intercept)}
