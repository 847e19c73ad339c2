"""Models: shapes, parameter counts of the published architectures, GroupNorm variants, ViT loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdesam.train.models import VisionTransformer, build_model, load_vit


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params", [("small", 94_538), ("resnet18", 11_173_962),
                                          ("resnet50", 23_520_842), ("wrn28-10", 36_479_194)])
def test_architectures_have_the_published_sizes(name, params):
    # the CIFAR ResNet-18/50 and WRN-28-10 sizes widely reported for the SAM experiments
    model = build_model(name, 10)
    assert _count(model) == params
    if name in ("small", "resnet18"):
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, shape, params", [("cnn1d", (1, 40), 5_210), ("mlp1d", (1, 40), 15_210),
                                                 ("mlp1d", (1, 8, 8), 17_610)])
def test_mnist1d_benchmark_models_have_their_sizes_and_flatten_any_input(name, shape, params):
    # the MNIST-1D benchmark's CNN (3 conv layers of 25 channels) and MLP (2 x 100 hidden units)
    model = build_model(name, 10, input_shape=shape)
    assert _count(model) == params
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())


@pytest.mark.parametrize("name, shape, params", [("cnn1d", (1, 40), 5_210 + 3 * 2 * 25),
                                                 ("mlp1d", (1, 40), 15_210 + 2 * 2 * 100)])
def test_signal_models_take_batchnorm_on_request_and_it_couples_the_batch(name, shape, params):
    torch.manual_seed(0)
    model = build_model(name, 10, norm="bn", input_shape=shape).train()
    assert _count(model) == params  # a weight and a bias per normalised channel
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == (3 if name == "cnn1d" else 2)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        halves = torch.cat([model(x[:4]), model(x[4:])])
        assert not torch.allclose(model(x), halves, atol=1e-4)  # statistics of the batch seen
    with pytest.raises(ValueError, match="norm for model cnn1d must be one of none, bn"):
        build_model("cnn1d", 10, norm="gn")


def test_resnet50_and_wrn_forward_on_cifar_shapes():
    torch.manual_seed(0)
    for name in ("resnet50", "wrn28-10"):
        model = build_model(name, 100, norm="gn").eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize("name", ["resnet18", "small"])
def test_groupnorm_variant_keeps_samples_independent_in_train_mode(name):
    torch.manual_seed(0)
    gn, bn = build_model(name, 10, norm="gn").train(), build_model(name, 10, norm="bn").train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in gn.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        alone = torch.cat([gn(x[i:i + 1]) for i in range(4)])
        assert torch.allclose(gn(x), alone, atol=1e-5)
        bn_alone = torch.cat([bn(x[i:i + 2]) for i in (0, 2)])
        assert not torch.allclose(bn(x), bn_alone, atol=1e-3)  # BatchNorm couples the batch


def test_bad_names_raise_value_errors():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet34", 10)
    with pytest.raises(ValueError, match="norm must be one of"):
        build_model("resnet18", 10, norm="layer")
    with pytest.raises(ValueError, match="needs checkpoint"):
        build_model("vit", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small", 1)


def test_vit_loads_a_local_checkpoint_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    source = VisionTransformer(num_classes=7, image_size=16, patch_size=8, dim=64, depth=2,
                               heads=1, mlp_dim=96)
    plain, with_config = tmp_path / "plain.pt", tmp_path / "config.pt"
    torch.save(source.state_dict(), plain)
    config = dict(image_size=16, patch_size=8, dim=64, depth=2, heads=4, mlp_dim=96)
    torch.save({"state_dict": source.state_dict(), "config": config}, with_config)
    model = build_model("vit", 10, checkpoint=plain)
    assert len(model.blocks) == 2 and model.blocks[0].attn.heads == 1  # heads = dim / 64
    assert model.blocks[0].attn.qkv.weight.shape == (192, 64)
    assert torch.equal(model.pos_embed, source.pos_embed)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert model.head.weight.shape == (10, 64) and torch.all(model.head.weight == 0)
    assert load_vit(with_config, 10).blocks[0].attn.heads == 4
    out = model(torch.randn(3, 3, 32, 32))  # resized to the checkpoint's 16x16
    assert out.shape == (3, 10) and torch.all(out == 0)  # zero head at the start
    with pytest.raises(ValueError, match="does not exist"):
        load_vit(tmp_path / "missing.pt", 10)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a ViT"):
        load_vit(tmp_path / "other.pt", 10)
