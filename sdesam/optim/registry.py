"""The rules by name: ``create("rw-sam", model.parameters(), base=torch.optim.SGD, ...)``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sdesam.algorithms import get_rule
from sdesam.optim.base import RuleOptimizer
from sdesam.optim.msam import MSAM, MUSAM
from sdesam.optim.rwsam import RWSAM
from sdesam.optim.sam import NSAM, NUSAM, SAM, USAM, SGDRule

OPTIMIZERS: dict[str, type[RuleOptimizer]] = {
    cls.rule_name: cls for cls in (SGDRule, SAM, USAM, NSAM, NUSAM, MSAM, MUSAM, RWSAM)
}


def create(name: str, params: Iterable[Any], base: Any = torch.optim.SGD, **kwargs: Any) -> RuleOptimizer:
    """The optimizer of rule ``name`` (the names of :data:`sdesam.algorithms.RULES`) over ``params``.

    ``kwargs`` are the rule's keywords (rho, micro, lam, delta, bn, autocast_dtype, ...) and
    the base optimizer's (lr, momentum, weight_decay, ...).
    """
    return OPTIMIZERS[get_rule(name).name](params, base, **kwargs)
