"""The optimizer classes agree with the reference rule table ``sdesam.algorithms.direction``.

The model is a linear map whose parameters are one vector x (``nn.Linear(d, 1)`` without bias)
with a non-quadratic per-sample loss, so a step of the class with plain SGD as base,
``x - lr * G``, can be compared with ``direction(rule, x, parts, rho, grad, norm)`` evaluated
on the same vector, batch and micro-batches.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdesam.algorithms import direction, get_rule
from sdesam.optim import create, optimizer_names

N, D, BATCH, LR, RHO, LAM, DELTA = 24, 6, 8, 0.05, 0.2, 3.0, 1e-4
MICRO = 2


def per_sample_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    u = outputs.squeeze(-1)
    return 0.5 * (u - targets) ** 2 + 0.025 * u**4


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)


def losses_at(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    inputs, targets = data()
    if idx is not None:
        inputs, targets = inputs[idx], targets[idx]
    return per_sample_loss((inputs @ x).unsqueeze(-1), targets)


def mean_grad(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(losses_at(x, idx).mean(), x)[0]


def norm(v: torch.Tensor) -> torch.Tensor:
    return v.norm()


class GibbsReference:
    """RW-SAM's Gibbs weights from the estimated norms, drawing z (and a drawn perturbation's
    samples) from ``generator`` as the class does; :meth:`at` fixes the step's point x."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator, self.x, self.weights = generator, None, None

    def at(self, x: torch.Tensor) -> "GibbsReference":
        self.x, self.weights = x, None
        return self

    def _gibbs(self, idx: torch.Tensor) -> torch.Tensor:
        z = (torch.randint(0, 2, (1, D), generator=self.generator, dtype=torch.float64) * 2 - 1).squeeze(0)
        scores = (losses_at(self.x + DELTA * z, idx) - losses_at(self.x, idx)).abs() / DELTA
        self.weights = torch.softmax(LAM * scores, dim=0)
        return self.weights

    def reweighted(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.weighted(x, idx, self._gibbs(idx))

    def weighted(self, point: torch.Tensor, idx: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.weights if weights is None else weights
        xg = point.detach().requires_grad_(True)
        return torch.autograd.grad((weights * losses_at(xg, idx)).sum(), xg)[0]

    def draw(self, rule):
        def draw(idx: torch.Tensor) -> torch.Tensor:
            weights = self._gibbs(idx)
            return idx[torch.multinomial(weights, rule.ascent_draw, replacement=True,
                                         generator=self.generator)]
        return draw


def rule_options(rule, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """The keywords ``create`` needs for ``rule``, read from its facts."""
    options: dict = dict(lr=LR)
    if rule.perturbed:
        options["rho"] = RHO
    if rule.micro:
        options["micro"] = MICRO
    if rule.ascent == "full":
        options["ascent_data"] = (inputs, targets)
    if rule.weighted:
        options.update(lam=LAM, delta=DELTA, generator=torch.Generator().manual_seed(11))
    return options


def check_class_step_equals_rule_table(algorithm: str) -> None:
    """Three steps of ``create(algorithm)`` on the one-vector model against ``direction``."""
    rule = get_rule(algorithm)
    inputs, targets = data()
    torch.manual_seed(0)
    model = nn.Linear(D, 1, bias=False).double()
    x = model.weight.detach().clone().squeeze(0)
    opt = create(algorithm, model.parameters(), torch.optim.SGD, **rule_options(rule, inputs, targets))
    gibbs = GibbsReference(torch.Generator().manual_seed(11))
    order = torch.Generator().manual_seed(5)
    for _ in range(3):
        idx = torch.randperm(N, generator=order)[:BATCH]
        parts = list(idx.split(MICRO)) if rule.micro else [idx]
        gibbs.at(x)
        x = x - LR * direction(rule, x, parts, RHO, mean_grad, norm, gibbs.reweighted,
                               gibbs.weighted, gibbs.draw(rule))
        opt.step(model, per_sample_loss, inputs[idx], targets[idx])
        torch.testing.assert_close(model.weight.detach().squeeze(0), x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algorithm", optimizer_names())
def test_class_step_equals_rule_table(algorithm):
    check_class_step_equals_rule_table(algorithm)
