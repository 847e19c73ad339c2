"""First-order SDEs of the SAM family, as torchsde modules, and their simulation.

Time is measured so that step k of the discrete algorithm sits at ``t = k * eta``:

    dX = b(X) dt + sqrt(eta) G(X) dW,   G = [grad f_i - grad f]_i sqrt(c(B)/N),  W in R^N,

so ``G G^T = c(B) V`` (the mini-batch noise of SGD, shared by every rule at leading order) with
no matrix square root. The drifts, first order in rho, are

* sgd: ``-grad f``;
* n-usam / usam / m-usam: ``-grad(f + rho/2 |grad f|^2 + c(m) rho/2 tr V)`` with c(m) the
  sampling factor of :func:`sdesam.algorithms.sampling_factor`, m = B for usam and no tr V
  term for n-usam;
* n-sam / sam / m-sam: ``-grad(f + rho E|grad f_S|)`` with S a uniform sample of size m
  (m-sam) or B (sam), and ``|grad f|`` in place of the expectation for n-sam;
* rw-sam: ``-grad f - rho E_S[H_S u_S]`` with ``H_S = (1/B) sum_{j in S} H_j``,
  ``u_S = g~_S / |g~_S|`` and ``g~_S = sum_{i in S} p_i grad f_i`` for the Gibbs weights
  ``p = softmax(lam |grad f_i|)`` over the batch S (a multiset's repeated samples count with
  their multiplicity). It is not a potential gradient (the weights' own dependence on x does
  not enter at first order), and at lam = 0 it is SAM's drift. With the weights on the response
  to the perturbation (``descent_weights="response"``) ``H_S`` becomes ``sum_{i in S} p_i H_i``.

A rule with an elementwise ``scale`` s(x) perturbs along ``s(x) * a`` (before normalisation),
so ``u`` above is built from the scaled direction (``H_S s(x) g_S`` for USAM). A rule whose
descent gradient is Gibbs-weighted (``descent_weights="all"``: its noise is not SGD's) or that
draws its perturbation is refused (:data:`SUPPORT`): its SDE is the compiled one of
:mod:`sdesam.simulation.derived_sde`.

Every drift needs one curvature product: with ``g_i = grad f_i`` the regulariser's gradient
is ``sum_i H_i u_i`` for per-sample vectors ``u_i``, which
:meth:`AlgorithmSDE.f_and_g_prod` builds from the same ``g_i`` that give the noise and hands
to :meth:`Problem.sample_grads_with_hvp` (one VJP, or a closed form where the problem has one).
A problem linear in its features (``f_i = phi_i(a_i . x) + ridge/2 |x|^2``,
:meth:`Problem.feature_form`: least squares, logistic regression) skips the per-sample gradients
altogether for every rule: ``g_i = w_i a_i + ridge x``, so drift and noise are products of
``[chains, N]`` slopes with the ``[N, d]`` features, at about the cost of a loop written by
hand for the problem (``bench_sde.py --parts 5``); the expectation over batches works on the
batches' ``[S, N]`` weights on the samples.
The expectations over batches S are enumerated when there are few distinct batches and
otherwise estimated by a mean over a few batches drawn afresh for every chain and step: no bias,
and a variance that enters the scheme like an extra diffusion of size O(dt), so the weak order is
unchanged (:class:`AlgorithmSDE`).

:func:`euler_maruyama` integrates any torchsde-style SDE (an object with
``f_and_g_prod(t, y, v)``) a cache-sized chunk of chains at a time, freezing chains that
diverge and keeping only what the caller asks for (:mod:`sdesam.simulation.chains`); :func:`simulate`
builds the SDE of a rule and integrates it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any, Callable, Iterable, Mapping

import torch
import torchsde
from sdesam.progress import progress_bar

from . import memory
from .. import validation
from ..algorithms import Rule, Support, check_sampling, check_sizes, get_rule, sampling_factor
from .brownian import FixedGridBrownian, time_grid
from .chains import (DIVERGE_AT, ChainRun, Recorder, bound_test_functions, chunk_size, chunks,
                     is_diverged, record_count)
from .inputs import (batch_bytes, check_drift_batches, check_eta, draw_batches, rule_lam, rule_rho,
                     start_dtype, start_points)
from ..problems.base import Problem

SUPPORT = Support("the hand-written SDE (sdesam.simulation.sde)", scaled=(False, True),
                  descent_weights=("none", "response"), ascent_draw=(0,))
"""The rule facts the hand-written SDE implements: every ascent, normalisation and micro-batch
rule, elementwise scales and weights on the response to the perturbation; not a Gibbs-weighted
descent gradient (whose noise is not SGD's) nor a drawn perturbation -- use
:func:`sdesam.simulation.derived_sde.simulate_derivation` for those."""


def supports(rule: Rule) -> str | None:
    """None when the hand-written SDE implements ``rule``, else the fact it lacks."""
    return SUPPORT.reason(rule)

DROPPABLE_TERMS: dict[str, str] = {
    "trace_V": "the noise-induced drift term (c rho/2 tr V for the USAM rules; "
               "E|grad f_S| -> |grad f| for the SAM rules; the batch-reweighted direction -> "
               "g/|g| for RW-SAM)",
    "gradient_norm": "the rho/2 |grad f|^2 drift term (USAM rules only)",
    "noise": "the diffusion (the SDE becomes the ODE of its drift)",
}

SUBSTEPS = 4
"""Default integration steps per learning-rate step (dt = eta/4): Euler with dt = eta adds
an O(eta) error of the size of the weak error one wants to measure."""

ENUMERATE_LIMIT = 64
"""``drift_batches="auto"`` enumerates the distinct batches when there are at most this many, and
otherwise draws :data:`DRIFT_BATCHES` per chain and step. Enumeration has no Monte Carlo error;
its cost grows with the batches. Measured per chain-step against the m-USAM SDE (least
squares, 100 chains, 1 thread; ``bench_sam_sde.py --enumeration``), enumerated / drawn: 36
batches (N = 8, B = 2) 1.93x / 1.85x for SAM and 2.86x / 2.30x for RW-SAM on the feature
route, 2.32x / 2.42x and 3.13x / 2.94x on the per-sample route; 64 (N = 64, d = 20, B = 1)
8.3x / 2.6x and 12.4x / 3.4x (feature), 6.0x / 3.9x and 10.2x / 4.8x (per-sample), the price
of an exact drift at the limit; 330 (N = 8, B = 4) 12.1x / 2.1x and 19.9x / 2.5x (feature)."""

DRIFT_BATCHES = 8
"""Batches drawn per chain and step by ``drift_batches="auto"`` beyond :data:`ENUMERATE_LIMIT`:
their drift variance is one batch's / 8, at 3.2-3.7x the m-USAM SDE's cost per chain-step at
N = 64, d = 20, B = 16 and 1.9-2.4x at N = 8, d = 2, B = 4 for SAM, m-SAM and RW-SAM on
least squares (``experiments/benchmarks/bench_sam_sde.py``)."""

EXACT_LIMIT = 20_000
"""The most distinct batches ``drift_batches="exact"`` enumerates: every drift evaluation
works on all of them for every chain."""


def batch_count(n: int, size: int, sampling: str) -> int:
    """The number of distinct uniform samples of ``size`` out of ``n``: multisets with
    replacement, subsets without."""
    check_sampling(sampling)
    if sampling == "with-replacement":
        return math.comb(n + size - 1, size)
    return math.comb(n, size)


def enumerate_batches(n: int, size: int, sampling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every distinct uniform sample S of ``size`` out of ``n``: its members ``[S, size]`` (a
    multiset repeats a sample) and probabilities ``p [S]`` (multinomial with replacement, uniform
    over the subsets without)."""
    count = batch_count(n, size, sampling)
    if sampling == "with-replacement":
        combos: Iterable = itertools.combinations_with_replacement(range(n), size)
    else:
        combos = itertools.combinations(range(n), size)
    members = torch.tensor(list(combos), dtype=torch.long).view(count, size)
    if sampling == "without-replacement":
        return members, torch.full((count,), 1.0 / count, dtype=torch.float64)
    counts = batch_weights(members, n, torch.ones((), dtype=torch.float64)) * size
    log_p = math.lgamma(size + 1) - torch.lgamma(counts + 1).sum(dim=1) - size * math.log(n)
    return members, log_p.exp()


def batch_weights(members: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """The weights ``W [..., S, n]`` of batches with members ``[..., S, size]``: ``grad f_S = W @
    g``, a repeated sample counted with its multiplicity; dtype and device of ``like``."""
    weights = torch.zeros(*members.shape[:-1], n, dtype=like.dtype, device=like.device)
    ones = torch.full(members.shape, 1.0 / members.shape[-1], dtype=like.dtype, device=like.device)
    return weights.scatter_add_(-1, members, ones)


def batch_plan(n: int, size: int, sampling: str, drift_batches: str | int) -> int:
    """The batches drawn per chain and step for ``drift_batches`` (see :class:`AlgorithmSDE`),
    or 0 when the distinct batches of ``size`` out of ``n`` are enumerated."""
    drift_batches = check_drift_batches(drift_batches)
    count = batch_count(n, size, sampling)
    if drift_batches == "auto":
        return 0 if count <= ENUMERATE_LIMIT else DRIFT_BATCHES
    if drift_batches == "exact":
        if count > EXACT_LIMIT:
            raise validation.InputError(
                f"drift_batches='exact' would enumerate {count} distinct batches of {size} out "
                f"of {n}; at most {EXACT_LIMIT} are allowed: pass 'auto' or a number of batches "
                "to draw per chain and step")
        return 0
    return drift_batches


def draw_key(seed: int, t: Any) -> int:
    """The generator seed of the batches drawn at time ``t`` by a run of ``seed``: a hash of the
    pair (``t`` to the last bit), so every grid time of a run gets its own draws. ``t = None``
    (a caller without a clock, such as :func:`sdesam.simulation.exact_moments.linear_sde`)
    reads as 0."""
    text = f"{int(seed)}:{float(0.0 if t is None else t).hex()}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


class AlgorithmSDE(torch.nn.Module):
    """The first-order SDE of ``algorithm`` on ``problem`` (an Ito SDE with general noise and
    N Brownian channels), usable with ``torchsde.sdeint`` and :func:`euler_maruyama`.

    ``drop_terms`` removes terms for ablations (see :data:`DROPPABLE_TERMS`); ``lam`` is
    RW-SAM's inverse temperature (refused by rules that do not take it).

    **The expectation over batches.** The drifts of the SAM rules and RW-SAM contain
    ``rho E_S[r_S(x)]`` with ``r_S = H_S u_S`` (module docstring), S a uniform batch of the
    rule's ``size`` (m for m-sam, B otherwise). ``drift_batches`` says how it is taken:

    * ``"exact"``: over every distinct batch (at most :data:`EXACT_LIMIT`) with its probability,
      one ``[S, N]`` weight matrix shared by every chain: no Monte Carlo error, at a cost that
      grows with the number of batches;
    * an integer K: the mean of ``r_S`` over K batches drawn afresh, independently, for every
      chain and every step (from ``seed`` and the time, :meth:`batch_draws`). The expectation is
      linear in the law of S, so this estimate is **unbiased** for the drift; its covariance is
      ``rho^2 Cov_S[r_S] / K``, independent across chains, steps and of the Brownian increments.
      An Euler step of size dt then adds ``dt (b^ - b)`` to the state: mean zero, covariance
      ``dt^2 rho^2 Cov_S[r_S] / K`` -- an extra diffusion of size O(dt) per unit time, which
      moves ``E phi(X_T)`` by O(dt) (the order of Euler's own error) and vanishes as dt -> 0:
      the weak order is unchanged. Costs K batches per chain and step, whatever N and B;
    * ``"auto"`` (default): ``"exact"`` when there are at most :data:`ENUMERATE_LIMIT` distinct
      batches, else :data:`DRIFT_BATCHES` drawn batches.

    ``sets_exact`` says which was chosen and ``set_count`` how many batches one evaluation uses.
    The drawn batches make :meth:`f` a random estimate too, fixed by ``seed``, the time and the
    chain's row.
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, problem: Problem, algorithm: "str | Rule", *, eta: float,
                 rho: float | None = None, batch: int, micro: int | None = None,
                 lam: float | None = None, sampling: str = "with-replacement",
                 drop_terms: Iterable[str] = (), drift_batches: str | int = "auto",
                 seed: int = 0) -> None:
        super().__init__()
        rule = SUPPORT.require(get_rule(algorithm))
        drift_batches = check_drift_batches(drift_batches)
        self.eta, self.rho = check_eta(eta), rule_rho(rule, rho)
        self.lam = rule_lam(rule, lam)
        self.micro = check_sizes(rule, batch, micro, problem.n, sampling)
        self.drop_terms = frozenset(drop_terms)
        unknown = self.drop_terms - set(DROPPABLE_TERMS)
        if unknown:
            raise validation.InputError(f"drop_terms must be drawn from {sorted(DROPPABLE_TERMS)}; "
                                        f"got {sorted(unknown)}")
        if rule.normalized and "gradient_norm" in self.drop_terms:
            raise validation.InputError(
                f"drop_terms 'gradient_norm' applies to the unnormalised rules, not {rule.name!r}")
        self.problem, self.rule, self.batch, self.sampling = problem, rule, batch, sampling
        self.noise_scale = math.sqrt(self.eta * float(sampling_factor(batch, problem.n, sampling))
                                     / problem.n)
        size = self.micro if rule.micro else batch
        self.variance_factor = float(sampling_factor(size, problem.n, sampling))
        self.seed, self.set_size, self.set_draws, self.set_count = seed, size, 0, 0
        if rule.normalized and rule.noise_induced and "trace_V" not in self.drop_terms:
            self.set_draws = batch_plan(problem.n, size, sampling, drift_batches)
            if self.set_draws:
                probs = torch.full((self.set_draws,), 1.0 / self.set_draws, dtype=torch.float64)
            else:
                members, probs = enumerate_batches(problem.n, size, sampling)
                self.register_buffer("set_members", members)
                self.register_buffer("set_weights", batch_weights(members, problem.n, probs))
            self.register_buffer("set_probs", probs)
            self.set_count = int(probs.shape[0])
        self.sets_exact = not self.set_draws
        self.form = problem.feature_form()
        if self.form is not None:
            features = self.form.features
            self.register_buffer("form_features", features)
            self.register_buffer("form_squares", features.square())
            self.register_buffer("form_row_squares", features.square().sum(dim=-1))
            self.register_buffer("form_row_norms", self.form_row_squares.sqrt())
            self.register_buffer("form_mean_features", features / problem.n)

    def footprint(self) -> int:
        """Elements per chain of the largest temporaries of one drift evaluation (sizes the
        integrator's chunks of chains)."""
        n, d = self.problem.n, self.problem.dim
        if self.form is not None:
            return 6 * n + 4 * d + self.set_count * (4 * n + 3 * d)
        per_set = d + n * (int(self.rule.weighted) + int(self.set_draws > 0))
        return 3 * n * d + self.set_count * per_set

    def draw_bytes(self) -> int:
        """Bytes per chain of one step's :meth:`batch_draws` (0 when none are drawn)."""
        return self.set_draws * batch_bytes(self.problem.n, self.set_size, self.sampling)

    def batch_draws(self, t: Any, chains: int) -> torch.Tensor | None:
        """The batches of the drift's estimate at time ``t`` for ``chains`` chains: indices
        ``[chains, K, size]``, fresh for every chain, drawn from ``(seed, t)``
        (:func:`draw_key`); None when the batches are enumerated or the drift has none.

        Drawn for every chain at once, as the Brownian increments are, so :func:`euler_maruyama`
        hands each chunk of chains its rows and the draws do not depend on the chunking (nor on
        the solver: torchsde evaluates all chains at once)."""
        if not self.set_draws:
            return None
        generator = torch.Generator(device=self.set_probs.device)
        generator.manual_seed(draw_key(self.seed, t))
        index = draw_batches(generator, chains * self.set_draws, self.problem.n, self.set_size,
                             self.sampling)
        return index.view(chains, self.set_draws, self.set_size)

    # ------------------------------------------------------------------ torchsde interface
    def f(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        """Drift ``b(y)``: ``[chains, d]`` (with drawn batches: its estimate from
        :meth:`batch_draws` at ``t``)."""
        if self.form is not None:
            return self._linear_drift(y, *self._linear_terms(y), self.batch_draws(t, y.shape[0]))
        return self._drift_and_centred(y, self.batch_draws(t, y.shape[0]))[0]

    def g_prod(self, t: Any, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Diffusion times Brownian increment, ``sqrt(eta) G(y) v``, for ``v [chains, N]``."""
        if self.form is not None:
            return self._linear_noise(self._linear_terms(y)[0], v)
        return self._noise(self._centred(self.problem.sample_grads(y)), v)

    def f_and_g_prod(self, t: Any, y: torch.Tensor, v: torch.Tensor,
                     draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and diffusion-increment product from one evaluation of the per-sample gradients.
        ``draws``: these chains' rows of :meth:`batch_draws` at ``t`` (drawn here for all of
        ``y`` when None)."""
        if draws is None:
            draws = self.batch_draws(t, y.shape[0])
        if self.form is not None:
            slopes, curvatures, mean = self._linear_terms(y)
            return (self._linear_drift(y, slopes, curvatures, mean, draws),
                    self._linear_noise(slopes, v))
        drift, centred = self._drift_and_centred(y, draws)
        return drift, self._noise(centred, v)

    def diffusion(self, y: torch.Tensor) -> torch.Tensor:
        """The full diffusion matrix ``sqrt(eta) G(y)``: ``[chains, d, N]`` (for checks only;
        the integrators use :meth:`g_prod` and never build it)."""
        centred = self._centred(self.problem.sample_grads(y))
        scale = 0.0 if "noise" in self.drop_terms else self.noise_scale
        return scale * centred.transpose(-1, -2)

    # ------------------------------------------------------------------ the terms
    @staticmethod
    def _centred(grads: torch.Tensor) -> torch.Tensor:
        return grads - grads.mean(dim=-2, keepdim=True)

    def _noise(self, centred: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if "noise" in self.drop_terms:
            return torch.zeros_like(centred[..., 0, :])
        return self.noise_scale * (v.unsqueeze(-2) @ centred).squeeze(-2)

    def _drift_and_centred(self, y: torch.Tensor, draws: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The drift and the centred per-sample gradients ``g_i - g`` at ``y``, the expectation
        over batches taken over ``draws`` (:meth:`batch_draws`) or, when None, every batch."""
        if not self.rule.perturbed or self.rho == 0:
            grads = self.problem.sample_grads(y)
            mean = grads.mean(dim=-2)
            return -mean, grads - mean.unsqueeze(-2)
        grads, hessian_sum = self.problem.sample_grads_with_hvp(y)
        mean = grads.mean(dim=-2)
        regulariser = hessian_sum(self._cotangent(y, grads, mean, draws))
        return -(mean + regulariser), grads - mean.unsqueeze(-2)

    def _cotangent(self, y: torch.Tensor, grads: torch.Tensor, mean: torch.Tensor,
                   draws: torch.Tensor | None) -> torch.Tensor:
        """Per-sample vectors ``u_i`` with ``drift = -grad f - sum_i H_i u_i``: ``[chains, N, d]``.
        A rule's elementwise scale ``s(y)`` multiplies its perturbation direction (``D = diag s``);
        the expectation over batches is over ``draws`` or, when None, every batch."""
        n, rho = self.problem.n, self.rho
        scale = None if self.rule.scale is None else self.rule.scale(y).unsqueeze(-2)  # [chains, 1, d]
        noise_induced = self.rule.noise_induced and "trace_V" not in self.drop_terms
        if not self.rule.normalized:
            # rho E[H_B D g_B] = rho/N sum_i H_i D ((a - c) g + c g_i); D = I: the gradient of
            # rho/2 a|g|^2 + rho/2 c tr V
            a = 0.0 if "gradient_norm" in self.drop_terms else 1.0
            c = self.variance_factor if noise_induced else 0.0
            cotangent = rho / n * ((a - c) * mean.unsqueeze(-2) + c * grads)
            return cotangent if scale is None else cotangent * scale
        if not noise_induced:  # grad(rho |g|) = rho/N sum_i H_i g/|g| (D g / |D g| with a scale)
            ascent = mean.unsqueeze(-2) if scale is None else mean.unsqueeze(-2) * scale
            unit = ascent / ascent.norm(dim=-1, keepdim=True)
            return (rho / n * unit).expand_as(grads)
        # rho E_S[H_S u_S] = rho sum_S p_S sum_i W_Si H_i u_S
        members, weights = self._set_weights(draws, grads)
        descent = weights
        if self.rule.weighted:
            gibbs = self._set_gibbs_weights(grads.norm(dim=-1), members, weights)
            set_grads = gibbs @ grads
            if self.rule.descent_weights == "response":
                descent = gibbs                                         # H_S = sum_i p_i H_i
        else:
            set_grads = weights @ grads  # [chains, S, d]
        if scale is not None:
            set_grads = set_grads * scale
        units = set_grads / set_grads.norm(dim=-1, keepdim=True)
        return rho * descent.transpose(-1, -2) @ (self.set_probs.to(grads).unsqueeze(-1) * units)

    def _set_weights(self, draws: torch.Tensor | None, like: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(members, W) of the expectation's batches, ``grad f_S = W @ g``: every batch
        (``[S, size]``, ``[S, N]``, shared by the chains) when ``draws`` is None, else the drawn
        ones (``[chains, K, size]``, ``[chains, K, N]``)."""
        if draws is None:
            return self.set_members, self.set_weights.to(like)
        return draws, batch_weights(draws, self.problem.n, like)

    # ------------------------------------------------------------------ problems linear in features
    # With ``f_i = phi_i(a_i . x) + ridge/2 |x|^2`` (:class:`sdesam.problems.base.FeatureForm`)
    # every per-sample gradient is ``w_i a_i + ridge x``: the terms above reduce to products of
    # ``[chains, N]`` slopes with the ``[N, d]`` features, never building ``[chains, N, d]``.
    # The same drift and noise for every rule: the cotangent ``u_i = rho/N (q + c g_i) s`` of the
    # USAM rules, SGD and the SAM rules without the expectation over batches
    # (:meth:`_linear_cotangent`), and the expectation over batches of SAM, m-SAM and RW-SAM
    # (:meth:`_linear_set_regulariser`).

    def _linear_terms(self, y: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Slopes ``w = phi'(A y) [chains, N]``, curvatures ``phi''(A y)`` (None: all 1) and the
        mean gradient ``w A / N + ridge y [chains, d]``."""
        features = self.form_features.to(y)
        slopes, curvatures = self.form.derivatives(y @ features.T)
        mean = slopes @ self.form_mean_features.to(y)
        return slopes, curvatures, mean + self.form.ridge * y if self.form.ridge else mean

    def _linear_drift(self, y: torch.Tensor, slopes: torch.Tensor, curvatures: torch.Tensor | None,
                      mean: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        """The drift ``-(g + sum_i H_i u_i)`` of :meth:`_drift_and_centred` from the slopes: with
        ``u_i = rho/N (q + c w_i a_i) * s``, ``sum_i H_i u_i = rho/N (A^T (k (A (q s) + c w
        (A^2 s))) + ridge (N q + c w A) s)``; for the rules with an expectation over batches,
        :meth:`_linear_set_regulariser` over ``draws`` (None: every batch)."""
        if not self.rule.perturbed or self.rho == 0:
            return -mean
        if self.set_count:
            return torch.add(mean, self._linear_set_regulariser(y, slopes, curvatures, draws)).neg_()
        common, c, scale = self._linear_cotangent(y, mean)
        features, n = self.form_features.to(y), self.problem.n
        along = (common if scale is None else common * scale) @ features.T      # [chains, N]
        if c:
            diagonal = (self.form_row_squares.to(y) if scale is None
                        else scale @ self.form_squares.to(y).T)                 # a_i . (s a_i)
            along = torch.addcmul(along, slopes, diagonal, value=c)
        regulariser = (along if curvatures is None else along * curvatures) @ features
        if self.form.ridge:
            total = n * common + c * (slopes @ features)                        # N sum_i u_i / rho
            regulariser = regulariser + self.form.ridge * (total if scale is None else total * scale)
        return torch.add(mean, regulariser, alpha=self.rho / n).neg_()

    def _linear_set_regulariser(self, y: torch.Tensor, slopes: torch.Tensor,
                                curvatures: torch.Tensor | None, draws: torch.Tensor | None
                                ) -> torch.Tensor:
        """``rho E_S[H_S u_S]`` of :meth:`_cotangent` from the slopes, without per-sample
        gradients: with ``Q`` a batch's weights on its samples (W, or the Gibbs weights) the
        direction is ``g~_S = (Q_S w) A + ridge y``; with ``D`` the descent weights (rows summing
        to 1), ``u_S`` the unit (scaled) directions and ``along_Si = a_i . u_S``,
        ``sum_i H_i u_i = rho (k sum_S p_S D_Si along_Si) A + ridge rho sum_S p_S u_S``."""
        members, weights = self._set_weights(draws, slopes)
        features, ridge = self.form_features.to(y), self.form.ridge
        share = descent = weights
        if self.rule.weighted:
            if ridge:      # |g_i|^2 = w_i^2 |a_i|^2 + 2 ridge w_i (a_i . y) + ridge^2 |y|^2
                squares = (slopes.square() * self.form_row_squares.to(y)
                           + (2 * ridge) * slopes * (y @ features.T)
                           + ridge**2 * y.square().sum(dim=-1, keepdim=True))
                norms = squares.clamp_min(0).sqrt()
            else:
                norms = slopes.abs() * self.form_row_norms.to(y)
            share = self._set_gibbs_weights(norms, members, weights)    # [chains, S, N]
            if self.rule.descent_weights == "response":
                descent = share
        set_grads = (share * slopes.unsqueeze(-2)) @ features             # [chains, S, d]
        if ridge:
            set_grads = set_grads + ridge * y.unsqueeze(-2)
        if self.rule.scale is not None:
            set_grads = set_grads * self.rule.scale(y).unsqueeze(-2)
        # p_S u_S: the batches' probabilities folded in before the product with the features
        weighted = set_grads * (self.set_probs.to(y).unsqueeze(-1)
                                / set_grads.norm(dim=-1, keepdim=True))
        per_sample = (descent * (weighted @ features.T)).sum(dim=-2)      # [chains, N]
        if curvatures is not None:
            per_sample = per_sample * curvatures
        regulariser = per_sample @ features
        if ridge:
            regulariser = regulariser + ridge * weighted.sum(dim=-2)
        return self.rho * regulariser

    def _linear_cotangent(self, y: torch.Tensor, mean: torch.Tensor
                          ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """``(q, c, s)`` with the cotangent of :meth:`_cotangent` written ``u_i = rho/N (q + c w_i
        a_i) * s`` (``s`` None: no scale) for the rules without an expectation over batches."""
        scale = None if self.rule.scale is None else self.rule.scale(y)
        noise_induced = self.rule.noise_induced and "trace_V" not in self.drop_terms
        if self.rule.normalized:       # grad(rho |g|) = rho/N sum_i H_i D g / |D g|
            ascent = mean if scale is None else mean * scale
            return ascent / ascent.norm(dim=-1, keepdim=True), 0.0, None
        a = 0.0 if "gradient_norm" in self.drop_terms else 1.0
        c = self.variance_factor if noise_induced else 0.0
        common = (a - c) * mean
        if c and self.form.ridge:
            common = common + (c * self.form.ridge) * y          # g_i = w_i a_i + ridge y
        return common, c, scale

    def _linear_noise(self, slopes: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``sqrt(eta c(B) / N) sum_i v_i (g_i - g) = ... ((v - mean v) w) A`` (the ridge term
        is the same for every sample and cancels)."""
        if "noise" in self.drop_terms:
            return slopes.new_zeros(*slopes.shape[:-1], self.problem.dim)
        centred = v - v.mean(dim=-1, keepdim=True)
        return self.noise_scale * (centred * slopes) @ self.form_features.to(slopes)

    def _set_gibbs_weights(self, norms: torch.Tensor, members: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
        """``q_S = softmax(lam |g_i|)`` over the members of each batch S, a repeated sample
        counted with its multiplicity (``g~_S = q_S @ g``): ``[chains, S, N]``, from the
        gradient norms ``|g_i|`` ``[chains, N]`` and the batches' members ``[S, size]`` or
        ``[chains, S, size]`` with their weights W (:meth:`_set_weights`).

        ``q_Si = W_Si e_i / sum_j W_Sj e_j`` with ``e_i = exp(lam (|g_i| - max_j |g_j|))``,
        the scores shifted by each chain's largest: four operations on W. Where a batch's
        scores all lie so far below that largest that its sum leaves the normal range of the
        dtype, the softmax is taken over each batch's own members instead (shifted by the
        batch's largest score), which is stable for any spread of the scores."""
        scores = self.lam * norms
        shifted = (scores - scores.amax(dim=-1, keepdim=True)).exp_().unsqueeze(-2)
        gibbs = weights * shifted                                        # [chains, S, N]
        totals = gibbs.sum(dim=-1, keepdim=True)
        info = torch.finfo(norms.dtype)
        if bool((totals >= info.tiny / info.eps).all()):
            return gibbs.div_(totals)
        chains, n = norms.shape[0], self.problem.n
        shape = (chains, *members.shape[-2:])
        member = scores.gather(-1, members.flatten(-2).expand(chains, -1)).view(shape)
        member = (member - member.amax(dim=-1, keepdim=True)).exp()
        member = member / member.sum(dim=-1, keepdim=True)
        gibbs = torch.zeros(*shape[:-1], n, dtype=norms.dtype, device=norms.device)
        return gibbs.scatter_add_(-1, members.expand(shape), member)


# ---------------------------------------------------------------------- simulation
def footprint(sde: Any, channels: int, dim: int) -> int:
    """Elements per chain of the temporaries of one drift and diffusion evaluation of ``sde``
    (its own ``footprint()`` where it has one) with ``channels`` Brownian channels in ``dim``
    dimensions."""
    return sde.footprint() if hasattr(sde, "footprint") else 3 * channels * dim


def step_random_bytes(sde: Any, channels: int, element_size: int) -> int:
    """Bytes per chain of one step's random numbers: a Brownian increment of ``channels`` and
    its scaled copy, plus the batches ``sde`` draws (its own ``draw_bytes()`` where it has one)."""
    draws = sde.draw_bytes() if hasattr(sde, "draw_bytes") else 0
    return 2 * channels * element_size + draws


def integration_chunk(sde: Any, chains: int, channels: int, dim: int, element_size: int,
                      chunk: int | None) -> int:
    """The chains :func:`euler_maruyama` integrates at once: ``chunk``, or by default as many
    as keep one evaluation's temporaries within :data:`sdesam.simulation.chains.CHUNK_BYTES`."""
    if chunk is None:
        return chunk_size(chains, footprint(sde, channels, dim), element_size)
    return validation.positive_int("chunk", chunk)


def integration_parts(sde: Any, *, chains: int, channels: int, dim: int, steps: int,
                      every: int | None = 1, keep_states: bool = True, statistics: int = 0,
                      chunk: int | None = None, dtype: torch.dtype = torch.float64,
                      path_points: int = 0, chains_argument: str = "chains") -> list[memory.Part]:
    """What an Euler-Maruyama integration of ``sde`` over ``steps`` recorded steps holds in
    memory (see :mod:`sdesam.simulation.memory`; ``path_points``: grid points of a whole path
    the solver keeps, as torchsde does), its chain count shown as ``chains_argument``."""
    itemsize = dtype.itemsize
    parts = memory.chain_run_parts(
        chains, dim, element_size=itemsize, records=record_count(steps, every), every=every,
        keep_states=keep_states, statistics=statistics,
        step_random_bytes=step_random_bytes(sde, channels, itemsize),
        chunk=integration_chunk(sde, chains, channels, dim, itemsize, chunk),
        chunk_elements=footprint(sde, channels, dim), chains_argument=chains_argument)
    if path_points:
        parts.append(memory.Part(f"the solver's whole path of {path_points} grid points",
                                 chains_argument, chains, chains * path_points * dim * itemsize,
                                 f"lower {chains_argument}, or use solver='fast'"))
    return parts


def euler_maruyama(sde: Any, y0: torch.Tensor, bm: FixedGridBrownian, *,
                   record_every: int = 1, every: int | None = 1, keep_states: bool = True,
                   statistics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   diverge_at: float = DIVERGE_AT, chunk: int | None = None,
                   progress: bool = False) -> ChainRun:
    """The Euler-Maruyama solution of ``sde`` from ``y0 [chains, d]`` on the grid of ``bm``:
    the update of torchsde's Euler solver, without its per-step machinery.

    ``sde`` is any object with ``f_and_g_prod(t, y, v) -> (drift, diffusion @ v)`` acting on
    a batch of chains (torchsde's interface); one whose drift averages over drawn batches
    (:meth:`AlgorithmSDE.batch_draws`) gets them drawn for every chain at once each cell and
    handed to ``f_and_g_prod`` chunk by chunk, as the Brownian increments are. A *step* is
    ``record_every`` grid cells (the substeps of one learning-rate step); the run records at
    steps ``0, every, 2 every, ...`` and the last (``every=None``: start and end), keeping the
    states if ``keep_states`` and the mean / variance over live chains of each ``statistics``
    function ``x -> [chains]``.
    Chains are integrated ``chunk`` at a time (default: temporaries of about
    :data:`sdesam.simulation.chains.CHUNK_BYTES`, from ``sde.footprint()`` when it exists); a chain that
    turns non-finite or exceeds ``diverge_at`` in norm is frozen and counted in the result's
    ``diverged``. The result's ``times`` are the grid times of the recorded steps.
    """
    validation.positive_int("record_every", record_every)
    cells = bm.times.numel() - 1
    if cells % record_every:
        raise validation.InputError(f"record_every must divide the {cells} grid cells; "
                                    f"got {record_every}")
    chains = y0.shape[0]
    chunk = integration_chunk(sde, chains, bm.shape[1], y0.shape[1], y0.element_size(), chunk)
    y = y0.clone()
    recorder = Recorder(y, steps=cells // record_every, every=every, keep_states=keep_states,
                        statistics=statistics or {}, diverge_at=diverge_at, chunk=chunk)
    times = bm.times
    batch_draws = getattr(sde, "batch_draws", None)
    with torch.no_grad():
        for cell in progress_bar(range(cells), desc="SDE", show=progress, leave=False):
            dt = float(times[cell + 1] - times[cell])
            increment = bm.increment(cell)
            draws = None if batch_draws is None else batch_draws(times[cell], chains)
            k = cell // record_every
            for part in chunks(chains, recorder.chunk):
                old = y[part]
                extra = () if draws is None else (draws[part],)
                drift, noise = sde.f_and_g_prod(times[cell], old, increment[part], *extra)
                y[part] = recorder.freeze(k, part, old, old + drift * dt + noise)
            if (cell + 1) % record_every == 0:
                recorder.record(k + 1, y)
    return recorder.result(y, 0.0, times[torch.tensor(recorder.steps) * record_every])


def _torchsde_run(sde: AlgorithmSDE, y0: torch.Tensor, bm: FixedGridBrownian, times: torch.Tensor,
                  dt: float, *, every: int | None, keep_states: bool,
                  statistics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
                  diverge_at: float, chunk: int) -> ChainRun:
    """``torchsde.sdeint`` on the same grid and Brownian motion; torchsde has no hook to
    freeze a chain, so divergence is detected on its path afterwards and diverged chains are
    left out of the statistics from their first failure on."""
    with torch.no_grad():
        path = torchsde.sdeint(sde, y0, times.to(y0.device), bm=bm, dt=dt, method="euler")
    recorder = Recorder(y0, steps=len(times) - 1, every=every, keep_states=keep_states,
                        statistics=statistics, diverge_at=diverge_at, chunk=chunk)
    for k in range(len(times) - 1):
        failed = recorder.alive & is_diverged(path[k + 1], diverge_at)
        recorder.diverged_step[failed] = k + 1
        recorder.alive &= ~failed
        recorder.all_alive = bool(recorder.alive.all())
        recorder.record(k + 1, path[k + 1])
    return recorder.result(path[-1], 0.0, times[torch.tensor(recorder.steps)])


def simulate(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float | None = None,
             batch: int,
             micro: int | None = None, lam: float | None = None, x0: Any, horizon: float,
             chains: int, seed: int, dt: float | None = None, method: str = "euler",
             drop_terms: Iterable[str] = (), sampling: str = "with-replacement",
             drift_batches: str | int = "auto",
             device: str | torch.device = "cpu", solver: str = "fast", every: int | None = 1,
             keep_states: bool = True, test_fns: Iterable[str] = (),
             diverge_at: float = DIVERGE_AT, chunk: int | None = None,
             progress: bool = False) -> ChainRun:
    """Simulate ``chains`` paths of the SDE of ``algorithm`` up to time ``horizon``.

    Returns a :class:`~sdesam.simulation.chains.ChainRun` whose steps are the discrete steps k = 0..T/eta
    at times ``k * eta`` (float64, accumulated as the integrator's clock, so no interpolation
    happens); what it keeps (``every``, ``keep_states``, ``test_fns``), divergence
    (``diverge_at``) and ``chunk`` are as in :func:`sdesam.simulation.ensemble.run`. ``dt`` (default
    ``eta / SUBSTEPS``) is the integration step and must divide ``eta``. ``solver="fast"``
    uses :func:`euler_maruyama`, ``"torchsde"`` calls ``torchsde.sdeint`` with the same
    :class:`FixedGridBrownian` (same seed, same paths). ``drift_batches`` is how the drift's
    expectation over batches is taken (:class:`AlgorithmSDE`). A rule this SDE does not
    implement (:data:`SUPPORT`) is refused naming the fact it lacks.
    """
    rule = SUPPORT.require(get_rule(algorithm))
    eta = check_eta(eta)
    validation.one_of("method", method, ("euler",))
    validation.one_of("solver", solver, ("fast", "torchsde"))
    validation.positive_int("chains", chains)
    dt = eta / SUBSTEPS if dt is None else validation.positive_number("dt", dt)
    substeps = round(eta / dt)
    if substeps < 1 or abs(substeps * dt - eta) > 1e-9 * eta:
        raise validation.InputError(f"dt must divide eta into a whole number of steps; "
                                    f"got dt={dt}, eta={eta}")
    horizon = validation.positive_number("horizon", horizon)
    if abs(round(horizon / eta) * eta - horizon) > 1e-9 * horizon or round(horizon / eta) < 1:
        raise validation.InputError(f"horizon must be a positive multiple of eta={eta}; got {horizon!r}")
    statistics = bound_test_functions(problem, test_fns)
    sde = AlgorithmSDE(problem, rule, eta=eta, rho=rho, batch=batch, micro=micro, lam=lam,
                       sampling=sampling, drop_terms=drop_terms, drift_batches=drift_batches,
                       seed=seed)
    steps = round(horizon / eta)
    validation.device("device", str(device))
    chunk = integration_chunk(sde, chains, problem.n, problem.dim, start_dtype(x0).itemsize, chunk)
    memory.require(integration_parts(
        sde, chains=chains, channels=problem.n, dim=problem.dim, steps=steps, every=every,
        keep_states=keep_states, statistics=len(statistics), chunk=chunk, dtype=start_dtype(x0),
        path_points=steps * substeps + 1 if solver == "torchsde" else 0), device)
    sde = sde.to(device)
    y0 = start_points(x0, chains, problem.dim, device)
    grid = time_grid(steps * substeps * float(dt), float(dt))
    bm = FixedGridBrownian(grid, (chains, problem.n), seed, dtype=y0.dtype, device=y0.device)
    options = dict(every=every, keep_states=keep_states, statistics=statistics,
                   diverge_at=diverge_at)
    if solver == "fast":
        return euler_maruyama(sde, y0, bm, record_every=substeps, chunk=chunk, progress=progress,
                              **options)
    return _torchsde_run(sde, y0, bm, grid[::substeps], float(dt), chunk=chunk, **options)
