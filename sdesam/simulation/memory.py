"""How much memory a many-chain run needs, estimated before anything is allocated.

A run of K chains in d dimensions holds, at its peak: the chains' states (the start and the
current state), the random numbers of one step (batch indices or Brownian increments), the
states it keeps at its recorded steps, a copy of the live chains and the values of each test
function when it keeps moments, and the temporaries of the chains updated at once. Each is a
:class:`Part` naming the argument that sets its size. :func:`chain_run_parts` lists them for
the ensemble, the hand-written SDE and the compiled SDE (each passes its own random numbers and
temporaries), experiments add their own parts, and :func:`require` refuses, in one line naming
the argument behind the largest part, a run that needs more than the device has available
(CPU: ``MemAvailable`` of ``/proc/meminfo``, or psutil where that file does not exist; CUDA:
the device's free memory). Where the available memory cannot be read nothing is refused.

The estimate is a lower bound of the peak (allocator slack and the problem's own temporaries
come on top), so a run it passes may still be tight; a run it refuses could not have finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import validation

MEMINFO = Path("/proc/meminfo")
"""Where Linux says how much memory can be allocated without swapping (``MemAvailable``)."""

BOOKKEEPING_BYTES = 16
"""Per chain: the alive mask and the step of divergence."""

RECORD_BYTES = 128
"""Per recorded step: its entry in the list and index of recorded steps."""

MOMENT_BYTES = 24
"""Per recorded step and test function: its mean, variance and count."""


@dataclass(frozen=True)
class Part:
    """``nbytes`` held for ``what``; its size is set by ``argument`` (shown as ``argument=value``),
    and ``remedy`` says how to shrink it."""

    what: str
    argument: str
    value: Any
    nbytes: int
    remedy: str = ""


def chain_run_parts(chains: int, dim: int, *, element_size: int, records: int, every: int | None,
                    keep_states: bool, statistics: int, step_random_bytes: int, chunk: int,
                    chunk_elements: int, chains_argument: str = "chains") -> list[Part]:
    """The memory of a run of ``chains`` chains in ``dim`` dimensions (states of
    ``element_size`` bytes) that records ``records`` steps, one in ``every`` (keeping the
    states if ``keep_states``, the moments of ``statistics`` test functions), draws
    ``step_random_bytes`` of random numbers per chain and step, and updates ``chunk`` chains
    at a time with ``chunk_elements`` temporary elements per chain."""
    state = dim * element_size
    lower = f"lower {chains_argument}"
    parts = [Part("the chains' start and current states", chains_argument, chains,
                  chains * (2 * state + BOOKKEEPING_BYTES), lower),
             Part("the random numbers of one step", chains_argument, chains,
                  chains * step_random_bytes, lower)]
    if keep_states:
        parts.append(Part(f"the states kept at {records} recorded steps", chains_argument, chains,
                          chains * records * state,
                          f"{lower}, or keep fewer states (keep_states=False or a larger every)"))
    if statistics:
        parts.append(Part(f"the live chains and {statistics} test functions' values",
                          chains_argument, chains, chains * (state + 16 * statistics), lower))
    parts.append(Part(f"the bookkeeping of {records} recorded steps", "every", every,
                      records * (RECORD_BYTES + MOMENT_BYTES * statistics),
                      "record fewer steps (a larger every, or every=None)"))
    at_once = min(chunk, chains)
    temporaries = 2 * at_once * chunk_elements * element_size
    what = f"the temporaries of {at_once} chains updated at once"
    parts.append(Part(what, chains_argument, chains, temporaries, lower) if at_once == chains
                 else Part(what, "chunk", chunk, temporaries, "lower chunk"))
    return parts


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Bytes ``device`` can still allocate (None where that cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def where(device: str | torch.device) -> str:
    """What holds ``device``'s memory, for messages: the machine, or the named GPU."""
    device = torch.device(device)
    return "the machine" if device.type == "cpu" else f"device {device}"


def size_text(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit that keeps the number >= 1 (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def require(parts: Iterable[Part], device: str | torch.device = "cpu") -> int:
    """The bytes ``parts`` add up to; an :class:`~sdesam.validation.InputError` naming the
    argument behind the largest part when they exceed what ``device`` has available."""
    parts = list(parts)
    needed = sum(part.nbytes for part in parts)
    available = available_bytes(device)
    if available is not None and needed > available:
        largest = max(parts, key=lambda part: part.nbytes)
        raise validation.InputError(
            f"{largest.argument}={largest.value}: the run needs about {size_text(needed)} of "
            f"memory ({needed} bytes; {largest.what}: {size_text(largest.nbytes)}), but "
            f"{where(device)} has {size_text(available)} available; {largest.remedy}")
    return needed
