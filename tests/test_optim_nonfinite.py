"""A step on a batch whose loss is NaN or infinite is refused by every optimizer rule: it raises
NonFiniteLossError and leaves parameters, optimizer state and BatchNorm statistics unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.algorithms import get_rule
from sdesam.optim import SAM, NonFiniteLossError, create, optimizer_names


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def build(name: str, model: nn.Module, min_vmap_group: int | None = None):
    """The optimizer of rule ``name`` with the keywords it needs, over ``model``."""
    rule = get_rule(name)
    options = {"micro": 2} if rule.micro else {}
    if rule.perturbed:
        options["rho"] = 0.1
    if rule.ascent == "full":
        options["ascent_data"] = batch(99)
    opt = create(name, model.parameters(), base=torch.optim.SGD, lr=0.1, momentum=0.9, **options)
    if min_vmap_group is not None:
        opt.min_vmap_group = min_vmap_group
    return opt


def snapshot(model: nn.Module, opt) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    return ([p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()],
            momentum)


CASES = [(name, None) for name in optimizer_names()] + \
    [(name, 1) for name in optimizer_names() if get_rule(name).micro]  # the vmapped m-rule pass


@pytest.mark.parametrize("name, min_vmap_group", CASES,
                         ids=[f"{n}{'-vmap' if g else ''}" for n, g in CASES])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_batch_is_refused_and_changes_nothing(name, min_vmap_group, bad):
    model = bn_net()
    opt = build(name, model, min_vmap_group)
    x, y = batch(0)
    opt.step(model, per_sample_ce, x, y)          # a good step first: momentum state exists
    params, buffers, momentum = snapshot(model, opt)
    x_bad, _ = batch(1)
    x_bad[3, 2] = bad
    with pytest.raises(NonFiniteLossError, match=rf"{name} step: the batch loss is nan.*not taken"):
        opt.step(model, per_sample_ce, x_bad, y)
    after = snapshot(model, opt)
    for before, now in zip((params, buffers, momentum), after):
        assert all(torch.equal(a, b) for a, b in zip(before, now)), name
    assert all(p.grad is None for p in model.parameters())
    loss = opt.step(model, per_sample_ce, x, y)   # and training goes on from the same state
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


def test_the_error_is_a_floating_point_error_not_bad_input():
    assert issubclass(NonFiniteLossError, FloatingPointError)
    assert not issubclass(NonFiniteLossError, ValueError)


def test_sam_closure_step_refuses_a_non_finite_loss_and_restores_x():
    model = bn_net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    x, y = batch(0)
    per_sample_ce(model(x), y).mean().backward()
    before = [p.detach().clone() for p in model.parameters()]

    def closure() -> torch.Tensor:
        loss = per_sample_ce(model(x), y).mean() * float("nan")
        loss.backward()
        return loss

    with pytest.raises(NonFiniteLossError, match="sam step: the batch loss is nan"):
        opt.step(closure)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    per_sample_ce(model(x), y).mean().backward()      # the drop-in interface still works after it
    opt.first_step(zero_grad=True)
    per_sample_ce(model(x), y).mean().backward()
    opt.second_step(zero_grad=True)
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
