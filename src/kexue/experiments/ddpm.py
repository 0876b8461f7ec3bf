"""Experiment ``ddpm``: DDPM/DDIM trained on MNIST-5k, sample quality per sampler, SPEC 7.4 check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

TITLE = "DDPM = Bayes + denoising: DDPM and DDIM samplers on MNIST"
SPEC = "7"

# Full mode is sized for what 2 CPU cores gave in the time left (see docs/ddpm.md): 4,000 steps,
# about 20 minutes on an idle 2-core machine; the hour of training did not fit.
CONFIGS = {
    "quick": {"T": 200, "beta_start": 5e-4, "beta_end": 0.1, "unet": {"base": 8, "mults": [1, 2]},
              "steps": 400, "batch_size": 64, "lr": 2e-3, "ema_decay": 0.99, "n_samples": 64,
              "ddim_steps": [10, 20, 50]},
    "full": {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02, "unet": {"base": 16, "mults": [1, 2, 2]},
             "steps": 4000, "batch_size": 64, "lr": 1e-3, "ema_decay": 0.995, "n_samples": 64,
             "ddim_steps": [10, 20, 50, 100]},
}


def config(quick: bool) -> dict:
    return CONFIGS["quick" if quick else "full"]


def _key(cfg: dict, seed: int) -> str:
    train_part = {k: cfg[k] for k in ("T", "beta_start", "beta_end", "unet", "steps", "batch_size", "lr", "ema_decay")}
    return hashlib.sha256(json.dumps([train_part, seed], sort_keys=True).encode()).hexdigest()[:12]


def trained_model(cfg: dict, cache: Path, seed: int, tracker=None):
    """Train (or resume / reuse) the ε-network for ``cfg``; checkpoint in ``cache`` keyed by config+seed."""
    import torch

    from kexue.data import load_mnist5k
    from kexue.ddpm import UNet, fit_ddpm, images_to_model, linear_schedule

    sched = linear_schedule(cfg["T"], cfg["beta_start"], cfg["beta_end"])
    X, _ = load_mnist5k()
    Xm = images_to_model(X / 255.0, 28)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = UNet(**{**cfg["unet"], "mults": tuple(cfg["unet"]["mults"])})
    ckpt = Path(cache) / f"ddpm_{_key(cfg, seed)}.pt"
    res = fit_ddpm(net, Xm, sched, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
                   ema_decay=cfg["ema_decay"], ckpt=ckpt, ckpt_every=200, resume=True, tracker=tracker)
    return res, sched


def toy_variance_check(n: int = 2000, dim: int = 64, T: int = 1000, seed: int = 0) -> list[list]:
    """SPEC 7.4 on two toy data sets with the *exact* ε-model, run through DDPMSampler.step.

    Single point x_0 = c: ε*(x_t, t) = (x_t - ᾱ_t c)/β̄_t, q(x_t) = N(ᾱ_t c, β̄_t² I).
    Standard normal data: ε*(x_t, t) = E[ε | x_t] = β̄_t x_t, q(x_t) = N(0, I) for every t.
    The chain starts from the exact q(x_T); a variance choice is exact when every reverse marginal
    p(x_t) equals q(x_t). Rows: [data, variance, max_t |Var p(x_t)/Var q(x_t) - 1| in closed form
    (float64 mean/variance recursion of the linear-Gaussian chain), the same by Monte Carlo with
    ``n`` chains of dimension ``dim``, |E p(x_0) - E q(x_0)| by Monte Carlo].
    The last step also draws its noise (``final_noise``), as the exact reverse chain does.
    """
    import torch

    from kexue.ddpm import DDPMSampler, linear_schedule

    sched = linear_schedule(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    c = 0.8
    ab, bb = sched.alpha_bars, sched.beta_bars
    models = {  # exact ε-models; the network index is k = t - 1
        "single point": (lambda x, k: (x - float(ab[int(k[0]) + 1]) * c) / float(bb[int(k[0]) + 1]),
                         lambda t: (float(ab[t]) * c, float(bb[t]) ** 2)),
        "standard normal": (lambda x, k: float(bb[int(k[0]) + 1]) * x, lambda t: (0.0, 1.0)),
    }
    rows = []
    for data, (model, q) in models.items():
        for variance in ("posterior", "beta"):
            smp = DDPMSampler(sched, variance, final_noise=True)
            g = torch.Generator().manual_seed(seed)
            m, v = q(T)
            x = m + v ** 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
            cf_err = mc_err = 0.0
            for t in range(T, 0, -1):
                k = torch.full((n,), t - 1)
                x = smp.step(model(x, k), t, t - 1, x, torch.randn(n, dim, generator=g, dtype=torch.float64))
                # closed form of the same step: x ← a x + b + σ z with x̂_0 = c or ᾱ_t x_t
                k1 = float(sched.alphas[t] * bb[t - 1] ** 2 / bb[t] ** 2)
                k2 = float(ab[t - 1] * sched.betas[t] ** 2 / bb[t] ** 2)
                a, b = (k1, k2 * c) if data == "single point" else (k1 + k2 * float(ab[t]), 0.0)
                m, v = a * m + b, a * a * v + smp.sigma2(t)
                if t > 1:  # Var q(x_0) = 0 for the single point; compare the means there instead
                    qv = q(t - 1)[1]
                    cf_err = max(cf_err, abs(v / qv - 1))
                    mc_err = max(mc_err, abs(float(x.var(0).mean()) / qv - 1))
            rows.append([data, variance, cf_err, mc_err, abs(float(x.mean()) - q(0)[0])])
    return rows


def _baselines(X01, n: int, rng):
    """Weak samplers that give the FD a scale: per-pixel Gaussian noise with MNIST's pixel means and
    standard deviations, and a Gaussian in the top-30 PCA space of MNIST-5k."""
    import numpy as np
    from sklearn.decomposition import PCA

    mu, sd = X01.mean(0), X01.std(0)
    noise = np.clip(mu + sd * rng.standard_normal((n, X01.shape[1])), 0, 1)
    pca = PCA(30, random_state=0).fit(X01)
    z = rng.standard_normal((n, 30)) * np.sqrt(pca.explained_variance_)
    return {"Gaussian noise (pixel mean/std)": noise.astype(np.float32),
            "PCA-30 Gaussian": np.clip(pca.inverse_transform(z), 0, 1).astype(np.float32)}


def _grid_figure(panels: dict, side: int = 28, k: int = 8):
    import numpy as np
    from matplotlib.figure import Figure

    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows))
    for i, (title, X) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        m = min(k * k, len(X))
        kk = int(np.ceil(np.sqrt(m)))
        grid = np.ones((kk * (side + 1), kk * (side + 1)))
        for j in range(m):
            r, c = divmod(j, kk)
            grid[r * (side + 1):r * (side + 1) + side, c * (side + 1):c * (side + 1) + side] = X[j].reshape(side, side)
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return fig


def run(ctx) -> None:
    from kexue.utils import torch_threads

    with torch_threads(1):
        _run(ctx)


def _run(ctx) -> None:
    import time

    import numpy as np
    import torch
    from matplotlib.figure import Figure

    from kexue.data import load_mnist5k, load_mnist_test
    from kexue.ddpm import DDIMSampler, DDPMSampler, model_to_images
    from kexue.quality import classify, mnist_classifier, sample_quality, to_unit
    from kexue.utils import atomic_path

    cfg = config(ctx.quick)
    N, T = cfg["n_samples"], cfg["T"]
    mode = "quick" if ctx.quick else "full"
    ctx.metric("mode", mode)
    ctx.metric("config", cfg)
    ctx.text(f"""
**Mode: {mode}.** ε-network: kexue's compact U-Net ({cfg['unet']}), linear schedule with T = {T}
(β_t² from {cfg['beta_start']} to {cfg['beta_end']}), trained on MNIST-5k scaled to [-1, 1] for
{cfg['steps']} steps of batch {cfg['batch_size']} (Adam, lr {cfg['lr']}, gradient clipping 1, EMA
decay {cfg['ema_decay']}; samples use the EMA weights) with the loss of SPEC 7.2. Every sampler
starts from the *same* {N} initial noises x_T and clips x̂_0 to [-1, 1]. Quality: a small CNN
trained on MNIST-5k (kexue.quality) — Fréchet distance (FD) between its penultimate features of
the samples and of the 10,000 MNIST test images, mean max-softmax confidence, and the entropy of
the predicted-class histogram (log 10 = 2.303 is even coverage of the ten digits). With only {N}
samples FD carries a large small-sample bias, so compare rows with each other and with the
calibration rows computed at the same N, not with published FIDs.
""")
    clf = mnist_classifier(ctx.cache, ctx.seed, tracker=ctx.tracker)
    Xte, _ = load_mnist_test(ctx.data_dir)
    ref_f, _ = classify(clf, to_unit(Xte))
    X, _ = load_mnist5k()
    X01 = to_unit(X)
    rng = np.random.default_rng(ctx.seed)

    # ---- calibration: what FD means at this N
    calib = {"real MNIST-5k images (train set)": X01[rng.choice(len(X01), N, replace=False)]}
    calib.update(_baselines(X01, N, rng))
    crow = []
    for name, S in calib.items():
        q = sample_quality(clf, S, ref_f)
        crow.append([name, q.fd, q.confidence, q.mode_entropy])
        ctx.metric(f"calibration/{name}/fd", q.fd)
    ctx.table("calibration", ["images (N = %d)" % N, "FD", "confidence", "mode entropy"], crow,
              caption="Calibration of the metric: real images and weak baselines, same N as the samplers")

    # ---- training (resumes from / reuses the checkpoint in the shared cache)
    t0 = time.perf_counter()
    res, sched = trained_model(cfg, ctx.cache, ctx.seed, tracker=ctx.tracker)
    ctx.metric("train_seconds_this_run", time.perf_counter() - t0)
    ctx.metric("final_loss_mean_last100", float(np.mean(res.losses[-100:])))
    net = res.ema.eval()
    losses = np.asarray(res.losses)
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot(111)
    w = max(len(losses) // 50, 1)
    ax.plot(np.convolve(losses, np.ones(w) / w, mode="valid"))
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean of {w})")
    ax.set_yscale("log")
    ctx.figure("loss", fig, caption="Training loss ‖ε − ε_θ‖² (SPEC 7.2)")

    # ---- samplers
    samplers = [(f"DDPM-{T}, σ²=posterior", T, "-", DDPMSampler(sched, "posterior", clip_x0=1.0)),
                (f"DDPM-{T}, σ²=β²", T, "-", DDPMSampler(sched, "beta", clip_x0=1.0))]
    for s in cfg["ddim_steps"]:
        for eta in (0.0, 1.0):
            samplers.append((f"DDIM-{s}, η={eta:g}", s, f"{eta:g}", DDIMSampler(sched, steps=s, eta=eta, clip_x0=1.0)))
    xT = torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(ctx.seed + 1))
    ctx.out.mkdir(parents=True, exist_ok=True)
    rows, panels = [], {}
    for label, steps, eta, smp in ctx.track(samplers, "samplers", total=len(samplers)):
        # samples are cached beside the report so an interrupted run resumes instead of resampling
        cache = ctx.out / f"samples_{_key(cfg, ctx.seed)}_{N}_{hashlib.sha256(label.encode()).hexdigest()[:10]}.npz"
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                S, wall = z["samples"], float(z["wall"])
        else:
            t0 = time.perf_counter()
            S = model_to_images(smp(net, x_T=xT.clone(), generator=torch.Generator().manual_seed(ctx.seed + 2)))
            wall = time.perf_counter() - t0
            with atomic_path(cache, parents=True) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, samples=S, wall=np.float64(wall))
        q = sample_quality(clf, S, ref_f)
        rows.append([label, steps, eta, q.fd, q.confidence, q.mode_entropy, wall])
        ctx.metric(f"samplers/{label}", {"fd": q.fd, "confidence": q.confidence, "mode_entropy": q.mode_entropy,
                                         "wall_s": wall, "class_hist": q.class_hist})
        panels[label] = S
    ctx.table("samplers", ["sampler", "network calls", "η", "FD ↓", "confidence ↑", "mode entropy ↑", "wall s"], rows,
              caption=f"Sample quality per sampler ({N} samples each, same x_T; wall time on this shared 2-core CPU)")
    ctx.figure("grids", _grid_figure(panels), caption="First 64 samples of each sampler (same x_T everywhere)")
    fd = {r[0]: r[3] for r in rows}
    ref_label = f"DDPM-{T}, σ²=posterior"
    ddim50 = "DDIM-50, η=0"
    if ddim50 in fd:
        ratio = fd[ddim50] / fd[ref_label]
        ctx.metric("fd_ratio_ddim50_eta0_vs_ddpm_posterior", ratio)
        ctx.text(f"FD(DDIM-50, η=0) / FD({ref_label}) = **{ratio:.3f}** (the issue asks for ≤ 1.2).")

    # ---- SPEC 7.4 on toy data
    trows = toy_variance_check(n=500 if ctx.quick else 1000, dim=64, T=T, seed=ctx.seed)
    ctx.table("spec74", ["data", "σ_t²", "max over t of rel. error of Var p(x_t) (closed form)", "same (Monte Carlo)",
                         "error of E p(x₀) (Monte Carlo)"], trows, caption="SPEC 7.4 with the exact ε-model, "
              "linear schedule with T = %d, chains started from q(x_T)" % T)
    for r in trows:
        ctx.metric(f"spec74/{r[0]}/{r[1]}", r[2])
    ctx.text("""
SPEC 7.4 says σ_t² = β̄_{t-1}²β_t²/β̄_t² (the posterior variance) is exact when the data is a single
point and σ_t² = β_t² is exact when the data is standard normal. With the exact ε-model of each
toy data set, the reverse chain's marginals p(x_t) should then equal the forward marginals q(x_t)
for every t: the closed-form column shows rounding-level errors exactly for those two pairs and
clearly non-zero errors for the swapped choices, as the post claims; the Monte Carlo column is
DDPMSampler itself, agreeing within sampling error.
""")
