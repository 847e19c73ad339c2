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
