"""The cost of a rule's step, read from its facts."""

from __future__ import annotations

from ..algorithms import Rule


def passes_per_step(rule: Rule, batch: int, micro: int | None = None) -> dict[str, float]:
    """Cost of one step read from the rule's facts: ``forward_equivalents`` (a backward pass
    counts two forwards; one unit = a forward pass over the batch) and ``perturbations``
    (perturbed points per step, each its own forward/backward: B/m for m-rules). Gibbs weights
    cost one forward at ``x + delta z`` (the poster's finite-difference norms); a drawn
    perturbation re-runs only its k samples; a weighted response needs the mean and the
    weighted gradient at x."""
    if not rule.perturbed:
        return {"forward_equivalents": 3.0, "perturbations": 0}
    cost = 6.0
    if rule.weighted:
        cost += 1.0
        if rule.ascent_draw:
            cost += -2.0 + 3.0 * rule.ascent_draw / batch
        if rule.descent_weights == "response":
            cost += 2.0
    perturbations = batch // micro if rule.micro else 1
    return {"forward_equivalents": cost, "perturbations": perturbations}
