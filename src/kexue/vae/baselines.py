"""Classical densities on the same discrete data as the VAE, so every number is a log-pmf.

Pixels are integers k ∈ {0, …, L−1} (L = 2 for binarised images, L = 256 for 8-bit ones).

- Discrete models (``BernoulliProduct``, ``BernoulliMixture``) give log P(k) exactly.
- Continuous models (scikit-learn's GaussianMixture, PCA = probabilistic PCA; a Gaussian KDE) are
  fitted to *uniformly dequantised* data y = (k + u)/L, u ~ U[0, 1)^D, whose density lives on
  [0, 1)^D. Because P(k) = ∫_bin(k) p(y) dy and the bin has volume L^{−D}, Jensen gives
      log P(k) ≥ E_u[log p((k + u)/L)] − D log L        (Theis, van den Oord & Bethge 2016),
  so ``score_samples`` (one fresh u per row, an unbiased estimate of the right side) is a
  lower bound on log P(k) in expectation: the baselines' NLLs are upper bounds, in the same
  units (nats per image) as the VAE's −log q̂(x).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from kexue import validate
from kexue.utils import KexueError

_SEED = [Interval(Integral, 0, None, closed="left")]


def _check_levels(X, levels: int) -> np.ndarray:
    X = validate.matrix(X, "data")
    if X.min() < 0 or X.max() > levels - 1 or not np.all(X == np.round(X)):
        raise KexueError(f"data must hold integers 0..{levels - 1} for this density")
    return X


class BernoulliProduct(DensityMixin, BaseEstimator):
    """Independent pixels: log P(x) = Σ_d x_d log p_d + (1 − x_d) log(1 − p_d), p smoothed by ``alpha``."""

    _parameter_constraints = {"alpha": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        X = _check_levels(X, 2)
        self.p_ = (X.sum(0) + self.alpha) / (len(X) + 2 * self.alpha)
        return self

    def score_samples(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = _check_levels(X, 2)
        return X @ np.log(self.p_) + (1 - X) @ np.log1p(-self.p_)


class BernoulliMixture(DensityMixin, BaseEstimator):
    """Mixture of independent-Bernoulli components fitted by EM (the discrete analogue of a GMM).

    log P(x) = lse_c(log π_c + Σ_d x_d log p_cd + (1 − x_d) log(1 − p_cd)); the M-step smooths the
    p_cd with a Beta(``alpha``+1, ``alpha``+1) prior so no pixel probability reaches 0 or 1.
    """

    _parameter_constraints = {"n_components": [Interval(Integral, 1, None, closed="left")],
                              "n_iter": [Interval(Integral, 1, None, closed="left")],
                              "alpha": [Interval(Real, 0, None, closed="neither")],
                              "tol": [Interval(Real, 0, None, closed="left")], "random_state": _SEED}

    def __init__(self, n_components: int = 50, n_iter: int = 100, alpha: float = 1.0, tol: float = 1e-4,
                 random_state: int = 0):
        self.n_components, self.n_iter, self.alpha, self.tol, self.random_state = n_components, n_iter, alpha, tol, random_state

    def _joint(self, X):
        return np.log(self.weights_) + X @ np.log(self.p_).T + (1 - X) @ np.log1p(-self.p_).T

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        X = _check_levels(X, 2)
        rng = np.random.default_rng(self.random_state)
        n = len(X)
        # responsibilities start from random soft assignments (a standard EM start)
        R = rng.dirichlet(np.ones(self.n_components), size=n)
        prev = -np.inf
        for it in range(1, self.n_iter + 1):
            self.n_iter_ = it
            nk = R.sum(0)
            self.weights_ = (nk + 1e-10) / (n + 1e-10 * self.n_components)
            self.p_ = (R.T @ X + self.alpha) / (nk[:, None] + 2 * self.alpha)
            J = self._joint(X)
            ll = logsumexp(J, axis=1)
            R = np.exp(J - ll[:, None])
            cur = ll.mean()
            if cur - prev < self.tol:
                break
            prev = cur
        return self

    def score_samples(self, X) -> np.ndarray:
        check_is_fitted(self)
        return logsumexp(self._joint(_check_levels(X, 2)), axis=1)


class Dequantized(DensityMixin, BaseEstimator):
    """A continuous density (anything with ``fit``/``score_samples``) turned into a bound on a log-pmf.

    ``fit`` trains a clone of ``estimator`` (as ``estimator_``) on ``n_copies`` dequantised copies
    y = (k + u)/L of the data; ``score_samples`` returns log p(y) − D log L for one fresh y per row
    (module docstring), the noise drawn from ``random_state + 1`` unless ``seed`` is given.
    """

    _parameter_constraints = {"estimator": [HasMethods(["fit", "score_samples"])],
                              "levels": [Interval(Integral, 2, None, closed="left")],
                              "n_copies": [Interval(Integral, 1, None, closed="left")], "random_state": _SEED}

    def __init__(self, estimator, levels: int = 2, n_copies: int = 1, random_state: int = 0):
        self.estimator, self.levels, self.n_copies, self.random_state = estimator, levels, n_copies, random_state

    def _dequantize(self, X, rng) -> np.ndarray:
        return (X + rng.random(X.shape)) / self.levels

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        from sklearn.base import clone

        X = _check_levels(X, self.levels)
        rng = np.random.default_rng(self.random_state)
        Y = np.concatenate([self._dequantize(X, rng) for _ in range(self.n_copies)])
        self.estimator_ = clone(self.estimator).fit(Y)
        return self

    def score_samples(self, X, seed: int | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = _check_levels(X, self.levels)
        rng = np.random.default_rng(self.random_state + 1 if seed is None else seed)
        return self.estimator_.score_samples(self._dequantize(X, rng)) - X.shape[1] * math.log(self.levels)


class GaussianKDE(DensityMixin, BaseEstimator):
    """Gaussian kernel density p(y) = (1/n) Σ_i N(y; y_i, h² I), the same density as scikit-learn's
    ``KernelDensity(kernel="gaussian", bandwidth=h)`` (checked in the tests), computed by blocks of
    exact pairwise distances with BLAS (scikit-learn's trees do not help in 784 dimensions and were
    ~50× slower here)."""

    _parameter_constraints = {"bandwidth": [Interval(Real, 0, None, closed="neither")],
                              "block": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, bandwidth: float = 0.1, block: int = 2048):
        self.bandwidth, self.block = bandwidth, block

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, Y, y=None):
        self.Y_ = validate.matrix(Y, "data")
        self.sq_ = (self.Y_ ** 2).sum(1)
        return self

    def score_samples(self, Y) -> np.ndarray:
        check_is_fitted(self)
        Y = validate.matrix(Y, "data")
        if Y.shape[1] != self.Y_.shape[1]:
            raise KexueError(f"data has {Y.shape[1]} columns; the density was fitted on {self.Y_.shape[1]}")
        n, d = self.Y_.shape
        h2 = self.bandwidth ** 2
        out = np.empty(len(Y))
        for s in range(0, len(Y), self.block):
            B = Y[s:s + self.block]
            d2 = np.maximum((B ** 2).sum(1)[:, None] + self.sq_[None, :] - 2 * B @ self.Y_.T, 0.0)
            out[s:s + self.block] = logsumexp(-0.5 * d2 / h2, axis=1)
        return out - math.log(n) - 0.5 * d * math.log(2 * math.pi * h2)


def select_kde_bandwidth(X, levels: int, grid, random_state: int = 0, val_fraction: float = 0.1) -> float:
    """Bandwidth of a Gaussian KDE on dequantised data with the best held-out log-likelihood."""
    X = _check_levels(X, levels)
    rng = np.random.default_rng(random_state)
    idx = rng.permutation(len(X))
    nv = max(1, int(val_fraction * len(X)))
    va, tr = X[idx[:nv]], X[idx[nv:]]
    scores = [Dequantized(GaussianKDE(h), levels=levels, random_state=random_state).fit(tr).score_samples(va).mean()
              for h in grid]
    return float(grid[int(np.argmax(scores))])


def classical_densities(levels: int, *, gmm_components: int = 10, gmm_iter: int = 100, bmm_components: int = 50,
                        bmm_iter: int = 100, ppca_components: int = 50, kde_bandwidth: float = 0.1,
                        gmm_reg: float | None = None, random_state: int = 0) -> dict:
    """The baseline set of the experiment, by name (unfitted estimators). Bernoulli models only when L = 2.

    ``gmm_reg`` (added to each component's covariance diagonal) defaults to 1/(12 L²), the
    variance of the dequantisation noise: no component should be narrower than that noise, and
    without it the 784-dimensional full covariances of small components collapse (test NLL in
    the thousands).
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    reg = 1.0 / (12 * levels ** 2) if gmm_reg is None else gmm_reg
    rs = random_state
    out = {}
    if levels == 2:
        out["independent Bernoulli"] = BernoulliProduct()
        out[f"Bernoulli mixture ({bmm_components})"] = BernoulliMixture(bmm_components, n_iter=bmm_iter, random_state=rs)
    gauss = {"diagonal Gaussian": GaussianMixture(1, covariance_type="diag", random_state=rs, max_iter=gmm_iter),
             "full Gaussian": GaussianMixture(1, covariance_type="full", random_state=rs, max_iter=gmm_iter),
             f"PPCA ({ppca_components})": PCA(ppca_components, random_state=rs),
             f"GMM ({gmm_components}, full)": GaussianMixture(gmm_components, covariance_type="full", reg_covar=reg,
                                                              random_state=rs, max_iter=gmm_iter),
             f"KDE (h={kde_bandwidth:.3g})": GaussianKDE(kde_bandwidth)}
    out.update({name: Dequantized(est, levels=levels) for name, est in gauss.items()})
    return out
