"""Interval code and escape detectors against hand-computed and published values."""

import numpy as np
import pytest

from sdesam import stats


def test_wilson_matches_published_values():
    low, high = stats.wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = stats.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


def test_clopper_pearson_matches_closed_forms():
    low, high = stats.clopper_pearson_interval(5, 10)
    assert low == pytest.approx(0.1871, abs=1e-4) and high == pytest.approx(0.8129, abs=1e-4)
    # k = 0 and k = n have closed forms: upper = 1 - (alpha/2)^(1/n), lower = (alpha/2)^(1/n)
    low0, high0 = stats.clopper_pearson_interval(0, 10)
    lown, highn = stats.clopper_pearson_interval(10, 10)
    assert low0 == 0.0 and high0 == pytest.approx(1 - 0.025 ** 0.1, rel=1e-9)
    assert highn == 1.0 and lown == pytest.approx(0.025 ** 0.1, rel=1e-9)


def test_intervals_are_vectorised_and_nested():
    k = np.array([0, 3, 7, 10])
    wl, wh = stats.wilson_interval(k, 10)
    cl, ch = stats.clopper_pearson_interval(k, 10)
    assert wl.shape == (4,) and np.all(wl <= k / 10 + 1e-12) and np.all(wh >= k / 10 - 1e-12)
    # Clopper-Pearson is conservative: it contains the Wilson interval
    assert np.all(cl <= wl + 1e-12) and np.all(ch >= wh - 1e-12)


@pytest.mark.parametrize("kwargs, word", [
    (dict(successes=11, trials=10), "successes"),
    (dict(successes=1, trials=0), "trials"),
    (dict(successes=1, trials=10, confidence=1.5), "confidence"),
])
def test_interval_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        stats.wilson_interval(**kwargs)


def test_binomial_interval_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        stats.binomial_interval(1, 2, method="agresti")


def test_bootstrap_interval_seeded_and_sensible():
    values = np.random.default_rng(1).normal(3.0, 1.0, size=400)
    est, low, high = stats.bootstrap_interval(values, seed=7)
    assert est == pytest.approx(values.mean())
    assert (est, low, high) == stats.bootstrap_interval(values, seed=7)
    # close to the normal-theory interval mean +- 1.96 s / sqrt(n)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(est - half, abs=0.25 * half)
    assert high == pytest.approx(est + half, abs=0.25 * half)
    assert stats.bootstrap_interval(np.full(5, 2.0)) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="values"):
        stats.bootstrap_interval([])


def test_first_exit_on_constructed_trajectories():
    # three chains in 1-D; escape = x > 1
    traj = np.array([[0.0, 0.0, 0.0], [2.0, 0.5, 0.0], [0.0, 1.5, 0.0], [3.0, 3.0, 0.9]])[..., None]
    exits = stats.first_exit(traj, lambda x: x[..., 0] > 1.0)
    assert exits.tolist() == [1, 2, stats.NEVER]
    frac = stats.escaped_fraction(exits, steps=[0, 1, 2, 3])
    assert frac["fraction"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3])
    assert np.all(frac["ci_low"] <= frac["fraction"]) and np.all(frac["ci_high"] >= frac["fraction"])


def test_first_rise_and_exit_summary_by_hand():
    acc = np.array([[0.80, 0.80], [0.81, 0.80], [0.83, 0.79], [0.85, 0.80]])
    exits = stats.first_rise(acc, threshold=0.02)
    assert exits.tolist() == [2, stats.NEVER]
    summary = stats.exit_time_summary(np.array([2, 4, stats.NEVER]), horizon=10, resamples=200)
    assert summary["mean"] == pytest.approx((2 + 4 + 10) / 3)   # restricted mean
    assert summary["escaped"] == 2 and summary["chains"] == 3
    assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    with pytest.raises(ValueError, match="threshold"):
        stats.first_rise(acc, threshold=0.0)


def test_mean_and_stderr_by_hand():
    mean, se = stats.mean_and_stderr(np.array([[1.0, 2.0], [3.0, 6.0]]))
    assert mean.tolist() == [2.0, 4.0]
    assert se.tolist() == pytest.approx([np.sqrt(2) / np.sqrt(2), np.sqrt(8) / np.sqrt(2)])


def test_paired_difference_matches_scipy_ttest_rel():
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(4)
    a = rng.normal(1.0, 1.0, size=7)
    b = a - 0.3 + rng.normal(0.0, 0.2, size=7)
    summary = stats.paired_difference(a, b, confidence=0.9)
    reference = scipy_stats.ttest_rel(a, b)
    interval = reference.confidence_interval(confidence_level=0.9)
    assert summary["n"] == 7 and summary["diverged"] == 0
    assert summary["differences"] == pytest.approx((a - b).tolist())
    assert summary["mean"] == pytest.approx(np.mean(a - b))
    assert summary["mean"] / summary["stderr"] == pytest.approx(reference.statistic)
    assert summary["p_value"] == pytest.approx(reference.pvalue)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((interval.low, interval.high))


def test_paired_difference_edge_cases():
    # a non-finite pair is left out and counted; a single pair has no interval
    summary = stats.paired_difference([1.0, np.nan, 3.0], [0.5, 1.0, np.inf])
    assert summary["n"] == 1 and summary["diverged"] == 2 and summary["mean"] == 0.5
    assert summary["ci_low"] is None and summary["p_value"] is None
    # identical differences: a point interval, no t statistic
    same = stats.paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (same["ci_low"], same["mean"], same["ci_high"]) == (1.0, 1.0, 1.0)
    assert same["p_value"] is None
    with pytest.raises(ValueError, match="same number"):
        stats.paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_difference([1.0, 2.0], [1.0, 2.0], confidence=1.0)


def test_paired_table_matches_rules_by_seed_within_groups():
    rows = [{"protocol": p, "rule": r, "micro": m, "seed": s, "v": base + s * 0.1 + shift}
            for p, shift in (("a", 0.0), ("b", 5.0))
            for r, m, base in (("sgd", None, 1.0), ("m-sam", 2, 3.0), ("sam", None, 2.0))
            for s in (2, 0, 1)]                               # seeds out of order
    table = stats.paired_table(rows, "v", ("sgd", "sam"), group=("protocol",))
    pairs = {(t["protocol"], t["rule"], t["micro"], t["baseline"]): t for t in table}
    assert len(table) == 2 * 4                               # 2 groups x (2 vs sgd + 2 vs sam)
    assert pairs[("a", "m-sam", 2, "sgd")]["differences"] == pytest.approx([2.0, 2.0, 2.0])
    assert pairs[("b", "sgd", None, "sam")]["mean"] == pytest.approx(-1.0)
    assert pairs[("a", "sam", None, "sgd")]["seeds"] == [0, 1, 2]
    assert all(t["quantity"] == "v" and t["n"] == 3 for t in table)


def test_non_finite_chains_counts_chains_not_values():
    values = np.array([[1.0, np.nan, 3.0], [np.inf, np.nan, 3.0]])      # [T, chains]
    assert stats.non_finite_chains(values, chain_axis=1) == 2
    assert stats.non_finite_chains(values, chain_axis=0) == 2
    assert stats.non_finite_chains(np.ones((4, 5, 2)), chain_axis=1) == 0
    path = np.zeros((3, 4, 2))
    path[2, 3, 1] = np.nan
    assert stats.non_finite_chains(path, chain_axis=1) == 1


def test_median_interval_is_the_order_statistics_of_the_binomial_coverage():
    values = np.arange(9, 0, -1.0)  # unsorted on purpose
    median, low, high = stats.median_interval(values)
    # n = 9: k = 2 covers 1 - 2 * P(Bin(9, 1/2) <= 1) = 1 - 20/512 = 96.1%; k = 3 only 82%
    assert (median, low, high) == (5.0, 2.0, 8.0)
    assert stats.median_interval(values, confidence=0.8)[1:] == (3.0, 7.0)


def test_median_interval_covers_the_median_at_its_level():
    rng = np.random.default_rng(0)
    draws = rng.lognormal(size=(4000, 11))  # skewed: the interval assumes nothing on the shape
    true_median = 1.0
    covered = [low <= true_median <= high for _, low, high in map(stats.median_interval, draws)]
    assert np.mean(covered) >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / 4000)


def test_median_interval_refuses_too_few_values():
    with pytest.raises(ValueError, match="5 are too few for a 95% interval"):
        stats.median_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats.median_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[1:] == (1.0, 6.0)
    with pytest.raises(ValueError, match="finite"):
        stats.median_interval([1.0, float("nan")])


@pytest.mark.parametrize("low, high, reading", [
    (0.2, 1.5, "supported"),             # above zero
    (-2.0, -0.5, "not supported"),       # a loss
    (-0.4, 0.8, "not supported"),        # a gain of 1 point or more is excluded
    (-0.4, 1.3, "not resolvable"),       # holds both 0 and 1
    (None, None, "not resolvable"),      # no interval
])
def test_gain_verdict_reads_the_interval_against_zero_and_the_relevant_size(low, high, reading):
    assert stats.gain_verdict(low, high, relevant=1.0) == reading


def test_gain_verdict_needs_a_positive_relevant_size():
    with pytest.raises(stats.InputError, match="relevant must be a positive difference"):
        stats.gain_verdict(0.1, 0.2, relevant=0.0)
