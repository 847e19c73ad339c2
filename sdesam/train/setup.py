"""What a training run is built from and returns: the data, the initial model and the
optimizer of a :class:`~sdesam.train.config.TrainConfig`, the claimed out folder, the run's
state (:class:`Run`) and its result (:class:`TrainResult`, :class:`Interrupted`)."""

from __future__ import annotations

import dataclasses
import functools
import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sdesam import validation
from sdesam.experiment.outputs import DEFAULT_HEADROOM_BYTES, check_writable, claimed
from sdesam.experiment.records import run_metadata, write_json
from sdesam.optim import class_options, create
from sdesam.train import augment, checkpoint, distributed, splits
from sdesam.train.config import RUN_FILES, TrainConfig
from sdesam.train.data import load_dataset
from sdesam.train.datasets import ImageDataset
from sdesam.train.models import build_model
from sdesam.train.schedule import lr_factor


@dataclass
class TrainResult:
    """What :func:`train` returns: the per-epoch records and the trained (unwrapped) model."""

    metrics: list[dict[str, Any]]
    model: nn.Module
    out: Path
    settings: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    """One line naming the data and its checksum (:func:`data_line`)."""
    diverged: dict[str, Any] | None = None
    """None, or where training diverged and stopped: ``epoch``, ``step`` and ``reason`` (also
    in config.json; ``metrics`` and the checkpoint hold the epochs before it)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: ``checkpoint`` is the run's checkpoint file (None when
    none was written yet) and ``epoch`` the last epoch it holds (None when not known)."""

    def __init__(self, checkpoint: Path | None, epoch: int | None) -> None:
        self.checkpoint, self.epoch = checkpoint, epoch
        where = "no checkpoint yet" if checkpoint is None else f"last checkpoint {checkpoint}"
        super().__init__(f"interrupted; {where}" + ("" if epoch is None else f" (epoch {epoch})"))


class Diverged(Exception):
    """Training diverged at ``epoch`` (1-based), ``step`` (the global step count), for ``reason``."""

    def __init__(self, epoch: int, step: int, reason: str) -> None:
        super().__init__(reason)
        self.record = {"epoch": epoch, "step": step, "reason": reason}


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


def build_optimizer(config: TrainConfig, model: nn.Module, device: torch.device,
                    ascent_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:
    """The optimizer of ``config``'s rule over ``model``'s parameters, SGD as base.

    The rule keywords come from :meth:`TrainConfig.rule_options` (None for those the rule
    does not take); ``local_perturbation`` goes to the reweighted rules and ``ascent_data``
    (the normalised training set) to the full-gradient ascent of n-(U)SAM.
    """
    rule = config.rule
    options: dict[str, Any] = dict(base=torch.optim.SGD, lr=config.lr, momentum=config.momentum,
                                   nesterov=config.nesterov, weight_decay=config.weight_decay,
                                   bn=config.bn, autocast_dtype=autocast_dtype(config.precision, device),
                                   accumulate=config.accumulate, **config.rule_options())
    extras = class_options(rule)
    if "local_perturbation" in extras:
        options["local_perturbation"] = config.local_perturbation
    if "ascent_data" in extras:
        options["ascent_data"] = ascent_data
    return create(rule, model.parameters(), **options)


def prepare_data(config: TrainConfig, device: torch.device) -> ImageDataset:
    """The run's data on ``device``: the data set, its validation split and its label noise
    (on the validation labels too with ``noisy_validation``; all drawn from ``data_seed``)."""
    data = load_dataset(config.dataset, config.data_dir, device, seed=config.seed,
                        synthetic_size=(config.synthetic_train, config.synthetic_test))
    data = splits.with_validation(data, config.val_fraction, config.data_seed)
    data = splits.with_label_noise(data, config.label_noise, 2 * config.data_seed + 1,
                                   validation=config.noisy_validation)
    if len(data.train_labels) < config.batch_size:
        raise validation.InputError(f"batch_size {config.batch_size} exceeds the "
                                    f"{len(data.train_labels)} training samples")
    return data


def initial_model(config: TrainConfig, data: ImageDataset, device: torch.device) -> nn.Module:
    """The network at the initialisation ``config.seed`` gives it (what :func:`train` starts
    from; other code, e.g. a calibration of RW-SAM's lam, can look at the same weights)."""
    torch.manual_seed(config.seed)
    return build_model(config.effective_model, data.num_classes, config.norm, config.pretrained,
                       input_shape=data.image_shape).to(device)


def _settings(config: TrainConfig) -> dict[str, Any]:
    """``config`` as plain JSON-able values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_out_folder(config: TrainConfig, stack: ExitStack) -> Path:
    """Claim ``out`` for the run (held until ``stack`` closes; a folder another run holds is
    refused), refuse it when it holds a run unless resume or overwrite is set, check it is
    writable; with overwrite, remove the old run's files. Before any work."""
    out = check_writable(config.out)
    stack.enter_context(claimed(out, "--out"))
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not (config.resume or config.overwrite):
        raise validation.InputError(f"--out {str(out)!r} already holds a run ({', '.join(held)}); "
                                    f"pass --resume to continue it or --overwrite to start afresh")
    if config.overwrite:
        for name in held:
            (out / name).unlink()
    return out


def needed_bytes(model: nn.Module, optimizer: Any) -> int:
    """The free space a run needs in its out folder: a checkpoint of ``model`` and
    ``optimizer`` (written beside the previous one, then renamed over it) plus room for the
    metrics and config files."""
    return checkpoint.checkpoint_bytes(model, optimizer) + DEFAULT_HEADROOM_BYTES


@dataclass
class Run:
    """Everything one training run works with, built once by :meth:`start`."""

    config: TrainConfig
    context: distributed.DistributedContext
    device: torch.device
    data: ImageDataset
    model: nn.Module
    runner: nn.Module
    optimizer: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    amp: torch.dtype | None
    channels_last: bool
    probe: tuple[torch.Tensor, torch.Tensor] | None
    steps_per_epoch: int
    out: Path
    settings: dict[str, Any]
    step: int = 0
    saved_epoch: int | None = None
    """The epoch the run's checkpoint holds (None before the first is written or restored)."""

    @classmethod
    def start(cls, config: TrainConfig, context: distributed.DistributedContext,
              device: torch.device) -> "Run":
        """Load the data, build the model and the optimizer of ``config`` on ``device``."""
        if config.trace_every:
            try:
                import sdesam.per_sample  # noqa: F401  (fail before any work if it is missing)
            except ImportError as error:
                raise validation.InputError(f"trace_every needs sdesam.per_sample ({error})") from None
        data = prepare_data(config, device)
        model = initial_model(config, data, device)
        channels_last = device.type == "cuda" and data.is_image and config.effective_model != "vit"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.compile:
            model.compile()
        runner = distributed.wrap_model(model, context, device)
        ascent_data = None
        if "ascent_data" in class_options(config.rule):  # the whole training set, normalised once
            ascent_data = (augment.normalize(data.train_images, data.mean, data.std, channels_last),
                           data.train_labels)
        optimizer = build_optimizer(config, runner, device, ascent_data)
        for group in optimizer.base_optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        probe = None
        if config.trace_every:
            index = torch.arange(min(config.probe_size, len(data.train_labels)), device=device)
            probe = (augment.normalize(data.train_images[index], data.mean, data.std, channels_last),
                     data.train_labels[index])
        loss_fn = functools.partial(per_sample_cross_entropy, label_smoothing=config.label_smoothing)
        return cls(config, context, device, data, model, runner, optimizer, loss_fn,
                   autocast_dtype(config.precision, device), channels_last, probe,
                   len(data.train_labels) // config.batch_size, Path(config.out), _settings(config))

    @property
    def checkpoint_path(self) -> Path:
        """Where the run's checkpoint is written."""
        return self.out / checkpoint.CHECKPOINT_NAME

    @property
    def groups(self) -> list[dict[str, Any]]:
        """The base optimizer's parameter groups (where the learning rate is set)."""
        return self.optimizer.base_optimizer.param_groups

    def learning_rate_factor(self) -> float:
        """The schedule's factor at the current step."""
        config, per_epoch = self.config, self.steps_per_epoch
        return lr_factor(self.step, per_epoch * config.epochs, config.schedule,
                         round(config.warmup_epochs * per_epoch),
                         [m * per_epoch for m in config.milestones], config.gamma)

    def write_config(self, resumed_from_epoch: int, diverged: dict[str, Any] | None = None) -> None:
        """config.json: the settings, the defaults they resolved to, where the data came from
        (with the flipped labels), the number of processes, the run metadata and, once it
        happened, where training diverged."""
        data_info = dict(self.data.info)
        if self.data.flipped is not None:
            data_info["flipped_indices"] = self.data.flipped.tolist()
        resolved = {"model": self.config.effective_model, "augment": self.config.effective_augment,
                    **self.config.rule_options()}
        write_json(self.out / "config.json", {
            "settings": self.settings, "resolved": resolved, "data": data_info,
            "world_size": self.context.world_size, "resumed_from_epoch": resumed_from_epoch,
            "diverged": diverged, "metadata": run_metadata(str(self.device))})


def data_line(name: str, info: dict[str, Any]) -> str:
    """One line saying which data a run saw: its checksum and, for a generated data set,
    whether it is the canonical one (a warning naming the generator versions when not)."""
    if "sha256" not in info:
        return f"data: {name} ({info.get('source', 'no checksum')})"
    line = f"data: {name}, sha256 {info['sha256'][:16]}"
    if "canonical" not in info:
        return line
    if info["canonical"]:
        return line + " (canonical)"
    versions = ", ".join(f"{k} {v}" for k, v in info.get("generator_versions", {}).items())
    return (f"{line} is NOT the canonical {name} data set (made with {versions}); "
            "results are not comparable with canonical runs")
