"""Interval estimates and escape detection for the theory experiments.

Binomial intervals (Wilson, Clopper-Pearson) for the fraction of chains that escaped by a
given step, a percentile bootstrap for summaries of first-exit times, and the detectors that
turn trajectories (or logged metrics) into first-exit steps. Everything works on numpy arrays
so that the same code summarises ensembles of chains and sets of seeds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as _scipy_stats

from sdesam.validation import InputError, positive_int

NEVER = -1
"""First-exit value of a chain that did not escape within the horizon."""


def _check_confidence(confidence: float) -> float:
    """Return ``confidence`` if it lies strictly between 0 and 1, else raise ValueError."""
    if not 0.0 < float(confidence) < 1.0:
        raise InputError(f"confidence must lie strictly between 0 and 1; got {confidence!r}")
    return float(confidence)


def _check_counts(successes, trials) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast successes/trials to float arrays, checking 0 <= successes <= trials, trials >= 1."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    if np.any(n < 1):
        raise InputError(f"trials must be >= 1; got {trials!r}")
    if np.any(k < 0) or np.any(k > n):
        raise InputError(f"successes must lie in [0, trials]; got successes={successes!r}")
    return np.broadcast_arrays(k, n)


def normal_quantile(confidence: float = 0.95) -> float:
    """z such that a standard normal lies in [-z, z] with probability ``confidence`` (1.96 at
    95%): the one place a two-sided normal interval takes its width from."""
    return float(_scipy_stats.norm.ppf(0.5 + _check_confidence(confidence) / 2))


def wilson_interval(successes, trials, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1 successes)."""
    z = normal_quantile(confidence)
    k, n = _check_counts(successes, trials)
    p = k / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)


def clopper_pearson_interval(successes, trials,
                             confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (conservative) Clopper-Pearson interval for a binomial proportion."""
    alpha = 1 - _check_confidence(confidence)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, _scipy_stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        high = np.where(k < n, _scipy_stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return low, high


BINOMIAL_INTERVALS: dict[str, Callable] = {
    "wilson": wilson_interval,
    "clopper-pearson": clopper_pearson_interval,
}


def binomial_interval(successes, trials, confidence: float = 0.95,
                      method: str = "wilson") -> tuple[np.ndarray, np.ndarray]:
    """The binomial interval named ``method`` ("wilson" or "clopper-pearson")."""
    if method not in BINOMIAL_INTERVALS:
        raise InputError(f"method must be one of {', '.join(BINOMIAL_INTERVALS)}; got {method!r}")
    return BINOMIAL_INTERVALS[method](successes, trials, confidence)


def bootstrap_interval(values, statistic: Callable[[np.ndarray], float] = np.mean, *,
                       confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of ``statistic`` over ``values``: (estimate, low, high).

    Resampling is vectorised (one ``[resamples, n]`` index draw) and seeded, so the same seed
    gives the same interval.
    """
    _check_confidence(confidence)
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        raise InputError("values must contain at least one number")
    positive_int("resamples", resamples)
    rng = np.random.default_rng(seed)
    draws = data[rng.integers(0, data.size, size=(resamples, data.size))]
    replicates = np.apply_along_axis(statistic, 1, draws)
    alpha = 1 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(statistic(data)), float(low), float(high)


def median_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free interval for it: (median, low, high).

    The interval is the order statistics ``x_(k) .. x_(n+1-k)`` with the largest ``k`` whose
    coverage ``P(k <= Bin(n, 1/2) <= n - k)`` is at least ``confidence`` (exact for continuous
    data, no assumption on their distribution): the honest interval for a median of a few
    noisy timings. ValueError when ``n`` values are too few for the level (n >= 6 at 95%).
    """
    _check_confidence(confidence)
    data = np.sort(np.asarray(values, dtype=float).ravel())
    n = data.size
    if n == 0 or not np.all(np.isfinite(data)):
        raise InputError("values must be a non-empty set of finite numbers")
    coverage = [_scipy_stats.binom.cdf(n - k, n, 0.5) - _scipy_stats.binom.cdf(k - 1, n, 0.5)
                for k in range(1, n // 2 + 1)]
    covering = [k for k, c in enumerate(coverage, start=1) if c >= confidence]
    if not covering:
        raise InputError(f"values: {n} are too few for a {confidence:.0%} interval of the "
                         f"median (the widest, min..max, covers {coverage[0] if coverage else 0:.1%})")
    k = max(covering)
    return float(np.median(data)), float(data[k - 1]), float(data[n - k])


def first_true(mask) -> np.ndarray:
    """Index along axis 0 of the first True in each column of ``mask`` ([T, ...]); NEVER if none."""
    flags = np.asarray(mask, dtype=bool)
    if flags.ndim < 1 or flags.shape[0] == 0:
        raise InputError(f"mask must have a non-empty leading (time) axis; got shape {flags.shape}")
    hit = flags.any(axis=0)
    return np.where(hit, flags.argmax(axis=0), NEVER)


def first_exit(trajectory, escaped: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """First step at which ``escaped(x)`` holds for each chain of ``trajectory`` ([T+1, K, d]).

    ``escaped`` maps points ``[..., d]`` to booleans ``[...]``; chains that never escape get
    :data:`NEVER`. The step is the index along the time axis (0 = the starting point).
    """
    return first_true(escaped(np.asarray(trajectory)))


def first_rise(values, threshold: float) -> np.ndarray:
    """First index at which ``values`` ([T, ...]) exceeds its value at index 0 by ``threshold``."""
    series = np.asarray(values, dtype=float)
    if threshold <= 0:
        raise InputError(f"threshold must be > 0; got {threshold!r}")
    return first_true(series >= series[:1] + threshold)


def escaped_fraction(exit_steps, steps, confidence: float = 0.95,
                     method: str = "wilson") -> dict[str, np.ndarray]:
    """Fraction of chains escaped by each of ``steps`` with its binomial interval.

    ``exit_steps`` are first-exit indices (:data:`NEVER` for none). Returns arrays
    ``fraction``, ``ci_low``, ``ci_high`` aligned with ``steps``.
    """
    exits = np.asarray(exit_steps)
    grid = np.asarray(steps)
    if exits.ndim != 1 or exits.size == 0:
        raise InputError(f"exit_steps must be a non-empty 1-D array; got shape {exits.shape}")
    done = exits[exits != NEVER]
    counts = np.searchsorted(np.sort(done), grid, side="right")
    low, high = binomial_interval(counts, exits.size, confidence, method)
    return {"fraction": counts / exits.size, "ci_low": low, "ci_high": high}


def restricted_mean(exit_steps, horizon: int) -> float:
    """Mean of min(first exit, horizon): the censoring-robust mean first-exit time."""
    exits = np.asarray(exit_steps)
    return float(np.where(exits == NEVER, horizon, np.minimum(exits, horizon)).mean())


def exit_time_summary(exit_steps, horizon: int, *, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> dict[str, float | int]:
    """Restricted mean first-exit time with a bootstrap interval, and the escaped count.

    Chains that never escaped count as exiting at ``horizon`` (so the statistic is a lower
    bound of the true mean when some never escape; ``escaped`` says how many did).
    """
    exits = np.asarray(exit_steps)
    horizon = positive_int("horizon", int(horizon) if isinstance(horizon, np.integer) else horizon)
    censored = np.where(exits == NEVER, horizon, np.minimum(exits, horizon))
    mean, low, high = bootstrap_interval(censored, np.mean, confidence=confidence,
                                         resamples=resamples, seed=seed)
    return {"mean": mean, "ci_low": low, "ci_high": high,
            "escaped": int((exits != NEVER).sum()), "chains": int(exits.size)}


def mean_and_stderr(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean along ``axis`` (stderr 0 for a single value)."""
    data = np.asarray(values, dtype=float)
    count = data.shape[axis]
    mean = data.mean(axis=axis)
    if count < 2:
        return mean, np.zeros_like(mean)
    return mean, data.std(axis=axis, ddof=1) / np.sqrt(count)


def non_finite_chains(values, chain_axis: int = -1) -> int:
    """How many chains (indices along ``chain_axis``) hold any non-finite value: the
    ``diverged`` count reported beside every statistic taken over chains or seeds."""
    data = np.asarray(values, dtype=float)
    if data.ndim == 0:
        return int(not np.isfinite(data))
    finite = np.isfinite(np.moveaxis(data, chain_axis, -1)).reshape(-1, data.shape[chain_axis])
    return int((~finite.all(axis=0)).sum())


def paired_difference(a, b, confidence: float = 0.95) -> dict[str, object]:
    """Summary of the paired differences ``a[i] - b[i]`` (e.g. two optimizers run on the same
    seeds): the per-pair differences, their mean, standard deviation and error, Student-t interval and
    two-sided p-value (null: mean difference 0), and ``n`` pairs used.

    Pairs where either value is not finite are left out and counted in ``diverged``. With fewer
    than two pairs the interval and p-value are None; with identical differences the interval
    is the single point and the p-value is None (the t statistic is undefined).
    """
    _check_confidence(confidence)
    first, second = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if first.shape != second.shape:
        raise InputError(f"a and b must hold the same number of paired values; got "
                         f"{first.size} and {second.size}")
    keep = np.isfinite(first) & np.isfinite(second)
    differences = first[keep] - second[keep]
    n = int(differences.size)
    record: dict[str, object] = {"n": n, "diverged": int((~keep).sum()),
                                 "differences": differences.tolist(),
                                 "mean": float(differences.mean()) if n else None,
                                 "std": None, "stderr": None, "ci_low": None, "ci_high": None,
                                 "p_value": None, "confidence": confidence}
    if n < 2:
        return record
    record["std"] = float(differences.std(ddof=1))
    stderr = record["std"] / float(np.sqrt(n))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * stderr
    record.update(stderr=stderr, ci_low=record["mean"] - half, ci_high=record["mean"] + half)
    if stderr > 0:
        t = record["mean"] / stderr
        record["p_value"] = float(2 * _scipy_stats.t.sf(abs(t), n - 1))
    return record


def paired_table(rows: list[dict], quantity: str, baselines: tuple[str, ...],
                 group: tuple[str, ...] = (), confidence: float = 0.95,
                 unit: str = "seed") -> list[dict]:
    """Paired differences of ``quantity`` between every (rule, micro) of ``rows`` and each
    baseline rule (micro null), matched by ``unit`` (``seed``; ``chain`` for ensembles whose
    chain k shares its random numbers across rules) within each ``group`` (e.g. protocol).

    ``rows`` are per-unit records with ``rule``, ``micro``, ``unit``, ``quantity`` and the
    ``group`` keys. Each result is ``{**group, rule, micro, baseline, quantity, unit-s,
    **summary}`` with the summary of :func:`paired_difference` of (rule - baseline) over the
    shared units (``seeds`` or ``chains``: the matched unit values).
    """
    tables: dict[tuple, dict[tuple, dict[int, float]]] = {}
    for row in rows:
        where = tuple(row[key] for key in group)
        values = tables.setdefault(where, {}).setdefault((row["rule"], row["micro"]), {})
        values[row[unit]] = row[quantity]
    out = []
    for where, runs in tables.items():
        for baseline in baselines:
            reference = runs.get((baseline, None))
            if reference is None:
                continue
            for (rule, micro), values in runs.items():
                if (rule, micro) == (baseline, None):
                    continue
                shared = sorted(set(values) & set(reference))
                summary = paired_difference([values[u] for u in shared],
                                            [reference[u] for u in shared], confidence)
                out.append({**dict(zip(group, where)), "rule": rule, "micro": micro,
                            "baseline": baseline, "quantity": quantity, f"{unit}s": shared,
                            **summary})
    return out


def minimal_detectable_difference(std_of_differences: float, n: int, alpha: float = 0.05,
                                  power: float = 0.8) -> float:
    """The smallest true mean difference a paired t-test on ``n`` units detects with probability
    ``power`` at two-sided level ``alpha``, given the standard deviation of the differences:
    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the usual approximation to the
    noncentral-t power calculation; it errs slightly low for very small n)."""
    _check_confidence(1 - alpha)
    _check_confidence(power)
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"n must be an integer >= 2; got {n!r}")
    if not std_of_differences >= 0:
        raise InputError(f"std_of_differences must be >= 0; got {std_of_differences!r}")
    quantiles = _scipy_stats.t.ppf(1 - alpha / 2, n - 1) + _scipy_stats.t.ppf(power, n - 1)
    return float(quantiles * std_of_differences / np.sqrt(n))


VERDICTS: tuple[str, ...] = ("supported", "not supported", "not resolvable")
"""The readings of a claimed gain from its paired interval (:func:`gain_verdict`)."""


def gain_verdict(ci_low: float | None, ci_high: float | None, relevant: float) -> str:
    """The reading of the claim "the method gains over its reference" from the 95% interval
    of the paired difference: "supported" when the interval lies above 0; "not supported" when
    it excludes every gain of ``relevant`` or more (it lies below ``relevant``: a loss, no
    change, or a gain too small to matter); "not resolvable" when it holds both 0 and
    ``relevant`` (or there is no interval) -- the design cannot tell."""
    if not relevant > 0:
        raise InputError(f"relevant must be a positive difference; got {relevant!r}")
    if ci_low is None or ci_high is None:
        return "not resolvable"
    if ci_low > 0:
        return "supported"
    if ci_high < relevant:
        return "not supported"
    return "not resolvable"
