"""Tests for kexue.vae (SPEC 1): the estimator against a closed-form likelihood (PPCA written as a
VAE), monotonicity in K, normalised decoders, training/resume, persistence, baselines, CLI."""

from __future__ import annotations

import math
import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: the 'torch' extra")

from kexue.utils import KexueError
from kexue.vae import VAE, VAEConfig, fit_vae, iwae_loss, k_curve, log_likelihood, prepare
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
    m = VAE(VAEConfig(in_dim=D, latent_dim=L, hidden=(), decoder="gaussian"))
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
    c = log_likelihood(model, X[:50], K=200, seed=5, batch=7, rows=60)  # many small blocks
    z = (a.log_q - c.log_q) / np.sqrt(a.stderr ** 2 + c.stderr ** 2 + 1e-12)
    assert np.abs(z).max() < 5
    assert a.bits_per_dim == pytest.approx(a.nll / (64 * math.log(2)))


# ------------------------------------------------------------------ the fast estimator (issue 14)


def _bernoulli_model(in_dim=64, scale=3.0, seed=0) -> VAE:
    """A Bernoulli VAE with large random weights, so logits reach ±30 and weights vary a lot."""
    torch.manual_seed(seed)
    m = VAE(VAEConfig(in_dim=in_dim, latent_dim=5, hidden=(24, 24))).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


@pytest.mark.parametrize("K, batch, rows", [(7, None, None), (300, None, 128), (40, 3, 50), (1, None, None)])
def test_fast_estimator_equals_the_reference_path(K, batch, rows):
    m = _bernoulli_model(in_dim=70)  # 70 dims: not a multiple of the softplus group size
    x = (torch.rand(23, 70, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    a = log_likelihood(m, x, K=K, batch=batch, rows=rows, seed=4, keep_weights=True)
    b = log_likelihood(m, x, K=K, batch=batch, rows=rows, seed=4, keep_weights=True, fast=False)
    np.testing.assert_allclose(a.log_weights, b.log_weights, rtol=2e-5, atol=2e-3)
    np.testing.assert_allclose(a.log_q, b.log_q, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.ess, b.ess, rtol=1e-3)
    # and both equal one direct model.log_weights call with the same draws (one chunk holds all here)
    if batch is None and rows is None and K == 7:
        with torch.no_grad():
            ref = m.log_weights(x, K, generator=torch.Generator().manual_seed(4)).T.numpy()
        np.testing.assert_allclose(a.log_weights, ref, rtol=2e-5, atol=2e-3)


def test_softplus_sum_matches_torch_at_extremes():
    from kexue.vae.estimate import softplus_sum

    a = torch.cat([torch.linspace(-90, 90, 37 * 5), torch.tensor([0.0, 1e-8, -1e-8, 88.0, -88.0])]).reshape(5, -1)
    ref = torch.nn.functional.softplus(a.double()).sum(-1)
    got = softplus_sum(a.clone())
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-4)


def test_chunks_are_sized_to_the_cache_and_bounded():
    from kexue.vae.estimate import chunk_rows

    r = chunk_rows(VAE())
    assert 128 <= r <= 4096


# ------------------------------------------------------------------ decoders are normalised


def test_discretized_logistic_sums_to_one():
    g = torch.Generator().manual_seed(0)
    loc = torch.rand(5, 1, generator=g) * 2 - 1
    log_s = torch.rand(5, 1, generator=g) * 4 - 5
    k = torch.arange(256, dtype=torch.float32)[None, :, None] / 255  # all 256 values of one pixel
    lp = discretized_logistic_log_prob(k, loc[:, None, :], log_s[:, None, :])  # (5, 256)
    np.testing.assert_allclose(torch.logsumexp(lp, 1).numpy(), 0.0, atol=1e-4)


def test_bernoulli_decoder_is_a_pmf_over_all_binary_vectors():
    m = VAE(VAEConfig(in_dim=6, latent_dim=2, hidden=(8,), decoder="bernoulli")).eval()
    allx = torch.tensor([[(i >> d) & 1 for d in range(6)] for i in range(64)], dtype=torch.float32)
    z = torch.randn(1, 1, 2).expand(1, 64, 2)
    lp = m.dec.log_prob(allx, z)
    assert torch.logsumexp(lp.flatten(), 0).abs() < 1e-5


def test_gaussian_decoder_matches_torch_normal():
    m = VAE(VAEConfig(in_dim=4, latent_dim=2, hidden=(8,), decoder="gaussian")).eval()
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
    xe = prepare(tiny_data[:30], "binary", "threshold")

    def nll(model, step):
        return {"nll": log_likelihood(model, xe, K=5, seed=0).nll}

    # the IWAE paper's schedule (28 steps per epoch here: stages change at epochs 1 and 4)
    kw = dict(config=VAEConfig(latent_dim=4, hidden=(32,)), steps=120, batch_size=64, lr=3e-3, seed=1,
              schedule="iwae", eval_every=40, evaluate_fn=nll)
    a = fit_vae(tiny_data, M=5, **kw)
    b = fit_vae(tiny_data, M=5, **kw)
    assert a.losses_ == b.losses_
    assert np.mean(a.losses_[-20:]) < np.mean(a.losses_[:20]) - 5
    assert [e["step"] for e in a.evals_] == [40, 80, 120] and a.evals_[-1]["nll"] < a.evals_[0]["nll"]
    ck = tmp_path / "ck.pt"
    fit_vae(tiny_data, M=5, ckpt=ck, ckpt_every=60, **{**kw, "steps": 60})
    c = fit_vae(tiny_data, M=5, ckpt=ck, resume=True, **kw)
    for p, q in zip(a.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(p, q)
    assert c.losses_ == a.losses_  # resumed exactly; the curve gains the point where the first run stopped
    assert all(e in c.evals_ for e in a.evals_) and len(c.evals_) == len(a.evals_) + 1
    # the hub-prior API: latent_dim and decode_mean in [0, 1]
    p = a.decode_mean(torch.randn(10, a.latent_dim))
    assert p.shape == (10, 64) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_fit_vae_killed_mid_epoch_resumes_exactly(tiny_data, tmp_path, killer):
    """Dynamic binarisation, cosine schedule with warm-up and Adam: a run killed between two
    checkpoints and started again equals an uninterrupted one and counts both legs."""
    from conftest import Killed

    kw = dict(config=VAEConfig(latent_dim=4, hidden=(32,)), M=3, steps=50, batch_size=64, schedule="cosine", seed=2)
    a = fit_vae(tiny_data, **kw)
    ck = tmp_path / "ck.pt"
    with pytest.raises(Killed):  # 28 batches an epoch: killed in the second epoch, after the checkpoint at 33
        fit_vae(tiny_data, ckpt=ck, ckpt_every=11, resume=True, tracker=killer(37), **kw)
    b = fit_vae(tiny_data, ckpt=ck, ckpt_every=11, resume=True, **kw)
    assert b.losses_ == a.losses_ and (a.legs_, b.legs_) == (1, 2) and b.seconds_ > 0
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_log_likelihood_resumes_from_its_checkpoint(tiny_data, tmp_path, killer):
    """A K-sample estimate killed part-way continues from its checkpoint (rows done, RNG state)
    with the same numbers as one call, and a finished one is read back without computing."""
    from conftest import Killed

    torch.manual_seed(0)
    model = VAE(VAEConfig(in_dim=64, latent_dim=4, hidden=(16,)))
    x = prepare(tiny_data[:37], "binary", "threshold")
    kw = dict(K=50, rows=120, seed=3, keep_weights=True)  # 2 images a chunk
    full = log_likelihood(model, x, **kw)
    ck = tmp_path / "ll.pt"
    with pytest.raises(Killed):
        log_likelihood(model, x, ckpt=ck, ckpt_every=5, tracker=killer(9), **kw)
    r = log_likelihood(model, x, ckpt=ck, ckpt_every=5, **kw)
    for f in ("log_q", "stderr", "elbo", "ess", "log_weights"):
        assert np.array_equal(getattr(r, f), getattr(full, f)), f
    assert r.legs == 2 and full.legs == 1
    again = log_likelihood(model, x, ckpt=ck, tracker=killer(0), **kw)  # finished: no chunk runs
    assert np.array_equal(again.log_q, full.log_q) and (again.legs, again.seconds) == (2, r.seconds)
    other = log_likelihood(model, x, ckpt=ck, **{**kw, "seed": 4})  # another estimate starts afresh
    assert other.legs == 1 and not np.array_equal(other.log_q, full.log_q)


def test_log_likelihood_puts_the_model_back_in_its_mode_when_it_raises(tiny_data, killer):
    """The estimate runs in eval mode; a training model stays in training mode after the call,
    also when a chunk raises part-way (before, it was left in eval mode)."""
    from conftest import Killed

    model = VAE(VAEConfig(in_dim=64, latent_dim=4, hidden=(16,))).train()
    x = prepare(tiny_data[:9], "binary", "threshold")
    with pytest.raises(Killed):
        log_likelihood(model, x, K=8, rows=16, tracker=killer(1))
    assert model.training
    log_likelihood(model.eval(), x, K=8, rows=16)
    assert not model.training


def test_iwae_beats_vae_bound_on_same_model(tiny_data):
    m = fit_vae(tiny_data, VAEConfig(latent_dim=4, hidden=(32,)), steps=80, batch_size=64, seed=0)
    x = prepare(tiny_data[:300], "binary", "stochastic", seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        l1 = np.mean([float(iwae_loss(m, x, 1)) for _ in range(5)])
        l20 = np.mean([float(iwae_loss(m, x, 20)) for _ in range(5)])
    assert l20 < l1  # the M-sample bound is tighter (SPEC 1.3)


def test_two_stochastic_layers_and_logistic_decoder_run(tiny_data):
    m2 = fit_vae(tiny_data, VAEConfig(latent_dim=6, latent2_dim=3, hidden=(32,), hidden2=(16,)), steps=30, M=2, seed=0)
    assert m2.latent_dim == 3 and m2.decode_mean(torch.zeros(2, 3)).shape == (2, 64)
    r = log_likelihood(m2, prepare(tiny_data[:20], "binary", "threshold"), K=20)
    assert np.isfinite(r.log_q).all() and (r.elbo <= r.log_q + 1e-9).all()
    ml = fit_vae(tiny_data, VAEConfig(decoder="logistic", latent_dim=4, hidden=(32,)), steps=30, seed=0)
    r = log_likelihood(ml, prepare(tiny_data[:20], "8bit"), K=20)
    # a pmf over 256^64 values: log q ≤ 0 for every image
    assert np.isfinite(r.log_q).all() and (r.log_q < 0).all()


def test_save_load_roundtrip_and_bad_files(tiny_data, tmp_path):
    m = fit_vae(tiny_data, VAEConfig(latent_dim=3, hidden=(16,)), steps=5, seed=0)
    path = tmp_path / "m.safetensors"
    m.save(path)
    m2 = VAE.load(path)
    assert m2.config == m.config
    x = prepare(tiny_data[:10], "binary", "threshold")
    np.testing.assert_array_equal(log_likelihood(m, x, K=10).log_q, log_likelihood(m2, x, K=10).log_q)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(KexueError, match="cannot read"):
        VAE.load(bad)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(KexueError, match="not a kexue file"):
        VAE.load(tmp_path / "other.safetensors")
    with pytest.raises(KexueError, match="not found"):
        VAE.load(tmp_path / "missing.safetensors")


def test_prepare_and_estimator_reject_bad_input():
    with pytest.raises(KexueError, match=r"\{0, 1\}"):
        prepare(np.full((3, 4), 0.5), "binary")
    with pytest.raises(KexueError, match="non-finite"):
        prepare(np.array([[0.0, np.nan]]), "continuous")
    with pytest.raises(KexueError, match="2-D"):
        prepare(np.zeros(5), "binary")
    with pytest.raises(KexueError, match="0..255"):
        prepare(np.array([[1.5, 3.0]]), "8bit")
    m = VAE(VAEConfig(in_dim=4, latent_dim=2, hidden=(4,)))
    with pytest.raises(KexueError, match=r"shape \(N, 4\)"):
        log_likelihood(m, np.zeros((2, 5)), K=3)
    with pytest.raises(KexueError, match="K must be"):
        log_likelihood(m, np.zeros((2, 4)), K=0)


# ------------------------------------------------------------------ baselines


def test_baselines_are_scikit_learn_estimators():
    from sklearn.base import clone
    from sklearn.utils._param_validation import InvalidParameterError

    X = (np.random.default_rng(0).random((60, 6)) < 0.4).astype(np.uint8)
    for est in (BernoulliProduct(alpha=0.5), BernoulliMixture(3, random_state=2), GaussianKDE(0.3),
                Dequantized(GaussianKDE(0.3), levels=2, random_state=1)):
        c = clone(est)
        assert c.get_params() == est.get_params() or isinstance(est, Dequantized)
        a, b = clone(est).fit(X).score_samples(X), clone(est).fit(X).score_samples(X)
        np.testing.assert_array_equal(a, b)  # same random_state, same numbers
    with pytest.raises(InvalidParameterError):
        BernoulliMixture(n_components=0).fit(X)
    with pytest.raises(InvalidParameterError):
        GaussianKDE(bandwidth=-1).fit(X)
    with pytest.raises(ValueError, match="0..1"):
        BernoulliProduct().fit(X * 3)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        BernoulliProduct().score_samples(X)


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
    mu, var = est.estimator_.means_[0, 0], est.estimator_.covariances_[0, 0, 0]
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


@pytest.fixture(scope="module")
def cli_files(tiny_data, tmp_path_factory):
    """A small trained model file and train/test arrays, shared by the CLI tests."""
    d = tmp_path_factory.mktemp("vae_cli")
    np.save(d / "train.npy", tiny_data[:500])
    np.save(d / "test.npy", tiny_data[500:560])
    m = fit_vae(tiny_data[:500], VAEConfig(latent_dim=3, hidden=(16,)), steps=20, seed=0)
    m.save(d / "m.safetensors")
    m.binarize_ = None  # a file written before the training binarisation was stored
    m.save(d / "old.safetensors")
    return d


def test_cli_train_score_and_sample(cli, cli_files, tmp_path):
    d = cli_files
    r = cli("vae", "train", d / "train.npy", "--latent", 3, "--hidden", "16", "--steps", 20, "-o", tmp_path / "m.safetensors")
    assert r.code == 0, r.err
    # the CLI and the library train the same model from the same seed
    a, b = VAE.load(tmp_path / "m.safetensors"), VAE.load(d / "m.safetensors")
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q)
    r = cli("vae", "score", d / "m.safetensors", d / "test.npy", "-K", 30, "--binarize", "stochastic", "-o", tmp_path / "s.npy")
    assert r.code == 0, r.err
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (60,) and np.isfinite(s).all() and (s > 0).all()
    assert oct((tmp_path / "s.npy").stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not the temp file's
    r = cli("vae", "sample", d / "m.safetensors", "-n", 10, "-o", tmp_path / "grid.png", "--seed", 3)
    assert r.code == 0, r.err
    from matplotlib.image import imread

    grid = imread(tmp_path / "grid.png")
    assert grid.shape[:2] == (3 * 8 + 2, 4 * 8 + 3)  # ⌈√10⌉ = 4 tiles of 8×8 per row, 3 rows, 1-pixel gaps
    r = cli("vae", "sample", d / "m.safetensors", "-n", 10, "-o", tmp_path / "x.npy", "--seed", 3)
    assert r.code == 0, r.err
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), b.sample(10, seed=3).numpy())


def test_sample_from_python_is_seeded_and_in_unit_range(cli_files):
    m = VAE.load(cli_files / "m.safetensors")
    a, b, c = m.sample(16, seed=1), m.sample(16, seed=1), m.sample(16, seed=2)
    assert a.shape == (16, 64) and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(KexueError, match="n must be"):
        m.sample(0)


@pytest.mark.parametrize("args, needle", [
    (("vae", "train", "{d}/train.npy", "--lr", "-1"), "--lr"),
    (("vae", "train", "{d}/train.npy", "--lr", "nan"), "--lr"),
    (("vae", "train", "{d}/train.npy", "--steps", "0"), "--steps"),
    (("vae", "train", "{d}/train.npy", "--hidden", "20,x"), "--hidden"),
    (("vae", "train", "{d}/train.npy", "--decoder", "poisson"), "--decoder"),
    (("vae", "train", "{d}/train.npy", "--schedule", "step"), "--schedule"),
    (("vae", "train", "{d}/train.npy", "-o", "{t}/model.pt"), ".safetensors"),
    (("vae", "train", "{d}/train.npy", "-o", "{t}/missing/m.safetensors"), "does not exist"),
    (("vae", "train", "{d}/train.npy", "-o", "{t}"), "is a directory"),
    (("vae", "train", "{t}/nothing.npy", "-o", "{t}/m.safetensors"), "not found"),
    (("vae", "train", "{d}/train.npy", "--resume", "-o", "{t}/m.safetensors"), "--ckpt"),
    (("vae", "score", "{d}/m.safetensors", "{d}/test.npy", "-o", "{t}/x.csv"), ".npy"),
    (("vae", "score", "{d}/m.safetensors", "{d}/test.npy", "-K", "0", "-o", "{t}/x.npy"), "-K"),
    (("vae", "score", "{d}/old.safetensors", "{d}/test.npy", "-o", "{t}/x.npy"), "--binarize"),
    (("vae", "score", "{d}/m.safetensors", "{d}/test.npy", "--binarize", "none", "-o", "{t}/x.npy"), "--binarize"),
    (("vae", "score", "{d}/m.safetensors", "{d}/wrong.npy", "-o", "{t}/x.npy"), "(N, 64)"),
    (("vae", "score", "{d}/m.safetensors", "{d}/corrupt.npy", "-o", "{t}/x.npy"), "not a .npy array"),
    (("vae", "score", "{d}/train.npy", "{d}/test.npy", "-o", "{t}/x.npy"), "cannot read"),
    (("vae", "sample", "{d}/m.safetensors", "-n", "0", "-o", "{t}/g.png"), "-n"),
    (("vae", "sample", "{d}/m.safetensors", "-o", "{t}/g.jpg"), ".png"),
    (("vae", "sample", "{t}/none.safetensors", "-o", "{t}/g.png"), "not found"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(cli, cli_files, tmp_path, args, needle):
    d = cli_files
    np.save(d / "wrong.npy", np.zeros((4, 10)))
    (d / "corrupt.npy").write_bytes(b"garbage")
    r = cli(*[a.format(d=d, t=tmp_path) for a in args])
    assert r.one_line_error, (r.code, r.err)
    assert needle in r.err, r.err
    assert not any(tmp_path.iterdir()), "no output may be left behind"


def test_cli_resume_refuses_a_mismatched_run(cli, cli_files, tmp_path):
    d, ck = cli_files, tmp_path / "run.pt"
    base = ("vae", "train", d / "train.npy", "--latent", 3, "--hidden", "16", "--ckpt", ck, "--ckpt-every", 10)
    assert cli(*base, "--steps", 10, "-o", tmp_path / "a.safetensors").code == 0
    for extra, needle in ((("-M", 5), "M=1"), (("--lr", "0.01"), "lr"), (("--latent", 4), "latent_dim")):
        r = cli(*base, *extra, "--steps", 20, "--resume", "-o", tmp_path / "b.safetensors")
        assert r.one_line_error and "another run" in r.err and needle in r.err, r.err
    np.save(tmp_path / "other.npy", np.asarray(np.load(d / "train.npy"))[::-1])
    r = cli("vae", "train", tmp_path / "other.npy", *base[3:], "--steps", 20, "--resume", "-o", tmp_path / "b.safetensors")
    assert r.one_line_error and "other data" in r.err, r.err
    r = cli(*base, "--steps", 5, "--resume", "-o", tmp_path / "b.safetensors")
    assert r.one_line_error and "past --steps" in r.err, r.err
    assert not (tmp_path / "b.safetensors").exists()
    assert cli(*base, "--steps", 20, "--resume", "-o", tmp_path / "b.safetensors").code == 0


# ------------------------------------------------------------------ issue 31: data conventions


def test_log_likelihood_refuses_data_outside_the_decoders_convention(tiny_data):
    """Raw 0..255 pixels under a Bernoulli decoder used to return NLL −4278 nats (log q > 0)."""
    m = _bernoulli_model(in_dim=64)
    raw = tiny_data[:20]
    for bad in (raw, raw.astype(np.float32), raw / 255.0):  # 0..255, and grey values in [0, 1]
        with pytest.raises(KexueError, match="prepare") as e:
            log_likelihood(m, bad, K=5)
        assert "\n" not in str(e.value) and "{0, 1}" in str(e.value)
    with pytest.raises(KexueError, match=r"\[0, 1\]|\{0, 1\}"):
        iwae_loss(m, torch.as_tensor(raw, dtype=torch.float32))
    assert torch.isfinite(iwae_loss(m, torch.as_tensor(raw / 255.0, dtype=torch.float32)))  # a loss on grey targets
    ok = log_likelihood(m, prepare(raw, "binary", "threshold"), K=5)
    assert (ok.log_q < 0).all()
    torch.manual_seed(0)
    ml = VAE(VAEConfig(in_dim=64, latent_dim=3, hidden=(8,), decoder="logistic")).eval()
    with pytest.raises(KexueError, match="8-bit"):
        log_likelihood(ml, raw, K=5)
    assert (log_likelihood(ml, prepare(raw, "8bit"), K=5).log_q < 0).all()


def test_the_training_binarisation_is_saved_and_used_to_score(cli, cli_files, tmp_path):
    d = cli_files
    m, old = VAE.load(d / "m.safetensors"), VAE.load(d / "old.safetensors")
    assert (m.binarize_, old.binarize_) == ("dynamic", None)
    from kexue.vae import scoring_binarize

    assert (scoring_binarize(m), scoring_binarize(old)) == ("stochastic", "none")
    # the README's `kexue vae score MODEL DATA.npy` on uint8 pixels: binarised as trained
    r = cli("vae", "score", d / "m.safetensors", d / "test.npy", "-K", 20, "-o", tmp_path / "a.npy")
    assert r.code == 0, r.err
    r = cli("vae", "score", d / "m.safetensors", d / "test.npy", "-K", 20, "--binarize", "stochastic",
            "-o", tmp_path / "b.npy")
    assert r.code == 0, r.err
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    r = cli("vae", "score", d / "m.safetensors", d / "test.npy", "-K", 20, "--binarize", "threshold",
            "-o", tmp_path / "c.npy")  # an explicit --binarize still wins
    assert r.code == 0, r.err
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "c.npy"))
    r = cli("vae", "score", d / "old.safetensors", d / "test.npy", "-K", 20, "--binarize", "stochastic",
            "-o", tmp_path / "d.npy")  # old files keep working with an explicit choice
    assert r.code == 0, r.err


# ------------------------------------------------------------------ issue 31: threads, Ctrl-C


def test_log_likelihood_threads_keyword(thread_spy):
    m = _bernoulli_model(in_dim=64)
    x = (torch.rand(6, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spy = thread_spy()
        a = log_likelihood(m, x, K=20, batch=3, threads=1, tracker=spy)
        assert spy.seen == [1, 1] and torch.get_num_threads() == 2
        b = log_likelihood(m, x, K=20, batch=3, tracker=(spy := thread_spy()))
        assert spy.seen == [2, 2]
        np.testing.assert_array_equal(a.log_q, b.log_q)
    finally:
        torch.set_num_threads(before)


def test_cli_ctrl_c_names_the_step_and_the_rerun_resumes(cli, cli_files, tmp_path, monkeypatch):
    import kexue.vae.fit as fit_mod

    d, ck = cli_files, tmp_path / "run.pt"
    real, calls = fit_mod.iwae_loss, []

    def interrupted(*a, **k):
        if len(calls) == 13:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    args = ("vae", "train", d / "train.npy", "--latent", 3, "--hidden", "16", "--steps", 20, "--ckpt", ck,
            "--ckpt-every", 5, "-o", tmp_path / "m.safetensors")
    monkeypatch.setattr(fit_mod, "iwae_loss", interrupted)
    r = cli(*args, "--resume")
    assert r.code == 130 and r.err.strip() == "kexue: interrupted at step 13; rerun the same command to resume", r.err
    assert not (tmp_path / "m.safetensors").exists()
    calls.clear()
    r = cli(*args)
    assert r.code == 130 and r.err.strip().endswith("rerun the same command with --resume to resume"), r.err
    monkeypatch.setattr(fit_mod, "iwae_loss", real)
    assert cli(*args, "--resume").code == 0
    a, b = VAE.load(tmp_path / "m.safetensors"), VAE.load(d / "m.safetensors")  # = one uninterrupted run
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q)
