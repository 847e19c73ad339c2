"""Training cost of SGD, SAM, m-SAM (several m, vmapped and as a sequential loop) and RW-SAM.

Every rule runs the trainer's pipeline (data held on the device, batched crop + flip there,
bf16 autocast and channels-last on CUDA) through ``sdesam.optim.create`` on CIFAR-shaped
synthetic data, for each model of ``--models``. Two obvious alternatives run beside it in the
same rounds: m-SAM written as a plain sequential loop over micro-batches (two autograd passes
per micro-batch; the optimizer's vmapped groups must never be slower), and SAM in its two
textbook passes fed by a torch DataLoader that crops and flips image by image on the CPU,
fp32. Rules are timed in interleaved rounds (each round times every contender for a few
steps), so that load from other processes spreads evenly over them; the table gives the
median over rounds of the time per step, images/s, the ratios to SAM and the minor page
faults per step (fresh memory the step maps: a count other processes do not disturb), and
every ratio of interest as the median of its per-round (paired) ratios with a
distribution-free 95% interval, judged against its target: met only when the whole interval
lies below it. On a GPU wall-clock time is what counts; on a CPU shared with other work the
process CPU time is the measure (run the baseline with
``--loader-workers 0`` there, so that its data loading is counted in it).

The table goes to ``<out>/bench_train.txt``: by default a fresh ``runs/bench_train-<time>/``
(printed); the committed table only with ``--out experiments/benchmarks``.

example (CPU, the run recorded in bench_train.txt, about 10 minutes on 2 shared cores):
  python experiments/benchmarks/bench_train.py --out experiments/benchmarks
example (GPU): python experiments/benchmarks/bench_train.py --device cuda --batch-size 256 \\
      --micro 128 64 32 --rounds 5 --steps 10 --warmup 2 --loader-workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sdesam import validation
from sdesam.optim import create, passes
from sdesam.stats import median_interval
from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.experiment.records import atomic_write, run_metadata
from sdesam.train import augment
from sdesam.train.data import synthetic_dataset
from sdesam.train.distributed import resolve_device
from sdesam.train.loop import TrainConfig, autocast_dtype, per_sample_cross_entropy
from sdesam.train.models import build_model

TABLE_NAME = "bench_train.txt"
RHO = 0.05
BASELINE = "sam, straightforward loop (CPU loader, fp32)"
TARGETS = {("small", 1): 0.8}
"""Issue 12's bound on vmapped / sequential m-SAM per (model, m); 1.0 everywhere else."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark settings (defaults: the CPU run of bench_train.txt)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "small"])
    parser.add_argument("--norm", default=None, help="bn or gn (default: each model's own)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--micro", type=int, nargs="*", default=[16, 8, 4, 1],
                        help="m values for m-SAM")
    parser.add_argument("--rounds", type=int, default=9,
                        help="interleaved timing rounds (>= 6 for the ratios' 95%% intervals)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per contender per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per contender first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the straightforward CPU-loader fp32 SAM loop")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="DataLoader workers of the baseline")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="folder for bench_train.txt (default: a fresh runs/bench_train-<time>/)")
    args = parser.parse_args(argv)
    bad = [m for m in args.micro if m < 1 or args.batch_size % m]
    if bad:
        parser.error(f"--micro values must divide --batch-size {args.batch_size}; got {bad}")
    for name in ("rounds", "steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        validation.seed("--seed", args.seed)
    except validation.InputError as error:
        parser.error(str(error))
    return args


@dataclass
class Contender:
    """One timed configuration: a name and a function running one training step."""

    name: str
    step: Callable[[], Any]
    note: str = ""
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    page_faults: list[float] = field(default_factory=list)


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


def sequential_msam_step(model: nn.Module, base: torch.optim.Optimizer, rho: float, micro: int,
                         inputs: torch.Tensor, targets: torch.Tensor,
                         amp: torch.dtype | None) -> torch.Tensor:
    """m-SAM as a plain loop: per micro-batch its gradient, x + rho g/|g|, the gradient there."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    losses = []
    for x, y in zip(inputs.split(micro), targets.split(micro)):
        with passes.autocast_context(x.device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        ascent = torch.autograd.grad(loss, params)
        with torch.no_grad():
            coefficient = rho / (torch.norm(torch.stack([g.norm() for g in ascent])) + 1e-12)
            perturbations = [g * coefficient for g in ascent]
            for p, e in zip(params, perturbations):
                p.add_(e)
        with passes.autocast_context(x.device, amp):
            descent = torch.autograd.grad(F.cross_entropy(model(x).float(), y), params)
        with torch.no_grad():
            for p, e, t, g in zip(params, perturbations, total, descent):
                p.sub_(e)
                t.add_(g)
        losses.append(loss.detach())
    count = len(losses)
    for p, t in zip(params, total):
        p.grad = t.div_(count)
    base.step()
    base.zero_grad()
    return torch.stack(losses).mean()


def pipeline_contenders(args: argparse.Namespace, model_name: str,
                        device: torch.device) -> list[Contender]:
    """The trainer's pipeline with each rule (on-device data, batched augmentation), and m-SAM
    as a sequential loop over micro-batches on the same pipeline."""
    data = synthetic_dataset(max(4 * args.batch_size, 1024), 16, seed=args.seed).to(device)
    amp = autocast_dtype(args.precision, device)
    channels_last = device.type == "cuda"
    generator = torch.Generator().manual_seed(args.seed)
    base_options = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)

    def fresh_model() -> nn.Module:
        torch.manual_seed(args.seed)
        model = build_model(model_name, data.num_classes, args.norm).to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(data.train_labels), (args.batch_size,), generator=generator)
        index = index.to(device)
        crops = augment.draw_crop_flip(args.batch_size, 4, generator)
        images = augment.crop_flip(data.train_images[index], *crops, padding=4)
        return augment.normalize(images, data.mean, data.std, channels_last), data.train_labels[index]

    rules: list[tuple[str, str, dict[str, Any]]] = [("sgd", "sgd", {}), ("sam", "sam", {"rho": RHO})]
    rules += [(f"m-sam m={m}", "m-sam", {"rho": RHO, "micro": m}) for m in args.micro]
    rules += [("rw-sam", "rw-sam", {"rho": RHO, "lam": TrainConfig.lam, "delta": TrainConfig.delta})]
    contenders = []
    for label, name, options in rules:
        model = fresh_model()
        optimizer = create(name, model.parameters(), base=torch.optim.SGD, autocast_dtype=amp,
                           **options, **base_options)
        note = ""
        if "micro" in options and options["micro"] < args.batch_size:
            count = args.batch_size // options["micro"]
            note = f"vmap group {optimizer.vmap_group(count)} of {count}"

        def step(model=model, optimizer=optimizer) -> Any:
            return optimizer.step(model, per_sample_cross_entropy, *batch())

        contenders.append(Contender(label, step, note))
        if "micro" in options:
            loop_model = fresh_model()
            base = torch.optim.SGD(loop_model.parameters(), **base_options)

            def loop_step(model=loop_model, base=base, micro=options["micro"]) -> Any:
                return sequential_msam_step(model, base, RHO, micro, *batch(), amp)

            contenders.append(Contender(f"{label}, sequential loop", loop_step))
    return contenders


def baseline_contender(args: argparse.Namespace, model_name: str, device: torch.device) -> Contender:
    """The straightforward loop: CPU DataLoader with per-image augmentation, fp32, textbook SAM."""
    data = synthetic_dataset(max(4 * args.batch_size, 1024), 16, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        CropFlipImages(data.train_images, data.train_labels, data.mean, data.std),
        batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.loader_workers, pin_memory=device.type == "cuda",
        persistent_workers=args.loader_workers > 0)
    torch.manual_seed(args.seed)
    model = build_model(model_name, data.num_classes, args.norm).to(device)
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
        return textbook_sam_step(model, base, RHO, inputs, targets)

    return Contender(BASELINE, step)


def time_steps(contender: Contender, steps: int, device: torch.device) -> tuple[float, float, float]:
    """Wall-clock seconds, process CPU seconds and minor page faults per step over ``steps``
    steps (CUDA work included). Page faults count the fresh memory a step maps (kernel work
    that is the same on every run, unlike the time, which other processes disturb)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        contender.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ((time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps,
            (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps)


def ratio_line(label: str, top: Contender, bottom: Contender, target: float | None = None,
               note: str = "") -> str:
    """Two contenders' time ratio: the median of the per-round (paired) CPU-time ratios with
    its distribution-free 95% interval, the ratio of the median CPU and wall times, and, with
    a ``target`` upper bound, whether the interval lies below it (met), above it (not met) or
    across it (not resolvable at this noise)."""
    per_round = [a / b for a, b in zip(top.cpu_times, bottom.cpu_times)]
    wall = statistics.median(top.times) / statistics.median(bottom.times)
    cpu = statistics.median(top.cpu_times) / statistics.median(bottom.cpu_times)
    try:
        paired, low, high = median_interval(per_round)
        interval = f"{paired:.3f} [95% CI {low:.3f}, {high:.3f}]"
        verdict = ("met" if high <= target else "not met" if low > target
                   else "not resolvable at this noise") if target is not None else ""
    except ValueError:
        interval = f"{statistics.median(per_round):.3f} (range {min(per_round):.3f}..{max(per_round):.3f}; a CI needs >= 6 rounds)"
        verdict = "needs >= 6 rounds" if target is not None else ""
    aim = f" (target <= {target}{note}: {verdict})" if target is not None else ""
    return (f"{label}: paired CPU-time ratio {interval}; ratio of medians CPU {cpu:.3f}, "
            f"wall {wall:.3f}{aim}")


def model_report(args: argparse.Namespace, model_name: str, contenders: list[Contender]) -> list[str]:
    """One model's table (medians over rounds, CPU spread) and its ratios."""
    by_name = {c.name: c for c in contenders}
    sam = by_name["sam"]
    sam_wall, sam_cpu = statistics.median(sam.times), statistics.median(sam.cpu_times)
    lines = [f"model {model_name}", "",
             f"{'contender':<46}{'wall s/step':>12}{'images/s':>10}{'x SAM':>7}"
             f"{'CPU s/step':>12}{'x SAM':>7}{'CPU min..max':>16}{'faults/step':>12}  note"]
    for c in contenders:
        wall, cpu = statistics.median(c.times), statistics.median(c.cpu_times)
        spread = f"{min(c.cpu_times):.3f}..{max(c.cpu_times):.3f}"
        lines.append(f"{c.name:<46}{wall:>12.4f}{args.batch_size / wall:>10.1f}"
                     f"{wall / sam_wall:>7.3f}{cpu:>12.4f}{cpu / sam_cpu:>7.3f}{spread:>16}"
                     f"{statistics.median(c.page_faults):>12.0f}  {c.note}")
    lines.append("")
    lines.append(ratio_line("RW-SAM / SAM time per step", by_name["rw-sam"], sam, 1.2,
                            "; one extra forward ~ 7/6 = 1.167"))
    for m in args.micro:
        lines.append(ratio_line(f"m-SAM (m={m}) vmapped / sequential loop", by_name[f"m-sam m={m}"],
                                by_name[f"m-sam m={m}, sequential loop"],
                                TARGETS.get((model_name, m), 1.0)))
    lines += [ratio_line(f"m-SAM (m={m}) / SAM time per step", by_name[f"m-sam m={m}"], sam)
              for m in args.micro]
    if BASELINE in by_name:
        lines.append(ratio_line("SAM, trainer pipeline / straightforward loop", sam, by_name[BASELINE],
                                0.5, " on a GPU"))
    return lines + [""]


def report(args: argparse.Namespace, device: torch.device, timed: dict[str, list[Contender]],
           wall: float, load_before: str) -> str:
    """The results tables, ratios and the machine and its load as text."""
    lines = [f"bench_train: models {', '.join(args.models)} (norm {args.norm or 'default'}), batch "
             f"{args.batch_size}, device {device}, precision {args.precision}, {args.rounds} "
             f"rounds x {args.steps} steps per contender (after {args.warmup} warm-up steps), "
             "CIFAR-shaped synthetic data; medians over rounds, process CPU time the measure on a "
             "CPU", ""]
    for model_name, contenders in timed.items():
        lines += model_report(args, model_name, contenders)
    meta = run_metadata(str(device))
    lines += [f"machine: {meta['machine'].get('gpu', meta['machine']['processor'])}, "
              f"nproc {os.cpu_count()}, {torch.get_num_threads()} torch CPU threads, load "
              f"average (1/5/15 min) before {load_before}, after {_load_average()}",
              f"wall time {wall:.0f} s; torch {meta['versions']['torch']}; commit "
              f"{meta['git_commit']}; {meta['utc_time']}"]
    return "\n".join(lines) + "\n"


def _load_average() -> str:
    """The 1/5/15-minute load averages of the machine (other processes disturb timings)."""
    try:
        return "/".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    """Time every contender of every model in interleaved rounds, print and write the table."""
    args = parse_args(argv)
    out = check_writable(resolve_out(args.out, "bench_train"))
    print(f"bench_train: writing {out / TABLE_NAME}", file=sys.stderr)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_before = _load_average()
    started = time.perf_counter()
    timed: dict[str, list[Contender]] = {}
    for model_name in args.models:
        contenders = pipeline_contenders(args, model_name, device)
        if args.baseline:
            contenders.append(baseline_contender(args, model_name, device))
        timed[model_name] = contenders
    everyone = [c for contenders in timed.values() for c in contenders]
    for contender in everyone:
        for _ in range(args.warmup):
            contender.step()
    for round_index in range(args.rounds):
        for contender in everyone:
            wall, cpu, faults = time_steps(contender, args.steps, device)
            contender.times.append(wall)
            contender.cpu_times.append(cpu)
            contender.page_faults.append(faults)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    text = report(args, device, timed, time.perf_counter() - started, load_before)
    atomic_write(out / TABLE_NAME, lambda handle: handle.write(text))
    print(text)
    print(f"table written to {out / TABLE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
