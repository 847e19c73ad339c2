"""The common frame of every rule: a ``torch.optim.Optimizer`` wrapping a base optimizer.

A rule computes a descent gradient G in the parameters' ``.grad`` and hands it to the wrapped
base optimizer (SGD with momentum, AdamW, ...), which applies learning rate, momentum and
weight decay as usual. ``opt.param_groups`` *is* the base optimizer's list, so a learning-rate
scheduler can be attached to either.

One step of a perturbed rule (SAM, USAM, n-SAM, RW-SAM):

1. the first pass at x (loss and outputs reported to the caller; the ascent gradient a);
2. ``x <- x + eps`` with ``eps = rho a / |a|`` (SAM variants; the global norm over all
   parameters) or ``rho a`` (USAM variants); the old values are kept and restored with
   ``copy_`` (exact, no floating-point drift);
3. the descent pass: the gradient of the plain mini-batch mean loss at ``x + eps``, with
   BatchNorm running statistics untouched and, under DistributedDataParallel, all-reduced;
4. restore x, base optimizer step.

Common keywords: ``bn`` (BatchNorm policy, see :mod:`sdesam.optim.passes`),
``autocast_dtype`` (None, bf16, or fp16 with dynamic loss scaling unscaled once per step),
``accumulate`` (gradient accumulation over that many equal chunks of the batch: every pass
runs chunk by chunk and the ascent direction is still that of the whole batch),
``perturb_weight_decay`` (add each group's ``weight_decay * x`` to the ascent direction, i.e.
perturb along the gradient of the regularised loss).

A step whose batch loss (the first pass's mean) is NaN or infinite is refused, not taken:
:class:`NonFiniteLossError` is raised and the parameters, the base optimizer's state and the
BatchNorm running statistics are left as they were before the step (one ``isfinite`` on the
loss per step, all-reduced under DDP so that every process refuses together). Raising rather
than skipping: a non-finite loss means bad data or a diverged run, and a skipped step would let
either pass unnoticed; the caller decides (the trainer stops and records the divergence).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from sdesam import validation
from sdesam.algorithms import Rule, Support, get_rule, scaled
from sdesam.optim import passes
from sdesam.optim.passes import LossFn
from sdesam.optim.scaler import LossScaler

StepResult = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

NORM_FLOOR = 1e-12


class NonFiniteLossError(FloatingPointError):
    """A step's batch loss was NaN or infinite; the step was not taken (nothing changed)."""

    def __init__(self, rule: str, loss: float) -> None:
        """``loss``: this process's batch loss (finite when another process's was not)."""
        self.loss = loss
        where = f"{loss}" if not math.isfinite(loss) else f"non-finite on another process ({loss} here)"
        super().__init__(
            f"{rule} step: the batch loss is {where}; the step was not taken (parameters, "
            "optimizer state and BatchNorm statistics unchanged): check the inputs for NaN or "
            "inf, or lower lr / rho if training diverged")


class RuleOptimizer(torch.optim.Optimizer):
    """Base of the rules: wraps ``base(params, **base_kwargs)`` and runs model-based steps.

    ``step(model, loss_fn, inputs, targets)`` computes the rule's gradient with the passes it
    needs and takes one base-optimizer step; it returns the mean loss of the first
    (unperturbed) pass, detached, and with ``return_outputs=True`` that pass's outputs too.
    ``loss_fn(outputs, targets)`` must return per-sample losses ``[B]``.

    Each class implements the registered rules whose facts match its :attr:`handles` (a
    :class:`~sdesam.algorithms.Support` declaration: a fact it does not name takes any value,
    except the extensions -- ``scaled``, ``descent_weights``, ``ascent_draw`` -- which then
    take only their plain value); ``rule=`` picks one, by name or as a
    :class:`~sdesam.algorithms.Rule` (the default is :attr:`rule_name`). The rule's facts
    (normalisation, elementwise scale, micro-batches, weights), never its name, decide what a
    step does. A step checks its batch (micro-batches, accumulation chunks) once per batch size.
    """

    rule_name: ClassVar[str] = "sgd"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {"ascent": ("none",), "micro": (False,)}
    options: ClassVar[tuple[str, ...]] = ()
    """The class's own keywords beyond every rule's (read by :func:`sdesam.optim.registry.class_options`)."""

    @classmethod
    def declaration(cls) -> Support:
        """This class's :attr:`handles` as a :class:`~sdesam.algorithms.Support`."""
        return Support(cls.__name__, **cls.handles)

    @classmethod
    def supports(cls, rule: Rule) -> bool:
        """Whether this class implements every fact of ``rule``."""
        return cls.declaration().reason(rule) is None

    def __init__(
        self,
        params: Iterable[Any],
        base: Any = torch.optim.SGD,
        *,
        bn: str = "first-pass",
        autocast_dtype: torch.dtype | None = None,
        accumulate: int = 1,
        perturb_weight_decay: bool = False,
        loss_scale: float = 2.0**16,
        rule: Rule | str | None = None,
        **base_kwargs: Any,
    ) -> None:
        """Wrap ``base``; ``base_kwargs`` (lr, momentum, weight_decay, ...) go to it."""
        self.rule: Rule = get_rule(self.rule_name if rule is None else rule)
        refusal = self.declaration().refusal(self.rule)
        if refusal is not None:
            raise validation.InputError(
                f"{refusal}; sdesam.optim.create picks the class that implements a rule")
        self.bn = validation.one_of("bn", bn, passes.BN_POLICIES)
        self.autocast_dtype = validation.one_of("autocast_dtype", autocast_dtype,
                                                passes.AUTOCAST_DTYPES)
        self.accumulate = validation.positive_int("accumulate", accumulate)
        if not isinstance(perturb_weight_decay, bool):
            raise validation.InputError(
                f"perturb_weight_decay must be True or False; got {perturb_weight_decay!r}")
        self.perturb_weight_decay = perturb_weight_decay
        if not callable(base):
            raise validation.InputError(
                f"base must be a torch.optim.Optimizer class (e.g. torch.optim.SGD); got {base!r}")
        super().__init__(params, {})
        try:
            self.base_optimizer = base(self.param_groups, **base_kwargs)
        except TypeError as error:
            raise validation.InputError(
                f"base optimizer {getattr(base, '__name__', base)!r} rejected the keywords "
                f"{sorted(base_kwargs)}: {error}"
            ) from None
        self.scaler = LossScaler(autocast_dtype == torch.float16, loss_scale)
        self._checked_batch: int | None = None
        self._sync_with_base()

    # -- the torch.optim.Optimizer surface ------------------------------------------------------

    def _sync_with_base(self) -> None:
        """Share the base optimizer's param_groups, defaults and state (after init and load)."""
        self.param_groups = self.base_optimizer.param_groups
        self.defaults = self.base_optimizer.defaults
        self.state = self.base_optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (delegated to the base optimizer)."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state plus the rule's own (loss scale, random generator)."""
        return {"base": self.base_optimizer.state_dict(), "rule": self.rule.name,
                "scaler": self.scaler.state_dict(), **self._extra_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a ValueError for another rule's state)."""
        if not isinstance(state_dict, dict) or "base" not in state_dict:
            raise validation.InputError("state_dict must be a dict returned by this optimizer's state_dict()")
        if state_dict.get("rule") != self.rule.name:
            raise validation.InputError(
                f"state_dict was saved by {state_dict.get('rule')!r}, not {self.rule.name!r}"
            )
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.scaler.load_state_dict(state_dict["scaler"])
        self._load_extra_state(state_dict)
        self._sync_with_base()

    def _extra_state(self) -> dict[str, Any]:
        """Rule-specific entries of the state dict (none by default)."""
        return {}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        """Restore the entries of :meth:`_extra_state` (none by default)."""

    # -- the model-based step ---------------------------------------------------------------------

    def step(self, model: nn.Module | None = None, loss_fn: LossFn | None = None,
             inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None, *,
             return_outputs: bool = False) -> StepResult:
        """One step of the rule on the batch; returns the first pass's mean loss (and outputs).

        Raises :class:`NonFiniteLossError`, leaving the model and the optimizer as they were,
        when that loss is NaN or infinite.
        """
        batch = passes.check_batch(model, loss_fn, inputs, targets)
        if batch != self._checked_batch:   # the sizes are checked once per batch size
            if batch % self.accumulate:
                raise validation.InputError(f"accumulate must divide the batch size; got "
                                            f"accumulate={self.accumulate}, batch={batch}")
            self._check_sizes(model, batch)
            self._checked_batch = batch
        self._check_step(model, batch)
        stats = passes.running_stats_snapshot(model) if self.bn == "first-pass" else []
        self.zero_grad()
        loss, outputs = self._gradient(model, loss_fn, inputs, targets)
        self._refuse_non_finite(loss, model, stats)
        self._base_step()
        return (loss, outputs) if return_outputs else loss

    def _refuse_non_finite(self, loss: torch.Tensor, model: nn.Module | None,
                           stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Raise NonFiniteLossError when ``loss`` is not finite (on any process), after putting
        back the running statistics in ``stats`` and clearing the gradients."""
        if passes.finite_everywhere(loss, model):
            return
        passes.restore(stats)
        self.zero_grad()
        raise NonFiniteLossError(self.rule.name, float(loss))

    def _check_sizes(self, model: nn.Module, batch: int) -> None:
        """Rule-specific checks of a batch size (micro-batches), made once per batch size."""

    def _check_step(self, model: nn.Module, batch: int) -> None:
        """Rule-specific checks of a step's arguments, before any work (none by default)."""

    def _gradient(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Leave the (scaled) descent gradient in ``.grad``; return the first pass's loss, outputs."""
        losses, outputs = self._pass(model, loss_fn, inputs, targets, sync=True, first=True)
        return losses.mean(), outputs

    def _base_step(self) -> None:
        """Unscale the descent gradient once and take the base step unless it is non-finite."""
        found_inf = self.scaler.unscale_(self._parameters())
        if not found_inf:
            self.base_optimizer.step()
        self.scaler.update(found_inf)

    def _parameters(self) -> list[torch.Tensor]:
        """Every parameter of every group."""
        return [p for group in self.param_groups for p in group["params"]]

    def _pass(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
              *, sync: bool, first: bool, backward: bool = True, weights: torch.Tensor | None = None,
              chunks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward (and backward of the weighted loss) chunk by chunk; return losses and outputs.

        The backward is of ``sum_i w_i l_i`` with ``w_i = 1/B`` (the batch mean) unless
        ``weights`` are given; ``chunks`` defaults to ``accumulate``. ``first``: this is the
        step's first pass, the only one allowed to update BatchNorm running statistics (policy
        ``"first-pass"``). ``sync``: under DDP, all-reduce the gradient (on the last chunk's
        backward, as gradient accumulation does); otherwise it stays local. The loss is
        multiplied by the fp16 loss scale before backward. Returns the detached per-sample
        losses ``[B]`` (at least float32) and outputs.
        """
        count = self.accumulate if chunks is None else chunks
        batch = inputs.shape[0]
        parts = passes.split(inputs, targets, count)
        part_weights = [None] * len(parts) if weights is None else weights.chunk(count)
        losses, outputs = [], []
        frozen = not (first and self.bn == "first-pass")
        with passes.running_stats_frozen(model, frozen), torch.set_grad_enabled(backward):
            for index, ((x, y), w) in enumerate(zip(parts, part_weights)):
                last = index == len(parts) - 1
                with passes.sync_context(model, sync and last):
                    with passes.autocast_context(x.device, self.autocast_dtype):
                        out, part_losses = passes.forward_losses(model, loss_fn, x, y)
                    part_losses = passes.upcast(part_losses)
                    if backward:
                        total = part_losses.sum() / batch if w is None else (w * part_losses).sum()
                        (total * self.scaler.scale).backward()
                losses.append(part_losses.detach())
                outputs.append(out.detach())
        return torch.cat(losses), torch.cat(outputs)


class PerturbedOptimizer(RuleOptimizer):
    """Base of the rules that take their descent gradient at a perturbed point ``x + eps``."""

    rule_name: ClassVar[str] = "sam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {"ascent": ()}
    adaptive: bool = False

    def __init__(self, params: Iterable[Any], base: Any = torch.optim.SGD, *, rho: float = 0.05,
                 **kwargs: Any) -> None:
        """``rho``: the perturbation radius (SAM) or multiplier (USAM), >= 0."""
        self.rho = validation.non_negative_number("rho", rho)
        super().__init__(params, base, **kwargs)

    def _gradient(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascent gradient, perturb, descent gradient at the perturbed point, restore."""
        loss, outputs = self._ascent(model, loss_fn, inputs, targets)
        anchors = self._perturb()
        self.zero_grad()
        self._pass(model, loss_fn, inputs, targets, sync=True, first=False)
        self._restore(anchors)
        return loss, outputs

    def _ascent(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Leave the (scaled) ascent direction in ``.grad``; return the first pass's loss, outputs."""
        raise NotImplementedError

    @torch.no_grad()
    def _perturb(self, scale: float | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move every parameter with a gradient to ``x + eps``; return (parameter, old value) pairs.

        ``eps = rho d / |d|`` (normalised rules) or ``rho d`` with ``d`` the gradient divided by
        ``scale`` (default: the loss scale), plus ``weight_decay * x`` with
        ``perturb_weight_decay``, then multiplied elementwise by the rule's ``scale(x)`` if it
        has one; with ``adaptive`` (ASAM) ``eps = rho T^2 d / |T d|``, ``T = |x|`` elementwise.
        """
        adaptive = self.adaptive
        rule_scale = self.rule.scale
        inverse_scale = 1.0 / (self.scaler.scale if scale is None else scale)
        params, directions = [], []
        for group in self.param_groups:
            decay = group.get("weight_decay", 0.0) if self.perturb_weight_decay else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad * inverse_scale
                if decay:
                    d = d.add(p, alpha=decay)
                if rule_scale is not None:
                    d = scaled(rule_scale, p.detach(), d)
                if adaptive:
                    d = d * p.abs()
                params.append(p)
                directions.append(d)
        if not params:
            raise ValueError("no parameter received a gradient in the ascent pass")
        coefficient: torch.Tensor | float = self.rho
        if self.rule.normalized:
            norm = torch.nn.utils.get_total_norm(directions)
            coefficient = self.rho / norm.clamp_min(NORM_FLOOR)
        anchors = []
        for p, d in zip(params, directions):
            anchors.append((p, p.detach().clone()))
            if adaptive:
                d = d * p.abs()
            p.add_(d * coefficient)
        return anchors

    @staticmethod
    @torch.no_grad()
    def _restore(anchors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy the saved values back into the parameters."""
        for p, old in anchors:
            p.copy_(old)
