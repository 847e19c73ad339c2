"""experiments/benchmarks/bench_symbolic.py's --family table: its columns and growth lines."""

from __future__ import annotations

import contextlib
from unittest import mock

from script_module import load_script


def test_family_table_counts_index_sets_and_the_cost_per_set():
    """The old package is this checkout here (no git history needed), so every row must read
    identical; the index-set counts are C(N, 4) batches, and C(N, 2) micro-batches plus their
    C(N, 2) C(N - 2, 2) disjoint pairs for m-SAM."""
    bench = load_script("experiments/benchmarks/bench_symbolic.py")
    with mock.patch.object(bench, "package_at", lambda rev: contextlib.nullcontext("unused")), \
            mock.patch.object(bench, "derive_before", lambda case, folder: bench.derive_case(case)):
        lines = bench.family_table([4, 5], [], "HEAD")
    rows = {(row[0], int(row[1])): row for row in (line.split() for line in lines)
            if row and row[0] in bench.FAMILY_OPTIONS}
    assert set(rows) == {(rule, n) for rule in ("sam", "m-sam", "rw-sam") for n in (4, 5)}
    assert [int(rows["sam", n][3]) for n in (4, 5)] == [1, 5]
    assert [int(rows["m-sam", n][3]) for n in (4, 5)] == [6 * (1 + 1), 10 * (1 + 3)]
    assert all(int(rows[rule, 5][4]) > int(rows[rule, 4][4]) > 0 for rule in ("sam", "rw-sam"))
    for row in rows.values():
        sets, seconds, per_set = int(row[3]), float(row[6]), float(row[8])
        assert row[-1] == "identical"
        assert abs(per_set * sets / 1e3 - seconds) <= 0.006       # both printed rounded
    growth = next(line for line in lines if line.startswith("growth N^k of the index sets"))
    assert "rw-sam sets 7.21 (N=4..5)" in growth       # log(5) / log(5/4)
