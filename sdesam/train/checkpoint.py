"""Training checkpoints: written atomically, holding everything an exact resume needs.

A checkpoint stores the model and optimizer state, the completed epoch and step count, the
metrics so far, the settings that made the run and the global random-number-generator states
(torch CPU and CUDA, Python). The data order and augmentation of each epoch are functions of
(seed, epoch) (see :func:`sdesam.train.data.epoch_generator`), so together with these states a
resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdesam.experiment.records import atomic_write
from sdesam.validation import InputError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
TRAINING_KEYS: tuple[str, ...] = ("epoch", "step", "model", "optimizer", "rng", "config", "metrics")
OPTIMIZER_SLOTS = 2
"""Parameter-sized tensors an optimizer keeps per parameter, at most, before its first step has
created them: SGD's momentum buffer is one, Adam's two moments two."""


def _tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in ``value`` (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """A bound on the tensor bytes of a training checkpoint of ``model`` and ``optimizer``: the
    model's parameters and buffers, and the optimizer's state -- what it holds, or
    :data:`OPTIMIZER_SLOTS` copies of the trainable parameters if that is more (its state is
    created by its first step)."""
    parameters = sum(_tensor_bytes(p) for p in model.parameters() if p.requires_grad)
    return (_tensor_bytes(model.state_dict())
            + max(_tensor_bytes(optimizer.state_dict()), OPTIMIZER_SLOTS * parameters))


def rng_state() -> dict[str, Any]:
    """The global RNG states that a training step may draw from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_random_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_random_state(state: Any) -> tuple:
    """``random.setstate`` wants nested tuples; serialisation may have turned them into lists."""
    return tuple(tuple(s) if isinstance(s, list) else s for s in state)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically."""
    payload = {"format": FORMAT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(payload, handle), mode="wb")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors only, no code is unpickled).

    Every failure is an InputError naming the file and what is wrong: missing, unreadable,
    truncated or corrupt, another format, or lacking one of the ``required`` keys
    (:data:`TRAINING_KEYS` for the trainer's checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as error:
        raise InputError(f"checkpoint {str(path)!r} cannot be read: {error.strerror}") from None
    except Exception as error:  # torch.load raises many types on damaged input
        raise InputError(f"checkpoint {str(path)!r} is truncated or corrupt ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'unreadable'}); delete it "
                         f"(or pass --overwrite) to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise InputError(f"checkpoint {str(path)!r} has format {found!r}; "
                         f"this version reads format {FORMAT_VERSION}")
    missing = [key for key in required if key not in state]
    if missing:
        raise InputError(f"checkpoint {str(path)!r} lacks {', '.join(missing)} (not a training "
                         f"checkpoint, or damaged)")
    return state
