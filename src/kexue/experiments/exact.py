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
import warnings

import numpy as np

TITLE = "Training for accuracy: EXACT vs cross-entropy, hinge and smooth accuracy"
SPEC = "6"

LOSSES = ["CE", "hinge", "EXACT", "-E[p]", "-log E[p]"]


def _config(quick: bool) -> dict:
    # sized for a 2-core CPU shared with other jobs; the report states the sizes
    if quick:
        return dict(seeds=2, tab_steps=100, tab_grid=[1e-2, 1e-1], mlp_steps=150, mlp_grid=[1e-3, 3e-3],
                    cnn=False, cnn_steps=0, cnn_grid=[], eval_every=50)
    return dict(seeds=5, tab_steps=300, tab_grid=[1e-3, 1e-2, 1e-1], mlp_steps=600, mlp_grid=[3e-4, 1e-3, 3e-3],
                cnn=True, cnn_steps=300, cnn_grid=[1e-3, 3e-3], eval_every=50)


CURVE_N = 2000  # test digits scored along the way for the curves (final accuracy uses all 10,000)


def make_loss(name: str, steps: int):
    """The loss module for ``name``; EXACT's sigma decays 1 -> 0.1 geometrically over the run."""
    import torch

    from kexue.exact import EXACTLoss, MulticlassHingeLoss, SmoothAccuracyLoss, sigma_schedule

    if name == "CE":
        return torch.nn.CrossEntropyLoss()
    if name == "hinge":
        return MulticlassHingeLoss(1.0)
    if name == "EXACT":
        return EXACTLoss(sigma=sigma_schedule(1.0, 0.1, steps, "exp"), margin=None, standardize=True, n_samples=16)
    if name == "-E[p]":
        return SmoothAccuracyLoss(log=False)
    if name == "-log E[p]":
        return SmoothAccuracyLoss(log=True)
    raise ValueError(name)


def _accuracy(model, X, y) -> float:
    import torch

    with torch.no_grad():  # in chunks: a CNN on 10,000 digits at once would need ~1 GB of activations
        hits = sum(int((model(X[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum()) for i in range(0, len(X), 2000))
    return hits / len(X)


def fit(make_model, loss_name, Xtr, ytr, *, steps, batch_size, lr, seed, evals=(), eval_every=0, accelerator=None):
    """Train one model with kexue.train; return (model, curve) where curve rows are
    (step, acc on each of ``evals``) recorded every ``eval_every`` steps and at the end."""
    import torch

    from kexue.train import train

    torch.manual_seed(seed)
    model = make_model()
    loss = make_loss(loss_name, steps)
    curve = []

    def record(m, step):
        was = m.training
        m.eval()
        curve.append([step] + [_accuracy(m, X, y) for X, y in evals])
        m.train(was)

    calls = [0]

    def loss_fn(m, batch):
        # called once per step before the update: the model has had `calls` updates so far
        if eval_every and evals and calls[0] % eval_every == 0:
            record(m, calls[0])
        calls[0] += 1
        xb, yb = batch
        return loss(m(xb), yb)

    res = train(model, loss_fn, [Xtr, ytr], steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                description=f"{loss_name} lr={lr:g}", accelerator=accelerator)
    if evals:
        record(res.model, steps)
    return res.model, curve


def compare(ctx, key, make_model, splits, *, steps, batch_size, grid, n_select, eval_every=0, curves=False,
            curve_n=None, accelerator=None):
    """Same budget per loss: every lr of ``grid`` on the first ``n_select`` seeds (scored by mean
    validation accuracy), then the chosen lr on the remaining seeds. Returns per-loss dicts."""
    out = {}
    for name in LOSSES:
        runs = {}  # (lr, seed) -> (val, test, curve)

        def run(lr, s):
            Xtr, ytr, Xva, yva, Xte, yte = splits[s]
            evals = [(Xte[:curve_n], yte[:curve_n])] if curves else ()
            model, curve = fit(make_model, name, Xtr, ytr, steps=steps, batch_size=batch_size, lr=lr, seed=1000 * s + 17,
                               evals=evals, eval_every=eval_every if curves else 0, accelerator=accelerator)
            runs[(lr, s)] = (_accuracy(model, Xva, yva), _accuracy(model, Xte, yte), curve)

        for lr in grid:
            for s in range(n_select):
                run(lr, s)
        best = max(grid, key=lambda lr: (np.mean([runs[(lr, s)][0] for s in range(n_select)]), -lr))
        for s in range(n_select, len(splits)):
            run(best, s)
        test = np.array([runs[(best, s)][1] for s in range(len(splits))])
        out[name] = {"lr": best, "test": test, "curves": [runs[(best, s)][2] for s in range(len(splits))]}
        ctx.log(f"{key} {name}: lr={best:g} test={100 * test.mean():.2f}±{100 * test.std(ddof=1) if len(test) > 1 else 0:.2f}")
    return out


def _tabular_splits(name, seeds):
    import torch
    from sklearn.model_selection import train_test_split

    from kexue.data import load_tabular

    X, y = load_tabular(name)
    splits = []
    for s in range(seeds):
        Xa, Xte, ya, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=s)
        Xtr, Xva, ytr, yva = train_test_split(Xa, ya, test_size=0.25, stratify=ya, random_state=s)
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8  # standardise with training statistics only
        t = lambda A: torch.tensor((A - mu) / sd, dtype=torch.float32)
        splits.append((t(Xtr), torch.tensor(ytr), t(Xva), torch.tensor(yva), t(Xte), torch.tensor(yte)))
    return splits, int(y.max()) + 1, X.shape


def _mnist_splits(ctx, seeds):
    import torch

    from kexue.data import load_mnist5k, load_mnist_test

    X, y = load_mnist5k()
    Xte, yte = load_mnist_test(ctx.data_dir)
    f = lambda A: torch.tensor(A, dtype=torch.float32) / 255.0
    Xte_t, yte_t = f(Xte), torch.tensor(yte)
    splits = []
    for s in range(seeds):
        perm = np.random.default_rng(s).permutation(len(X))
        va, tr = perm[:500], perm[500:]
        splits.append((f(X[tr]), torch.tensor(y[tr]), f(X[va]), torch.tensor(y[va]), Xte_t, yte_t))
    return splits


def _mean_sd(a) -> str:
    a = 100 * np.asarray(a)
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def _toy(ctx):
    import torch

    from kexue.exact import EXACTLoss, TOY_X, TOY_Y, sigma_schedule, toy_loss, toy_optimum

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

    # EXACTLoss itself, trained by gradient descent on the two-class logits [0, x - b]
    x = torch.tensor(TOY_X, dtype=torch.float64)[:, None]
    y = torch.tensor((TOY_Y > 0).astype(np.int64))
    steps = 3000
    torch.manual_seed(ctx.seed)
    b = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))  # start at CE's optimum
    loss = EXACTLoss(sigma=sigma_schedule(1.0, 0.01, steps), standardize=False, grad_norm=True)
    opt = torch.optim.SGD([b], lr=0.01)
    for _ in range(steps):
        logits = torch.cat([torch.zeros_like(x), x - b], 1)
        opt.zero_grad()
        loss(logits, y).backward()
        opt.step()
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


def _verdict(results: dict) -> tuple[list, str]:
    from scipy.stats import ttest_ind

    rows, wins, losses_, ties = [], 0, 0, 0
    for ds, res in results.items():
        ce, ex = res["CE"]["test"], res["EXACT"]["test"]
        diff = 100 * (ex.mean() - ce.mean())
        with warnings.catch_warnings():  # near-identical accuracies make scipy warn about precision
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_ind(ex, ce, equal_var=False).pvalue) if len(ce) > 1 and (ex.std() + ce.std()) > 0 else float("nan")
        if p == p and p < 0.05:
            outcome = "EXACT better" if diff > 0 else "CE better"
        else:
            outcome = "no significant difference"
        wins += outcome == "EXACT better"
        losses_ += outcome == "CE better"
        ties += outcome == "no significant difference"
        best = max(res, key=lambda n: res[n]["test"].mean())
        rows.append([ds, f"{diff:+.2f}", "nan" if p != p else f"{p:.3f}", outcome, best])
    text = (f"Over {len(results)} settings EXACT beat CE significantly (Welch t-test, p < 0.05) in {wins}, lost in {losses_}, "
            f"and was indistinguishable in {ties}.")
    return rows, text, (wins, losses_)


def run(ctx) -> None:
    from kexue.utils import torch_threads

    with torch_threads(1):  # the machine is shared; small models gain nothing from threads
        _run(ctx)


def _run(ctx) -> None:
    import torch
    from matplotlib.figure import Figure

    from kexue.nets import MLP, SmallCNN
    from kexue.train import default_accelerator

    cfg = _config(ctx.quick)
    t0 = time.perf_counter()
    acc = default_accelerator()  # one for all runs: building one per run costs ~0.5 s of package probing
    _toy(ctx)
    mode = ("QUICK mode: " + f"{cfg['seeds']} seeds, {cfg['tab_steps']} steps for linear models, {cfg['mlp_steps']} for the MLP, "
            "no CNN — numbers are indicative only." if ctx.quick else
            f"Full mode (scaled to this 2-core shared CPU): {cfg['seeds']} seeds, {cfg['tab_steps']} Adam steps (batch 32) "
            f"for linear models, {cfg['mlp_steps']} steps (batch 128) for the MLP, {cfg['cnn_steps']} for the CNN.")
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
        splits, C, shape = _tabular_splits(name, cfg["seeds"])
        d = shape[1]
        res = compare(ctx, name, lambda d=d, C=C: torch.nn.Linear(d, C), splits, steps=cfg["tab_steps"], batch_size=32,
                      grid=cfg["tab_grid"], n_select=1, accelerator=acc)
        results[f"{name} (linear, n={shape[0]}, C={C})"] = res
    splits = _mnist_splits(ctx, cfg["seeds"])
    mlp = compare(ctx, "mnist-mlp", lambda: MLP([784, 256, 10]), splits, steps=cfg["mlp_steps"], batch_size=128,
                  grid=cfg["mlp_grid"], n_select=1, eval_every=cfg["eval_every"], curves=True, curve_n=CURVE_N,
                  accelerator=acc)
    results["MNIST-5k → test (MLP 784-256-10)"] = mlp
    cnn = None
    if cfg["cnn"]:
        cnn = compare(ctx, "mnist-cnn", lambda: SmallCNN(10, 28, width=16, feat_dim=64), splits, steps=cfg["cnn_steps"],
                      batch_size=64, grid=cfg["cnn_grid"], n_select=1, eval_every=cfg["cnn_steps"] // 6, curves=True,
                      curve_n=CURVE_N, accelerator=acc)
        results["MNIST-5k → test (SmallCNN width 16)"] = cnn

    rows = []
    for ds, res in results.items():
        rows.append([ds] + [_mean_sd(res[n]["test"]) for n in LOSSES])
        for n in LOSSES:
            ctx.metric(f"acc/{ds.split(' ')[0]}{'-cnn' if 'CNN' in ds else ''}/{n}", {"mean": float(res[n]["test"].mean()),
                       "sd": float(res[n]["test"].std(ddof=1)) if len(res[n]["test"]) > 1 else 0.0,
                       "runs": res[n]["test"].tolist(), "lr": res[n]["lr"]})
        lrs[ds] = [f"{res[n]['lr']:g}" for n in LOSSES]
    ctx.table("accuracy", ["data (model)"] + LOSSES, rows,
              caption=f"Test accuracy %, mean ± sd over {cfg['seeds']} seeds (same lr-grid budget per loss).")
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
    ctx.metric("seconds", time.perf_counter() - t0)
