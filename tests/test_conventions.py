"""The shared conventions: error types, validation, array I/O, fitted-object files, atomic
outputs with normal permissions, the training loop's hooks and resume checks, lazy imports."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
try:  # the torch tests below are marked needs("torch"); the rest run without it
    import torch
except ImportError:
    torch = None

import kexue
from kexue import data, validate
from kexue.io import load_fitted, open_matrix, read_matrix, save_fitted
from kexue.utils import KexueError, KexueTypeError, atomic_path, atomic_write

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_error_types_and_lazy_submodules():
    assert issubclass(KexueError, ValueError) and issubclass(KexueTypeError, TypeError)
    assert issubclass(KexueTypeError, KexueError) and kexue.KexueError is KexueError
    assert callable(kexue.logsumexp.logsumexp)  # submodules load on attribute access
    with pytest.raises(AttributeError):
        _ = kexue.nosuchmodule


def test_validate_matrix_and_scalars():
    assert validate.matrix([[1, 2], [3, 4]]).dtype == np.float64
    with pytest.raises(KexueError, match="2-D"):
        validate.matrix(np.zeros(3), "X")
    with pytest.raises(KexueError, match="0 rows"):
        validate.matrix(np.zeros((0, 3)), "X")
    with pytest.raises(KexueError, match=r"non-finite .* index \(1, 0\)"):
        validate.matrix([[1.0], [np.nan]], "X")
    with pytest.raises(KexueTypeError, match="complex"):
        validate.matrix(np.ones((2, 2), complex), "X")
    with pytest.raises(KexueTypeError, match="numeric"):
        validate.matrix([["a", "b"]], "X")
    assert validate.images(np.zeros((2, 784), np.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(KexueError, match="square"):
        validate.images(np.zeros((2, 10)))
    assert validate.integer(3, "k", 1) == 3
    with pytest.raises(KexueError, match="k must be >= 1; got 0"):
        validate.integer(0, "k", 1)
    with pytest.raises(KexueError, match="lr must be a finite number"):
        validate.positive(float("nan"), "lr")
    with pytest.raises(KexueError, match="lr must be > 0"):
        validate.positive(-1.0, "lr")
    with pytest.raises(KexueError, match="unknown metric 'l3'; choose from: euclidean, cosine"):
        validate.choice("l3", ["euclidean", "cosine"], "metric")


def test_read_matrix_formats_and_bad_files(tmp_path):
    from safetensors.numpy import save_file

    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "x.npz", emb=X)
    save_file({"emb": X}, str(tmp_path / "x.safetensors"))
    for name in ("x.npy", "x.npz", "x.safetensors"):
        np.testing.assert_array_equal(read_matrix(tmp_path / name), X)
        src = open_matrix(tmp_path / name)
        assert (src.n, src.d) == (4, 3)
        np.testing.assert_array_equal(np.concatenate(list(src.chunks(3))), X)
    (tmp_path / "text.npy").write_text("1,2,3\n")
    with pytest.raises(KexueError, match="not a .npy array"):
        read_matrix(tmp_path / "text.npy")
    np.save(tmp_path / "v.npy", np.zeros(3))
    with pytest.raises(KexueError, match="expected 2-D"):
        read_matrix(tmp_path / "v.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(KexueError, match="unsupported"):
        read_matrix(tmp_path / "x.csv")
    np.savez(tmp_path / "two.npz", a=X, b=X)
    with pytest.raises(KexueError, match="choose one with --key"):
        read_matrix(tmp_path / "two.npz")


def test_fitted_files_round_trip_and_check_their_kind(tmp_path):
    p = tmp_path / "m.safetensors"
    save_fitted(p, "Thing", {"w": np.eye(2)}, {"alpha": 0.5})
    t, c = load_fitted(p, "Thing")
    np.testing.assert_array_equal(t["w"], np.eye(2))
    assert c == {"alpha": 0.5}
    with pytest.raises(KexueError, match="is a Thing, not a Other"):
        load_fitted(p, "Other")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(KexueError, match="cannot read"):
        load_fitted(tmp_path / "bad.safetensors", "Thing")


def test_atomic_outputs_get_normal_permissions_and_need_their_folder(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt", "w") as f:
            f.write("x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            Path(tmp).write_bytes(b"y")
    finally:
        os.umask(old)
    # mode as a plain open() would give under this umask (utils reads the umask at import)
    from kexue.utils import _UMASK

    for name in ("a.txt", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~_UMASK
    with pytest.raises(KexueError, match="does not exist; create it first"):
        with atomic_write(tmp_path / "missing" / "c.txt", "w") as f:
            f.write("x")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(KexueError, match="is a directory"):
        with atomic_write(tmp_path, "w") as f:
            f.write("x")


# ------------------------------------------------------------------ training loop


def _problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 4, generator=g)
    y = (X[:, 0] > 0).long()
    return X, y


def _fresh():
    from kexue.nets import MLP

    torch.manual_seed(3)
    return MLP([4, 8, 2])


def _ce(m, b):
    return torch.nn.functional.cross_entropy(m(b[0]), b[1])


@pytest.mark.needs("torch")
def test_train_schedule_hooks_and_evaluation():
    from kexue.train import accuracy, evaluate, iwae_epochs, iwae_schedule, train, warmup_cosine

    X, y = _problem()
    seen = []
    opt_model = _fresh()
    opt = torch.optim.SGD(opt_model.parameters(), lr=0.1)
    lrs = []
    res = train(opt_model, _ce, [X, y], steps=20, batch_size=20, optimizer=opt, schedule=warmup_cosine(20, 5),
                on_step=lambda s, l: (seen.append(s), lrs.append(opt.param_groups[0]["lr"])),
                eval_every=10, evaluate_fn=lambda m, s: {"acc": accuracy(m, X, y)})
    assert seen == list(range(20))
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1) and lrs[-1] < 0.01
    assert [e["step"] for e in res.evals] == [10, 20] and 0 <= res.evals[-1]["acc"] <= 1
    assert evaluate(lambda a: a * 2, X, batch_size=7).shape == X.shape
    f = iwae_schedule(steps_per_epoch=1)
    assert [round(f(e), 6) for e in (0, 1, 3, 4, 12, 13)] == [1.0, round(10 ** (-1 / 7), 6), round(10 ** (-1 / 7), 6),
                                                              round(10 ** (-2 / 7), 6), round(10 ** (-2 / 7), 6),
                                                              round(10 ** (-3 / 7), 6)]
    assert iwae_epochs(8) == 3280


@pytest.mark.needs("torch")
def test_train_on_nonfinite_stop_or_raise():
    from kexue.train import train

    X, y = _problem()

    def bad(m, b):
        return _ce(m, b) * (float("nan") if bad.calls > 3 else 1.0)

    bad.calls = 0

    def counting(m, b):
        bad.calls += 1
        return bad(m, b)

    res = train(_fresh(), counting, [X, y], steps=10, batch_size=20, on_nonfinite="stop")
    assert res.stopped and "nan" in res.stopped and len(res.losses) == 3
    bad.calls = 0
    with pytest.raises(KexueError, match="lower the learning rate"):
        train(_fresh(), counting, [X, y], steps=10, batch_size=20)


@pytest.mark.needs("torch")
def test_resume_refuses_another_config_other_data_or_fewer_steps(tmp_path):
    from kexue.train import train

    X, y = _problem()
    ck = tmp_path / "ck.pt"
    train(_fresh(), _ce, [X, y], steps=10, batch_size=20, ckpt=ck, ckpt_every=5, config={"T": 100, "base": 8})
    with pytest.raises(KexueError, match=r"another run \(T=100 there vs 200 now\)"):
        train(_fresh(), _ce, [X, y], steps=20, batch_size=20, ckpt=ck, resume=True, config={"T": 200, "base": 8})
    with pytest.raises(KexueError, match="other data"):
        train(_fresh(), _ce, [X + 1, y], steps=20, batch_size=20, ckpt=ck, resume=True, config={"T": 100, "base": 8})
    with pytest.raises(KexueError, match="past steps=5") as e:
        train(_fresh(), _ce, [X, y], steps=5, batch_size=20, ckpt=ck, resume=True, config={"T": 100, "base": 8})
    assert "--" not in str(e.value), "library messages name library parameters, not CLI flags (issue 31)"
    from kexue.nets import MLP

    with pytest.raises(KexueError, match="does not fit this model"):
        train(MLP([4, 16, 2]), _ce, [X, y], steps=20, batch_size=20, ckpt=ck, resume=True, config={"T": 100, "base": 8})
    res = train(_fresh(), _ce, [X, y], steps=20, batch_size=20, ckpt=ck, resume=True, config={"T": 100, "base": 8})
    assert len(res.losses) == 20


# ------------------------------------------------------------------ full MNIST training set


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist" / "train-images-idx3-ubyte.gz").exists(), reason="../shared/data has no MNIST training set")
def test_full_mnist_training_set_loads_and_rejects_altered_copies(tmp_path):
    X, y = data.load_mnist_train()
    assert X.shape == (60000, 784) and X.dtype == np.uint8 and np.bincount(y).sum() == 60000
    assert np.bincount(y)[1] == 6742  # the official count of ones
    bad = tmp_path / "mnist"
    bad.mkdir()
    shutil.copy(SHARED / "mnist" / "train-labels-idx1-ubyte.gz", bad)
    raw = gzip.open(SHARED / "mnist" / "train-images-idx3-ubyte.gz").read()
    with gzip.open(bad / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[: len(raw) // 2])  # truncated
    with pytest.raises(KexueError, match="corrupt") as e:
        data.load_mnist_train(tmp_path)
    assert "\n" not in str(e.value)
    altered = bytearray(raw)
    altered[1000] ^= 1
    (bad / "train-images-idx3-ubyte.gz").unlink()
    data._verified.cache_clear()
    with gzip.open(bad / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes(altered))
    with pytest.raises(KexueError, match="corrupt"):
        data.load_mnist_train(tmp_path)


def test_reproduce_without_names_needs_quick_or_all(cli):
    r = cli("reproduce")
    assert r.one_line_error and "--all" in r.err


# ------------------------------------------------------------------ the guides (issue 16)

GUIDES = ("vae", "eg", "unargmax", "logsumexp", "whitening", "exact", "ddpm", "hubness")
FOUR = ["Construct", "Fit or call", "Save and load", "Command line"]


def _level2_headings(path: Path) -> list[str]:
    heads, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            heads.append(line[3:].strip())
    return heads


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_shows_construct_fit_save_cli_in_order(guide):
    heads = _level2_headings(Path(__file__).resolve().parents[1] / "docs" / f"{guide}.md")
    missing = [h for h in FOUR if h not in heads]
    assert not missing, f"docs/{guide}.md lacks ## {missing}; its sections: {heads}"
    i = heads.index(FOUR[0])
    assert heads[i:i + 4] == FOUR, f"docs/{guide}.md: the four sections must come together, in this order: {heads}"
    assert i <= 1, f"docs/{guide}.md: only a short intro may come before ## Construct; got {heads[:i]}"
