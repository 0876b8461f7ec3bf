"""Tests of kexue.whitening (SPEC 5.1, 5.2) and kexue.sts: the transform, streaming fit,
save/load, the conditioning warning, the STS harness and search, the CLI."""

import json

import numpy as np
import pytest

from kexue.sts import STSPairs, cosine_rows, k_grid, pairs_embeddings, read_pairs, search, spearman100
from kexue.utils import KexueError, KexueTypeError
from kexue.whitening import Whitening


def anisotropic(n=2000, d=24, seed=0, mean_scale=3.0, dtype=np.float64):
    """Gaussian rows with a decaying spectrum and a non-zero mean, like sentence embeddings."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.geomspace(5.0, 0.05, d)
    return ((rng.standard_normal((n, d)) * scales) @ Q.T + mean_scale * rng.standard_normal(d)).astype(dtype)


def test_beta_gamma_zero_keeps_every_cosine():
    # SPEC 5.2: β = γ = 0 is the rotation x ↦ xU
    X = anisotropic()
    Z = Whitening(beta=0, gamma=0).fit_transform(X)
    iu = np.triu_indices(200, 1)
    cx = (X[:200] / np.linalg.norm(X[:200], axis=1, keepdims=True))
    cz = (Z[:200] / np.linalg.norm(Z[:200], axis=1, keepdims=True))
    np.testing.assert_allclose((cz @ cz.T)[iu], (cx @ cx.T)[iu], atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), np.linalg.norm(X, axis=1), rtol=1e-10)


def test_beta_gamma_one_gives_identity_covariance_and_matches_pca():
    X = anisotropic()
    w = Whitening(beta=1, gamma=1).fit(X)
    Z = w.transform(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(Z.T @ Z / len(Z), np.eye(X.shape[1]), atol=1e-8)
    # β = 1 is PCA: same axes (up to sign) and singular values as scikit-learn
    from sklearn.decomposition import PCA

    p = PCA().fit(X)
    np.testing.assert_allclose(np.abs(np.sum(w.components_ * p.components_, axis=1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(w.singular_values_, p.singular_values_, rtol=1e-8)


def test_sigma_is_second_moment_about_beta_mu():
    X = anisotropic(n=500, d=6)
    for beta in (0.0, 0.25, 0.5, 1.0):
        w = Whitening(beta=beta, gamma=0).fit(X)
        D = X - beta * X.mean(0)
        S = D.T @ D / len(X)
        np.testing.assert_allclose(w.eigenvectors_ @ np.diag(w.eigenvalues_) @ w.eigenvectors_.T, S, rtol=1e-9,
                                   atol=1e-12 * np.abs(S).max())
    # γ scales each coordinate by Λ^(-γ/2): the half-whitened variances are Λ^(1-γ)
    w = Whitening(beta=1, gamma=0.5).fit(X)
    Z = w.transform(X)
    np.testing.assert_allclose((Z**2).mean(0), w.explained_variance_**0.5, rtol=1e-9)


def test_streaming_fit_equals_in_memory_fit():
    X = anisotropic(n=3000, d=16, mean_scale=50.0, dtype=np.float32)
    full = Whitening(beta=0.75, gamma=0.5, n_components=10).fit(X)
    stream = Whitening(beta=0.75, gamma=0.5, n_components=10)
    for s in range(0, len(X), 317):  # uneven chunks, the first one too
        stream.partial_fit(X[s : s + 317])
    chunks = Whitening(beta=0.75, gamma=0.5, n_components=10).fit_chunks(X[s : s + 1000] for s in range(0, 3000, 1000))
    for other in (stream, chunks):
        assert other.n_samples_seen_ == 3000
        for a in ("mean_", "explained_variance_", "singular_values_", "components_"):
            A, B = getattr(full, a), getattr(other, a)
            assert np.max(np.abs(A - B)) <= 1e-10 * np.max(np.abs(A)), a
        np.testing.assert_allclose(other.transform(X), full.transform(X), rtol=1e-5, atol=1e-5)


def test_float32_input_loses_no_precision_in_the_fit():
    # large mean vs small spread: a naive float32 XᵀX − NμμT would cancel catastrophically
    X64 = anisotropic(n=4000, d=8, mean_scale=1000.0)
    X32 = X64.astype(np.float32)
    w = Whitening(beta=1, gamma=0).fit(X32)
    ref = np.cov(X32.astype(np.float64).T, bias=True)
    lam_ref = np.sort(np.linalg.eigvalsh(ref))[::-1]
    np.testing.assert_allclose(w.eigenvalues_, lam_ref, rtol=1e-9)
    assert w.transform(X32).dtype == np.float32 and w.transform(X64).dtype == np.float64
    # the float32 transform path is as accurate as float32 allows, even with the mean at 1000
    wz = Whitening(beta=1, gamma=1).fit(X32)
    Z32, Z64 = wz.transform(X32), wz.transform(X32.astype(np.float64))
    np.testing.assert_allclose(Z32, Z64, atol=1e-3 * np.abs(Z64).max())
    np.testing.assert_allclose(Z32.astype(np.float64).T @ Z32 / len(Z32), np.eye(8), atol=1e-3)


def test_truncation_and_inverse_transform():
    X = anisotropic(n=800, d=12)
    w = Whitening(beta=1, gamma=1, n_components=12).fit(X)
    np.testing.assert_allclose(w.inverse_transform(w.transform(X)), X, rtol=1e-9, atol=1e-9)
    w4 = Whitening(beta=1, gamma=1, n_components=4).fit(X)
    Z4 = w4.transform(X)
    assert Z4.shape == (800, 4)
    np.testing.assert_allclose(Z4, w.transform(X)[:, :4], atol=1e-10)
    from sklearn.decomposition import PCA

    rec = PCA(4).fit(X)
    np.testing.assert_allclose(w4.inverse_transform(Z4), rec.inverse_transform(rec.transform(X)), atol=1e-8)


def test_set_params_refits_from_accumulators_without_data():
    X = anisotropic(n=600, d=10)
    w = Whitening(beta=1, gamma=1).fit(X)
    w.set_params(beta=0.25, gamma=0.75, n_components=5)
    fresh = Whitening(beta=0.25, gamma=0.75, n_components=5).fit(X)
    np.testing.assert_allclose(w.transform(X), fresh.transform(X), atol=1e-9)


@pytest.mark.parametrize("kwargs, X, match", [
    ({}, np.array([[1.0, np.nan], [2.0, 3.0]]), r"non-finite value \(NaN or inf\) at index \(0, 1\)"),
    ({}, np.array([[1.0, 2.0], [np.inf, 3.0]]), r"at index \(1, 0\)"),
    ({}, np.ones((1, 3)), "at least 2 samples"),
    ({"n_components": 5}, np.random.default_rng(0).random((10, 3)), "larger than the dimension"),
    ({"n_components": 0}, np.ones((10, 3)), "n_components .k. must be >= 1"),
    ({"gamma": -1}, np.ones((10, 3)), "gamma must be >= 0"),
    ({"beta": float("nan")}, np.ones((10, 3)), "beta must be a finite number"),
    ({}, np.ones(5), "2D array"),
])
def test_bad_input_raises_one_line_kexue_error(kwargs, X, match):
    with pytest.raises(KexueError, match=match) as e:
        Whitening(**kwargs).fit(X)
    assert "\n" not in str(e.value)


def test_type_errors_are_kexue_type_errors():
    with pytest.raises(KexueTypeError, match="must be an integer"):
        Whitening(n_components=2.5).fit(np.ones((10, 3)))
    X = np.ones((4, 2), dtype=object)
    X[0, 0] = {"a": 1}
    with pytest.raises(KexueTypeError) as e:
        Whitening().fit(X)
    assert isinstance(e.value, TypeError) and "\n" not in str(e.value)


def test_wrong_dims_at_transform_and_unfitted():
    from sklearn.exceptions import NotFittedError

    w = Whitening().fit(anisotropic(n=50, d=6))
    with pytest.raises(KexueError, match="6 features"):
        w.transform(np.ones((3, 5)))
    with pytest.raises(KexueError, match="6 features"):
        w.partial_fit(np.ones((3, 5)))
    with pytest.raises(NotFittedError):
        Whitening().transform(np.ones((3, 5)))


def test_save_load_roundtrip(tmp_path):
    X = anisotropic(n=400, d=9)
    w = Whitening(beta=0.5, gamma=0.25, n_components=7).fit(X)
    p = w.save(tmp_path / "t.safetensors")
    v = Whitening.load(p)
    assert (v.beta, v.gamma, v.n_components, v.n_samples_seen_) == (0.5, 0.25, 7, 400)
    np.testing.assert_array_equal(v.transform(X), w.transform(X))
    v.partial_fit(X)  # the accumulators travel too: streaming can resume after a reload
    np.testing.assert_allclose(v.mean_, w.mean_, rtol=1e-12)
    # one kexue fitted file: the shared loader reads it and knows its kind
    from kexue.io import load_fitted

    tensors, config = load_fitted(p, "Whitening")
    assert config == {"beta": 0.5, "gamma": 0.25, "n_components": 7} and tensors["gram"].shape == (9, 9)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_files_of_the_earlier_format_still_load(tmp_path, suffix):
    # files written before save/load went through kexue.io: tensors + {"format": "kexue.whitening/1", ...}
    X = anisotropic(n=300, d=5)
    w = Whitening(beta=0.75, gamma=1.0, n_components=None).fit(X)
    tensors = {"mean": w.mean_, "eigenvalues": w.eigenvalues_, "eigenvectors": w.eigenvectors_, "shift": w.shift_,
               "sum": w.sum_, "gram": w.gram_, "n_samples_seen": np.asarray([300], dtype=np.int64)}
    meta = {"format": "kexue.whitening/1", "beta": "0.75", "gamma": "1.0", "n_components": ""}
    p = tmp_path / f"old{suffix}"
    if suffix == ".npz":
        np.savez(p, **tensors, meta=np.asarray(json.dumps(meta)))
    else:
        from safetensors.numpy import save_file

        save_file(tensors, str(p), metadata=meta)
    v = Whitening.load(p)
    assert (v.beta, v.gamma, v.n_components) == (0.75, 1.0, None)
    np.testing.assert_array_equal(v.transform(X), w.transform(X))


def test_load_rejects_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(KexueError, match="not found"):
        Whitening.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(KexueError, match="cannot read"):
        Whitening.load(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.ones(3))
    with pytest.raises(KexueError, match="not a kexue whitening"):
        Whitening.load(foreign)
    from kexue.io import save_fitted

    save_fitted(tmp_path / "vae.safetensors", "VAE", {"w": np.ones(2)}, {})
    with pytest.raises(KexueError, match="is a VAE, not a Whitening"):
        Whitening.load(tmp_path / "vae.safetensors")
    with pytest.raises(KexueError, match=r"\.safetensors"):
        Whitening().fit(np.random.default_rng(0).random((5, 2))).save(tmp_path / "t.npz")


def test_conditioning_warning_names_rank_and_the_k_to_keep():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 8))  # rank 3 in R^8
    w = Whitening().fit(X)
    msg = w.conditioning_warning(flag="-k")
    assert "rank 3 of 8" in msg and msg.endswith("-k 3") and "\n" not in msg
    assert Whitening(gamma=0).fit(X).conditioning_warning() is None  # a rotation amplifies nothing
    assert Whitening().fit(anisotropic(n=500, d=8)).conditioning_warning() is None
    # full rank but λ_max/λ_min = 1e14: badly conditioned, keep the directions above λ_max/1e12
    Y = rng.standard_normal((2000, 4)) * np.array([1.0, 1e-2, 1e-4, 1e-7])
    msg = Whitening().fit(Y).conditioning_warning()
    assert "badly conditioned" in msg and msg.endswith("n_components 3")


def test_sklearn_check_estimator():
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = check_estimator(Whitening(beta=0.5, gamma=0.5), on_fail=None)
    failed = [r["check_name"] for r in res if r["status"] == "failed"]
    assert failed == []
    # the only skip allowed is array-API input (needs SCIPY_ARRAY_API, not a property of ours)
    assert {r["check_name"] for r in res if r["status"] == "skipped"} <= {"check_array_api_input"}


def test_in_a_pipeline():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = anisotropic(n=300, d=8)
    pipe = make_pipeline(Whitening(beta=1, gamma=1, n_components=3), FunctionTransformer())
    assert pipe.fit_transform(X).shape == (300, 3)


def test_k_grid():
    assert k_grid(384) == [384, 192, 128, 96, 48, 24, 12]
    assert k_grid(576) == [576, 288, 192, 144, 72, 36, 18, 9]


def synthetic_sts(n=400, d=16, seed=1):
    """Pairs whose similarity lives in low-variance directions, hidden under a big common mean
    and a dominant nuisance direction — the situation where whitening helps."""
    rng = np.random.default_rng(seed)
    X = anisotropic(n=2 * n, d=d, seed=seed, mean_scale=10.0)
    A = X[:n]
    noise = rng.standard_normal((n, d)) * np.linspace(0.05, 3.0, d)[::-1]
    B = A + noise
    score = -np.linalg.norm(noise, axis=1)
    return STSPairs(A, B, score)


def test_stspairs_and_search():
    A = np.array([[1.0, 0], [1, 1], [0, 1]])
    B = np.array([[1.0, 0], [1, 0], [1, 0]])
    np.testing.assert_allclose(cosine_rows(A, B), [1, 1 / np.sqrt(2), 0])
    assert spearman100([0.1, 0.5, 0.9], [1, 2, 3]) == pytest.approx(100.0)
    splits = {"train": synthetic_sts(seed=1), "dev": synthetic_sts(seed=2), "test": synthetic_sts(seed=3)}
    for fit_on in ("all", "train"):
        r = search(splits, ks=[16, 8, 4], fit_on=fit_on)
        assert r.dev.shape == (5, 5, 3)
        # the chosen setting is the dev argmax, and its test number is read from the same cell
        assert r.best["dev"] == pytest.approx(r.dev.max())
        assert r.at(r.best["beta"], r.best["gamma"], r.best["k"]) == (r.best["dev"], r.best["test"])
        # β = γ = 0 at k = d is the rotation: exactly the raw score (SPEC 5.2)
        assert r.at(0.0, 0.0, 16)[0] == pytest.approx(r.raw_dev, abs=1e-9)
        # each grid cell agrees with an explicit Whitening fit
        fit_rows = np.vstack([M for s in (splits if fit_on == "all" else ["train"]) for M in (splits[s].A, splits[s].B)])
        w = Whitening(beta=0.5, gamma=0.75, n_components=8).fit(fit_rows)
        assert r.at(0.5, 0.75, 8)[1] == pytest.approx(splits["test"].spearman(w.transform), abs=1e-9)
    with pytest.raises(KexueError, match="fit_on"):
        search(splits, fit_on="dev")


def test_cli_fit_apply_streams_and_matches_library(tmp_path, cli):
    from safetensors.numpy import save_file

    X = anisotropic(n=3000, d=12, dtype=np.float32)
    np.save(tmp_path / "emb.npy", X)
    np.savez(tmp_path / "emb.npz", vectors=X)
    save_file({"vectors": X, "other": X[:2]}, str(tmp_path / "emb.safetensors"))
    t = tmp_path / "t.safetensors"
    r = cli("whiten", "fit", tmp_path / "emb.npy", "--beta", "0.5", "--gamma", "1", "--dim", "6", "-o", t,
            "--chunk", "700", "--threads", "1")
    assert r.code == 0 and "warning" not in r.err
    ref = Whitening(beta=0.5, gamma=1, n_components=6).fit(X)
    for src in ("emb.safetensors", "emb.npz"):
        out = tmp_path / f"z_{src.replace('.', '_')}.npy"
        assert cli("whiten", "apply", t, tmp_path / src, "--key", "vectors", "-o", out, "--chunk", "999").code == 0
        Z = np.load(out, allow_pickle=False)
        assert Z.shape == (3000, 6) and Z.dtype == np.float32
        np.testing.assert_allclose(Z, ref.transform(X), rtol=1e-5, atol=1e-5)


def test_cli_fit_and_apply_do_not_import_torch(tmp_path):
    """whiten fit/apply are NumPy only (bfloat16 files are read by kexue.io): setting torch's thread
    count must not import it (~0.12 GB), while the command still runs with torch installed."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    pytest.importorskip("torch")
    np.save(tmp_path / "x.npy", anisotropic(n=200, d=6, dtype=np.float32))
    child = textwrap.dedent("""
        import sys
        from kexue.cli import main
        for argv in (["fit", sys.argv[1], "-o", sys.argv[2]], ["apply", sys.argv[2], sys.argv[1], "-o", sys.argv[3]]):
            try:
                main(["whiten", *argv])
            except SystemExit as e:
                assert not e.code, e.code
        print("torch" in sys.modules)
    """)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", child, str(tmp_path / "x.npy"), str(tmp_path / "w.safetensors"),
                        str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "False", r.stdout
    assert np.load(tmp_path / "y.npy").shape == (200, 6)


def test_cli_fit_warns_on_a_rank_deficient_covariance(tmp_path, cli):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "low.npy", (rng.standard_normal((500, 3)) @ rng.standard_normal((3, 8))).astype(np.float32))
    r = cli("whiten", "fit", tmp_path / "low.npy", "-o", tmp_path / "t.safetensors")
    assert r.code == 0 and (tmp_path / "t.safetensors").is_file()
    warn = [line for line in r.err.splitlines() if "warning" in line]
    assert len(warn) == 1 and "rank" in warn[0] and "-k 3" in warn[0]


def _bad_inputs(tmp_path):
    X = anisotropic(n=50, d=12, dtype=np.float32)
    np.save(tmp_path / "emb.npy", X)
    np.save(tmp_path / "one.npy", X[:1])
    np.save(tmp_path / "bad.npy", np.ones((4, 5), dtype=np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("1,2,3\n")
    from safetensors.numpy import save_file

    save_file({"a": X, "b": X}, str(tmp_path / "two.safetensors"))
    Whitening().fit(X).save(tmp_path / "t.safetensors")
    (tmp_path / "adir.npy").mkdir()
    e, t, o = tmp_path / "emb.npy", tmp_path / "t.safetensors", tmp_path / "out.safetensors"
    v = tmp_path / "v.npy"
    return [
        (("fit", e, "--dim", "0", "-o", o), "--dim"),
        (("fit", e, "-k", "13", "-o", o), "--dim 13 is larger than the embedding dimension 12"),
        (("fit", e, "--gamma", "-1", "-o", o), "--gamma"),
        (("fit", e, "--beta", "nan", "-o", o), "--beta"),
        (("fit", e, "--chunk", "0", "-o", o), "--chunk"),
        (("fit", e, "--threads", "0", "-o", o), "--threads"),
        (("fit", tmp_path / "missing.npy", "-o", o), "not found"),
        (("fit", tmp_path / "one.npy", "-o", o), "at least 2 vectors"),
        (("fit", tmp_path / "empty.npy", "-o", o), "empty"),
        (("fit", tmp_path / "text.npy", "-o", o), "not a .npy array"),
        (("fit", tmp_path / "two.safetensors", "-o", o), "choose one with --key"),
        (("fit", e, "-o", tmp_path / "t.npz"), ".safetensors"),
        (("fit", e, "-o", tmp_path / "no" / "t.safetensors"), "does not exist"),
        (("fit", e, "-o", tmp_path / "adir.npy"), "directory"),
        (("apply", t, tmp_path / "bad.npy", "-o", v), "d=12"),
        (("apply", t, e, "-o", tmp_path / "v.csv"), ".npy"),
        (("apply", tmp_path / "nope.safetensors", e, "-o", v), "not found"),
        (("apply", tmp_path / "two.safetensors", e, "-o", v), "not a Whitening"),
        (("search", "--encoder", "bert"), "unknown encoder"),
        (("search", "--fit-on", "dev"), "--fit-on"),
        (("search", "--limit", "3"), "--limit"),
        (("search", "--json", tmp_path / "g.txt"), ".json"),
        (("search", "--pairs", tmp_path / "nope.tsv"), "not found"),
        (("search", "--pairs", e, "--fit-on", "train"), "with --pairs"),
    ]


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cli):
    for args, match in _bad_inputs(tmp_path):
        before = set(tmp_path.rglob("*"))
        r = cli("whiten", *args)
        assert r.one_line_error, (args, r.code, r.err)
        assert match in r.err, (args, r.err)
        assert set(tmp_path.rglob("*")) == before, args  # no output file, no temp file left behind


def test_cli_search_on_synthetic_splits(monkeypatch, tmp_path, cli):
    import kexue.sts as S

    splits = {"train": synthetic_sts(seed=1), "dev": synthetic_sts(seed=2), "test": synthetic_sts(seed=3)}
    monkeypatch.setattr(S, "stsb_embeddings", lambda *a, **k: splits)
    js = tmp_path / "grid.json"
    r = cli("whiten", "search", "--encoder", "minilm", "--json", js)
    assert r.code == 0 and "tuned" in r.out
    g = json.loads(js.read_text())
    assert g["best"]["dev"] == pytest.approx(np.max(g["dev"]))
    r = cli("whiten", "search", "--json", "-")  # stdout carries only the JSON
    assert r.code == 0 and json.loads(r.out)["best"] == g["best"]


def test_read_pairs(tmp_path):
    p = tmp_path / "pairs.tsv"
    rows = [f"a {i}\tb {i}\t{i / 4}" for i in range(12)]
    p.write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n\n", encoding="utf-8")
    s1, s2, score = read_pairs(p)
    assert s1[3] == "a 3" and s2[11] == "b 11" and score.tolist() == [i / 4 for i in range(12)]
    p.write_text("\n".join(rows[:5] + ["x\ty\tgood"] + rows[5:]), encoding="utf-8")
    with pytest.raises(KexueError, match=r"pairs.tsv:6: score 'good' is not a number"):
        read_pairs(p)
    p.write_text("\n".join(rows[:5] + ["only one field"]), encoding="utf-8")
    with pytest.raises(KexueError, match="pairs.tsv:6 has 1 tab-separated fields"):
        read_pairs(p)
    p.write_text("\n".join(rows[:4]), encoding="utf-8")
    with pytest.raises(KexueError, match="at least 10"):
        read_pairs(p)


@pytest.mark.needs("sentence_transformers")
def test_cli_search_on_a_users_pairs_file(tmp_path, cli):
    # a user's own STS-style file (here: 40 STS-B test pairs as TSV), encoded with the installed MiniLM
    from kexue import data

    te = data.load_stsb()["test"]
    n = 40
    p = tmp_path / "mine.tsv"
    p.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in zip(te.sentence1[:n], te.sentence2[:n], te.score[:n])),
                 encoding="utf-8")
    js = tmp_path / "g.json"
    r = cli("whiten", "search", "--pairs", p, "--seed", "3", "--json", js)
    assert r.code == 0 and "mine.tsv" in r.out
    g = json.loads(js.read_text())
    halves = pairs_embeddings(p, seed=3)
    assert len(halves["dev"].score) == 20 and len(halves["test"].score) == 20
    assert sorted(np.concatenate([halves["dev"].score, halves["test"].score])) == sorted(te.score[:n])
    assert g["raw_test"] == pytest.approx(halves["test"].spearman(), abs=1e-9)
    assert g["pairs"] == str(p) and len(g["ks"]) == len(k_grid(384))


@pytest.mark.needs("sentence_transformers")
def test_harness_matches_sentence_transformers_on_a_stsb_subset(tmp_path):
    # The full-test check (raw MiniLM ≈ 82.0) runs in the experiment; encoding 2,758 sentences
    # here would take minutes on a shared CPU. This checks the harness against an independent path.
    from scipy.stats import spearmanr
    from sentence_transformers import util

    from kexue import data
    from kexue.encoders import load_minilm
    from kexue.sts import stsb_embeddings

    n = 60
    ours = stsb_embeddings("minilm", splits=("test",), limit=n, cache_dir=tmp_path)["test"]
    te = data.load_stsb()["test"]
    m = load_minilm()
    a = m.encode(te.sentence1[:n], convert_to_tensor=True)
    b = m.encode(te.sentence2[:n], convert_to_tensor=True)
    ref = spearmanr(util.pairwise_cos_sim(a, b).numpy(), te.score[:n]).statistic * 100
    assert ours.A.shape == (n, 384)
    assert ours.spearman() == pytest.approx(ref, abs=0.05)
    assert ours.spearman() > 60  # a working encoder, not noise


@pytest.mark.slow
@pytest.mark.needs("sentence_transformers")
def test_sentence_transformers_round_trip(tmp_path):
    # whitening appended to the installed MiniLM, saved with the model and loaded back offline:
    # safetensors + JSON only, the same vectors as the library's transform, identical after reload
    from sentence_transformers import SentenceTransformer

    from kexue import data
    from kexue.whitening_st import fit_whitening

    st_ = data.load_stsb()["dev"]
    corpus = st_.sentence1[:150] + st_.sentence2[:150]
    model = SentenceTransformer(str(data.minilm_path()), device="cpu", local_files_only=True)
    raw = model.encode(corpus, convert_to_numpy=True)
    layer = fit_whitening(model, corpus, beta=1.0, gamma=0.5, k=48, batch_size=64)
    ref = Whitening(beta=1.0, gamma=0.5, n_components=48).fit(raw)
    model.append(layer)
    assert model.get_embedding_dimension() == 48
    ours = model.encode(corpus[:40], convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref.transform(raw[:40]), rtol=1e-4, atol=1e-4 * np.abs(ours).max())
    model.save(str(tmp_path / "m"))
    files = {p.suffix for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert not files & {".bin", ".pkl", ".pt", ".pth"}
    again = SentenceTransformer(str(tmp_path / "m"), device="cpu", local_files_only=True)
    np.testing.assert_array_equal(again.encode(corpus[:40], convert_to_numpy=True), ours)
    # the same layer built from a list of modules
    built = SentenceTransformer(modules=[*again], device="cpu")
    np.testing.assert_array_equal(built.encode(corpus[:40], convert_to_numpy=True), ours)


def test_fit_whitening_checks_its_input_before_encoding():
    from kexue.whitening_st import fit_whitening

    class NoEncode:
        def get_embedding_dimension(self):
            return 8

        def encode(self, *a, **k):
            raise AssertionError("encoded before the checks")

    for kwargs, match in [({"k": 9}, "larger than the model's embedding dimension 8"), ({"gamma": -1}, "gamma"),
                          ({"sentences": "one string"}, "list of strings"), ({"sentences": ["a"]}, ">= 2"),
                          ({"sentences": ["a", 3]}, "sentence 1 is a int")]:
        kwargs = {"sentences": ["a", "b", "c"], **kwargs}
        with pytest.raises(KexueError, match=match):
            fit_whitening(NoEncode(), **kwargs)


@pytest.mark.needs("sentence_transformers")
def test_whitening_dense_computes_the_transform():
    import torch

    from kexue.whitening_st import whitening_dense

    X = anisotropic(n=500, d=10, mean_scale=2.0, dtype=np.float32)
    w = Whitening(beta=0.75, gamma=1.0, n_components=6).fit(X)
    W, shift = w.affine()
    np.testing.assert_allclose((X.astype(np.float64) - shift) @ W, w.transform(X.astype(np.float64)), rtol=1e-12)
    layer = whitening_dense(w)
    out = layer({"sentence_embedding": torch.from_numpy(X)})["sentence_embedding"].detach().numpy()
    assert out.shape == (500, 6) and layer.get_embedding_dimension() == 6
    np.testing.assert_allclose(out, w.transform(X), rtol=1e-4, atol=1e-4 * np.abs(out).max())


@pytest.mark.parametrize("s", [1e200, 2.0 ** 700, 1e-200, 1e-150])
@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.0])
def test_extreme_magnitudes_are_whitened_scale_equivariantly(s, gamma):
    """Σ of 1e200-sized vectors overflows float64 (eigh failed with 'Eigenvalues did not converge')
    and of 1e-200-sized ones underflows to 0; the fit works in a power-of-two-scaled space, and
    transform(s·X) = s^(1−γ) transform(X) (SPEC 5.1 with μ → sμ, Λ → s²Λ)."""
    X = anisotropic(n=300, d=5)
    w = Whitening(beta=1.0, gamma=gamma).fit(X)
    ws = Whitening(beta=1.0, gamma=gamma).fit(X * s)
    np.testing.assert_allclose(ws.transform(X * s) / s ** (1 - gamma), w.transform(X), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ws.components_, w.components_, atol=1e-9)
    assert ws.condition_number() == pytest.approx(w.condition_number(), rel=1e-9)
    np.testing.assert_allclose(ws.inverse_transform(ws.transform(X * s)) / s, X, rtol=1e-9, atol=1e-9)


def test_a_later_larger_chunk_rescales_the_accumulators(tmp_path):
    X = anisotropic(n=400, d=4)
    X[200:] *= 1e250
    w = Whitening().fit_chunks([X[:200], X[200:]])
    ref = Whitening().fit(X)
    np.testing.assert_allclose(w.transform(X), ref.transform(X), rtol=1e-7, atol=1e-9)
    assert np.isfinite(w.transform(X)).all()
    w.save(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(Whitening.load(tmp_path / "w.safetensors").transform(X), w.transform(X))


def test_cli_whiten_fit_on_huge_values(cli, tmp_path):
    np.save(tmp_path / "x.npy", anisotropic(n=200, d=6) * 1e200)
    r = cli("whiten", "fit", tmp_path / "x.npy", "-o", tmp_path / "w.safetensors")
    assert r.code == 0 and "Traceback" not in r.err, r.err
    r = cli("whiten", "apply", tmp_path / "w.safetensors", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    Y = np.load(tmp_path / "y.npy")
    assert r.code == 0 and np.isfinite(Y).all()
    np.testing.assert_allclose(np.cov(Y.T, bias=True), np.eye(6), atol=1e-6)


def _low_rank_splits(rank=3, d=16):
    """Splits whose sentence vectors span only ``rank`` of ``d`` dimensions."""
    out = {}
    for seed, name in ((2, "dev"), (3, "test")):
        s = synthetic_sts(seed=seed)
        basis = np.random.default_rng(9).standard_normal((rank, d))
        out[name] = STSPairs(s.A[:, :rank] @ basis, s.B[:, :rank] @ basis, s.score)
    return out


def test_search_notes_rank_deficiency_and_refuses_all_nan(monkeypatch, cli):
    splits = _low_rank_splits()
    r = search(splits, ks=[16, 8, 3])
    assert len(r.warnings) == 1 and "rank 3 of dimension 16" in r.warnings[0]
    assert search({n: synthetic_sts(seed=s) for n, s in (("dev", 2), ("test", 3))}, ks=[16, 8]).warnings == []
    const = {n: STSPairs(p.A, p.B, np.ones_like(p.score)) for n, p in splits.items()}  # Spearman of constant gold: NaN
    with pytest.raises(KexueError, match="NaN dev Spearman") as e:
        search(const, ks=[16, 8])
    assert "\n" not in str(e.value)
    import kexue.sts as S

    monkeypatch.setattr(S, "stsb_embeddings", lambda *a, **k: splits)
    res = cli("whiten", "search")
    assert res.code == 0 and "tuned" in res.out
    assert [l for l in res.err.splitlines() if "warning" in l] == [f"kexue: warning: {r.warnings[0]}"]
    monkeypatch.setattr(S, "stsb_embeddings", lambda *a, **k: const)
    res = cli("whiten", "search")
    assert res.one_line_error and "NaN" in res.err and "tuned" not in res.out


def test_search_never_picks_a_nan_cell(monkeypatch):
    import kexue.sts as S

    real, calls = S.spearman100, []

    def first_is_nan(pred, gold):  # the first cell scored (dev, β=0, γ=0, k=16) comes out NaN
        calls.append(1)
        return float("nan") if len(calls) == 1 else real(pred, gold)

    monkeypatch.setattr(S, "spearman100", first_is_nan)
    splits = {n: synthetic_sts(seed=s) for n, s in (("dev", 2), ("test", 3))}
    r = search(splits, ks=[16, 8, 4])
    assert np.isnan(r.dev[0, 0, 0])
    assert not np.isnan(r.best["dev"]) and r.best["dev"] == pytest.approx(np.nanmax(r.dev))
