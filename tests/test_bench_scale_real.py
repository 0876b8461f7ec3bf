"""The real-embedding row of benchmarks/bench_hubness_scale.py (``--real gemma3-270m``), on a tiny
stand-in for Gemma's GGUF put in a temporary kexue cache: the cached .npy is the loader's matrix as
float32 with the GGUF's sha256 beside it, the row runs the three-way comparison under its own
label, and without the model the row is skipped with a one-line reason (nothing downloaded)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from conftest import write_q8_gguf  # noqa: E402
pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from kexue.unargmax import zoo  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _scale_real as R  # noqa: E402
import bench_hubness_scale as B  # noqa: E402
from _scale_state import RESULT_ARGS, State  # noqa: E402

sys.path.remove(str(BENCH))

KEY = "gemma3-270m"
LABEL = f"real-{KEY}"


def _fake_model(cache: Path, n: int = 600, d: int = 32) -> tuple[Path, np.ndarray]:
    """A Q8_0 tied embedding GGUF where the zoo keeps Gemma's, stamped as verified (as ``fetch`` leaves it)."""
    m = zoo.BY_KEY[KEY]
    folder = cache / "zoo" / KEY
    folder.mkdir(parents=True)
    W = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    write_q8_gguf(folder / m.filename, W, "gemma3")
    (folder / ".verified").write_text(m.sha256)
    return folder / m.filename, W


@pytest.fixture
def no_download(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the benchmark tried to download a model")

    monkeypatch.setattr(zoo, "_download", fail)


def test_npy_is_the_loaders_matrix_with_the_sha256(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "cache"))
    gpath, W = _fake_model(tmp_path / "cache")
    want = zoo.load(KEY, download=False).W
    path, secs, info = R.real_dataset(tmp_path / "data", KEY)
    X = np.load(path)
    assert X.dtype == np.float32 and X.shape == W.shape and np.array_equal(X, np.asarray(want, np.float32))
    assert np.abs(X - W).max() < 0.05  # Q8_0's rounding only: the rows are not normalised
    assert not np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-3)
    assert secs > 0 and info["rows"] == 600 and info["dim"] == 32 and info["normalised"] is False
    assert info["tensor"] == "token_embd.weight" and info["quantisation"] == "Q8_0"
    assert info["source_sha256"] == hashlib.sha256(gpath.read_bytes()).hexdigest()
    assert info["zoo_sha256"] == zoo.BY_KEY[KEY].sha256 and info["sha256_matches_zoo"] is False  # a stand-in
    norms = np.linalg.norm(X, axis=1)
    assert info["row_norms"]["min"] == pytest.approx(norms.min()) and info["row_norms"]["max"] == pytest.approx(norms.max())
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [path.with_suffix(".json").name, path.name]
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a cached set was read from the model again"))
    again = R.real_dataset(tmp_path / "data", KEY)
    assert again == (path, None, info)
    assert "NOT the zoo's recorded one" in R.describe(info) and "not normalised" in R.describe(info)


def test_absent_model_is_skipped_with_one_line(tmp_path, monkeypatch, capsys, no_download):
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "empty"))
    st = State(tmp_path / "work", dict.fromkeys(RESULT_ARGS), "c" * 40, False)
    a = _ns(tmp_path)
    with pytest.raises(R.RealUnavailable) as e:
        R.source(a, LABEL, st, B.child)
    assert "\n" not in str(e.value) and "make zoo" in str(e.value)
    assert st.measures == {} and not (tmp_path / "data").exists()  # nothing saved, nothing half-written
    # the benchmark's own run: the other rows go on, this one is reported skipped
    monkeypatch.setattr(B, "run_dataset", _only_real(B.run_dataset))
    res = B.main(_argv(tmp_path))
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"{LABEL} row skipped: "))
    assert "make zoo" in line and LABEL not in res["datasets"] and res["real_skipped"].startswith(LABEL)
    assert f"real row skipped: {res['real_skipped']}" in out
    assert json.loads((tmp_path / "scale.json").read_text())["real_skipped"] == res["real_skipped"]


@pytest.mark.slow  # four processes (extraction, truth, kexue hubness, scikit-learn): 5-10 s on a busy machine
def test_real_row_runs_the_three_way_comparison_and_resumes(tmp_path, monkeypatch, capsys, no_download):
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # FAISS's threads spin on a busy machine; one is quick here
    gpath, W = _fake_model(tmp_path / "cache")
    monkeypatch.setattr(B, "run_dataset", _only_real(B.run_dataset))
    res = B.main(_argv(tmp_path))
    ds = res["datasets"][LABEL]
    assert res["real_skipped"] is None and ds["n"] == 600 and ds["dim"] == 32
    assert ds["source"]["source_sha256"] == hashlib.sha256(gpath.read_bytes()).hexdigest()
    ext = ds["source"]["extraction"]  # made in its own process, measured
    assert ext["wall_s"] > 0 and 0 < ext["anon_peak_bytes"] and ext["maxrss_bytes"] > 0 and ds["generate_s"] > 0
    assert np.array_equal(np.load(ds["path"]), np.asarray(zoo.load(KEY, download=False).W, np.float32))
    assert {"kexue-ivf", "sklearn-brute", "sklearn_over_kexue"} <= set(ds)
    assert not {"kexue-ivf+mp", "kexue-ivfpq", "estimate"} & set(ds)  # a side row, like the Gaussian one
    assert {"wall_s", "recall", "params", "skewness", "memory"} <= set(ds["kexue-ivf"])
    assert ds["kexue-ivf"]["recall"] >= 0.95 and ds["sklearn-brute"]["recall"] == 1.0
    assert ds["sklearn-brute"]["n"] == 600 and ds["kexue-ivf"]["memory"]["index_bytes"] == B._ivf_index_bytes(600, 32)
    out = capsys.readouterr().out
    assert f"{LABEL} (600 × 32): Gemma 3 270M" in out and "real kexue-ivf" in out
    saved = json.loads((Path(res["workdir"]) / "state.json").read_text())["measures"]
    assert {f"{LABEL}/generate/0", f"{LABEL}/truth/0", f"{LABEL}/kexue-ivf/0", f"{LABEL}/sklearn-brute/0"} <= set(saved)
    again = B.main(_argv(tmp_path))  # resumed: every measure from the saved state, the same figures
    assert again["datasets"][LABEL]["kexue-ivf"] == ds["kexue-ivf"]
    assert f"{LABEL}/kexue-ivf/0: from the saved state" in capsys.readouterr().out


def _only_real(run):
    """run_dataset for the real row only (the clustered row's measures are covered elsewhere)."""
    return lambda a, kind, *rest: run(a, kind, *rest) if kind.startswith("real-") else {}


def _argv(tmp_path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--real", KEY, "--recall-sample", "100", "--skip", "kiez,whiten",
            "--json", str(tmp_path / "scale.json")]


def _ns(tmp_path):
    import argparse

    return argparse.Namespace(data_dir=str(tmp_path / "data"), rows=1000, dim=8, seed=0, gaussian_rows=None)


def test_synthetic_sources_keep_their_labels(tmp_path):
    st = State(tmp_path / "work", dict.fromkeys(RESULT_ARGS), "c" * 40, False)
    a = _ns(tmp_path)
    a.gaussian_rows = 300
    label, path, n, d, secs, src = R.source(a, "gaussian", st, B.child)
    assert (label, n, d, src) == ("gaussian-n300", 300, 8, None) and secs > 0
    assert np.load(path, mmap_mode="r").shape == (300, 8)
    label, path, n, d, secs, src = R.source(a, "clustered", st, B.child)
    assert (label, n, d, src) == ("clustered", 1000, 8, None) and path.name == "clustered-n1000-d8-seed0-v1.npy"
    assert sorted(st.measures) == ["clustered/generate/0", "gaussian-n300/generate/0"]
    assert R.source(a, "clustered", st, B.child)[4] > 0  # the saved measure's seconds, not a second generation
