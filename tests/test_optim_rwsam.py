"""RW-SAM's finite-difference gradient-norm estimator against exact per-sample norms.

One Rademacher draw gives ``s_i = |z^T g_i| + O(delta)``; ``E_z[(z^T g_i)^2] = |g_i|^2``, so the
check is statistical: over many draws, ``sqrt(mean s_i^2)`` must match ``|g_i|`` from
``sdesam.per_sample`` within the Monte-Carlo error, and ``mean s_i`` must sit near
``sqrt(2/pi) |g_i|`` (``z^T g`` is close to Gaussian when g has many comparable entries).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.optim import DEFAULT_DELTA, RWSAM, estimate_grad_norms
from sdesam.per_sample import per_sample_grad_norms

DRAWS = 300


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def small_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 20, generator=g), torch.randint(0, 10, (16,), generator=g)


def draws_of(model, x, y, delta: float, count: int = DRAWS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.stack([estimate_grad_norms(model, per_sample_ce, x, y, delta, generator)
                        for _ in range(count)])


def test_estimator_second_moment_matches_exact_norms():
    model, x, y = small_net()
    exact = per_sample_grad_norms(model, per_sample_ce, x, y)
    draws = draws_of(model, x, y, DEFAULT_DELTA)
    rms_ratio = draws.pow(2).mean(dim=0).sqrt() / exact
    # Relative standard error of sqrt(mean of 300 squares) is about 1/sqrt(2*300) ~ 4%.
    assert abs(rms_ratio.mean().item() - 1) < 0.03
    assert ((rms_ratio - 1).abs() < 0.15).all()
    mean_ratio = (draws.mean(dim=0) / exact).mean().item()
    assert abs(mean_ratio - math.sqrt(2 / math.pi)) < 0.05
    # Averaging the draws recovers the ordering of the exact norms.
    assert torch.corrcoef(torch.stack([draws.mean(dim=0), exact]))[0, 1] > 0.8


def test_large_delta_shows_curvature_bias():
    """The one-sided difference has a bias (delta/2) z^T H_i z; it must vanish as delta shrinks."""
    model, x, y = small_net()
    exact = per_sample_grad_norms(model, per_sample_ce, x, y)
    small = (draws_of(model, x, y, 1e-3, 100).pow(2).mean(0).sqrt() / exact).mean()
    large = (draws_of(model, x, y, 1.0, 100).pow(2).mean(0).sqrt() / exact).mean()
    assert abs(small.item() - 1) < 0.1
    assert large.item() > small.item() + 0.2


def test_estimator_is_reproducible_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = estimate_grad_norms(model, per_sample_ce, x, y, 1e-3, torch.Generator().manual_seed(4))
    again = estimate_grad_norms(model, per_sample_ce, x, y, 1e-3, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and first.shape == (8,)
    assert (first >= 0).all() and first.max() > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        losses = per_sample_ce(model(x), y)
    given = estimate_grad_norms(model, per_sample_ce, x, y, 1e-3, torch.Generator().manual_seed(4),
                                losses=losses)
    torch.testing.assert_close(given, first)


def test_estimator_rejects_bad_delta():
    model, x, y = small_net()
    with pytest.raises(ValueError, match="delta"):
        estimate_grad_norms(model, per_sample_ce, x, y, delta=-1.0)


def test_large_lam_ascends_along_the_largest_score_sample():
    """lam -> infinity: the ascent direction is the gradient of the sample with the largest score."""
    model, x, y = small_net()
    lam, delta = 1e4, DEFAULT_DELTA
    scores = estimate_grad_norms(model, per_sample_ce, x, y, delta, torch.Generator().manual_seed(9))
    top = int(scores.argmax())
    params = list(model.parameters())
    g = torch.autograd.grad(per_sample_ce(model(x[top:top + 1]), y[top:top + 1]).sum(), params)
    scale = 0.05 / torch.sqrt(sum((v * v).sum() for v in g))
    expected = [p.detach() + scale * v for p, v in zip(params, g)]

    opt = RWSAM(params, torch.optim.SGD, rho=0.05, lam=lam, delta=delta, lr=0.0,
                generator=torch.Generator().manual_seed(9))
    weights_seen = []

    def record(module: nn.Module, inputs: tuple) -> None:
        if torch.is_grad_enabled():
            weights_seen.append(module.weight.detach().clone())

    hook = model[0].register_forward_pre_hook(record)
    opt.step(model, per_sample_ce, x, y)
    hook.remove()
    assert len(weights_seen) == 2  # the first pass at x, the descent pass at x + eps
    torch.testing.assert_close(weights_seen[1], expected[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_estimator_on_a_convolutional_net():
    """The same calibration on a GroupNorm CNN with ~3e4 parameters (|delta z| = delta * 173)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(1024, 10))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
    exact = per_sample_grad_norms(model, per_sample_ce, x, y)
    draws = draws_of(model, x, y, DEFAULT_DELTA, count=400)
    rms_ratio = draws.pow(2).mean(dim=0).sqrt() / exact
    assert abs(rms_ratio.mean().item() - 1) < 0.03
    assert ((rms_ratio - 1).abs() < 0.15).all()
