"""Exact weak errors of the affine rules, their expansion in eta, and the predicted sqrt(eta) term.

With rho = kappa sqrt(eta) the weak error of a first-order SDE expands as

    e(eta) = E g(x_K) - E g(X_T) = a sqrt(eta) + b eta + c eta^{3/2} + ...,

with a = 0 when the SDE keeps the noise-induced tr V drift term and a != 0 without it. A single
slope fitted over a short eta range cannot show this (the sqrt(eta) and eta parts may cancel
near some eta and change the error's sign); the coefficients can. :func:`fit_expansion` fits
them by least squares to the exact errors of :func:`weak_errors` (from
:mod:`sdesam.simulation.exact_moments`) over a geometric eta grid; :func:`local_orders` gives
``log(e_k/e_{k+1}) / log(eta_k/eta_{k+1})`` between neighbours; :func:`predicted_sqrt_coefficient`
gives the a that removing the term must leave, from the exact first-order sensitivity of the
SDE's moments to that term (a Frechet derivative of the matrix exponential).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import scipy.linalg

from .. import validation
from ..algorithms import Rule, get_rule
from ..problems.base import Problem
from .compare import VARIANTS
from .inputs import check_eta, rule_rho
from .exact_moments import (DEFAULT_TESTS, discrete_moments, initial_state, linear_sde,
                            sde_moments, steps_to, test_functionals)


def weak_errors(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float, batch: int,
                x0: Any, horizon: float, micro: int | None = None,
                sampling: str = "with-replacement", variants: Sequence[str] = tuple(VARIANTS),
                every: int | None = None, test_fns: Sequence[str] = DEFAULT_TESTS
                ) -> list[dict[str, Any]]:
    """Exact weak errors of the SDE variants against the discrete rule: one flat record per
    variant (the variant without the noise term only for rules that have one) with, per test
    function g, ``error_<g>`` = E g(x_K) - E g(X_T) (signed), ``weak_error_T_<g>`` its size and
    ``weak_error_<g>`` the max over the recorded steps (``every``; None: start and end), and
    ``mean_error`` = |E x_K - E X_T|, ``second_error`` = |E x x^T - E X X^T|_F at T."""
    rule = get_rule(algorithm)
    eta, rho = check_eta(eta), rule_rho(rule, rho)
    for variant in variants:
        validation.one_of("variants", variant, VARIANTS)
    common = dict(eta=eta, rho=rho, batch=batch, x0=x0, micro=micro, sampling=sampling,
                  every=every, test_fns=test_fns)
    discrete = discrete_moments(problem, rule, steps=steps_to(horizon, eta), **common)
    rows = []
    for variant in variants:
        if VARIANTS[variant] and not rule.noise_induced:
            continue
        sde = sde_moments(problem, rule, horizon=horizon, variant=variant, **common)
        row = {"rule": rule.name, "micro": micro, "batch": batch, "sampling": sampling,
               "eta": eta, "rho": float(rho), "horizon": float(horizon), "variant": variant,
               "mean_error": float(np.linalg.norm(discrete.mean[-1] - sde.mean[-1])),
               "second_error": float(np.linalg.norm(discrete.second[-1] - sde.second[-1]))}
        for name in discrete.tests:
            gap = discrete.tests[name] - sde.tests[name]
            row.update({f"error_{name}": float(gap[-1]), f"weak_error_T_{name}": float(abs(gap[-1])),
                        f"weak_error_{name}": float(np.abs(gap).max())})
        rows.append(row)
    return rows


def fit_expansion(etas: Sequence[float], errors: Sequence[float], terms: int = 2,
                  stderrs: Sequence[float] | None = None) -> dict[str, Any]:
    """Least-squares ``e(eta) = a sqrt(eta) + b eta (+ c eta^{3/2})`` (``terms`` 2 or 3) to
    signed errors, fitted as ``e / sqrt(eta) = a + b sqrt(eta) (+ c eta)`` so every decade of a
    geometric grid weighs alike; also the largest residual relative to ``|e|``. With the
    errors' Monte-Carlo ``stderrs`` the fit is weighted by them and gives the coefficients'
    standard errors (``a_stderr``, ``b_stderr``, ``c_stderr``) and the fit's chi-square per
    degree of freedom (near 1 when the expansion describes the points within their noise)."""
    validation.one_of("terms", terms, (2, 3))
    etas, errors = np.asarray(etas, dtype=float), np.asarray(errors, dtype=float)
    if etas.shape != errors.shape or etas.ndim != 1 or len(etas) < terms + 1:
        raise validation.InputError(f"etas and errors must be equal-length lists of at least "
                                    f"{terms + 1} values; got {len(etas)} and {len(errors)}")
    if (etas <= 0).any():
        raise validation.InputError("etas must be positive")
    root = np.sqrt(etas)
    design = np.stack([root ** k for k in range(terms)], axis=1)
    scaled = errors / root
    extra: dict[str, Any] = {}
    if stderrs is None:
        coef, *_ = np.linalg.lstsq(design, scaled, rcond=None)
    else:
        sd = np.asarray(stderrs, dtype=float) / root
        if sd.shape != errors.shape or not (sd > 0).all():
            raise validation.InputError("stderrs must be positive, one per error")
        weighted = design / sd[:, None]
        covariance = np.linalg.inv(weighted.T @ weighted)
        coef = covariance @ weighted.T @ (scaled / sd)
        chi2 = float(np.sum(((design @ coef - scaled) / sd) ** 2))
        extra = {f"{name}_stderr": float(np.sqrt(covariance[k, k]))
                 for k, name in enumerate("abc"[:terms])}
        extra["chi2_per_dof"] = chi2 / (len(etas) - terms)
    fitted = root * (design @ coef)
    return {"a": float(coef[0]), "b": float(coef[1]), "c": float(coef[2]) if terms == 3 else None,
            "max_relative_residual": float(np.max(np.abs(fitted - errors) /
                                                  np.maximum(np.abs(errors), 1e-300))), **extra}


def local_orders(etas: Sequence[float], errors: Sequence[float]) -> list[float]:
    """``log(|e_k| / |e_{k+1}|) / log(eta_k / eta_{k+1})`` for neighbouring points, in the order
    given (NaN where an error is zero)."""
    out = []
    for (e1, x1), (e2, x2) in zip(zip(errors, etas), zip(errors[1:], etas[1:])):
        if e1 == 0 or e2 == 0:
            out.append(float("nan"))
        else:
            out.append(math.log(abs(e1) / abs(e2)) / math.log(x1 / x2))
    return out


def predicted_sqrt_coefficient(problem: Problem, algorithm: "str | Rule", *, kappa: float,
                               batch: int, x0: Any, horizon: float, micro: int | None = None,
                               sampling: str = "with-replacement",
                               test_fns: Sequence[str] = DEFAULT_TESTS) -> dict[str, float]:
    """Per test function g, the sqrt(eta) coefficient that dropping the noise-induced drift
    term adds to the weak error ``E g(x_K) - E g(X_T)`` at rho = kappa sqrt(eta):
    ``kappa * dD/drho`` at rho = 0, eta -> 0, ``D = E g(X^full_T) - E g(X^without_T)``. The
    drift is affine in rho, so the term is ``rho * dL`` in the (noiseless) moment generator and
    the derivative is exact: ``w . Frechet(expm)(L0 T, dL T) z0``."""
    rule = get_rule(algorithm)
    kappa = validation.non_negative_number("kappa", kappa)
    functionals = test_functionals(problem, test_fns)
    if not rule.noise_induced:
        return {name: 0.0 for name in functionals}
    common = dict(eta=1.0, batch=batch, micro=micro, sampling=sampling, drop_terms=("noise",))
    base = linear_sde(problem, rule, rho=0.0, **common).generator
    term = (linear_sde(problem, rule, rho=1.0, variant="full", **common).generator
            - linear_sde(problem, rule, rho=1.0, variant="without_noise_term", **common).generator)
    horizon = validation.positive_number("horizon", horizon)
    slope = scipy.linalg.expm_frechet(base * horizon, term * horizon, compute_expm=False)
    response = slope @ initial_state(problem, x0)
    return {name: float(kappa * (w @ response)) for name, w in functionals.items()}


def expansion_sweep(problem: Problem, algorithm: "str | Rule", *, kappa: float,
                    etas: Sequence[float], batch: int, x0: Any, horizon: float,
                    micro: int | None = None, sampling: str = "with-replacement",
                    variants: Sequence[str] = tuple(VARIANTS), records: int | None = None,
                    test_fns: Sequence[str] = DEFAULT_TESTS, terms: int = 3,
                    fit_eta_max: float | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Exact weak errors along rho = kappa sqrt(eta) over ``etas`` (largest first), and per
    variant and test function the expansion fitted with ``terms`` terms (and with two, as
    ``a_two_term``, ``b_two_term``) over the etas up to ``fit_eta_max`` (None: all), the local
    orders between neighbours and the predicted a. ``records``: moments also at ``records``
    equal steps of the horizon (each eta's step count must be a multiple) for the max over
    steps; None: at T only. Returns ``(errors, expansions)``, two tables of flat records."""
    rule = get_rule(algorithm)
    etas = sorted((check_eta(eta) for eta in etas), reverse=True)
    fit_eta_max = etas[0] if fit_eta_max is None else validation.positive_number("fit_eta_max",
                                                                                 fit_eta_max)
    errors: list[dict[str, Any]] = []
    for eta in etas:
        every = None
        if records is not None:
            steps = steps_to(horizon, eta)
            if steps % validation.positive_int("records", records):
                raise validation.InputError(f"records={records} must divide the {steps} steps "
                                            f"of eta={eta}")
            every = steps // records
        rho = kappa * math.sqrt(eta) if rule.perturbed else None   # SGD: no perturbation
        errors += weak_errors(problem, rule, eta=eta, rho=rho,
                              batch=batch, x0=x0, horizon=horizon, micro=micro, sampling=sampling,
                              variants=variants, every=every, test_fns=test_fns)
    predicted = predicted_sqrt_coefficient(problem, rule, kappa=kappa, batch=batch, x0=x0,
                                           horizon=horizon, micro=micro, sampling=sampling,
                                           test_fns=test_fns)
    expansions = []
    for variant in dict.fromkeys(row["variant"] for row in errors):
        rows = [row for row in errors if row["variant"] == variant]
        for name in test_fns:
            signed = [row[f"error_{name}"] for row in rows]
            orders = local_orders([row["eta"] for row in rows], signed)
            for row, order in zip(rows, [None, *orders]):
                row[f"local_order_{name}"] = order
            chosen = [(row["eta"], e) for row, e in zip(rows, signed)
                      if row["eta"] <= fit_eta_max * (1 + 1e-9)]
            fit, two = (fit_expansion([c[0] for c in chosen], [c[1] for c in chosen], k)
                        for k in (terms, 2))
            expansions.append({
                "rule": rows[0]["rule"], "micro": micro, "batch": batch, "sampling": sampling,
                "kappa": kappa, "horizon": float(horizon), "variant": variant, "test_fn": name,
                "eta_min": etas[-1], "eta_max": etas[0], "points": len(rows),
                "local_order_smallest": orders[-1], "local_order_largest": orders[0],
                "fit_eta_max": fit_eta_max, "fit_points": len(chosen), "terms": terms, **fit,
                "a_two_term": two["a"], "b_two_term": two["b"],
                "predicted_a": predicted[name] if VARIANTS[variant] else 0.0})
    return errors, expansions
