"""The SDE of ANY derived rule, compiled from its sympy :class:`~sdesam.symbolic.Derivation`.

``sdesam.simulation.sde`` holds hand-written first-order SDEs for most rules; this module turns
whatever :func:`sdesam.symbolic.derive` produced -- any rule it derives (:data:`SUPPORT`: the
same facts), the eta-corrected drift of ``order >= 2``, the O(rho) diffusion of
``diffusion_order >= 1`` -- into a torchsde-style SDE on chains ``[chains, d]``:

    dX = b(X) dt + sqrt(eta) S(X) dW,   S S^T = Sigma(X),   W in R^d,

time measured so that step k of the discrete rule sits at ``t = k eta`` (as in
:mod:`sdesam.simulation.sde`). ``b`` and ``Sigma`` are the derivation's sympy matrices, lambdified to torch
(float64, batched, with ``Abs``, ``sign`` and ``sqrt`` mapped to their torch functions) with
``rho``, ``eta`` (and a symbol named ``lam`` where a rule has one) as numeric arguments, so
one compilation serves every (eta, rho); drift and Sigma are one function evaluated once per
step, and where their entries are polynomials in x (polynomial losses) a vector of monomials
times a coefficient matrix (:class:`CompiledMatrix`). Numbers reach the compiled code as
floats: an exact rational too large for a machine integer (a float's exact value, say) is
rounded to a float first, so derivations on real data compile.

The square root: ``Sigma`` is symmetric d x d, but its O(rho) correction makes it indefinite
wherever ``c V`` is small, so a plain Cholesky fails there and jitter would change every
matrix. :func:`noise_factor` takes the Cholesky factor wherever it exists (``L L^T = Sigma``
exactly; 4-10x cheaper than a batched eigendecomposition on CPU for d = 2..8) and, only for
the matrices where it fails, the eigendecomposition ``Sigma = Q diag(w) Q^T`` with
``S = Q diag(sqrt(max(w, 0)))``: the factor of the nearest positive semidefinite matrix (in
Frobenius norm). Any S with ``S S^T = Sigma`` gives the same law, so mixing the two is
harmless. The evaluations whose Sigma had a negative eigenvalue clipped are counted
(:attr:`DerivedSDE.clipped`).
"""

from __future__ import annotations

from typing import Any, Sequence

import sympy
import torch

from . import memory
from .. import algorithms, validation
from ..algorithms import Rule
from .brownian import FixedGridBrownian, time_grid
from .chains import ChainRun
from .inputs import rule_rho, start_dtype, start_points
from .sde import euler_maruyama, integration_parts
from ..symbolic import Derivation, eta as ETA, rho as RHO
from ..symbolic.derivation import SUPPORT as SYMBOLIC_SUPPORT

SUPPORT = algorithms.Support("the compiled SDE (sdesam.simulation.derived_sde)",
                             **SYMBOLIC_SUPPORT.handles)
"""The compiled SDE runs whatever :func:`sdesam.symbolic.derive` derives: the same facts."""


def supports(rule: Rule) -> str | None:
    """None when the compiled SDE implements ``rule`` (the symbolic layer derives it), else the
    fact it lacks."""
    return SUPPORT.reason(rule)

LAM_NAMES: tuple[str, ...] = ("lam", "lambda")
"""Names a derivation may give the inverse temperature of a Gibbs-weighted rule."""

CLIP_TOLERANCE = 1e-12
"""An eigenvalue of Sigma counts as clipped when below ``-CLIP_TOLERANCE * max |w|`` (round-off
of a singular PSD matrix does not count)."""


class CompiledMatrix:
    """A sympy matrix in ``variables`` and ``parameters``, compiled to a batched torch function
    ``(x [..., d], *parameter values) -> [..., rows, cols]`` (float64 follows ``x``).

    Where every entry is a polynomial in ``variables`` (the usual case: polynomial losses),
    the matrix is ``monomials(x) @ C(parameters)``: the distinct monomials are one lambdified
    function of ``x`` (``cse=True``), the coefficients ``C [monomials, rows * cols]`` are
    evaluated once per parameter values, and one matrix product gives every entry -- a few
    dozen tensor operations per call instead of one per term of every entry. Otherwise the
    entries themselves are lambdified to torch (``cse=True``).
    """

    def __init__(self, matrix: sympy.Matrix, variables: Sequence[sympy.Symbol],
                 parameters: Sequence[sympy.Symbol]) -> None:
        self.shape = tuple(matrix.shape)
        self.variables, self.parameters = list(variables), list(parameters)
        extra = matrix.free_symbols - set(self.variables) - set(self.parameters)
        if extra:
            raise validation.InputError(
                f"the matrix uses symbols that are neither variables nor parameters: "
                f"{sorted(map(str, extra))}")
        entries = [machine_numbers(entry) for entry in matrix]
        # is_polynomial first: Poly would expand a large non-polynomial entry before refusing it
        polynomials = ([sympy.Poly(entry, *self.variables) for entry in entries]
                       if all(entry.is_polynomial(*self.variables) for entry in entries) else None)
        self._coefficients: dict[tuple, torch.Tensor] = {}
        self._table = None
        if polynomials is None:
            self._nonzero = [k for k, entry in enumerate(entries) if entry != 0]
            self._function = sympy.lambdify(self.variables + self.parameters,
                                            [entries[k] for k in self._nonzero],
                                            modules="torch", cse=True)
            return
        monomials = sorted({m for poly in polynomials for m in poly.monoms()})
        row = {m: i for i, m in enumerate(monomials)}
        table = sympy.zeros(len(monomials), len(entries))
        for k, poly in enumerate(polynomials):
            for m, c in poly.terms():
                table[row[m], k] = c
        self._function = sympy.lambdify(
            self.variables, [sympy.Mul(*(v**p for v, p in zip(self.variables, m)))
                             for m in monomials], modules="torch", cse=True)
        self._table = sympy.lambdify(self.parameters, list(table), modules="math")

    def __call__(self, x: torch.Tensor, *values: float) -> torch.Tensor:
        """The matrix at every point of ``x [..., d]``: ``[..., rows, cols]``."""
        if self._table is not None:
            monomials = stacked(self._function(*x.unbind(-1)), x)
            return (monomials @ self.coefficients(values, x)).unflatten(-1, self.shape)
        out = torch.zeros(*x.shape[:-1], self.shape[0] * self.shape[1], dtype=x.dtype,
                          device=x.device)
        if self._nonzero:
            # parameters as 0-d tensors: torch.pow refuses (float, int) where cse hoists rho**2
            parameters = [torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in values]
            out[..., self._nonzero] = stacked(self._function(*x.unbind(-1), *parameters), x)
        return out.unflatten(-1, self.shape)

    def coefficients(self, values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
        """The polynomial form's ``C [monomials, rows * cols]`` at ``values`` (cached)."""
        key = (tuple(float(v) for v in values), x.dtype, x.device)
        if key not in self._coefficients:
            self._coefficients[key] = torch.tensor(
                [float(c) for c in self._table(*key[0])], dtype=x.dtype,
                device=x.device).reshape(-1, self.shape[0] * self.shape[1])
        return self._coefficients[key]


def stacked(values: Sequence[Any], x: torch.Tensor) -> torch.Tensor:
    """Lambdified outputs (tensors over ``x``'s points, or constants) as ``[..., len(values)]``."""
    return torch.stack([torch.as_tensor(v, dtype=x.dtype, device=x.device)
                        .broadcast_to(x.shape[:-1]) for v in values], -1)


MACHINE_INTEGER = 2**53
"""Integers beyond this (in an exact rational) are rounded to a float before compilation."""


def machine_numbers(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every rational whose numerator or denominator exceeds
    :data:`MACHINE_INTEGER` replaced by the nearest float: compiled torch code would turn those
    into Python integers it cannot convert (an OverflowError), and a float keeps its value to
    the precision the simulation has anyway."""
    big = {r: sympy.Float(r, 17) for r in sympy.sympify(expr).atoms(sympy.Rational)
           if abs(r.p) > MACHINE_INTEGER or r.q > MACHINE_INTEGER}
    return expr.xreplace(big) if big else expr


def parameter_symbols(derivation: Derivation) -> list[sympy.Symbol]:
    """``[rho, eta]`` and the derivation's ``lam`` symbol if its expressions have one."""
    symbols = derivation.drift.free_symbols | derivation.diffusion.free_symbols
    return [RHO, ETA] + sorted((s for s in symbols if str(s) in LAM_NAMES), key=str)


def noise_factor(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, clipped)`` for symmetric ``sigma [..., d, d]``: ``S S^T = Sigma`` (Cholesky) where
    Sigma is positive definite, else ``S S^T = Sigma_+`` (eigenvalues clipped at 0);
    ``clipped [...]`` is True where an eigenvalue below ``-CLIP_TOLERANCE * max |w|`` was."""
    symmetric = 0.5 * (sigma + sigma.transpose(-1, -2))
    factor, info = torch.linalg.cholesky_ex(symmetric)
    failed = info != 0
    clipped = torch.zeros_like(failed)
    if bool(failed.any()):
        w, q = torch.linalg.eigh(symmetric[failed])
        scale = w.abs().amax(dim=-1).clamp_min(torch.finfo(w.dtype).tiny)
        clipped[failed] = w[..., 0] < -CLIP_TOLERANCE * scale
        factor[failed] = q * w.clamp_min(0).sqrt().unsqueeze(-2)
    return factor, clipped


class DerivedSDE(torch.nn.Module):
    """The SDE of ``derivation`` at numeric ``eta``, ``rho`` (and ``lam`` for rules that take
    it): an Ito SDE with general noise and d Brownian channels, for ``torchsde.sdeint`` and
    :func:`sdesam.simulation.sde.euler_maruyama`.

    ``clipped`` / ``evaluations`` count the chain-evaluations of the diffusion and how many of
    them had a negative eigenvalue of Sigma clipped (see the module docstring).
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, derivation: Derivation, *, eta: float, rho: float | None = None,
                 lam: float | None = None) -> None:
        super().__init__()
        if not isinstance(derivation, Derivation):
            raise validation.InputError(f"derivation must be an sdesam.symbolic.Derivation; "
                                        f"got {type(derivation).__name__}")
        if derivation.family.generic:
            raise validation.InputError(
                "derivation must be on concrete losses (derive(..., losses=[...])); a generic "
                "derivation is in terms of undefined functions and cannot be simulated")
        self.derivation = derivation
        self.eta = validation.positive_number("eta", eta)
        rule = SUPPORT.require(derivation.rule)
        self.rho = rule_rho(rule, rho)
        algorithms.check_keywords(rule, lam=lam)
        symbols = parameter_symbols(derivation)
        if len(symbols) > 2 and lam is None:
            raise validation.InputError(f"lam is required: the derivation of "
                                        f"{derivation.algorithm!r} depends on {symbols[2]}")
        self.lam = None if lam is None else validation.non_negative_number("lam", lam)
        self.values = (self.rho, self.eta) + ((self.lam,) if len(symbols) > 2 else ())
        self.dim = len(derivation.variables)
        # drift and Sigma side by side, [d, 1 + d]: one function per step, their common
        # subexpressions (the gradients both are made of) computed once
        self.terms_fn = CompiledMatrix(sympy.Matrix.hstack(derivation.drift, derivation.diffusion),
                                       derivation.variables, symbols)
        self.clipped = 0
        self.evaluations = 0

    # ------------------------------------------------------------------ the compiled terms
    def terms(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b(y) [chains, d], Sigma(y) [chains, d, d])`` from one evaluation."""
        both = self.terms_fn(y, *self.values)
        return both[..., 0], both[..., 1:]

    def drift(self, y: torch.Tensor) -> torch.Tensor:
        """``b(y)``: ``[chains, d]``."""
        return self.terms(y)[0]

    def sigma(self, y: torch.Tensor) -> torch.Tensor:
        """The derived diffusion matrix ``Sigma(y)`` (the noise is ``sqrt(eta Sigma)``):
        ``[chains, d, d]``."""
        return self.terms(y)[1]

    def noise_factor(self, y: torch.Tensor) -> torch.Tensor:
        """``S(y)`` with ``S S^T = Sigma(y)`` (clipped to PSD where needed; counted):
        ``[chains, d, d]``."""
        return self.factor_of(self.sigma(y))

    def factor_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """:func:`noise_factor` of ``sigma``, its clipped evaluations counted."""
        factor, clipped = noise_factor(sigma)
        self.clipped += int(clipped.sum())
        self.evaluations += clipped.numel()
        return factor

    # ------------------------------------------------------------------ torchsde interface
    def f(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        """Drift ``b(y)``: ``[chains, d]``."""
        return self.drift(y)

    def g(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        """The diffusion ``sqrt(eta) S(y)``: ``[chains, d, d]``."""
        return self.eta ** 0.5 * self.noise_factor(y)

    def g_prod(self, t: Any, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``sqrt(eta) S(y) v`` for Brownian increments ``v [chains, d]``."""
        return self.eta ** 0.5 * (self.noise_factor(y) @ v.unsqueeze(-1)).squeeze(-1)

    def f_and_g_prod(self, t: Any, y: torch.Tensor, v: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and diffusion-increment product (what :func:`euler_maruyama` calls), from one
        evaluation of :meth:`terms`."""
        drift, sigma = self.terms(y)
        return drift, self.eta ** 0.5 * (self.factor_of(sigma) @ v.unsqueeze(-1)).squeeze(-1)


def integration_grid(eta: float, horizon: float, dt: float | None) -> tuple[torch.Tensor, int]:
    """The integrator's time grid (step ``dt``, default ``eta``, dividing ``eta``) up to
    ``horizon`` (a multiple of eta), and the number of grid cells per discrete step."""
    eta = validation.positive_number("eta", eta)
    dt = eta if dt is None else validation.positive_number("dt", dt)
    substeps = round(eta / dt)
    if substeps < 1 or abs(substeps * dt - eta) > 1e-9 * eta:
        raise validation.InputError(f"dt must divide eta into a whole number of steps; "
                                    f"got dt={dt}, eta={eta}")
    horizon = validation.positive_number("horizon", horizon)
    if abs(round(horizon / eta) * eta - horizon) > 1e-9 * horizon:
        raise validation.InputError(f"horizon must be a positive multiple of eta={eta}; "
                                    f"got {horizon!r}")
    return time_grid(round(horizon / eta) * substeps * dt, dt), substeps


def simulate_derivation(derivation: Derivation, *, eta: float, rho: float | None = None, x0: Any,
                        horizon: float, chains: int, seed: int, dt: float | None = None,
                        lam: float | None = None, device: str | torch.device = "cpu",
                        progress: bool = False, **recording: Any) -> ChainRun:
    """Simulate ``chains`` Euler-Maruyama paths of the compiled SDE of ``derivation``.

    Returns a :class:`~sdesam.simulation.chains.ChainRun` like :func:`sdesam.simulation.sde.simulate`: ``times``
    ``k eta`` for the discrete steps k = 0..horizon/eta, the ``states [len(times), chains, d]``
    (or what ``recording`` -- ``every``, ``keep_states``, ``statistics``, ``diverge_at``,
    ``chunk`` of :func:`sdesam.simulation.sde.euler_maruyama` -- asks for), ``final`` and the diverged
    chains. ``dt`` (default eta) must divide eta; the Brownian motion (d channels) is fixed by
    ``seed``.
    """
    sde = DerivedSDE(derivation, eta=eta, rho=rho, lam=lam)
    return integrate(sde, x0=x0, horizon=horizon, chains=chains, seed=seed, dt=dt,
                     device=device, progress=progress, **recording)


def integrate(sde: DerivedSDE, *, x0: Any, horizon: float, chains: int, seed: int,
              dt: float | None = None, device: str | torch.device = "cpu",
              progress: bool = False, **recording: Any) -> ChainRun:
    """:func:`simulate_derivation` for an SDE already compiled (reused across calls; its
    :attr:`DerivedSDE.clipped` counter keeps counting)."""
    chains = validation.positive_int("chains", chains)
    device = validation.device("device", str(device))
    grid, substeps = integration_grid(sde.eta, horizon, dt)
    memory.require(integration_parts(
        sde, chains=chains, channels=sde.dim, dim=sde.dim, steps=(grid.numel() - 1) // substeps,
        every=recording.get("every", 1), keep_states=recording.get("keep_states", True),
        statistics=len(recording.get("statistics") or ()), chunk=recording.get("chunk"),
        dtype=start_dtype(x0)), device)
    y0 = start_points(x0, chains, sde.dim, device)
    bm = FixedGridBrownian(grid, (chains, sde.dim), seed, dtype=y0.dtype, device=y0.device)
    return euler_maruyama(sde, y0, bm, record_every=substeps, progress=progress, **recording)
