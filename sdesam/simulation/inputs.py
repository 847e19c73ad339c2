"""What every simulation layer checks and draws the same way: the learning rate, a rule's
rho and lam, the start points, the mini-batches and the draws of a rule that draws its
perturbation.

The discrete ensemble (:mod:`sdesam.simulation.ensemble`), the SDEs
(:mod:`sdesam.simulation.sde`, :mod:`sdesam.simulation.derived_sde`), the exact moments and the
implicit-regularisation diagnostic import these from here, so a check reads the same whichever
layer makes it.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import validation
from ..algorithms import DEFAULT_LAM, Rule, check_keywords, check_rho

__all__ = ["DEFAULT_LAM", "DRIFT_BATCH_MODES", "batch_bytes", "check_drift_batches", "check_eta",
           "draw_batches", "draw_bytes", "draw_uniforms", "drawn_positions", "rule_lam", "rule_rho",
           "start_dtype", "start_points"]

DRIFT_BATCH_MODES = ("auto", "exact")
"""The named ways of the hand-written SDE to take its drift's expectation over batches (besides a
number of batches drawn per chain and step): see :class:`sdesam.simulation.sde.AlgorithmSDE`."""


def check_eta(eta: Any) -> float:
    """The learning rate ``eta`` as a float if it is a positive number (see :mod:`sdesam.validation`)."""
    return validation.positive_number("eta", eta)


def check_drift_batches(drift_batches: Any) -> str | int:
    """``drift_batches`` if it is one of :data:`DRIFT_BATCH_MODES` or a positive integer (the
    batches drawn per chain and step)."""
    if isinstance(drift_batches, str) and drift_batches in DRIFT_BATCH_MODES:
        return drift_batches
    if isinstance(drift_batches, int) and not isinstance(drift_batches, bool) \
            and drift_batches >= 1:
        return drift_batches
    raise validation.InputError(
        f"drift_batches must be one of {', '.join(map(repr, DRIFT_BATCH_MODES))} or a positive "
        f"integer (the batches drawn per chain and step); got {drift_batches!r}")


def rule_rho(rule: Rule, rho: Any) -> float:
    """``rho`` checked against ``rule`` as a float: required (a finite number >= 0) by a rule
    with a perturbation; for a rule without one, None or 0 (:func:`sdesam.algorithms.check_keywords`),
    returned as 0.0."""
    check_keywords(rule, rho=rho)
    if rho is None:
        if rule.perturbed:
            raise validation.InputError(f"rho is required by {rule.name!r}: the perturbation "
                                        "radius (a finite number >= 0)")
        return 0.0
    return float(check_rho(rho))


def rule_lam(rule: Rule, lam: float | None) -> float:
    """``lam`` checked against ``rule``: refused unless the rule takes it; a weighted rule
    without it gets :data:`~sdesam.algorithms.DEFAULT_LAM`; 0.0 (unused) for the others."""
    check_keywords(rule, lam=lam)
    if not rule.weighted:
        return 0.0
    return validation.non_negative_number("lam", DEFAULT_LAM if lam is None else lam)


def start_dtype(x0: Any) -> torch.dtype:
    """The dtype of the start points made from ``x0``: a floating tensor's own, else float64."""
    return x0.dtype if isinstance(x0, torch.Tensor) and x0.is_floating_point() else torch.float64


def start_points(x0: Any, chains: int, dim: int, device: str | torch.device) -> torch.Tensor:
    """The ``[chains, d]`` starting points from ``x0`` of shape ``[d]`` (shared) or
    ``[chains, d]``, of :func:`start_dtype`. Non-finite start points are refused."""
    x0 = torch.as_tensor(x0, dtype=start_dtype(x0), device=device)
    if x0.shape not in ((dim,), (chains, dim)):
        raise validation.InputError(f"x0 must have shape [{dim}] or [{chains}, {dim}]; "
                                    f"got {tuple(x0.shape)}")
    validation.finite_tensor("x0", x0)
    return x0.expand(chains, dim).clone()


def batch_bytes(n: int, batch: int, sampling: str) -> int:
    """Bytes per chain :func:`draw_batches` allocates for one step: the indices (int64), and
    without replacement the float32 sort keys of every sample and the top-``batch`` values."""
    return batch * 8 if sampling == "with-replacement" else n * 4 + batch * 12


def draw_batches(generator: torch.Generator, chains: int, n: int, batch: int,
                 sampling: str) -> torch.Tensor:
    """``[chains, batch]`` uniform sample indices, independent across chains: i.i.d. draws
    (with replacement) or a uniformly random ``batch``-subset in random order (without)."""
    device = generator.device
    if sampling == "with-replacement":
        return torch.randint(0, n, (chains, batch), generator=generator, device=device)
    keys = torch.rand(chains, n, generator=generator, device=device)
    return keys.topk(batch, dim=-1, sorted=True).indices


def draw_bytes(rule: Rule, element_size: int = 8) -> int:
    """Bytes per chain :func:`draw_uniforms` allocates for one step of ``rule`` (0 unless it
    draws its perturbation)."""
    return rule.ascent_draw * element_size


def draw_uniforms(rule: Rule, generator: torch.Generator, leading: tuple[int, ...],
                  dtype: torch.dtype = torch.float64) -> torch.Tensor | None:
    """The uniforms ``[*leading, k]`` from which a rule with :attr:`~sdesam.algorithms.Rule.ascent_draw`
    ``= k`` draws its k samples (see :func:`drawn_positions`); None for the other rules. Drawn
    for every chain at once, so the draws do not depend on how the chains are chunked."""
    if not rule.ascent_draw:
        return None
    return torch.rand(*leading, rule.ascent_draw, generator=generator, dtype=dtype,
                      device=generator.device)


def drawn_positions(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Positions in the batch ``[..., k]`` drawn with replacement with probabilities
    ``weights [..., B]``, by inverting the cumulative weights at ``uniforms [..., k]``."""
    cumulative = weights.cumsum(dim=-1)
    targets = uniforms.to(cumulative) * cumulative[..., -1:]
    positions = torch.searchsorted(cumulative.contiguous(), targets.contiguous(), right=True)
    return positions.clamp_max(weights.shape[-1] - 1)
