"""Exact per-sample gradients against a loop of single-sample backward passes, tr V by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.per_sample import gradient_noise_trace, per_sample_grad_norms, per_sample_grads


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3)).double()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


def batch(size: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g)


def loop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One backward per sample, in eval mode: the plain reference."""
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(per_sample_ce(model(x[i:i + 1]), y[i:i + 1]).sum(), list(model.parameters()))
        rows.append(torch.cat([v.flatten() for v in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_per_sample_grads_match_loop_with_batchnorm(chunk_size):
    model = bn_net()
    model.train()
    x, y = batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = per_sample_grads(model, per_sample_ce, x, y, chunk_size=chunk_size)
    assert model.training and all(m.training for m in model.modules()), "train flags restored"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed"
    expected = loop_grads(model, x, y)
    assert grads.shape == expected.shape == (7, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(grads, expected)


def test_norms_and_noise_trace_by_hand():
    model = bn_net()
    x, y = batch()
    g = loop_grads(model, x, y)
    torch.testing.assert_close(per_sample_grad_norms(model, per_sample_ce, x, y, chunk_size=2),
                               g.norm(dim=1))
    centred = g - g.mean(dim=0)
    covariance = centred.T @ centred / g.shape[0]  # V, formed explicitly on this small problem
    trace = gradient_noise_trace(model, per_sample_ce, x, y, chunk_size=3)
    assert trace.dtype == torch.float64
    torch.testing.assert_close(trace, torch.trace(covariance))


def test_noise_trace_of_identical_samples_is_zero():
    model = bn_net()
    x, y = batch(1)
    trace = gradient_noise_trace(model, per_sample_ce, x.repeat(5, 1, 1, 1), y.repeat(5))
    assert abs(trace.item()) < 1e-10


def test_frozen_parameters_are_left_out():
    model = bn_net()
    model[0].weight.requires_grad_(False)
    x, y = batch()
    grads = per_sample_grads(model, per_sample_ce, x, y)
    assert grads.shape[1] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(chunk_size=0), "chunk_size"),
    (dict(targets=torch.zeros(3, dtype=torch.long)), "targets"),
])
def test_bad_arguments_raise_value_error(kwargs, argument):
    model = bn_net()
    x, y = batch()
    arguments = dict(inputs=x, targets=y) | kwargs
    with pytest.raises(ValueError, match=argument):
        per_sample_grads(model, per_sample_ce, **arguments)
