"""m-SAM and m-USAM: every micro-batch of size m perturbed along its own gradient, vectorised.

    G = (1/J) sum_j grad f_{I_j}(x + rho g_j/|g_j|),  g_j = grad f_{I_j}(x),  J = B/m

(m-USAM: ``rho g_j``). The micro-batches are processed in groups with ``torch.func``
(``functional_call`` + ``vmap(grad)``): per group, one vmapped forward/backward at x gives its
g_j and one at its perturbed points the descent gradients; there is no Python loop over the
micro-batches of a group. A group of c micro-batches holds c copies of the parameters and
gradients at once, so the groups are sized by a memory budget (``vmap_budget_mb``) and hold
at least :data:`MIN_VMAP_GROUP` micro-batches; otherwise the micro-batches run one by one
(which wins for large models and for few micro-batches); ``accumulate`` further
splits the batch into chunks of whole micro-batches.

BatchNorm: each micro-batch is normalised with its own statistics (as on a device whose batch
is the micro-batch). Under ``bn="first-pass"`` the running statistics are updated once per
step (per chunk with accumulation) by the pass at x, with the average over micro-batches of
their updates: ``r <- (1 - momentum) r + momentum * mean_j stat_j``. Dropout draws
independent masks per micro-batch.

``micro == batch`` is SAM with a local perturbation: under DistributedDataParallel with
``micro`` = the per-device batch, the ascent pass runs under ``no_sync`` (no communication)
and the descent gradient is all-reduced by DDP's backward. For smaller m the vmapped passes
run on the module inside DDP and the averaged descent gradient is all-reduced explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call, grad, vmap

from sdesam import validation
from sdesam.algorithms import check_keywords, check_sizes, scaled
from sdesam.optim import passes
from sdesam.optim.base import NORM_FLOOR, PerturbedOptimizer
from sdesam.optim.passes import LossFn

Tensors = dict[str, torch.Tensor]


DEFAULT_VMAP_BUDGET_MB = 64.0
"""Default memory for the per-micro-batch parameter copies of one vmapped pass, in MiB."""

MIN_VMAP_GROUP = 8
"""The fewest micro-batches a vmapped pass takes: below, vmap's fixed cost outweighs what it
saves and the micro-batches run one by one. Measured on the small CNN, batch 32, one CPU
thread, vmapped / sequential per step (median of 25 paired rounds, 95% CI): 1.10 [1.08, 1.12]
with 2 micro-batches a pass, 1.00 [0.99, 1.03] with 4, 0.85 [0.82, 0.88] with 8, 0.70 with
16, 0.69 with 32 (``experiments/benchmarks/bench_vmap_group-small.txt``)."""

PARAMETER_COPIES = 3
"""Parameter-sized tensors a vmapped pass holds per micro-batch: its ascent gradient, its
perturbed point and its descent gradient."""


class MSAM(PerturbedOptimizer):
    """m-SAM with micro-batch size ``micro`` (must divide the batch), vectorised over micro-batches.

    ``vmap_budget_mb``: the memory (MiB) the parameter copies of one vmapped pass may take;
    the micro-batches run in groups of :meth:`vmap_group` = ``budget / (3 * parameter
    bytes)`` of them (at most all; below :data:`MIN_VMAP_GROUP`, one at a time: a plain
    sequential loop over micro-batches on the module itself, see :meth:`_sequential_pass`).
    The default, 64 MiB, vmaps every micro-batch of a small CNN (0.1 M parameters, 1.2 MB per
    micro-batch) at once when there are at least :data:`MIN_VMAP_GROUP` of them, and runs
    ResNet-18 (11 M parameters, 134 MB) micro-batch by micro-batch, where vmap's
    per-micro-batch copies cost more than they save. Every grouping
    gives the same step up to floating-point summation order.
    """

    rule_name: ClassVar[str] = "m-sam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {
        "ascent": ("part",), "micro": (True,), "normalized": (True,), "scaled": (False, True)}
    options: ClassVar[tuple[str, ...]] = ("vmap_budget_mb",)
    min_vmap_group: int = MIN_VMAP_GROUP
    """The fewest micro-batches one vmapped pass takes (an instance may set its own, e.g. a
    benchmark timing vmap at every group size)."""

    def __init__(self, params: Iterable[Any], base: Any = torch.optim.SGD, *, rho: float = 0.05,
                 micro: int | None = None, vmap_budget_mb: float = DEFAULT_VMAP_BUDGET_MB,
                 **kwargs: Any) -> None:
        """``micro``: the micro-batch size m; ``vmap_budget_mb``: see the class docstring."""
        self.vmap_budget_mb = validation.non_negative_number("vmap_budget_mb", vmap_budget_mb)
        super().__init__(params, base, rho=rho, **kwargs)
        check_keywords(self.rule, micro=micro)
        self.micro = validation.positive_int("micro", micro)

    def vmap_group(self, micro_count: int) -> int:
        """How many of ``micro_count`` micro-batches one vmapped pass takes under the budget."""
        parameter_bytes = sum(p.numel() * p.element_size() for p in self._parameters()
                              if p.requires_grad)
        fits = int(self.vmap_budget_mb * 2**20 // max(PARAMETER_COPIES * parameter_bytes, 1))
        group = min(micro_count, fits)
        return group if group >= self.min_vmap_group else 1

    def _check_sizes(self, model: nn.Module, batch: int) -> None:
        """micro must divide the batch and, when smaller, each accumulation chunk."""
        check_sizes(self.rule, batch, self.micro)
        passes.check_micro_chunks(batch, self.accumulate, self.micro)

    def _check_step(self, model: nn.Module, batch: int) -> None:
        """The vmapped pass (micro < batch) cannot run BatchNorm under CPU autocast."""
        if self.micro == batch or self.autocast_dtype is None:
            return
        module = passes.unwrap(model)
        device = next(module.parameters()).device
        if (self.autocast_dtype is not None and device.type == "cpu"
                and any(layer.training for layer in passes.batch_norms(module))):
            raise validation.InputError(
                f"autocast_dtype: {self.rule.name}'s vmapped pass does not support BatchNorm "
                "under CPU autocast; use a GroupNorm model or autocast_dtype=None on CPU"
            )

    def _ascent(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """micro == batch: the batch gradient, kept local under DDP (``no_sync``)."""
        losses, outputs = self._pass(model, loss_fn, inputs, targets, sync=False, first=True)
        return losses.mean(), outputs

    def _gradient(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch per batch: plain local SAM; otherwise the vmapped passes."""
        if self.micro == inputs.shape[0]:
            return super()._gradient(model, loss_fn, inputs, targets)
        module = passes.unwrap(model)
        micro_count = inputs.shape[0] // self.micro
        losses, outputs = [], []
        for x, y in passes.split(inputs, targets, self.accumulate):
            part_losses, part_outputs = self._micro_batch_pass(module, loss_fn, x, y, micro_count)
            losses.append(part_losses)
            outputs.append(part_outputs)
        if passes.is_distributed(model):
            _all_reduce_mean([p.grad for p in self._parameters() if p.grad is not None])
        return torch.cat(losses).mean(), torch.cat(outputs)

    def _micro_batch_pass(self, module: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                          targets: torch.Tensor, micro_count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascent and descent of the chunk's micro-batches; add ``sum_j G_j / micro_count`` to ``.grad``.

        The micro-batches run in groups of :meth:`vmap_group`, one vmapped ascent and one
        vmapped descent pass per group; every group starts from the same running statistics.
        """
        count = inputs.shape[0] // self.micro
        group = self.vmap_group(count)
        if group == 1:
            return self._sequential_pass(module, loss_fn, inputs, targets, micro_count)
        sizes = [min(group, count - start) for start in range(0, count, group)]
        stats = [self._batched_running_stats(module, size) for size in sizes]
        params, decay, constants = self._split_state(module, exclude=stats[0])
        shape = (-1, self.micro)
        xs = inputs.reshape(*shape, *inputs.shape[1:]).split(group)
        ys = targets.reshape(*shape, *targets.shape[1:]).split(group)
        scale = self.scaler.scale

        def micro_loss(theta: Tensors, running: Tensors, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            outputs = functional_call(module, (theta, running, constants), (x,))
            losses = passes.upcast(loss_fn(outputs, y))
            return losses.mean() * scale, (losses, outputs)

        total: Tensors = {}
        losses, outputs = [], []
        with passes.autocast_context(inputs.device, self.autocast_dtype):
            for x, y, running in zip(xs, ys, stats):
                with passes.running_stats_frozen(module, frozen=not running):
                    ascent, (group_losses, group_outputs) = _mapped(
                        micro_loss, (None, 0, 0, 0), (params, running, x, y))
                points = self._perturbed_points(params, ascent, decay, scale)
                del ascent  # the group's gradient copies: free them before the descent pass
                with passes.running_stats_frozen(module):
                    descent, _ = _mapped(micro_loss, (0, None, 0, 0), (points, {}, x, y))
                del points
                for name, g in descent.items():
                    summed = g.sum(dim=0)
                    total[name] = summed if name not in total else total[name].add_(summed)
                losses.append(group_losses.detach())
                outputs.append(group_outputs.detach())
        self._write_running_stats(module, {name: torch.cat([s[name] for s in stats])
                                           for name in stats[0]})
        for name, p in module.named_parameters():
            if name in total:
                g = total[name].div_(micro_count)
                p.grad = g if p.grad is None else p.grad.add_(g)
        losses_all, outputs_all = torch.cat(losses), torch.cat(outputs)
        return losses_all.reshape(-1), outputs_all.reshape(-1, *outputs_all.shape[2:])

    def _sequential_pass(self, module: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                         targets: torch.Tensor, micro_count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's micro-batches one by one (no vmap, no per-micro-batch parameter copies).

        Per micro-batch: the ascent gradient at x on the module itself; the perturbed point
        ``x + eps_j`` written into one spare tensor per parameter (allocated once per chunk);
        the descent gradient there through ``functional_call``; its share added to ``.grad``.
        The module's parameters are never modified, so nothing is restored and x stays exact.
        Per micro-batch that is three parameter-sized operations (the norm of the direction,
        a fused ``x + c d``, a fused ``grad += g / J``) against five for a loop that scales,
        perturbs and restores in place (the loop of ``experiments/benchmarks/bench_train.py``).

        BatchNorm running statistics as in the vmapped passes: every micro-batch's first pass
        starts from the same statistics, and the module keeps the mean of their updates.
        """
        groups = {id(p): group for group in self.param_groups for p in group["params"]}
        named = [(name, p) for name, p in module.named_parameters()
                 if p.requires_grad and id(p) in groups]
        params = [p for _, p in named]
        decays = [groups[id(p)].get("weight_decay", 0.0) if self.perturb_weight_decay else 0.0
                  for p in params]
        spare = {name: torch.empty_like(p, memory_format=torch.preserve_format).requires_grad_()
                 for name, p in named}
        points = list(spare.values())
        stats = self._batched_running_stats(module, 1)
        buffers = dict(module.named_buffers())
        start = {name: buffers[name].clone() for name in stats}
        updates: dict[str, list[torch.Tensor]] = {name: [] for name in stats}
        scale = self.scaler.scale
        share = 1.0 / micro_count
        losses, outputs = [], []
        for x, y in zip(inputs.split(self.micro), targets.split(self.micro)):
            with passes.running_stats_frozen(module, frozen=not stats), \
                    passes.autocast_context(x.device, self.autocast_dtype), torch.enable_grad():
                out, micro_losses = passes.forward_losses(module, loss_fn, x, y)
                micro_losses = passes.upcast(micro_losses)
                ascent = torch.autograd.grad(micro_losses.mean() * scale, params,
                                             materialize_grads=True)
            with torch.no_grad():
                for name in stats:
                    updates[name].append(buffers[name].clone())
                    buffers[name].copy_(start[name])
                directions = [self._direction(p, g, decay, scale)
                              for p, g, decay in zip(params, ascent, decays)]
                del ascent
                if self.rule.normalized:
                    norm = torch.nn.utils.get_total_norm(directions)
                    coefficient = self.rho / norm.clamp_min(NORM_FLOOR)
                    for p, d, point in zip(params, directions, points):
                        torch.addcmul(p, d, coefficient, out=point)
                else:
                    for p, d, point in zip(params, directions, points):
                        torch.add(p, d, alpha=self.rho, out=point)
                del directions
            with passes.running_stats_frozen(module), \
                    passes.autocast_context(x.device, self.autocast_dtype), torch.enable_grad():
                descent_out = functional_call(module, spare, (x,), strict=False)
                descent_losses = passes.upcast(loss_fn(descent_out, y))
                descent = torch.autograd.grad(descent_losses.mean() * scale, points,
                                              materialize_grads=True)
            with torch.no_grad():
                for p, g in zip(params, descent):
                    if p.grad is None:
                        p.grad = g.mul_(share)
                    else:
                        p.grad.add_(g, alpha=share)
            losses.append(micro_losses.detach())
            outputs.append(out.detach())
        self._write_running_stats(module, {name: torch.stack(values) for name, values in updates.items()})
        return torch.cat(losses), torch.cat(outputs)

    def _direction(self, param: torch.Tensor, ascent: torch.Tensor, decay: float,
                   scale: float) -> torch.Tensor:
        """The ascent direction of one parameter tensor before normalisation: the gradient
        unscaled, plus ``decay * x`` (``perturb_weight_decay``), times the rule's elementwise
        ``scale(x)``; ``ascent`` may carry a leading micro-batch dimension."""
        d = ascent / scale if scale != 1 else ascent
        if decay:
            d = d + decay * param
        if self.rule.scale is not None:
            d = scaled(self.rule.scale, param, d)
        return d

    def _split_state(self, module: nn.Module, exclude: Tensors) -> tuple[Tensors, Tensors, Tensors]:
        """Trainable parameters this optimizer updates, their perturbation weight decay, constants.

        Returns (params, decay, constants): detached parameters by name, the weight decay
        added to the ascent direction of each (``perturb_weight_decay``), and every other
        parameter and buffer except those named in ``exclude`` (the batched running statistics).
        """
        groups = {id(p): group for group in self.param_groups for p in group["params"]}
        params: Tensors = {}
        decay: Tensors = {}
        constants: Tensors = {}
        for name, p in module.named_parameters():
            if p.requires_grad and id(p) in groups:
                params[name] = p.detach()
                if self.perturb_weight_decay:
                    decay[name] = groups[id(p)].get("weight_decay", 0.0)
            else:
                constants[name] = p.detach()
        constants.update({name: b for name, b in module.named_buffers() if name not in exclude})
        return params, decay, constants

    def _batched_running_stats(self, module: nn.Module, micro_count: int) -> Tensors:
        """One copy per micro-batch of the running statistics the first pass may update.

        Empty unless ``bn="first-pass"`` and some BatchNorm layer is in train mode.
        """
        if self.bn != "first-pass":
            return {}
        stats: Tensors = {}
        tracking = set(passes.batch_norms(module))
        for prefix, layer in module.named_modules():
            if layer in tracking and layer.training:
                for name, buffer in layer.named_buffers(recurse=False):
                    full = f"{prefix}.{name}" if prefix else name
                    stats[full] = buffer.unsqueeze(0).expand(micro_count, *buffer.shape).clone()
        return stats

    @staticmethod
    @torch.no_grad()
    def _write_running_stats(module: nn.Module, stats: Tensors) -> None:
        """Average the micro-batches' updated statistics into the module's buffers."""
        if not stats:
            return
        buffers = dict(module.named_buffers())
        for name, copies in stats.items():
            if name.endswith("num_batches_tracked"):
                buffers[name].copy_(copies[0])
            else:
                buffers[name].copy_(copies.mean(dim=0))

    @torch.no_grad()
    def _perturbed_points(self, params: Tensors, ascent: Tensors, decay: Tensors,
                          scale: float) -> Tensors:
        """``x + eps_j`` per micro-batch, ``eps_j = rho d_j/|d_j|`` (or ``rho d_j`` for m-USAM),
        ``d_j`` multiplied elementwise by the rule's ``scale(x)`` if it has one."""
        directions = {name: self._direction(params[name], g, decay.get(name, 0.0), scale)
                      for name, g in ascent.items()}
        micro_count = next(iter(directions.values())).shape[0]
        first = next(iter(params.values()))
        coefficient = torch.full((micro_count,), self.rho, device=first.device, dtype=first.dtype)
        if self.rule.normalized:
            squares = sum(d.reshape(micro_count, -1).pow(2).sum(dim=1) for d in directions.values())
            coefficient = coefficient / squares.sqrt().clamp_min(NORM_FLOOR)
        return {
            name: params[name] + coefficient.view(-1, *[1] * params[name].ndim) * d
            for name, d in directions.items()
        }


class MUSAM(MSAM):
    """m-USAM: each micro-batch perturbed by ``rho g_j`` (unnormalised)."""

    rule_name: ClassVar[str] = "m-usam"
    handles: ClassVar[dict[str, tuple[Any, ...]]] = {
        "ascent": ("part",), "micro": (True,), "normalized": (False,), "scaled": (False, True)}


def _mapped(loss: Callable[..., Any], in_dims: tuple[int | None, ...], args: tuple[Any, ...]) -> Any:
    """``vmap(grad(loss))``: the gradient of ``loss`` in its first argument (and its auxiliary
    outputs) for each entry of the leading dimension of the mapped arguments."""
    return vmap(grad(loss, has_aux=True), in_dims=in_dims, randomness="different")(*args)


def _all_reduce_mean(grads: list[torch.Tensor]) -> None:
    """Average ``grads`` over the processes of the default group, in one flat all-reduce."""
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
