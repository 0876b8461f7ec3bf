"""The hubness reductions on large data (issue 29, item 1): fitted on a memory map (.npy opened with
mmap_mode="r", safetensors rows), they keep it as ``X_`` and read it in blocks, with results bit for
bit those of the same data in memory; and their peak memory holds no float64 copy of the index."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from kexue import hubness as h
from kexue.hubness import graph, knn

N, D = 300, 9


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Index, queries and a reference bank as float32 .npy files (a constant column: the screening
    leaves it out of the products)."""
    rng = np.random.default_rng(36)
    path = tmp_path_factory.mktemp("ooc")
    X = (rng.standard_normal((N, D)) + 0.5).astype(np.float32)
    X[:, 3] = 1.25
    X[240] = X[7]  # a duplicate: at distance ~0 of its twin
    out = {}
    for name, A in (("x", X), ("q", (rng.standard_normal((130, D)) + 0.7).astype(np.float32)),
                    ("r", rng.standard_normal((150, D)).astype(np.float32))):
        np.save(path / f"{name}.npy", A)
        out[name] = path / f"{name}.npy"
    return out


def _maps(files):
    return {k: np.load(p, mmap_mode="r") for k, p in files.items()}


def _small_blocks(monkeypatch, rows=64):
    """Streamed passes over blocks of ``rows`` rows (the default reads these files whole)."""
    monkeypatch.setattr(knn, "STREAM_ROWS", rows)


def _run(red, X, Q, R, reference):
    """Everything a fitted reduction gives: statistics, in-sample and query neighbours, N_k, graph."""
    fit_ref = R if reference == "bank" else ("queries" if reference == "queries" else None)
    red.fit(X, reference=fit_ref)
    assert red.n_index_ == N
    out = [*red.stats_]
    if reference != "queries":
        out += [*red.kneighbors(n_neighbors=6), red.k_occurrence(n_neighbors=6)]
    out += [*red.kneighbors(Q, n_neighbors=6), red.k_occurrence(Q, n_neighbors=6), red.transform(Q).toarray()]
    if reference is None and red._width():
        out += [*red.kneighbors(Q, n_neighbors=6, reference="queries"), red.stats_[0]]
    return out, red


CASES = [(name, ref) for name in ["mp", "ls", "nicdm", "csls", "nnn", "mp-empirical", "centering"]
         for ref in (None, "bank", "queries") if ref is None or name not in ("mp-empirical", "centering")]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("name, reference", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_a_memory_map_gives_the_in_memory_results_bit_for_bit(files, monkeypatch, metric, name, reference):
    maps = _maps(files)
    mem = {k: np.array(v) for k, v in maps.items()}  # in memory, read whole by the default block size
    # exact index rows, and (MP, LS) statistics estimated from a sample
    for n_samples in (None, 120) if name in ("mp", "ls") and reference is None else (None,):
        kw = dict(metric=metric, n_candidates=25, n_samples=n_samples)
        want, _ = _run(h.make_reduction(name, **kw), mem["x"], mem["q"], mem["r"], reference)
        with monkeypatch.context() as m:
            _small_blocks(m)
            got, red = _run(h.make_reduction(name, **kw), maps["x"], maps["q"], maps["r"], reference)
        assert red.X_ is maps["x"] or np.shares_memory(red.X_, maps["x"])  # the map itself, not a copy
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_the_streamed_screening_is_the_whole_matrix_one(files, monkeypatch, metric):
    """The index side made from blocks (mean, used columns, |x|², screening rows) equals the one made
    from the whole float64 matrix, bit for bit, whatever the block size."""
    M = np.load(files["x"], mmap_mode="r")
    X64 = knn.rows64(np.array(M), metric)
    # the definition, on the whole float64 matrix (as the screening was made before streaming)
    shift = 0.0 if metric == "cosine" else X64.mean(0)
    C = X64 - shift
    xsq, used = np.einsum("ij,ij->i", C, C), np.flatnonzero(C.any(0))
    assert len(used) == D - (metric == "euclidean")  # the constant column is left out for L2
    index_rows = np.hstack([-2.0 * C[:, used], np.ones((N, 1)), xsq[:, None]]).astype(np.float32)
    query_rows = np.hstack([C[:, used], xsq[:, None], np.ones((N, 1))]).astype(np.float32)
    for rows in (1, 64, 97, N, 4096):
        monkeypatch.setattr(knn, "STREAM_ROWS", rows)
        S = knn.streamed_screening(M, metric)
        np.testing.assert_array_equal(S.shift, shift)
        np.testing.assert_array_equal(S.used if S.used is not None else np.arange(D), used)
        np.testing.assert_array_equal(S.xsq, xsq)
        assert S.exp == 0
        np.testing.assert_array_equal(S.Xa[0:N], index_rows)
        np.testing.assert_array_equal(S.Xa[np.array([[5, 290], [7, 240]])], index_rows[np.array([[5, 290], [7, 240]])])
        Qa, qsq = S.queries(M, metric)
        np.testing.assert_array_equal(Qa[0:N], query_rows)
        np.testing.assert_array_equal(qsq, xsq)
        np.testing.assert_array_equal(graph.mean(M), np.array(M, np.float64).mean(0))


@pytest.mark.parametrize("name", ["mp", "nnn", "centering"])
def test_far_coordinates_on_a_memory_map(files, tmp_path, monkeypatch, name):
    """Coordinates near 2^60: the exact power-of-two rescale (``exp_``, the screening's ``exp``) is
    found from blocks too, with the in-memory results."""
    X = np.load(files["x"]) * np.float32(2.0**60)
    np.save(tmp_path / "far.npy", X)
    Q = np.load(files["q"]) * np.float32(2.0**60)
    want = h.make_reduction(name, metric="euclidean", n_candidates=20, n_samples=None).fit(X.astype(np.float64))
    _small_blocks(monkeypatch)
    red = h.make_reduction(name, metric="euclidean", n_candidates=20, n_samples=None)
    red.fit(np.load(tmp_path / "far.npy", mmap_mode="r"))
    assert red.exp_ == want.exp_ != 0 and red._screening().exp == want._screening().exp != 0
    for a, b in zip([*red.kneighbors(n_neighbors=5), *red.kneighbors(Q, n_neighbors=5)],
                    [*want.kneighbors(n_neighbors=5), *want.kneighbors(Q, n_neighbors=5)]):
        np.testing.assert_array_equal(a, b)


def test_safetensors_rows_and_a_zero_row_in_a_later_block(files, tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    from kexue.io import open_matrix
    from kexue.utils import KexueError

    X = np.load(files["x"])
    save_file({"emb": X}, str(tmp_path / "x.safetensors"))
    rows = open_matrix(tmp_path / "x.safetensors").rows()
    _small_blocks(monkeypatch)
    red = h.MutualProximity(n_candidates=20, n_samples=None).fit(rows)
    assert np.shares_memory(red.X_, rows)
    want = h.MutualProximity(n_candidates=20, n_samples=None).fit(X.astype(np.float64))
    for a, b in zip(red.kneighbors(n_neighbors=5), want.kneighbors(n_neighbors=5)):
        np.testing.assert_array_equal(a, b)
    Z = X.copy()
    Z[200] = 0.0
    np.save(tmp_path / "z.npy", Z)
    for fit, q in ((np.load(tmp_path / "z.npy", mmap_mode="r"), None), (X, np.load(tmp_path / "z.npy", mmap_mode="r"))):
        with pytest.raises(KexueError, match="row 200 is all zeros"):
            r = h.CSLS(n_candidates=10).fit(fit)
            r.kneighbors(q)
    Z[200, 2] = np.nan
    np.save(tmp_path / "z.npy", Z)
    with pytest.raises(KexueError, match=r"X has a non-finite value .* at index \(200, 2\)"):
        h.CSLS(n_candidates=10).fit(np.load(tmp_path / "z.npy", mmap_mode="r"))


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_backends_on_a_memory_map(files, monkeypatch, metric):
    faiss = pytest.importorskip("faiss")
    maps = _maps(files)
    mem = {k: np.array(v) for k, v in maps.items()}
    unit = mem["x"] / np.linalg.norm(mem["x"], axis=1, keepdims=True) if metric == "cosine" else mem["x"]
    index = faiss.IndexFlatL2(D)
    index.add(unit.astype(np.float32))
    for backend, extra, names in ((index, {}, ("mp", "centering")), ("ivf", {"backend_params": {"nprobe": 4}}, ("mp",))):
        for name in names:
            kw = dict(metric=metric, n_candidates=20, n_samples=None, backend=backend, **extra)
            want, _ = _run(h.make_reduction(name, **kw), mem["x"], mem["q"], mem["r"], None)
            with monkeypatch.context() as m:
                _small_blocks(m)
                got, red = _run(h.make_reduction(name, **kw), maps["x"], maps["q"], maps["r"], None)
            assert np.shares_memory(red.X_, maps["x"])
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- memory


_CHILD = textwrap.dedent("""
    import resource, sys
    import sklearn, threadpoolctl  # noqa: F401 -- imported before the baseline, as the reduction imports them
    import numpy as np
    from kexue import hubness as h
    X, Q = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2], mmap_mode="r")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    red = h.MutualProximity(n_candidates=50, n_samples=500).fit(X)
    d, i = red.kneighbors(Q, n_neighbors=10)
    nk = red.k_occurrence(Q, n_neighbors=10)
    assert nk.sum() == 10 * len(Q) and i.shape == (len(Q), 10)
    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_above_baseline(*args) -> int:
    from conftest import peak_rss_above

    return peak_rss_above(_CHILD, *args)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_mp_on_a_memory_map_holds_no_float64_copy_of_the_index(tmp_path):
    """MP fitted on a 30,000 × 256 float32 memory map (29.3 MiB) from a 500-point sample and asked
    for 500 queries' neighbours and N_k: the peak resident memory above the start stays under the
    file's own pages + 64 MiB of working blocks, below what a float64 copy of the index (58.6 MiB)
    on top of the pages and those blocks would take. Measured (load 9-11): 77.4 MiB above the
    start; before (float64 X_, float64 rows, eager screening rows) 206.6 MiB."""
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((30_000, 256)) + rng.integers(0, 4, (30_000, 1))).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", X[::60] + np.float32(0.25))
    size = (tmp_path / "x.npy").stat().st_size
    extra = _peak_above_baseline(tmp_path / "x.npy", tmp_path / "q.npy")
    assert extra < size + (64 << 20), extra / size


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_cli_reduce_keeps_the_memory_map(tmp_path):
    """``kexue hubness X.npy --queries Q.npy --reduce mp`` on a 20,000 × 256 float32 file (19.5 MiB):
    the reduction is fitted on the memory map the CLI opened, so the peak above the imports stays
    under the file's pages + 100 MiB; a float64 copy of the index is 39 MiB more. Measured (load
    9-10): 93.7 MiB above the imports; before (float64 X_, screening rows made whole) 153.7 MiB,
    with the same N_k."""
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((20_000, 256)) + rng.integers(0, 4, (20_000, 1))).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", X[::50] + np.float32(0.25))
    size = (tmp_path / "x.npy").stat().st_size
    from conftest import cli_peak_rss_above

    extra = cli_peak_rss_above("hubness", tmp_path / "x.npy", "--queries", tmp_path / "q.npy", "-k", 10,
                               "--reduce", "mp", "--candidates", 50, "--nk-out", tmp_path / "nk.npy")
    assert extra < size + (100 << 20), extra / size
    nk = np.load(tmp_path / "nk.npy")
    assert len(nk) == len(X) and nk.sum() == 10 * 400


def test_screening_rows_are_made_once_for_data_in_memory_and_streamed_for_a_memory_map(tmp_path):
    """In memory, the index's screening rows are made once (per pass they cost as much as the
    products on small data: the shift study's times doubled); a memory map, or a plain view of one,
    keeps them streamed. Both give the same rows."""
    from kexue.hubness.arrays import BlockRows
    from kexue.hubness.knn import streamed_screening

    X = np.random.default_rng(1).standard_normal((700, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    M = np.load(tmp_path / "x.npy", mmap_mode="r")
    for metric in ("euclidean", "cosine"):
        mem = streamed_screening(X, metric, block=64)
        assert isinstance(mem.Xa, np.ndarray)
        for Y in (M, np.asarray(M)):
            disk = streamed_screening(Y, metric, block=64)
            assert isinstance(disk.Xa, BlockRows)
            np.testing.assert_array_equal(disk.Xa[0:700], mem.Xa)
