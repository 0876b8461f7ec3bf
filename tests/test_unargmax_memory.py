"""Memory of the audit's set-up and working sets on wide heads (issue 32): bounded temporaries,
the same numbers as the straightforward formulas."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from kexue.unargmax import AuditConfig
from kexue.unargmax.config import STATS_CHUNKS, layer_stats, partial_stats
from kexue.unargmax.stages import row_deltas


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_deltas_match_the_one_shot_difference(dtype):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3001, 37)).astype(dtype)
    wk = np.asarray(W[5], np.float64)
    S = rng.permutation(3001)[:2500]
    want = wk - np.asarray(W[S], np.float64)
    assert np.array_equal(row_deltas(W, wk, S, chunk=97), want)  # chunks that do not divide the rows
    out = np.full((S.size + 10, 37), np.nan)
    row_deltas(W, wk, S, out[:S.size], chunk=1000)
    assert np.array_equal(out[:S.size], want) and np.isnan(out[S.size:]).all()
    assert row_deltas(W, wk, np.zeros(0, np.int64)).shape == (0, 37)


def test_layer_stats_sums_parts_as_they_come_with_the_same_result():
    rng = np.random.default_rng(1)
    C, d = 4096, 384
    W = (rng.standard_normal((C, d)) * np.geomspace(1, 0.05, d)).astype(np.float32)
    cfg = AuditConfig(mem_mb=1)
    # the straightforward formulas on the same row ranges, parts summed in order
    step = -(-C // STATS_CHUNKS)
    parts = [partial_stats(W, r, min(r + step, C), cfg.mem_mb) for r in range(0, C, step)]
    mu, G, top = sum(p[0] for p in parts) / C, sum(p[1] for p in parts), max(p[2] for p in parts)
    S = G / C - np.outer(mu, mu)
    A = np.linalg.inv(S + (np.trace(S) / d + 1e-300) * np.eye(d))
    del parts, G, S
    tracemalloc.start()
    try:
        st = layer_stats(W, None, cfg, 0.0, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(st.mu, mu) and np.array_equal(st.A, A)
    assert st.max_norm == top
    # every part held at once would be STATS_CHUNKS d × d float64 matrices; a few at a time now
    assert peak < 8 * d * d * 8 < STATS_CHUNKS * d * d * 8
