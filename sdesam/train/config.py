"""A training run's settings: :class:`TrainConfig`, one field per ``sdesam train`` flag, and
its checks, made before any work (:meth:`TrainConfig.validate`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdesam import validation
from sdesam.algorithms import Rule, check_keywords, check_sizes, get_rule
from sdesam.optim import DEFAULT_DELTA, DEFAULT_LAM, class_options, optimizer_names
from sdesam.train import checkpoint
from sdesam.train.data import DATASETS, FILE_DATASETS
from sdesam.train.models import MODELS, default_model
from sdesam.train.schedule import SCHEDULES

BN_POLICIES: tuple[str, ...] = ("first-pass", "freeze")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

# settings that may differ between an interrupted run and its resumption
FREE_ON_RESUME = frozenset({"out", "resume", "overwrite", "progress", "device", "compile",
                             "eval_batch_size", "trace_every", "probe_size"})
# the files of a run in its out folder (their presence means the folder holds a run)
RUN_FILES: tuple[str, ...] = ("config.json", "metrics.jsonl", checkpoint.CHECKPOINT_NAME)


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
    noisy_validation: bool = False
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
        if "rho" not in self.rule.keywords:
            return None
        if self.rho is not None:
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
        validation.seed("seed", self.seed)
        validation.seed("data_seed", self.data_seed)
        if self.noisy_validation and not (self.val_fraction > 0 and self.label_noise > 0):
            raise validation.InputError(
                f"noisy_validation puts the label noise on the validation split: it needs "
                f"val_fraction > 0 and label_noise > 0; got val_fraction {self.val_fraction}, "
                f"label_noise {self.label_noise}")
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
        """The options of the chosen rule: no rule keyword the rule does not take (one policy,
        :func:`sdesam.algorithms.check_keywords`: a value given for another rule is refused, not
        silently ignored), micro for the m-rules dividing the per-device batch (checked once,
        by :func:`sdesam.algorithms.check_sizes`), and only the options of the rule's optimizer
        class (:func:`sdesam.optim.class_options`)."""
        rule = self.rule
        check_keywords(rule, rho=self.rho, lam=self.lam, delta=self.delta)
        check_sizes(rule, per_device, self.micro)
        if per_device % self.accumulate:
            raise validation.InputError(f"accumulate must divide the per-device batch {per_device}; "
                                        f"got {self.accumulate}")
        if self.local_perturbation and "local_perturbation" not in class_options(rule):
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
