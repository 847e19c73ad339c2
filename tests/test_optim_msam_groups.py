"""m-SAM run in vmapped groups of micro-batches (``vmap_budget_mb``) equals the unchunked step.

Every grouping -- one micro-batch at a time (the sequential loop), uneven groups, all at once --
must give the same parameters, BatchNorm running statistics, losses and outputs, to float
tolerance, over two steps and with gradient accumulation.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.optim import MSAM, create
from sdesam.optim.msam import MIN_VMAP_GROUP, PARAMETER_COPIES

BATCH, MICRO = 48, 2  # 24 micro-batches (12 per chunk under accumulate=2)
UNCHUNKED = 1e6  # MiB: every micro-batch in one vmapped pass


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).double()


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, 3, 6, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (BATCH,), generator=g))


def budget_for(model: nn.Module, group: int) -> float:
    """The vmap_budget_mb that fits exactly ``group`` micro-batches of ``model``."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return (group + 0.5) * PARAMETER_COPIES * parameter_bytes / 2**20


@cache
def run(name: str, budget: float | None, accumulate: int = 1):
    model = conv_net()
    budget = UNCHUNKED if budget is None else budget
    opt = create(name, model.parameters(), rho=0.2, micro=MICRO, lr=0.1, momentum=0.9,
                 weight_decay=5e-3, accumulate=accumulate, vmap_budget_mb=budget)
    results = [opt.step(model, per_sample_ce, *images(seed), return_outputs=True) for seed in range(2)]
    return model, results, opt


def assert_same(first, second) -> None:
    (model_a, results_a, _), (model_b, results_b, _) = first, second
    for (loss_a, out_a), (loss_b, out_b) in zip(results_a, results_b):
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_a, out_b, rtol=1e-12, atol=1e-12)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["m-sam", "m-usam"])
@pytest.mark.parametrize("group", [1, 10])  # 10: uneven groups 10 + 10 + 4
def test_grouped_step_equals_unchunked(name, group):
    grouped = run(name, budget_for(conv_net(), group))
    assert grouped[2].vmap_group(BATCH // MICRO) == group
    assert_same(grouped, run(name, None))


@pytest.mark.parametrize("group", [2, 8])  # 2: below MIN_VMAP_GROUP, the sequential loop; 8: 8 + 4
def test_grouped_step_with_accumulation_equals_unchunked(group):
    assert_same(run("m-sam", budget_for(conv_net(), group), accumulate=2),
                run("m-sam", None, accumulate=2))


def test_group_size_follows_the_budget():
    params = list(conv_net().parameters())
    opt = MSAM(params, micro=MICRO, vmap_budget_mb=0.0, lr=0.1)
    assert opt.vmap_group(24) == 1
    opt.vmap_budget_mb = UNCHUNKED
    assert opt.vmap_group(24) == 24
    opt.vmap_budget_mb = budget_for(conv_net(), 10)
    assert opt.vmap_group(24) == 10
    opt.vmap_budget_mb = budget_for(conv_net(), MIN_VMAP_GROUP - 1)
    assert opt.vmap_group(24) == 1  # too few for vmap to pay: the sequential loop
    opt.vmap_budget_mb = UNCHUNKED
    assert opt.vmap_group(MIN_VMAP_GROUP - 1) == 1  # a batch of few micro-batches: the same
