"""The training loop: the CLI end to end, a plain reference loop, exact resume, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sdesam.cli import main as sdesam_main
from sdesam.train import TrainConfig, train
from sdesam.train.augment import crop_flip, draw_crop_flip, normalize
from sdesam.train.data import batch_indices, epoch_generator, synthetic_dataset, write_cifar
from sdesam.train.models import VisionTransformer, build_model

TINY = dict(dataset="synthetic", synthetic_train=128, synthetic_test=64, model="small",
            batch_size=32, progress=False)


def test_cli_trains_rw_sam_and_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    status = sdesam_main(["train", "--dataset", "synthetic", "--model", "small", "--optimizer",
                          "rw-sam", "--epochs", "1", "--out", str(out), "--synthetic-train", "128",
                          "--synthetic-test", "64", "--batch-size", "32", "--no-progress"])
    assert status == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and record["step"] == 4
    assert math.isfinite(record["train_loss"]) and 0 <= record["test_acc"] <= 100
    assert record["images_per_s"] > 0 and record["step_time_s"] > 0
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["config"]["optimizer"] == "rw-sam"
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["lam"] is None and config["resolved"]["lam"] == 1.0  # RW-SAM's default
    assert config["diverged"] is None and "torch" in config["metadata"]["versions"]


def test_sgd_run_equals_a_plain_reference_loop(tmp_path):
    epochs, seed = 2, 3
    result = train(TrainConfig(out=str(tmp_path), optimizer="sgd", epochs=epochs, seed=seed,
                               weight_decay=5e-4, momentum=0.9, lr=0.05, **TINY))
    # the reference: the same data order and crops, torch.optim.SGD, cosine lr written out
    torch.manual_seed(seed)
    data = synthetic_dataset(128, 64, seed=seed)
    model = build_model("small", 10)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total, step = epochs * (128 // 32), 0
    for epoch in range(epochs):
        crops = epoch_generator(seed, epoch, stream=1)
        for batch in batch_indices(128, 32, epoch_generator(seed, epoch, stream=0)):
            dy, dx, flips = draw_crop_flip(32, 4, crops)
            x = normalize(crop_flip(data.train_images[batch], dy, dx, flips, 4), data.mean, data.std)
            for group in sgd.param_groups:
                group["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * step / total))
            sgd.zero_grad()
            F.cross_entropy(model(x), data.train_labels[batch]).backward()
            sgd.step()
            step += 1
    for trained, reference in zip(result.model.parameters(), model.parameters()):
        torch.testing.assert_close(trained, reference, rtol=1e-5, atol=1e-6)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer, norm, extra", [("rw-sam", "none", {}),
                                                   ("m-sam", "bn", {"micro": 8})])
def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path, optimizer, norm,
                                                                      extra):
    settings = dict(optimizer=optimizer, norm=norm, epochs=3, seed=1, **extra, **TINY)
    full = train(TrainConfig(out=str(tmp_path / "full"), **settings))

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(TrainConfig(out=str(tmp_path / "cut"), **settings), on_epoch_end=stop_after_two)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match=r"--out .*cut' already holds a run .* --resume .* --overwrite"):
        train(TrainConfig(out=str(tmp_path / "cut"), **settings))  # neither resume nor overwrite
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), resume=True, **settings))
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
    for a, b in zip(full.metrics, resumed.metrics):
        assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]


def test_resume_refuses_changed_settings(tmp_path):
    train(TrainConfig(out=str(tmp_path), optimizer="sgd", epochs=1, **TINY))
    with pytest.raises(ValueError, match=r"lr: 0.1 -> 0.2"):
        train(TrainConfig(out=str(tmp_path), optimizer="sgd", epochs=1, lr=0.2, resume=True, **TINY))


def test_cifar_files_train_end_to_end(tmp_path):
    source = synthetic_dataset(80, 40, seed=0)
    write_cifar(tmp_path / "data", "cifar10", (source.train_images, source.train_labels),
                (source.test_images, source.test_labels), [f"c{k}" for k in range(10)])
    settings = {**TINY, "dataset": "cifar10"}
    del settings["synthetic_train"], settings["synthetic_test"]
    result = train(TrainConfig(out=str(tmp_path / "run"), data_dir=str(tmp_path / "data"),
                               optimizer="sam", epochs=1, **settings))
    assert result.metrics[0]["step"] == 80 // 32
    assert result.settings["dataset"] == "cifar10"


def test_vit_fine_tunes_from_a_local_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = VisionTransformer(5, image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64)
    torch.save({"state_dict": source.state_dict(),
                "config": dict(image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64)},
               tmp_path / "vit.pt")
    settings = {**TINY, "model": "vit", "pretrained": str(tmp_path / "vit.pt")}
    result = train(TrainConfig(out=str(tmp_path / "run"), optimizer="sam", epochs=1, **settings))
    assert result.model.head.out_features == 10
    assert not torch.equal(result.model.pos_embed, source.pos_embed)  # fine-tuned
    assert result.metrics[0]["step"] == 4


def test_trace_v_is_recorded_and_matches_a_hand_computation(tmp_path):
    result = train(TrainConfig(out=str(tmp_path), optimizer="sam", epochs=1, trace_every=1,
                               probe_size=12, **TINY))
    measured = result.metrics[0]["trace_V"]
    data = synthetic_dataset(128, 64, seed=0)
    x = normalize(data.train_images[:12], data.mean, data.std)
    model = result.model.eval()
    grads = []
    for i in range(12):
        loss = F.cross_entropy(model(x[i:i + 1]), data.train_labels[i:i + 1])
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    g = torch.stack(grads).double()
    by_hand = (g.pow(2).sum(1).mean() - g.mean(0).pow(2).sum()).item()
    assert measured > 0 and measured == pytest.approx(by_hand, rel=1e-4)


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "m-sam"}, "micro is required by 'm-sam'"),
    ({"optimizer": "m-sam", "micro": 5}, "micro must divide"),
    ({"optimizer": "sam", "micro": 4}, "micro is not accepted by 'sam' \\(it accepts: rho\\)"),
    ({"optimizer": "adam"}, "optimizer must be one of"),
    ({"dataset": "cifar10"}, "data_dir is required"),
    ({"lr": -1.0}, "lr must be a non-negative"),
    ({"rho": -0.1, "optimizer": "sam"}, "rho must be a non-negative"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"accumulate": 3}, "accumulate must divide"),
    ({"precision": "fp16"}, "fp16 needs a CUDA device"),
    ({"device": "tpu"}, "device must be cpu, cuda"),
    ({"model": "vit"}, "pretrained"),
    ({"pretrained": "weights.pt"}, "pretrained"),
    ({"local_perturbation": True}, "local_perturbation is an option of the reweighted"),
    ({"optimizer": "m-usam"}, "micro is required by 'm-usam'"),
    ({"dataset": "mnist1d", "model": "small"}, "needs cnn1d or mlp1d"),
    ({"dataset": "digits", "augment": True}, "augment .* applies to 32x32 images"),
    ({"val_fraction": 1.0}, "val_fraction must be a number in"),
    ({"label_noise": -0.2}, "label_noise must be a number in"),
    ({"resume": True, "overwrite": True}, "exclude each other"),
    ({"synthetic_train": 16}, "synthetic_train must be at least batch_size"),
])
def test_bad_settings_raise_before_any_work(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(out=str(tmp_path / "x"), **{**TINY, **changes}))
    assert not (tmp_path / "x").exists()


def test_cli_reports_bad_settings_with_status_2(tmp_path, capsys):
    status = sdesam_main(["train", "--optimizer", "m-sam", "--micro", "3", "--batch-size", "32",
                          "--out", str(tmp_path)])
    assert status == 2
    assert "micro must divide batch" in capsys.readouterr().err
    status = sdesam_main(["train", "--dataset", "cifar100", "--data-dir", str(tmp_path),
                          "--out", str(tmp_path / "o")])
    assert status == 2 and "missing" in capsys.readouterr().err


def test_cli_refuses_an_out_holding_a_run_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["train", "--optimizer", "sgd", "--epochs", "1", "--out", str(out), "--synthetic-train",
             "64", "--synthetic-test", "32", "--batch-size", "32", "--no-progress"]
    assert sdesam_main(flags) == 0
    first = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert sdesam_main(flags) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"--out {str(out)!r} already holds a run" in error
    assert (out / "metrics.jsonl").read_text() == first  # nothing was touched
    (out / "metrics.jsonl").write_text("stale\n")
    assert sdesam_main(flags + ["--overwrite"]) == 0  # afresh: the same run again
    assert (out / "metrics.jsonl").read_text().splitlines()[0].split('"epoch_time_s"')[0] == \
        first.splitlines()[0].split('"epoch_time_s"')[0]


def test_optimizer_choices_are_the_rule_registry_and_every_rule_trains(tmp_path):
    from sdesam import layers
    from sdesam.algorithms import get_rule, rule_names
    from sdesam.optim import optimizer_names
    assert optimizer_names() == rule_names(lambda r: layers.support("optimizer", r) is None)
    for name in optimizer_names():
        rule = get_rule(name)
        extra = {"micro": 8} if rule.micro else {}
        result = train(TrainConfig(out=str(tmp_path / name), optimizer=name, epochs=1, **extra,
                                   **{**TINY, "synthetic_train": 32, "synthetic_test": 8}))
        assert math.isfinite(result.metrics[0]["train_loss"]), name


def test_mnist1d_trains_from_the_cli_with_validation_and_label_noise(tmp_path, capsys):
    out = tmp_path / "m1d"
    status = sdesam_main(["train", "--dataset", "mnist1d", "--model", "cnn1d", "--optimizer", "sam",
                          "--epochs", "1", "--batch-size", "100", "--val-fraction", "0.2",
                          "--label-noise", "0.4", "--data-dir", str(tmp_path / "data"),
                          "--out", str(out), "--no-progress"])
    assert status == 0
    assert "data: mnist1d, sha256 " in capsys.readouterr().out  # and "(canonical)" or a warning
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["step"] == 32 and 0 <= record["val_acc"] <= 100  # 3200 training signals
    config = json.loads((out / "config.json").read_text())
    from sdesam.train.cpu_data import MNIST1D_SHA256

    assert config["data"]["sha256"] == MNIST1D_SHA256 and config["data"]["val_size"] == 800
    assert len(config["data"]["flipped_indices"]) == 1280 and config["resolved"]["augment"] is False
