"""The steps of a training run: restore from a checkpoint, one shuffled epoch of optimizer
steps, and the record of an epoch (evaluation, tr V probe, metrics file, checkpoint)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from sdesam import validation
from sdesam.experiment.records import atomic_write
from sdesam.optim import NonFiniteLossError
from sdesam.progress import progress_bar
from sdesam.train import augment, checkpoint, distributed
from sdesam.train.data import batch_indices, epoch_generator, eval_batches, shard
from sdesam.train.config import FREE_ON_RESUME
from sdesam.train.setup import Diverged, Run, per_sample_cross_entropy


def _restore(run: Run) -> list[dict[str, Any]]:
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
    differing = sorted(key for key in run.settings if key not in FREE_ON_RESUME
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


def _run_epoch(run: Run, epoch: int) -> tuple[torch.Tensor, float]:
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
                raise Diverged(epoch + 1, run.step + 1,
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


def _training_batch(run: Run, batch: torch.Tensor,
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


def _record_epoch(run: Run, epoch: int, sums: torch.Tensor, seconds: float,
                  records: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate; write the metrics file and the checkpoint holding ``records`` and this
    epoch's record; return the record. Parameters that are no longer finite stop the run
    (:class:`Diverged`) before anything is written."""
    config, data = run.config, run.data
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise Diverged(epoch + 1, run.step, "the parameters are no longer finite at the end of "
                                             f"the epoch (lr {run.groups[0]['lr']:g})")
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": run.step,
        "train_loss": sums[0].item() / sums[2].item(),
        "train_acc": 100.0 * sums[1].item() / sums[2].item(),
    }
    if data.val_images is not None:
        record["val_loss"], record["val_acc"] = evaluate(run, data.val_images, data.val_labels)
    if data.val_clean_labels is not None:
        record["val_clean_loss"], record["val_clean_acc"] = evaluate(run, data.val_images,
                                                                     data.val_clean_labels)
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


def evaluate(run: Run, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
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
