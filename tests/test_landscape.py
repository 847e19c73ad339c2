"""The sharp/flat escape landscape: closed-form noise, geometry, effective potential."""


import pytest
import torch

from sdesam.problems import SharpFlatLandscape


@pytest.fixture(scope="module")
def land():
    return SharpFlatLandscape(n=16)


def test_scores_have_exact_moments(land):
    scores = land.scores
    assert torch.allclose(scores.mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(scores.square().mean(1), torch.ones(2, dtype=torch.float64))
    assert abs(float((scores[0] * scores[1]).mean())) < 1e-14


def test_noise_covariance_has_the_closed_form(land):
    x = torch.linspace(-0.6, 2.0, 9, dtype=torch.float64).unsqueeze(-1)
    expected = torch.zeros(9, dtype=torch.float64)
    for center, depth, width in (land.sharp, land.flat):
        spread = land.noise_spread * width
        expected += depth / width**2 * torch.exp(-((x[:, 0] - center) ** 2) / spread**2)
    assert torch.allclose(land.trace_V(x), land.label_noise**2 * expected, rtol=1e-10)
    # the mean of the per-sample losses carries no noise term
    mean, _ = land.mean_and_tilts(x[:, 0])
    assert torch.allclose(land.loss(x), mean)


def test_geometry_poor_minimum_is_sharper_and_noisier(land):
    one = torch.ones(1, dtype=torch.float64)
    poor, good = land.poor_minimum, land.good_minimum
    assert land.grad(poor).abs().item() < 1e-10 and land.grad(good).abs().item() < 1e-10
    assert land.hvp(poor, one).item() > 5 * land.hvp(good, one).item()
    assert land.trace_V(poor).item() > 5 * land.trace_V(good).item()
    saddle = torch.tensor([land.saddle], dtype=torch.float64)
    assert land.grad(saddle).abs().item() < 1e-10 and land.hvp(saddle, one).item() < 0
    assert land.escaped(good.unsqueeze(0)).item() and not land.escaped(poor.unsqueeze(0)).item()


def test_barrier_by_hand_and_shrinking_with_smaller_m(land):
    plain = land.barrier()
    saddle = torch.tensor([land.saddle], dtype=torch.float64)
    assert plain == pytest.approx(float(land.loss(saddle) - land.loss(land.poor_minimum)), rel=1e-4)
    barriers = [land.barrier(rho=0.005, c=1 / m) for m in (1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(barriers, barriers[1:]))
    # to first order the poor well is raised by rho c tr V / 2
    shift = 0.005 * (1 / 2) / 2 * land.trace_V(land.poor_minimum).item()
    assert land.barrier(rho=0.005, c=0.5) == pytest.approx(land.barrier(rho=0.005, c=0) - shift, rel=0.2)


def test_sympy_form_matches_torch(land):
    losses, (x,) = land.sympy_form()
    values = [float(expr.subs(x, 0.3)) for expr in losses]
    torch_values = land.sample_losses(torch.tensor([0.3], dtype=torch.float64)).tolist()
    assert values == pytest.approx(torch_values, rel=1e-12)


@pytest.mark.parametrize("kwargs, word", [
    (dict(n=2), "n must"), (dict(sharp_width=0.0), "sharp_width"),
    (dict(flat_width=0.1), "flat_width"), (dict(label_noise=-1.0), "label_noise"),
    (dict(flat_center=-1.0), "flat_center"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SharpFlatLandscape(**kwargs)


def test_effective_potential_rejects_negative_c(land):
    with pytest.raises(ValueError, match="c must"):
        land.effective_potential(land.poor_minimum, 0.01, -1.0)
