"""A rule a user registers (an elementwise-scaled perturbation) derives like a built-in one,
checked against brute-force enumeration of its exact one-step map."""

import pytest


from sdesam.algorithms import Rule, registered
from sdesam.symbolic import GENERIC, derive, example_losses, matrices_equal, rho
from sdesam.symbolic.step import enumerated_moments
from sdesam.symbolic.taylor import truncate_matrix


def ascaled_usam() -> Rule:
    return Rule("ascaled-usam", "part", False, False,
                "G = grad f_B(x + rho s(x) * grad f_B(x)), s(x_k) = x_k^2 + 1",
                scale=lambda xk: xk**2 + 1)


def ascaled_sam() -> Rule:
    return Rule("ascaled-sam", "part", True, False,
                "G = grad f_B(x + rho a/|a|), a = s(x) * grad f_B(x)", scale=lambda xk: xk**2 + 1)


@pytest.mark.parametrize("make,dim,sampling", [
    (ascaled_usam, 2, "without-replacement"),
    (ascaled_usam, 1, "with-replacement"),
    pytest.param(ascaled_sam, 2, "without-replacement", marks=pytest.mark.slow),
])
def test_scaled_rule_matches_enumeration_of_every_batch(make, dim, sampling):
    losses, variables = example_losses(dim)
    losses = losses[:3]
    with registered(make()) as rule:
        d = derive(rule.name, losses, variables, batch=2, sampling=sampling)
        mean, cov = enumerated_moments(rule.name, losses, variables, 2, None, sampling, 1)
        plain = derive("sam" if rule.normalized else "usam", losses, variables, batch=2,
                       sampling=sampling)
    assert d.closed_form is None and d.reference is not None
    assert matrices_equal(d.drift, -truncate_matrix(mean, rho, 1))
    assert matrices_equal(d.diffusion, truncate_matrix(cov, rho, 0))
    assert d.verify() and d.verify_diffusion()
    assert not matrices_equal(d.drift, plain.drift)  # the scale really acts


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_scaled_rule_on_generic_losses_instantiates_to_the_concrete_derivation(sampling):
    losses, variables = example_losses(1)
    with registered(ascaled_usam()) as rule:
        generic = derive(rule, GENERIC, variables, batch=2, n=4, sampling=sampling)
        concrete = derive(rule, losses, variables, batch=2, sampling=sampling,
                          expectations="enumeration")
    assert generic.verify() and concrete.verify()
    assert matrices_equal(generic.family.instantiate(generic.drift, losses), concrete.drift)
    assert matrices_equal(generic.family.instantiate(generic.diffusion, losses), concrete.diffusion)
