"""Each optimizer rule against a plain step-by-step implementation of its published update.

The references below use nothing but ``torch.autograd.grad`` on the mean loss of an index set,
in-place parameter arithmetic and a separate ``torch.optim.SGD`` for the base update (momentum
and weight decay included), and are compared with the rule classes over several steps.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.optim import MSAM, MUSAM, NSAM, NUSAM, RWSAM, SAM, USAM, SGDRule, create
from sdesam.optim.rwsam import rademacher

BASE = dict(lr=0.1, momentum=0.9, weight_decay=5e-3)
RHO = 0.3
STEPS = 3


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def make_batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g)


def mean_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    loss = per_sample_ce(model(x), y).mean()
    return list(torch.autograd.grad(loss, list(model.parameters())))


def global_norm(vectors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((v * v).sum() for v in vectors))


def grad_at(model: nn.Module, eps: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of the mean loss of (x, y) at params + eps (params restored afterwards)."""
    params = list(model.parameters())
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    g = mean_grad(model, x, y)
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
    return g


def ascent_step(g: list[torch.Tensor], normalized: bool, rho: float = RHO) -> list[torch.Tensor]:
    scale = rho / global_norm(g) if normalized else rho
    return [scale * v for v in g]


def base_step(model: nn.Module, base: torch.optim.Optimizer, direction: list[torch.Tensor]) -> None:
    for p, d in zip(model.parameters(), direction):
        p.grad = d.clone()
    base.step()


def run_pair(rule_opt, reference_direction, batches, model_seed: int = 0) -> None:
    """Run the rule and the reference side by side; parameters must agree after every step."""
    model = make_model(model_seed)
    reference = copy.deepcopy(model)
    opt = rule_opt(model)
    base = torch.optim.SGD(reference.parameters(), **BASE)
    for x, y in batches:
        loss = opt.step(model, per_sample_ce, x, y)
        expected_loss = per_sample_ce(reference(x), y).mean()
        base_step(reference, base, reference_direction(reference, x, y))
        torch.testing.assert_close(loss, expected_loss.detach())
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


BATCHES = [make_batch(seed) for seed in range(STEPS)]


def test_sgd_rule_is_the_base_optimizer():
    run_pair(lambda m: SGDRule(m.parameters(), torch.optim.SGD, **BASE),
             lambda m, x, y: mean_grad(m, x, y), BATCHES)


@pytest.mark.parametrize("cls,normalized", [(SAM, True), (USAM, False)])
def test_sam_and_usam_match_reference(cls, normalized):
    def reference(m, x, y):
        return grad_at(m, ascent_step(mean_grad(m, x, y), normalized), x, y)

    run_pair(lambda m: cls(m.parameters(), torch.optim.SGD, rho=RHO, **BASE), reference, BATCHES)


def test_perturb_weight_decay_adds_decay_to_ascent():
    decay = BASE["weight_decay"]

    def reference(m, x, y):
        g = [v + decay * p.detach() for v, p in zip(mean_grad(m, x, y), m.parameters())]
        return grad_at(m, ascent_step(g, True), x, y)

    run_pair(lambda m: SAM(m.parameters(), torch.optim.SGD, rho=RHO, perturb_weight_decay=True, **BASE),
             reference, BATCHES)


@pytest.mark.parametrize("cls,normalized", [(NSAM, True), (NUSAM, False)])
def test_nsam_ascends_along_the_ascent_data(cls, normalized):
    data = make_batch(100, size=40)

    def reference(m, x, y):
        return grad_at(m, ascent_step(mean_grad(m, *data), normalized), x, y)

    run_pair(lambda m: cls(m.parameters(), torch.optim.SGD, rho=RHO, ascent_data=data,
                           ascent_batch_size=16, **BASE), reference, BATCHES)


@pytest.mark.parametrize("cls,normalized", [(MSAM, True), (MUSAM, False)])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_msam_matches_sequential_micro_batch_loop(cls, normalized, micro):
    def reference(m, x, y):
        total = None
        for xs, ys in zip(x.split(micro), y.split(micro)):
            g = grad_at(m, ascent_step(mean_grad(m, xs, ys), normalized), xs, ys)
            total = g if total is None else [a + b for a, b in zip(total, g)]
        return [t / (x.shape[0] // micro) for t in total]

    run_pair(lambda m: cls(m.parameters(), torch.optim.SGD, rho=RHO, micro=micro, **BASE),
             reference, BATCHES)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_rwsam_matches_reference_with_same_direction(lam):
    delta = 1e-3
    reference_generator = torch.Generator().manual_seed(7)

    def reference(m, x, y):
        params = list(m.parameters())
        z = [torch.randint(0, 2, p.shape, generator=reference_generator, dtype=p.dtype) * 2 - 1
             for p in params]
        with torch.no_grad():
            before = per_sample_ce(m(x), y)
            for p, v in zip(params, z):
                p.add_(delta * v)
            after = per_sample_ce(m(x), y)
            for p, v in zip(params, z):
                p.sub_(delta * v)
        weights = torch.softmax(lam * (after - before).abs() / delta, dim=0)
        g = torch.autograd.grad((weights * per_sample_ce(m(x), y)).sum(), params)
        return grad_at(m, ascent_step(list(g), True), x, y)

    run_pair(lambda m: RWSAM(m.parameters(), torch.optim.SGD, rho=RHO, lam=lam, delta=delta,
                             generator=torch.Generator().manual_seed(7), **BASE), reference, BATCHES)


def test_rwsam_with_zero_lam_is_sam():
    model, twin = make_model(), make_model()
    rw = RWSAM(model.parameters(), torch.optim.SGD, rho=RHO, lam=0.0, **BASE)
    sam = SAM(twin.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    for x, y in BATCHES:
        rw.step(model, per_sample_ce, x, y)
        sam.step(twin, per_sample_ce, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_rademacher_entries_are_signs():
    params = [torch.zeros(50, 40), torch.zeros(30)]
    draws = rademacher(params, torch.Generator().manual_seed(0))
    values = torch.cat([d.flatten() for d in draws])
    assert set(values.unique().tolist()) == {-1.0, 1.0}
    assert abs(values.mean().item()) < 0.1


# -- the drop-in SAM interface -------------------------------------------------------------------

def test_drop_in_first_second_step_equals_model_step():
    model, twin = make_model(), make_model()
    dropin = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    native = SAM(twin.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    for x, y in BATCHES:
        per_sample_ce(model(x), y).mean().backward()
        dropin.first_step(zero_grad=True)
        per_sample_ce(model(x), y).mean().backward()
        dropin.second_step(zero_grad=True)
        native.step(twin, per_sample_ce, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_drop_in_closure_step_equals_model_step():
    model, twin = make_model(), make_model()
    dropin = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    native = SAM(twin.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    for x, y in BATCHES:
        def closure():
            loss = per_sample_ce(model(x), y).mean()
            loss.backward()
            return loss

        dropin.zero_grad()
        per_sample_ce(model(x), y).mean().backward()
        dropin.step(closure)
        native.step(twin, per_sample_ce, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_adaptive_sam_matches_asam_reference():
    def reference(m, x, y):
        params = [p.detach() for p in m.parameters()]
        g = mean_grad(m, x, y)
        norm = global_norm([p.abs() * v for p, v in zip(params, g)])
        eps = [RHO * p * p * v / norm for p, v in zip(params, g)]
        return grad_at(m, eps, x, y)

    run_pair(lambda m: SAM(m.parameters(), torch.optim.SGD, rho=RHO, adaptive=True, **BASE),
             reference, BATCHES)


def test_drop_in_call_order_is_checked():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    with pytest.raises(RuntimeError, match="second_step"):
        opt.second_step()


def test_create_builds_each_rule():
    model = make_model()
    assert isinstance(create("rw-sam", model.parameters(), lam=1.0, lr=0.1), RWSAM)
    assert isinstance(create("M-SAM", model.parameters(), micro=2, lr=0.1), MSAM)
    assert isinstance(create("sgd", model.parameters(), lr=0.1), SGDRule)
