"""SGD as a rule, SAM and USAM (ascent on the same batch), n-SAM and n-USAM (ascent on other data).

The update directions are those of :data:`sdesam.algorithms.RULES`:

* ``sgd``:    G = grad f_B(x)
* ``sam``:    G = grad f_B(x + rho g/|g|),  g = grad f_B(x)
* ``usam``:   G = grad f_B(x + rho g),      g = grad f_B(x)
* ``n-sam``:  G = grad f_B(x + rho g/|g|),  g = grad f_D(x), D a larger batch or the full data
* ``n-usam``: the same with ``rho g``.

Under DistributedDataParallel the ascent gradient of SAM / USAM / n-SAM is all-reduced like
any gradient (a global perturbation), and so is the descent gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from sdesam import validation
from sdesam.algorithms import check_keywords, check_sizes
from sdesam.optim import passes
from sdesam.optim.base import NonFiniteLossError, PerturbedOptimizer, RuleOptimizer, StepResult
from sdesam.optim.passes import LossFn


class SGDRule(RuleOptimizer):
    """Plain mini-batch SGD as a rule (one forward, one backward), so a trainer treats all alike.

    The base optimizer does the actual update; ``SGDRule(params, torch.optim.AdamW, lr=...)``
    is AdamW with the same step interface as the SAM rules. It also implements a rule without
    perturbation that averages over micro-batches (``micro``): the forward runs micro-batch
    by micro-batch, so BatchNorm normalises each with its own statistics (and, under
    ``bn="first-pass"``, each updates the running statistics, as accumulation chunks do).
    """

    rule_name: ClassVar[str] = "sgd"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {"ascent": ("none",)}

    def __init__(self, params: Iterable[Any], base: Any = torch.optim.SGD, *,
                 micro: int | None = None, **kwargs: Any) -> None:
        """``micro``: the micro-batch size m, required by (and only by) a rule with micro-batches."""
        super().__init__(params, base, **kwargs)
        check_keywords(self.rule, micro=micro)
        self.micro = None if micro is None else validation.positive_int("micro", micro)

    def _check_sizes(self, model: nn.Module, batch: int) -> None:
        """micro (if any) must divide the batch and each accumulation chunk."""
        if self.micro is not None:
            check_sizes(self.rule, batch, self.micro)
            passes.check_micro_chunks(batch, self.accumulate, self.micro)

    def _gradient(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the batch, in micro-batches when the rule has them."""
        chunks = None if self.micro is None else inputs.shape[0] // self.micro
        losses, outputs = self._pass(model, loss_fn, inputs, targets, sync=True, first=True,
                                     chunks=chunks)
        return losses.mean(), outputs


class SAM(PerturbedOptimizer):
    """Sharpness-aware minimisation, ascent along the batch's own normalised gradient.

    Besides the model-based ``step(model, loss_fn, inputs, targets)`` it offers the drop-in
    interface of the widely used SAM implementations, so existing loops switch over unchanged::

        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)      # x <- x + rho g/|g|
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)     # restore x, base step

    or ``opt.step(closure)`` with a closure that clears nothing, runs forward + backward and
    returns the loss (the gradient at x must already be in ``.grad``). ``adaptive=True`` gives
    ASAM's scale-invariant perturbation ``rho T^2 g / |T g|``, ``T = |x|``. In the drop-in
    interface the caller owns the forward passes, so ``bn``, ``autocast_dtype`` and
    ``accumulate`` do not apply there, and neither does the check of the first pass's loss:
    ``step(closure)`` refuses a non-finite closure loss (x restored, no base step,
    :class:`~sdesam.optim.base.NonFiniteLossError`); ``first_step``/``second_step`` leave the
    losses to the caller.
    """

    rule_name: ClassVar[str] = "sam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {
        "ascent": ("part",), "micro": (False,), "normalized": (True,), "scaled": (False, True)}
    options: ClassVar[tuple[str, ...]] = ("adaptive",)

    def __init__(self, params: Iterable[Any], base: Any = torch.optim.SGD, *, rho: float = 0.05,
                 adaptive: bool = False, **kwargs: Any) -> None:
        """``rho``: perturbation radius; ``adaptive``: ASAM's elementwise rescaling."""
        if not isinstance(adaptive, bool):
            raise validation.InputError(f"adaptive must be True or False; got {adaptive!r}")
        self.adaptive = adaptive
        self._anchors: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        super().__init__(params, base, rho=rho, **kwargs)
        if adaptive and self.rule.scale is not None:
            raise validation.InputError(
                f"adaptive: rule {self.rule.name!r} has its own elementwise scale; "
                "leave adaptive=False")

    def _ascent(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first pass at x is the ascent pass: the batch gradient, all-reduced under DDP."""
        losses, outputs = self._pass(model, loss_fn, inputs, targets, sync=True, first=True)
        return losses.mean(), outputs

    def step(self, model: nn.Module | Callable[[], Any] | None = None, loss_fn: LossFn | None = None,
             inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None, *,
             return_outputs: bool = False, closure: Callable[[], Any] | None = None) -> StepResult | Any:
        """Model-based step, or the drop-in ``step(closure)`` (``model`` may be the closure)."""
        if closure is None and callable(model) and not isinstance(model, nn.Module):
            closure, model = model, None
        if closure is not None:
            if model is not None or loss_fn is not None:
                raise validation.InputError("closure: give either a closure or (model, loss_fn, inputs, targets)")
            self.first_step(zero_grad=True)
            with torch.enable_grad():
                loss = closure()
            if isinstance(loss, torch.Tensor) and not passes.finite_everywhere(loss.detach(), None):
                self._restore(self._anchors)
                self._anchors = None
                self.zero_grad()
                raise NonFiniteLossError(self.rule.name, float(loss.detach()))
            self.second_step()
            return loss
        return super().step(model, loss_fn, inputs, targets, return_outputs=return_outputs)

    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``x + eps`` using the gradient in ``.grad`` (drop-in interface)."""
        if self._anchors is not None:
            raise RuntimeError("first_step called twice without second_step")
        self._anchors = self._perturb(scale=1.0)
        if zero_grad:
            self.zero_grad()

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore x and take the base step with the gradient in ``.grad`` (drop-in interface)."""
        if self._anchors is None:
            raise RuntimeError("second_step called without a first_step")
        self._restore(self._anchors)
        self._anchors = None
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


class USAM(SAM):
    """Unnormalised SAM: ascent ``x + rho g`` along the batch gradient."""

    rule_name: ClassVar[str] = "usam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {
        "ascent": ("part",), "micro": (False,), "normalized": (False,), "scaled": (False, True)}


class NSAM(PerturbedOptimizer):
    """n-SAM: the ascent direction is the gradient of other data than the mini-batch.

    Either the full data set given once as ``ascent_data=(inputs, targets)`` (its gradient is
    taken in chunks of ``ascent_batch_size`` samples each step), or a larger batch given per
    step as ``step(..., ascent_inputs=..., ascent_targets=...)``. The reported loss and outputs
    come from a forward of the mini-batch at x without backward (the pass that updates the
    BatchNorm running statistics under ``bn="first-pass"``); the ascent pass does not.
    """

    rule_name: ClassVar[str] = "n-sam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {"ascent": ("full",), "normalized": (True,),
                                                      "scaled": (False, True)}
    options: ClassVar[tuple[str, ...]] = ("ascent_data", "ascent_batch_size")

    def __init__(self, params: Iterable[Any], base: Any = torch.optim.SGD, *, rho: float = 0.05,
                 ascent_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ascent_batch_size: int = 1024, **kwargs: Any) -> None:
        """``ascent_data``: the (inputs, targets) whose gradient gives the ascent direction."""
        self.ascent_batch_size = validation.positive_int("ascent_batch_size", ascent_batch_size)
        if ascent_data is not None:
            _check_pair("ascent_data", ascent_data)
        self.ascent_data = ascent_data
        self._step_ascent: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(params, base, rho=rho, **kwargs)

    def step(self, model: nn.Module | None = None, loss_fn: LossFn | None = None,
             inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None, *,
             return_outputs: bool = False, ascent_inputs: torch.Tensor | None = None,
             ascent_targets: torch.Tensor | None = None) -> StepResult:
        """One step; ``ascent_inputs/targets`` replace ``ascent_data`` for this step."""
        if (ascent_inputs is None) != (ascent_targets is None):
            raise validation.InputError("ascent_inputs and ascent_targets must be given together")
        if ascent_inputs is not None:
            self._step_ascent = _check_pair("ascent_inputs", (ascent_inputs, ascent_targets))
        elif self.ascent_data is None:
            raise validation.InputError(f"{self.rule.name} needs ascent_data=(inputs, targets) at construction or "
                             "ascent_inputs/ascent_targets in step()")
        else:
            self._step_ascent = self.ascent_data
        try:
            return super().step(model, loss_fn, inputs, targets, return_outputs=return_outputs)
        finally:
            self._step_ascent = None

    def _ascent(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Report the mini-batch loss at x, then take the gradient of the ascent data."""
        losses, outputs = self._pass(model, loss_fn, inputs, targets, sync=True, first=True,
                                     backward=False)
        ascent_inputs, ascent_targets = self._step_ascent
        chunks = -(-ascent_inputs.shape[0] // self.ascent_batch_size)
        self._pass(model, loss_fn, ascent_inputs, ascent_targets, sync=True, first=False,
                   chunks=chunks)
        return losses.mean(), outputs


class NUSAM(NSAM):
    """n-USAM: unnormalised ascent ``x + rho g`` along the gradient of the ascent data."""

    rule_name: ClassVar[str] = "n-usam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {"ascent": ("full",), "normalized": (False,),
                                                      "scaled": (False, True)}


def _check_pair(name: str, pair: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an (inputs, targets) pair of tensors of equal length."""
    if (not isinstance(pair, tuple) or len(pair) != 2
            or not all(isinstance(t, torch.Tensor) for t in pair)
            or pair[0].ndim == 0 or pair[1].ndim == 0 or pair[0].shape[0] != pair[1].shape[0]
            or pair[0].shape[0] == 0):
        raise validation.InputError(f"{name} must be a pair (inputs, targets) of tensors with the same "
                         "non-zero number of samples")
    return pair
