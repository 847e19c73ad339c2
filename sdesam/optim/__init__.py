"""SAM-family optimizers for ``nn.Module`` training, one interface for every rule.

::

    opt = create("rw-sam", model.parameters(), base=torch.optim.SGD, rho=0.05, lam=1.0,
                 lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss = opt.step(model, loss_fn, inputs, targets)   # loss_fn -> per-sample losses [B]

A step whose batch loss is NaN or infinite raises :class:`NonFiniteLossError` and changes
nothing (parameters, optimizer state, BatchNorm statistics).

Modules: :mod:`~sdesam.optim.base` (the wrapper of a base optimizer and the perturb /
restore frame), :mod:`~sdesam.optim.passes` (BatchNorm policy, DDP, autocast, chunks),
:mod:`~sdesam.optim.scaler` (fp16 loss scaling), :mod:`~sdesam.optim.sam` (SGD, SAM, USAM,
n-SAM), :mod:`~sdesam.optim.msam` (vectorised m-SAM), :mod:`~sdesam.optim.rwsam` (RW-SAM and
its gradient-norm estimator), :mod:`~sdesam.optim.registry` (:func:`create`, which builds
every registered rule the classes implement, user-registered ones included, choosing the
class from the rule's facts; :func:`supports` is the layer's declaration).
"""

from sdesam.optim.base import NonFiniteLossError, PerturbedOptimizer, RuleOptimizer
from sdesam.optim.msam import MSAM, MUSAM
from sdesam.optim.passes import BN_POLICIES
from sdesam.optim.registry import class_options, create, implementation, optimizer_names, supports
from sdesam.optim.rwsam import DEFAULT_DELTA, DEFAULT_LAM, RWSAM, estimate_grad_norms, gibbs_weights
from sdesam.optim.sam import NSAM, NUSAM, SAM, USAM, SGDRule

__all__ = [
    "BN_POLICIES", "DEFAULT_DELTA", "DEFAULT_LAM", "MSAM", "MUSAM", "NSAM", "NUSAM", "OPTIMIZERS",
    "NonFiniteLossError", "RWSAM", "SAM", "SGDRule", "USAM", "PerturbedOptimizer", "RuleOptimizer",
    "class_options", "create", "estimate_grad_norms", "gibbs_weights", "implementation",
    "optimizer_names", "supports",
]


def __getattr__(name: str) -> object:
    """``OPTIMIZERS``: the name -> class map of every registered optimizer rule, read at access."""
    if name == "OPTIMIZERS":
        from sdesam.optim import registry

        return registry.OPTIMIZERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
