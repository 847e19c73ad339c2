"""Does RW-SAM strengthen the noise-induced tr V regulariser? Push along -grad tr V and the
equivalent m of every Gibbs-weighted reading, against lam and against m (issue 9).

For each problem and point, :func:`sdesam.implicit.diagnose` gives, per unit rho, the
noise-induced part of each rule's first-order drift projected on -grad tr V (the push), the
micro-batch size at which m-SAM (m-USAM for USAM) pushes as hard (the equivalent m), the
effective sample size of the Gibbs weights and the zeroth-order bias of a weighted descent.
The rules are read from the registry: SAM and m-SAM for every m dividing the batch, USAM and
m-USAM, and every Gibbs-weighted rule (the poster's RW-SAM and the other readings) for lam on
a grid of multiples of 1/(mean per-sample gradient norm at the point), from uniform (0) to
nearly one-hot weights.

Problems: the 1-D escape landscape at and around its poor minimum (rank-one noise); logistic
regression with 30% flipped labels at its minimum (Newton); the digits MLP at its poor minimum
on the clean training set (Monte Carlo over sampled batches, exact per-sample gradients and
Hessian-vector products of the network). Writes ``OUT/rwsam_mechanism.json`` and the figure.

A task is one point (every rule diagnosed on the same batches there); tasks run in parallel
(``--jobs``, ``--scheduler``), each seeded from its settings and ``--seed``, and write
``OUT/tasks/<key>.json``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from sdesam.experiment import digits
from sdesam import implicit
from sdesam.algorithms import get_rule, rule_names
from sdesam.cli import guarded
from sdesam.experiment.arguments import check_device, experiment_parser, prepare_out
from sdesam.experiment.executor import add_executor_arguments, check_executor_arguments, run_sweep
from sdesam.experiment.tasks import Task, exits_on_task_failure
from sdesam.experiment.headline import estimate, print_headline
from sdesam.plotting import publish
from sdesam.problems import LogisticRegression, SharpFlatLandscape
from sdesam.experiment.records import make_record, timed_metadata

LAMS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
LAMS_QUICK = [0.0, 1.0, 4.0, 16.0]
LANDSCAPE = {"n": 32, "batch": 16, "sampling": "with-replacement", "batches": 10000,
             "offsets": [0.0, -0.5, 0.5]}
LANDSCAPE_QUICK = {"batches": 1000, "offsets": [0.0]}
LOGISTIC = {"n": 64, "dim": 10, "flip": 0.3, "l2": 1e-3, "batch": 16,
            "sampling": "without-replacement", "batches": 8000}
LOGISTIC_QUICK = {"batches": 1000}
NETWORK = {"batch": 20, "sampling": "without-replacement", "batches": 300, "hidden": 128,
           "gd_lr": 0.5, "gd_steps": 4000, "n_train": 1000, "n_random": 200}
NETWORK_QUICK = {"batches": 24, "gd_steps": 200}
DRAWS = 4


def specs_for(batch: int, lams: list[float], scale: float) -> list[implicit.Spec]:
    """SAM, USAM, their m-rules at every divisor of the batch and every Gibbs-weighted rule at
    every lam (multiples of ``scale`` = 1/mean per-sample gradient norm), read from the registry."""
    plain = rule_names(lambda r: r.perturbed and r.ascent == "part" and r.scale is None)
    specs = []
    for name in plain:
        micros = implicit.divisors(batch) if get_rule(name).micro else [None]
        specs += [implicit.Spec.of(name, m) for m in micros]
    for name in rule_names(lambda r: r.weighted):
        specs += [implicit.Spec.of(name, lam=lam * scale) for lam in lams]
    return specs


def diagnose_point(problem_name: str, point_name: str, problem: Any, x: torch.Tensor,
                   part: dict[str, Any], lams: list[float],
                   seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of every spec at one point, and a summary of the point."""
    norms = problem.sample_grads(x).detach().norm(dim=-1)
    scale = 1.0 / float(norms.mean())
    specs = specs_for(part["batch"], lams, scale)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    batches = implicit.sample_batches(problem.n, part["batch"], part["batches"], part["sampling"],
                                      generator)
    records = implicit.diagnose(problem, x, specs, batches, draws=DRAWS, generator=generator,
                                chunk=part.get("chunk", 1000), sampling=part["sampling"])
    implicit.add_equivalent_m(records)
    for record in records:
        rule = get_rule(record["rule"])
        cost = implicit.passes_per_step(rule, part["batch"], record["micro"])
        record.update(problem=problem_name, point=point_name,
                      lam_scale=record["lam"] / scale if rule.weighted else None, **cost)
        record.pop("label")
    summary = {"problem": problem_name, "point": point_name, "n": problem.n, "dim": problem.dim,
               "batch": part["batch"], "sampling": part["sampling"],
               "trace_V": float(problem.trace_V(x)), "grad_norm": float(problem.grad(x).norm()),
               "mean_sample_grad_norm": float(norms.mean()),
               "grad_trace_V_norm": records[0]["grad_trace_V_norm"],
               "critical": records[0]["critical"], "batches": part["batches"]}
    return records, summary


def point_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """The records of every rule at one point and the point's summary: one task. The point is
    rebuilt from its settings (the network's poor minimum read from the cache, or made and
    cached there)."""
    name, part, device = settings["problem"], settings["part"], settings["device"]
    if name == "landscape":
        problem = SharpFlatLandscape(n=part["n"])
        x = problem.poor_minimum + settings["offset"] * problem.sharp[2]
    elif name == "logistic":
        problem, x = logistic_problem(part, settings["data_seed"])
    else:
        problem, x = network_problem({**part, "cache_dir": settings["cache"]}, device, False)
    records, summary = diagnose_point(name, settings["point"], problem, x.to(device), part,
                                      settings["lams"], seed)
    return {"diagnosis": records, "points": [summary]}


def landscape_points(part: dict[str, Any]) -> list[tuple[str, Any, torch.Tensor]]:
    """The landscape and its points: the poor minimum and offsets in units of its width."""
    problem = SharpFlatLandscape(n=part["n"])
    width = problem.sharp[2]
    points = []
    for offset in part["offsets"]:
        name = "poor minimum" if offset == 0 else f"poor minimum {offset:+g} width"
        points.append((name, problem, problem.poor_minimum + offset * width))
    return points


def logistic_problem(part: dict[str, Any], seed: int) -> tuple[LogisticRegression, torch.Tensor]:
    """Logistic regression on Gaussian features with a fraction of flipped labels, and its
    minimum (Newton's method on the full-batch loss)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(part["n"], part["dim"], generator=g, dtype=torch.float64)
    teacher = torch.randn(part["dim"], generator=g, dtype=torch.float64)
    labels = (features @ teacher > 0).double()
    flipped = torch.rand(part["n"], generator=g) < part["flip"]
    labels = torch.where(flipped, 1 - labels, labels)
    problem = LogisticRegression(features, labels, l2=part["l2"])
    x = torch.zeros(part["dim"], dtype=torch.float64)
    for _ in range(50):
        step = torch.linalg.solve(torch.func.hessian(problem.loss)(x), problem.grad(x))
        x = x - step
        if float(step.norm()) < 1e-13:
            break
    return problem, x


def network_problem(part: dict[str, Any], device: str,
                    progress: bool) -> tuple[implicit.ModuleProblem, torch.Tensor]:
    """The digits MLP at its poor minimum, as a problem on the clean training set."""
    data = digits.load_digits_data(part["n_train"], part["n_random"], seed=0, device=device)
    model, _ = digits.poor_minimum(data, hidden=part["hidden"], lr=part["gd_lr"],
                                   steps=part["gd_steps"], seed=0, cache_dir=part["cache_dir"],
                                   progress=progress)
    problem = implicit.ModuleProblem(model, digits.per_sample_loss, data.train_x, data.train_y)
    return problem, problem.point()


def headline_rows(diagnosis: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The push along -grad tr V per unit rho of SAM, m-SAM at m = 1 and RW-SAM at each lam
    (in units of 1/mean per-sample gradient norm), at every point."""
    rows = []
    for r in diagnosis:
        rule = get_rule(r["rule"])  # SAM, m-SAM at m = 1 and the poster's RW-SAM, by their facts
        if rule.normalized and rule.noise_induced and not rule.extended and r["micro"] in (None, 1):
            name = r["rule"] + (f" m={r['micro']}" if r["micro"] is not None else "") + \
                (f" lam={r['lam_scale']:g}/mean|g_i|" if r["lam_scale"] is not None else "")
            rows.append((f"{r['problem']}, {r['point']}: {name}",
                         f"push {estimate(r['push'], r['push_stderr'])}"))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer batches, points and lam values; a shorter GD "
                               "run to the network's poor minimum (< 2 minutes)")
    parser.set_defaults(out=None)
    parser.add_argument("--problems", nargs="+", choices=("landscape", "logistic", "network"),
                        default=["landscape", "logistic", "network"])
    add_executor_arguments(parser)
    return parser.parse_args(argv)


@exits_on_task_failure("rwsam_mechanism")
def main(argv: list[str] | None = None) -> int:
    """Diagnose every rule on every problem and write the data file and figure."""
    args = parse_args(argv)
    check_device(args.device)
    where = check_executor_arguments(args)
    if "network" in args.problems:
        digits.check_protocol_cache({**NETWORK, **(NETWORK_QUICK if args.quick else {})},
                                    args.cache)
    out = prepare_out(args, "rwsam_mechanism")
    began, cpu_began = time.perf_counter(), time.process_time()
    lams = LAMS_QUICK if args.quick else LAMS
    settings: dict[str, Any] = {"experiment": "rwsam_mechanism", "quick": args.quick,
                                "seed": args.seed, "device": args.device,
                                "problems": args.problems, "lams": lams, "draws": DRAWS}
    base = {"experiment": "rwsam_mechanism", "device": args.device, "lams": lams, "draws": DRAWS}
    tasks: list[Task] = []
    if "landscape" in args.problems:
        part = {**LANDSCAPE, **(LANDSCAPE_QUICK if args.quick else {})}
        settings["landscape"] = part
        tasks += [Task(point_task, {**base, "problem": "landscape", "part": part, "point": name,
                                    "offset": offset}, args.seed, name=f"landscape, {name}")
                  for offset, (name, _, _) in zip(part["offsets"], landscape_points(part))]
    if "logistic" in args.problems:
        part = {**LOGISTIC, **(LOGISTIC_QUICK if args.quick else {})}
        settings["logistic"] = part
        tasks.append(Task(point_task, {**base, "problem": "logistic", "part": part,
                                       "point": "minimum", "data_seed": args.seed}, args.seed,
                          name="logistic, minimum"))
    if "network" in args.problems:
        part = {**NETWORK, **(NETWORK_QUICK if args.quick else {}), "chunk": 100}
        settings["network"] = dict(part)
        cache = str(Path(args.cache or digits.default_cache_dir()).resolve())
        tasks.append(Task(point_task, {**base, "problem": "network", "part": part,
                                       "point": "poor minimum"}, args.seed,
                          name="network, poor minimum", paths={"cache": cache}))
    print(f"{len(tasks)} tasks on {where}", flush=True)
    records = run_sweep(tasks, args, out / "tasks", desc="rwsam_mechanism points")
    diagnosis = [row for record in records for row in record["results"]["diagnosis"]]
    points = [record["results"]["points"][0] for record in records]
    metadata = {**timed_metadata(args.device, began, cpu_began), "executor": where,
                "tasks": len(records),
                "tasks_cpu_time_s": sum(record["metadata"]["cpu_time_s"] for record in records)}
    record = make_record(settings, {"diagnosis": diagnosis, "points": points}, metadata)
    for written in publish(record, out):
        print(written)
    print(f"wrote {out} ({metadata['wall_time_s']:.0f} s wall, {metadata['cpu_time_s']:.0f} s CPU)")
    print_headline("rwsam_mechanism", headline_rows(diagnosis))
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("rwsam_mechanism", lambda: main()))
