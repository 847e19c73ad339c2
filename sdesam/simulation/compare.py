"""Weak error between a discrete algorithm and its SDE, with Monte-Carlo error bars and fitted
orders.

For a test function g the weak error is reported two ways: ``max_k |E g(x_k) - E g(X_{k eta})|``
over the recorded steps k <= T/eta, and ``|E g(x_K) - E g(X_T)|`` at the horizon T = K eta.
Both expectations are Monte-Carlo means over independent chains, simulated chunk by chunk with
only the running moments kept (no path is stored), so the chain count is limited by time, not
memory. Chains that diverge are frozen and left out (see :mod:`sdesam.simulation.chains`): every record
says over how many chains its statistics were taken (``chains`` simulated per side,
``diverged`` of them left out). The standard error reported is that of the difference of the
two means at the step concerned.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from scipy import stats
from sdesam.progress import progress_bar

from . import ensemble, memory, sde
from .. import validation
from ..algorithms import Rule, get_rule
from .inputs import check_eta
from .chains import TEST_FUNCTIONS, ChainRun, Moments, check_test_functions, recorded_steps
from ..problems.base import Problem
from ..stats import normal_quantile

__all__ = ["TEST_FUNCTIONS", "Moments", "check_test_functions", "sample_moments", "weak_error",
           "compare_algorithm", "comparison_parts", "fit_order", "VARIANTS"]

VARIANTS: dict[str, tuple[str, ...]] = {"full": (), "without_noise_term": ("trace_V",)}
"""The SDE variants compared against the discrete rule: the full first-order SDE, and the
same SDE without its noise-induced drift term (for rules that have one)."""


def sample_moments(sample: Callable[[int, int], ChainRun], *, chains: int, chunk: int,
                   seed: int, progress: bool = False, desc: str = "chains"
                   ) -> tuple[dict[str, Moments], int]:
    """Moments of the test functions over ``chains`` chains drawn ``chunk`` at a time as
    ``sample(seed_of_chunk, chunk_size) -> ChainRun``, pooled; and how many diverged."""
    validation.positive_int("chains", chains)
    validation.positive_int("chunk", chunk)
    parts: dict[str, list[Moments]] = {}
    diverged = 0
    with progress_bar(total=chains, desc=desc, show=progress and chunk < chains, leave=False) as bar:
        for done in range(0, chains, chunk):
            size = min(chunk, chains - done)
            run = sample(seed * 100_003 + done, size)
            for name, moments in run.moments.items():
                parts.setdefault(name, []).append(moments)
            diverged += run.diverged_count
            bar.update(size)
    return {name: Moments.pooled(values) for name, values in parts.items()}, diverged


def weak_error(a: Moments, b: Moments) -> dict[str, Any]:
    """``max_k |mean_a - mean_b|`` with its Monte-Carlo standard error and maximising record,
    and the same gap at the last record (the horizon): its size ``weak_error_T`` and its sign
    ``error_T = mean_a - mean_b`` (what an expansion in eta fits)."""
    gap = (a.mean - b.mean).abs().nan_to_num(nan=-1.0)
    k = int(gap.argmax())

    def stderr(r: int) -> float:
        return math.sqrt(float(a.var[r]) / max(int(a.count[r]), 1)
                         + float(b.var[r]) / max(int(b.count[r]), 1))

    last = gap.numel() - 1
    return {"weak_error": float(gap[k]), "weak_error_stderr": stderr(k), "argmax_record": k,
            "weak_error_T": float((a.mean[last] - b.mean[last]).abs()),
            "error_T": float(a.mean[last] - b.mean[last]),
            "weak_error_T_stderr": stderr(last)}


def comparison_parts(problem: Problem, algorithm: "str | Rule", *, eta: float,
                     rho: float | None = None, batch: int,
                     micro: int | None = None, lam: float | None = None, horizon: float,
                     chains: int, chunk: int = 50_000, test_fns: Sequence[str] = ("loss",),
                     sampling: str = "with-replacement", every: int | None = 1,
                     chains_argument: str = "chains", keep_states: bool = False
                     ) -> list[memory.Part]:
    """What :func:`compare_algorithm` holds at its peak: one block of ``min(chunk, chains)``
    chains, discrete or SDE (the larger), with running moments only (``keep_states``: with its
    states, as a control-variate run keeps them; see :mod:`sdesam.simulation.memory`); its
    chain count shown as ``chains_argument``."""
    rule = get_rule(algorithm)
    validation.positive_int("chains", chains)
    block = min(validation.positive_int("chunk", chunk), chains)
    steps = round(horizon / check_eta(eta))
    common = dict(chains=block, every=every, keep_states=keep_states, statistics=len(test_fns),
                  chains_argument=chains_argument)
    discrete = ensemble.run_parts(problem, batch=batch, sampling=sampling, steps=steps, rule=rule,
                                  **common)
    model = sde.AlgorithmSDE(problem, rule, eta=eta, rho=rho, batch=batch, micro=micro,
                             lam=lam, sampling=sampling)
    continuous = sde.integration_parts(model, channels=problem.n, dim=problem.dim, steps=steps,
                                       **common)
    return max(discrete, continuous, key=lambda parts: sum(part.nbytes for part in parts))


def compare_algorithm(problem: Problem, algorithm: "str | Rule", *, eta: float,
                      rho: float | None = None, batch: int,
                      micro: int | None = None, lam: float | None = None, x0: Any,
                      horizon: float, chains: int, seed: int,
                      test_fns: Sequence[str] = ("loss", "sq_norm", "coord0", "trace_V"),
                      chunk: int = 50_000, sampling: str = "with-replacement",
                      device: str | torch.device = "cpu", dt: float | None = None,
                      every: int | None = 1, variants: Sequence[str] = tuple(VARIANTS),
                      drift_batches: str | int = "auto",
                      progress: bool = False) -> list[dict[str, Any]]:
    """Weak errors of the SDE variants of ``algorithm`` (:data:`VARIANTS`; the variant
    without the noise-induced term only for rules that have one) against the discrete
    algorithm: one flat record per test function and variant, each with the chain counts.

    Moments are recorded at steps ``0, every, ..., T/eta`` (``every=None``: start and end).
    A comparison whose blocks of ``chunk`` chains would not fit in memory is refused before
    any work (:func:`comparison_parts`). A rule the hand-written SDE does not implement is
    refused naming the fact it lacks (compare its compiled SDE with
    :func:`sdesam.simulation.derived_sde.simulate_derivation` instead). ``drift_batches`` is how
    the SDE takes its drift's expectation over batches (:class:`sde.AlgorithmSDE`).
    """
    test_fns = check_test_functions(test_fns)
    rule = sde.SUPPORT.require(get_rule(algorithm))
    for variant in variants:
        validation.one_of("variants", variant, VARIANTS)
    if not rule.noise_induced:
        variants = [v for v in variants if not VARIANTS[v]]
    steps = round(horizon / check_eta(eta))
    memory.require(comparison_parts(problem, rule, eta=eta, rho=rho, batch=batch, micro=micro,
                                    lam=lam, horizon=horizon, chains=chains, chunk=chunk,
                                    test_fns=test_fns, sampling=sampling, every=every),
                   validation.device("device", str(device)))
    common = dict(eta=eta, rho=rho, batch=batch, micro=micro, lam=lam, x0=x0, sampling=sampling,
                  device=device, every=every, keep_states=False, test_fns=test_fns,
                  progress=progress)

    def discrete(chunk_seed: int, size: int) -> ChainRun:
        return ensemble.run(problem, rule, steps=steps, chains=size, seed=chunk_seed, **common)

    def continuous(drop: tuple[str, ...]) -> Callable[[int, int], ChainRun]:
        def sample(chunk_seed: int, size: int) -> ChainRun:
            return sde.simulate(problem, rule, horizon=horizon, chains=size, seed=chunk_seed,
                                dt=dt, drop_terms=drop, drift_batches=drift_batches, **common)
        return sample

    options = dict(chains=chains, chunk=chunk, progress=progress)
    reference, reference_diverged = sample_moments(discrete, seed=seed, desc=f"{rule.name} discrete",
                                                   **options)
    recorded = recorded_steps(steps, every)
    rows = []
    for offset, variant in enumerate(variants, start=1):
        moments, diverged = sample_moments(continuous(VARIANTS[variant]), seed=seed + offset,
                                           desc=f"{rule.name} SDE {variant}", **options)
        for name in test_fns:
            rows.append({"rule": rule.name, "micro": micro, "lam": lam, "batch": batch,
                         "eta": eta, "rho": rho, "dt": dt if dt is not None else eta / sde.SUBSTEPS,
                         "test_fn": name, "variant": variant,
                         **weak_error(reference[name], moments[name]),
                         "chains": chains, "diverged": reference_diverged + diverged,
                         "discrete_diverged": reference_diverged, "sde_diverged": diverged})
            rows[-1]["argmax_step"] = recorded[rows[-1].pop("argmax_record")]
    return rows


def fit_order(scales: Sequence[float], errors: Sequence[float], confidence: float = 0.95,
              stderrs: Sequence[float] | None = None) -> dict[str, Any]:
    """Slope of ``log error`` against ``log scale`` by least squares: the fitted order of
    convergence, with its ``confidence`` interval.

    Without ``stderrs`` the interval is the regression's t interval (at least 3 points): it
    counts any bend of the curve as noise. With the errors' Monte-Carlo standard errors it is
    the Monte-Carlo interval (at least 2 points): the delta method, ``sd(log e_i) = se_i / e_i``,
    propagated through the least-squares weights -- how far the noise alone could move the
    slope; ``min_signal`` (the smallest ``e_i / se_i``) says whether that approximation holds
    (it needs every point several standard errors above zero)."""
    least = 3 if stderrs is None else 2
    if len(scales) != len(errors) or len(scales) < least or (
            stderrs is not None and len(stderrs) != len(errors)):
        raise validation.InputError(f"scales, errors (and stderrs) must have the same length, at "
                                    f"least {least}")
    if min(scales) <= 0 or min(errors) <= 0:
        raise validation.InputError("scales and errors must be positive to fit on log-log axes")
    logs = [math.log(s) for s in scales]
    values = [math.log(e) for e in errors]
    centre = sum(logs) / len(logs)
    spread = sum((x - centre) ** 2 for x in logs)
    if spread == 0:
        raise validation.InputError("scales must not all be equal")
    weights = [(x - centre) / spread for x in logs]
    slope = sum(w * v for w, v in zip(weights, values))
    intercept = sum(values) / len(values) - slope * centre
    if stderrs is None:
        fit = stats.linregress(logs, values)
        half = stats.t.ppf(0.5 + confidence / 2, len(scales) - 2) * fit.stderr
        extra: dict[str, Any] = {"interval": "regression"}
    else:
        if min(stderrs) < 0:
            raise validation.InputError("stderrs must be non-negative")
        sd = math.sqrt(sum((w * se / e) ** 2 for w, se, e in zip(weights, stderrs, errors)))
        half = normal_quantile(confidence) * sd
        extra = {"interval": "monte-carlo",
                 "min_signal": min(e / se if se > 0 else math.inf for e, se in zip(errors, stderrs))}
    return {"order": float(slope), "ci_low": float(slope - half), "ci_high": float(slope + half),
            "intercept": float(intercept), **extra}
