"""Part 1 of the eg experiment (SPEC 2.1): EG vs projected gradient descent on two non-negative
problems, NNLS on MNIST digits and mixture weights on the simplex."""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------
# Part 1: non-negative problems


def _proj_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, Duchi et al. 2008)."""
    if not np.all(np.isfinite(v)):  # a diverged run stays diverged (NaN gap)
        return np.full_like(v, np.nan)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    ok = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0]
    k = ok[-1] if len(ok) else 0  # empty only through rounding when |v| is huge
    return np.maximum(v - css[k] / (k + 1), 0)


def _eg_run(grad, x0, lr, iters, simplex):
    import torch

    from kexue.eg import EG

    p = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    opt = EG([p], lr=lr, simplex=simplex)
    xs = [x0.copy()]
    for _ in range(iters):
        p.grad = torch.from_numpy(grad(p.detach().numpy()))
        opt.step()
        xs.append(p.detach().numpy().copy())
    return xs


def _pgd_run(grad, x0, lr, iters, proj):
    xs, x = [x0.copy()], x0.copy()
    for _ in range(iters):
        x = proj(x - lr * grad(x))
        xs.append(x.copy())
    return xs


def _best_curve(f, fstar, runs: dict) -> tuple[float, np.ndarray]:
    """(lr, gap curve) of the run with the smallest final gap f(x_T) - f*."""
    curves = {lr: np.maximum(np.array([f(x) for x in xs]) - fstar, 1e-16) for lr, xs in runs.items()}
    lr = min(curves, key=lambda k: (curves[k][-1] if np.isfinite(curves[k][-1]) else np.inf))
    return lr, curves[lr]


def nonneg_problems(ctx, iters: int):
    import scipy.optimize
    from matplotlib.figure import Figure
    from sklearn.naive_bayes import GaussianNB

    from kexue.data import load_digits, load_mnist5k, load_mnist_test

    rng = np.random.default_rng(ctx.seed)
    rows = []
    fig = Figure(figsize=(10, 3.6))
    # --- NNLS: a test digit as a non-negative combination of 200 training digits
    Xtr, _ = load_mnist5k()
    Xte, _ = load_mnist_test(ctx.data_dir)
    M = Xtr[rng.choice(len(Xtr), 200, replace=False)].T.astype(np.float64) / 255.0  # 784 × 200
    yv = Xte[rng.integers(len(Xte))].astype(np.float64) / 255.0
    x_star, _ = scipy.optimize.nnls(M, yv, maxiter=5000)
    f = lambda x: 0.5 * float(np.sum((M @ x - yv) ** 2))  # noqa: E731
    grad = lambda x: M.T @ (M @ x - yv)  # noqa: E731
    L = float(np.linalg.eigvalsh(M.T @ M).max())
    m1 = M.sum(1)
    x0 = np.full(200, float(m1 @ yv / (m1 @ m1)))  # the best start of the form c·1
    fstar = f(x_star)
    eg_lr, eg_c = _best_curve(f, fstar, {c / L: _eg_run(grad, x0, c / L, iters, False) for c in (1, 3, 10, 30, 100, 300)})
    pg_lr, pg_c = _best_curve(f, fstar, {c / L: _pgd_run(grad, x0, c / L, iters, lambda v: np.maximum(v, 0)) for c in (0.5, 1.0, 1.9)})
    ax = fig.add_subplot(1, 2, 1)
    ax.semilogy(eg_c, label=f"EG (η={eg_lr * L:.3g}/L)")
    ax.semilogy(pg_c, label=f"projected GD (η={pg_lr * L:.3g}/L)")
    ax.set(title=f"NNLS: MNIST digit from 200 digits ({int((x_star > 0).sum())} active)",
           xlabel="iteration", ylabel="f(x) - f*")
    ax.legend()
    rows.append(["NNLS (784×200)", "EG", eg_lr * L, eg_c[min(iters // 10, iters)], eg_c[-1]])
    rows.append(["NNLS (784×200)", "projected GD", pg_lr * L, pg_c[min(iters // 10, iters)], pg_c[-1]])
    ctx.metric("nnls_gap_eg", eg_c[-1])
    ctx.metric("nnls_gap_pgd", pg_c[-1])

    # --- mixture weights on the simplex: class proportions of a label-shifted digits sample
    X, y = load_digits()
    X = X.astype(np.float64)
    perm = rng.permutation(len(X))
    tr, pool = perm[: len(X) // 2], perm[len(X) // 2:]
    nb = GaussianNB(var_smoothing=1e-2).fit(X[tr], y[tr])
    w_true = rng.dirichlet(np.full(10, 0.7))
    pw = w_true[y[pool]] / np.bincount(y[pool], minlength=10)[y[pool]]
    sample = rng.choice(pool, 800, p=pw / pw.sum())
    ll = nb.predict_joint_log_proba(X[sample]) - np.log(nb.class_prior_)  # log p(x | class k)
    Fm = np.exp(ll - ll.max(1, keepdims=True))
    g_mix = lambda w: -(Fm / (Fm @ w)[:, None]).mean(0)  # noqa: E731
    f_mix = lambda w: -float(np.mean(np.log(Fm @ w)))  # noqa: E731
    w = np.full(10, 0.1)
    for _ in range(20000):  # EM (fixed-point) reference optimum
        w = w * (Fm / (Fm @ w)[:, None]).mean(0)
    fstar = f_mix(w)
    w0 = np.full(10, 0.1)
    grid = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    # projected GD can zero a weight that some sample needs (log 0): an infinite loss, not a crash
    with np.errstate(divide="ignore", invalid="ignore"):
        eg_lr, eg_c = _best_curve(f_mix, fstar, {lr: _eg_run(g_mix, w0, lr, iters, True) for lr in grid})
        pg_lr, pg_c = _best_curve(f_mix, fstar, {lr: _pgd_run(g_mix, w0, lr, iters, _proj_simplex) for lr in grid})
    ax = fig.add_subplot(1, 2, 2)
    ax.semilogy(eg_c, label=f"EG on the simplex (η={eg_lr:g})")
    ax.semilogy(pg_c, label=f"projected GD (η={pg_lr:g})")
    ax.set(title="mixture weights (10 classes, 800 digits)", xlabel="iteration", ylabel="NLL - NLL*")
    ax.legend()
    rows.append(["mixture weights (simplex)", "EG", eg_lr, eg_c[iters // 10], eg_c[-1]])
    rows.append(["mixture weights (simplex)", "projected GD", pg_lr, pg_c[iters // 10], pg_c[-1]])
    ctx.metric("mixture_gap_eg", eg_c[-1])
    ctx.metric("mixture_gap_pgd", pg_c[-1])
    ctx.metric("mixture_l1_error_of_optimum_vs_true", float(np.abs(w - w_true).sum()))
    fig.tight_layout()
    ctx.figure("nonneg", fig, caption="Gap to the optimum vs iteration, each method at its best step size from a grid.")
    ctx.table("nonneg", ["problem", "method", "best step size", f"gap at {iters // 10}", f"gap at {iters}"], rows,
              caption="EG vs projected gradient descent (optimum: scipy.optimize.nnls / 20,000 EM steps); step sizes "
                      "tuned per method on a grid (NNLS: multiples of 1/L, L = λmax(MᵀM)).")
    return rows
