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

The parts live by job: :mod:`sdesam.train.config` (the settings and their checks),
:mod:`sdesam.train.setup` (data, model, optimizer, out folder, the run's state and result),
:mod:`sdesam.train.epochs` (restore, epoch, record); this module holds :func:`train` and
re-exports their public names.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from sdesam.experiment.outputs import check_writable
from sdesam.train import checkpoint, distributed
from sdesam.train.config import BN_POLICIES, PRECISIONS, TrainConfig
from sdesam.train.epochs import (_record_epoch, _restore, _run_epoch, _summary_line,  # noqa: F401
                                 evaluate, probe_trace)
from sdesam.train.setup import (Diverged, Interrupted, Run, TrainResult, autocast_dtype,
                                build_optimizer, check_out_folder, data_line, initial_model,
                                needed_bytes, per_sample_cross_entropy, prepare_data)

__all__ = ["BN_POLICIES", "PRECISIONS", "Interrupted", "TrainConfig", "TrainResult",
           "autocast_dtype", "build_optimizer", "check_out_folder", "data_line", "evaluate",
           "initial_model", "needed_bytes", "per_sample_cross_entropy", "prepare_data",
           "probe_trace", "train"]


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
    run: Run | None = None
    try:
        with ExitStack() as stack:
            config.validate(context.world_size)
            if context.is_main:
                check_out_folder(config, stack)
            distributed.barrier(context)
            run = Run.start(config, context, device)
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
            except Diverged as stop:
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
