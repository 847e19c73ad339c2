"""Training throughput of SGD, SAM, m-SAM (several m) and RW-SAM, and of a straightforward SAM loop.

Every rule runs the trainer's pipeline (data held on the device, batched crop + flip there,
bf16 autocast and channels-last on CUDA) through ``sdesam.optim.create`` on CIFAR-shaped
synthetic data. The baseline is the obvious alternative: a torch DataLoader that crops and
flips image by image on the CPU, copies each batch to the device, fp32, and SAM written as
its two textbook passes. Rules are timed in interleaved rounds (each round times every rule
for a few steps), so that load from other processes spreads evenly over them; the table gives
the median over rounds of the time per step, images/s, and the ratios to SAM. Wall-clock time
is what counts on a GPU; on a CPU shared with other work the process CPU time per step is
reported beside it, as it is far less disturbed by the other load (run the baseline with
``--loader-workers 0`` there, so that its data loading is counted in that time too).

example (GPU): python experiments/benchmarks/bench_train.py --device cuda
example (CPU, about 3 minutes; the run recorded in bench_train.txt):
  python experiments/benchmarks/bench_train.py --batch-size 32 --micro 16 8 4 --rounds 3 \\
      --steps 1 --warmup 1 --threads 1 --loader-workers 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sdesam.optim import create
from sdesam.records import atomic_write, run_metadata
from sdesam.train import augment
from sdesam.train.data import synthetic_dataset
from sdesam.train.distributed import resolve_device
from sdesam.train.loop import TrainConfig, autocast_dtype, per_sample_cross_entropy
from sdesam.train.models import build_model

DEFAULT_OUT = Path(__file__).resolve().with_suffix(".txt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark settings."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--norm", default=None, help="bn (default for resnet18) or gn")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--micro", type=int, nargs="*", default=[128, 64, 32],
                        help="m values for m-SAM")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per rule per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per rule first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the straightforward CPU-loader fp32 SAM loop")
    parser.add_argument("--loader-workers", type=int, default=2,
                        help="DataLoader workers of the baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where the table is written")
    args = parser.parse_args(argv)
    bad = [m for m in args.micro if m < 1 or args.batch_size % m]
    if bad:
        parser.error(f"--micro values must divide --batch-size {args.batch_size}; got {bad}")
    return args


@dataclass
class Contender:
    """One timed configuration: a name and a function running one training step."""

    name: str
    step: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)


class CropFlipImages(torch.utils.data.Dataset):
    """The baseline's per-image CPU dataset: pad, random crop, random flip, normalise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.pad(self.images[index].float() / 255, (4, 4, 4, 4))
        dy, dx = torch.randint(9, (2,)).tolist()
        image = image[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image - self.mean[:, None, None]) / self.std[:, None, None], self.labels[index]


def textbook_sam_step(model: nn.Module, base: torch.optim.Optimizer, rho: float,
                      inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SAM as usually written: ascent pass, perturb by rho g/|g|, descent pass, restore, step."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(inputs), targets)
    loss.backward()
    with torch.no_grad():
        grad_norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
        perturbations = [p.grad * (rho / (grad_norm + 1e-12)) for p in params]
        for p, e in zip(params, perturbations):
            p.add_(e)
    base.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    with torch.no_grad():
        for p, e in zip(params, perturbations):
            p.sub_(e)
    base.step()
    base.zero_grad()
    return loss.detach()


def pipeline_contenders(args: argparse.Namespace, device: torch.device) -> list[Contender]:
    """The trainer's pipeline with each rule (on-device data, batched augmentation)."""
    data = synthetic_dataset(max(4 * args.batch_size, 1024), 16, seed=args.seed).to(device)
    amp = autocast_dtype(args.precision, device)
    channels_last = device.type == "cuda"
    generator = torch.Generator().manual_seed(args.seed)
    rules: list[tuple[str, str, dict[str, Any]]] = [("sgd", "sgd", {}), ("sam", "sam", {"rho": 0.05})]
    rules += [(f"m-sam m={m}", "m-sam", {"rho": 0.05, "micro": m}) for m in args.micro]
    rules += [("rw-sam", "rw-sam", {"rho": 0.05, "lam": TrainConfig.lam, "delta": TrainConfig.delta})]
    contenders = []
    for label, name, options in rules:
        torch.manual_seed(args.seed)
        model = build_model(args.model, data.num_classes, args.norm).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = create(name, model.parameters(), base=torch.optim.SGD, lr=0.05, momentum=0.9,
                           weight_decay=5e-4, autocast_dtype=amp, **options)

        def step(model=model, optimizer=optimizer) -> Any:
            index = torch.randint(len(data.train_labels), (args.batch_size,), generator=generator)
            index = index.to(device)
            crops = augment.draw_crop_flip(args.batch_size, 4, generator)
            images = augment.crop_flip(data.train_images[index], *crops, padding=4)
            inputs = augment.normalize(images, data.mean, data.std, channels_last)
            return optimizer.step(model, per_sample_cross_entropy, inputs, data.train_labels[index])

        contenders.append(Contender(label, step))
    return contenders


def baseline_contender(args: argparse.Namespace, device: torch.device) -> Contender:
    """The straightforward loop: CPU DataLoader with per-image augmentation, fp32, textbook SAM."""
    data = synthetic_dataset(max(4 * args.batch_size, 1024), 16, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        CropFlipImages(data.train_images, data.train_labels, data.mean, data.std),
        batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.loader_workers, pin_memory=device.type == "cuda",
        persistent_workers=args.loader_workers > 0)
    torch.manual_seed(args.seed)
    model = build_model(args.model, data.num_classes, args.norm).to(device)
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batches = iter(())

    def step() -> Any:
        nonlocal batches
        try:
            inputs, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            inputs, targets = next(batches)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        return textbook_sam_step(model, base, 0.05, inputs, targets)

    return Contender("sam, straightforward loop (CPU loader, fp32)", step)


def time_steps(contender: Contender, steps: int, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per step over ``steps`` steps (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        contender.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ((time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps)


def report(args: argparse.Namespace, device: torch.device, contenders: list[Contender],
           wall: float) -> str:
    """The results table, ratios and settings as text."""
    per_step = {c.name: statistics.median(c.times) for c in contenders}
    cpu_step = {c.name: statistics.median(c.cpu_times) for c in contenders}
    sam, sam_cpu = per_step["sam"], cpu_step["sam"]
    baseline = "sam, straightforward loop (CPU loader, fp32)"
    lines = [f"bench_train: {args.model} (norm {args.norm or 'default'}), batch {args.batch_size}, "
             f"device {device}, precision {args.precision}, {args.rounds} rounds x {args.steps} "
             f"steps per rule (after {args.warmup} warm-up steps), CIFAR-shaped synthetic data; "
             f"medians over rounds",
             "", f"{'rule':<46}{'wall s/step':>12}{'images/s':>10}{'x SAM':>8}"
                 f"{'CPU s/step':>12}{'x SAM':>8}"]
    for name, seconds in per_step.items():
        lines.append(f"{name:<46}{seconds:>12.4f}{args.batch_size / seconds:>10.1f}"
                     f"{seconds / sam:>8.3f}{cpu_step[name]:>12.4f}{cpu_step[name] / sam_cpu:>8.3f}")
    lines.append("")

    def ratio(label: str, name: str, other: str = "sam") -> str:
        return (f"{label}: wall {per_step[name] / per_step[other]:.3f}, "
                f"CPU time {cpu_step[name] / cpu_step[other]:.3f}")

    lines.append(ratio("RW-SAM / SAM time per step", "rw-sam")
                 + " (target <= 1.2; one extra forward ~ 7/6 = 1.167)")
    lines += [ratio(f"m-SAM (m={m}) / SAM time per step", f"m-sam m={m}") for m in args.micro]
    if args.baseline:
        lines.append(ratio("SAM throughput, trainer pipeline / straightforward loop", baseline)
                     + " (target >= 2 on a GPU)")
    meta = run_metadata(str(device))
    lines += ["", f"wall time {wall:.0f} s; torch {meta['versions']['torch']}; "
                  f"{meta['machine'].get('gpu', meta['machine']['processor'])}, "
                  f"{torch.get_num_threads()} CPU threads, load average before/after "
                  f"{args.load_before} / {_load_average()}; commit {meta['git_commit']}; "
                  f"{meta['utc_time']}"]
    return "\n".join(lines) + "\n"


def _load_average() -> str:
    """The 1-minute load average of the machine (other processes disturb CPU timings)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    """Time every contender in interleaved rounds, print and write the table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.load_before = _load_average()
    started = time.perf_counter()
    contenders = pipeline_contenders(args, device)
    if args.baseline:
        contenders.append(baseline_contender(args, device))
    for contender in contenders:
        time_steps(contender, args.warmup, device)
    for round_index in range(args.rounds):
        for contender in contenders:
            wall, cpu = time_steps(contender, args.steps, device)
            contender.times.append(wall)
            contender.cpu_times.append(cpu)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    text = report(args, device, contenders, time.perf_counter() - started)
    atomic_write(args.out, lambda handle: handle.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
