"""Tests for kexue.vae (SPEC 1): the estimator against a closed-form likelihood (PPCA written as a
VAE), monotonicity in K, normalised decoders, training/resume, persistence, baselines, CLI."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from kexue.utils import KexueError
from kexue.vae import VAE, fit_vae, iwae_loss, k_curve, load_vae, log_likelihood, prepare, save_vae
from kexue.vae.baselines import BernoulliMixture, BernoulliProduct, Dequantized, GaussianKDE
from kexue.vae.model import discretized_logistic_log_prob

torch.set_num_threads(1)  # two threads on a shared two-core machine are far slower than one


# ------------------------------------------------------------------ PPCA as a VAE


@pytest.fixture(scope="module")
def ppca():
    """sklearn PCA on the 8×8 digits (a real data set) = PPCA with closed-form log p(x)."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    X = load_digits().data / 16.0
    pca = PCA(n_components=5, random_state=0).fit(X[:1500])
    return pca, X[1500:1700].astype(np.float32)


def ppca_vae(pca, mean_shift: float = 0.0, var_scale: float = 1.0) -> VAE:
    """Linear-Gaussian VAE equal to the PPCA model, with its exact posterior as encoder.

    x = Wz + μ + N(0, σ²I); W = Uᵀ diag(sqrt(λ − σ²)) has orthogonal columns, so the posterior
    N(M⁻¹Wᵀ(x − μ), σ²M⁻¹), M = WᵀW + σ²I, is diagonal and a diagonal Gaussian encoder can be exact.
    ``mean_shift`` (in posterior sds) and ``var_scale`` make the proposal deliberately inexact.
    """
    L, D = pca.components_.shape
    s2 = float(pca.noise_variance_)
    W = pca.components_.T * np.sqrt(pca.explained_variance_ - s2)  # (D, L)
    Mdiag = (W ** 2).sum(0) + s2
    A = (W / Mdiag).T  # M⁻¹Wᵀ, (L, D)
    post_var = s2 / Mdiag
    m = VAE(in_dim=D, latent_dim=L, hidden=(), decoder="gaussian")
    with torch.no_grad():
        enc = m.enc1.net[0]
        enc.weight.zero_()
        enc.weight[:L] = torch.tensor(A, dtype=torch.float32)
        enc.bias[:L] = torch.tensor(-A @ pca.mean_ + mean_shift * np.sqrt(post_var), dtype=torch.float32)
        enc.bias[L:] = torch.tensor(np.log(post_var * var_scale), dtype=torch.float32)
        dec = m.dec.net[0]
        dec.weight.copy_(torch.tensor(W, dtype=torch.float32))
        dec.bias.copy_(torch.tensor(pca.mean_, dtype=torch.float32))
        m.dec.logvar.fill_(math.log(s2))
    return m.eval()


def test_exact_posterior_gives_exact_likelihood_with_one_sample(ppca):
    pca, X = ppca
    exact = pca.score_samples(X)
    r = log_likelihood(ppca_vae(pca), X, K=3, seed=0)
    # every importance weight equals p(x) when the proposal is the true posterior
    assert np.abs(r.log_q - exact).max() < 2e-3
    assert np.abs(r.elbo - exact).max() < 2e-3
    assert r.stderr.max() < 1e-3


def test_large_k_matches_closed_form_and_elbo_is_below(ppca):
    pca, X = ppca
    exact = pca.score_samples(X)
    model = ppca_vae(pca, mean_shift=0.7, var_scale=1.8)
    r = log_likelihood(model, X, K=5000, seed=0)
    assert abs(r.log_q.mean() - exact.mean()) < 0.05
    assert np.abs(r.log_q - exact).mean() < 0.05
    # the ELBO is strictly below log p(x) for every row (gap = KL(proposal || posterior) > 0)
    gap = exact - r.elbo
    assert (gap > 0.1).all(), gap.min()
    # and the reported standard error describes the actual spread over seeds
    reps = np.stack([log_likelihood(model, X[:40], K=50, seed=s).log_q for s in range(12)])
    se = log_likelihood(model, X[:40], K=50, seed=99).stderr
    ratio = reps.std(0, ddof=1).mean() / se.mean()
    assert 0.5 < ratio < 2.0, ratio


def test_estimate_non_decreasing_in_k(ppca):
    pca, X = ppca
    model = ppca_vae(pca, mean_shift=1.0, var_scale=0.6)  # a poor, too-narrow proposal: big gaps
    r = log_likelihood(model, X, K=1000, seed=3, keep_weights=True)
    curve = k_curve(r.log_weights, [1, 3, 10, 30, 100, 300, 1000])
    gaps = np.array([c["gap"] for c in curve])  # paired with the K = 1000 estimate of the same row
    ses = np.array([c["gap_se"] for c in curve])
    for i in range(1, len(curve)):
        # non-decreasing within paired Monte-Carlo error bars
        assert gaps[i] >= gaps[i - 1] - 2 * np.hypot(ses[i], ses[i - 1]), curve
    assert gaps[-1] - gaps[0] > 10 * ses[0], curve  # and clearly increasing overall
    assert abs(curve[-1]["mean"] - r.log_q.mean()) < 1e-4  # the K = K_max point is the estimator itself
    assert curve[-1]["mean"] <= pca.score_samples(X).mean() + 0.05  # a lower bound in expectation


def test_estimator_is_deterministic_and_chunking_only_changes_noise(ppca):
    pca, X = ppca
    model = ppca_vae(pca, mean_shift=0.5, var_scale=1.5)
    a = log_likelihood(model, X[:50], K=200, seed=5)
    b = log_likelihood(model, X[:50], K=200, seed=5)
    np.testing.assert_array_equal(a.log_q, b.log_q)
    c = log_likelihood(model, X[:50], K=200, seed=5, batch=7, max_rows=60)  # many small blocks
    z = (a.log_q - c.log_q) / np.sqrt(a.stderr ** 2 + c.stderr ** 2 + 1e-12)
    assert np.abs(z).max() < 5
    assert a.bits_per_dim == pytest.approx(a.nll / (64 * math.log(2)))


# ------------------------------------------------------------------ decoders are normalised


def test_discretized_logistic_sums_to_one():
    g = torch.Generator().manual_seed(0)
    loc = torch.rand(5, 1, generator=g) * 2 - 1
    log_s = torch.rand(5, 1, generator=g) * 4 - 5
    k = torch.arange(256, dtype=torch.float32)[None, :, None] / 255  # all 256 values of one pixel
    lp = discretized_logistic_log_prob(k, loc[:, None, :], log_s[:, None, :])  # (5, 256)
    np.testing.assert_allclose(torch.logsumexp(lp, 1).numpy(), 0.0, atol=1e-4)


def test_bernoulli_decoder_is_a_pmf_over_all_binary_vectors():
    m = VAE(in_dim=6, latent_dim=2, hidden=(8,), decoder="bernoulli").eval()
    allx = torch.tensor([[(i >> d) & 1 for d in range(6)] for i in range(64)], dtype=torch.float32)
    z = torch.randn(1, 1, 2).expand(1, 64, 2)
    lp = m.dec.log_prob(allx, z)
    assert torch.logsumexp(lp.flatten(), 0).abs() < 1e-5


def test_gaussian_decoder_matches_torch_normal():
    m = VAE(in_dim=4, latent_dim=2, hidden=(8,), decoder="gaussian").eval()
    with torch.no_grad():
        m.dec.logvar.copy_(torch.tensor([0.1, -0.5, 1.0, 0.0]))
    z, x = torch.randn(3, 2), torch.randn(3, 4)
    mu, _ = m.dec.params(z)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * m.dec.logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(m.dec.log_prob(x, z), ref)


# ------------------------------------------------------------------ training, API, persistence


@pytest.fixture(scope="module")
def tiny_data():
    from sklearn.datasets import load_digits

    return (load_digits().data * 255 / 16).round().astype(np.uint8)  # 1797 × 64 "8-bit" images


def test_fit_vae_learns_is_deterministic_and_resumes(tiny_data, tmp_path):
    kw = dict(latent_dim=4, hidden=(32,), steps=120, batch_size=64, lr=3e-3, seed=1)
    a = fit_vae(tiny_data, M=5, **kw)
    b = fit_vae(tiny_data, M=5, **kw)
    assert a.losses_ == b.losses_
    assert np.mean(a.losses_[-20:]) < np.mean(a.losses_[:20]) - 5
    ck = tmp_path / "ck.pt"
    fit_vae(tiny_data, M=5, ckpt=ck, ckpt_every=60, **{**kw, "steps": 60})
    c = fit_vae(tiny_data, M=5, ckpt=ck, resume=True, **kw)
    for p, q in zip(a.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(p, q)
    # the hub-prior API: latent_dim and decode_mean in [0, 1]
    p = a.decode_mean(torch.randn(10, a.latent_dim))
    assert p.shape == (10, 64) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_iwae_beats_vae_bound_on_same_model(tiny_data):
    m = fit_vae(tiny_data, latent_dim=4, hidden=(32,), steps=80, batch_size=64, seed=0)
    x = prepare(tiny_data[:300], "binary", "stochastic", seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        l1 = np.mean([float(iwae_loss(m, x, 1)) for _ in range(5)])
        l20 = np.mean([float(iwae_loss(m, x, 20)) for _ in range(5)])
    assert l20 < l1  # the M-sample bound is tighter (SPEC 1.3)


def test_two_stochastic_layers_and_logistic_decoder_run(tiny_data):
    m2 = fit_vae(tiny_data, latent_dim=6, latent2_dim=3, hidden=(32,), hidden2=(16,), steps=30, M=2, seed=0)
    assert m2.latent_dim == 3 and m2.decode_mean(torch.zeros(2, 3)).shape == (2, 64)
    r = log_likelihood(m2, prepare(tiny_data[:20], "binary", "threshold"), K=20)
    assert np.isfinite(r.log_q).all() and (r.elbo <= r.log_q + 1e-9).all()
    ml = fit_vae(tiny_data, decoder="logistic", latent_dim=4, hidden=(32,), steps=30, seed=0)
    r = log_likelihood(ml, prepare(tiny_data[:20], "8bit"), K=20)
    # a pmf over 256^64 values: log q ≤ 0 for every image
    assert np.isfinite(r.log_q).all() and (r.log_q < 0).all()


def test_save_load_roundtrip_and_bad_files(tiny_data, tmp_path):
    m = fit_vae(tiny_data, latent_dim=3, hidden=(16,), steps=5, seed=0)
    path = tmp_path / "m.safetensors"
    save_vae(m, path)
    m2 = load_vae(path)
    x = prepare(tiny_data[:10], "binary", "threshold")
    np.testing.assert_array_equal(log_likelihood(m, x, K=10).log_q, log_likelihood(m2, x, K=10).log_q)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(KexueError, match="not a readable safetensors"):
        load_vae(bad)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(KexueError, match="not a kexue VAE"):
        load_vae(tmp_path / "other.safetensors")
    with pytest.raises(KexueError, match="not found"):
        load_vae(tmp_path / "missing.safetensors")


def test_prepare_and_estimator_reject_bad_input():
    with pytest.raises(KexueError, match=r"\{0, 1\}"):
        prepare(np.full((3, 4), 0.5), "binary")
    with pytest.raises(KexueError, match="non-finite"):
        prepare(np.array([[0.0, np.nan]]), "continuous")
    with pytest.raises(KexueError, match="2-D"):
        prepare(np.zeros(5), "binary")
    with pytest.raises(KexueError, match="0..255"):
        prepare(np.array([[1.5, 3.0]]), "8bit")
    m = VAE(in_dim=4, latent_dim=2, hidden=(4,))
    with pytest.raises(KexueError, match=r"shape \(N, 4\)"):
        log_likelihood(m, np.zeros((2, 5)), K=3)
    with pytest.raises(KexueError, match="K must be"):
        log_likelihood(m, np.zeros((2, 4)), K=0)


# ------------------------------------------------------------------ baselines


def test_bernoulli_baselines_are_pmfs():
    rng = np.random.default_rng(0)
    X = (rng.random((300, 8)) < rng.random(8)).astype(np.uint8)
    allx = np.array([[(i >> d) & 1 for d in range(8)] for i in range(256)])
    for est in (BernoulliProduct().fit(X), BernoulliMixture(4, random_state=0).fit(X)):
        assert abs(np.logaddexp.reduce(est.score_samples(allx))) < 1e-9
    # the mixture fits better than independence on correlated data
    Xc = np.repeat((rng.random((400, 1)) < 0.5), 8, axis=1).astype(np.uint8)
    assert BernoulliMixture(2, random_state=0).fit(Xc).score_samples(Xc).mean() > BernoulliProduct().fit(Xc).score_samples(Xc).mean() + 3


def test_dequantized_density_is_a_lower_bound_on_the_pmf():
    from scipy.stats import norm
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    X = rng.binomial(3, 0.4, size=(3000, 1))  # integers 0..3, L = 4
    est = Dequantized(GaussianMixture(1, random_state=0), levels=4).fit(X)
    mu, var = est.estimator.means_[0, 0], est.estimator.covariances_[0, 0, 0]
    for k in range(4):
        a, b = k / 4, (k + 1) / 4
        exact = math.log(norm.cdf(b, mu, math.sqrt(var)) - norm.cdf(a, mu, math.sqrt(var)))  # log ∫_bin p(y) dy
        # E_u[log p(y)] − log L in closed form: y uniform on the bin, E(y − μ)² = ((b−μ)³ − (a−μ)³)/(3(b − a))
        e2 = ((b - mu) ** 3 - (a - mu) ** 3) / (3 * (b - a))
        bound = -0.5 * math.log(2 * math.pi * var) - e2 / (2 * var) - math.log(4)
        assert bound < exact - 1e-3  # Jensen: strictly below for a non-flat density
        mc = est.score_samples(np.full((20000, 1), k), seed=k)  # one fresh u per row
        assert abs(mc.mean() - bound) < 4 * mc.std() / math.sqrt(len(mc))


def test_gaussian_kde_matches_scikit_learn_in_low_dimension():
    from sklearn.neighbors import KernelDensity

    rng = np.random.default_rng(0)
    Y, Z = rng.random((300, 5)), rng.random((40, 5))
    np.testing.assert_allclose(GaussianKDE(0.2).fit(Y).score_samples(Z),
                               KernelDensity(bandwidth=0.2).fit(Y).score_samples(Z), rtol=1e-9, atol=1e-8)


# ------------------------------------------------------------------ CLI


def _kexue(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process (a subprocess per call costs ~10 s of imports here); (exit code, stderr)."""
    from kexue.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def test_cli_train_and_score(tiny_data, tmp_path, capsys):
    np.save(tmp_path / "train.npy", tiny_data[:500])
    np.save(tmp_path / "test.npy", tiny_data[500:560])
    code, err = _kexue(capsys, "vae", "train", tmp_path / "train.npy", "--latent", 3, "--hidden", "16", "--steps", 20,
                       "-o", tmp_path / "m.safetensors")
    assert code == 0, err
    code, err = _kexue(capsys, "vae", "score", tmp_path / "m.safetensors", tmp_path / "test.npy", "-K", 30,
                       "--binarize", "stochastic", "-o", tmp_path / "s.npy")
    assert code == 0, err
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (60,) and np.isfinite(s).all() and (s > 0).all()
    # bad inputs: one line, exit code 2, no output file
    np.save(tmp_path / "wrong.npy", np.zeros((4, 10)))
    code, err = _kexue(capsys, "vae", "score", tmp_path / "m.safetensors", tmp_path / "wrong.npy", "-o", tmp_path / "w.npy")
    assert code == 2 and "Traceback" not in err and "(N, 64)" in err
    assert not (tmp_path / "w.npy").exists()
    (tmp_path / "corrupt.npy").write_bytes(b"garbage")
    code, err = _kexue(capsys, "vae", "score", tmp_path / "m.safetensors", tmp_path / "corrupt.npy", "-o", tmp_path / "w.npy")
    assert code == 2 and "not a .npy array" in err
    code, err = _kexue(capsys, "vae", "score", tmp_path / "m.safetensors", tmp_path / "test.npy", "-o", tmp_path / "w.npy")
    assert code == 2 and "--binarize" in err  # 8-bit data given to a Bernoulli model
    assert not (tmp_path / "w.npy").exists()
