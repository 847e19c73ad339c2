"""Every registered rule through every layer: each layer either refuses it, in one line naming
the rule and the fact it lacks, or agrees with the reference one-step map
``sdesam.algorithms.direction`` on the same problem, batch and random draws.

The rules are the registry's at collection time (a rule registered later, in the package or a
plugin, is covered automatically) plus user rules defined here and passed as unregistered
``Rule`` objects, so every layer is also shown to take a Rule it cannot look up by name.

The problem: N = 4 samples of a linear model in d = 2 with the non-quadratic per-sample loss
``(u - y)^2 / 2 + u^4 / 40``, ``u = a_i . x``, written three ways -- sympy expressions (the
symbolic layer), a :class:`~sdesam.problems.base.Problem` compiled from them (ensemble, SDEs,
diagnostic) and an ``nn.Linear(2, 1)`` with that loss (the optimizers). Data are exact binary
fractions, so the three agree to rounding.
"""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

from sdesam import implicit, layers
from sdesam.algorithms import Rule, direction, get_rule, gibbs_weights, rule_names
from sdesam.optim import create
from sdesam.problems import from_sympy
from sdesam.simulation import derived_sde, ensemble, sde
from sdesam.simulation.inputs import drawn_positions
from sdesam.symbolic import derive, eta as ETA, one_step_map, rho as RHO
from sdesam.validation import InputError

FEATURES = [[1.0, 0.5], [-0.75, 1.0], [0.25, -1.0], [1.5, 0.25]]
TARGETS = [0.5, -1.0, 0.25, 0.0]
BATCH, MICRO, CHAINS = 2, 1, 3
ETA_VALUE, RHO_VALUE, LAM, DELTA = 0.1, 0.3, 1.5, 1e-4

USER_RULES = {
    "user:scaled-usam": Rule("scaled-usam", "part", False, False,
                             "G = grad f_B(x + rho s(x) g_B), s(x) = x**2 + 1 elementwise",
                             scale=lambda xk: xk**2 + 1),
    "user:scaled-rw-sam-wr": Rule("scaled-rw-sam-wr", "reweighted", True, False,
                                  "RW-SAM with weights on the response, a = s(x) g",
                                  scale=lambda xk: xk**2 + 1, descent_weights="response"),
}
RULES = [*rule_names(), *USER_RULES]


def rule_of(name: str) -> Rule:
    """The registered rule, or a user rule as an unregistered Rule object."""
    return USER_RULES[name] if name in USER_RULES else get_rule(name)


# ---------------------------------------------------------------------- the problem, three ways
def sympy_losses() -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
    variables = list(sympy.symbols("x0 x1", real=True))
    losses = []
    for a, y in zip(FEATURES, TARGETS):
        u = sum(sympy.nsimplify(ai) * v for ai, v in zip(a, variables))
        losses.append((u - sympy.nsimplify(y)) ** 2 / 2 + u**4 / 40)
    return losses, variables


LOSSES, VARIABLES = sympy_losses()
PROBLEM = from_sympy(LOSSES, VARIABLES)
INPUTS = torch.tensor(FEATURES, dtype=torch.float64)
OUTPUTS = torch.tensor(TARGETS, dtype=torch.float64)


def per_sample_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    u = outputs.squeeze(-1)
    return (u - targets) ** 2 / 2 + u**4 / 40


def losses_at(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    inputs, targets = (INPUTS, OUTPUTS) if idx is None else (INPUTS[idx], OUTPUTS[idx])
    return per_sample_loss((inputs @ x).unsqueeze(-1), targets)


def mean_grad(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(losses_at(x, idx).mean(), x)[0]


def weighted_grad(x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad((weights * losses_at(x, idx)).sum(), x)[0]


def exact_weights(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gibbs weights of the exact per-sample gradient norms at x."""
    return gibbs_weights(torch.stack([mean_grad(x, idx[b:b + 1]) for b in range(len(idx))]).norm(dim=-1),
                         LAM)


def reference_step(rule: Rule, x: torch.Tensor, idx: torch.Tensor, rho: float, *,
                   weights: torch.Tensor | None = None, drawn: torch.Tensor | None = None) -> torch.Tensor:
    """``x - eta G`` by the reference map with plain autograd gradients: Gibbs ``weights`` of
    the batch (exact by default) and the drawn positions ``drawn`` of a rule that draws."""
    parts = list(idx.split(MICRO)) if rule.micro else [idx]
    weights = exact_weights(x, idx) if weights is None else weights
    g = direction(rule, x, parts, rho, mean_grad, torch.linalg.norm,
                  reweighted_grad=lambda p, i: weighted_grad(p, i, weights),
                  weighted_grad=lambda p, i: weighted_grad(p, i, weights),
                  draw=lambda i: i[drawn])
    return x - ETA_VALUE * g


def options(rule: Rule) -> dict:
    """The rule keywords this test gives ``rule``: each only where the rule takes it."""
    return {"rho": RHO_VALUE if rule.perturbed else None, "micro": MICRO if rule.micro else None,
            "lam": LAM if rule.weighted else None}


def evaluate(matrix: sympy.Matrix, values: dict) -> torch.Tensor:
    """The entries of ``matrix`` at ``values`` (symbol -> number), to 30 digits: substituted as
    Floats first (``evalf(subs=...)`` on Gibbs-weighted expressions takes seconds per entry)."""
    at = {symbol: sympy.Float(value, 30) for symbol, value in values.items()}
    return torch.tensor([float(entry.xreplace(at).evalf(30)) for entry in matrix],
                        dtype=torch.float64)


def start_points(count: int, seed: int) -> torch.Tensor:
    return 0.8 * torch.randn(count, 2, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)


def assert_refused(call, rule: Rule, reason: str) -> None:
    """``call()`` raises one line naming the rule and the fact of ``reason``."""
    fact = reason.split("=")[0]
    with pytest.raises(InputError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and repr(rule.name) in message and f"{fact}=" in message, message


# ---------------------------------------------------------------------- the layers
@pytest.mark.parametrize("name", RULES)
def test_ensemble_step_agrees_with_the_reference_map(name):
    rule = rule_of(name)
    reason = layers.support("ensemble", rule)
    x = start_points(CHAINS, 1)
    idx = torch.randint(0, 4, (CHAINS, BATCH), generator=torch.Generator().manual_seed(2))
    opts = options(rule)
    if reason is not None:
        assert_refused(lambda: ensemble.step(PROBLEM, rule, x, idx, eta=ETA_VALUE, **opts), rule, reason)
        return
    new = ensemble.step(PROBLEM, rule, x, idx, eta=ETA_VALUE, generator=torch.Generator().manual_seed(3),
                        **opts)
    uniforms = torch.rand(CHAINS, rule.ascent_draw, generator=torch.Generator().manual_seed(3),
                          dtype=torch.float64)
    for c in range(CHAINS):
        drawn = drawn_positions(exact_weights(x[c], idx[c]), uniforms[c])
        expected = reference_step(rule, x[c], idx[c], opts["rho"] or 0.0, drawn=drawn)
        torch.testing.assert_close(new[c], expected, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", RULES)
def test_ensemble_run_agrees_with_the_reference_map(name):
    """Two steps of ``ensemble.run`` (batches and draws from its seeded generator) against
    the reference map on the same batches and draws; an unregistered rule runs too."""
    rule = rule_of(name)
    if layers.support("ensemble", rule) is not None:
        return                           # refusal shown by the step test above
    x0 = start_points(1, 4)[0]
    run = ensemble.run(PROBLEM, rule, eta=ETA_VALUE, batch=BATCH, x0=x0, steps=2, chains=CHAINS,
                       seed=6, **options(rule))
    generator = torch.Generator().manual_seed(6)
    x = x0.expand(CHAINS, 2)
    for k in range(2):
        idx = ensemble.draw_batches(generator, CHAINS, 4, BATCH, "with-replacement")
        uniforms = (torch.rand(CHAINS, rule.ascent_draw, generator=generator, dtype=torch.float64)
                    if rule.ascent_draw else torch.zeros(CHAINS, 0))
        x = torch.stack([reference_step(rule, x[c], idx[c], options(rule)["rho"] or 0.0,
                                        drawn=drawn_positions(exact_weights(x[c], idx[c]), uniforms[c]))
                         for c in range(CHAINS)])
        torch.testing.assert_close(run.states[k + 1], x, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", RULES)
def test_optimizer_step_agrees_with_the_reference_map(name):
    """``create(rule)`` on ``nn.Linear(2, 1)`` with the same losses: two SGD steps against the
    reference map, with the Gibbs weights of the optimizer's own finite-difference norm
    estimates (the same Rademacher direction and draws, from the same generator)."""
    rule = rule_of(name)
    reason = layers.support("optimizer", rule)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(start_points(1, 5))
    opts = {k: v for k, v in options(rule).items() if v is not None}
    if rule.weighted:
        opts.update(delta=DELTA, generator=torch.Generator().manual_seed(11))
    if rule.ascent == "full":
        opts["ascent_data"] = (INPUTS, OUTPUTS)
    if reason is not None:
        assert_refused(lambda: create(rule, model.parameters(), lr=ETA_VALUE, **opts), rule, reason)
        return
    opt = create(rule, model.parameters(), torch.optim.SGD, lr=ETA_VALUE, **opts)
    generator = torch.Generator().manual_seed(11)
    x = model.weight.detach().clone().squeeze(0)
    for idx in (torch.tensor([0, 2]), torch.tensor([3, 3])):
        weights = drawn = None
        if rule.weighted:
            z = (torch.randint(0, 2, (1, 2), generator=generator, dtype=torch.float64) * 2 - 1)[0]
            scores = (losses_at(x + DELTA * z, idx) - losses_at(x, idx)).abs() / DELTA
            weights = gibbs_weights(scores, LAM)
            if rule.ascent_draw:
                drawn = torch.multinomial(weights, rule.ascent_draw, replacement=True,
                                          generator=generator)
        x = reference_step(rule, x, idx, opts.get("rho", 0.0), weights=weights, drawn=drawn)
        opt.step(model, per_sample_loss, INPUTS[idx], OUTPUTS[idx])
        torch.testing.assert_close(model.weight.detach()[0], x, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", RULES)
def test_symbolic_one_step_map_agrees_with_the_reference_map(name):
    """The exact sympy map ``x - eta G`` for a batch (and draw), evaluated at a point."""
    rule = rule_of(name)
    reason = layers.support("symbolic", rule)
    batch = (2, 1)
    if reason is not None:
        assert_refused(lambda: derive(rule, LOSSES, VARIABLES, batch=BATCH), rule, reason)
        return
    x = start_points(1, 7)[0]
    idx = torch.tensor(batch)
    drawn = None
    if rule.ascent_draw:
        drawn = drawn_positions(exact_weights(x, idx), torch.tensor([0.7] * rule.ascent_draw))
    step = one_step_map(rule, LOSSES, VARIABLES, batch, micro=options(rule)["micro"],
                        lam=sympy.Rational(3, 2), drawn=None if drawn is None else drawn.tolist())
    exact = evaluate(step, {**dict(zip(VARIABLES, x.tolist())), RHO: RHO_VALUE, ETA: ETA_VALUE})
    torch.testing.assert_close(exact, reference_step(rule, x, idx, RHO_VALUE, drawn=drawn),
                               rtol=0, atol=1e-12, msg=name)


def derivation_of(rule: Rule):
    return derive(rule, LOSSES, VARIABLES, batch=BATCH, micro=options(rule)["micro"],
                  lam=sympy.Rational(3, 2) if rule.weighted else None)


@pytest.mark.parametrize("name", RULES)
def test_sde_drifts_agree_with_the_symbolic_drift(name):
    """The compiled SDE's drift is the derivation's (evaluated by sympy at the same points),
    and the hand-written SDE's drift equals it, or the hand-written SDE refuses the rule."""
    rule = rule_of(name)
    if layers.support("symbolic", rule) is not None:
        return                           # no derivation: refusal shown above
    derivation = derivation_of(rule)
    opts = options(rule)
    y = start_points(4, 8)
    compiled_reason = layers.support("compiled", rule)
    if compiled_reason is not None:
        assert_refused(lambda: derived_sde.DerivedSDE(derivation, eta=ETA_VALUE, rho=opts["rho"],
                                                      lam=opts["lam"]), rule, compiled_reason)
        return
    compiled = derived_sde.DerivedSDE(derivation, eta=ETA_VALUE, rho=opts["rho"], lam=opts["lam"])
    drift = compiled.f(0.0, y)
    symbols = {RHO: RHO_VALUE, ETA: ETA_VALUE,
               **{s: LAM for s in derivation.drift.free_symbols if str(s) in ("lam", "lambda")}}
    for point, value in zip(y.tolist(), drift):
        expected = evaluate(derivation.drift, {**symbols, **dict(zip(VARIABLES, point))})
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-10, msg=name)
    reason = layers.support("sde", rule)
    build = lambda: sde.AlgorithmSDE(PROBLEM, rule, eta=ETA_VALUE, batch=BATCH, **opts)  # noqa: E731
    if reason is not None:
        assert_refused(build, rule, reason)
        return
    torch.testing.assert_close(build().f(0.0, y), drift, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("name", RULES)
def test_implicit_first_order_terms_agree_with_the_reference_map(name):
    """The diagnostic's ``G0`` and ``G1 = dG/drho`` at rho = 0 on each row (a micro-batch of
    an m-rule) against the reference map and its central difference in rho."""
    rule = rule_of(name)
    reason = layers.support("implicit", rule)
    if reason is not None:
        assert_refused(lambda: implicit.Spec.of(rule, **{k: v for k, v in options(rule).items()
                                                         if k in ("micro", "lam")}), rule, reason)
        return
    spec = implicit.Spec.of(rule, micro=options(rule)["micro"], lam=options(rule)["lam"])
    x = start_points(1, 9)[0]
    rows = torch.tensor([[2, 1], [0, 0], [3, 1]]) if not rule.micro else torch.tensor([[2], [1]])
    drawn = torch.zeros(len(rows), rule.ascent_draw, dtype=torch.long)
    view = implicit.batch_view(PROBLEM, rows)
    g0, g1, _ = implicit.first_order_terms(spec, view, x.expand(len(rows), 2), drawn)
    h = 1e-6
    for r, row in enumerate(rows):
        def step_direction(rho: float) -> torch.Tensor:
            weights = exact_weights(x, row)
            return direction(rule, x, [row], rho, mean_grad, torch.linalg.norm,
                             reweighted_grad=lambda p, i: weighted_grad(p, i, weights),
                             weighted_grad=lambda p, i: weighted_grad(p, i, weights),
                             draw=lambda i: i[drawn[r]])
        torch.testing.assert_close(g0[r], step_direction(0.0), rtol=0, atol=1e-12, msg=name)
        central = (step_direction(h) - step_direction(-h)) / (2 * h)
        torch.testing.assert_close(g1[r], central, rtol=0, atol=1e-6, msg=name)


def test_the_matrix_covers_every_registered_rule_and_layer():
    """The declarations answer for every rule and layer; the built-in rules run everywhere
    except the hand-written SDE, which refuses a Gibbs-weighted descent and a drawn
    perturbation by name (the compiled SDE runs them)."""
    matrix = layers.matrix()
    assert set(matrix) == set(rule_names())
    for name, row in matrix.items():
        assert set(row) == set(layers.LAYERS)
        for layer, reason in row.items():
            if layer != "sde":
                assert reason is None, (name, layer, reason)
    assert matrix["rw-sam-wd"]["sde"].startswith("descent_weights='all'")
    assert matrix["rw-sam-draw"]["sde"].startswith("ascent_draw=1")
    assert [name for name, row in matrix.items() if row["sde"] is not None] == ["rw-sam-wd", "rw-sam-draw"]


def test_an_unregistered_rule_runs_through_every_entry_point():
    """A Rule object nobody registered: each entry point resolves it once and passes the
    object down, so no layer looks its name up again (they used to, and refused it)."""
    from sdesam.simulation import compare

    rule = USER_RULES["user:scaled-usam"]
    assert rule.name not in rule_names()
    common = dict(eta=ETA_VALUE, rho=RHO_VALUE, batch=BATCH, x0=[0.2, -0.1], seed=0)
    assert ensemble.run(PROBLEM, rule, steps=2, chains=4, **common).states.shape == (3, 4, 2)
    assert sde.simulate(PROBLEM, rule, horizon=0.2, chains=4, **common).states.shape == (3, 4, 2)
    rows = compare.compare_algorithm(PROBLEM, rule, horizon=0.2, chains=8, chunk=8,
                                     test_fns=("loss",), **common)
    assert {row["rule"] for row in rows} == {rule.name}
    derivation = derive(rule, LOSSES, VARIABLES, batch=BATCH)
    assert derivation.rule is rule
    run = derived_sde.simulate_derivation(derivation, eta=ETA_VALUE, rho=RHO_VALUE, x0=[0.2, -0.1],
                                          horizon=0.2, chains=4, seed=0)
    assert bool(torch.isfinite(run.final).all())
    model = nn.Linear(2, 1, bias=False).double()
    opt = create(rule, model.parameters(), rho=RHO_VALUE, lr=ETA_VALUE)
    assert opt.rule is rule
    opt.step(model, per_sample_loss, INPUTS, OUTPUTS)
    spec = implicit.Spec.of(rule)
    assert spec.rule is rule
