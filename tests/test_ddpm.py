"""Tests for kexue.ddpm (SPEC 7): posterior vs Monte Carlo, the identity of 7.3, DDIM(η=1) = DDPM,
step-by-step agreement with diffusers' schedulers, exact resume, model files, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: the 'torch' extra")

from kexue.ddpm import (DDPM, DDIMSampler, DDPMSampler, NoiseSchedule, UNet, UNetConfig, cosine_schedule,
                        decoder_nll, diffusion_loss, discretized_gaussian_nll, fit_ddpm, gaussian_kl, kl_term,
                        linear_schedule, make_schedule, reverse_variances, target, to_eps_x0, variational_bound)
from kexue.utils import KexueError


@pytest.fixture(autouse=True)
def _one_thread():
    # the project's thread policy (small tensors: a second intra-op thread mostly spin-waits)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_schedule_notation_matches_ddpm_paper():
    s = linear_schedule(1000)
    bd = np.linspace(1e-4, 0.02, 1000)
    # β_t^D = β_t², ᾱ_t^D = ᾱ_t², α_t² + β_t² = 1, β̄_t² = 1 - ᾱ_t²
    assert torch.allclose(s.betas[1:] ** 2, torch.from_numpy(bd))
    assert torch.allclose(s.alpha_bars[1:] ** 2, torch.from_numpy(np.cumprod(1 - bd)), rtol=1e-12)
    assert torch.allclose(s.alphas ** 2 + s.betas ** 2, torch.ones(1001, dtype=torch.float64))
    assert s.alpha_bars.dtype == torch.float64 and s.alpha_bars[0] == 1 and s.beta_bars[0] == 0
    c = cosine_schedule(1000)
    assert float(c.alpha_bars[500] ** 2) == pytest.approx(math.cos((0.5 + 0.008) / 1.008 * math.pi / 2) ** 2
                                                          / math.cos(0.008 / 1.008 * math.pi / 2) ** 2, rel=1e-9)
    u = NoiseSchedule.from_alphas_cumprod(s.alpha_bars[1:] ** 2)
    assert torch.allclose(u.betas, s.betas, atol=1e-12)


def test_posterior_mean_and_variance_match_monte_carlo():
    # SPEC 7.1: sample x_{t-1} | x_0 then x_t | x_{t-1}; condition on x_t by regression on a grid
    s = linear_schedule(100, 1e-3, 0.2)
    g = torch.Generator().manual_seed(0)
    t, x0, n = 30, 0.7, 400_000
    x_prev = s.alpha_bars[t - 1] * x0 + s.beta_bars[t - 1] * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = s.alphas[t] * x_prev + s.betas[t] * torch.randn(n, generator=g, dtype=torch.float64)
    # linear-Gaussian: E[x_{t-1}|x_t] is linear in x_t; fit it by least squares and compare
    A = torch.stack([x_t, torch.ones_like(x_t)], 1)
    coef = torch.linalg.lstsq(A, x_prev[:, None]).solution[:, 0]
    resid_var = (x_prev - A @ coef).var()
    mean_at = lambda xt: s.posterior(torch.tensor([xt], dtype=torch.float64), torch.tensor([x0], dtype=torch.float64), t)  # noqa: E731
    m1, v = mean_at(1.0)
    m0, _ = mean_at(0.0)
    assert float(coef[0]) == pytest.approx(float(m1 - m0), abs=5e-3)
    assert float(coef[1]) == pytest.approx(float(m0), abs=5e-3)
    assert float(resid_var) == pytest.approx(float(v), rel=1e-2)
    assert float(v) == pytest.approx(float(s.posterior_variance(t)))


def test_identity_of_spec_7_3_and_sampling_mean():
    s = linear_schedule(1000)
    t = torch.arange(2, 1001)
    lhs = s.alphas[t] * s.beta_bars[t - 1] ** 2 / s.beta_bars[t] ** 2 \
        + s.alpha_bars[t - 1] * s.betas[t] ** 2 / (s.alpha_bars[t] * s.beta_bars[t] ** 2)
    assert torch.allclose(lhs, 1 / s.alphas[t], rtol=1e-12, atol=0)
    # hence posterior mean at x̂_0 = (x_t - β̄_t ε)/ᾱ_t equals (1/α_t)(x_t - β_t²/β̄_t ε)
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    for tt in (2, 17, 500, 1000):
        eps_hat, x0_hat = to_eps_x0(s, e, x, tt, "eps")
        mean, _ = s.posterior(x, x0_hat, tt)
        assert torch.allclose(mean, (x - s.betas[tt] ** 2 / s.beta_bars[tt] * e) / s.alphas[tt], atol=1e-12)


def test_parameterisations_convert_consistently():
    s = cosine_schedule(50)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 30, 50])
    xt = s.q_sample(x0, t, eps)
    for p in ("eps", "x0", "v"):
        e, x = to_eps_x0(s, target(s, x0, eps, t, p), xt, t, p)
        assert torch.allclose(e, eps, atol=1e-9) and torch.allclose(x, x0, atol=1e-9), p


def _lin_model(seed=0):
    # a fixed, non-trivial ε-model (depends on x and t) for sampler comparisons
    w = torch.randn(1, generator=torch.Generator().manual_seed(seed)).item()
    return lambda x, k: 0.3 * torch.tanh(x * w) + 0.001 * k.float().reshape(-1, *([1] * (x.ndim - 1)))


def test_ddim_eta1_all_steps_equals_ddpm_posterior():
    s = linear_schedule(100, 1e-3, 0.2)
    m = _lin_model()
    xT = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = DDPMSampler(s, "posterior")(m, x_T=xT, generator=torch.Generator().manual_seed(9))
    b = DDIMSampler(s, timesteps=range(100, 0, -1), eta=1.0)(m, x_T=xT, generator=torch.Generator().manual_seed(9))
    c = DDIMSampler(s, timesteps=range(100, 0, -1), eta=0.0)(m, x_T=xT)
    assert torch.allclose(a, b, atol=1e-10)
    assert not torch.allclose(a, c, atol=1e-3)  # and η matters
    # η = 0 is a deterministic map of the given x_T
    assert torch.equal(c, DDIMSampler(s, timesteps=range(100, 0, -1), eta=0.0)(m, x_T=xT))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_fused_sampling_path_equals_the_reference_step(prediction):
    s = cosine_schedule(60)
    m = _lin_model(1)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xT = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=dtype)
        for make in (lambda f: DDPMSampler(s, "beta", prediction=prediction, clip_x0=1.0, fused=f),
                     lambda f: DDPMSampler(s, "posterior", prediction=prediction, final_noise=True, fused=f),
                     lambda f: DDIMSampler(s, steps=12, eta=0.5, prediction=prediction, clip_x0=1.0, fused=f),
                     lambda f: DDIMSampler(s, steps=7, eta=0.0, prediction=prediction, fused=f)):
            a = make(True)(m, x_T=xT, generator=torch.Generator().manual_seed(2))
            b = make(False)(m, x_T=xT, generator=torch.Generator().manual_seed(2))
            assert a.dtype == dtype and torch.allclose(a, b, rtol=tol, atol=tol), (prediction, dtype)
            assert not a.is_inference()  # usable with autograd afterwards
    assert torch.equal(xT, torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=dtype))


def _diffusers_pair(kind, sched, **kw):
    import diffusers

    cls = diffusers.DDPMScheduler if kind == "ddpm" else diffusers.DDIMScheduler
    ref = cls(num_train_timesteps=sched.T, trained_betas=(sched.betas[1:] ** 2).numpy(), **kw)
    # diffusers keeps ᾱ in float32 and forms β_t = 1 - ᾱ_t/ᾱ_{t-1} from it, a relative error of
    # ~1e-3 near t = 1; give it float64 copies of its own schedule so both sides compute in float64
    for name in ("alphas_cumprod", "alphas", "betas", "one", "final_alpha_cumprod"):
        if isinstance(getattr(ref, name, None), torch.Tensor):
            setattr(ref, name, getattr(ref, name).double())
    return ref


@pytest.mark.parametrize("variance,clip", [("posterior", False), ("beta", False), ("posterior", True)])
def test_ddpm_steps_agree_with_diffusers(variance, clip):
    ours = linear_schedule(1000)
    ref = _diffusers_pair("ddpm", ours, variance_type="fixed_small" if variance == "posterior" else "fixed_large",
                          clip_sample=clip)
    ref.set_timesteps(1000)
    # same schedule as diffusers (its float32 ᾱ), so the comparison tests the step formulas
    ours = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.numpy())
    smp = DDPMSampler(ours, variance, clip_x0=1.0 if clip else None)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    worst = 0.0
    for k in ref.timesteps.tolist():
        out = torch.randn(x.shape, generator=g, dtype=torch.float64)
        gen_seed = 1000 + k
        a = ref.step(out, k, x, generator=torch.Generator().manual_seed(gen_seed)).prev_sample
        t = k + 1
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=torch.float64) if smp.needs_noise(t, t - 1) else None
        b = smp.step(out, t, t - 1, x, noise)
        worst = max(worst, float((a - b).abs().max()))
        x = a
    assert worst < 1e-5


@pytest.mark.parametrize("eta,steps,clip", [(0.0, 50, False), (1.0, 20, False), (0.5, 10, True)])
def test_ddim_steps_agree_with_diffusers(eta, steps, clip):
    ours = linear_schedule(1000)
    ref = _diffusers_pair("ddim", ours, clip_sample=clip)
    ref.set_timesteps(steps)
    ours = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod.numpy())
    smp = DDIMSampler(ours, steps=steps, eta=eta, clip_x0=1.0 if clip else None)
    assert smp.timesteps() == [k + 1 for k in ref.timesteps.tolist()]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    worst = 0.0
    ts = smp.timesteps()
    for t, s in zip(ts, ts[1:] + [0]):
        out = torch.randn(x.shape, generator=g, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        # SPEC 7.5 uses x̂_0 in κ x_t + λ x̂_0, i.e. ε re-derived from the clipped x̂_0
        a = ref.step(out, t - 1, x, eta=eta, variance_noise=noise, use_clipped_model_output=clip).prev_sample
        b = smp.step(out, t, s, x, noise if smp.needs_noise(t, s) else None)
        worst = max(worst, float((a - b).abs().max()))
        x = a
    assert worst < 1e-5


def test_spec_7_4_which_variance_is_exact():
    from kexue.ddpm.toy import variance_check

    rows = {(r[0], r[1]): r for r in variance_check(n=2000, dim=8, T=100, seed=0)}
    # closed form (column 2): the exact choice reproduces every marginal q(x_t) to rounding error
    assert rows[("single point", "posterior")][2] < 1e-9
    assert rows[("standard normal", "beta")][2] < 1e-9
    assert rows[("single point", "beta")][2] > 0.1
    assert rows[("standard normal", "posterior")][2] > 0.01
    # the Monte Carlo run of DDPMSampler agrees with the closed form within sampling error
    for r in rows.values():
        assert abs(r[3] - r[2]) < 0.1


def test_resume_reproduces_the_loss_curve(tmp_path):
    s = linear_schedule(50, 1e-3, 0.2)
    X = torch.rand(64, 1, 8, 8) * 2 - 1

    def net():
        torch.manual_seed(0)
        return UNet(base=8, mults=(1, 2))

    full = fit_ddpm(net(), X, s, steps=12, batch_size=16, seed=3, ema_decay=0.9)
    ck = tmp_path / "c.pt"
    fit_ddpm(net(), X, s, steps=6, batch_size=16, seed=3, ema_decay=0.9, ckpt=ck)
    rest = fit_ddpm(net(), X, s, steps=12, batch_size=16, seed=3, ema_decay=0.9, ckpt=ck, resume=True)
    assert rest.losses == full.losses and len(full.losses) == 12
    assert (full.legs, rest.legs) == (1, 2) and rest.seconds > 0  # the time of both processes
    for p, q in zip(full.ema.parameters(), rest.ema.parameters()):
        assert torch.equal(p, q)


def test_bound_and_samplers_resume_from_their_checkpoints(tmp_path, killer):
    """The bound (killed between t-strata) and DDPM / DDIM sampling (killed between steps)
    continue from their checkpoints with the same numbers as one uninterrupted call, count
    both legs, and read a finished computation back without running the network."""
    from conftest import Killed

    from kexue.ddpm.bound import variational_bound

    s = linear_schedule(30, 1e-3, 0.2)
    torch.manual_seed(0)
    net = UNet(base=8, mults=(1, 2)).eval()
    X = torch.round(torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 255) / 127.5 - 1
    kw = dict(timesteps=12, batch_size=4, seed=2)
    full = variational_bound(net, X, s, **kw)
    ck = tmp_path / "bound.pt"
    with pytest.raises(Killed):
        variational_bound(net, X, s, ckpt=ck, ckpt_every=2, tracker=killer(7), **kw)
    r = variational_bound(net, X, s, ckpt=ck, ckpt_every=2, **kw)
    assert np.array_equal(r.nats, full.nats) and (full.legs, r.legs) == (1, 2)
    again = variational_bound(net, X, s, ckpt=ck, tracker=killer(0), **kw)
    assert np.array_equal(again.nats, full.nats) and (again.legs, again.seconds) == (2, r.seconds)

    xT = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for smp in (DDPMSampler(s, "posterior", clip_x0=1.0), DDIMSampler(s, steps=10, eta=1.0)):
        def draw(smp=smp, **k):
            return smp(net, x_T=xT, generator=torch.Generator().manual_seed(4), **k)

        a, ck = draw(), tmp_path / f"{type(smp).__name__}.pt"
        with pytest.raises(Killed):
            draw(ckpt=ck, ckpt_every=3, tracker=killer(7))
        assert torch.equal(draw(ckpt=ck, ckpt_every=3), a) and smp.last_run["legs"] == 2
        assert torch.equal(draw(ckpt=ck, tracker=killer(0)), a) and smp.last_run["legs"] == 2


def test_loss_weightings_and_unet_shapes():
    s = linear_schedule(100, 1e-3, 0.2)
    m = UNet(base=8, mults=(1, 2, 2))
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert m(x, torch.tensor([0, 1, 2, 99])).shape == x.shape
    for w in (None, "x0", "min_snr", lambda t: torch.ones(len(t))):
        for p in ("eps", "x0", "v"):
            v = diffusion_loss(m, x, s, prediction=p, weighting=w, generator=torch.Generator().manual_seed(0))
            assert torch.isfinite(v) and v > 0
    with pytest.raises(KexueError):
        diffusion_loss(m, x, s, weighting="nope")
    with pytest.raises(KexueError):
        m(torch.rand(2, 1, 27, 27), torch.tensor([0, 1]))


def test_model_file_roundtrip_and_errors(tmp_path):
    m = DDPM(UNetConfig(base=8, mults=(1, 2)), cosine_schedule(30), side=8, info={"steps": 3})
    p = tmp_path / "m.safetensors"
    m.save(p)
    m2 = DDPM.load(p)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(m.net(x, torch.tensor([3, 4])), m2.net(x, torch.tensor([3, 4])))
    assert torch.equal(m2.schedule.alpha_bars, m.schedule.alpha_bars) and m2.prediction == "eps"
    assert m2.info == {"steps": 3} and m2.net.config == m.net.config and m2.side == 8
    assert np.array_equal(m.sample(3, steps=4, seed=1), m2.sample(3, steps=4, seed=1))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    for bad in ("bad.safetensors", "missing.safetensors"):
        with pytest.raises(KexueError):
            DDPM.load(tmp_path / bad)
    from kexue.io import save_fitted

    save_fitted(tmp_path / "other.safetensors", "kexue.VAE", {"w": np.zeros(2)}, {})
    with pytest.raises(KexueError, match="not a kexue.DDPM"):
        DDPM.load(tmp_path / "other.safetensors")
    for bad in ([], [0.5, 1.5], [float("nan")]):
        with pytest.raises(KexueError):
            NoiseSchedule(bad)
    s = m.schedule
    with pytest.raises(KexueError):
        DDIMSampler(s, steps=5, eta=2.0)
    with pytest.raises(KexueError):
        DDIMSampler(s, timesteps=[3, 5])
    with pytest.raises(KexueError):
        DDPMSampler(s)(lambda x, k: x, x_T=torch.tensor([[float("nan")]]))
    with pytest.raises(KexueError):
        m.sample(2, steps=0)
    with pytest.raises(KexueError):
        DDPM(UNetConfig(base=8, mults=(1, 2, 2)), s, side=6)


# ---------------------------------------------------------------- the variational bound (SPEC 7.6)
# Gaussian toy data x_0 ~ N(m, s² I): q(x_t) = N(ᾱ_t m, ᾱ_t² s² + β̄_t²) and the optimal ε-predictor
# is E[ε | x_t] = β̄_t (x_t - ᾱ_t m)/(ᾱ_t² s² + β̄_t²); the exact NLL is -log N(x_0; m, s²).
TOY_M, TOY_S = 0.3, 0.5


def _toy_predictor(sched):
    ab, bb = sched.alpha_bars, sched.beta_bars

    def f(x, k):
        t = (k + 1).long()
        a, b = (v[t].reshape(-1, *[1] * (x.ndim - 1)) for v in (ab, bb))
        return b * (x - a * TOY_M) / (a ** 2 * TOY_S ** 2 + b ** 2)
    return f


def _toy_gap(T, variance, dim=16):
    n = 16384 if T <= 50 else 4096  # enough images that the T = 50 gap stands ~10 s.e. above 0
    sched = linear_schedule(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    x0 = TOY_M + TOY_S * torch.randn(n, dim, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    exact = 0.5 * ((x0 - TOY_M) ** 2).sum(1) / TOY_S ** 2 + 0.5 * dim * math.log(2 * math.pi * TOY_S ** 2)
    vb = variational_bound(_toy_predictor(sched), x0, sched, variance=variance, decoder="gaussian", seed=1,
                           batch_size=n)
    gap = vb.nats - exact.numpy()
    return gap.mean(), gap.std(ddof=1) / math.sqrt(n)


@pytest.mark.slow
def test_bound_on_gaussian_toy_is_above_the_exact_nll_and_tightens_with_T():
    # With σ_t² = β_t² the expected gap is ≈ 1.1 nats/dim / T for this schedule family (it is the
    # reverse chain's discretisation error, which vanishes as T grows); the stated gap is 1.5 D/T.
    dim = 16
    for T in (50, 400):
        gap, se = _toy_gap(T, "beta", dim=dim)
        assert gap > -3 * se, (T, gap, se)
        assert gap < 1.5 * dim / T + 3 * se, (T, gap, se)
    g50, se50 = _toy_gap(50, "beta", dim=dim)
    assert g50 > 4 * se50  # the gap at small T is real, not Monte Carlo noise
    # σ_t² = posterior variance: still a bound, looser (≈ 0.9 nats/dim at T = 200), also tightening
    p50, _ = _toy_gap(50, "posterior", dim=dim)
    p200, se = _toy_gap(200, "posterior", dim=dim)
    assert p200 > 0.3 * dim and p50 > p200 + 10 * se


def test_each_kl_term_matches_numerical_integration():
    from scipy import integrate
    from scipy.stats import norm

    sched = linear_schedule(100, 1e-3, 0.2)
    model = _toy_predictor(sched)
    x0 = torch.tensor([[0.4, -0.7]], dtype=torch.float64)
    x_t = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    for variance in ("posterior", "beta"):
        for t in (2, 10, 60, 100):
            got = float(kl_term(model, x0, x_t, t, sched, variance=variance)[0])
            # reference: SPEC 7.1 for q, SPEC 7.3's ε-form of the mean for p, each dimension integrated
            a, b2, ab_p = (float(v) for v in (sched.alphas[t], sched.beta_sq[t], sched.alpha_bars[t - 1]))
            bb2, bbp2 = float(sched.beta_bars[t]) ** 2, float(sched.beta_bars[t - 1]) ** 2
            eps = model(x_t, torch.tensor([t - 1]))
            var_p = bbp2 * b2 / bb2 if variance == "posterior" else b2
            ref = 0.0
            for d in range(2):
                mq = a * bbp2 / bb2 * float(x_t[0, d]) + ab_p * b2 / bb2 * float(x0[0, d])
                mp = (float(x_t[0, d]) - b2 / math.sqrt(bb2) * float(eps[0, d])) / a
                q, p = norm(mq, math.sqrt(bbp2 * b2 / bb2)), norm(mp, math.sqrt(var_p))
                f = lambda x, q=q, p=p: q.pdf(x) * (q.logpdf(x) - p.logpdf(x))  # noqa: E731
                ref += integrate.quad(f, mq - 12 * q.std(), mq + 12 * q.std(), limit=200, epsabs=1e-13)[0]
            assert got == pytest.approx(ref, rel=1e-6, abs=1e-10), (variance, t)
    # the closed form itself against a case worked by hand: KL(N(1, 1) ‖ N(0, 4)) = log 2 + 2/8 - 1/2
    one = torch.ones(1, 1, dtype=torch.float64)
    assert float(gaussian_kl(one, 1.0, 0 * one, 4.0)) == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-12)


def test_discretised_decoder_is_a_distribution_over_256_levels():
    from scipy.stats import norm

    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)[:, None]
    for mean, var in ((0.3, 1e-4), (-0.99, 4e-3), (1.0, 0.5), (0.0, 1e-7)):
        nll = discretized_gaussian_nll(levels, torch.full_like(levels, mean), var)
        assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-9)
        # brute force with scipy's Φ at the bin edges of three levels: the two ends and a middle one
        sd = math.sqrt(var)
        for i in (0, 100, 255):
            lo = -np.inf if i == 0 else (float(levels[i]) - 1 / 255 - mean) / sd
            hi = np.inf if i == 255 else (float(levels[i]) + 1 / 255 - mean) / sd
            ref = -math.log(max(norm.cdf(hi) - norm.cdf(lo), 1e-300)) if norm.cdf(hi) - norm.cdf(lo) > 1e-300 else None
            if ref is not None:
                assert float(nll[i]) == pytest.approx(ref, rel=1e-7)
    # deep in a tail the log-difference stays finite (plain Φ(b) - Φ(a) would be 0 - 0)
    far = discretized_gaussian_nll(torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[-0.9]]).double(), 1e-4)
    assert torch.isfinite(far).all() and float(far) > 1000
    # the decoder term uses σ_1² = β_1² for "beta" and the t = 2 posterior variance for "posterior"
    s = linear_schedule(100, 1e-3, 0.2)
    assert float(reverse_variances(s, "beta")[1]) == pytest.approx(1e-3)
    assert float(reverse_variances(s, "posterior")[1]) == pytest.approx(float(s.posterior_variance(2)))
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    assert torch.isfinite(decoder_nll(_toy_predictor(s), x0, x0 + 0.01, s)).all()


def test_stratified_bound_is_unbiased_and_model_nll_reports_bits_per_dim():
    T = 60
    sched = linear_schedule(T, 1e-3 * 1000 / 600, 0.2)
    x0 = TOY_M + TOY_S * torch.randn(2000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = variational_bound(_toy_predictor(sched), x0, sched, decoder="gaussian", seed=2, batch_size=2000)
    est = variational_bound(_toy_predictor(sched), x0, sched, decoder="gaussian", timesteps=6, seed=3,
                            batch_size=2000)
    se = math.hypot(full.nats.std() / math.sqrt(2000), est.nats.std() / math.sqrt(2000))
    assert abs(est.nats.mean() - full.nats.mean()) < 4 * se
    assert full.prior.mean() == pytest.approx(est.prior.mean())
    # on a model: bits/dim = mean nats / (D ln 2), deterministic given the seed
    m = DDPM(UNetConfig(base=8, mults=(1, 2)), linear_schedule(20, 1e-3, 0.3), side=8)
    X = np.random.default_rng(0).integers(0, 256, (6, 64)).astype(np.uint8)
    a, b = m.nll(X, timesteps=4, seed=5), m.nll(X, timesteps=4, seed=5)
    assert a.bits_per_dim == b.bits_per_dim == pytest.approx(a.nats.mean() / (64 * math.log(2)))
    with pytest.raises(KexueError):
        m.nll(np.zeros((2, 81)))


def test_diffusers_unet_plugs_into_sampler():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      layers_per_block=1, norm_num_groups=4).eval()
    s = linear_schedule(1000)
    xT = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = DDIMSampler(s, steps=5)(net, x_T=xT)
    b = DDIMSampler(s, steps=5)(net, x_T=xT)
    assert a.shape == xT.shape and torch.equal(a, b) and torch.isfinite(a).all()


# ---------------------------------------------------------------- the CLI
TINY = ("--T", 20, "--base", 8, "--mults", "1,2", "--batch-size", 8, "--ckpt-every", 2)


@pytest.fixture
def tiny_data(tmp_path):
    X = np.random.default_rng(0).integers(0, 256, (32, 8, 8)).astype(np.uint8)
    p = tmp_path / "imgs.npy"
    np.save(p, X)
    return p


def test_cli_train_sample_nll_roundtrip(cli, tiny_data, tmp_path):
    import json
    import stat

    model = tmp_path / "m.safetensors"
    r = cli("ddpm", "train", tiny_data, "-o", model, "--steps", 3, *TINY)
    assert r.code == 0, r.err
    grid, arr = tmp_path / "g.png", tmp_path / "s.npy"
    assert cli("ddpm", "sample", "-m", model, "-n", 5, "--steps", 4, "-o", grid, "--threads", 1).code == 0
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and stat.S_IMODE(grid.stat().st_mode) & 0o044
    assert cli("ddpm", "sample", "-m", model, "-n", 5, "--steps", 4, "-o", arr).code == 0
    S = np.load(arr)
    assert S.shape == (5, 64) and S.min() >= 0 and S.max() <= 1
    r = cli("ddpm", "nll", model, tiny_data, "-n", 4, "--timesteps", 3, "--json", "-")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["images"] == 4 and d["dim"] == 64 and d["bits_per_dim"] > 0


def test_cli_bad_options_are_one_line_errors_and_write_nothing(cli, tiny_data, tmp_path):
    model = tmp_path / "m.safetensors"
    bad_train = [("--lr", -1), ("--lr", "nan"), ("--ema", 1.5), ("--steps", 0), ("--T", 1), ("--mults", "1,x"),
                 ("--schedule", "cubic"), ("--prediction", "y")]
    for flag, value in bad_train:
        r = cli("ddpm", "train", tiny_data, "-o", model, "--steps", 2, *TINY, flag, value)
        assert r.one_line_error, (flag, value, r.err)
    for out in (tmp_path / "m.pt", tmp_path / "nodir" / "m.safetensors", tmp_path):
        assert cli("ddpm", "train", tiny_data, "-o", out, "--steps", 2, *TINY).one_line_error
    assert cli("ddpm", "train", tmp_path / "none.npy", "-o", model, *TINY).one_line_error
    assert not model.exists()
    assert cli("ddpm", "train", tiny_data, "-o", model, "--steps", 2, *TINY).code == 0
    grid = tmp_path / "g.png"
    for extra in (("--steps", 0), ("--eta", 2), ("-n", 0), ("--sampler", "euler"), ("--threads", 0)):
        r = cli("ddpm", "sample", "-m", model, "-o", grid, *extra)
        assert r.one_line_error, (extra, r.err)
    for out in (tmp_path / "g.jpg", tmp_path / "nodir" / "g.png"):
        assert cli("ddpm", "sample", "-m", model, "-o", out, "--steps", 2).one_line_error
    assert cli("ddpm", "sample", "-m", tmp_path / "none.safetensors", "-o", grid).one_line_error
    assert cli("ddpm", "sample", "-m", tiny_data, "-o", grid).one_line_error  # not a model file
    assert not grid.exists()
    assert cli("ddpm", "nll", model, tiny_data, "--json", tmp_path / "x.txt").one_line_error
    assert cli("ddpm", "nll", model, tmp_path / "none.npy").one_line_error


def test_cli_resume_refuses_another_run(cli, tiny_data, tmp_path):
    model, ck = tmp_path / "m.safetensors", tmp_path / "m.ckpt"
    assert cli("ddpm", "train", tiny_data, "-o", model, "--steps", 4, *TINY, "--ckpt", ck).code == 0
    other = tmp_path / "other.npy"
    np.save(other, np.random.default_rng(1).integers(0, 256, (32, 8, 8)).astype(np.uint8))
    cases = [((tiny_data, "--base", 16), "base=8 there vs 16 now"), ((tiny_data, "--T", 30), "T=20 there vs 30 now"),
             ((other,), "other data"), ((tiny_data, "--steps", 2), "past --steps 2")]
    for args, words in cases:
        data, *extra = args
        r = cli("ddpm", "train", data, "-o", tmp_path / "r.safetensors", "--steps", 6, *TINY, "--ckpt", ck, "--resume",
                *extra)
        assert r.one_line_error and words in r.err, (args, r.err)
    assert not (tmp_path / "r.safetensors").exists()
    # the same run resumes
    assert cli("ddpm", "train", tiny_data, "-o", model, "--steps", 6, *TINY, "--ckpt", ck, "--resume").code == 0


# ---------------------------------------------------------------- schedules at every step count (issue 31)


class _Recorder:
    """A tiny deterministic 'network' that records the timesteps it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, k):
        self.calls.append(int(k[0]))
        return 0.1 * x + 1e-4 * k.to(x.dtype).view(-1, 1, 1, 1)


def _check_run(sampler, T, expected_steps, seed):
    ts = sampler.timesteps()
    full = ts + [0]
    assert len(ts) == expected_steps, (len(ts), expected_steps)
    assert all(a > b for a, b in zip(full, full[1:])), ts  # strictly decreasing, no repeats, ends at 0
    assert 1 <= ts[-1] and ts[0] <= T
    net = _Recorder()
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    out = sampler(net, x_T=x_T, generator=torch.Generator().manual_seed(seed))
    assert net.calls == [t - 1 for t in ts], "one network call per timestep, at diffusers' index t - 1"
    assert out.shape == x_T.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_every_step_count_every_spacing_gives_a_valid_run(schedule, prediction):
    """For every β schedule × spacing × prediction type and every step count 1..T (T = 50, and the
    small T where off-by-ones live): timesteps strictly decrease, never repeat, end at 0, there
    are exactly `steps` of them, and the sampler runs (diffusers had a wrong previous timestep
    with linspace spacing and broke at 1,000 inference steps)."""
    for T in (1, 2, 3, 50):
        sched = make_schedule(schedule, T)
        for spacing in ("leading", "trailing", "linspace"):
            for steps in range(1, T + 1):
                for eta in ((0.0, 1.0) if steps % 7 == 0 or T < 50 else (steps % 2 * 1.0,)):
                    smp = DDIMSampler(sched, steps=steps, eta=eta, spacing=spacing, prediction=prediction, clip_x0=1.0)
                    _check_run(smp, T, steps, seed=steps)
            if spacing != "leading":
                assert DDIMSampler(sched, steps=1, spacing=spacing).timesteps() == [T], "one step jumps from T"
        for variance in ("posterior", "beta"):
            _check_run(DDPMSampler(sched, variance=variance, prediction=prediction), T, T, seed=T)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_t1000_step_counts_at_the_edges(spacing):
    sched = make_schedule("linear", 1000)
    for steps in (1, 2, 3, 7, 999, 1000):
        _check_run(DDIMSampler(sched, steps=steps, eta=1.0, spacing=spacing), 1000, steps, seed=steps)
    assert DDIMSampler(sched, steps=1000, spacing=spacing).timesteps() == list(range(1000, 0, -1))
    with pytest.raises(KexueError, match="1..1000"):
        DDIMSampler(sched, steps=1001, spacing=spacing)


def test_library_calls_take_threads_for_the_call_only(thread_spy):
    """Issue 31: library calls follow torch's setting unless ``threads`` says otherwise (the CLI
    passes its --threads); the count applies inside the call and is restored after it."""
    m = DDPM(UNetConfig(base=4, mults=(1,)), linear_schedule(10), side=8)
    X = np.random.default_rng(0).random((3, 64))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for call in (lambda **kw: m.sample(2, steps=3, **kw), lambda **kw: m.nll(X, timesteps=2, **kw),
                     lambda **kw: m.fit(X, steps=2, batch_size=2, **kw)):
            spy = thread_spy()
            call(threads=1, tracker=spy)
            assert spy.seen and set(spy.seen) == {1} and torch.get_num_threads() == 2
            spy = thread_spy()
            call(tracker=spy)
            assert set(spy.seen) == {2}
    finally:
        torch.set_num_threads(before)
