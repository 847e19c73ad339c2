"""Which layer runs which rule, read from the layers' own declarations.

Every layer that runs rules declares the rule facts it implements (an
:class:`sdesam.algorithms.Support`) and answers ``supports(rule) -> None | reason``:

=========  ================================================  ==========================================
layer      module                                            what it does with a rule
=========  ================================================  ==========================================
symbolic   :mod:`sdesam.symbolic.derivation`                 derives its SDE (:func:`~sdesam.symbolic.derive`)
ensemble   :mod:`sdesam.simulation.ensemble`                 runs chains of its discrete steps
sde        :mod:`sdesam.simulation.sde`                      the hand-written first-order SDE
compiled   :mod:`sdesam.simulation.derived_sde`              the SDE compiled from its derivation
implicit   :mod:`sdesam.implicit`                            the implicit-regularisation diagnostic
optimizer  :mod:`sdesam.optim.registry`                      a ``torch.optim`` optimizer for networks
=========  ================================================  ==========================================

Everything else -- whether a rule has a hand-written SDE or an optimizer, the command line's
choice lists -- is read from these answers (:func:`support`, :func:`rules_for`), never set by
hand on the rule (a rule says what it is, each layer what it runs; :mod:`sdesam.algorithms`
imports no layer). A layer's module is imported on first use.
"""

from __future__ import annotations

import importlib

from .algorithms import Rule, get_rule, rule_names
from .validation import InputError

LAYERS: dict[str, str] = {
    "symbolic": "sdesam.symbolic.derivation",
    "ensemble": "sdesam.simulation.ensemble",
    "sde": "sdesam.simulation.sde",
    "compiled": "sdesam.simulation.derived_sde",
    "implicit": "sdesam.implicit",
    "optimizer": "sdesam.optim.registry",
}
"""Each layer's name and the module whose ``supports(rule)`` declares what it implements."""


def support(layer: str, rule: "Rule | str") -> str | None:
    """None when ``layer`` implements every fact of ``rule``, else the one-line reason it does not."""
    if layer not in LAYERS:
        raise InputError(f"layer must be one of {', '.join(LAYERS)}; got {layer!r}")
    return importlib.import_module(LAYERS[layer]).supports(get_rule(rule))


def rules_for(layer: str) -> tuple[str, ...]:
    """The registered rules ``layer`` implements, in registration order (a choice list)."""
    return rule_names(lambda rule: support(layer, rule) is None)


def matrix(names: "tuple[str, ...] | None" = None) -> dict[str, dict[str, str | None]]:
    """``{rule: {layer: None | reason}}`` for the registered rules (or ``names``)."""
    return {name: {layer: support(layer, name) for layer in LAYERS}
            for name in (rule_names() if names is None else names)}
