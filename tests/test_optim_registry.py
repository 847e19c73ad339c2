"""create() builds every registered optimizer rule from its facts, user-registered ones included.

The user rules below exist only in this file: an adaptive elementwise-scaled USAM (the issue's
example, ``a <- (x**2 + 1) * a`` per parameter tensor before normalisation) and scaled
variants of SAM, m-USAM, n-SAM and RW-SAM that reach every optimizer class's scale path.
"""

from __future__ import annotations

import pytest
import torch

from sdesam.algorithms import Rule, register, registered, unregister
from sdesam import layers, optim
from sdesam.optim import MUSAM, RWSAM, SAM, USAM, create, optimizer_names, registry
from sdesam.validation import InputError
from test_optim_algorithms import check_class_step_equals_rule_table
from test_optim_reference import BASE, BATCHES, RHO, ascent_step, grad_at, mean_grad, run_pair


def square_plus_one(xk):
    """The elementwise scale of the test rules: written with arithmetic alone (sympy or torch)."""
    return xk**2 + 1


SCALED = {
    "scaled-usam": Rule("scaled-usam", "part", False, False,
                        "G = grad f_B(x + rho s(x) g), s(x) = x**2 + 1 elementwise",
                        scale=square_plus_one),
    "scaled-sam": Rule("scaled-sam", "part", True, False, "SAM with a = s(x) g before normalising",
                       scale=square_plus_one),
    "scaled-m-usam": Rule("scaled-m-usam", "part", False, True, "m-USAM with a_j = s(x) g_j",
                          scale=square_plus_one),
    "scaled-n-sam": Rule("scaled-n-sam", "full", True, False, "n-SAM with a = s(x) grad f",
                         scale=square_plus_one),
    "scaled-rw-sam": Rule("scaled-rw-sam", "reweighted", True, False, "RW-SAM with a = s(x) g",
                          scale=square_plus_one),
}
NO_OPTIMIZER = Rule("symbolic-only", "part", False, False, "a rule no optimizer class implements "
                    "once USAM is taken out of the classes (see without_usam)")


@pytest.fixture
def without_usam(monkeypatch):
    """The optimizer layer with its USAM class taken out: unnormalised ascents on the batch are
    then implemented by no class."""
    monkeypatch.setattr(registry, "IMPLEMENTATIONS",
                        tuple(cls for cls in registry.IMPLEMENTATIONS if cls is not USAM))


@pytest.fixture
def user_rules():
    """Register the test rules for one test, and remove them afterwards."""
    for rule in (*SCALED.values(), NO_OPTIMIZER):
        register(rule, replace=True)
    yield SCALED
    for rule in (*SCALED.values(), NO_OPTIMIZER):
        unregister(rule.name)


def scaled_eps(model, g, normalized: bool) -> list[torch.Tensor]:
    """The reference perturbation: a = (x**2 + 1) * g per tensor, then rho a (/|a|)."""
    a = [(p.detach() ** 2 + 1) * v for p, v in zip(model.parameters(), g)]
    return ascent_step(a, normalized)


@pytest.mark.parametrize("name,normalized", [("scaled-usam", False), ("scaled-sam", True)])
def test_user_scaled_rule_matches_plain_reference(user_rules, name, normalized):
    def reference(m, x, y):
        return grad_at(m, scaled_eps(m, mean_grad(m, x, y), normalized), x, y)

    run_pair(lambda m: create(name, m.parameters(), rho=RHO, **BASE), reference, BATCHES)


@pytest.mark.parametrize("vmap_budget_mb", [0.0, 64.0])
def test_user_scaled_micro_rule_matches_sequential_reference(user_rules, vmap_budget_mb):
    micro = 2

    def reference(m, x, y):
        total = None
        for xs, ys in zip(x.split(micro), y.split(micro)):
            g = grad_at(m, scaled_eps(m, mean_grad(m, xs, ys), False), xs, ys)
            total = g if total is None else [a + b for a, b in zip(total, g)]
        return [t / (x.shape[0] // micro) for t in total]

    run_pair(lambda m: create("scaled-m-usam", m.parameters(), rho=RHO, micro=micro,
                              vmap_budget_mb=vmap_budget_mb, **BASE), reference, BATCHES)


@pytest.mark.parametrize("name", list(SCALED))
def test_user_scaled_rule_matches_rule_table(user_rules, name):
    check_class_step_equals_rule_table(name)


def test_class_is_chosen_from_facts(user_rules):
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert type(create("scaled-usam", params, rho=0.1, lr=0.1)) is USAM
    assert type(create("scaled-sam", params, rho=0.1, lr=0.1)) is SAM
    assert type(create("scaled-m-usam", params, rho=0.1, micro=2, lr=0.1)) is MUSAM
    assert type(create("scaled-rw-sam", params, rho=0.1, lr=0.1)) is RWSAM
    assert create(SCALED["scaled-sam"], params, lr=0.1).rule is SCALED["scaled-sam"]


def test_optimizer_names_follow_the_registry(user_rules):
    expected = layers.rules_for("optimizer")
    assert optimizer_names() == expected and tuple(optim.OPTIMIZERS) == expected
    assert set(SCALED) <= set(expected) and NO_OPTIMIZER.name in expected


def test_optimizer_names_follow_the_classes_declarations(user_rules, without_usam):
    """Take a class out and the rules only it implemented leave the optimizer names (and the
    Rule's derived ``optimizer``), and create refuses them naming the fact no class has."""
    names = optimizer_names()
    assert "usam" not in names and NO_OPTIMIZER.name not in names and "scaled-usam" not in names
    assert "sam" in names and layers.support("optimizer", NO_OPTIMIZER) is not None
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(InputError, match="do not implement rule 'symbolic-only': "
                                         "(micro|normalized)=False .*nearest"):
        create("symbolic-only", params, rho=0.1, lr=0.1)


def test_optimizer_names_without_user_rules():
    with registered(SCALED["scaled-usam"]):
        assert "scaled-usam" in optimizer_names()
    assert optimizer_names() == layers.rules_for("optimizer")
    assert "scaled-usam" not in optimizer_names()


@pytest.mark.parametrize("name,options,message", [
    ("scaled-usam", {"micro": 2}, "micro is not accepted by 'scaled-usam'"),
    ("scaled-usam", {"lam": 1.0}, "lam is not accepted by 'scaled-usam'"),
    ("scaled-m-usam", {}, "micro is required by 'scaled-m-usam'"),
    ("scaled-sam", {"adaptive": True}, "adaptive"),
])
def test_create_refuses_keywords_the_rule_does_not_accept(user_rules, name, options, message):
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(InputError, match=message):
        create(name, params, lr=0.1, **options)


def test_a_class_refuses_a_rule_it_does_not_implement(user_rules):
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(InputError, match="SAM does not implement rule 'scaled-usam': normalized=False"):
        SAM(params, rule="scaled-usam", lr=0.1)
