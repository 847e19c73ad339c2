"""sdesam train under faults: rule keywords the rule does not take, divergence, a full disk, two
runs on one folder. Each is one line and an exit status, never a silent result or a traceback."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdesam import algorithms
from sdesam.algorithms import RULE_KEYWORDS, get_rule
from sdesam.cli import build_parser
from sdesam.cli import main as sdesam_main
from sdesam.experiment import outputs
from sdesam.optim import optimizer_names
from sdesam.train import TrainConfig, checkpoint, epochs, loop, train
from sdesam.train.models import build_model
from sdesam.validation import InputError

TINY = dict(dataset="synthetic", synthetic_train=128, synthetic_test=64, model="small",
            batch_size=32, progress=False)
TINY_FLAGS = ["--dataset", "synthetic", "--model", "small", "--synthetic-train", "128",
              "--synthetic-test", "64", "--batch", "32", "--no-progress"]
VALUES = {"rho": 0.1, "micro": 8, "lam": 2.0, "delta": 1e-3}


def strict_json(line: str) -> dict:
    """``line`` parsed as strict JSON (bare NaN / Infinity refused)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON: {line}")
    return json.loads(line, parse_constant=refuse)


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text.strip()


# -- 3: a rule keyword the rule does not take is refused, read from rule.keywords ---------------

def test_cli_refuses_lam_for_sam_before_any_work(tmp_path, capsys):
    status = sdesam_main(["train", "--rule", "sam", "--lam", "5", "--out", str(tmp_path / "run")])
    assert status == 2
    assert one_line(capsys.readouterr().err) == \
        "sdesam train: error: lam is not accepted by 'sam' (it accepts: rho)"
    assert not (tmp_path / "run").exists()


CASES = [(name, word) for name in optimizer_names() for word in RULE_KEYWORDS
         if word not in get_rule(name).keywords]


@pytest.mark.parametrize("name, word", CASES, ids=[f"{n}-{w}" for n, w in CASES])
def test_every_keyword_a_rule_does_not_take_is_refused(name, word):
    needed = {"micro": VALUES["micro"]} if get_rule(name).micro else {}
    config = TrainConfig(out="unused", optimizer=name, **needed, **{word: VALUES[word]}, **TINY)
    with pytest.raises(InputError, match=rf"^{word} is not accepted by '{name}' \(.*it accepts: "):
        config.validate()


@pytest.mark.parametrize("name", optimizer_names())
def test_every_keyword_a_rule_takes_is_accepted_and_defaults_resolve_from_the_rule(name):
    rule = get_rule(name)
    TrainConfig(out="unused", optimizer=name, **{w: VALUES[w] for w in rule.keywords}, **TINY).validate()
    options = TrainConfig(out="unused", optimizer=name, micro=8 if rule.micro else None,
                          **TINY).rule_options()
    assert {word for word, value in options.items() if value is not None} == set(rule.keywords)


def test_the_cli_sets_no_rule_keyword_the_user_did_not_give():
    args = build_parser(["train"]).parse_args(["train", "--out", "x"])
    assert all(getattr(args, word) is None for word in RULE_KEYWORDS)


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit) as done:
        sdesam_main(["train", "--help"])
    assert done.value.code == 0
    return "".join(capsys.readouterr().out.split())   # help wraps lines anywhere


def test_train_help_lists_the_rules_of_the_registry_at_call_time(capsys):
    rule = algorithms.Rule("help-test-usam", "part", False, False, "a rule for this test")
    with algorithms.registered(rule):
        text = _train_help(capsys)
        for name in [*optimizer_names(), "help-test-usam"]:
            assert "".join(f"{name}: {get_rule(name).description}".split()) in text, name
    assert "help-test-usam" not in _train_help(capsys)


# -- 4: divergence stops the run, is recorded, and exits 1 --------------------------------------

def test_a_diverging_run_stops_with_one_line_and_status_1(tmp_path, capsys):
    out = tmp_path / "run"
    status = sdesam_main(["train", *TINY_FLAGS, "--rule", "sam", "--lr", "1e4", "--epochs", "3",
                          "--out", str(out)])
    assert status == 1
    captured = capsys.readouterr()
    line = one_line(captured.err)
    diverged = json.loads((out / "config.json").read_text())["diverged"]
    assert diverged["epoch"] == 1 and 1 <= diverged["step"] <= 4
    assert line == (f"sdesam train: diverged at epoch 1, step {diverged['step']}: "
                    f"{diverged['reason']}; stopped (recorded in {out / 'config.json'}; "
                    "no checkpoint was written)")
    assert diverged["reason"].startswith("the training loss is nan at lr ")
    assert "done:" not in captured.out and not (out / "checkpoint.pt").exists()


def _poison(model: torch.nn.Module) -> None:
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")


def test_divergence_after_a_checkpoint_keeps_it_and_the_metrics_stay_json(tmp_path, monkeypatch):
    original = loop._run_epoch

    def poisoned_second_epoch(run, epoch):
        if epoch == 1:
            _poison(run.model)                      # the next step's loss is NaN
        return original(run, epoch)

    monkeypatch.setattr(loop, "_run_epoch", poisoned_second_epoch)
    result = train(TrainConfig(out=str(tmp_path), optimizer="sgd", epochs=3, **TINY))
    assert result.diverged["epoch"] == 2 and result.diverged["step"] == 5  # 4 steps an epoch
    assert [r["epoch"] for r in result.metrics] == [1]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line)["epoch"] for line in lines] == [1]
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(t).all() for t in saved["model"].values())
    assert json.loads((tmp_path / "config.json").read_text())["diverged"] == result.diverged


def test_parameters_gone_non_finite_in_the_last_step_are_divergence_too(tmp_path, monkeypatch):
    original = loop._run_epoch

    def poisoned_epoch(run, epoch):
        sums_seconds = original(run, epoch)
        _poison(run.model)
        return sums_seconds

    monkeypatch.setattr(loop, "_run_epoch", poisoned_epoch)
    result = train(TrainConfig(out=str(tmp_path), optimizer="sam", epochs=2, **TINY))
    assert result.diverged["epoch"] == 1 and result.diverged["step"] == 4
    assert "parameters are no longer finite" in result.diverged["reason"]
    assert result.metrics == [] and not (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_non_finite_measurement_is_written_as_null(tmp_path, monkeypatch):
    monkeypatch.setattr(epochs, "evaluate", lambda run, inputs, labels: (float("nan"), 10.0))
    result = train(TrainConfig(out=str(tmp_path), optimizer="sgd", epochs=1, **TINY))
    record = strict_json((tmp_path / "metrics.jsonl").read_text())
    assert record["test_loss"] is None and record["test_acc"] == 10.0
    assert result.diverged is None and math.isfinite(record["train_loss"])
    assert "test loss non-finite acc 10.00%" in loop._summary_line(record)


# -- 14: room for a checkpoint is checked from the model; a full disk is one line -------------

def _fresh_model_and_optimizer(config: TrainConfig):
    data = loop.prepare_data(config, torch.device("cpu"))
    model = loop.initial_model(config, data, torch.device("cpu"))
    return model, loop.build_optimizer(config, model, torch.device("cpu"))


def test_the_room_check_is_sized_from_model_and_optimizer(tmp_path, monkeypatch):
    config = TrainConfig(out=str(tmp_path / "run"), optimizer="sam", epochs=1, **TINY)
    needed = loop.needed_bytes(*_fresh_model_and_optimizer(config))
    usage = outputs.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda folder: usage._replace(free=needed - 1))
    with pytest.raises(InputError, match=r"--out .*: no space left on .* the run needs about"):
        train(config)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".claim"]  # nothing written
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda folder: usage._replace(free=needed))
    train(config)
    written = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    tensors = checkpoint._tensor_bytes(written["model"]) + checkpoint._tensor_bytes(written["optimizer"])
    assert tensors <= needed - outputs.DEFAULT_HEADROOM_BYTES
    assert os.path.getsize(tmp_path / "run" / "checkpoint.pt") <= needed


def test_a_resnet18_checkpoint_needs_more_than_the_old_fixed_16_mib():
    model = build_model("resnet18", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = checkpoint.checkpoint_bytes(model, optimizer)
    assert bound >= 3 * parameters > 16 * 2**20   # weights, momentum, one slot to spare


def test_a_full_disk_while_checkpointing_is_one_line_with_the_resume_command(tmp_path, monkeypatch,
                                                                             capsys):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:                        # the second epoch's checkpoint
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    flags = ["train", *TINY_FLAGS, "--rule", "sam", "--epochs", "3", "--out", str(out)]
    assert sdesam_main(flags) == 2
    line = one_line(capsys.readouterr().err)
    prefix = (f"sdesam train: error: no space left on {outputs.device_of(out)} while writing "
              f"{str(out / 'checkpoint.pt')!r}; its previous version is kept; free some space, "
              "then continue with: ")
    assert line.startswith(prefix)
    command = line.removeprefix(prefix).split()
    assert command[:2] == ["sdesam", "train"] and command[-1] == "--resume"
    assert sorted(p.name for p in out.iterdir()) == [".claim", "checkpoint.pt", "config.json",
                                                     "metrics.jsonl"]   # no partial file
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert sdesam_main(command[1:]) == 0
    assert [strict_json(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# -- 5: two runs on one --out at once: the second is refused ----------------------------------

SLOWED = """
import sys, time
from sdesam.train import loop
name, seconds = sys.argv[1], float(sys.argv[2])
original = getattr(loop, name)
def slowed(*args, **kwargs):
    time.sleep(seconds)
    return original(*args, **kwargs)
setattr(loop, name, slowed)
from sdesam.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_two_runs_started_together_on_one_out_one_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = ["prepare_data", "3", "train", *TINY_FLAGS, "--rule", "sgd", "--epochs", "1",
            "--out", str(out)]  # the data take 3 s to load: both start before either writes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", SLOWED, *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(run.pid, *run.communicate(timeout=300), run.returncode) for run in runs]
    assert sorted(status for *_, status in results) == [0, 2], results
    (winner, *_), (_, _, error, _) = sorted(results, key=lambda r: r[-1])
    assert one_line(error) == (f"sdesam train: error: --out {str(out)!r} is in use by another run "
                               f"(process {winner}); wait for it to finish or choose another --out")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
