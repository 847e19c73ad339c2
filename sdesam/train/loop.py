"""The training loop: every rule of :data:`sdesam.algorithms.RULES` on a classifier, resumable.

:class:`TrainConfig` holds every setting; :func:`train` runs it in three kinds of step, each a
small function: :func:`_restore` (continue from a checkpoint), :func:`_run_epoch` (a shuffled
pass over the training set held on the device, crop + flip done there in batches for images,
one optimizer step per batch through :func:`sdesam.optim.create` -- all rules alike:
``opt.step(model, loss_fn, inputs, targets)`` -- with the learning rate set per step from a
pure schedule function) and :func:`_record_epoch` (evaluation on the validation and test
splits, a JSON-lines metrics record -- loss, accuracy, step time, inputs/s and, every
``trace_every`` epochs, the gradient-noise trace tr V on a fixed probe batch -- and an
atomically written checkpoint from which ``resume=True`` continues exactly).

A run holds its out folder for its whole length (:func:`sdesam.experiment.outputs.claimed`: a
second run on the same folder is refused), checks it has room for a checkpoint of its model and
optimizer before the first step, stops when training diverges (a non-finite batch loss, which
every optimizer refuses, or non-finite parameters at the end of an epoch: recorded in
config.json and :attr:`TrainResult.diverged`, the last checkpoint kept), and turns Ctrl-C into
:class:`Interrupted`, which says where the last checkpoint is.

Defaults follow the CIFAR set-up of the first author's previous SAM paper (Eigen-SAM,
NeurIPS 2024), because this paper's own set-up is not known: SGD with momentum 0.9, lr 0.1,
cosine schedule, 200 epochs, batch 256, weight decay 5e-4, rho 0.05 (CIFAR-10) / 0.1
(CIFAR-100), random crop (padding 4) + horizontal flip (images only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from sdesam.progress import progress_bar

from sdesam import validation
from sdesam.algorithms import RULE_KEYWORDS, Rule, check_sizes, get_rule
from sdesam.optim import (DEFAULT_DELTA, DEFAULT_LAM, NonFiniteLossError, check_rule_keywords, create,
                          optimizer_names)
from sdesam.experiment.outputs import DEFAULT_HEADROOM_BYTES, check_writable, claimed
from sdesam.experiment.records import atomic_write, run_metadata, write_json
from sdesam.train import augment, checkpoint, distributed, splits
from sdesam.train.data import (DATASETS, FILE_DATASETS, ImageDataset, batch_indices,
                               epoch_generator, eval_batches, load_dataset, shard)
from sdesam.train.models import MODELS, build_model, default_model
from sdesam.train.schedule import SCHEDULES, lr_factor

BN_POLICIES: tuple[str, ...] = ("first-pass", "freeze")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

# settings that may differ between an interrupted run and its resumption
_FREE_ON_RESUME = frozenset({"out", "resume", "overwrite", "progress", "device", "compile",
                             "eval_batch_size", "trace_every", "probe_size"})
# the files of a run in its out folder (their presence means the folder holds a run)
_RUN_FILES: tuple[str, ...] = ("config.json", "metrics.jsonl", checkpoint.CHECKPOINT_NAME)


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI flags map one to one onto these fields)."""

    out: str
    dataset: str = "synthetic"
    data_dir: str | None = None
    synthetic_train: int = 5000
    synthetic_test: int = 1000
    val_fraction: float = 0.0
    label_noise: float = 0.0
    data_seed: int = 0
    model: str | None = None
    norm: str | None = None
    pretrained: str | None = None
    optimizer: str = "sgd"
    rho: float | None = None
    micro: int | None = None
    lam: float | None = None
    delta: float | None = None
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
    augment: bool | None = None
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
    overwrite: bool = False
    progress: bool = True

    @property
    def rule(self) -> Rule:
        """The :class:`sdesam.algorithms.Rule` named by ``optimizer``."""
        return get_rule(self.optimizer)

    @property
    def effective_rho(self) -> float | None:
        """rho, or its dataset default (0.1 for CIFAR-100, 0.05 otherwise) for a rule that
        perturbs; None for one that does not."""
        if self.rho is not None or "rho" not in self.rule.keywords:
            return self.rho
        return 0.1 if self.dataset == "cifar100" else 0.05

    @property
    def effective_lam(self) -> float | None:
        """lam, or RW-SAM's default for a rule with Gibbs weights; None for the others."""
        return DEFAULT_LAM if self.lam is None and "lam" in self.rule.keywords else self.lam

    @property
    def effective_delta(self) -> float | None:
        """delta, or RW-SAM's default for a rule with Gibbs weights; None for the others."""
        return DEFAULT_DELTA if self.delta is None and "delta" in self.rule.keywords else self.delta

    def rule_options(self) -> dict[str, Any]:
        """The rule keywords (rho, micro, lam, delta) with their defaults resolved (None: not
        taken by the rule)."""
        return {"rho": self.effective_rho, "micro": self.micro, "lam": self.effective_lam,
                "delta": self.effective_delta}

    @property
    def effective_model(self) -> str:
        """model, or the one that fits the dataset (cnn1d for mnist1d, mlp1d for digits, small)."""
        return self.model if self.model is not None else default_model(self.dataset)

    @property
    def image_data(self) -> bool:
        """Whether the dataset holds 32x32 images (crop-and-flip augmentation applies)."""
        return self.dataset in (*FILE_DATASETS, "synthetic")

    @property
    def effective_augment(self) -> bool:
        """augment, or its default: on for the image sets, off for signals and digits."""
        return self.image_data if self.augment is None else self.augment

    def validate(self, world_size: int = 1) -> None:
        """Raise an InputError naming the first setting that is out of range (before any work)."""
        validation.one_of("dataset", self.dataset, DATASETS)
        validation.one_of("model", self.effective_model, MODELS)
        validation.one_of("optimizer", self.optimizer, optimizer_names())
        validation.one_of("bn", self.bn, BN_POLICIES)
        validation.one_of("schedule", self.schedule, SCHEDULES)
        validation.one_of("precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size", "accumulate", "eval_batch_size", "probe_size"):
            validation.positive_int(name, getattr(self, name))
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "gamma", "trace_every",
                     "padding"):
            validation.non_negative_number(name, getattr(self, name))
        validation.fraction("label_smoothing", self.label_smoothing)
        validation.fraction("val_fraction", self.val_fraction)
        validation.fraction("label_noise", self.label_noise)
        validation.int_at_least("data_seed", self.data_seed, 0)
        if self.resume and self.overwrite:
            raise validation.InputError("resume and overwrite exclude each other: --resume "
                                        "continues the run in --out, --overwrite replaces it")
        if self.batch_size % world_size:
            raise validation.InputError(f"batch_size must be divisible by the number of processes "
                                        f"{world_size}; got {self.batch_size}")
        self._validate_rule(self.batch_size // world_size)
        for name in ("rho", "lam"):
            if getattr(self, name) is not None:
                validation.non_negative_number(name, getattr(self, name))
        if self.delta is not None:
            validation.positive_number("delta", self.delta)
        self._validate_data_and_model()
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise validation.InputError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")

    def _validate_rule(self, per_device: int) -> None:
        """The options of the chosen rule: micro for the m-rules, and no rule keyword the rule
        does not take (read from ``rule.keywords``: a value given for another rule is refused,
        not silently ignored)."""
        rule = self.rule
        if rule.micro and self.micro is None:
            raise validation.InputError(f"optimizer {rule.name} needs micro, the micro-batch size "
                                        f"m (m divides the per-device batch)")
        check_rule_keywords(rule, **{word: getattr(self, word) for word in RULE_KEYWORDS})
        check_sizes(rule, per_device, self.micro)
        if per_device % self.accumulate:
            raise validation.InputError(f"accumulate must divide the per-device batch {per_device}; "
                                        f"got {self.accumulate}")
        if self.local_perturbation and rule.ascent != "reweighted":
            raise validation.InputError(f"local_perturbation is an option of the reweighted rules "
                                        f"(rw-sam); got optimizer {self.optimizer!r}")

    def _validate_data_and_model(self) -> None:
        """Data set, model and augmentation fit together; the data files are named."""
        model = self.effective_model
        if self.dataset == "synthetic" and self.synthetic_train < self.batch_size:
            raise validation.InputError(f"synthetic_train must be at least batch_size "
                                        f"{self.batch_size}; got {self.synthetic_train}")
        if (model == "vit") != (self.pretrained is not None):
            raise validation.InputError("pretrained (a local weights file) is required by model vit "
                                        f"and used by no other model; got model={model!r}, "
                                        f"pretrained={self.pretrained!r}")
        if self.dataset in FILE_DATASETS and self.data_dir is None:
            raise validation.InputError(f"data_dir is required for dataset {self.dataset} (the folder "
                                        f"with the official python-batch files; nothing is "
                                        f"downloaded)")
        if self.effective_augment and not self.image_data:
            raise validation.InputError(f"augment (random crop and flip) applies to 32x32 images, "
                                        f"not to dataset {self.dataset}; leave it out")
        if not self.image_data and model not in ("cnn1d", "mlp1d"):
            raise validation.InputError(f"model {model} takes 32x32 images; dataset {self.dataset} "
                                        f"needs cnn1d or mlp1d")


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


class _Diverged(Exception):
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
    if rule.ascent == "reweighted":
        options["local_perturbation"] = config.local_perturbation
    if rule.ascent == "full":
        options["ascent_data"] = ascent_data
    return create(rule.name, model.parameters(), **options)


def prepare_data(config: TrainConfig, device: torch.device) -> ImageDataset:
    """The run's data on ``device``: the data set, its validation split and its label noise
    (both drawn from ``data_seed``)."""
    data = load_dataset(config.dataset, config.data_dir, device, seed=config.seed,
                        synthetic_size=(config.synthetic_train, config.synthetic_test))
    data = splits.with_validation(data, config.val_fraction, config.data_seed)
    data = splits.with_label_noise(data, config.label_noise, 2 * config.data_seed + 1)
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
    held = [name for name in _RUN_FILES if (out / name).exists()]
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


def train(config: TrainConfig,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Run (or, with ``config.resume``, continue) the training described by ``config``.

    Writes ``out/config.json`` (settings, data provenance and run metadata),
    ``out/metrics.jsonl`` and ``out/checkpoint.pt`` (rank 0 only). ``on_epoch_end(record)`` is
    called after each epoch's files are written. Under torchrun, joins the process group and
    trains data-parallel. Divergence stops the run and is returned in
    :attr:`TrainResult.diverged`; Ctrl-C raises :class:`Interrupted`.
    """
    context, device = distributed.init_distributed(config.device)
    run: _Run | None = None
    try:
        with ExitStack() as stack:
            config.validate(context.world_size)
            if context.is_main:
                check_out_folder(config, stack)
            distributed.barrier(context)
            run = _Run.start(config, context, device)
            if context.is_main:
                check_writable(run.out, needed_bytes(run.model, run.optimizer))
            records = _restore(run)
            resumed_from = len(records)
            if context.is_main:
                run.write_config(resumed_from)
                if run.data.info.get("canonical") is False:
                    warnings.warn(data_line(run.data.name, run.data.info), stacklevel=2)
            diverged = None
            try:
                for epoch in range(len(records), config.epochs):
                    sums, seconds = _run_epoch(run, epoch)
                    records.append(_record_epoch(run, epoch, sums, seconds, records))
                    if on_epoch_end is not None:
                        on_epoch_end(records[-1])
            except _Diverged as stop:
                diverged = stop.record
                if context.is_main:
                    run.write_config(resumed_from, diverged)
            return TrainResult(records, run.model, run.out, run.settings,
                               data_line(run.data.name, run.data.info), diverged)
    except KeyboardInterrupt:
        path = Path(config.out) / checkpoint.CHECKPOINT_NAME
        raise Interrupted(path if path.is_file() else None,
                          None if run is None else run.saved_epoch) from None
    finally:
        distributed.shutdown(context)


@dataclass
class _Run:
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
              device: torch.device) -> "_Run":
        """Load the data, build the model and the optimizer of ``config`` on ``device``."""
        if config.trace_every:
            try:
                import sdesam.per_sample  # noqa: F401  (fail before any work if it is missing)
            except ImportError as error:
                raise ValueError(f"trace_every needs sdesam.per_sample ({error})") from None
        data = prepare_data(config, device)
        model = initial_model(config, data, device)
        channels_last = device.type == "cuda" and data.is_image and config.effective_model != "vit"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.compile:
            model.compile()
        runner = distributed.wrap_model(model, context, device)
        ascent_data = None
        if config.rule.ascent == "full":  # the whole training set, normalised once
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


def _restore(run: _Run) -> list[dict[str, Any]]:
    """With ``resume``, load the checkpoint into the run (model, optimizer, RNG states, step)
    and return the metrics so far; otherwise (or with no checkpoint yet) return []."""
    config = run.config
    if not config.resume:
        return []
    if not run.checkpoint_path.is_file():
        if run.context.is_main and config.progress:
            tqdm.write(f"resume: no checkpoint at {run.checkpoint_path}; starting from scratch")
        return []
    state = checkpoint.load_checkpoint(run.checkpoint_path, map_location=run.device,
                                       required=checkpoint.TRAINING_KEYS)
    saved = state["config"]
    differing = sorted(key for key in run.settings if key not in _FREE_ON_RESUME
                       and saved.get(key) != run.settings[key])
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {run.settings[k]!r}" for k in differing)
        raise validation.InputError(f"resume: the settings differ from the checkpoint's "
                                    f"({details}); use the same settings or another out directory")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    checkpoint.set_rng_state(state["rng"])
    run.step = state["step"]
    run.saved_epoch = state["epoch"]
    return list(state["metrics"])


def _run_epoch(run: _Run, epoch: int) -> tuple[torch.Tensor, float]:
    """One shuffled pass over the training set: (sums of loss, correct, count; seconds)."""
    config, data, context = run.config, run.data, run.context
    order = batch_indices(len(data.train_labels), config.batch_size,
                          epoch_generator(config.seed, epoch, stream=0))
    crops = epoch_generator(config.seed, epoch, stream=1)
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)  # loss sum, correct, count
    bar = progress_bar(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
               show=config.progress and context.is_main, leave=False, dynamic_ncols=True)
    run.model.train()
    _synchronize(run.device)
    started = time.perf_counter()
    with bar:  # closed (and its line cleared) however the epoch ends
        for batch in order:
            inputs, targets = _training_batch(run, batch, crops)
            factor = run.learning_rate_factor()
            for group in run.groups:
                group["lr"] = group["initial_lr"] * factor
            try:
                loss, outputs = run.optimizer.step(run.runner, run.loss_fn, inputs, targets,
                                                   return_outputs=True)
            except NonFiniteLossError as error:
                raise _Diverged(epoch + 1, run.step + 1,
                                f"the training loss is {error.loss} at lr {run.groups[0]['lr']:g}") from None
            sums[0] += torch.as_tensor(loss, dtype=torch.float64, device=run.device) * len(targets)
            sums[1] += (outputs.argmax(dim=1) == targets).sum()
            sums[2] += len(targets)
            run.step += 1
            bar.update()
            if context.is_main and config.progress and run.step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{run.groups[0]['lr']:.4f}")
        _synchronize(run.device)
        seconds = time.perf_counter() - started
    distributed.all_reduce_sum(sums, context)
    return sums, seconds


def _training_batch(run: _Run, batch: torch.Tensor,
                    crops: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a global batch, augmented (images) and normalised."""
    config, data, context = run.config, run.data, run.context
    local = shard(batch, context.rank, context.world_size).to(run.device)
    images = data.train_images[local]
    if data.is_image:  # the draws are made even without augmentation: the stream stays aligned
        offsets = augment.draw_crop_flip(len(batch), config.padding, crops)
        if config.effective_augment:
            parts = (shard(t, context.rank, context.world_size) for t in offsets)
            images = augment.crop_flip(images, *parts, padding=config.padding)
    inputs = augment.normalize(images, data.mean, data.std, run.channels_last)
    return inputs, data.train_labels[local]


def _record_epoch(run: _Run, epoch: int, sums: torch.Tensor, seconds: float,
                  records: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate; write the metrics file and the checkpoint holding ``records`` and this
    epoch's record; return the record. Parameters that are no longer finite stop the run
    (:class:`_Diverged`) before anything is written."""
    config, data = run.config, run.data
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise _Diverged(epoch + 1, run.step, "the parameters are no longer finite at the end of "
                                             f"the epoch (lr {run.groups[0]['lr']:g})")
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": run.step,
        "train_loss": sums[0].item() / sums[2].item(),
        "train_acc": 100.0 * sums[1].item() / sums[2].item(),
    }
    if data.val_images is not None:
        record["val_loss"], record["val_acc"] = evaluate(run, data.val_images, data.val_labels)
    record["test_loss"], record["test_acc"] = evaluate(run, data.test_images, data.test_labels)
    record.update({"lr": run.groups[0]["lr"], "epoch_time_s": seconds,
                   "step_time_s": seconds / run.steps_per_epoch,
                   "images_per_s": sums[2].item() / seconds})
    if run.probe is not None and run.context.is_main and ((epoch + 1) % config.trace_every == 0
                                                          or epoch + 1 == config.epochs):
        record["trace_V"] = probe_trace(run.model, run.loss_fn, *run.probe)
    record = {key: _finite_or_none(value) for key, value in record.items()}
    history = [*records, record]
    if run.context.is_main:
        checkpoint.save_checkpoint(run.checkpoint_path, {
            "epoch": epoch + 1, "step": run.step, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "rng": checkpoint.rng_state(),
            "config": run.settings, "metrics": history})
        run.saved_epoch = epoch + 1
        _write_metrics(run.out / "metrics.jsonl", history)
        if config.progress:
            tqdm.write(_summary_line(record))
    distributed.barrier(run.context)
    return record


def _finite_or_none(value: Any) -> Any:
    """``value``, or None for a float that is NaN or infinite (JSON has no such numbers)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl atomically: one strict JSON object per completed epoch."""
    atomic_write(path, lambda handle: handle.writelines(json.dumps(r, allow_nan=False) + "\n"
                                                        for r in records))


def evaluate(run: _Run, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy (%) of the run's model on (inputs, labels); each rank evaluates a
    strided share and the sums are all-reduced."""
    model, data, device = run.model, run.data, run.device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for idx in eval_batches(len(labels), run.config.eval_batch_size, run.context.rank,
                                run.context.world_size):
            idx = idx.to(device)
            batch = augment.normalize(inputs[idx], data.mean, data.std, run.channels_last)
            targets = labels[idx]
            with torch.autocast(device.type, dtype=run.amp, enabled=run.amp is not None):
                outputs = model(batch)
            totals[0] += per_sample_cross_entropy(outputs, targets).sum().double()
            totals[1] += (outputs.argmax(dim=1) == targets).sum()
            totals[2] += len(targets)
    distributed.all_reduce_sum(totals, run.context)
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


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock times measure the computation."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary_line(record: dict[str, Any]) -> str:
    """One human-readable line per epoch for the console."""
    line = (f"epoch {record['epoch']}: train loss {_number(record['train_loss'], '.4f')} "
            f"acc {record['train_acc']:.2f}% | ")
    if "val_acc" in record:
        line += f"val acc {record['val_acc']:.2f}% | "
    line += (f"test loss {_number(record['test_loss'], '.4f')} acc {record['test_acc']:.2f}% | "
             f"{record['images_per_s']:.0f} inputs/s")
    if "trace_V" in record:
        line += f" | tr V {_number(record['trace_V'], '.4g')}"
    return line


def _number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "non-finite" for None (a NaN or inf recorded as null)."""
    return "non-finite" if value is None else format(value, spec)
