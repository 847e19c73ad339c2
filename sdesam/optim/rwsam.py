"""RW-SAM: SAM whose ascent direction weights each sample by its gradient norm.

One step (paper, section 4):

1. forward at x: per-sample losses ``l_i`` (reported loss and outputs);
2. one Rademacher direction ``z`` (entries +-1) shared by the batch; one forward at
   ``x + delta z`` without backward and without touching BatchNorm running statistics, in
   float32: ``s_i = |l_i(x + delta z) - l_i(x)| / delta`` estimates ``|grad f_i(x)|``
   (``E_z[(z^T g)^2] = |g|^2``);
3. Gibbs weights ``p = softmax(lam * s)``, detached;
4. backward of ``sum_i p_i l_i``: the reweighted gradient ``g``; ``x <- x + rho g/|g|``;
5. descent gradient of the plain mini-batch mean loss at the perturbed point; restore x,
   base step.

``lam = 0`` gives uniform weights, i.e. SAM. Cost: one forward more than SAM; under autocast
the probe also recomputes ``l_i(x)`` in float32 (two forwards more than SAM), since loss
differences of order ``delta |grad f_i|`` vanish in bfloat16/float16.

The class also runs RW-SAM's other readings (:attr:`sdesam.algorithms.Rule.descent_weights`,
:attr:`~sdesam.algorithms.Rule.ascent_draw`), each a change of the weights of one backward:
a drawn perturbation backpropagates the mean loss of k samples drawn with probabilities p
(``counts / k``) in step 4, from ``generator``; weights on the whole descent gradient make step
5 the backward of ``sum_i p_i l_i(x + eps)``; weights on the response add, after the restore, a
backward at x of ``sum_i (1/B - p_i) l_i`` (one forward and backward more).

Under DistributedDataParallel the weights are normalised over each device's batch;
``local_perturbation=True`` keeps the ascent gradient local (the backward of step 4 runs
under ``no_sync``, no communication), ``False`` all-reduces it. The descent gradient is
always all-reduced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from sdesam import validation
from sdesam.algorithms import ANY, DEFAULT_LAM, DESCENT_WEIGHTS, gibbs_weights
from sdesam.optim import passes
from sdesam.optim.base import PerturbedOptimizer
from sdesam.optim.passes import LossFn
from sdesam.per_sample import trainable_parameters

__all__ = ["DEFAULT_DELTA", "DEFAULT_LAM", "RWSAM", "estimate_grad_norms", "gibbs_weights", "rademacher"]

DEFAULT_DELTA = 1e-3
"""The default finite-difference step of the gradient-norm probe."""


def rademacher(params: Iterable[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One Rademacher tensor (entries -1 or +1, equally likely) per parameter, same shape and dtype.

    Drawn parameter by parameter as ``2 * randint(0, 2) - 1`` in the parameter's dtype, on the
    generator's device (the parameter's device without a generator), then moved to the
    parameter's device.
    """
    draws = []
    for p in params:
        device = p.device if generator is None else generator.device
        signs = torch.randint(0, 2, p.shape, generator=generator, device=device, dtype=p.dtype)
        draws.append(signs.mul_(2).sub_(1).to(p.device))
    return draws


def estimate_grad_norms(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                        delta: float = DEFAULT_DELTA, generator: torch.Generator | None = None,
                        losses: torch.Tensor | None = None) -> torch.Tensor:
    """Finite-difference estimates ``[B]`` of the per-sample gradient norms ``|grad f_i(x)|``.

    ``|l_i(x + delta z) - l_i(x)| / delta`` for one Rademacher ``z`` drawn with ``generator``
    over the trainable parameters: one forward at ``x + delta z`` (a functional call, the
    parameters are not modified), no backward, BatchNorm running statistics untouched, in
    float32. ``losses``: the float32 per-sample losses at x if already computed (otherwise
    one more forward computes them). A single draw is noisy: its square is unbiased for
    ``|grad f_i|^2`` up to the curvature term ``(delta/2) z^T H_i z``.
    """
    validation.positive_number("delta", delta)
    passes.check_batch(model, loss_fn, inputs, targets)
    module = passes.unwrap(model)
    direction = rademacher(trainable_parameters(module).values(), generator)
    return probe_scores(module, loss_fn, inputs, targets, delta, direction, losses)


@torch.no_grad()
def probe_scores(module: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                 delta: float, direction: list[torch.Tensor], losses: torch.Tensor | None = None) -> torch.Tensor:
    """``|l_i(x + delta z) - l_i(x)| / delta`` for the given direction ``z`` (one per trainable parameter)."""
    params = trainable_parameters(module)
    shifted = {name: torch.add(p.detach(), z, alpha=delta) for (name, p), z in zip(params.items(), direction)}
    with torch.autocast(device_type=inputs.device.type, enabled=False), \
            passes.running_stats_frozen(module):
        if losses is None:
            losses = passes.forward_losses(module, loss_fn, inputs, targets)[1]
        moved = loss_fn(functional_call(module, shifted, (inputs,)), targets)
    return (passes.upcast(moved) - passes.upcast(losses)).abs() / delta


class RWSAM(PerturbedOptimizer):
    """Reweighted SAM (see the module docstring for the step and its DDP behaviour).

    ``lam``: inverse temperature of the Gibbs weights (>= 0); ``delta``: finite-difference
    step of the norm estimate; ``generator``: the source of the Rademacher directions and of
    the draws of a drawn perturbation (a generator on the parameters' device avoids a
    host-to-device copy; None: the global RNG).
    """

    rule_name: ClassVar[str] = "rw-sam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {
        "ascent": ("reweighted",), "scaled": (False, True), "descent_weights": DESCENT_WEIGHTS,
        "ascent_draw": ANY}
    options: ClassVar[tuple[str, ...]] = ("local_perturbation", "generator")

    def __init__(self, params: Iterable[Any], base: Any = torch.optim.SGD, *, rho: float = 0.05,
                 lam: float = DEFAULT_LAM, delta: float = DEFAULT_DELTA, local_perturbation: bool = False,
                 generator: torch.Generator | None = None, **kwargs: Any) -> None:
        """See the class docstring; the other keywords are those of every rule."""
        if not isinstance(local_perturbation, bool):
            raise validation.InputError(
                f"local_perturbation must be True or False; got {local_perturbation!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise validation.InputError(f"generator must be a torch.Generator or None; got {generator!r}")
        self.lam = validation.non_negative_number("lam", lam)
        self.delta = validation.positive_number("delta", delta)
        self.local_perturbation = local_perturbation
        self.generator = generator
        self._weights: torch.Tensor | None = None
        super().__init__(params, base, rho=rho, **kwargs)

    def _gradient(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascent, perturb, descent at the perturbed point (Gibbs-weighted where the rule says
        so), restore; with weights on the response, the weighted correction at x."""
        try:
            loss, outputs = self._ascent(model, loss_fn, inputs, targets)
            anchors = self._perturb()
            self.zero_grad()
            weights = self._weights
            descent = None if self.rule.descent_weights == "none" else weights
            self._pass(model, loss_fn, inputs, targets, sync=True, first=False, weights=descent)
            self._restore(anchors)
            if self.rule.descent_weights == "response":
                self._pass(model, loss_fn, inputs, targets, sync=True, first=False,
                           weights=1.0 / inputs.shape[0] - weights)
        finally:
            self._weights = None
        return loss, outputs

    def _ascent_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """The weights of the ascent backward: the Gibbs weights, or for a drawn perturbation
        the share ``counts / k`` of each sample among k draws with those probabilities."""
        self._weights = weights
        k = self.rule.ascent_draw
        if not k:
            return weights
        probs = weights.detach().to(self.generator.device if self.generator is not None
                                    else weights.device)
        if not bool(torch.isfinite(probs).all()):
            return weights       # a non-finite loss: the step is refused once the loss is checked
        drawn = torch.multinomial(probs, k, replacement=True, generator=self.generator)
        counts = torch.bincount(drawn, minlength=weights.shape[0]).to(weights)
        return counts / k

    def _extra_state(self) -> dict[str, Any]:
        """The generator's state, so that a resumed run draws the same directions."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        """Restore the generator's state when both the saved and this optimizer have one."""
        if self.generator is not None and "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])

    def _ascent(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First pass, probe, Gibbs weights, backward of the reweighted loss."""
        module = passes.unwrap(model)
        direction = rademacher(trainable_parameters(module).values(), self.generator)
        exact_losses = self.autocast_dtype is None
        sync = not self.local_perturbation
        if self.accumulate == 1:
            # Keep the first pass's graph: the reweighted backward reuses it.
            with passes.running_stats_frozen(model, self.bn == "freeze"), \
                    passes.sync_context(model, sync):
                with passes.autocast_context(inputs.device, self.autocast_dtype):
                    outputs, losses = passes.forward_losses(model, loss_fn, inputs, targets)
                losses = passes.upcast(losses)
                scores = probe_scores(module, loss_fn, inputs, targets, self.delta, direction,
                                      losses.detach() if exact_losses else None)
                weights = self._ascent_weights(gibbs_weights(scores, self.lam))
                ((weights * losses).sum() * self.scaler.scale).backward()
            return losses.detach().mean(), outputs.detach()
        # Accumulation: weights need the whole batch first, so the reweighted pass recomputes.
        losses, outputs = self._pass(model, loss_fn, inputs, targets, sync=sync, first=True,
                                     backward=False)
        parts = zip(passes.split(inputs, targets, self.accumulate), losses.chunk(self.accumulate))
        scores = torch.cat([
            probe_scores(module, loss_fn, x, y, self.delta, direction, part if exact_losses else None)
            for (x, y), part in parts
        ])
        self._pass(model, loss_fn, inputs, targets, sync=sync, first=False,
                   weights=self._ascent_weights(gibbs_weights(scores, self.lam)))
        return losses.mean(), outputs
