"""Control variates for Monte Carlo weak errors: an affine companion with exact moments.

The weak error ``E g(x_K) - E g(X_T)`` of a rule that is not affine in x (SAM, m-SAM, RW-SAM,
or any rule on a non-quadratic loss) is a difference of two Monte Carlo means, and at small eta
it is only a few standard errors above zero. A *companion* chain cuts that noise: SGD on the
second-order Taylor expansion of every per-sample loss at a point (:func:`quadratic_surrogate`),
run on the same randomness as the chain -- the same batches for the discrete rule, the same
Brownian increments for its SDE, both fixed by the seed whatever the rule -- moves with the
chain, while its expectations are known exactly (:mod:`sdesam.simulation.exact_moments`: the
discrete recursion, and for the SDE the moments of the Euler scheme with the same dt, so the
companion carries no time-step error of its own). Per test function g and recorded step the
estimate is the regression control-variate mean over the chains,

    mean(y - beta (c - E c)),   y = g(chain),  c = g_surrogate(companion),
    beta = cov(y, c) / var(c),

whose variance is the residual variance of y on c: ``(1 - r^2)`` times the plain one, r the
correlation. ``beta`` is estimated from the same chains, a bias of order 1/chains (a block of
thousands of chains makes it negligible against the standard error of order 1/sqrt(chains)).
Any companion gives an unbiased estimate; a closer one only gives a smaller variance.

A companion needs every chain: a run in which any chain diverged is refused with the count,
since the exact companion mean is over all chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .. import validation
from ..algorithms import Rule, get_rule
from ..problems import Quadratic
from ..problems.base import Problem
from . import ensemble, exact_moments, sde
from .chains import TEST_FUNCTIONS, Moments, check_test_functions
from .inputs import check_eta

COMPANION_RULE = "sgd"
"""The companion's rule: affine on quadratics for every sampling scheme, and driven by exactly
the randomness that drives every rule of the family (the batches, or the SDE's W)."""


def quadratic_surrogate(problem: Problem, point: Any) -> Quadratic:
    """The per-sample losses' second-order Taylor expansions at ``point [d]`` as a
    :class:`~sdesam.problems.Quadratic` (constants dropped): ``H_i`` the Hessian of f_i there and
    ``c_i = point - H_i^+ grad f_i(point)``. Where an ``H_i`` is singular the gradient's part
    outside its range is dropped: the companion stays a valid control variate, a looser one."""
    point = torch.as_tensor(point, dtype=torch.float64)
    if point.shape != (problem.dim,):
        raise validation.InputError(f"point must have shape [{problem.dim}]; got {tuple(point.shape)}")
    validation.finite_tensor("point", point)
    hessians = torch.func.jacrev(problem.sample_grads)(point).to(torch.float64)
    hessians = (hessians + hessians.transpose(-1, -2)) / 2
    grads = problem.sample_grads(point).to(torch.float64)
    centres = point - (torch.linalg.pinv(hessians, hermitian=True) @ grads.unsqueeze(-1)).squeeze(-1)
    return Quadratic(hessians, centres)


def full_batch_minimum(problem: Problem, start: Any, *, iterations: int = 100) -> torch.Tensor:
    """The full-batch loss's minimiser by damped Newton from ``start`` (the point the chains
    settle near); an error naming ``start`` if it does not converge."""
    x = torch.as_tensor(start, dtype=torch.float64).clone()
    for _ in range(iterations):
        grad = problem.grad(x)
        hessian = torch.func.jacrev(problem.grad)(x)
        step = torch.linalg.lstsq(hessian, grad.unsqueeze(-1)).solution.squeeze(-1)
        x = x - step
        if float(step.norm()) <= 1e-12 * (1.0 + float(x.norm())):
            return x
    raise validation.InputError(f"full-batch Newton from start={start!r} did not converge in "
                                f"{iterations} iterations; give the expansion point yourself")


def midpoint(problem: Problem, x0: Any) -> torch.Tensor:
    """The default expansion point: halfway from the start ``x0`` to the full-batch minimiser,
    so the surrogate is close to the losses over the whole path the chains take."""
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    return (x0 + full_batch_minimum(problem, x0)) / 2


@dataclass(frozen=True)
class ControlledRun:
    """Controlled moments of a run: ``moments`` (per test function, the control-variate mean
    and the residual variance at each recorded step, :class:`Moments`), ``plain`` (the
    uncontrolled moments of the same chains), ``chains`` and ``diverged`` (always 0: a
    diverged chain is refused)."""

    moments: dict[str, Moments]
    plain: dict[str, Moments]
    chains: int
    diverged: int = 0

    def variance_reduction(self, name: str) -> float:
        """Plain over controlled variance at the last recorded step (how many times more chains
        the plain estimate would need)."""
        plain, controlled = float(self.plain[name].var[-1]), float(self.moments[name].var[-1])
        return plain / controlled if controlled > 0 else float("inf")


def controlled_moments(values: torch.Tensor, companion: torch.Tensor,
                       exact: Sequence[float]) -> Moments:
    """The regression control-variate estimate per recorded step: ``values`` and ``companion``
    ``[R, chains]`` (g on the chain, g on the companion), ``exact [R]`` the companion's exact
    mean. Mean ``mean(y - beta (c - E c))`` and variance ``var(y - beta c)`` (its standard
    error is ``sqrt(var / chains)``)."""
    if values.shape != companion.shape or values.dim() != 2 or len(exact) != values.shape[0]:
        raise validation.InputError("values and companion must be [records, chains] and exact "
                                    f"[records]; got {tuple(values.shape)}, "
                                    f"{tuple(companion.shape)}, {len(exact)}")
    y, c = values.to(torch.float64), companion.to(torch.float64)
    exact = torch.as_tensor(exact, dtype=torch.float64)
    yc, cc = y - y.mean(1, keepdim=True), c - c.mean(1, keepdim=True)
    var_c = cc.square().sum(1)
    beta = torch.where(var_c > 0, (yc * cc).sum(1) / var_c.clamp_min(1e-300), 0.0)
    mean = y.mean(1) - beta * (c.mean(1) - exact)
    residual = (yc - beta.unsqueeze(1) * cc).square().sum(1) / max(y.shape[1] - 1, 1)
    return Moments(mean, residual, torch.full((y.shape[0],), y.shape[1], dtype=torch.long))


def _plain(values: torch.Tensor) -> Moments:
    """Mean and variance over chains of ``values [R, chains]``."""
    return Moments(values.mean(1), values.var(1, correction=1),
                   torch.full((values.shape[0],), values.shape[1], dtype=torch.long))


def _controlled(problem: Problem, surrogate: Quadratic, main: Any, companion: Any,
                exact: exact_moments.MomentPath, test_fns: Sequence[str], what: str
                ) -> ControlledRun:
    """Pair the recorded states of ``main`` and ``companion`` (two ChainRuns on the same
    randomness) into controlled moments of each test function."""
    diverged = main.diverged_count + companion.diverged_count
    if diverged:
        raise validation.InputError(
            f"control variates need every chain finite: {main.diverged_count} chain(s) of the "
            f"{what} and {companion.diverged_count} of its companion diverged; run without "
            "control variates (diverged chains are then counted and left out)")
    moments, plain = {}, {}
    for name in test_fns:
        fn = TEST_FUNCTIONS[name]
        y = fn(problem, main.states).to(torch.float64)
        c = fn(surrogate, companion.states).to(torch.float64)
        moments[name] = controlled_moments(y, c, exact.tests[name])
        plain[name] = _plain(y)
    return ControlledRun(moments, plain, main.chains)


def _check(test_fns: Iterable[str], every: int | None) -> list[str]:
    """The test functions as a list; ``every`` must be a positive integer (the runs are paired
    record by record)."""
    if every is not None:
        validation.positive_int("every", every)
    return check_test_functions(test_fns)


def discrete(problem: Problem, algorithm: "str | Rule", surrogate: Quadratic, *, eta: float,
             steps: int, x0: Any, batch: int, chains: int, seed: int,
             test_fns: Iterable[str], every: int | None = 1,
             sampling: str = "with-replacement", **options: Any) -> ControlledRun:
    """Controlled moments of the discrete rule: :func:`sdesam.simulation.ensemble.run` of
    ``algorithm`` on ``problem`` and of SGD on ``surrogate`` with the same seed (so the same
    batches), the companion's means exact by :func:`exact_moments.discrete_moments`.
    ``options`` (rho, micro, lam, device, chunk, ...) go to the rule's run only."""
    rule = get_rule(algorithm)
    test_fns = _check(test_fns, every)
    if rule.ascent_draw:
        raise validation.InputError(f"rule {rule.name!r} draws its perturbation from the batch "
                                    "generator, so its batches differ from the companion's; "
                                    "control variates need the same batches")
    common = dict(eta=eta, steps=steps, x0=x0, batch=batch, chains=chains, seed=seed,
                  sampling=sampling, every=every, keep_states=True)
    main = ensemble.run(problem, rule, **common, **options)
    companion = ensemble.run(surrogate, COMPANION_RULE, device=options.get("device", "cpu"),
                             **common)
    exact = exact_moments.discrete_moments(surrogate, COMPANION_RULE, eta=eta, rho=None,
                                           batch=batch, x0=x0, steps=steps, sampling=sampling,
                                           every=every, test_fns=test_fns)
    return _controlled(problem, surrogate, main, companion, exact, test_fns, "discrete rule")


def continuous(problem: Problem, algorithm: "str | Rule", surrogate: Quadratic, *, eta: float,
               horizon: float, x0: Any, batch: int, chains: int, seed: int,
               test_fns: Iterable[str], dt: float | None = None, every: int | None = 1,
               sampling: str = "with-replacement", **options: Any) -> ControlledRun:
    """Controlled moments of the rule's SDE: :func:`sdesam.simulation.sde.simulate` of
    ``algorithm`` on ``problem`` and of SGD's SDE on ``surrogate`` with the same seed (so the
    same Brownian increments), the companion's means those of its Euler scheme with the same
    ``dt``, exactly (:func:`exact_moments.euler_operator`). ``options`` (rho, micro, lam,
    drop_terms, drift_batches, device, chunk, ...) go to the rule's SDE only."""
    test_fns = _check(test_fns, every)
    eta = check_eta(eta)
    dt = eta / sde.SUBSTEPS if dt is None else validation.positive_number("dt", dt)
    common = dict(eta=eta, horizon=horizon, x0=x0, batch=batch, chains=chains, seed=seed,
                  sampling=sampling, every=every, keep_states=True, dt=dt)
    main = sde.simulate(problem, algorithm, **common, **options)
    companion = sde.simulate(surrogate, COMPANION_RULE, device=options.get("device", "cpu"),
                             **common)
    linear = exact_moments.linear_sde(surrogate, COMPANION_RULE, eta=eta, rho=None, batch=batch,
                                      sampling=sampling)
    cell = exact_moments.euler_operator(linear, dt)
    substeps = round(eta / dt)
    exact = exact_moments.moment_path(surrogate, x0, lambda k: np.linalg.matrix_power(cell, k * substeps),
                               exact_moments.steps_to(horizon, eta), every, eta, test_fns)
    return _controlled(problem, surrogate, main, companion, exact, test_fns, "SDE")
