"""Whitening fits that are split: merged partial fits and Dask arrays (issue 29)."""

from __future__ import annotations

import numpy as np
import pytest

from kexue import KexueError
from kexue.whitening import Whitening


def _data(n=3000, d=12, seed=0):
    r = np.random.default_rng(seed)
    A = r.normal(size=(d, d))
    return (r.normal(size=(n, d)) @ A + 50.0).astype(np.float64)


def _close(a: Whitening, b: Whitening, rtol=1e-10):
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=rtol)
    np.testing.assert_allclose(a.eigenvalues_, b.eigenvalues_, rtol=rtol)
    # eigenvectors up to the deterministic sign rule, which both apply
    np.testing.assert_allclose(a.components_, b.components_, rtol=0, atol=1e-8)
    assert a.n_samples_seen_ == b.n_samples_seen_


@pytest.mark.parametrize("beta,gamma,k", [(1.0, 1.0, None), (0.5, 0.7, 5)])
def test_merge_of_disjoint_fits_equals_one_fit(beta, gamma, k):
    X = _data()
    whole = Whitening(beta, gamma, k).fit(X)
    parts = [Whitening(beta, gamma, k).fit(X[a:b]) for a, b in ((0, 700), (700, 1900), (1900, 3000))]
    merged = parts[2]
    merged.merge(parts[0]).merge(parts[1])  # any order
    _close(merged, whole)
    np.testing.assert_allclose(merged.transform(X[:50]), whole.transform(X[:50]), rtol=1e-8, atol=1e-9)


def test_merge_into_an_unfitted_transform_and_bad_merges():
    X = _data()
    w = Whitening().merge(Whitening().fit(X[:10])).merge(Whitening().fit(X[10:]))
    _close(w, Whitening().fit(X))
    with pytest.raises(KexueError, match="d=12"):
        Whitening().fit(_data(d=5)).merge(Whitening().fit(X))
    with pytest.raises(TypeError, match="merge takes a Whitening"):
        Whitening().fit(X).merge(Whitening())


def test_merge_can_break_the_shift_mean_coupling():
    # the two fits' shifts are far apart: the correction terms carry the whole result
    X = _data()
    Y = X.copy()
    Y[1500:] += 1e4
    w = Whitening().fit(Y[:1500]).merge(Whitening().fit(Y[1500:]))
    ref = Whitening().fit(Y)
    # moving sums by δ = 1e4 costs float64 rounding of N·δ² (1e11 here) in Σ: precision is
    # relative to the largest eigenvalue (3e8), as for any fit about a distant shift
    np.testing.assert_allclose(w.eigenvalues_, ref.eigenvalues_, rtol=0, atol=1e-13 * ref.eigenvalues_[0])
    np.testing.assert_allclose(w.mean_, ref.mean_, rtol=1e-12)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_merge_of_fits_of_huge_or_tiny_data(scale):
    X = _data() * scale
    w = Whitening().fit(X[:1000]).merge(Whitening().fit(X[1000:]))
    ref = Whitening().fit(X)
    np.testing.assert_allclose(w.condition_number(), ref.condition_number(), rtol=1e-9)
    np.testing.assert_allclose(w.transform(X[:20]), ref.transform(X[:20]), rtol=1e-8, atol=1e-8)


@pytest.fixture
def da():
    return pytest.importorskip("dask.array", reason="the dask extra is not installed")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dask_fit_over_four_partitions_equals_in_memory(dtype, da):
    X = _data(n=4000).astype(dtype)
    D = da.from_array(X, chunks=(1000, 12))
    w = Whitening(beta=1.0, gamma=1.0, n_components=8).fit(D)
    ref = Whitening(beta=1.0, gamma=1.0, n_components=8).fit(X)
    _close(w, ref)
    Z = w.transform(D)
    assert Z.shape == (4000, 8) and Z.dtype == dtype
    np.testing.assert_allclose(Z.compute(), ref.transform(X), rtol=1e-5 if dtype == np.float32 else 1e-10,
                               atol=1e-5 if dtype == np.float32 else 1e-10)


def test_dask_fit_with_column_chunks_and_bad_values(da):
    X = _data(n=500)
    _close(Whitening().fit(da.from_array(X, chunks=(128, 5))), Whitening().fit(X))
    bad = X.copy()
    bad[321, 3] = np.nan
    with pytest.raises(KexueError, match="NaN"):
        Whitening().fit(da.from_array(bad, chunks=(100, 12)))
    with pytest.raises(KexueError, match="2-D"):
        Whitening().fit(da.ones((10,), chunks=5))
    with pytest.raises(KexueError, match="dimension 5"):
        Whitening().fit(X).transform(da.ones((10, 5), chunks=5))


@pytest.mark.slow
def test_dask_fit_on_a_local_cluster_of_processes_equals_single_process(da):
    pytest.importorskip("dask.distributed")
    from kexue.cluster import dask_client

    X = _data(n=6000, d=16, seed=3)
    ref = Whitening(beta=1.0, gamma=1.0).fit(X)
    with dask_client("local:2"):
        w = Whitening(beta=1.0, gamma=1.0).fit(da.from_array(X, chunks=(1500, 16)))
    _close(w, ref)


def _save(path, X):
    if path.suffix == ".npy":
        np.save(path, X)
    else:
        from safetensors.numpy import save_file

        save_file({"emb": np.ascontiguousarray(X)}, str(path))
    return path


@pytest.mark.parametrize("name,dtype", [("x.npy", np.float32), ("x.npy", np.float64), ("x.safetensors", np.float32)])
def test_dask_fit_from_a_file_in_four_blocks_equals_in_memory(tmp_path, da, name, dtype):
    from kexue.whitening_dask import from_file

    X = _data(n=4000, seed=5).astype(dtype)
    D = from_file(_save(tmp_path / name, X), block_rows=1000)
    assert D.numblocks == (4, 1) and D.dtype == dtype and D.shape == X.shape
    np.testing.assert_array_equal(D[1500:2600].compute(), X[1500:2600])  # blocks are the file's rows
    _close(Whitening(beta=0.8, gamma=1.0, n_components=9).fit(D), Whitening(beta=0.8, gamma=1.0, n_components=9).fit(X))


def test_file_blocks_read_alone_and_checked(tmp_path, da):
    from kexue.io import open_matrix
    from kexue.whitening_dask import from_file

    X = _data(n=300)
    for p in (_save(tmp_path / "a.npy", X), _save(tmp_path / "a.safetensors", X)):
        src = open_matrix(p)
        np.testing.assert_array_equal(src.block(120, 250), X[120:250])
        assert src.block(290, 400).shape == (10, 12) and src.block(5, 5).shape == (0, 12)
    X[217, 4] = np.inf
    bad = _save(tmp_path / "bad.npy", X)
    assert open_matrix(bad).block(0, 100).shape == (100, 12)  # only the rows read are checked
    with pytest.raises(KexueError, match=r"bad.npy has a non-finite value \(inf\) at row 217, column 4"):
        open_matrix(bad).block(200, 300)
    with pytest.raises(KexueError, match="row 217, column 4"):
        Whitening().fit(from_file(bad, block_rows=64))
    with pytest.raises(KexueError, match="block_rows"):
        from_file(bad, block_rows=0)


@pytest.mark.slow
def test_cli_fit_on_a_local_cluster_equals_the_single_process_fit_quietly(tmp_path, cli):
    from conftest import run_kexue

    pytest.importorskip("dask.distributed")
    np.save(tmp_path / "x.npy", _data(n=4000, d=16, seed=7).astype(np.float32))
    X = np.load(tmp_path / "x.npy")
    X[3333, 2] = np.nan
    np.save(tmp_path / "bad.npy", X)
    out = run_kexue("whiten", "fit", "x.npy", "-o", "w_dask.safetensors", "--chunk", 1000, "-k", 10, "--cluster", "local:2",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    bad = run_kexue("whiten", "fit", "bad.npy", "-o", "bad.safetensors", "--chunk", 1000, "--cluster", "local:2", cwd=tmp_path)
    for r in (out, bad):
        assert not any(s in r.stderr for s in ("Traceback", "Warning", "distributed.", "tornado", "Compute Failed")), r.stderr
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"kexue: error: {(tmp_path / 'bad.npy').resolve()} has a non-finite value (nan) at row 3333, column 2; clean or drop those rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "w_dask.safetensors", "x.npy"]  # nothing half-written
    assert cli("whiten", "fit", tmp_path / "x.npy", "-o", tmp_path / "w.safetensors", "-k", 10).code == 0
    _close(Whitening.load(tmp_path / "w_dask.safetensors"), Whitening.load(tmp_path / "w.safetensors"))
    # apply: each block transformed and written into the temporary output by its worker
    out = run_kexue("whiten", "apply", "w.safetensors", "x.npy", "-o", "z_dask.npy", "--chunk", 1000, "--cluster", "local:2",
                    cwd=tmp_path)
    assert out.returncode == 0 and not any(s in out.stderr for s in ("Traceback", "Warning", "distributed.")), out.stderr
    assert cli("whiten", "apply", tmp_path / "w.safetensors", tmp_path / "x.npy", "-o", tmp_path / "z.npy",
               "--chunk", 1000).code == 0
    z, zd = np.load(tmp_path / "z.npy"), np.load(tmp_path / "z_dask.npy")
    assert zd.dtype == np.float32 and zd.shape == (4000, 10)
    np.testing.assert_array_equal(zd, z)  # the same blocks and the same float32 products
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
