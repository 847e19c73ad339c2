"""Networks and batches as problems for the diagnostic: an ``nn.Module`` as a
:class:`~sdesam.problems.base.Problem` of its flat parameters (:class:`ModuleProblem`), the
second-order Taylor model of a problem at a point (:class:`LocalQuadratic`), and the view of a
problem whose row k holds one batch (:func:`batch_view`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from .. import per_sample, validation
from ..problems.base import Problem


class ModuleProblem(Problem):
    """Per-sample losses of an ``nn.Module`` as functions of its flat trainable parameters
    ``x [..., P]`` (``named_parameters`` order, as :mod:`sdesam.per_sample`), evaluated in
    eval mode. With ``rows=True`` the data carry a leading row dimension matching ``x``'s
    (``inputs [K, n, ...]`` for ``x [K, P]``): row k is the network on its own batch.
    Per-sample gradients differentiate each sample's loss alone, as a batch of one (as
    :mod:`sdesam.per_sample`; eval mode makes it the sample's loss in the batch)."""

    def __init__(self, model: nn.Module, loss_fn: per_sample.LossFn, inputs: torch.Tensor,
                 targets: torch.Tensor, *, rows: bool = False,
                 parent: "ModuleProblem | None" = None) -> None:
        params = per_sample.trainable_parameters(model)
        if not params:
            raise validation.InputError("model has no parameter that requires grad")
        if parent is None:  # a batch view holds rows of its parent's data, already checked
            validation.finite_tensor("inputs", inputs)
            validation.finite_tensor("targets", targets)
        self.model, self.loss_fn, self.rows, self.parent = model, loss_fn, rows, parent
        self.inputs, self.targets = inputs, targets
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.constants.update(dict(model.named_buffers()))
        self.n = int(inputs.shape[1] if rows else inputs.shape[0])
        self.dim = sum(self.sizes)

    def point(self) -> torch.Tensor:
        """The model's current parameters as one flat vector ``[P]``."""
        return torch.cat([p.detach().reshape(-1) for p in per_sample.trainable_parameters(self.model).values()])

    def _params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat parameters ``theta [P]`` as the model's trainable tensors, by name."""
        pieces = theta.split(self.sizes)
        return {n: piece.reshape(s) for n, piece, s in zip(self.names, pieces, self.shapes)}

    def _losses_one(self, theta: torch.Tensor, inputs: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``[n]`` of the network with flat parameters ``theta [P]``."""
        outputs = functional_call(self.model, (self._params(theta), self.constants), (inputs,))
        return self.loss_fn(outputs, targets)

    def _sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The 0-dim loss of one sample ``(x, y)`` at flat parameters ``theta [P]``."""
        return per_sample.sample_loss(self.model, self.loss_fn, self._params(theta),
                                      self.constants, x, y)

    def _grads_one(self, theta: torch.Tensor, inputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients ``[n, P]`` at flat parameters ``theta [P]``: each sample's loss
        differentiated alone (``vmap`` over samples of ``grad``, as :mod:`sdesam.per_sample`)."""
        per_sample_grad = vmap(torch.func.grad(self._sample_loss), in_dims=(None, 0, 0))
        return per_sample_grad(theta, inputs, targets)

    def _per_point(self, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                   x: torch.Tensor) -> torch.Tensor:
        """``fn(theta, inputs, targets)`` at every point of ``x`` in eval mode: ``x [..., P]``
        on the shared data, or (rows) ``x [K, P]`` with row k on its own batch."""
        self._check_point(x)
        with per_sample._eval_mode(self.model):
            if self.rows:
                if x.dim() != 2 or x.shape[0] != self.inputs.shape[0]:
                    raise validation.InputError(
                        f"x must have shape [{self.inputs.shape[0]}, {self.dim}], one point per "
                        f"row of the data; got {tuple(x.shape)}")
                return vmap(fn)(x, self.inputs, self.targets)
            flat = x.reshape(-1, self.dim)
            out = vmap(fn, in_dims=(0, None, None))(flat, self.inputs, self.targets)
            return out.reshape(*x.shape[:-1], *out.shape[1:])

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``f_i(x)``: ``[..., P] -> [..., n]`` (rows: ``[K, P] -> [K, n]``)."""
        return self._per_point(self._losses_one, x)

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``grad f_i(x)``: ``[..., P] -> [..., n, P]`` (rows: ``[K, P] -> [K, n, P]``). Each
        sample's gradient comes from its own loss, so the cost is linear in n (the base class's
        Jacobian of all n losses costs n^2); the Hessian-vector map of
        :meth:`sample_grads_with_hvp` is one VJP through this."""
        return self._per_point(self._grads_one, x)

    def grad(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean gradient over ``idx``; ``None`` is the full data (the parent's, for a batch view)."""
        if idx is None and self.parent is not None:
            return self.parent.grad(x)
        return super().grad(x, idx)

    def restrict(self, idx: torch.Tensor) -> "ModuleProblem":
        """Row k: the network on the samples ``idx[k]`` (``idx [K, B]`` into the full data)."""
        return ModuleProblem(self.model, self.loss_fn, self.inputs[idx], self.targets[idx],
                             rows=True, parent=self)


class LocalQuadratic(Problem):
    """The second-order Taylor model at ``x0`` of every per-sample loss of ``problem``:
    ``f_i(x0) + g_i . dx + dx^T H_i dx / 2``. Its gradients and Hessians at ``x0`` are the
    problem's, so every rule's ``G0`` and ``G1`` (which need no more) are exactly the
    problem's; evaluated in closed form, it makes the diagnosis of small problems cheap.
    Per-sample Hessians ``[N, d, d]`` are formed, so keep it to small d."""

    def __init__(self, problem: Problem, x0: torch.Tensor) -> None:
        self.n, self.dim = problem.n, problem.dim
        self.x0 = x0.detach()
        self.values = problem.sample_losses(self.x0).detach()
        self.grads = problem.sample_grads(self.x0).detach()                      # [N, d]
        self.hessians = torch.func.jacfwd(problem.sample_grads)(self.x0).detach()  # [N, d, d]

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """The quadratic models ``[..., N]``."""
        dx = x - self.x0
        curvature = torch.einsum("...d,nde,...e->...n", dx, self.hessians, dx)
        return self.values + dx @ self.grads.T + curvature / 2

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``g_i + H_i dx``: ``[..., N, d]``."""
        return self.grads + torch.einsum("nde,...e->...nd", self.hessians, x - self.x0)

    def weighted_grad(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i (g_i + H_i dx)``: ``[..., d]``."""
        return (weights @ self.grads
                + torch.einsum("...n,nde,...e->...d", weights, self.hessians, x - self.x0))


class _BatchView(Problem):
    """Row k of ``x [K, d]``: the samples ``idx[k]`` of ``parent`` (``n = B``); ``grad(x, None)``
    stays the parent's full-data gradient."""

    def __init__(self, parent: Problem, idx: torch.Tensor) -> None:
        self.parent, self.idx = parent, idx
        self.n, self.dim = int(idx.shape[-1]), parent.dim

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``f_{idx[k, b]}(x_k)``: ``[K, d] -> [K, B]``."""
        return self.parent.sample_losses(x).gather(-1, self.idx)

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients of the batch: ``[K, B, d]``."""
        grads = self.parent.sample_grads(x)
        return grads.gather(-2, self.idx.unsqueeze(-1).expand(*self.idx.shape, self.dim))

    def weighted_grad(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_b w_b grad f_{idx[k, b]}(x_k)`` through the parent's ``weighted_grad``."""
        spread = torch.zeros(*self.idx.shape[:-1], self.parent.n, dtype=weights.dtype,
                             device=weights.device)
        return self.parent.weighted_grad(x, spread.scatter_add(-1, self.idx, weights))

    def grad(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean gradient over ``idx`` (positions in the batch); ``None``: the parent's full data."""
        return self.parent.grad(x) if idx is None else super().grad(x, idx)


def batch_view(problem: Problem, idx: torch.Tensor) -> Problem:
    """The problem whose row k holds the batch ``idx[k]`` of ``problem`` (``idx [K, B]``)."""
    if isinstance(problem, ModuleProblem):
        return problem.restrict(idx)
    return _BatchView(problem, idx)
