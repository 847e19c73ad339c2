"""The rules on CUDA: same step as on CPU, mixed precision with BatchNorm (skipped without CUDA)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.algorithms import get_rule
from sdesam.optim import create

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

RULES = [("sgd", {}), ("sam", {"rho": 0.1}), ("m-sam", {"rho": 0.1, "micro": 4}),
         ("rw-sam", {"rho": 0.1, "lam": 0.0})]


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets, reduction="none")


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


@pytest.mark.parametrize("name,options", RULES)
def test_cuda_step_equals_cpu_step(name, options):
    cpu_model = conv_net().double()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x, y = batch()
    for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        opt = create(name, model.parameters(), lr=0.1, momentum=0.9, **options)
        opt.step(model, per_sample_ce, x.double().to(device), y.to(device))
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,options", RULES + [("rw-sam", {"rho": 0.1, "lam": 1.0})])
def test_cuda_mixed_precision_step_runs(name, options, dtype):
    model = conv_net().cuda()
    extra = dict(options)
    if get_rule(name).weighted:
        extra["generator"] = torch.Generator(device="cuda").manual_seed(0)
    opt = create(name, model.parameters(), lr=0.1, autocast_dtype=dtype, **extra)
    x, y = batch()
    loss = opt.step(model, per_sample_ce, x.cuda(), y.cuda())
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
