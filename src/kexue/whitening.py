"""BERT-whitening with hyperparameters β, γ and k (SPEC 5) as a scikit-learn transformer.

For sentence vectors x_i ∈ R^d (rows) — SPEC 5.1:

    μ = (1/N) Σ x_i,     Σ = (1/N) Σ (x_i − βμ)ᵀ(x_i − βμ) = U Λ Uᵀ   (Λ descending),
    x̃_i = (x_i − βμ) U Λ^{−γ/2},   keeping the first k coordinates.

Σ is the second moment about βμ — the covariance only when β = 1. β = γ = 1 is classic
BERT-whitening; β = γ = 0 is the rotation x ↦ xU, which keeps every cosine (SPEC 5.2).

The fit only needs three float64 accumulators — the count N, the sum Σ(x − c) and the
Gram matrix Σ(x − c)ᵀ(x − c) about a fixed shift c (the mean of the first chunk, so that
float32 data with a large mean loses no precision to cancellation) — so a corpus of any size is
fitted chunk by chunk in O(d²) memory (:meth:`Whitening.partial_fit`). Then, with y = x − c,
μ_y = μ − c and a = βμ − c,

    Σ = (1/N) Σ yᵀy − a μ_yᵀ − μ_y aᵀ + a aᵀ,

which is SPEC 5.1 expanded. The accumulators hold y / s for a power of two s (``scale_``, set
from the data's magnitude and raised if a later chunk is larger), so embeddings of any magnitude
(1e200 or 1e-200) neither overflow nor underflow in the Gram matrix: dividing by a power of two is
exact, and whitening is scale-equivariant — for X' = X / s, μ' = μ / s, U' = U, Λ' = Λ / s², so
x̃ = s^(1−γ) x̃'. The transform is computed from Λ' and s; ``eigenvalues_`` is Λ' s² (inf only if
Λ itself exceeds the float64 range, ~1e308). The accumulators do not depend on β, γ or k, so
:meth:`Whitening.set_params` after a fit re-decomposes without another pass over the data.

The STS evaluation harness (encoding STS-B or a user's pairs, the (β, γ, k) grid search) is in
:mod:`kexue.sts`; the sentence-transformers module is :mod:`kexue.whitening_st`.
"""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path
from collections.abc import Iterable

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from kexue import _whitening_io, validate
from kexue.utils import KexueError, KexueTypeError, plural

CHUNK = 65536  # rows converted to float64 at a time: bounds the fit's extra memory to ~CHUNK·d·8 bytes
ILL_CONDITIONED = 1e12  # λ_max/λ_min above this: Λ^(-γ/2) multiplies rounding noise by up to 1e6 at γ = 1

# kept as names for code written against earlier releases; they are the shared error types
WhiteningError = KexueError
WhiteningTypeError = KexueTypeError


def _one_line(e: Exception) -> Exception:
    """scikit-learn's validation message squeezed to one line, with the fix named."""
    text = str(e) or type(e).__name__
    msg = text.splitlines()[0].rstrip(":")
    if "Reshape your data" in text:
        msg += "; Reshape your data: X.reshape(1, -1) for one vector, X.reshape(-1, 1) for one feature"
    return KexueTypeError(msg) if isinstance(e, TypeError) else KexueError(msg)


def _is_dask(X) -> bool:
    """A Dask array (checked by its type's module, so dask is never imported for NumPy input)."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


def _check_params(beta, gamma, n_components) -> None:
    validate.real(beta, "beta")
    validate.real(gamma, "gamma", lo=0.0)  # the power of Λ^(-γ/2); negative would amplify the big directions
    if n_components is not None:
        validate.integer(n_components, "n_components (k)", lo=1)


SAFE = 2.0 ** 64  # magnitudes in [1/SAFE, SAFE] are accumulated unscaled (their squares summed stay far inside float64)


def _pow2(x: float) -> float:
    """1 if |x| is in [1/SAFE, SAFE] (or 0, or not finite), else the power of two at or above |x|:
    dividing by a power of two is exact, so typical data gives bit-identical results unscaled."""
    x = abs(float(x))
    if not np.isfinite(x) or x == 0 or 1 / SAFE <= x <= SAFE:
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(x)[1])))


class Whitening(TransformerMixin, BaseEstimator):
    """x ↦ (x − βμ) U Λ^{−γ/2}, first k coordinates (SPEC 5.1), as a scikit-learn transformer.

    Parameters
    ----------
    beta : float, default 1.0 — how much of the mean to remove (β = 1: centre; β = 0: no shift).
    gamma : float >= 0, default 1.0 — how much to rescale (γ = 1: unit variance; γ = 0: rotate only).
    n_components : int or None — k, the number of leading coordinates kept (None: all d).

    Attributes (after ``fit``)
    --------------------------
    mean_ : (d,) μ.          components_ : (k, d) rows = first k columns of U.
    explained_variance_ : (k,) leading eigenvalues Λ of Σ (the second moment about βμ).
    singular_values_ : (k,) sqrt(N Λ) — the singular values of the matrix (X − βμ), as in PCA.
    eigenvalues_ : (d,) the whole spectrum.   n_samples_seen_, n_features_in_.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, n_components: int | None = None):
        self.beta = beta
        self.gamma = gamma
        self.n_components = n_components

    # declared for scikit-learn's tooling; the checks themselves go through kexue.validate (one wording)
    _parameter_constraints: dict = {"beta": [Real], "gamma": [Real], "n_components": [Integral, None]}

    # ----- input checking ---------------------------------------------------------------------

    def _validate(self, X, reset: bool):
        from sklearn.utils.validation import validate_data

        try:
            X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=1,
                              accept_sparse=False, ensure_all_finite=False)
        except KexueError:
            raise
        except (ValueError, TypeError) as e:
            raise _one_line(e) from None
        validate.finite(X, "X")
        return X

    # ----- fitting ----------------------------------------------------------------------------

    def _reset(self):
        for a in ("n_samples_seen_", "shift_", "scale_", "_eig_scaled", "sum_", "gram_", "n_features_in_", "mean_", "components_",
                  "explained_variance_", "singular_values_", "eigenvalues_", "eigenvectors_"):
            self.__dict__.pop(a, None)

    def _begin(self, first: np.ndarray) -> None:
        """Empty accumulators about the shift c (mean of the first chunk) and scale s (a power of
        two) that the first chunk of rows picks; :mod:`kexue.whitening_dask` starts every block here."""
        first = np.asarray(first, dtype=np.float64)
        d = first.shape[1]
        s0 = _pow2(np.max(np.abs(first)))
        self.n_features_in_ = d
        self.n_samples_seen_ = 0
        self.shift_ = (first / s0).mean(axis=0) * s0
        self.scale_ = _pow2(np.max(np.abs(first / s0 - self.shift_ / s0))) * s0
        self.sum_ = np.zeros(d)
        self.gram_ = np.zeros((d, d))

    def _rescale(self, r: float) -> None:
        """Raise the scale s by the power of two r (exact: sums divide by r, Grams by r²)."""
        self.scale_ *= r
        self.sum_ /= r
        self.gram_ /= r * r

    def _accumulate(self, X: np.ndarray) -> None:
        """Add a chunk to the float64 accumulators (count, Σ(x−c)/s, Σ(x−c)ᵀ(x−c)/s²)."""
        if not hasattr(self, "n_samples_seen_"):
            self._begin(X[: min(len(X), CHUNK)])
        from scipy.linalg.blas import dsyrk

        for s in range(0, len(X), CHUNK):
            Y = X[s : s + CHUNK].astype(np.float64) / self.scale_ - self.shift_ / self.scale_
            top = float(np.max(np.abs(Y))) if Y.size else 0.0
            if top > SAFE:  # a larger chunk than the first: raise s so that YᵀY stays far from overflow
                self._rescale(_pow2(top))
                Y = X[s : s + CHUNK].astype(np.float64) / self.scale_ - self.shift_ / self.scale_
            self.sum_ += Y.sum(axis=0)
            # YᵀY with BLAS syrk: half the flops of a general product (Y.T is Fortran-ordered: no copy)
            G = dsyrk(1.0, Y.T, trans=0, lower=0)
            self.gram_ += np.triu(G) + np.triu(G, 1).T
            self.n_samples_seen_ += len(Y)

    def _add_sums(self, other: Whitening) -> Whitening:
        """:meth:`merge` without the decomposition (what a tree of partial sums needs)."""
        if not isinstance(other, Whitening) or not hasattr(other, "n_samples_seen_"):
            raise KexueTypeError("merge takes a Whitening that has seen rows (fit or partial_fit it first)")
        if not hasattr(self, "n_samples_seen_"):
            d = other.n_features_in_
            self.n_features_in_, self.n_samples_seen_ = d, 0
            self.shift_, self.scale_ = other.shift_.copy(), float(other.scale_)
            self.sum_, self.gram_ = np.zeros(d), np.zeros((d, d))
        if other.n_features_in_ != self.n_features_in_:
            raise KexueError(f"cannot merge a fit on d={other.n_features_in_} into one on d={self.n_features_in_}")
        if other.scale_ > self.scale_:
            self._rescale(other.scale_ / self.scale_)
        top = float(np.max(np.abs(other.shift_ / self.scale_ - self.shift_ / self.scale_)))
        if top > SAFE:  # shifts far apart in units of s: raise s so the corrections cannot overflow
            self._rescale(_pow2(top))
        rho = other.scale_ / self.scale_  # a power of two ≤ 1
        delta = other.shift_ / self.scale_ - self.shift_ / self.scale_
        n, s1 = other.n_samples_seen_, rho * other.sum_
        self.gram_ += rho * rho * other.gram_ + np.outer(s1, delta) + np.outer(delta, s1) + n * np.outer(delta, delta)
        self.sum_ += s1 + n * delta
        self.n_samples_seen_ += n
        return self

    def merge(self, other: Whitening) -> Whitening:
        """Add the rows another fit has seen, as if they had been streamed into this one, then
        decompose. Partial fits of disjoint row blocks (other processes or machines) merged in
        any order equal one fit on all rows, up to the order of float64 additions.

        Each fit's sums are about its own shift c' and scale s'; they are moved to ours (c, s):
        with y' = (x − c')/s', ρ = s'/s and δ = (c' − c)/s, y = ρy' + δ, so
        Σy = ρΣy' + Nδ and Σyᵀy = ρ²Σy'ᵀy' + ρ(Σy')ᵀδ + ρδᵀ(Σy') + N δᵀδ.
        """
        self._add_sums(other)
        return self._decompose() if self.n_samples_seen_ >= 2 else self

    def _decompose(self) -> Whitening:
        """Σ about βμ from the accumulators, then U, Λ (SPEC 5.1)."""
        _check_params(self.beta, self.gamma, self.n_components)
        N, d = self.n_samples_seen_, self.n_features_in_
        if N < 2:
            raise KexueError(f"got {plural(N, 'sample')}; whitening needs at least 2 samples (N < 2) to estimate Σ")
        k = d if self.n_components is None else int(self.n_components)
        if k > d:
            raise KexueError(f"n_components={k} is larger than the dimension d={d}; choose k <= {d}")
        sc = float(getattr(self, "scale_", 1.0))
        mu_y = self.sum_ / N  # (μ − c) / s
        mu = self.shift_ + mu_y * sc
        a = float(self.beta) * (mu / sc) - self.shift_ / sc  # (βμ − c) / s
        S = self.gram_ / N - np.outer(a, mu_y) - np.outer(mu_y, a) + np.outer(a, a)  # Σ / s²
        S = 0.5 * (S + S.T)  # exact symmetry for eigh
        lam, U = np.linalg.eigh(S)
        lam, U = lam[::-1].copy(), U[:, ::-1].copy()
        # deterministic signs (as sklearn's svd_flip): the largest-|.| entry of each column is positive
        signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(d)])
        signs[signs == 0] = 1.0
        U *= signs
        lam = np.maximum(lam, 0.0)  # Σ is PSD; tiny negative values are rounding
        self.mean_ = mu
        self._eig_scaled = lam  # Λ / s²: what the transform and the conditioning use
        with np.errstate(over="ignore"):
            self.eigenvalues_ = lam * sc * sc
            self.singular_values_ = np.sqrt(N * lam[:k]) * sc
        self.eigenvectors_ = U
        self.components_ = U[:, :k].T.copy()
        self.explained_variance_ = self.eigenvalues_[:k].copy()
        return self

    def fit(self, X, y=None) -> Whitening:
        """Fit μ, U, Λ on X (n, d) in one call (processed in float64 chunks of CHUNK rows).

        X may be a Dask array: its row blocks are summed where they live and the sums added
        (:mod:`kexue.whitening_dask`); the result equals the in-memory fit to float64 rounding."""
        _check_params(self.beta, self.gamma, self.n_components)
        if _is_dask(X):
            from kexue.whitening_dask import fit_dask

            return fit_dask(self, X, CHUNK)
        self._reset()
        X = self._validate(X, reset=True)
        self._accumulate(X)
        return self._decompose()

    def partial_fit(self, X, y=None) -> Whitening:
        """Add one chunk of rows to the running fit (streaming); the result after the last chunk
        equals ``fit`` on all rows (up to float64 rounding). Decomposes once the count is >= 2."""
        _check_params(self.beta, self.gamma, self.n_components)
        first = not hasattr(self, "n_samples_seen_")
        X = self._validate(X, reset=first)
        self._accumulate(X)
        if self.n_samples_seen_ >= 2:
            self._decompose()
        return self

    def fit_chunks(self, chunks: Iterable) -> Whitening:
        """Fit from an iterable of (n_i, d) arrays (e.g. a memory-mapped file read in slices),
        decomposing once at the end: O(d²) memory whatever the total N."""
        _check_params(self.beta, self.gamma, self.n_components)
        self._reset()
        first = True
        for C in chunks:
            C = self._validate(C, reset=first)
            first = False
            self._accumulate(C)
        if first:
            raise KexueError("no rows to fit: the chunks were empty; pass at least 2 rows (n, d)")
        return self._decompose()

    def set_params(self, **params):
        """Change β, γ or k; a fitted transform is re-derived from its accumulators (no data pass)."""
        super().set_params(**params)
        if hasattr(self, "gram_") and getattr(self, "n_samples_seen_", 0) >= 2:
            self._decompose()
        return self

    # ----- applying ---------------------------------------------------------------------------

    def _scale(self) -> np.ndarray:
        """Λ_k^{−γ/2}; eigenvalues below d·eps·Λ_max are floored there (a rank-deficient Σ would
        otherwise give inf for γ > 0)."""
        lam = self._eig_scaled
        k = self.components_.shape[0]
        floor = max(float(lam[0]), np.finfo(np.float64).tiny) * len(lam) * np.finfo(np.float64).eps
        # (Λ/s²)^(−γ/2) · s^(−γ) = Λ^(−γ/2), without forming Λ (which may overflow)
        return np.maximum(lam[:k], floor) ** (-float(self.gamma) / 2.0) * float(getattr(self, "scale_", 1.0)) ** (-float(self.gamma))

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, shift) in float64 with transform(x) = (x − shift) W: W = U_k Λ_k^{−γ/2} (d, k) and
        shift = βμ (d,) — SPEC 5.1 as one affine map, e.g. for a linear layer elsewhere."""
        self._check_fitted()
        return self.components_.T * self._scale(), float(self.beta) * self.mean_

    def _check_fitted(self):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "components_")

    def transform(self, X) -> np.ndarray:
        """x̃ = (x − βμ) U_k Λ_k^{−γ/2} (SPEC 5.1); float32 in → float32 out, float64 otherwise.

        float32 input is transformed in float32: subtracting βμ in float32 adds an error no larger
        than the input's own rounding (~6e-8·|x|), and the float32 product is twice as fast."""
        self._check_fitted()
        if _is_dask(X):
            from kexue.whitening_dask import transform_dask

            return transform_dask(self, X)
        X = self._validate(X, reset=False)
        W, shift = self.affine()
        W, shift = W.astype(X.dtype), shift.astype(X.dtype)
        out = np.empty((len(X), W.shape[1]), dtype=X.dtype)
        for s in range(0, len(X), CHUNK):
            np.matmul(X[s : s + CHUNK] - shift, W, out=out[s : s + CHUNK])
        return out

    def inverse_transform(self, Z) -> np.ndarray:
        """x ≈ z Λ_k^{γ/2} U_kᵀ + βμ: exact for k = d (and Λ > 0), else the least-squares
        reconstruction from the kept coordinates, as PCA's inverse_transform."""
        self._check_fitted()
        from sklearn.utils.validation import check_array

        try:
            Z = check_array(Z, dtype=[np.float64, np.float32])
        except (ValueError, TypeError) as e:
            raise _one_line(e) from None
        k = self.components_.shape[0]
        if Z.shape[1] != k:
            raise KexueError(f"inverse_transform got {plural(Z.shape[1], 'column')} but the transform keeps k={k}")
        W = (self.components_.T / self._scale()).T  # (k, d)
        return (Z.astype(np.float64) @ W + float(self.beta) * self.mean_).astype(Z.dtype, copy=False)

    def get_feature_names_out(self, input_features=None):
        self._check_fitted()
        return np.asarray([f"whitening{i}" for i in range(self.components_.shape[0])], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ----- conditioning ------------------------------------------------------------------------

    def condition_number(self) -> float:
        """λ_max / λ_min of Σ (inf when Σ is singular), computed from Λ / s² so it is finite
        even when Λ overflows."""
        self._check_fitted()
        lam = self._eig_scaled
        return float(lam[0] / lam[-1]) if lam[-1] > 0 else float("inf")

    def rank(self) -> int:
        """The numerical rank of Σ: eigenvalues above d·eps·λ_max (the floor :meth:`transform` uses)."""
        self._check_fitted()
        lam = self._eig_scaled
        floor = max(float(lam[0]), np.finfo(np.float64).tiny) * len(lam) * np.finfo(np.float64).eps
        return int(np.sum(lam > floor))

    def conditioning_warning(self, flag: str = "n_components") -> str | None:
        """One line saying Σ is rank-deficient or badly conditioned (λ_max/λ_min > ILL_CONDITIONED),
        naming how many coordinates to keep (``flag``: the parameter or option the caller knows);
        ``None`` when Σ is well conditioned or γ = 0 (a rotation amplifies nothing)."""
        self._check_fitted()
        lam = self._eig_scaled  # ratios of Λ / s² are those of Λ, and never inf / inf
        d = len(lam)
        rank = self.rank()
        cond = float(lam[0] / lam[-1]) if lam[-1] > 0 else float("inf")
        if float(self.gamma) == 0 or (rank == d and cond <= ILL_CONDITIONED):
            return None
        well = int(np.sum(lam * ILL_CONDITIONED >= lam[0]))  # directions within the conditioning limit
        what = f"rank-deficient (rank {rank} of {d})" if rank < d else "badly conditioned"
        return (f"Σ is {what}, condition {cond:.3g}: Λ^(-γ/2) turns its smallest directions into amplified "
                f"noise; keep only the leading ones, e.g. {flag} {min(rank, well)}")

    # ----- saving (the file format is kexue._whitening_io) -------------------------------------

    def save(self, path) -> Path:
        """Write the fitted transform (β, γ, k, μ, U, Λ and the accumulators, so a reloaded transform
        can keep streaming) to one ``.safetensors`` file (:func:`kexue.io.save_fitted`), atomically."""
        return _whitening_io.save(self, path)

    @classmethod
    def load(cls, path) -> Whitening:
        """Read a transform written by :meth:`save` (or by releases before it, .npz/.safetensors);
        a one-line KexueError for a missing, corrupt or foreign file."""
        return _whitening_io.load(cls, path)
