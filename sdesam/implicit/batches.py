"""The batches the diagnostic averages over: every ordered index tuple with its probability
(exact), or uniform samples of them (Monte Carlo)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .. import validation
from ..algorithms import check_sampling
from ..simulation.inputs import draw_batches

MAX_ENUMERATED = 300_000
"""The most index tuples (times draws) that exact enumeration evaluates."""


@dataclass(frozen=True)
class Batches:
    """Index tuples ``idx [K, B]`` with probabilities ``prob [K]`` (exact) or None (sampled)."""

    idx: torch.Tensor
    prob: torch.Tensor | None

    @property
    def exact(self) -> bool:
        """Whether these are all the tuples, with their probabilities."""
        return self.prob is not None


def enumerate_batches(n: int, batch: int, sampling: str) -> Batches:
    """Every ordered tuple of ``batch`` indices out of ``n`` (with replacement: ``n^B``; without:
    ``n!/(n-B)!``), each equally likely; ordered, so consecutive micro-batches are uniform."""
    check_sampling(sampling)
    validation.positive_int("batch", batch)
    count = n**batch if sampling == "with-replacement" else math.perm(n, batch)
    if count > MAX_ENUMERATED:
        raise validation.InputError(f"exact enumeration of {count} index tuples (n={n}, "
                                    f"batch={batch}) exceeds {MAX_ENUMERATED}; sample batches instead")
    tuples = (itertools.product(range(n), repeat=batch) if sampling == "with-replacement"
              else itertools.permutations(range(n), batch))
    idx = torch.tensor(list(tuples), dtype=torch.long).reshape(count, batch)
    return Batches(idx, torch.full((count,), 1.0 / count, dtype=torch.float64))


def sample_batches(n: int, batch: int, count: int, sampling: str,
                   generator: torch.Generator) -> Batches:
    """``count`` uniform batches (i.i.d. indices, or a uniform subset in random order)."""
    check_sampling(sampling)
    validation.positive_int("count", count)
    if sampling == "without-replacement" and batch > n:
        raise validation.InputError(f"batch must be at most n={n} without replacement; got {batch}")
    return Batches(draw_batches(generator, count, n, batch, sampling), None)
