"""Memory estimates: a run too big for the machine is refused at once, in one line naming the
argument and the bytes against what is available; ordinary sizes run."""

from __future__ import annotations

import time

import pytest
import torch

from sdesam.problems import LinearRegression
from sdesam.simulation import derived_sde, ensemble, memory, sde
from sdesam.symbolic import derive, example_losses
from sdesam.validation import InputError

HUGE = 10**9


def least_squares() -> LinearRegression:
    gen = torch.Generator().manual_seed(0)
    return LinearRegression(torch.randn(8, 2, generator=gen, dtype=torch.float64),
                            torch.randn(8, generator=gen, dtype=torch.float64))


COMMON = dict(eta=0.1, rho=0.1, batch=2, x0=[0.5, -0.5], seed=0)


def ensemble_run(**kwargs):
    return ensemble.run(least_squares(), "usam", **{**COMMON, "steps": 10, **kwargs})


def sde_run(**kwargs):
    return sde.simulate(least_squares(), "usam", horizon=1.0, **{**COMMON, **kwargs})


def derived_run(**kwargs):
    losses, variables = example_losses(2)
    derivation = derive("usam", losses, variables, batch=2)
    options = {key: value for key, value in COMMON.items() if key != "batch"}
    return derived_sde.simulate_derivation(derivation, horizon=1.0, **{**options, **kwargs})


RUNS = [ensemble_run, sde_run, derived_run]


def check_refusal(error: InputError, argument: str) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(f"{argument}=")
    assert "bytes" in message and "available" in message


@pytest.mark.parametrize("run", RUNS)
def test_a_huge_chain_count_is_refused_at_once_naming_chains_and_bytes(run):
    began = time.perf_counter()
    with pytest.raises(InputError) as refused:
        run(chains=HUGE)
    assert time.perf_counter() - began < 5          # nothing was allocated or iterated
    check_refusal(refused.value, "chains")
    needed = int(str(refused.value).split("(")[1].split(" bytes")[0])
    assert needed >= HUGE * 2 * 8                    # at least the start and current states


@pytest.mark.parametrize("run", RUNS)
def test_ordinary_sizes_pass_and_are_far_below_what_is_available(run):
    result = run(chains=200)
    assert result.final.shape == (200, 2)


def test_the_estimate_grows_with_what_is_kept():
    """Keeping states, moments or a without-replacement batch adds to the estimate, as they add
    to the run; the check compares that sum with the available memory."""
    base = dict(element_size=8, records=11, every=1, keep_states=False, statistics=0,
                step_random_bytes=16, chunk=100, chunk_elements=10)
    bare = sum(p.nbytes for p in memory.chain_run_parts(1000, 3, **base))
    states = sum(p.nbytes for p in memory.chain_run_parts(1000, 3, **{**base, "keep_states": True}))
    moments = sum(p.nbytes for p in memory.chain_run_parts(1000, 3, **{**base, "statistics": 2}))
    assert states - bare == 1000 * 11 * 3 * 8
    assert moments > bare
    assert ensemble.batch_bytes(64, 4, "without-replacement") > ensemble.batch_bytes(64, 4, "with-replacement")


def test_the_argument_behind_the_largest_part_is_named(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 10 * 2**20)
    with pytest.raises(InputError) as many_steps:            # 1000 chains: 1.6 MiB of states
        ensemble_run(chains=1000, steps=100_000, every=1, keep_states=False)
    check_refusal(many_steps.value, "every")                 # but 10^5 records of bookkeeping
    assert "record fewer steps" in str(many_steps.value)
    assert ensemble_run(chains=1000, steps=100_000 // 1000, every=None).final.shape == (1000, 2)
    with pytest.raises(InputError) as kept:
        ensemble_run(chains=1000, steps=2000)                # 2001 states of 1000 chains: 31 MiB
    check_refusal(kept.value, "chains")
    assert "keep_states=False" in str(kept.value) and "10.0 MiB available" in str(kept.value)


def test_available_memory_is_read_from_proc_meminfo(tmp_path, monkeypatch):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       2048 kB\nMemFree:         100 kB\nMemAvailable:    1536 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", fake)
    assert memory.available_bytes("cpu") == 1536 * 1024
    assert memory.size_text(1536 * 1024) == "1.5 MiB"


def test_sde_corrections_refuses_a_billion_chains_at_once(tmp_path):
    """The issue's case: it ran 400 s at 1.2 GB with no progress; now one line, exit 2. (Its
    chains now run in blocks of ``chunk``, one task each, so the block is what is too big.)"""
    import subprocess
    import sys
    from script_module import ROOT
    began = time.perf_counter()
    driver = ("import sys; sys.path.insert(0, sys.argv[1]); from script_module import load_script; "
              "from sdesam.cli import guarded; script = load_script('experiments/sde_corrections.py'); "
              f"script.QUICK = {{**script.QUICK, 'chunk': {HUGE}}}; "
              "sys.exit(guarded('sde_corrections', lambda: script.main(sys.argv[2:])))")
    done = subprocess.run([sys.executable, "-c", driver, str(ROOT / "tests"), "--quick",
                           "--chains", str(HUGE), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - began < 60
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"--chains={HUGE}" in done.stderr and "bytes" in done.stderr and "available" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, argv, settings", [
    ("sde_corrections", ["--chains", str(HUGE)], {"QUICK": {"chunk": HUGE}}),
    ("sde_vs_discrete", ["--chains", str(HUGE)], {"QUICK": {"chunk": HUGE}}),
    ("escape_speed", ["--protocol", "landscape"], {"LANDSCAPE_QUICK": {"chains": HUGE}}),
    ("sgn_trace", ["--protocol", "landscape"], {"LANDSCAPE_QUICK": {"chains": HUGE}}),
])
def test_every_simulating_experiment_checks_memory_before_any_work(name, argv, settings, tmp_path,
                                                                   monkeypatch):
    from script_module import load_script
    script = load_script(f"experiments/{name}.py", f"{name}_memory_script")
    for key, value in settings.items():
        monkeypatch.setattr(script, key, {**getattr(script, key), **value})
    from sdesam.simulation import compare
    work = lambda *a, **k: pytest.fail("work started")
    monkeypatch.setattr(compare, "compare_algorithm", work)
    for function in ("measure_run", "landscape_protocol", "landscape_runs", "make_record"):
        if hasattr(script, function):
            monkeypatch.setattr(script, function, work)
    with pytest.raises(InputError) as refused:
        script.main([*argv, "--quick", "--no-progress", "--out", str(tmp_path / "out")])
    check_refusal(refused.value, "--chains" if "--chains" in argv else "chains")
    assert not (tmp_path / "out").exists()
