"""Tests for kexue.unargmax (SPEC 3): certified verdicts, known answers, inputs, CLI."""

import json

import numpy as np
import pytest

from kexue.unargmax import (ARGMAXABLE, UNARGMAXABLE, audit, example_2d, load_output_layer, planted_layer,
                            verify_certificate, verify_witness)
from kexue.unargmax import lp as core
from kexue.unargmax import nearest
from kexue.utils import KexueError


def _all_certificates_hold(W, b, res, box=None):
    """Every argmaxable verdict has a witness that independently verifies, every unargmaxable one
    a certificate that independently verifies."""
    for k in res.ids(ARGMAXABLE):
        assert verify_witness(W, b, k, res.witnesses[k], box) > 0, k
    for k in res.ids(UNARGMAXABLE):
        idx, lam = res.certificates[k]
        ok, _ = verify_certificate(W, b, k, idx, lam, box)
        assert ok, k


# ---- SPEC 3.2: the 2-D example

def test_2d_example_class5_unargmaxable_without_bias():
    W, b = example_2d()
    res = audit(W, b)
    assert res.verdict.tolist() == [1, 1, 1, 1, 0]
    idx, lam = res.certificates[4]
    assert np.allclose(lam @ W[idx], W[4])
    _all_certificates_hold(W, b, res)


def test_2d_example_large_bias_makes_class5_argmaxable_at_zero():
    W, b = example_2d(b5=0.0)  # ties with the others at z = 0: still unargmaxable
    assert audit(W, b).verdict[4] == UNARGMAXABLE
    W, b = example_2d(b5=1.0)
    assert verify_witness(W, b, 4, np.zeros(2)) > 0  # z = 0 is a witness
    res = audit(W, b)
    assert res.verdict.tolist() == [1, 1, 1, 1, 1]
    _all_certificates_hold(W, b, res)


def test_post_criterion_disagrees_with_lp_when_bias_decides():
    W, b = example_2d(b5=1.0)
    fw = audit(W, b, method="fw")
    assert fw.post_verdict[4] == UNARGMAXABLE  # ‖Σα Δw‖ can reach 0: the post says "never"
    assert fw.verdict[4] == ARGMAXABLE  # ...but the witness z = 0 proves otherwise
    W, b = example_2d()
    fw = audit(W, b, method="fw", prechecks=False)
    assert fw.verdict.tolist() == [1, 1, 1, 1, 0] and fw.post_verdict.tolist() == [1, 1, 1, 1, 0]
    _all_certificates_hold(W, b, fw)


# ---- planted layers: exact recovery, zero false verdicts

@pytest.mark.parametrize("bias", [False, True])
def test_planted_set_recovered_exactly(bias):
    W, b, truth = planted_layer(600, 12, 30, bias=bias, rescued=bias, seed=3)
    res = audit(W, b)
    assert res.counts()["undecided"] == 0
    assert np.array_equal(res.verdict == ARGMAXABLE, truth)
    assert np.array_equal(res.unargmaxable, np.flatnonzero(~truth))
    _all_certificates_hold(W, b, res)


def test_lp_only_baseline_gives_identical_verdicts():
    W, b, truth = planted_layer(120, 6, 8, bias=True, seed=5)
    fast = audit(W, b)
    slow = audit(W, b, prechecks=False, working_set=W.shape[0])
    assert np.array_equal(fast.verdict, slow.verdict)
    assert np.array_equal(slow.verdict == ARGMAXABLE, truth)
    _all_certificates_hold(W, b, slow)


def test_parallel_matches_sequential():
    W, b, truth = planted_layer(200, 8, 10, seed=7)
    r1 = audit(W, b, n_jobs=1)
    r2 = audit(W, b, n_jobs=2, block=64)
    assert np.array_equal(r1.verdict, r2.verdict)
    assert np.array_equal(r2.verdict == ARGMAXABLE, truth)


def test_duplicates_are_unargmaxable_with_zero_residual():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((50, 5))
    W[7] = W[3]
    res = audit(W)
    assert res.verdict[3] == UNARGMAXABLE and res.verdict[7] == UNARGMAXABLE
    assert res.residual[3] == 0.0
    b = np.zeros(50)
    b[7] = 1.0  # a higher bias breaks the tie for 7 only
    res = audit(W, b)
    assert res.verdict[3] == UNARGMAXABLE and res.verdict[7] != UNARGMAXABLE


def test_box_bounds_the_witness():
    # class 0 wins only for z₁ > 10
    W = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    b = np.array([-10.0, 0.0, -100.0, -100.0])
    assert audit(W, b, box=5.0).verdict[0] == UNARGMAXABLE
    res = audit(W, b, box=20.0)
    assert res.verdict[0] == ARGMAXABLE and np.abs(res.witnesses[0]).max() <= 20
    _all_certificates_hold(W, b, res, box=20.0)
    assert audit(W, b).verdict[0] == ARGMAXABLE


def test_witness_check_rejects_ties_and_losers():
    W, _ = example_2d()
    assert verify_witness(W, None, 0, W[0]) > 0
    assert verify_witness(W, None, 4, W[4]) <= 0  # w₅ never wins
    assert verify_witness(W, None, 0, np.zeros(2)) <= 0  # all tie at z = 0: not strict
    ok, _ = verify_certificate(W, None, 4, [0, 1], [0.5, 0.5])  # wrong rows: (1.5, 1.5) ≠ (1, 1)
    assert not ok


def test_solver_failure_is_undecided(monkeypatch):
    W, b, truth = planted_layer(200, 6, 10, seed=2)
    monkeypatch.setattr(core, "_highs", lambda *a, **k: (4, None, None))  # HiGHS "numerical error"
    monkeypatch.setattr(core._MarginLP, "solve", lambda self: (4, None, None))
    monkeypatch.setattr(nearest._Corral, "add", lambda self, j, p: False)  # and Wolfe stalls at once
    res = audit(W, b)
    assert set(res.undecided) == set(np.flatnonzero(~truth))  # never folded into a verdict
    assert res.counts()["unargmaxable"] == 0
    assert all("status 4" in res.notes[k] for k in res.undecided)


@pytest.mark.parametrize("bias,box", [(False, None), (True, None), (True, 3.0)])
def test_warm_started_margin_lp_matches_a_cold_solve(bias, box):
    # rows added in three batches and re-solved from the kept basis give the optimum of the whole
    # LP solved from scratch through SciPy (the margin LP as written in SPEC 3.4)
    from scipy.optimize import linprog

    rng = np.random.default_rng(3)
    d, m = 6, 60
    Dw, Db = rng.standard_normal((m, d)), (rng.standard_normal(m) if bias else None)
    lp = core._MarginLP(d, bias, box, 10.0)
    for part in np.array_split(np.arange(m), 3):
        lp.add(Dw[part], None if Db is None else Db[part])
        status, t, z = lp.solve()
        assert status == 0
    use_s = bias and box is None
    nrm = np.linalg.norm(Dw, axis=1)
    A = np.c_[-Dw, -Db if use_s else np.zeros((m, 0)), nrm]
    rhs = Db if (bias and not use_s) else np.zeros(m)
    if use_s:
        A, rhs = np.r_[A, [[0.0] * d + [-1.0, 1.0]]], np.r_[rhs, 0.0]
    zb = (-1, 1) if box is None else (-box, box)
    bounds = [zb] * d + ([(0, 1)] if use_s else []) + [(None, None if box is not None or use_s else 1)]
    c = np.zeros(A.shape[1])
    c[-1] = -1
    ref = linprog(c, A_ub=A, b_ub=rhs, bounds=bounds, method="highs")
    assert t == pytest.approx(-ref.fun, rel=1e-8, abs=1e-10)


def test_margin_lp_solves_within_a_time_limit_each():
    # HiGHS counts a model's whole run time against time_limit; each solve must get its own
    rng = np.random.default_rng(0)
    lp = core._MarginLP(40, False, None, 0.5)
    for _ in range(4):
        lp.add(rng.standard_normal((200, 40)), None)
        before = lp.h.getRunTime()
        assert lp.solve()[0] == 0
        assert lp.h.getOptionValue("time_limit")[1] == pytest.approx(before + 0.5)


def test_highs_banner_stays_off_stdout():
    import subprocess
    import sys

    code = ("import numpy as np; from kexue.unargmax import lp; m = lp._MarginLP(2, False, None, 5.0); "
            "m.add(np.eye(2), None); print(m.solve()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "0\n"


# ---- Wolfe's nearest point (the bias-free stage before the LP)

def test_corral_factor_tracks_adds_and_drops():
    # L Lᵀ = P_Q P_Qᵀ + ρ11ᵀ, u = L⁻¹1 and the identity padding must survive adds and drops
    rng = np.random.default_rng(0)
    P, rho = rng.standard_normal((40, 30)), 2.0
    c = nearest._Corral(P[0], 0, 32, rho)
    for j in range(1, 20):
        assert c.add(j, P[j])

    def check():
        n, Q = c.n, c.Q[:c.n]
        H = P[Q] @ P[Q].T + rho
        L = c.L[:n, :n]
        np.testing.assert_allclose(L @ L.T, H, atol=1e-10)
        assert np.array_equal(np.tril(L), L) and np.array_equal(c.L[n:, n:], np.eye(32 - n))
        np.testing.assert_allclose(L @ c.u[:n], 1.0, atol=1e-10)
        a = np.linalg.solve(H, np.ones(n))
        np.testing.assert_allclose(c.affine(), a / a.sum(), atol=1e-10)

    check()
    for i in (5, 0, 16, 3):
        c.drop(i)
        check()
    q0 = int(c.Q[0])
    assert c.add(30, P[30]) and not c.add(q0, P[q0])  # a corral row again is affinely dependent
    check()


def _stats(W, min_margin=0.0, **cfg):
    from kexue.unargmax.config import AuditConfig, layer_stats

    return layer_stats(W, None, AuditConfig(**cfg), min_margin, 1)


@pytest.mark.parametrize("box", [None, 2.0])
def test_nearest_point_certifies_planted_layers_like_the_lp(box):
    W, _, truth = planted_layer(300, 10, 20, seed=8)
    stats = _stats(W, box=box)
    for k in range(60):
        r = nearest.nearest_class(W, k, np.flatnonzero(np.arange(300) != k)[:50], stats)  # a small start set
        assert r["verdict"] == (ARGMAXABLE if truth[k] else UNARGMAXABLE), k
        if truth[k]:
            assert verify_witness(W, None, k, r["z"], box) > 0 and r["margin"] > 0
        else:
            assert verify_certificate(W, None, k, r["idx"], r["lam"], box)[0]
    res, old = audit(W, box=box), audit(W, box=box, nearest=False)
    assert np.array_equal(res.verdict, old.verdict) and res.stage_counts().get("nearest") == 20
    _all_certificates_hold(W, None, res, box)


def _quantised_cluster(seed=0, n=400, d=24, step=1e-3):
    """Qwen2.5's untrained rows in miniature: many rows one or two quantisation steps from a shared
    vector c, inside a layer of spread-out rows; some steps stick out of the cluster's hull,
    others are interior (unargmaxable), exact duplicates aside."""
    rng = np.random.default_rng(seed)
    far = rng.standard_normal((300, d))
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    c = 1.2 * far[0]  # outside the unit sphere: the cluster is a corner of the layer's hull
    steps = np.zeros((n, d))
    for i in range(n):
        j = rng.choice(d, size=rng.integers(1, 3), replace=False)
        steps[i, j] = rng.integers(-2, 3, size=j.size)
    W = np.vstack([far, c + step * steps])
    return W[np.unique(W, axis=0, return_index=True)[1]]


def test_nearest_point_on_near_identical_quantised_rows_agrees_with_the_lp():
    W = _quantised_cluster()
    C = W.shape[0]
    stats = _stats(W, min_margin=2.0**-7)
    ks = np.arange(300, C, 5)
    lp_only = audit(W, classes=ks, min_margin=2.0**-7, nearest=False)
    res = audit(W, classes=ks, min_margin=2.0**-7)
    assert res.counts()["undecided"] == 0 and np.array_equal(res.verdict, lp_only.verdict)
    assert {0, 2} <= set(res.verdict[ks].tolist())  # both unargmaxable and near-unargmaxable rows
    _all_certificates_hold(W, None, res)
    for k in res.near:  # near: certified witness, and ‖x‖/max‖w‖ bounds every witness below min_margin
        r = nearest.nearest_class(W, int(k), np.flatnonzero(np.arange(C) != k), stats)
        assert r["verdict"] == ARGMAXABLE and verify_witness(W, None, k, r["z"]) > 0 and r["rel"] < 2.0**-7


def test_wolfe_stall_falls_back_to_the_lp(monkeypatch):
    W, _, truth = planted_layer(200, 6, 10, seed=2)
    monkeypatch.setattr(nearest._Corral, "add", lambda self, j, p: False)
    res = audit(W)
    assert np.array_equal(res.verdict == ARGMAXABLE, truth) and res.stage_counts().get("lp") == 10
    _all_certificates_hold(W, None, res)


# ---- inputs

def test_malformed_inputs_give_clear_errors(tmp_path):
    with pytest.raises(KexueError, match="2-D"):
        audit(np.zeros((3, 4, 5)))
    W = np.random.default_rng(0).standard_normal((10, 3))
    W[4, 1] = np.nan
    with pytest.raises(KexueError, match="row 4"):
        audit(W)
    with pytest.raises(KexueError, match="one entry per class"):
        audit(np.eye(3), np.zeros(4))
    np.save(tmp_path / "w3.npy", np.zeros((2, 3, 4)))
    with pytest.raises(KexueError, match="2-D"):
        load_output_layer(tmp_path / "w3.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(KexueError, match="empty"):
        load_output_layer(tmp_path / "empty.npy")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(KexueError, match="cannot read"):
        load_output_layer(tmp_path / "bad.npz")
    with pytest.raises(KexueError, match="does not exist"):
        load_output_layer(tmp_path / "nope.safetensors")
    with pytest.raises(KexueError, match="unsupported"):
        (tmp_path / "x.txt").write_text("1")
        load_output_layer(tmp_path / "x.txt")


def test_npz_and_safetensors_names(tmp_path):
    from safetensors.numpy import save_file

    W, b, _ = planted_layer(40, 4, 2, bias=True, seed=1)
    np.savez(tmp_path / "l.npz", W=W, b=b)
    lay = load_output_layer(tmp_path / "l.npz")
    assert lay.W.shape == (40, 4) and np.array_equal(lay.b, b)
    assert load_output_layer(tmp_path / "l.npz", bias="none").b is None
    save_file({"enc.weight": W.astype(np.float32), "dec.weight": W.astype(np.float32), "dec.bias": b.astype(np.float32)},
              str(tmp_path / "m.safetensors"))
    with pytest.raises(KexueError, match="dec.weight.*enc.weight"):  # ambiguous: lists the choices
        load_output_layer(tmp_path / "m.safetensors")
    lay = load_output_layer(tmp_path / "m.safetensors", tensor="dec.weight")
    assert lay.bias_name == "dec.bias" and lay.W.dtype == np.float32
    with pytest.raises(KexueError, match="no tensor named 'missing'"):
        load_output_layer(tmp_path / "m.safetensors", tensor="missing")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(KexueError, match="never unpickles"):
        load_output_layer(tmp_path / "hf")


def test_gguf_quantised_tied_layer(tmp_path):
    # a small GGUF written like llama.cpp does (Q8_0 tied embeddings + vocab in the metadata);
    # reading SmolLM2's own file takes ~30 s of metadata parsing, so the experiment covers it
    pytest.importorskip("gguf")
    from conftest import write_q8_gguf

    W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    write_q8_gguf(tmp_path / "m.gguf", W, tokens=[f"tok{i}" for i in range(64)])
    lay = load_output_layer(tmp_path / "m.gguf")
    assert lay.W.shape == (64, 32) and lay.tied and lay.b is None and lay.info["quantisation"] == "Q8_0"
    assert np.abs(lay.W - W).max() < 0.05 and lay.token(5) == "tok5"
    with pytest.raises(KexueError, match="no tensor named"):
        load_output_layer(tmp_path / "m.gguf", tensor="output.weight")


@pytest.mark.needs("tokenizers")
def test_minilm_folder_tied_embeddings_and_tokenizer():
    from kexue.data import minilm_path

    m = load_output_layer(minilm_path())
    assert m.W.shape == (30522, 384) and m.weight_name.endswith("word_embeddings.weight")
    assert m.token(2023) == "this"


# ---- CLI

def test_cli_json_document(tmp_path, cli):
    W, b = example_2d()
    np.save(tmp_path / "w.npy", W)
    out = tmp_path / "r.json"
    r = cli("unargmax", tmp_path / "w.npy", "--json", out)
    assert r.code == 0, r.err
    doc = json.loads(out.read_text())
    assert doc["unargmaxable_classes"][0]["id"] == 4 and doc["argmaxable"] == 4 and doc["undecided"] == 0
    assert doc["classes"]["verdict"] == [1, 1, 1, 1, 0] and doc["unargmaxable_classes"][0]["certificate"]["rows"]
    assert doc["precision"] == "float64"
    r = cli("unargmax", tmp_path / "w.npy", "--json", "-", "--threads", 1)
    assert r.code == 0 and json.loads(r.out)["unargmaxable"] == 1  # stdout holds only the JSON


@pytest.mark.parametrize("args, words", [
    (["--show", "-1"], "--show"),
    (["--bias-tensor", "b"], ".npy"),
    (["--method", "simplex"], "--method"),
    (["--jobs", "0"], "--jobs"),
    (["--box", "-1"], "--box"),
    (["--min-margin", "2"], "--min-margin"),
    (["--cluster", "remote:3"], "--cluster"),
    (["--scheduler", "host:1", "--cluster", "local:2"], "not both"),
    (["--json", "{missing}/r.json"], "does not exist"),
    (["--json", "r.txt"], ".json"),
])
def test_cli_bad_options_are_one_line_errors(tmp_path, cli, args, words):
    np.save(tmp_path / "w.npy", example_2d()[0])
    args = [a.format(missing=tmp_path / "nope") for a in args]
    r = cli("unargmax", tmp_path / "w.npy", *args)
    assert r.one_line_error and words in r.err, r.err
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "r.txt").exists()


@pytest.mark.needs("huggingface_hub")
def test_cli_missing_file_and_unknown_model_id(tmp_path, cli):
    r = cli("unargmax", tmp_path / "missing.npy")
    assert r.one_line_error and "does not exist" in r.err
    r = cli("unargmax", "no-such-org/no-such-model")
    assert r.one_line_error and "Hugging Face cache" in r.err


def test_blocked_float32_path_matches_in_memory_path():
    # a layer too large for the one-shot float64 copy is converted a row block at a time
    W, b, truth = planted_layer(300, 8, 12, bias=True, seed=11)
    W32 = W.astype(np.float32)
    whole = audit(W32, b)
    blocked = audit(W32, b, f64_mb=0, mem_mb=0.01)
    assert np.array_equal(whole.verdict, blocked.verdict)
    _all_certificates_hold(W32, b, blocked)


# ---- margins (issue 13.4)

def test_float32_midpoint_is_near_unargmaxable_not_argmaxable():
    from kexue.unargmax import NEAR, default_min_margin

    W, _, _ = planted_layer(30, 8, 0, seed=4)
    W = W.astype(np.float32)
    W[5] = (W[3] + W[9]) / np.float32(2)  # rounding leaves it a hair outside the segment
    res = audit(W)  # min_margin from the dtype
    assert res.min_margin == default_min_margin(np.float32) and res.verdict[5] == NEAR
    assert 0 < res.rel_margin[5] < res.min_margin
    assert verify_witness(W, None, 5, res.witnesses[5]) > 0  # still a certified witness
    assert (res.verdict != NEAR).sum() == 29 and res.counts()["near-unargmaxable"] == 1
    plain = audit(W, min_margin=0.0)
    assert plain.verdict[5] == ARGMAXABLE and np.array_equal(np.delete(plain.verdict, 5), np.delete(res.verdict, 5))
    doc = res.to_dict()
    assert doc["near_unargmaxable_classes"][0]["id"] == 5 and doc["classes"]["verdict"][5] == NEAR
    assert all(m is None or m > 0 for m in doc["classes"]["relative_margin"])


def test_default_min_margin_follows_the_format():
    from kexue.unargmax import default_min_margin

    assert default_min_margin("BF16") > default_min_margin("F16") > default_min_margin(np.float32) > default_min_margin(np.float64)
    assert default_min_margin("Q8_0") == 2 * 2.0**-8 and default_min_margin(None) == 0.0


def test_near_verdict_from_the_cli(tmp_path, cli):
    W, _, _ = planted_layer(30, 8, 0, seed=4)
    W = W.astype(np.float32)
    W[5] = (W[3] + W[9]) / np.float32(2)
    np.save(tmp_path / "w.npy", W)
    r = cli("unargmax", tmp_path / "w.npy", "--json", "-")
    assert r.code == 0 and json.loads(r.out)["near-unargmaxable"] == 1
    r = cli("unargmax", tmp_path / "w.npy", "--json", "-", "--min-margin", "0")
    assert r.code == 0 and json.loads(r.out)["near-unargmaxable"] == 0 and json.loads(r.out)["argmaxable"] == 30


def test_config_object_and_keyword_overrides():
    from kexue.unargmax import AuditConfig

    W, b, truth = planted_layer(120, 6, 8, bias=True, seed=5)
    cfg = AuditConfig(reflections=0, families=("wk",))
    r1 = audit(W, b, cfg)
    r2 = audit(W, b, reflections=0, families=["wk"])
    assert np.array_equal(r1.verdict, r2.verdict) and np.array_equal(r1.verdict == ARGMAXABLE, truth)
    with pytest.raises(KexueError, match="unknown audit setting"):
        audit(W, b, n_job=2)
    with pytest.raises(KexueError, match="method"):
        AuditConfig(method="simplex")
    with pytest.raises(KexueError, match="box"):
        AuditConfig(box=-1.0)


# ---- scale-out on Dask (issue 13.3)

def test_dask_local_cluster_gives_the_local_verdicts():
    distributed = pytest.importorskip("dask.distributed")
    W, b, truth = planted_layer(300, 8, 15, bias=True, seed=7)
    local = audit(W, b)
    with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, distributed.get_task_stream(client) as ts:
        remote = audit(W, b, scheduler=cluster.scheduler_address, block=64)
    assert len(ts.data) >= 300 // 64  # the blocks (and the LPs) ran as tasks on the cluster
    assert np.array_equal(remote.verdict, local.verdict) and np.array_equal(remote.verdict == ARGMAXABLE, truth)
    _all_certificates_hold(W, b, remote)


def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    pytest.importorskip("dask.distributed")
    import sys

    monkeypatch.setattr(sys.modules["kexue.unargmax.audit"], "CONNECT_TIMEOUT", 1)
    W, b = example_2d()
    with pytest.raises(KexueError, match="cannot reach the Dask scheduler"):
        audit(W, b, scheduler="tcp://127.0.0.1:1")


@pytest.mark.parametrize("bias", [False, True])
def test_prechecks_in_memory_bounded_column_slices_match_one_product(bias):
    # the braid walk and the working sets take W @ X a few columns at a time (so a worker never
    # holds C × n logits); with slices of 1-2 columns they must give what one product gives
    import dataclasses

    from kexue.unargmax.config import AuditConfig, layer_stats
    from kexue.unargmax.stages import column_slices, precheck_block

    W, b, _ = planted_layer(400, 8, 40, seed=5)
    b = b if bias else None
    stats = layer_stats(W, b, AuditConfig(), 0.0, 1)
    tiny = dataclasses.replace(stats, mem_mb=400 * 8 * 1.5 / 2**20)  # 1 column (2 for pairs) per product
    assert [s.stop - s.start for s in column_slices(400, 5, tiny.mem_mb)] == [1] * 5
    assert [s.stop - s.start for s in column_slices(400, 6, tiny.mem_mb, 2)] == [2] * 3
    ks = np.arange(400)
    one, sliced = precheck_block(W, W.astype(np.float32), b, ks, stats), precheck_block(W, W.astype(np.float32), b, ks, tiny)
    assert (one["stage"] < 0).any()  # some classes reach the walk and the working sets
    np.testing.assert_array_equal(one["stage"], sliced["stage"])
    assert one["work"].keys() == sliced["work"].keys()
    for k in one["work"]:
        np.testing.assert_array_equal(one["work"][k], sliced["work"][k])
