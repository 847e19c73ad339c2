"""The training loop: SGD, SAM, USAM, m-SAM and RW-SAM on image classifiers, resumable.

:class:`TrainConfig` holds every setting; :func:`train` runs it. Each epoch: a shuffled pass
over the training set held on the device (crop + flip done there in batches), one optimizer
step per batch through :func:`sdesam.optim.create` (all rules alike: ``opt.step(model,
loss_fn, inputs, targets)``), the learning rate set per step from a pure schedule function,
evaluation on the test set, a JSON-lines metrics record (loss, accuracy, step time, images/s
and, every ``trace_every`` epochs, the gradient-noise trace tr V on a fixed probe batch) and an
atomically written checkpoint from which ``resume=True`` continues exactly.

Defaults follow the CIFAR set-up of the first author's previous SAM paper (Eigen-SAM,
NeurIPS 2024), because this paper's own set-up is not known: SGD with momentum 0.9, lr 0.1,
cosine schedule, 200 epochs, batch 256, weight decay 5e-4, rho 0.05 (CIFAR-10) / 0.1
(CIFAR-100), random crop (padding 4) + horizontal flip.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sdesam.algorithms import check_rho, check_sizes, get_rule
from sdesam.optim import DEFAULT_DELTA, create
from sdesam.records import atomic_write, run_metadata, write_json
from sdesam.train import augment, checkpoint, distributed
from sdesam.train.data import (DATASETS, ImageDataset, batch_indices, epoch_generator,
                               eval_batches, load_dataset, shard)
from sdesam.train.models import MODELS, build_model
from sdesam.train.schedule import SCHEDULES, lr_factor

OPTIMIZERS: tuple[str, ...] = ("sgd", "sam", "usam", "m-sam", "rw-sam")
BN_POLICIES: tuple[str, ...] = ("first-pass", "freeze")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

# settings that may differ between an interrupted run and its resumption
_FREE_ON_RESUME = frozenset({"out", "resume", "progress", "device", "compile", "eval_batch_size",
                             "trace_every", "probe_size"})


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI flags map one to one onto these fields)."""

    out: str
    dataset: str = "synthetic"
    data_dir: str | None = None
    synthetic_train: int = 5000
    synthetic_test: int = 1000
    model: str = "small"
    norm: str | None = None
    pretrained: str | None = None
    optimizer: str = "sgd"
    rho: float | None = None
    micro: int | None = None
    lam: float = 1.0
    delta: float = DEFAULT_DELTA
    local_perturbation: bool = False
    bn: str = "first-pass"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    epochs: int = 200
    batch_size: int = 256
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.2
    label_smoothing: float = 0.0
    augment: bool = True
    padding: int = 4
    precision: str = "auto"
    accumulate: int = 1
    compile: bool = False
    eval_batch_size: int = 1024
    trace_every: int = 0
    probe_size: int = 128
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    progress: bool = True

    @property
    def effective_rho(self) -> float:
        """rho, or its dataset default: 0.1 for CIFAR-100, 0.05 otherwise."""
        if self.rho is not None:
            return self.rho
        return 0.1 if self.dataset == "cifar100" else 0.05

    def validate(self, world_size: int = 1) -> None:
        """Raise a ValueError naming the first setting that is out of range (before any work)."""
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("model", self.model, MODELS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("bn", self.bn, BN_POLICIES)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size", "accumulate", "eval_batch_size", "probe_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "lam", "label_smoothing",
                     "trace_every", "padding"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}")
        if self.delta <= 0:
            raise ValueError(f"delta must be > 0; got {self.delta!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing!r}")
        check_rho(self.effective_rho)
        if self.batch_size % world_size:
            raise ValueError(f"batch_size must be divisible by the number of processes "
                             f"{world_size}; got {self.batch_size}")
        per_device = self.batch_size // world_size
        if self.optimizer == "m-sam" and self.micro is None:
            raise ValueError("optimizer m-sam needs micro, the micro-batch size m (m divides "
                             "the per-device batch)")
        check_sizes(get_rule(self.optimizer).name, per_device, self.micro)
        if per_device % self.accumulate:
            raise ValueError(f"accumulate must divide the per-device batch {per_device}; "
                             f"got {self.accumulate}")
        if self.dataset == "synthetic" and self.synthetic_train < self.batch_size:
            raise ValueError(f"synthetic_train must be at least batch_size {self.batch_size}; "
                             f"got {self.synthetic_train}")
        if (self.model == "vit") != (self.pretrained is not None):
            raise ValueError("pretrained (a local weights file) is required by model vit and "
                             f"used by no other model; got model={self.model!r}, "
                             f"pretrained={self.pretrained!r}")
        if self.local_perturbation and self.optimizer != "rw-sam":
            raise ValueError(f"local_perturbation is an rw-sam option; got optimizer "
                             f"{self.optimizer!r}")
        if self.dataset != "synthetic" and self.data_dir is None:
            raise ValueError(f"data_dir is required for dataset {self.dataset} (the folder with "
                             f"the official python-batch files; nothing is downloaded)")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")


def _one_of(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    """Raise a ValueError unless ``value`` is one of ``accepted``."""
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns: the per-epoch records and the trained (unwrapped) model."""

    metrics: list[dict[str, Any]]
    model: nn.Module
    out: Path
    settings: dict[str, Any] = field(default_factory=dict)


def per_sample_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor,
                             label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample cross-entropy [B] in float32 (the loss_fn every optimizer rule receives)."""
    return F.cross_entropy(outputs.float(), targets, reduction="none",
                           label_smoothing=label_smoothing)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto": bf16 on CUDA, none on CPU)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> Any:
    """The SAM-family optimizer of ``config`` over ``model``'s parameters, SGD as base."""
    options: dict[str, Any] = dict(base=torch.optim.SGD, lr=config.lr, momentum=config.momentum,
                                   nesterov=config.nesterov, weight_decay=config.weight_decay,
                                   bn=config.bn, autocast_dtype=autocast_dtype(config.precision, device),
                                   accumulate=config.accumulate)
    if config.optimizer != "sgd":
        options["rho"] = config.effective_rho
    if config.optimizer == "m-sam":
        options["micro"] = config.micro
    if config.optimizer == "rw-sam":
        options.update(lam=config.lam, delta=config.delta,
                       local_perturbation=config.local_perturbation)
    return create(config.optimizer, model.parameters(), **options)


def _resume_state(config: TrainConfig, path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint to continue from (``None`` for a fresh run); checks the settings match."""
    if not config.resume or not path.is_file():
        return None
    state = checkpoint.load_checkpoint(path, map_location=device)
    saved, current = state["config"], _settings(config)
    differing = sorted(key for key in current if key not in _FREE_ON_RESUME
                       and saved.get(key) != current[key])
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differing)
        raise ValueError(f"resume: the settings differ from the checkpoint's ({details}); "
                         f"use the same settings or another out directory")
    return state


def _settings(config: TrainConfig) -> dict[str, Any]:
    """``config`` as plain JSON-able values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl atomically: one JSON object per completed epoch."""
    atomic_write(path, lambda handle: handle.writelines(json.dumps(r) + "\n" for r in records))


def evaluate(model: nn.Module, data: ImageDataset, batch_size: int,
             context: distributed.DistributedContext, amp: torch.dtype | None,
             channels_last: bool) -> tuple[float, float]:
    """Mean loss and accuracy (%) on the test set; each rank evaluates a strided share and the
    sums are all-reduced."""
    was_training = model.training
    model.eval()
    device = data.test_images.device
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for idx in eval_batches(len(data.test_labels), batch_size, context.rank, context.world_size):
            idx = idx.to(device)
            inputs = augment.normalize(data.test_images[idx], data.mean, data.std, channels_last)
            targets = data.test_labels[idx]
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                outputs = model(inputs)
            totals[0] += per_sample_cross_entropy(outputs, targets).sum().double()
            totals[1] += (outputs.argmax(dim=1) == targets).sum()
            totals[2] += len(targets)
    distributed.all_reduce_sum(totals, context)
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, 100.0 * correct / count


def probe_trace(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor,
                targets: torch.Tensor) -> float:
    """tr V, the trace of the per-sample gradient-noise covariance, on the probe batch.

    Measured in eval mode so that BatchNorm uses its running statistics and the per-sample
    losses are separable.
    """
    from sdesam.per_sample import gradient_noise_trace

    was_training = model.training
    model.eval()
    try:
        return float(gradient_noise_trace(model, loss_fn, inputs, targets))
    finally:
        model.train(was_training)


def train(config: TrainConfig,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Run (or, with ``config.resume``, continue) the training described by ``config``.

    Writes ``out/config.json`` (settings and run metadata), ``out/metrics.jsonl`` and
    ``out/checkpoint.pt`` (rank 0 only). ``on_epoch_end(record)`` is called after each epoch's
    files are written. Under torchrun, joins the process group and trains data-parallel.
    """
    context, device = distributed.init_distributed(config.device)
    try:
        config.validate(context.world_size)
        return _train(config, context, device, on_epoch_end)
    finally:
        distributed.shutdown(context)


def _train(config: TrainConfig, context: distributed.DistributedContext, device: torch.device,
           on_epoch_end: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    """The body of :func:`train`, once the process group and the settings are in place."""
    out = Path(config.out)
    checkpoint_path = out / checkpoint.CHECKPOINT_NAME
    resume_from = _resume_state(config, checkpoint_path, device)
    if config.resume and resume_from is None and context.is_main and config.progress:
        tqdm.write(f"resume: no checkpoint at {checkpoint_path}; starting from scratch")
    if config.trace_every:
        try:
            import sdesam.per_sample  # noqa: F401  (fail before any work if it is missing)
        except ImportError as error:
            raise ValueError(f"trace_every needs sdesam.per_sample ({error})") from None

    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, device, seed=config.seed,
                        synthetic_size=(config.synthetic_train, config.synthetic_test))
    model = build_model(config.model, data.num_classes, config.norm, config.pretrained).to(device)
    channels_last = device.type == "cuda" and config.model != "vit"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        model.compile()
    runner = distributed.wrap_model(model, context, device)
    optimizer = build_optimizer(config, runner, device)
    amp = autocast_dtype(config.precision, device)
    loss_fn = functools.partial(per_sample_cross_entropy, label_smoothing=config.label_smoothing)

    steps_per_epoch = len(data.train_labels) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in config.milestones]
    settings = _settings(config)
    records: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        checkpoint.set_rng_state(resume_from["rng"])
        start_epoch, step = resume_from["epoch"], resume_from["step"]
        records = list(resume_from["metrics"])
    groups = optimizer.base_optimizer.param_groups
    for group in groups:
        group.setdefault("initial_lr", group["lr"])
    if context.is_main:
        write_json(out / "config.json", {"settings": settings,
                                         "world_size": context.world_size,
                                         "resumed_from_epoch": start_epoch,
                                         "metadata": run_metadata(str(device))})

    probe = None
    if config.trace_every:
        index = torch.arange(min(config.probe_size, len(data.train_labels)), device=device)
        probe = (augment.normalize(data.train_images[index], data.mean, data.std, channels_last),
                 data.train_labels[index])

    model.train()
    for epoch in range(start_epoch, config.epochs):
        order = batch_indices(len(data.train_labels), config.batch_size,
                              epoch_generator(config.seed, epoch, stream=0))
        crops = epoch_generator(config.seed, epoch, stream=1)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not (config.progress and context.is_main), leave=False,
                   dynamic_ncols=True)
        _synchronize(device)
        started = time.perf_counter()
        for batch in order:
            offsets = augment.draw_crop_flip(len(batch), config.padding, crops)
            local = shard(batch, context.rank, context.world_size).to(device)
            images = data.train_images[local]
            if config.augment:
                parts = (shard(t, context.rank, context.world_size) for t in offsets)
                images = augment.crop_flip(images, *parts, padding=config.padding)
            inputs = augment.normalize(images, data.mean, data.std, channels_last)
            targets = data.train_labels[local]
            factor = lr_factor(step, total_steps, config.schedule, warmup_steps, milestones,
                               config.gamma)
            for group in groups:
                group["lr"] = group["initial_lr"] * factor
            loss, outputs = optimizer.step(runner, loss_fn, inputs, targets, return_outputs=True)
            sums[0] += torch.as_tensor(loss, dtype=torch.float64, device=device) * len(targets)
            sums[1] += (outputs.argmax(dim=1) == targets).sum()
            sums[2] += len(targets)
            step += 1
            bar.update()
            if context.is_main and config.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{groups[0]['lr']:.4f}")
        _synchronize(device)
        train_time = time.perf_counter() - started
        bar.close()
        distributed.all_reduce_sum(sums, context)
        test_loss, test_acc = evaluate(model, data, config.eval_batch_size, context, amp,
                                       channels_last)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "step": step,
            "train_loss": sums[0].item() / sums[2].item(),
            "train_acc": 100.0 * sums[1].item() / sums[2].item(),
            "test_loss": test_loss, "test_acc": test_acc, "lr": groups[0]["lr"],
            "epoch_time_s": train_time, "step_time_s": train_time / steps_per_epoch,
            "images_per_s": sums[2].item() / train_time,
        }
        if probe is not None and context.is_main and ((epoch + 1) % config.trace_every == 0
                                                      or epoch + 1 == config.epochs):
            record["trace_V"] = probe_trace(model, loss_fn, *probe)
        records.append(record)
        if context.is_main:
            checkpoint.save_checkpoint(checkpoint_path, {
                "epoch": epoch + 1, "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": checkpoint.rng_state(),
                "config": settings, "metrics": records})
            _write_metrics(out / "metrics.jsonl", records)
            if config.progress:
                tqdm.write(_summary_line(record))
        distributed.barrier(context)
        if on_epoch_end is not None:
            on_epoch_end(record)
    return TrainResult(records, model, out, settings)


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock times measure the computation."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary_line(record: dict[str, Any]) -> str:
    """One human-readable line per epoch for the console."""
    line = (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2f}% | test loss {record['test_loss']:.4f} "
            f"acc {record['test_acc']:.2f}% | {record['images_per_s']:.0f} img/s")
    if "trace_V" in record:
        line += f" | tr V {record['trace_V']:.4g}"
    return line
