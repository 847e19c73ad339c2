"""Exact distributions of the index sets a SAM-family step draws, for enumeration.

A mini-batch (or micro-batch) of ``size`` out of ``n`` samples is either ``size`` independent
uniform draws (with replacement; the support is enumerated as multisets with multinomial
probabilities) or a uniform ``size``-subset (without replacement). Every micro-batch of an
m-rule is marginally such a sample of size m, which is why one micro-batch's expectation
gives the drift (linearity). Two distinct micro-batches are independent with replacement and
a uniform pair of disjoint subsets without.
"""

from __future__ import annotations

from itertools import combinations, combinations_with_replacement
from math import comb, factorial, prod
from collections import Counter

import sympy

from ..algorithms import check_sampling
from ..validation import InputError

IndexSet = tuple[int, ...]


def sample_distribution(n: int, size: int, sampling: str) -> list[tuple[IndexSet, sympy.Rational]]:
    """All index sets of ``size`` drawn from ``range(n)`` with their exact probabilities."""
    check_sampling(sampling)
    if sampling == "without-replacement":
        if size > n:
            raise InputError(f"cannot draw {size} of n={n} samples without replacement")
        p = sympy.Rational(1, comb(n, size))
        return [(subset, p) for subset in combinations(range(n), size)]
    total = n**size
    out = []
    for multiset in combinations_with_replacement(range(n), size):
        arrangements = factorial(size) // prod(factorial(k) for k in Counter(multiset).values())
        out.append((multiset, sympy.Rational(arrangements, total)))
    return out


def disjoint_pair_distribution(n: int, size: int) -> list[tuple[tuple[IndexSet, IndexSet], sympy.Rational]]:
    """Ordered pairs of disjoint ``size``-subsets of ``range(n)``, uniformly (without replacement)."""
    if 2 * size > n:
        raise InputError(f"two disjoint micro-batches of {size} need n >= {2 * size}; got n={n}")
    pairs = []
    for first in combinations(range(n), size):
        rest = [i for i in range(n) if i not in first]
        pairs.extend((first, second) for second in combinations(rest, size))
    p = sympy.Rational(1, len(pairs))
    return [(pair, p) for pair in pairs]


def count_index_sets(n: int, size: int, sampling: str, pairs: bool) -> int:
    """How many index sets the enumeration of one part (and, with ``pairs``, of the disjoint
    pairs without replacement) visits: the cost of an enumerated derivation."""
    check_sampling(sampling)
    if sampling == "with-replacement":
        return comb(n + size - 1, size)  # pairs of independent parts are not enumerated
    return comb(n, size) * (1 + (comb(n - size, size) if pairs else 0))
