"""SPEC 6: EXACT vs cross-entropy, hinge and smooth accuracy — the toy example and real data.

1. SPEC 6.1 toy: the minimiser b of each loss for f(x) = k (x - b), computed by kexue.exact's
   toy_optimum (scipy), plus EXACTLoss itself trained on the toy by gradient descent.
2. Linear models on scikit-learn tables (breast_cancer, wine, iris, digits) and an MLP (plus a
   small CNN in full mode) on MNIST-5k -> official MNIST test set. Every loss gets the same
   budget: a learning-rate grid scored on a validation split, then the chosen rate's test
   accuracy over several seeds (mean ± sd). EXACT's own knobs (sigma schedule, margin) are
   fixed in advance, not searched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kexue.experiments._exact_mnist import EXACT_SETTINGS, MnistConfig, make_loss, report_mnist_cnn, run_mnist_cnn

TITLE = "Training for accuracy: EXACT vs cross-entropy, hinge and smooth accuracy"
SPEC = "6"

LOSSES = ["CE", "hinge", "EXACT", "-E[p]", "-log E[p]"]
FULL_EPOCHS = 5  # full-MNIST CNN: 32 runs x 5 epochs fit in ~1.5 h on 2 cores at ~0.15 s per step (docs/exact.md)
CURVE_N = 2000  # test digits scored along the way for the curves (final accuracy uses all 10,000)
EVAL_CHUNK = 2000  # rows per forward pass when scoring (a CNN on 10,000 digits at once needs ~1 GB)


@dataclass(frozen=True)
class Config:
    """Sizes of one run, sized for a 2-core CPU shared with other jobs; the report states them."""

    seeds: int
    tab_steps: int
    tab_grid: tuple
    mlp_steps: int
    mlp_grid: tuple
    cnn: bool
    cnn_steps: int
    cnn_grid: tuple
    eval_every: int
    n_jobs: int  # joblib processes for the independent training runs
    mnist: MnistConfig  # the full-MNIST CNN at convergence (issue 18)

    @classmethod
    def quick(cls) -> Config:
        return cls(seeds=2, tab_steps=100, tab_grid=(1e-2, 1e-1), mlp_steps=150, mlp_grid=(1e-3, 3e-3),
                   cnn=False, cnn_steps=0, cnn_grid=(), eval_every=50, n_jobs=2,
                   mnist=MnistConfig(seeds=2, train=4000, val=1000, epochs=2, batch_size=128, lrs=(1e-3,),
                                     exact_settings=tuple(EXACT_SETTINGS), n_jobs=2))

    @classmethod
    def full(cls) -> Config:
        return cls(seeds=5, tab_steps=300, tab_grid=(1e-3, 1e-2, 1e-1), mlp_steps=600, mlp_grid=(3e-4, 1e-3, 3e-3),
                   cnn=True, cnn_steps=300, cnn_grid=(1e-3, 3e-3), eval_every=50, n_jobs=2,
                   mnist=MnistConfig(seeds=5, train=60000, val=5000, epochs=FULL_EPOCHS, batch_size=128,
                                     lrs=(1e-3, 3e-3), exact_settings=tuple(EXACT_SETTINGS), n_jobs=2))


def fit(make_model, loss_name, Xtr, ytr, *, steps, batch_size, lr, seed, curve=None, eval_every=0):
    """Train one model with kexue.train; return (model, curve) where curve rows are (step, accuracy
    on ``curve`` = (X, y)) at step 0, every ``eval_every`` steps and at the end."""
    import torch

    from kexue.train import accuracy, train

    torch.manual_seed(seed)
    model = make_model()
    loss = make_loss(loss_name, steps)
    rows, evaluate_fn = [], None
    if curve is not None:
        rows = [[0, accuracy(model, *curve, batch_size=EVAL_CHUNK)]]
        evaluate_fn = lambda m, step: {"acc": accuracy(m, *curve, batch_size=EVAL_CHUNK)}  # noqa: E731
    res = train(model, lambda m, b: loss(m(b[0]), b[1]), [Xtr, ytr], steps=steps, batch_size=batch_size, lr=lr,
                seed=seed, description=f"{loss_name} lr={lr:g}",
                eval_every=eval_every if curve is not None else 0, evaluate_fn=evaluate_fn)
    return res.model, rows + [[e["step"], e["acc"]] for e in res.evals]


def _one_run(make_model, name, split, *, steps, batch_size, lr, seed, curve_n, eval_every):
    """One training run (in a joblib worker): (validation accuracy, test accuracy, curve rows)."""
    import torch

    from kexue.train import accuracy

    torch.set_num_threads(1)
    Xtr, ytr, Xva, yva, Xte, yte = split
    curve = (Xte[:curve_n], yte[:curve_n]) if curve_n else None
    model, rows = fit(make_model, name, Xtr, ytr, steps=steps, batch_size=batch_size, lr=lr, seed=seed, curve=curve,
                      eval_every=eval_every)
    return accuracy(model, Xva, yva, EVAL_CHUNK), accuracy(model, Xte, yte, EVAL_CHUNK), rows


def compare(ctx, key, make_model, splits, *, steps, batch_size, grid, n_select, eval_every=0, curves=False,
            curve_n=None, n_jobs=1):
    """Same budget per loss: every lr of ``grid`` on the first ``n_select`` seeds (scored by mean
    validation accuracy), then the chosen lr on the remaining seeds. Runs are independent and
    deterministic, so they go to ``n_jobs`` joblib processes in two rounds. Returns per-loss dicts."""
    from joblib import delayed

    from kexue.exact import mean_sd
    from kexue.parallel import consume, parallel

    kw = dict(steps=steps, batch_size=batch_size, curve_n=curve_n if curves else None, eval_every=eval_every)

    def round_(jobs):  # (name, lr, s) -> (val, test, curve)
        # a fresh pool and no joblib temporary files per round (kexue.parallel: issue 31)
        res = consume(parallel(n_jobs)(delayed(_one_run)(make_model, n, splits[s], lr=lr, seed=1000 * s + 17 + ctx.seed, **kw)
                                       for n, lr, s in jobs))
        return dict(zip(jobs, res))

    runs = round_([(n, lr, s) for n in LOSSES for lr in grid for s in range(n_select)])
    best = {n: max(grid, key=lambda lr: (np.mean([runs[(n, lr, s)][0] for s in range(n_select)]), -lr)) for n in LOSSES}
    runs.update(round_([(n, best[n], s) for n in LOSSES for s in range(n_select, len(splits))]))
    out = {}
    for n in LOSSES:
        test = np.array([runs[(n, best[n], s)][1] for s in range(len(splits))])
        out[n] = {"lr": best[n], "test": test, "curves": [runs[(n, best[n], s)][2] for s in range(len(splits))]}
        ctx.log(f"{key} {n}: lr={best[n]:g} test={mean_sd(test)}")
    return out


def _tabular_splits(name, seeds, seed0):
    import torch
    from sklearn.model_selection import train_test_split

    from kexue.data import load_tabular

    X, y = load_tabular(name)
    splits = []
    for s in range(seeds):
        Xa, Xte, ya, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed0 + s)
        Xtr, Xva, ytr, yva = train_test_split(Xa, ya, test_size=0.25, stratify=ya, random_state=seed0 + s)
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8  # standardise with training statistics only
        def t(A, mu=mu, sd=sd):  # this split's statistics
            return torch.tensor((A - mu) / sd, dtype=torch.float32)

        splits.append((t(Xtr), torch.tensor(ytr), t(Xva), torch.tensor(yva), t(Xte), torch.tensor(yte)))
    return splits, int(y.max()) + 1, X.shape


def _mnist_splits(ctx, seeds):  # the seed picks the validation digits
    import torch

    from kexue.data import load_mnist5k, load_mnist_test

    X, y = load_mnist5k()
    Xte, yte = load_mnist_test(ctx.data_dir)
    def f(A):
        return torch.tensor(A, dtype=torch.float32) / 255.0

    Xte_t, yte_t = f(Xte), torch.tensor(yte)
    splits = []
    for s in range(seeds):
        perm = np.random.default_rng(ctx.seed + s).permutation(len(X))
        va, tr = perm[:500], perm[500:]
        splits.append((f(X[tr]), torch.tensor(y[tr]), f(X[va]), torch.tensor(y[va]), Xte_t, yte_t))
    return splits


def _toy(ctx):
    import torch

    from kexue.exact import EXACTLoss, TOY_X, TOY_Y, ToyThreshold, sigma_schedule, toy_loss, toy_optimum

    rows = []
    ce = {k: ctx.metric(f"toy_ce_b_k{k}", toy_optimum("ce", k)) for k in (1, 10, 100)}
    hinge = {k: toy_optimum("hinge", k) for k in (1, 10, 100)}
    for k in (1, 10, 100):
        ctx.metric(f"toy_hinge_b_k{k}", list(hinge[k]))
        rows.append([f"sigmoid CE, k={k}", f"{ce[k]:.4f}", f"{toy_loss(ce[k], 'error', k):.3f}"])
        lo, hi = hinge[k]
        rows.append([f"hinge, k={k}", f"[{lo:.4g}, {hi:.4g}]", f"{toy_loss(lo, 'error', k):.3f} – {toy_loss(hi, 'error', k):.3f}"])
    b_sig1 = None
    for s in (1.0, 0.3, 0.1, 0.01):
        b = ctx.metric(f"toy_exact_b_sigma{s}", toy_optimum("exact", 1.0, s))
        b_sig1 = b if s == 1.0 else b_sig1
        rows.append([f"EXACT (binary, 1 − Φ(yf/σ)), σ={s}", f"{b:.4f}", f"{toy_loss(b, 'error'):.3f}"])

    # EXACTLoss itself, trained by full-batch SGD on the two-class logits [0, x - b]; with two
    # classes the orthant is one-dimensional and exact, so no sampling noise is involved
    from kexue.train import train

    x = torch.tensor(TOY_X, dtype=torch.float64)[:, None]
    y = torch.tensor((TOY_Y > 0).astype(np.int64))
    steps = 3000
    model = ToyThreshold(0.7)  # start at CE's optimum
    loss = EXACTLoss(sigma=sigma_schedule(1.0, 0.01, steps), standardize=False, grad_norm=True)
    res = train(model, lambda m, batch: loss(m(batch[0]), batch[1]), [x, y], steps=steps, batch_size=len(x),
                optimizer=torch.optim.SGD(model.parameters(), lr=0.01), seed=ctx.seed, description="toy EXACT")
    b = res.model.b
    b_gd = ctx.metric("toy_exact_gd_b", b.item())
    rows.append(["EXACTLoss by SGD from b=0.7, σ 1→0.01 (2-class logits)", f"{b_gd:.4f}", f"{toy_loss(b_gd, 'error'):.3f}"])
    ctx.text("### 1. The toy example (SPEC 6.1)\n\nData {(−0.25, −1), (0, −1), (0.25, +1)}, model f(x) = k(x − b); "
             "perfect accuracy needs b ∈ (0, 0.25). Minimisers computed by `kexue.exact.toy_optimum` "
             "(bounded Brent for CE; exact kink enumeration for the piecewise-linear hinge; grid + Brent for EXACT).")
    ctx.table("toy", ["loss", "optimal b", "error rate at b"], rows,
              caption="SPEC 6.1: optimal b per loss. SPEC says CE ≈ 0.7, hinge ∈ [0.75, 1], CE with k=10 ≈ 0.131, k=100 ≈ 0.125.")
    ok = abs(ce[1] - 0.7) < 5e-3 and hinge[1] == (0.75, 1.0) and abs(ce[10] - 0.131) < 5e-4 and abs(ce[100] - 0.125) < 5e-4
    ctx.metric("toy_matches_spec", bool(ok))
    ctx.text(f"All four SPEC numbers {'come out' if ok else 'do NOT come out'} of the code: CE b = {ce[1]:.4f}, hinge "
             f"[{hinge[1][0]:g}, {hinge[1][1]:g}], CE k=10 b = {ce[10]:.4f}, k=100 b = {ce[100]:.4f}. "
             f"For EXACT, σ plays the role of 1/k: with σ = 1 its minimiser b = {b_sig1:.3f} is outside (0, 0.25) too "
             f"(error rate {toy_loss(b_sig1, 'error'):.3f}), and only as σ shrinks does it move into the "
             "perfect-accuracy interval — the same mechanism that rescues CE with a scale k, which is the post's "
             "point that the example is unfair to CE. Trained by SGD with a decaying σ (the paper's recipe), "
             f"EXACTLoss ends at b = {b_gd:.4f}.")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    bs = np.linspace(-0.5, 1.5, 801)
    for kind, k, s, lab in [("ce", 1, 1, "sigmoid CE, k=1"), ("ce", 10, 1, "sigmoid CE, k=10"), ("hinge", 1, 1, "hinge, k=1"),
                            ("exact", 1, 1.0, "EXACT σ=1"), ("exact", 1, 0.1, "EXACT σ=0.1")]:
        v = np.array([toy_loss(b_, kind, k, s) for b_ in bs])
        ax.plot(bs, v / v.max(), label=lab)
    ax.axvspan(0, 0.25, color="green", alpha=0.12, label="100% accuracy")
    ax.set_xlabel("b")
    ax.set_ylabel("loss / max")
    ax.legend(fontsize=7)
    ctx.figure("toy", fig, caption="Toy example: each loss (scaled to max 1) against b; green = perfect accuracy.")


def _verdict(results: dict) -> tuple[list, str, tuple]:
    from kexue.exact import compare_runs

    rows, counts = [], {"a better": 0, "b better": 0, "no significant difference": 0}
    names = {"a better": "EXACT better", "b better": "CE better", "no significant difference": "no significant difference"}
    for ds, res in results.items():
        c = compare_runs(res["EXACT"]["test"], res["CE"]["test"])
        counts[c.outcome] += 1
        best = max(res, key=lambda n: res[n]["test"].mean())
        rows.append([ds, f"{100 * c.diff:+.2f}", "nan" if c.pvalue != c.pvalue else f"{c.pvalue:.3f}", names[c.outcome], best])
    wins, losses_, ties = counts["a better"], counts["b better"], counts["no significant difference"]
    text = (f"Over {len(results)} settings EXACT beat CE significantly (Welch t-test, p < 0.05) in {wins}, lost in {losses_}, "
            f"and was indistinguishable in {ties}.")
    return rows, text, (wins, losses_)


def run(ctx) -> None:
    from kexue.train import num_threads

    with num_threads(1):  # the machine is shared; small models gain nothing from threads
        _run(ctx)


def _run(ctx) -> None:
    import torch
    from matplotlib.figure import Figure

    from kexue.exact import mean_sd
    from kexue.nets import MLP, SmallCNN

    cfg = Config.quick() if ctx.quick else Config.full()
    t0 = time.perf_counter()
    _toy(ctx)
    mode = ("QUICK mode: " + f"{cfg.seeds} seeds, {cfg.tab_steps} steps for linear models, {cfg.mlp_steps} for the MLP, "
            "no CNN — numbers are indicative only." if ctx.quick else
            f"Full mode (scaled to this 2-core shared CPU): {cfg.seeds} seeds, {cfg.tab_steps} Adam steps (batch 32) "
            f"for linear models, {cfg.mlp_steps} steps (batch 128) for the MLP, {cfg.cnn_steps} for the CNN.")
    ctx.text("### 2. Real data: CE vs hinge vs EXACT vs smooth accuracy\n\n" + mode + "\n\n"
             "Protocol: Adam; each loss gets the same learning-rate grid; the rate is chosen by validation accuracy "
             "of the first seed, then run with the other seeds: grid + seeds − 1 runs per loss and data set "
             "(tables: 60/20/20 stratified train/val/test split per seed; MNIST: 4,500 of the 5,000 training digits "
             "for training, 500 for validation, test = the official 10,000 MNIST test digits; curves score the first "
             f"{CURVE_N} test digits during training). "
             "EXACT: σ decays geometrically 1 → 0.1 over the run, no margin, batch standardisation of logits, gradient "
             "normalisation, 16 Sobol points — fixed in advance, not tuned. Hinge = Crammer–Singer with margin 1. "
             "−E[p] and −log E[p] use the softmax probability of the true class (SPEC 6.3). "
             "Numbers are test accuracy % (mean ± sd over seeds).")
    results, lrs = {}, {}
    for name in ("breast_cancer", "wine", "iris", "digits"):
        splits, C, shape = _tabular_splits(name, cfg.seeds, ctx.seed)
        d = shape[1]
        res = compare(ctx, name, lambda d=d, C=C: torch.nn.Linear(d, C), splits, steps=cfg.tab_steps, batch_size=32,
                      grid=cfg.tab_grid, n_select=1, n_jobs=cfg.n_jobs)
        results[f"{name} (linear, n={shape[0]}, C={C})"] = res
    splits = _mnist_splits(ctx, cfg.seeds)
    mlp = compare(ctx, "mnist-mlp", lambda: MLP([784, 256, 10]), splits, steps=cfg.mlp_steps, batch_size=128,
                  grid=cfg.mlp_grid, n_select=1, eval_every=cfg.eval_every, curves=True, curve_n=CURVE_N,
                  n_jobs=cfg.n_jobs)
    results["MNIST-5k → test (MLP 784-256-10)"] = mlp
    cnn = None
    if cfg.cnn:
        cnn = compare(ctx, "mnist-cnn", lambda: SmallCNN(10, 28, width=16, feat_dim=64), splits, steps=cfg.cnn_steps,
                      batch_size=64, grid=cfg.cnn_grid, n_select=1, eval_every=cfg.cnn_steps // 6, curves=True,
                      curve_n=CURVE_N, n_jobs=cfg.n_jobs)
        results["MNIST-5k → test (SmallCNN width 16)"] = cnn

    rows = []
    for ds, res in results.items():
        rows.append([ds] + [mean_sd(res[n]["test"]) for n in LOSSES])
        for n in LOSSES:
            ctx.metric(f"acc/{ds.split(' ')[0]}{'-cnn' if 'CNN' in ds else ''}/{n}", {"mean": float(res[n]["test"].mean()),
                       "sd": float(res[n]["test"].std(ddof=1)) if len(res[n]["test"]) > 1 else 0.0,
                       "runs": res[n]["test"].tolist(), "lr": res[n]["lr"]})
        lrs[ds] = [f"{res[n]['lr']:g}" for n in LOSSES]
    ctx.table("accuracy", ["data (model)"] + LOSSES, rows,
              caption=f"Test accuracy %, mean ± sd over {cfg.seeds} seeds (same lr-grid budget per loss).")
    ctx.table("chosen_lr", ["data (model)"] + LOSSES, [[ds] + v for ds, v in lrs.items()],
              caption="Learning rate chosen on the validation split.")
    mean_tab = {n: float(np.mean([results[ds][n]["test"].mean() for ds in list(results)[:4]])) for n in LOSSES}
    ctx.metric("linear_mean_acc", mean_tab)
    ctx.text("Mean over the four linear-model tables: " + ", ".join(f"{n} {100 * v:.2f}" for n, v in mean_tab.items())
             + " (SPEC 6.4 reports 92.74 / 92.84 / 93.38 for CE / hinge / EXACT over 10 UCI tables with its own "
             "hyper-parameter search; different tables, so only the ordering is comparable).")

    fig = Figure(figsize=(11 if cnn else 6, 3.8))
    for j, (title, res) in enumerate([("MLP", mlp)] + ([("SmallCNN", cnn)] if cnn else [])):
        ax = fig.add_subplot(1, 2 if cnn else 1, j + 1)
        for n in LOSSES:
            c = np.array(res[n]["curves"])  # (seeds, points, 2)
            steps, acc = c[0, :, 0], 100 * c[:, :, 1]
            ax.plot(steps, acc.mean(0), label=n)
            ax.fill_between(steps, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), alpha=0.15)
        ax.set_ylim(80, 100)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"accuracy % on {CURVE_N} MNIST test digits")
        ax.set_title(f"{title} on MNIST-5k")
        ax.legend(fontsize=7)
    ctx.figure("curves", fig, caption="Test accuracy during training (mean ± sd over seeds, each loss at its chosen lr).")

    vrows, vtext, wins_losses = _verdict(results)
    ctx.table("verdict", ["data (model)", "EXACT − CE (points)", "Welch p", "outcome", "best loss (mean)"], vrows,
              caption="EXACT vs CE per setting.")
    ctx.metric("verdict", vtext)
    mnist_ce, mnist_ex = mlp["CE"]["test"].mean(), mlp["EXACT"]["test"].mean()
    if wins_losses[0] and not wins_losses[1]:
        concl = "On our data this supports the paper: where a difference is significant, EXACT is ahead."
    elif wins_losses[1] and not wins_losses[0]:
        concl = ("On our data this supports the post's counter-claim: EXACT never beat CE significantly, "
                 "and CE was significantly better in at least one setting.")
    elif not any(wins_losses):
        concl = ("On our data neither claim is confirmed: EXACT and CE are statistically indistinguishable "
                 "everywhere — EXACT ≥ CE is not shown, and neither is the reverse.")
    else:
        concl = "On our data the picture is mixed: EXACT wins some settings and loses others."
    ctx.text("### Verdict\n\n" + vtext + " " + concl + " The paper's claim (SPEC 6.4) is EXACT ≥ CE (e.g. MNIST "
             "99.67 vs 99.64, UCI mean 93.38 vs 92.74); the post's counter-claim is that EXACT did not beat CE on "
             f"the author's own tasks. On our MNIST-5k MLP, EXACT reaches {100 * mnist_ex:.2f} % vs CE "
             f"{100 * mnist_ce:.2f} % (the paper's MNIST numbers come from a CNN trained on all 60,000 digits for far "
             "longer, so absolute levels are not comparable). Caveats: only the learning rate was searched, with "
             "a small grid; the paper also tuned margin, σ and gradient clipping for EXACT, and trained with SGD.")

    m = cfg.mnist
    ctx.text("### 3. Full MNIST at convergence: a CNN, five losses, seeds\n\n"
             + ("QUICK mode: a " + f"{m.train:,}-digit slice, {m.epochs} epochs, {m.seeds} seeds — checks the pipeline only; "
                "the accuracy is far from converged. " if ctx.quick else "")
             + f"{m.train - m.val:,} training and {m.val:,} validation digits of the official training set; per loss the "
             f"learning rate (grid {', '.join(f'{lr:g}' for lr in m.lrs)}) and, for EXACT, the setting "
             f"({'; '.join(m.exact_settings)}) are chosen by validation accuracy of seed 0, then {m.seeds - 1} more seeds "
             f"are trained; {m.epochs} epochs of Adam (batch {m.batch_size}) with linear warm-up and cosine decay, "
             f"±{m.shift}-pixel random shifts; Welch t-test of each loss against CE.")
    report_mnist_cnn(ctx, m, run_mnist_cnn(ctx, m), Config.full().mnist)
    ctx.metric("seconds", time.perf_counter() - t0)
