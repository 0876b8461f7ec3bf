"""Layers with known answers: the 2-D example of SPEC 3.2 and planted interior points."""

from __future__ import annotations

import numpy as np


def example_2d(b5: float | None = None):
    """SPEC 3.2: w₁=(1,2), w₂=(2,1), w₃=(1,0), w₄=(0,1), w₅=(1,1) (0-based: class 4 is w₅).

    w₅ = ½(w₁ + w₃) lies inside the hull, so without bias it can never win; a bias b₅ larger
    than the others (all 0) makes it win at z = 0."""
    W = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    if b5 is None:
        return W, None
    b = np.zeros(5)
    b[4] = b5
    return W, b


def planted_layer(n_classes: int, dim: int, n_planted: int, *, bias: bool = False, rescued: bool = False,
                  mix: int = 3, seed: int = 0):
    """A layer whose argmaxable set is known exactly.

    ``n_classes - n_planted`` distinct unit vectors (all argmaxable: SPEC 3.5 without bias; with a
    bias z = s·w_k wins for large s since ⟨w_i, w_k⟩ < 1 for every other row). Each planted row
    is a convex combination of ``mix`` unit rows with Dirichlet weights λ (strictly inside the
    ball, in their hull) and, with a bias, b = Σλ_i b_i - u, u ∈ [0, 1): unargmaxable. With
    ``rescued`` one more interior row gets a bias above all others: argmaxable at z = 0 only
    (where the post's bias-free criterion and the LP disagree, SPEC 3.3).

    Returns (W float64 (C, d), b or None, argmaxable bool (C,)), rows in random order."""
    rng = np.random.default_rng(seed)
    n_extra = 1 if (rescued and bias) else 0
    n_base = n_classes - n_planted - n_extra
    if n_base < mix:
        raise ValueError("too few base rows for the requested planted set")
    base = rng.standard_normal((n_base, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    bb = rng.standard_normal(n_base) if bias else np.zeros(0)  # no draw without a bias
    rows, biases, truth = [base], [bb], [np.ones(n_base, bool)]
    inner = np.empty((n_planted + n_extra, dim))
    ib = np.empty(n_planted + n_extra)
    for j in range(n_planted + n_extra):
        idx = rng.choice(n_base, size=mix, replace=False)
        lam = rng.dirichlet(np.ones(mix))
        inner[j] = lam @ base[idx]
        if bias:
            ib[j] = lam @ bb[idx] - rng.uniform(0, 1)
    if n_extra:
        ib[-1] = bb.max() + 1.0
    rows.append(inner)
    biases.append(ib)
    truth.append(np.r_[np.zeros(n_planted, bool), np.ones(n_extra, bool)])
    W = np.vstack(rows)
    t = np.concatenate(truth)
    perm = rng.permutation(n_classes)
    return W[perm], (np.concatenate(biases)[perm] if bias else None), t[perm]
