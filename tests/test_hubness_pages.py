"""A memory-mapped input's pages leave the process as its blocks are consumed (issue 29): the
kernel counts every page of a file map a process has touched in its resident set (RssFile) until
it is unmapped, so without :func:`kexue.io.release_pages` a pass over a 1.5 GB file adds 1.5 GB to
the max RSS users and ``/usr/bin/time`` see. Results are unchanged bit for bit."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kexue.hubness.arrays import gather_rows, max_abs
from kexue.io import open_matrix, read_only_maps, release_pages

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssFile and madvise(MADV_DONTNEED) are Linux's")


def _rss_file() -> int:
    """This process's resident pages of file maps (bytes, /proc/self/status RssFile)."""
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.fixture
def mapped(tmp_path):
    X = np.random.default_rng(0).standard_normal((20_000, 256)).astype(np.float32)  # 20 MB
    np.save(tmp_path / "x.npy", X)
    return X, np.load(tmp_path / "x.npy", mmap_mode="r")


@linux
def test_release_drops_the_pages_read_and_they_read_back_the_same(mapped):
    X, M = mapped
    before = _rss_file()
    total = np.asarray(M).sum(dtype=np.float64)  # every page mapped
    grown = _rss_file() - before
    assert grown > 0.8 * X.nbytes
    release_pages(np.asarray(M[100:200]))  # a plain ndarray view of a block: its bases lead to the map
    assert _rss_file() - before < 0.1 * X.nbytes
    assert np.asarray(M).sum(dtype=np.float64) == total and np.array_equal(M, X)  # faulted back, same bytes


def test_only_read_only_file_maps_are_released(mapped, tmp_path):
    X, M = mapped
    assert read_only_maps(M) and read_only_maps(np.asarray(M[5:9])) and read_only_maps(M[3])
    assert read_only_maps(X) == [] and read_only_maps(M[[1, 2]]) == []  # in memory; a gathered copy
    for mode in ("r+", "c"):  # writable and copy-on-write maps hold edits of their own: never released
        W = np.load(tmp_path / "x.npy", mmap_mode=mode)
        W[0, 0] = 7.0
        assert read_only_maps(W) == []
        release_pages(W)
        assert W[0, 0] == 7.0
    for A in (X, None, [1, 2], 3.0):
        release_pages(A)  # nothing to do, no error


def test_shards_and_safetensors_rows_are_released_map_by_map(mapped, tmp_path):
    X, _ = mapped
    (tmp_path / "shards").mkdir()
    for i, part in enumerate(np.array_split(X, 3)):
        np.save(tmp_path / "shards" / f"part-{i}.npy", part)
    R = open_matrix(tmp_path / "shards").rows()
    assert len(read_only_maps(R)) == 3
    safetensors = pytest.importorskip("safetensors.numpy")
    safetensors.save_file({"x": X}, str(tmp_path / "x.safetensors"))
    S = open_matrix(tmp_path / "x.safetensors").rows()
    assert len(read_only_maps(S)) == 1
    for A in (R, S):
        ids = np.random.default_rng(1).integers(0, len(X), 1000)
        release_pages(A)
        assert np.array_equal(gather_rows(A, ids), X[ids]) and np.array_equal(A[:], X)


def test_gathers_and_max_abs_are_unchanged(mapped):
    X, M = mapped
    for ids in (np.array([5]), np.array([], np.int64), np.random.default_rng(2).integers(0, len(X), 3000)):
        assert np.array_equal(gather_rows(M, ids), X[ids]) and np.array_equal(gather_rows(X, ids), X[ids])
    assert max_abs(M) == max(float(X.max()), -float(X.min())) == max_abs(X)
    Y = X.copy()
    Y[123, 4] = np.nan
    assert np.isnan(max_abs(Y))  # NaN propagates, as one pass over the whole array


_CHILD = textwrap.dedent("""
    import sys, threading, time
    import faiss, sklearn, threadpoolctl  # noqa: F401 -- imported before the baseline, as the CLI imports them
    from kexue.cli import main

    def rss_file():
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024

    base, peak = rss_file(), [0]

    def poll():  # the kernel keeps no peak of RssFile: sample it
        while True:
            peak[0] = max(peak[0], rss_file())
            time.sleep(0.002)

    threading.Thread(target=poll, daemon=True).start()
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        assert not e.code, e.code
    print(base, max(peak[0], rss_file()))
""")


@linux
@pytest.mark.slow
def test_cli_ivf_keeps_few_pages_of_a_memory_mapped_file(tmp_path):
    """``kexue hubness X.npy --backend ivf --block-rows 4096`` on a 50,000 × 768 float32 file (154 MB,
    64 Gaussian clusters; blocks of 12.6 MB): the child's file-mapped resident memory above its
    imports stays under 40 % of the file (its sampled peak: the kernel records only the peak of the
    whole RSS; without releases RssFile only grows, so a sample cannot miss that case), and N_k equals
    the in-memory run's. Measured (load 2.0): 31 MB (20 %) with the releases; 161 MB (105 %: the whole
    file) without them (the code before, 1a283df), with the same N_k."""
    import subprocess

    from kexue import hubness as h

    rng = np.random.default_rng(0)
    n, d = 50_000, 768
    path = tmp_path / "x.npy"
    M = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    centres = rng.standard_normal((64, d)).astype(np.float32) * 4
    for s in range(0, n, 10_000):  # written a block at a time: the test process never holds the file twice
        M[s:s + 10_000] = centres[rng.integers(0, 64, 10_000)] + rng.standard_normal((10_000, d), dtype=np.float32)
    M.flush()
    del M
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    r = subprocess.run([sys.executable, "-c", _CHILD, "hubness", str(path), "-k", "10", "--backend", "ivf",
                        "--block-rows", "4096", "--nk-out", str(tmp_path / "nk.npy")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    base, peak = map(int, r.stdout.split()[-2:])
    assert peak - base < 0.4 * size, (peak - base) / size
    expected = h.k_occurrence(np.load(path), 10, backend="ivf", block_rows=4096)  # in memory: nothing to release
    assert np.array_equal(np.load(tmp_path / "nk.npy"), expected)


@pytest.mark.parametrize("backend", ["ivf", "hnsw", "faiss"])
def test_rescoring_from_the_index_copy_equals_reading_the_map(mapped, backend, monkeypatch):
    """float32 rows searched with L2 are re-scored from the index's own copy (``ann._own_rows``), not
    gathered from the memory map: the same rows bit for bit, so the same graph as reading the map."""
    pytest.importorskip("faiss")
    from kexue import hubness as H
    from kexue.hubness import ann

    _, M = mapped
    X = M[:4000]
    params = {"index": "flat"} if backend == "faiss" else {}
    built = {}
    real = ann._own_rows

    def spy(index, X_, metric):
        built["rows"] = real(index, X_, metric)
        return built["rows"]

    monkeypatch.setattr(ann, "_own_rows", spy)
    g = H.kneighbors(X, 10, backend=backend, backend_params=dict(params), recall_sample=200, seed=0)
    assert built["rows"] is not None  # float32, Euclidean: the index's copy is used
    monkeypatch.setattr(ann, "_own_rows", lambda *a: None)  # the map's rows instead
    ref = H.kneighbors(X, 10, backend=backend, backend_params=dict(params), recall_sample=200, seed=0)
    assert np.array_equal(g.dist, ref.dist) and np.array_equal(g.ind, ref.ind)
    monkeypatch.setattr(ann, "_own_rows", spy)
    H.kneighbors(X, 10, metric="cosine", backend=backend, backend_params=dict(params), recall_sample=200, seed=0)
    assert built["rows"] is None  # unit rows in the index: not X's rows
    H.kneighbors(np.asarray(X, np.float64), 10, backend=backend, backend_params=dict(params), recall_sample=200, seed=0)
    assert built["rows"] is None  # float64 X: the index holds rounded rows
