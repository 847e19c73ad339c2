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
from sdesam.algorithms import FACTS, RULE_KEYWORDS, Rule, check_keywords, get_rule, rule_names
from sdesam.optim.base import RuleOptimizer
from sdesam.optim.msam import MSAM, MUSAM
from sdesam.optim.rwsam import RWSAM
from sdesam.optim.sam import NSAM, NUSAM, SAM, USAM, SGDRule

IMPLEMENTATIONS: tuple[type[RuleOptimizer], ...] = (SGDRule, SAM, USAM, NSAM, NUSAM, MSAM, MUSAM, RWSAM)
"""The optimizer classes; a rule the optimizer layer implements matches exactly one of them."""

LAYER = "the optimizers (sdesam.optim)"


def supports(rule: Rule) -> str | None:
    """None when exactly one optimizer class implements ``rule`` (the optimizer layer's
    declaration: the union of the classes' :attr:`~sdesam.optim.base.RuleOptimizer.handles`),
    else why not: the fact the nearest class lacks, or the classes that all claim it."""
    missing = [(cls, cls.declaration().missing(rule)) for cls in IMPLEMENTATIONS]
    matches = [cls.__name__ for cls, facts in missing if not facts]
    if len(matches) == 1:
        return None
    if matches:
        return f"several classes claim it ({', '.join(matches)}); their handles must not overlap"
    # the nearest class: fewest missing facts, then the latest first missing fact (the class
    # that agrees on the most basic facts)
    cls, facts = min(missing, key=lambda item: (len(item[1]), -FACTS.index(item[1][0])))
    return (f"{cls.declaration().describe(rule, facts[0])} (no class implements it; nearest: "
            f"{cls.__name__})")


def optimizer_names() -> tuple[str, ...]:
    """The names :func:`create` accepts: the registered rules the optimizer layer implements."""
    return rule_names(lambda rule: supports(rule) is None)


def implementation(rule: Rule | str) -> type[RuleOptimizer]:
    """The class that implements ``rule``, chosen from its facts; an InputError naming the rule
    and the fact no class implements otherwise."""
    rule = get_rule(rule)
    reason = supports(rule)
    if reason is not None:
        raise validation.InputError(f"{LAYER} do not implement rule {rule.name!r}: {reason}")
    return next(cls for cls in IMPLEMENTATIONS if cls.supports(rule))


def __getattr__(name: str) -> Any:
    """``OPTIMIZERS``: the name -> class map of every optimizer rule, read at access time."""
    if name == "OPTIMIZERS":
        return {rule: implementation(rule) for rule in optimizer_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create(rule: Rule | str, params: Iterable[Any], base: Any = torch.optim.SGD,
           **kwargs: Any) -> RuleOptimizer:
    """The optimizer of ``rule`` (a registered name or any :class:`~sdesam.algorithms.Rule` the
    optimizer layer implements, registered or not) over ``params``, wrapping ``base``.

    ``kwargs`` are the rule's keywords (``rho``, ``micro``, ``lam``, ``delta``: checked by
    :func:`sdesam.algorithms.check_keywords` -- one the rule does not accept is an error naming
    it, and ``micro`` is required by the m-rules; None means not given), the class's own
    (``bn``, ``autocast_dtype``, ``accumulate``, ``vmap_budget_mb``, ...; :func:`class_options`)
    and the base optimizer's (``lr``, ``momentum``, ``weight_decay``, ...).
    """
    rule = get_rule(rule)
    cls = implementation(rule)
    given = {word: kwargs.pop(word) for word in RULE_KEYWORDS if word in kwargs}
    check_keywords(rule, **{"micro": None, **given})
    kwargs.update({word: value for word, value in given.items() if value is not None})
    return cls(params, base, rule=rule, **kwargs)


def class_options(rule: Rule | str) -> tuple[str, ...]:
    """The keywords of the class that implements ``rule`` beyond every rule's own (e.g.
    ``ascent_data`` for the full-gradient ascent, ``local_perturbation`` for the reweighted
    rules: :attr:`~sdesam.optim.base.RuleOptimizer.options`), so a trainer knows what to pass
    without reading the rule's ascent."""
    return implementation(rule).options
