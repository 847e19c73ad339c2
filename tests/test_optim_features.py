"""BatchNorm policies, state dicts, argument checks, mixed precision, accumulation, schedulers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.algorithms import get_rule
from sdesam.optim import MSAM, RWSAM, SAM, create

RULES = [("sgd", {}), ("sam", {}), ("usam", {}), ("m-sam", {"micro": 4}), ("m-sam", {"micro": 8}),
         ("rw-sam", {"lam": 1.0})]
BASE = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


def rho_for(name: str) -> dict:
    """The rho keyword for a rule that perturbs (none for one that does not)."""
    return {"rho": 0.1} if get_rule(name).perturbed else {}


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets, reduction="none")


def conv_net(norm: str = "bn", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = nn.BatchNorm2d(4) if norm == "bn" else nn.GroupNorm(2, 4)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer, nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def images(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g)


def vectors(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g)


def bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in model[1].buffers()]


# -- BatchNorm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", RULES)
def test_first_pass_updates_running_stats_once_per_step(name, options):
    model = conv_net()
    x, y = images(0)
    opt = create(name, model.parameters(), **rho_for(name), **options, **BASE)
    twin = copy.deepcopy(model)
    opt.step(model, per_sample_ce, x, y)
    assert model[1].num_batches_tracked.item() == 1
    if options.get("micro", 8) == 8:
        # One update from the unperturbed batch: the same as one forward of a fresh copy.
        twin(x)
        for a, b in zip(bn_state(model), bn_state(twin)):
            torch.testing.assert_close(a, b)
    else:
        assert not torch.equal(bn_state(model)[0], bn_state(twin)[0])


@pytest.mark.parametrize("name,options", RULES)
def test_freeze_never_updates_running_stats(name, options):
    model = conv_net()
    before = bn_state(model)
    opt = create(name, model.parameters(), bn="freeze", **rho_for(name), **options, **BASE)
    for seed in range(2):
        opt.step(model, per_sample_ce, *images(seed))
    for a, b in zip(bn_state(model), before):
        assert torch.equal(a, b)


def test_msam_running_stats_average_the_micro_batch_updates():
    model = conv_net()
    x, y = images(1)
    expected = []
    for xs in x.split(4):
        twin = copy.deepcopy(model)
        twin(xs)
        expected.append(bn_state(twin))
    MSAM(model.parameters(), rho=0.1, micro=4, **BASE).step(model, per_sample_ce, x, y)
    torch.testing.assert_close(model[1].running_mean, (expected[0][0] + expected[1][0]) / 2)
    torch.testing.assert_close(model[1].running_var, (expected[0][1] + expected[1][1]) / 2)


def test_msam_with_batchnorm_matches_sequential_loop():
    """Each micro-batch normalised by its own statistics, as in a loop over micro-batches."""
    model = conv_net()
    reference = copy.deepcopy(model)
    x, y = images(2)
    MSAM(model.parameters(), torch.optim.SGD, rho=0.1, micro=4, bn="freeze", lr=0.1).step(
        model, per_sample_ce, x, y)
    for layer in reference.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.track_running_stats = False  # batch statistics, no running update
    params = list(reference.parameters())
    total = [torch.zeros_like(p) for p in params]
    for xs, ys in zip(x.split(4), y.split(4)):
        g = torch.autograd.grad(per_sample_ce(reference(xs), ys).mean(), params)
        scale = 0.1 / torch.sqrt(sum((v * v).sum() for v in g))
        with torch.no_grad():
            for p, v in zip(params, g):
                p.add_(scale * v)
        descent = torch.autograd.grad(per_sample_ce(reference(xs), ys).mean(), params)
        with torch.no_grad():
            for p, v in zip(params, g):
                p.sub_(scale * v)
        for t, v in zip(total, descent):
            t.add_(v / 2)
    with torch.no_grad():
        for p, t in zip(params, total):
            p.sub_(0.1 * t)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# -- state dicts and schedulers ---------------------------------------------------------------------

@pytest.mark.parametrize("name,options", RULES + [("rw-sam", {"generator": "seeded"})])
def test_state_dict_round_trip_continues_identically(name, options):
    options = dict(options)
    seeded = options.pop("generator", None) == "seeded"

    def build(model):
        extra = rho_for(name)
        if seeded:
            extra["generator"] = torch.Generator().manual_seed(0)
        return create(name, model.parameters(), **extra, **options, **BASE)

    model = conv_net("gn")
    opt = build(model)
    for seed in range(2):
        opt.step(model, per_sample_ce, *images(seed))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    torch.manual_seed(5)
    opt.step(model, per_sample_ce, *images(9))

    restored = conv_net("gn", seed=1)
    restored.load_state_dict(saved_model)
    other = build(restored)
    other.load_state_dict(saved_opt)
    torch.manual_seed(5)
    other.step(restored, per_sample_ce, *images(9))
    for p, q in zip(model.parameters(), restored.parameters()):
        torch.testing.assert_close(p, q)
    assert other.param_groups is other.base_optimizer.param_groups


def test_load_state_dict_of_another_rule_is_refused():
    model = mlp()
    sd = SAM(model.parameters(), rho=0.1, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="state_dict"):
        RWSAM(model.parameters(), rho=0.1, lr=0.1).load_state_dict(sd)


def test_lr_scheduler_attaches_to_the_optimizer():
    model = mlp()
    opt = SAM(model.parameters(), rho=0.1, lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(model, per_sample_ce, *vectors(0))
    scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


# -- argument checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("build,argument", [
    (lambda p: SAM(p, rho=-0.1, lr=0.1), "rho"),
    (lambda p: create("adam-sam", p, lr=0.1), "algorithm"),
    (lambda p: SAM(p, rho=0.1, bn="sync", lr=0.1), "bn"),
    (lambda p: SAM(p, rho=0.1, accumulate=0, lr=0.1), "accumulate"),
    (lambda p: SAM(p, rho=0.1, autocast_dtype=torch.float64, lr=0.1), "autocast_dtype"),
    (lambda p: MSAM(p, rho=0.1, lr=0.1), "micro"),
    (lambda p: MSAM(p, rho=0.1, micro=0, lr=0.1), "micro"),
    (lambda p: RWSAM(p, rho=0.1, lam=-1.0, lr=0.1), "lam"),
    (lambda p: RWSAM(p, rho=0.1, delta=0.0, lr=0.1), "delta"),
    (lambda p: create("sgd", p, rho=0.1, lr=0.1), "rho is not accepted by 'sgd'"),
    (lambda p: create("sam", p, micro=2, lr=0.1), "micro is not accepted by 'sam'"),
    (lambda p: create("m-sam", p, rho=0.1, lr=0.1), "micro is required"),
    (lambda p: create("sam", p, lam=1.0, lr=0.1), "lam is not accepted"),
    (lambda p: MSAM(p, micro=2, vmap_budget_mb=-1.0, lr=0.1), "vmap_budget_mb"),
    (lambda p: create("sgd", p, betas=(0.9, 0.99), lr=0.1), "base optimizer"),
    (lambda p: create("n-sam", p, rho=0.1, ascent_data=(torch.zeros(3), torch.zeros(2)), lr=0.1), "ascent_data"),
])
def test_bad_constructor_arguments_raise_value_error(build, argument):
    with pytest.raises(ValueError, match=argument):
        build(mlp().parameters())


def test_bad_step_arguments_raise_value_error_before_any_work():
    model = mlp()
    before = [p.clone() for p in model.parameters()]
    x, y = vectors(0, size=6)
    with pytest.raises(ValueError, match="micro must divide"):
        MSAM(model.parameters(), rho=0.1, micro=4, lr=0.1).step(model, per_sample_ce, x, y)
    with pytest.raises(ValueError, match="accumulate must divide"):
        SAM(model.parameters(), rho=0.1, accumulate=4, lr=0.1).step(model, per_sample_ce, x, y)
    with pytest.raises(ValueError, match="per-sample losses"):
        SAM(model.parameters(), rho=0.1, lr=0.1).step(
            model, lambda o, t: F.cross_entropy(o, t), x, y)
    with pytest.raises(ValueError, match="targets"):
        SAM(model.parameters(), rho=0.1, lr=0.1).step(model, per_sample_ce, x, y[:3])
    with pytest.raises(ValueError, match="ascent_data"):
        create("n-sam", model.parameters(), rho=0.1, lr=0.1).step(model, per_sample_ce, x, y)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


# -- precision ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,norm", [
    ("sam", {}, "bn"), ("rw-sam", {"lam": 1.0}, "bn"), ("m-sam", {"micro": 4}, "gn"),
    ("rw-sam", {"lam": 1.0, "accumulate": 2}, "bn"),
])
def test_bf16_autocast_step_runs_on_cpu(name, options, norm):
    model = conv_net(norm)
    before = [p.clone() for p in model.parameters()]
    opt = create(name, model.parameters(), rho=0.1, autocast_dtype=torch.bfloat16, **options, **BASE)
    loss, outputs = opt.step(model, per_sample_ce, *images(0), return_outputs=True)
    assert torch.isfinite(loss) and outputs.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_msam_refuses_batchnorm_under_cpu_autocast():
    model = conv_net("bn")
    opt = MSAM(model.parameters(), rho=0.1, micro=4, autocast_dtype=torch.bfloat16, lr=0.1)
    with pytest.raises(ValueError, match="autocast_dtype"):
        opt.step(model, per_sample_ce, *images(0))


def test_fp16_scaling_unscales_once_and_skips_overflow():
    model, twin = mlp(), mlp()
    # Without autocast on CPU the passes stay float64; the scale must cancel exactly.
    scaled = SAM(model.parameters(), rho=0.1, lr=0.1, loss_scale=2.0**10)
    scaled.scaler.enabled = True
    plain = SAM(twin.parameters(), rho=0.1, lr=0.1)
    x, y = vectors(0)
    scaled.step(model, per_sample_ce, x, y)
    plain.step(twin, per_sample_ce, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    assert scaled.scaler.good_steps == 1
    before = [p.clone() for p in model.parameters()]
    scaled.scaler.scale = float("inf")
    scaled.step(model, per_sample_ce, x, y)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q), "a non-finite step must leave the parameters unchanged"
    assert scaled.scaler.good_steps == 0, "the overflow must reset the growth count"


def test_fp16_autocast_step_runs_on_cpu():
    model = conv_net("gn")
    opt = SAM(model.parameters(), rho=0.1, autocast_dtype=torch.float16, lr=0.1)
    loss = opt.step(model, per_sample_ce, *images(0))
    assert torch.isfinite(loss)
    assert opt.scaler.scale == 2.0**16


# -- accumulation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", [
    ("sam", {}), ("usam", {}), ("m-sam", {"micro": 2}), ("m-sam", {"micro": 8}),
    ("rw-sam", {"lam": 2.0, "generator": 0}), ("sgd", {}),
])
def test_accumulation_equals_the_whole_batch_step(name, options):
    def run(accumulate):
        model = mlp()
        extra = dict(options)
        if "generator" in extra:
            extra["generator"] = torch.Generator().manual_seed(extra["generator"])
        extra.update(rho_for(name))
        opt = create(name, model.parameters(), accumulate=accumulate, **extra, **BASE)
        losses = [opt.step(model, per_sample_ce, *vectors(seed)) for seed in range(3)]
        return model, losses

    whole, whole_losses = run(1)
    chunked, chunked_losses = run(4)
    torch.testing.assert_close(torch.stack(whole_losses), torch.stack(chunked_losses))
    for p, q in zip(whole.parameters(), chunked.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
