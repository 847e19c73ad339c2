"""The equivalent m of a rule: the micro-batch size at which the m-rule of its family pushes
as hard (by the divisors of B for normalised rules, by the sampling factor for unnormalised)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..algorithms import get_rule
from .diagnose import micro_family_rule


def divisors(batch: int) -> list[int]:
    """The divisors of ``batch`` in increasing order (the micro-batch sizes m-rules accept)."""
    return [m for m in range(1, batch + 1) if batch % m == 0]


def equivalent_m(push: float, push_stderr: float, curve: Sequence[tuple[int, float, float]],
                 ) -> tuple[float | None, float | None, str | None]:
    """The micro-batch size at which the m-rule curve ``[(m, push, stderr)]`` (m increasing)
    reaches ``push``: linear interpolation in log m between neighbouring divisors; the standard
    error by the delta method from both errors (conservative: common batches correlate them).
    Outside the curve: ``(None, None, "below_1")`` (stronger than its smallest m) or
    ``"above_B"`` (weaker than its largest m)."""
    ms = [c[0] for c in curve]
    values = [c[1] for c in curve]
    for (m0, p0, s0), (m1, p1, s1) in zip(curve, curve[1:]):
        if min(p0, p1) <= push <= max(p0, p1):
            if p0 == p1:
                return float(m0 if push == p0 else m1), 0.0, None
            t = (push - p0) / (p1 - p0)
            m = math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
            slope = (p1 - p0) / (math.log(m1) - math.log(m0)) / m           # dP/dm at m
            curve_se = (1 - t) * s0 + t * s1
            return m, math.hypot(push_stderr, curve_se) / abs(slope), None
    if len(ms) == 1 and push == values[0]:
        return float(ms[0]), 0.0, None
    strongest = values[0]
    return None, None, "below_1" if (push > strongest) == (values[0] >= values[-1]) else "above_B"


def equivalent_m_continuous(push: float, push_stderr: float, trace_norm: float, n: int,
                            sampling: str) -> tuple[float | None, float | None, str | None]:
    """m solving ``c(m)/2 |grad tr V| = push`` (m-USAM's exact push), continuous in m, with
    its delta-method standard error; None with the reason when no m >= 1 solves it."""
    if trace_norm <= 0:
        return None, None, "flat_trace"
    c = 2.0 * push / trace_norm
    c_se = 2.0 * push_stderr / trace_norm
    if c <= 0:
        return None, None, "above_B"
    if sampling == "with-replacement":
        m, slope = 1.0 / c, 1.0 / c**2
    else:
        m, slope = n / (c * (n - 1) + 1), n * (n - 1) / (c * (n - 1) + 1) ** 2
    if m < 1 - 1e-9:
        return None, None, "below_1"
    return m, slope * c_se, None


def add_equivalent_m(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``equivalent_m``, ``equivalent_m_stderr``, ``equivalent_m_bound`` and
    ``equivalent_m_method`` to the records of one point (from :func:`diagnose`): by the
    divisors of B against the records of the m-rule of the family (normalised rules; those
    records must be present; error by the jackknife over blocks of batches when sampled, else
    the delta method), by the sampling factor (unnormalised rules, delta method); then drop
    the jackknife replicates."""
    solved = []
    for record in records:
        rule = get_rule(record["rule"])
        result: dict[str, Any] = dict(equivalent_m=None, equivalent_m_stderr=None,
                                      equivalent_m_bound=None, equivalent_m_method=None)
        if rule.perturbed:
            if rule.normalized:
                family = [r for r in records if r["rule"] == micro_family_rule(rule).name]
                family.sort(key=lambda r: r["micro"])
                if family:
                    result = _equivalent_m_divisors(record, family)
            else:
                m, se, bound = equivalent_m_continuous(record["push"], record["push_stderr"],
                                                       record["grad_trace_V_norm"], record["n"],
                                                       record["sampling"])
                result = dict(equivalent_m=m, equivalent_m_stderr=se, equivalent_m_bound=bound,
                              equivalent_m_method="sampling-factor")
        solved.append(result)
    for record, result in zip(records, solved):
        record.update(result)
        record.pop("push_jackknife", None)
    return records


def _equivalent_m_divisors(record: dict[str, Any], family: list[dict[str, Any]]) -> dict[str, Any]:
    """Equivalent m against the m-rule records ``family`` (m increasing); the error from the
    jackknife over blocks of common batches when the records carry it (sampled batches), so
    the correlation between the rule and the curve is accounted for."""
    curve = [(r["micro"], r["push"], r["push_stderr"]) for r in family]
    m, se, bound = equivalent_m(record["push"], record["push_stderr"], curve)
    replicates = record.get("push_jackknife")
    if m is not None and replicates and all(r.get("push_jackknife") for r in family):
        values = []
        for g, push in enumerate(replicates):
            other = [(c[0], r["push_jackknife"][g], 0.0) for c, r in zip(curve, family)]
            values.append(equivalent_m(push, 0.0, other)[0])
        if all(v is not None for v in values):
            mean = sum(values) / len(values)
            se = math.sqrt((len(values) - 1) / len(values) * sum((v - mean) ** 2 for v in values))
    return dict(equivalent_m=m, equivalent_m_stderr=se, equivalent_m_bound=bound,
                equivalent_m_method="divisors")
