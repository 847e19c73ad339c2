"""Paired-difference intervals and the minimal detectable difference of a paired design."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sdesam.stats import minimal_detectable_difference, paired_difference


def test_paired_difference_matches_the_paired_t_test():
    rng = np.random.default_rng(0)
    base = rng.normal(90, 2, size=8)  # a large seed effect shared by both methods
    other = base + 0.4 + rng.normal(0, 0.2, size=8)
    result = paired_difference(other, base)
    reference = scipy_stats.ttest_rel(other, base)
    assert result["p_value"] == pytest.approx(reference.pvalue)
    interval = reference.confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert result["n"] == 8 and result["mean"] == pytest.approx(np.mean(other - base))
    # the unpaired spread is ten times larger: pairing is what resolves 0.4 points
    assert result["ci_high"] - result["ci_low"] < 0.5 < 2 * np.std(base)
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0, 2.0], [1.0])


def test_minimal_detectable_difference_has_the_asked_power():
    sd, n = 0.5, 8
    mdd = minimal_detectable_difference(sd, n)
    # exact power of the two-sided paired t-test at that true difference (noncentral t)
    critical = scipy_stats.t.ppf(0.975, n - 1)
    shift = mdd / (sd / np.sqrt(n))
    power = scipy_stats.nct.sf(critical, n - 1, shift) + scipy_stats.nct.cdf(-critical, n - 1, shift)
    assert 0.75 < power < 0.82
    assert minimal_detectable_difference(sd, 32) < mdd / 2  # more seeds, smaller detectable effect
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        minimal_detectable_difference(sd, 1)
