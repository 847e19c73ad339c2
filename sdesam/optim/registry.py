"""Every registered rule as an optimizer: ``create("rw-sam", model.parameters(), base=..., ...)``.

The class that runs a rule is chosen from the rule's facts (its ascent, normalisation and
micro-batches: each class's :attr:`~sdesam.optim.base.RuleOptimizer.handles`), never from its
name, so a rule registered with :func:`sdesam.algorithms.register` -- an elementwise-scaled
USAM, say -- is built like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sdesam import validation
from sdesam.algorithms import RULE_KEYWORDS, Rule, check_keywords, get_rule, rule_names
from sdesam.optim.base import RuleOptimizer
from sdesam.optim.msam import MSAM, MUSAM
from sdesam.optim.rwsam import RWSAM
from sdesam.optim.sam import NSAM, NUSAM, SAM, USAM, SGDRule

IMPLEMENTATIONS: tuple[type[RuleOptimizer], ...] = (SGDRule, SAM, USAM, NSAM, NUSAM, MSAM, MUSAM, RWSAM)
"""The optimizer classes; each registered rule's facts match exactly one of them."""


def optimizer_names() -> tuple[str, ...]:
    """The names :func:`create` accepts: the registered rules with ``optimizer=True``."""
    return rule_names(lambda rule: rule.optimizer)


def implementation(rule: Rule | str) -> type[RuleOptimizer]:
    """The class that implements ``rule``, chosen from its facts."""
    rule = get_rule(rule)
    matches = [cls for cls in IMPLEMENTATIONS if cls.supports(rule)]
    if len(matches) != 1:
        raise validation.InputError(
            f"rule {rule.name!r} (ascent {rule.ascent!r}, normalized {rule.normalized}, micro "
            f"{rule.micro}) matches {len(matches)} optimizer classes, not one")
    return matches[0]


def __getattr__(name: str) -> Any:
    """``OPTIMIZERS``: the name -> class map of every optimizer rule, read at access time."""
    if name == "OPTIMIZERS":
        return {rule: implementation(rule) for rule in optimizer_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create(rule: Rule | str, params: Iterable[Any], base: Any = torch.optim.SGD,
           **kwargs: Any) -> RuleOptimizer:
    """The optimizer of ``rule`` (a registered name or a :class:`~sdesam.algorithms.Rule` with
    ``optimizer=True``) over ``params``, wrapping ``base``.

    ``kwargs`` are the rule's keywords (``rho``, ``micro``, ``lam``, ``delta``: checked against
    ``rule.keywords`` -- one the rule does not accept is an error naming it, and ``micro`` is
    required by the m-rules; None means not given), the class's own (``bn``,
    ``autocast_dtype``, ``accumulate``, ``vmap_budget_mb``, ...) and the base optimizer's
    (``lr``, ``momentum``, ``weight_decay``, ...).
    """
    rule = get_rule(rule)
    if not rule.optimizer:
        raise validation.InputError(
            f"rule {rule.name!r} has no optimizer (optimizer=False); optimizer rules: "
            f"{', '.join(optimizer_names())}")
    given = {word: kwargs.pop(word) for word in RULE_KEYWORDS if word in kwargs}
    check_rule_keywords(rule, **given)
    kwargs.update({word: value for word, value in given.items() if value is not None})
    return implementation(rule)(params, base, rule=rule, **kwargs)


def check_rule_keywords(rule: Rule | str, **given: Any) -> Rule:
    """Refuse every rule keyword in ``given`` (``rho``, ``micro``, ``lam``, ``delta``; None means
    not given) that ``rule`` does not take, read from ``rule.keywords``, and a missing ``micro``
    for a rule with micro-batches: the one check of :func:`create` and of the trainer's settings."""
    rule = check_keywords(rule, **{"micro": None, **given})
    if given.get("rho") is not None and "rho" not in rule.keywords:
        raise validation.InputError(f"rho is not accepted by {rule.name!r} (it has no perturbation; "
                                    f"it accepts: {', '.join(rule.keywords) or 'no rule keywords'})")
    return rule
