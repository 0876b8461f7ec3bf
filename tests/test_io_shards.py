"""A directory of .npy shards read as one matrix (issue 29 item 1): the rows in file-name order,
memory-mapped and read block by block (never joined), searched as a single file would be; mixed
widths or dtypes and an empty directory are one line."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.io import open_matrix, read_matrix
from kexue.shards import ShardedRows
from kexue.utils import KexueError

CUTS = (0, 130, 130, 333, 700)  # an empty shard in the middle, shards of unequal sizes


def _shards(path, X, cuts=CUTS):
    path.mkdir()
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        np.save(path / f"part-{i:04d}.npy", X[a:b])
    return path


@pytest.fixture
def data(tmp_path):
    X = np.random.default_rng(0).standard_normal((700, 9)).astype(np.float32)
    return X, _shards(tmp_path / "emb", X)


def test_shards_read_as_one_matrix_block_by_block(data):
    X, path = data
    (path / "notes.txt").write_text("ignored")  # other files and hidden temporaries are not shards
    np.save(path / ".part-9999.tmp.npy", np.ones((3, 2)))
    src = open_matrix(path)
    assert (src.n, src.d, src.dtype) == (700, 9, np.float32)
    R = src.rows()
    assert isinstance(R, ShardedRows) and all(isinstance(m, np.memmap) for m in R.maps)
    assert isinstance(R[140:300], np.memmap)  # inside one shard: a view of its map, nothing read
    for key in (slice(100, 400), slice(0, 700), slice(650, 900), slice(690, 700), slice(5, 600, 7), slice(400, 400)):
        np.testing.assert_array_equal(R[key], X[key])
    ids = np.array([[699, 0], [129, 130], [333, 332]])
    np.testing.assert_array_equal(R[ids], X[ids])  # gathered rows keep the ids' shape
    np.testing.assert_array_equal(R[131], X[131])
    np.testing.assert_array_equal(R[-1], X[-1])
    np.testing.assert_array_equal(R[100:200, 3], X[100:200, 3])
    np.testing.assert_array_equal(R[400, 2:5], X[400, 2:5])
    assert R.max() == X.max() and R.min() == X.min()
    np.testing.assert_array_equal(np.concatenate(list(src.chunks(97))), X)  # blocks cross shard boundaries
    np.testing.assert_array_equal(src.block(120, 340), X[120:340])
    np.testing.assert_array_equal(read_matrix(path), X)
    with pytest.raises(IndexError):
        R[np.array([700])]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_the_search_of_a_shard_directory_is_the_search_of_the_whole_matrix(data, metric):
    from kexue import hubness as H

    X, path = data
    R = open_matrix(path).rows()
    for kw in ({}, {"block": 128}):  # one block, and blocks that straddle the shards
        a, b = H.kneighbors(X, 7, metric=metric, **kw), H.kneighbors(R, 7, metric=metric, **kw)
        np.testing.assert_array_equal(a.ind, b.ind)
        np.testing.assert_array_equal(a.dist, b.dist)
    Q = np.random.default_rng(1).standard_normal((50, 9))
    np.testing.assert_array_equal(H.kneighbors(X, 3, metric=metric, queries=Q).ind,
                                  H.kneighbors(R, 3, metric=metric, queries=Q).ind)


@pytest.mark.slow
@pytest.mark.needs("faiss")
def test_an_approximate_search_of_shards_equals_that_of_the_file(data):
    from kexue import hubness as H

    X, path = data
    a, b = H.kneighbors(X, 5, backend="ivf", block_rows=200), H.kneighbors(open_matrix(path).rows(), 5, backend="ivf",
                                                                             block_rows=200)
    np.testing.assert_array_equal(a.ind, b.ind)
    assert a.params == b.params and a.recall == b.recall


def test_bad_shard_directories_are_one_line(tmp_path):
    X = np.random.default_rng(0).standard_normal((60, 4))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no shards")
    with pytest.raises(KexueError, match=r"empty holds no \.npy shards; put the rows there"):
        open_matrix(empty)
    wide = _shards(tmp_path / "wide", X, (0, 30, 60))
    np.save(wide / "part-0002.npy", np.ones((5, 6)))
    with pytest.raises(KexueError, match="shard part-0002.npy in .* is 6 columns of float64 but part-0000.npy is 4 of "
                                         "float64; save every shard with the same width and dtype"):
        open_matrix(wide)
    mixed = _shards(tmp_path / "mixed", X, (0, 30, 60))
    np.save(mixed / "part-0001.npy", X[30:].astype(np.float32))
    with pytest.raises(KexueError, match="is 4 columns of float32 but part-0000.npy is 4 of float64"):
        open_matrix(mixed)
    flat = _shards(tmp_path / "flat", X, (0, 30))
    np.save(flat / "part-0001.npy", np.ones(4))
    with pytest.raises(KexueError, match="expected 2-D"):
        open_matrix(flat)
    with pytest.raises(KexueError, match="a directory of .npy shards, each one array; a key"):
        open_matrix(_shards(tmp_path / "keyed", X, (0, 60)), key="emb")
    nan = _shards(tmp_path / "nan", X, (0, 25, 60))
    Y = X[25:].copy()
    Y[4, 2] = np.nan
    np.save(nan / "part-0001.npy", Y)  # named by its shard and its own row, and by the row of the whole
    with pytest.raises(KexueError, match=r"part-0001.npy has a non-finite value \(nan\) at row 4, column 2 "
                                         r"\(row 29 of .*nan\); clean or drop those rows"):
        list(open_matrix(nan).chunks(16))
    with pytest.raises(KexueError, match=r"part-0001.npy has a non-finite value \(nan\) at row 4"):
        open_matrix(nan).block(20, 40)


@pytest.mark.slow
def test_cli_reads_a_shard_directory_as_the_file(cli, data, tmp_path):
    X, path = data
    np.save(tmp_path / "x.npy", X)
    one = cli("hubness", tmp_path / "x.npy", "-k", 5, "--nk-out", tmp_path / "nk.npy", "--graph-out", tmp_path / "g.npz")
    assert one.code == 0, one.err
    sh = cli("hubness", path, "-k", 5, "--nk-out", tmp_path / "nk_sh.npy", "--graph-out", tmp_path / "g_sh.npz")
    assert sh.code == 0, sh.err
    np.testing.assert_array_equal(np.load(tmp_path / "nk_sh.npy"), np.load(tmp_path / "nk.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "g_sh.npz")["distances"], np.load(tmp_path / "g.npz")["distances"])
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "a.npy", X[:50])
    np.save(tmp_path / "bad" / "b.npy", X[50:, :5])
    r = cli("hubness", tmp_path / "bad", "-k", 5, "--nk-out", tmp_path / "nk_bad.npy")
    assert r.one_line_error and "save every shard with the same width" in r.err, r.err
    (tmp_path / "none").mkdir()
    r = cli("hubness", tmp_path / "none", "-k", 5, "--nk-out", tmp_path / "nk_bad.npy")
    assert r.one_line_error and "holds no .npy shards" in r.err, r.err
    assert not (tmp_path / "nk_bad.npy").exists()
