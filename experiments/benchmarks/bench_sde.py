"""Chain-steps per second of the SDE integrators and the discrete ensemble.

For m-USAM (B = 4, m = 2) on least squares with N = 16 examples, at d in {2, 100} and chains
in {1e3, 1e4}, one run measures: torchsde's Euler solver with its default Brownian object
(``BrownianInterval``, as ``sdeint`` builds it when no ``bm`` is given), torchsde with the
shared :class:`sdesam.brownian.FixedGridBrownian`, the fast loop
:func:`sdesam.sde.euler_maruyama` with that same object, a hand-written Euler-Maruyama loop
with the same per-sample-gradient formulation (the practical limit of that formulation), a
loop with every term of this problem in closed form (matrix products only: the limit of a
problem-specific code) and the discrete ensemble :func:`sdesam.ensemble.run`. Ratios are to
the hand-written per-sample loop.
Usage: ``python experiments/benchmarks/bench_sde.py [--steps 40] [--device cpu|cuda] [--out FILE]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
import torchsde

from sdesam import ensemble, sde
from sdesam.algorithms import sampling_factor
from sdesam.brownian import FixedGridBrownian, time_grid
from sdesam.problems import LinearRegression
from sdesam.records import atomic_write, run_metadata

N, BATCH, MICRO, ETA, RHO = 16, 4, 2, 0.01, 0.05


def hand_written_loop(problem: LinearRegression, y0: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """Euler-Maruyama for m-USAM's SDE on least squares, every term in closed form (matrix
    products only, no per-sample gradient tensor)."""
    features, targets = problem.features.to(y0), problem.targets.to(y0)
    c_noise = float(sampling_factor(BATCH, N, "with-replacement"))
    c_var = float(sampling_factor(MICRO, N, "with-replacement"))
    scale = (ETA * c_noise / N) ** 0.5
    generator = torch.Generator(device=y0.device).manual_seed(seed)
    sq_norms = features.square().sum(dim=-1)                     # |X_i|^2
    y = y0
    for _ in range(steps):
        residual = y @ features.T - targets                      # r_i, g_i = r_i X_i
        mean = residual @ features / N                            # g
        # rho/N sum_i X_i X_i^T ((1 - c) g + c g_i), via the scalars X_i . u_i
        weights = RHO / N * ((1 - c_var) * (mean @ features.T) + c_var * residual * sq_norms)
        dw = torch.randn(y.shape[0], N, generator=generator, dtype=y.dtype, device=y.device) * ETA**0.5
        noise = scale * ((dw * residual) @ features - dw.sum(dim=-1, keepdim=True) * mean)
        y = y - (mean + weights @ features) * ETA + noise
    return y


def hand_written_per_sample_loop(problem: LinearRegression, y0: torch.Tensor, steps: int,
                                 seed: int) -> torch.Tensor:
    """The same Euler-Maruyama loop written with the per-sample gradients ``[chains, N, d]``,
    the formulation :class:`sdesam.sde.AlgorithmSDE` uses for any problem."""
    features, targets = problem.features.to(y0), problem.targets.to(y0)
    c_noise = float(sampling_factor(BATCH, N, "with-replacement"))
    c_var = float(sampling_factor(MICRO, N, "with-replacement"))
    scale = (ETA * c_noise / N) ** 0.5
    generator = torch.Generator(device=y0.device).manual_seed(seed)
    y = y0
    for _ in range(steps):
        grads = (y @ features.T - targets).unsqueeze(-1) * features          # [chains, N, d]
        mean = grads.mean(dim=-2)
        u = RHO / N * ((1 - c_var) * mean.unsqueeze(-2) + c_var * grads)
        regulariser = ((u * features).sum(dim=-1).unsqueeze(-2) @ features).squeeze(-2)
        dw = torch.randn(y.shape[0], N, generator=generator, dtype=y.dtype, device=y.device) * ETA**0.5
        noise = scale * (dw.unsqueeze(-2) @ (grads - mean.unsqueeze(-2))).squeeze(-2)
        y = y - (mean + regulariser) * ETA + noise
    return y


def timed(fn: Callable[[], object], device: str) -> float:
    """Wall time of one call (after synchronising the device)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(dim: int, chains: int, steps: int, device: str) -> dict[str, float]:
    """Chain-steps per second of each method at one size."""
    gen = torch.Generator().manual_seed(0)
    problem = LinearRegression(torch.randn(N, dim, generator=gen, dtype=torch.float64),
                               torch.randn(N, generator=gen, dtype=torch.float64))
    model = sde.AlgorithmSDE(problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO)
    y0 = torch.zeros(chains, dim, dtype=torch.float64, device=device)
    grid = time_grid(steps * ETA, ETA, device="cpu")
    ts = grid.to(device)
    methods: dict[str, Callable[[], object]] = {
        "torchsde default bm": lambda: torchsde.sdeint(
            model, y0, ts, dt=ETA, method="euler",
            bm=torchsde.BrownianInterval(t0=ts[0], t1=ts[-1], size=(chains, N), dtype=y0.dtype,
                                         device=y0.device)),
        "torchsde fixed-grid bm": lambda: torchsde.sdeint(
            model, y0, ts, dt=ETA, method="euler",
            bm=FixedGridBrownian(grid, (chains, N), 0, device=device)),
        "fast path": lambda: sde.euler_maruyama(
            model, y0, FixedGridBrownian(grid, (chains, N), 0, device=device)),
        "hand-written EM": lambda: hand_written_per_sample_loop(problem, y0, steps, 0),
        "closed-form EM": lambda: hand_written_loop(problem, y0, steps, 0),
        "discrete ensemble": lambda: ensemble.run(
            problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO, x0=y0, steps=steps,
            chains=chains, seed=0, device=device),
    }
    rates = {}
    with torch.no_grad():
        for name, fn in methods.items():
            timed(fn, device)  # warm-up
            rates[name] = chains * steps / min(timed(fn, device) for _ in range(2))
    return rates


def main(argv: list[str] | None = None) -> int:
    """Measure every size, print the table and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="2x1000,2x10000,100x1000,100x10000",
                        help="comma-separated DIMxCHAINS")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_sde.txt"))
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise ValueError(f"--steps must be a positive integer; got {args.steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda needs CUDA, which is not available here")
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    meta = run_metadata(args.device)
    lines = [f"bench_sde: m-USAM (B={BATCH}, m={MICRO}) on least squares, N={N}, float64, "
             f"{args.steps} steps, device={args.device}, torch {meta['versions']['torch']}, "
             f"torchsde {meta['versions'].get('torchsde')}, threads={torch.get_num_threads()}",
             "chain-steps per second; ratio = rate / hand-written EM rate",
             f"{'d':>4} {'chains':>7} " + " ".join(f"{name:>24}" for name in
                                                     ("torchsde default bm", "torchsde fixed-grid bm",
                                                      "fast path", "hand-written EM",
                                                      "closed-form EM", "discrete ensemble"))]
    print("\n".join(lines), flush=True)
    for dim, chains in sizes:
        rates = measure(dim, chains, args.steps, args.device)
        base = rates["hand-written EM"]
        cells = " ".join(f"{rate:>14.3g} ({rate / base:5.2f}x)" for rate in rates.values())
        lines.append(f"{dim:>4} {chains:>7} {cells}")
        lines.append(f"{'':>12} fast/default torchsde = {rates['fast path'] / rates['torchsde default bm']:.2f}x, "
                     f"hand-written/fast = {base / rates['fast path']:.2f}x, "
                     f"fast/discrete = {rates['fast path'] / rates['discrete ensemble']:.2f}x, "
                     f"closed-form/fast = {rates['closed-form EM'] / rates['fast path']:.2f}x")
        print(lines[-2], lines[-1], sep="\n", flush=True)
    atomic_write(args.out, lambda f: f.write("\n".join(lines) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
