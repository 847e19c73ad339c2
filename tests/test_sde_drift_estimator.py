"""The SAM-family SDE's estimate of its drift's expectation over batches (AlgorithmSDE's
``drift_batches``): K batches drawn afresh per chain and step average to the exact enumerated
drift, with variance (one batch's) / K, drawn independently of chunking and solver, and the
SDE driven by them converges weakly to the exact one as dt -> 0."""

import pytest
import torch

from sdesam.problems import LogisticRegression
from sdesam.simulation import sde
from sdesam.validation import InputError

RULES = [("sam", {}), ("m-sam", {"micro": 2}), ("rw-sam", {"lam": 3.0}),
         ("rw-sam-wr", {"lam": 3.0})]
SAMPLINGS = ["with-replacement", "without-replacement"]
ROWS = 20_000


def problem():
    """Logistic regression on 6 points in 2-D: 126 multisets (15 subsets) of 4, few enough to
    enumerate."""
    gen = torch.Generator().manual_seed(0)
    return LogisticRegression(torch.randn(6, 2, generator=gen, dtype=torch.float64),
                              torch.tensor([0., 1.] * 3), l2=0.1)


POINT = torch.tensor([[0.8, -0.6]], dtype=torch.float64)


def model(rule, options, sampling, drift_batches, seed=1):
    return sde.AlgorithmSDE(problem(), rule, eta=0.1, rho=0.5, batch=4, sampling=sampling,
                            drift_batches=drift_batches, seed=seed, **options)


def per_batch_drifts(rule, options, sampling):
    """The drift computed from each distinct batch alone (K = 1, that batch handed in as the
    draw), the batches' probabilities and the exact (enumerated) drift, at POINT."""
    one = model(rule, options, sampling, 1)
    members, probs = sde.enumerate_batches(6, one.set_size, sampling)
    rows = POINT.expand(len(members), 2)
    drifts, _ = one.f_and_g_prod(0.0, rows, torch.zeros(len(members), 6, dtype=torch.float64),
                                 members.unsqueeze(1))
    return drifts, probs, model(rule, options, sampling, "exact").f(0.0, POINT)[0]


@pytest.mark.parametrize("rule, options", RULES)
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_drawn_estimate_averages_to_the_exact_drift(rule, options, sampling):
    """Unbiased: the per-batch drifts average, with the batches' probabilities, to the exact
    drift (an identity), and ROWS independent estimates at one point (one per row, each with
    its own draw) average to it within 4.5 standard errors (the draws have the law of S)."""
    drifts, probs, exact = per_batch_drifts(rule, options, sampling)
    torch.testing.assert_close(probs @ drifts, exact, rtol=0, atol=1e-12)
    for k in (1, 4):
        estimates = model(rule, options, sampling, k).f(0.3, POINT.expand(ROWS, 2))
        stderr = estimates.std(dim=0) / ROWS ** 0.5
        error = (estimates.mean(dim=0) - exact).abs()
        assert (error < 4.5 * stderr).all(), (k, error, stderr)


@pytest.mark.parametrize("rule, options", RULES)
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_drawn_estimate_variance_is_one_batch_variance_over_k(rule, options, sampling):
    """Var of the K-batch estimate = Var_S[drift from S] / K, the latter exact from the
    enumeration; each coordinate's sample variance over ROWS within 10% (its own relative
    error is about 2%)."""
    drifts, probs, exact = per_batch_drifts(rule, options, sampling)
    one_batch = probs @ (drifts - exact) ** 2
    assert (one_batch > 0).all()
    for k in (1, 4, 16):
        estimates = model(rule, options, sampling, k).f(0.3, POINT.expand(ROWS, 2))
        ratio = estimates.var(dim=0) * k / one_batch
        assert ((ratio - 1).abs() < 0.1).all(), (k, ratio)


def test_draws_are_fresh_per_chain_and_step_and_independent_of_chunking_and_solver():
    """Each chain and each time draws its own batches; the integrator draws them for all chains
    at once, so a run's paths do not depend on the chunk of chains nor on the solver."""
    drawn = model("rw-sam", {"lam": 3.0}, "with-replacement", 2)
    draws = drawn.batch_draws(0.25, 64)
    assert draws.shape == (64, 2, 4) and len({tuple(row.flatten().tolist()) for row in draws}) > 50
    assert not torch.equal(draws, drawn.batch_draws(0.5, 64))
    assert sde.step_random_bytes(drawn, 6, 8) == 2 * 6 * 8 + 2 * 4 * 8
    kwargs = dict(eta=0.1, rho=0.5, batch=4, lam=3.0, x0=[0.8, -0.6], horizon=0.5, chains=40,
                  seed=5, dt=0.05, drift_batches=2)
    fast = sde.simulate(problem(), "rw-sam", **kwargs).states
    torch.testing.assert_close(sde.simulate(problem(), "rw-sam", chunk=7, **kwargs).states, fast,
                               rtol=0, atol=1e-13)
    slow = sde.simulate(problem(), "rw-sam", solver="torchsde", **kwargs).states
    torch.testing.assert_close(slow, fast, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rule, options", RULES[::2])
def test_sde_with_drawn_batches_converges_weakly_to_the_exact_one(rule, options):
    """The same Brownian paths (same seed) with one batch drawn per step and with every batch:
    the end-time means agree within 4 standard errors of the paired difference (no visible
    bias), and the difference itself -- the drift's Monte Carlo error summed along a path --
    shrinks like sqrt(dt): its spread halves when dt is divided by 4 (weak order unchanged)."""
    common = dict(eta=0.1, rho=0.5, batch=4, x0=[0.8, -0.6], horizon=1.0, chains=2000, seed=0,
                  every=None, sampling="without-replacement", **options)   # 15 batches to enumerate
    spreads = []
    for dt in (0.025, 0.025 / 4):
        exact = sde.simulate(problem(), rule, dt=dt, drift_batches="exact", **common).final
        drawn = sde.simulate(problem(), rule, dt=dt, drift_batches=1, **common).final
        paired = drawn - exact
        stderr = paired.std(dim=0) / 2000 ** 0.5
        assert (paired.mean(dim=0).abs() < 4 * stderr).all(), (dt, paired.mean(0), stderr)
        spreads.append(paired.std(dim=0))
    ratio = spreads[0] / spreads[1]
    assert ((ratio > 1.6) & (ratio < 2.5)).all(), ratio


def test_auto_enumerates_up_to_the_limit_and_draws_beyond(monkeypatch):
    """drift_batches='auto': exact up to ENUMERATE_LIMIT distinct batches, DRIFT_BATCHES drawn
    beyond (36 multisets of 2 out of 8)."""
    monkeypatch.setattr(sde, "ENUMERATE_LIMIT", 36)
    assert sde.batch_plan(8, 2, "with-replacement", "auto") == 0
    monkeypatch.setattr(sde, "ENUMERATE_LIMIT", 35)
    assert sde.batch_plan(8, 2, "with-replacement", "auto") == sde.DRIFT_BATCHES
    assert sde.batch_plan(8, 2, "with-replacement", "exact") == 0
    assert sde.batch_plan(8, 2, "with-replacement", 3) == 3


def test_gibbs_weights_stay_finite_at_any_temperature():
    """The softmax runs over each batch's own members, so a huge lam (scores far apart) gives
    a finite drift, enumerated or drawn."""
    for drift_batches in ("exact", 4):
        drift = model("rw-sam", {"lam": 1e4}, "with-replacement", drift_batches).f(0.0, POINT)
        assert torch.isfinite(drift).all()


@pytest.mark.parametrize("lam", [0.5, 3.0, 1e4])
def test_gibbs_weights_are_each_batchs_own_softmax(lam):
    """The weights on W (scores shifted by each chain's largest) and, where a batch's scores
    lie too far below that (lam = 1e4 here), the per-batch softmax: both are the softmax of
    lam |g_i| over the batch's members, repeats counted, rows summing to 1."""
    drift = model("rw-sam", {"lam": lam}, "with-replacement", "exact")
    gen = torch.Generator().manual_seed(4)
    norms = torch.rand(3, 6, generator=gen, dtype=torch.float64) * 2
    members, weights = drift._set_weights(None, norms)
    got = drift._set_gibbs_weights(norms, members, weights)
    for chain in range(3):
        for s, batch in enumerate(members.tolist()):
            p = torch.softmax(lam * norms[chain, batch], dim=0)
            want = torch.zeros(6, dtype=torch.float64).index_add_(0, torch.tensor(batch), p)
            torch.testing.assert_close(got[chain, s], want, rtol=1e-12, atol=1e-300)
    # a batch whose every score is 700 below its chain's largest sums to < 4 e^-700: the
    # second way was taken, and only at lam = 1e4
    gaps = lam * (norms.amax(-1, keepdim=True) - norms)
    far = any(bool((gaps[chain, batch] > 700).all()) for chain in range(3)
              for batch in members.tolist())
    assert far == (lam == 1e4)


@pytest.mark.parametrize("value", [0, -2, True, 2.5, "fast", None])
def test_bad_drift_batches_are_refused_naming_what_is_accepted(value):
    accepted = "drift_batches must be one of 'auto', 'exact' or a positive integer"
    with pytest.raises(InputError, match=accepted):
        sde.simulate(problem(), "sam", eta=0.1, rho=0.5, batch=4, x0=[0.0, 0.0], horizon=0.1,
                     chains=2, seed=0, drift_batches=value)


def test_enumerating_too_many_batches_is_refused():
    big = LogisticRegression(torch.zeros(64, 2, dtype=torch.float64),
                             torch.zeros(64, dtype=torch.float64))
    with pytest.raises(InputError, match=r"drift_batches='exact' would enumerate \d+ distinct"):
        sde.AlgorithmSDE(big, "sam", eta=0.1, rho=0.5, batch=16, drift_batches="exact")
