"""The sqrt(eta) error that dropping the noise-induced drift term leaves, for any rule.

With rho = kappa sqrt(eta) the weak error of the SDE without its noise-induced term expands as
``E g(x_K) - E g(X^without_T) = a sqrt(eta) + O(eta)``. The full SDE's error is O(eta), so
``a sqrt(eta)`` is, to leading order, ``D = E g(X^full_T) - E g(X^without_T)``. The two SDEs
share their noise, which is O(sqrt(eta)) and moves D only at O(rho eta). Their drifts differ
by ``rho m(x)``. Hence ``a = kappa dD/drho`` at rho = 0 for the two *noiseless* flows from the
start: the first-order response of g at T to the missing term, carried along the gradient flow.

:func:`predicted_sqrt_coefficient` computes it for every rule the hand-written SDE
(:mod:`sdesam.simulation.sde`) takes, on any problem. It integrates the noiseless flows with
classical Runge-Kutta (error O(dt^4)) and takes the rho-derivative by Richardson extrapolation
of ``D(rho) / rho`` (error O(rho^2)). On the affine rules it agrees with the exact
moment-generator derivative of :func:`sdesam.simulation.exact_expansion.predicted_sqrt_coefficient`
(tested). Here the problem need not be quadratic: logistic regression, networks, and the SAM
family, whose drift is not affine. A Monte-Carlo table's fitted a can therefore be checked
against a prediction.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .. import validation
from ..algorithms import Rule, get_rule
from ..problems.base import Problem
from .chains import bound_test_functions
from .compare import VARIANTS
from .inputs import start_points
from .sde import AlgorithmSDE

DT = 0.01
"""Default Runge-Kutta step of the noiseless flows: the predicted a at T = 1.6 moves by < 1e-8
(relative) when it is halved on the problems tested."""

RHO = 1e-4
"""Default rho of the extrapolated difference quotient: its error is O(rho^2), ~1e-7 relative
on the affine rules tested (4e-6 at rho = 1e-3), well above the rounding of the flows."""


def noiseless_flow(model: AlgorithmSDE, x0: torch.Tensor, horizon: float, dt: float
                   ) -> torch.Tensor:
    """The state at ``horizon`` of ``x' = b(x)``, ``b`` the drift of ``model``, from ``x0
    [chains, d]``: classical Runge-Kutta with the step ``dt`` shortened to divide the horizon."""
    steps = max(1, math.ceil(horizon / dt - 1e-9))
    h = horizon / steps
    x = x0.clone()
    with torch.no_grad():
        for k in range(steps):
            t = k * h
            k1 = model.f(t, x)
            k2 = model.f(t + h / 2, x + h / 2 * k1)
            k3 = model.f(t + h / 2, x + h / 2 * k2)
            k4 = model.f(t + h, x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def predicted_sqrt_coefficient(problem: Problem, algorithm: "str | Rule", *, kappa: float,
                               batch: int, x0: Any, horizon: float, micro: int | None = None,
                               lam: float | None = None, sampling: str = "with-replacement",
                               test_fns: Sequence[str] = ("loss",), dt: float = DT,
                               rho: float = RHO) -> dict[str, float]:
    """Per test function g, the coefficient a of ``a sqrt(eta)`` that dropping the
    noise-induced drift term leaves in ``E g(x_K) - E g(X_T)`` at rho = kappa sqrt(eta)
    (module docstring): ``kappa (4 D(rho) - D(2 rho)) / (2 rho)`` with ``D(r) = g(x^full_T) -
    g(x^without_T)`` for the noiseless flows at radius r. The expectations over batches are
    enumerated (``drift_batches="exact"``), so nothing here is random. 0 for a rule without
    the term."""
    rule = get_rule(algorithm)
    kappa = validation.non_negative_number("kappa", kappa)
    horizon = validation.positive_number("horizon", horizon)
    dt, rho = validation.positive_number("dt", dt), validation.positive_number("rho", rho)
    functions = bound_test_functions(problem, test_fns)
    if not rule.noise_induced:
        return {name: 0.0 for name in functions}
    start = start_points(x0, 1, problem.dim, "cpu").to(torch.float64)
    ends: dict[tuple[str, float], torch.Tensor] = {}
    for variant, dropped in VARIANTS.items():
        for radius in (rho, 2 * rho):
            model = AlgorithmSDE(problem, rule, eta=1.0, rho=radius, batch=batch, micro=micro,
                                 lam=lam, sampling=sampling, drop_terms=("noise", *dropped),
                                 drift_batches="exact")
            ends[variant, radius] = noiseless_flow(model, start, horizon, dt)

    def gap(name: str, radius: float) -> float:
        g = functions[name]
        return float(g(ends["full", radius]) - g(ends["without_noise_term", radius]))

    return {name: kappa * (4 * gap(name, rho) - gap(name, 2 * rho)) / (2 * rho)
            for name in functions}
