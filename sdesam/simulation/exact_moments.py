"""Exact first and second moments of a rule and of its SDE where the update is affine.

On quadratic per-sample losses the rules SGD, n-USAM, USAM and m-USAM (and any registered rule
whose one-step map is affine in x there) step as ``x' = A_S x + a_S`` with a random batch S.
With the state ``z = (1, m, vec M)``, ``m = E x`` and ``M = E x x^T`` (row-major vec), one step
is the linear map ``z' = P z``:

    m' = E[A_S] m + E[a_S],
    M' = E[A_S M A_S^T] + E[A_S m a_S^T] + E[a_S m^T A_S^T] + E[a_S a_S^T],

the expectations taken exactly over every ordered batch (:func:`sdesam.implicit.enumerate_batches`,
with or without replacement). ``A_S, a_S`` are read off the reference map itself
(:func:`sdesam.algorithms.direction`) at x = 0 and the unit vectors, and the map is checked at
random points; a rule whose map is not affine is refused by name.

The SDE ``dX = b(X) dt + sqrt(eta) G(X) dW`` of :class:`sdesam.simulation.sde.AlgorithmSDE`
has, on the same problems, a linear drift ``b(x) = J x + beta`` and noise columns
``G_i(x) = P_i x + q_i``, read off the package's own drift and diffusion (and checked at random
points). Its moments solve the Ito moment ODE ``dz/dt = L z``:

    dm/dt = J m + beta,
    dM/dt = J M + M J^T + beta m^T + m beta^T
            + sum_i (P_i M P_i^T + P_i m q_i^T + q_i m^T P_i^T + q_i q_i^T),

solved exactly by a matrix exponential (no dt). Test functions that are quadratic in x (the
loss, |x|^2, x_0, tr V on these problems) have expectations linear in z, so weak errors at
T = K eta are exact numbers, free of Monte Carlo noise (:mod:`sdesam.simulation.exact_expansion`:
the errors, their expansion in sqrt(eta) and the predicted sqrt(eta) coefficient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import scipy.linalg
import torch

from .. import validation
from ..algorithms import Rule, check_sizes, direction, get_rule, reweighted_gradient
from ..implicit import MAX_ENUMERATED, enumerate_batches
from ..problems.base import Problem
from .chains import TEST_FUNCTIONS, check_test_functions, recorded_steps
from .compare import VARIANTS
from .inputs import check_eta, rule_lam, rule_rho, start_points
from .sde import AlgorithmSDE

AFFINE_TOL = 1e-9
"""Relative tolerance of the affinity checks at random points (rounding is ~1e-15)."""

CHECK_POINTS = 3
"""Random points at which every read-off affine or quadratic map is checked."""


class NotAffineError(validation.InputError):
    """A rule's step, its SDE or a test function is not affine (quadratic) on the problem."""


# ---------------------------------------------------------------------- reading maps off
def _probe_points(dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1 + d, d]`` the origin and the unit vectors, and ``[CHECK_POINTS, d]`` random points."""
    basis = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)])
    generator = torch.Generator().manual_seed(seed)
    return basis, 2.0 * torch.randn(CHECK_POINTS, dim, generator=generator, dtype=torch.float64)


def read_affine(fn: Callable[[torch.Tensor], torch.Tensor], dim: int, what: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(A [..., k, d], a [..., k])`` with ``fn(x) = A x + a`` for ``fn: [P, d] -> [..., P, k]``,
    read at the origin and unit vectors; a :class:`NotAffineError` naming ``what`` when
    ``fn`` differs from it at random points."""
    basis, random = _probe_points(dim)
    values = fn(torch.cat([basis, random])).detach().to(torch.float64).numpy()
    offset = values[..., 0, :]
    matrix = np.swapaxes(values[..., 1:dim + 1, :] - offset[..., None, :], -1, -2)
    predicted = np.einsum("...kd,pd->...pk", matrix, random.numpy()) + offset[..., None, :]
    actual = values[..., dim + 1:, :]
    gap = float(np.abs(actual - predicted).max()) if actual.size else 0.0
    if not np.isfinite(values).all() or gap > AFFINE_TOL * (1.0 + float(np.abs(actual).max())):
        raise NotAffineError(f"{what} is not affine in x on this problem (off by {gap:.3g} at "
                             "random points), so its moments have no closed recursion; exact "
                             "moments need an unnormalised, unweighted rule on quadratic losses")
    return matrix, offset


def read_quadratic(fn: Callable[[torch.Tensor], torch.Tensor], dim: int, what: str
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """``(c, g, Q)`` with ``fn(x) = c + g.x + x^T Q x / 2`` for a scalar ``fn: [P, d] -> [P]``,
    from second differences at 0, +-e_i, e_i + e_j; a :class:`NotAffineError` naming ``what``
    when it is not quadratic at random points."""
    eye = torch.eye(dim, dtype=torch.float64)
    pairs = (eye.unsqueeze(0) + eye.unsqueeze(1)).reshape(-1, dim)
    _, random = _probe_points(dim, seed=1)
    values = fn(torch.cat([torch.zeros(1, dim, dtype=torch.float64), eye, -eye, pairs, random]))
    values = values.detach().to(torch.float64).numpy()
    zero, plus, minus = values[0], values[1:dim + 1], values[dim + 1:2 * dim + 1]
    both = values[2 * dim + 1:2 * dim + 1 + dim * dim].reshape(dim, dim)
    gradient = (plus - minus) / 2
    hessian = both - plus[:, None] - plus[None, :] + zero
    np.fill_diagonal(hessian, plus + minus - 2 * zero)
    x = random.numpy()
    predicted = zero + x @ gradient + 0.5 * np.einsum("pi,ij,pj->p", x, hessian, x)
    actual = values[-CHECK_POINTS:]
    gap = float(np.abs(actual - predicted).max())
    if gap > AFFINE_TOL * (1.0 + float(np.abs(actual).max())):
        raise NotAffineError(f"test function {what!r} is not quadratic in x on this problem "
                             f"(off by {gap:.3g}); its expectation is not linear in the moments")
    return float(zero), gradient, hessian


# ---------------------------------------------------------------------- moment operators
def state_size(dim: int) -> int:
    """Length of the moment state ``z = (1, m, vec M)``."""
    return 1 + dim + dim * dim


def second_moment_blocks(matrices: np.ndarray, offsets: np.ndarray, weights: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks (constant, on m, on vec M) of ``sum_s w_s E[(A_s x + a_s)(A_s x + a_s)^T]``
    as a linear function of ``z``: ``matrices [S, d, d]``, ``offsets [S, d]``, ``weights [S]``."""
    d = matrices.shape[-1]
    w = weights[:, None, None]
    constant = (w * offsets[:, :, None] * offsets[:, None, :]).sum(0).reshape(d * d)
    # (A m a^T)_ij = A_ik m_k a_j and (a m^T A^T)_ij = a_i A_jk m_k
    on_mean = (np.einsum("s,sik,sj->ijk", weights, matrices, offsets)
               + np.einsum("s,si,sjk->ijk", weights, offsets, matrices)).reshape(d * d, d)
    on_second = np.einsum("s,sik,sjl->ijkl", weights, matrices, matrices).reshape(d * d, d * d)
    return constant, on_mean, on_second


def _assemble(dim: int, mean_const: np.ndarray, mean_lin: np.ndarray, second: tuple,
              unit: float) -> np.ndarray:
    """The ``[n_z, n_z]`` operator on ``z`` from its blocks (``unit``: the 1 -> 1 entry)."""
    out = np.zeros((state_size(dim), state_size(dim)))
    out[0, 0] = unit
    out[1:1 + dim, 0], out[1:1 + dim, 1:1 + dim] = mean_const, mean_lin
    out[1 + dim:, 0], out[1 + dim:, 1:1 + dim], out[1 + dim:, 1 + dim:] = second
    return out


@dataclass(frozen=True)
class AffineSteps:
    """The discrete rule as random affine maps: ``x' = A[s] x + a[s]`` with probability
    ``prob[s]`` over the enumerated ordered batches, and the one-step operator on z."""

    matrices: np.ndarray
    offsets: np.ndarray
    prob: np.ndarray
    operator: np.ndarray


@dataclass(frozen=True)
class LinearSDE:
    """The SDE as ``dX = (J X + beta) dt + sum_i (P_i X + q_i) dW_i`` and the generator ``L``
    of its moment ODE ``dz/dt = L z``."""

    drift_matrix: np.ndarray
    drift_offset: np.ndarray
    noise_matrices: np.ndarray
    noise_offsets: np.ndarray
    generator: np.ndarray


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, kept, floored so a zero ascent moves nothing at rho = 0."""
    return v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def step_maps(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float, batch: int,
              micro: int | None = None, lam: float | None = None,
              sampling: str = "with-replacement") -> AffineSteps:
    """The rule's one-step maps ``x' = x - eta G(x; S)`` over every ordered batch S, read off
    :func:`sdesam.algorithms.direction` (micro-batches: consecutive blocks of ``micro``, as
    the ensemble); a :class:`NotAffineError` naming the rule when they are not affine."""
    rule = get_rule(algorithm)
    eta, rho = check_eta(eta), rule_rho(rule, rho)
    lam = rule_lam(rule, lam)
    micro = check_sizes(rule, batch, micro, problem.n, sampling)
    if rule.ascent_draw and rho != 0:
        raise NotAffineError(f"rule {rule.name!r} draws its perturbation inside the batch: its step "
                             "is random given the batch, not one affine map per batch")
    count = problem.n**batch if sampling == "with-replacement" else math.perm(problem.n, batch)
    if count > MAX_ENUMERATED:
        raise validation.InputError(
            f"exact moments enumerate every ordered batch: n={problem.n}, batch={batch} "
            f"({sampling}) gives {count} > {MAX_ENUMERATED}; use fewer samples or a smaller batch")
    batches = enumerate_batches(problem.n, batch, sampling)
    idx = batches.idx

    def step(points: torch.Tensor) -> torch.Tensor:
        x = points.unsqueeze(0).expand(idx.shape[0], *points.shape)
        rows = idx.unsqueeze(1).expand(-1, points.shape[0], -1)
        parts = list(rows.split(micro, dim=-1)) if rule.micro else [rows]

        def subset(point: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
            return problem.subset_grads(point, part)

        def gibbs(part: torch.Tensor) -> torch.Tensor:
            return torch.softmax(lam * subset(x, part).norm(dim=-1), dim=-1).unsqueeze(-1)

        with torch.no_grad():
            g = direction(rule, x, parts, rho, grad=problem.grad, norm=_safe_norm,
                          reweighted_grad=lambda p, part: reweighted_gradient(subset(p, part), lam),
                          weighted_grad=lambda p, part: (gibbs(part) * subset(p, part)).sum(-2),
                          draw=lambda part: part[..., :rule.ascent_draw])
        return x - eta * g

    matrices, offsets = read_affine(step, problem.dim, f"the step of rule {rule.name!r}")
    prob = batches.prob.numpy()
    operator = _assemble(problem.dim, prob @ offsets, np.einsum("s,sij->ij", prob, matrices),
                         second_moment_blocks(matrices, offsets, prob), 1.0)
    return AffineSteps(matrices, offsets, prob, operator)


def linear_sde(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float, batch: int,
               micro: int | None = None, sampling: str = "with-replacement",
               variant: str = "full", drop_terms: Iterable[str] = ()) -> LinearSDE:
    """The package's SDE of the rule (:class:`sdesam.simulation.sde.AlgorithmSDE`, ``variant`` one
    of :data:`sdesam.simulation.compare.VARIANTS`, plus any ``drop_terms``) as linear drift and
    affine noise columns, with its moment generator; a :class:`NotAffineError` otherwise."""
    validation.one_of("variant", variant, VARIANTS)
    rule = get_rule(algorithm)
    sde = AlgorithmSDE(problem, rule, eta=eta, rho=rho, batch=batch, micro=micro,
                       sampling=sampling, drop_terms=(*VARIANTS[variant], *drop_terms))
    d = problem.dim
    with torch.no_grad():
        jac, beta = read_affine(lambda x: sde.f(None, x), d, f"the SDE drift of rule {rule.name!r}")
        noise, offsets = read_affine(lambda x: sde.diffusion(x).transpose(-1, -2).transpose(0, 1),
                                     d, f"the SDE diffusion of rule {rule.name!r}")
    identity = np.eye(d)
    # J M + M J^T -> (J (x) I + I (x) J) vec M;  beta m^T + m beta^T on m
    on_second = np.kron(jac, identity) + np.kron(identity, jac)
    on_mean = (np.einsum("i,jk->ijk", beta, identity) + np.einsum("ik,j->ijk", identity, beta))
    const, noise_mean, noise_second = second_moment_blocks(noise, offsets, np.ones(len(noise)))
    generator = _assemble(d, beta, jac, (const, on_mean.reshape(d * d, d) + noise_mean,
                                         on_second + noise_second), 0.0)
    return LinearSDE(jac, beta, noise, offsets, generator)


def euler_operator(sde: LinearSDE, dt: float) -> np.ndarray:
    """The exact one-cell moment operator of the Euler-Maruyama scheme of ``sde`` with step
    ``dt`` (Brownian increments N(0, dt I)): what :func:`sdesam.simulation.sde.simulate` does
    in distribution, to compare its Monte Carlo moments with no time-step bias."""
    dt = validation.positive_number("dt", dt)
    d = len(sde.drift_offset)
    step, shift = np.eye(d) + dt * sde.drift_matrix, dt * sde.drift_offset
    blocks = second_moment_blocks(step[None], shift[None], np.ones(1))
    noise = second_moment_blocks(sde.noise_matrices, sde.noise_offsets,
                                 np.full(len(sde.noise_matrices), dt))
    return _assemble(d, shift, step, tuple(b + n for b, n in zip(blocks, noise)), 1.0)


# ---------------------------------------------------------------------- moments
@dataclass(frozen=True)
class MomentPath:
    """Exact moments at the recorded steps: ``steps [R]``, ``times [R]`` (k eta), ``mean
    [R, d]``, ``second [R, d, d]`` (E x x^T), ``state [R, n_z]`` and ``tests`` (E g for each
    named test function, ``[R]``)."""

    steps: np.ndarray
    times: np.ndarray
    mean: np.ndarray
    second: np.ndarray
    state: np.ndarray
    tests: dict[str, np.ndarray] = field(default_factory=dict)


def test_functionals(problem: Problem, test_fns: Sequence[str]) -> dict[str, np.ndarray]:
    """For each named test function (:data:`sdesam.simulation.chains.TEST_FUNCTIONS`) the vector
    ``w`` with ``E g(x) = w . z``; refused when g is not quadratic on the problem."""
    d, out = problem.dim, {}
    for name in check_test_functions(test_fns, allow_empty=True):
        const, grad, hess = read_quadratic(lambda x, fn=TEST_FUNCTIONS[name]: fn(problem, x), d, name)
        out[name] = np.concatenate([[const], grad, 0.5 * hess.reshape(-1)])
    return out


def initial_state(problem: Problem, x0: Any) -> np.ndarray:
    """The moment state ``z = (1, x0, vec x0 x0^T)`` of a deterministic start ``x0 [d]``."""
    x0 = start_points(x0, 1, problem.dim, "cpu")[0].to(torch.float64).numpy()
    return np.concatenate([[1.0], x0, np.outer(x0, x0).reshape(-1)])


def moment_path(problem: Problem, x0: Any, operator: Callable[[int], np.ndarray], steps: int,
                every: int | None, eta: float, test_fns: Sequence[str]) -> MomentPath:
    """Moments at ``recorded_steps(steps, every)`` from ``x0``, ``operator(k)`` advancing the
    state ``z`` by k steps (a matrix power, an exponential, or an Euler scheme's cells)."""
    d = problem.dim
    z = initial_state(problem, x0)
    kept, states, cache = recorded_steps(steps, every), [], {}
    for previous, k in zip([0, *kept], kept):
        gap = k - previous
        if gap:
            cache.setdefault(gap, operator(gap))
            z = cache[gap] @ z
        states.append(z)
    state = np.array(states)
    tests = {name: state @ w for name, w in test_functionals(problem, test_fns).items()}
    return MomentPath(np.array(kept), np.array(kept) * eta, state[:, 1:1 + d],
                      state[:, 1 + d:].reshape(-1, d, d), state, tests)


DEFAULT_TESTS: tuple[str, ...] = ("loss", "sq_norm", "coord0", "trace_V")


def discrete_moments(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float,
                     batch: int, x0: Any, steps: int, micro: int | None = None,
                     lam: float | None = None, sampling: str = "with-replacement",
                     every: int | None = None,
                     test_fns: Sequence[str] = DEFAULT_TESTS) -> MomentPath:
    """Exact E x_k, E x_k x_k^T and E g(x_k) of the discrete rule from ``x0`` at steps
    ``0, every, ..., steps`` (``every=None``: start and end), by exact matrix powers."""
    validation.positive_int("steps", steps)
    maps = step_maps(problem, algorithm, eta=eta, rho=rho, batch=batch, micro=micro, lam=lam,
                     sampling=sampling)
    return moment_path(problem, x0, lambda k: np.linalg.matrix_power(maps.operator, k), steps,
                       every, eta, test_fns)


def sde_moments(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float, batch: int,
                x0: Any, horizon: float, micro: int | None = None,
                sampling: str = "with-replacement", variant: str = "full",
                drop_terms: Iterable[str] = (), every: int | None = None,
                test_fns: Sequence[str] = DEFAULT_TESTS) -> MomentPath:
    """Exact E X_t, E X_t X_t^T and E g(X_t) of the rule's SDE at ``t = k eta`` for the
    recorded steps up to ``horizon`` (a multiple of eta), by the matrix exponential."""
    eta = check_eta(eta)
    steps = steps_to(horizon, eta)
    sde = linear_sde(problem, algorithm, eta=eta, rho=rho, batch=batch, micro=micro,
                     sampling=sampling, variant=variant, drop_terms=drop_terms)
    return moment_path(problem, x0, lambda k: scipy.linalg.expm(sde.generator * (k * eta)),
                       steps, every, eta, test_fns)


def steps_to(horizon: float, eta: float) -> int:
    """``horizon / eta`` as a whole number of steps, else an error naming ``horizon``."""
    horizon = validation.positive_number("horizon", horizon)
    steps = round(horizon / eta)
    if steps < 1 or abs(steps * eta - horizon) > 1e-9 * horizon:
        raise validation.InputError(f"horizon must be a positive multiple of eta={eta}; got {horizon!r}")
    return steps
