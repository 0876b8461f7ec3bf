"""BERT-whitening with hyperparameters β, γ and k (SPEC 5), plus the STS-B evaluation harness.

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

which is SPEC 5.1 expanded. The accumulators do not depend on β, γ or k, so
:meth:`Whitening.set_params` after a fit re-decomposes without another pass over the data.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from kexue.utils import KexueError, atomic_path

CHUNK = 65536  # rows converted to float64 at a time: bounds the fit's extra memory to ~CHUNK·d·8 bytes
FORMAT = "kexue.whitening/1"


class WhiteningError(KexueError, ValueError):
    """Bad input to :class:`Whitening`: a KexueError for the CLI, a ValueError for scikit-learn."""


class WhiteningTypeError(KexueError, TypeError):
    """Input of a type that is not numbers (e.g. an object array of dicts)."""


def _one_line(e: Exception) -> Exception:
    """sklearn's validation message squeezed to one line, with the fix named."""
    text = str(e) or type(e).__name__
    msg = text.splitlines()[0].rstrip(":")
    if "Reshape your data" in text:
        msg += "; Reshape your data: X.reshape(1, -1) for one vector, X.reshape(-1, 1) for one feature"
    elif "NaN" in msg or "infinity" in msg:
        msg += " (whitening needs finite vectors; drop or fix those rows)"
    return WhiteningTypeError(msg) if isinstance(e, TypeError) else WhiteningError(msg)


def _check_params(beta, gamma, n_components) -> None:
    for name, v in (("beta", beta), ("gamma", gamma)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
            raise WhiteningError(f"{name} must be a finite number (the post uses 0..1), got {v!r}")
    if gamma < 0:
        raise WhiteningError(f"gamma must be >= 0 (it is the power of Λ^(-γ/2)), got {gamma}")
    if n_components is not None and (isinstance(n_components, bool) or not isinstance(n_components, numbers.Integral)
                                     or n_components < 1):
        raise WhiteningError(f"n_components must be a positive integer or None (keep all d), got {n_components!r}")


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

    # ----- input checking ---------------------------------------------------------------------

    def _validate(self, X, reset: bool):
        from sklearn.utils.validation import validate_data

        try:
            X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=1,
                              accept_sparse=False)
        except WhiteningError:
            raise
        except (ValueError, TypeError) as e:
            raise _one_line(e) from None
        return X

    # ----- fitting ----------------------------------------------------------------------------

    def _reset(self):
        for a in ("n_samples_seen_", "shift_", "sum_", "gram_", "n_features_in_", "mean_", "components_",
                  "explained_variance_", "singular_values_", "eigenvalues_", "eigenvectors_"):
            self.__dict__.pop(a, None)

    def _accumulate(self, X: np.ndarray) -> None:
        """Add a chunk to the float64 accumulators (count, Σ(x−c), Σ(x−c)ᵀ(x−c))."""
        if not hasattr(self, "n_samples_seen_"):
            d = X.shape[1]
            self.n_samples_seen_ = 0
            self.shift_ = X[: min(len(X), CHUNK)].astype(np.float64).mean(axis=0)
            self.sum_ = np.zeros(d)
            self.gram_ = np.zeros((d, d))
        from scipy.linalg.blas import dsyrk

        for s in range(0, len(X), CHUNK):
            Y = X[s : s + CHUNK].astype(np.float64) - self.shift_
            self.sum_ += Y.sum(axis=0)
            # YᵀY with BLAS syrk: half the flops of a general product (Y.T is Fortran-ordered: no copy)
            G = dsyrk(1.0, Y.T, trans=0, lower=0)
            self.gram_ += np.triu(G) + np.triu(G, 1).T
            self.n_samples_seen_ += len(Y)

    def _decompose(self) -> "Whitening":
        """Σ about βμ from the accumulators, then U, Λ (SPEC 5.1)."""
        _check_params(self.beta, self.gamma, self.n_components)
        N, d = self.n_samples_seen_, self.n_features_in_
        if N < 2:
            raise WhiteningError(f"got {N} sample; whitening needs at least 2 samples (N < 2) to estimate Σ")
        k = d if self.n_components is None else int(self.n_components)
        if k > d:
            raise WhiteningError(f"n_components={k} is larger than the dimension d={d}; choose k <= {d}")
        mu_y = self.sum_ / N  # μ − c
        mu = self.shift_ + mu_y
        a = float(self.beta) * mu - self.shift_  # βμ − c
        S = self.gram_ / N - np.outer(a, mu_y) - np.outer(mu_y, a) + np.outer(a, a)
        S = 0.5 * (S + S.T)  # exact symmetry for eigh
        lam, U = np.linalg.eigh(S)
        lam, U = lam[::-1].copy(), U[:, ::-1].copy()
        # deterministic signs (as sklearn's svd_flip): the largest-|.| entry of each column is positive
        signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(d)])
        signs[signs == 0] = 1.0
        U *= signs
        lam = np.maximum(lam, 0.0)  # Σ is PSD; tiny negative values are rounding
        self.mean_ = mu
        self.eigenvalues_ = lam
        self.eigenvectors_ = U
        self.components_ = U[:, :k].T.copy()
        self.explained_variance_ = lam[:k].copy()
        self.singular_values_ = np.sqrt(N * lam[:k])
        return self

    def fit(self, X, y=None) -> "Whitening":
        """Fit μ, U, Λ on X (n, d) in one call (processed in float64 chunks of CHUNK rows)."""
        _check_params(self.beta, self.gamma, self.n_components)
        self._reset()
        X = self._validate(X, reset=True)
        self._accumulate(X)
        return self._decompose()

    def partial_fit(self, X, y=None) -> "Whitening":
        """Add one chunk of rows to the running fit (streaming); the result after the last chunk
        equals ``fit`` on all rows (up to float64 rounding). Decomposes once the count is >= 2."""
        _check_params(self.beta, self.gamma, self.n_components)
        first = not hasattr(self, "n_samples_seen_")
        X = self._validate(X, reset=first)
        self._accumulate(X)
        if self.n_samples_seen_ >= 2:
            self._decompose()
        return self

    def fit_chunks(self, chunks: Iterable) -> "Whitening":
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
            raise WhiteningError("no chunks to fit; pass at least one (n, d) array")
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
        lam = self.explained_variance_
        floor = max(float(self.eigenvalues_[0]), np.finfo(np.float64).tiny) * len(self.eigenvalues_) * np.finfo(np.float64).eps
        return np.maximum(lam, floor) ** (-float(self.gamma) / 2.0)

    def _check_fitted(self):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "components_")

    def transform(self, X) -> np.ndarray:
        """x̃ = (x − βμ) U_k Λ_k^{−γ/2} (SPEC 5.1); float32 in → float32 out, float64 otherwise.

        float32 input is transformed in float32: subtracting βμ in float32 adds an error no larger
        than the input's own rounding (~6e-8·|x|), and the float32 product is twice as fast."""
        self._check_fitted()
        X = self._validate(X, reset=False)
        W = (self.components_.T * self._scale()).astype(X.dtype)  # (d, k)
        shift = (float(self.beta) * self.mean_).astype(X.dtype)
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
            raise WhiteningError(f"inverse_transform got {Z.shape[1]} columns but the transform keeps k={k}")
        W = (self.components_.T / self._scale()).T  # (k, d)
        return (Z.astype(np.float64) @ W + float(self.beta) * self.mean_).astype(Z.dtype, copy=False)

    def get_feature_names_out(self, input_features=None):
        self._check_fitted()
        return np.asarray([f"whitening{i}" for i in range(self.components_.shape[0])], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ----- saving -----------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write the fitted transform (parameters, μ, U, Λ and the accumulators) to ``.safetensors``
        or ``.npz`` (no pickle), atomically."""
        self._check_fitted()
        path = Path(path)
        tensors = {"mean": self.mean_, "eigenvalues": self.eigenvalues_, "eigenvectors": self.eigenvectors_,
                   "shift": self.shift_, "sum": self.sum_, "gram": self.gram_,
                   "n_samples_seen": np.asarray([self.n_samples_seen_], dtype=np.int64)}
        meta = {"format": FORMAT, "beta": repr(float(self.beta)), "gamma": repr(float(self.gamma)),
                "n_components": "" if self.n_components is None else str(int(self.n_components))}
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            with atomic_path(path) as tmp:
                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
        elif path.suffix == ".npz":
            with atomic_path(path) as tmp:
                np.savez(tmp, **tensors, meta=np.asarray(json.dumps(meta)))
        else:
            raise WhiteningError(f"cannot save to {path.name}: use a .safetensors or .npz file name")
        return path

    @classmethod
    def load(cls, path) -> "Whitening":
        """Read a transform written by :meth:`save`; a WhiteningError for a missing/corrupt/foreign file."""
        path = Path(path)
        if not path.is_file():
            raise WhiteningError(f"{path} does not exist; fit a transform first (kexue whiten fit)")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="numpy") as f:
                    meta = f.metadata() or {}
                    t = {k: f.get_tensor(k) for k in f.keys()}
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    t = {k: z[k] for k in z.files}
                meta = json.loads(str(t.pop("meta"))) if "meta" in t else {}
            else:
                raise WhiteningError(f"cannot read {path.name}: a transform is a .safetensors or .npz file")
        except WhiteningError:
            raise
        except Exception as e:  # safetensors/zip raise assorted types for corrupt files
            raise WhiteningError(f"{path} is not a readable whitening transform ({type(e).__name__}: {e}); fit it again") from None
        if meta.get("format") != FORMAT:
            raise WhiteningError(f"{path} is not a kexue whitening transform (format {meta.get('format')!r}); fit it again")
        need = {"mean", "eigenvalues", "eigenvectors", "shift", "sum", "gram", "n_samples_seen"}
        if not need <= set(t):
            raise WhiteningError(f"{path} lacks {', '.join(sorted(need - set(t)))}; fit it again")
        k = meta.get("n_components", "")
        w = cls(beta=float(meta["beta"]), gamma=float(meta["gamma"]), n_components=int(k) if k else None)
        d = len(t["mean"])
        if t["gram"].shape != (d, d) or t["eigenvectors"].shape != (d, d):
            raise WhiteningError(f"{path} has inconsistent shapes; fit it again")
        w.n_features_in_ = d
        w.n_samples_seen_ = int(t["n_samples_seen"][0])
        w.shift_, w.sum_, w.gram_ = t["shift"], t["sum"], t["gram"]
        return w._decompose()


# ---------------------------------------------------------------------------------------------
# STS evaluation harness (SPEC 5: cosine + Spearman ×100 on STS-B)


def cosine_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for each row pair, in float64."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    na = np.linalg.norm(A, axis=1)
    nb = np.linalg.norm(B, axis=1)
    return (A * B).sum(1) / np.maximum(na * nb, np.finfo(np.float64).tiny)


def spearman100(pred, gold) -> float:
    """Spearman rank correlation ×100, the STS metric."""
    from scipy.stats import spearmanr

    return float(spearmanr(pred, gold).statistic * 100.0)


@dataclass
class STSPairs:
    """Embeddings of one STS split: A[i], B[i] are the two sentences of pair i, score its gold."""

    A: np.ndarray
    B: np.ndarray
    score: np.ndarray

    def spearman(self, transform=None) -> float:
        A, B = (self.A, self.B) if transform is None else (transform(self.A), transform(self.B))
        return spearman100(cosine_rows(A, B), self.score)


def stsb_embeddings(encoder: str = "minilm", pooling: str = "default", data_dir=None, cache_dir=None,
                    tracker=None, splits=("train", "dev", "test"), limit: int | None = None) -> dict[str, STSPairs]:
    """Encode STS-B with a kexue encoder: {split: STSPairs}. Each split is encoded as one list
    sentence1 + sentence2 (so the disk cache is shared with anyone encoding the same split).
    ``limit`` keeps the first ``limit`` pairs of each split (for quick runs and tests)."""
    from kexue import data, encoders

    st = data.load_stsb(data_dir)
    out = {}
    for name in splits:
        s = st[name]
        n = len(s) if limit is None else min(limit, len(s))
        E = encoders.encode(s.sentence1[:n] + s.sentence2[:n], encoder, pooling, cache_dir=cache_dir, tracker=tracker)
        out[name] = STSPairs(E[:n], E[n:], s.score[:n])
    return out


def k_grid(d: int) -> list[int]:
    """k ∈ {d, d/2, d/3, d/4, d/8, d/16, ...} (rounded, >= 8), descending and distinct."""
    ks = [d, d // 2, d // 3, d // 4]
    q = 8
    while d // q >= 8:
        ks.append(d // q)
        q *= 2
    return sorted(set(k for k in ks if k >= 1), reverse=True)


GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class SearchResult:
    """Spearman ×100 on dev and test for every (β, γ, k); ``best`` is the dev-chosen setting."""

    betas: list[float]
    gammas: list[float]
    ks: list[int]
    dev: np.ndarray  # (nβ, nγ, nk)
    test: np.ndarray
    raw_dev: float
    raw_test: float
    fit_on: str
    best: dict = field(default_factory=dict)

    def at(self, beta: float, gamma: float, k: int) -> tuple[float, float]:
        i, j, l = self.betas.index(beta), self.gammas.index(gamma), self.ks.index(k)
        return float(self.dev[i, j, l]), float(self.test[i, j, l])

    def to_dict(self) -> dict:
        return {"betas": self.betas, "gammas": self.gammas, "ks": self.ks, "dev": self.dev.tolist(),
                "test": self.test.tolist(), "raw_dev": self.raw_dev, "raw_test": self.raw_test,
                "fit_on": self.fit_on, "best": self.best}


def search(splits: dict[str, STSPairs], betas=GRID, gammas=GRID, ks=None, fit_on: str = "all") -> SearchResult:
    """Grid search over (β, γ, k): choose by STS-B dev Spearman, report test (SPEC 5.3 conclusion).

    ``fit_on="all"`` fits μ, Σ on every sentence of train+dev+test, as the post does
    (unsupervised: no labels are used); ``fit_on="train"`` uses the train sentences only.
    One pass builds the accumulators; each β needs one eigendecomposition; γ and k only rescale
    and truncate the rotated vectors. Ties on dev go to the first setting in grid order.
    """
    if fit_on not in ("all", "train"):
        raise KexueError(f"fit_on must be 'all' or 'train', got {fit_on!r}")
    for s in ("dev", "test") + (("train",) if fit_on == "train" else ()):
        if s not in splits:
            raise KexueError(f"search needs the {s} split of STS-B")
    fit_splits = list(splits) if fit_on == "all" else ["train"]
    d = splits["dev"].A.shape[1]
    ks = k_grid(d) if ks is None else sorted(set(int(k) for k in ks), reverse=True)
    betas, gammas = [float(b) for b in betas], [float(g) for g in gammas]
    w = Whitening(beta=betas[0], gamma=1.0)
    w.fit_chunks(M for s in fit_splits for M in (splits[s].A, splits[s].B))
    scores = {s: np.zeros((len(betas), len(gammas), len(ks))) for s in ("dev", "test")}
    for i, b in enumerate(betas):
        w.set_params(beta=b, gamma=0.0, n_components=None)  # rotation only; rescale per γ below
        lam = np.maximum(w.eigenvalues_, w.eigenvalues_[0] * d * np.finfo(np.float64).eps)
        rot = {s: (w.transform(splits[s].A.astype(np.float64)), w.transform(splits[s].B.astype(np.float64)))
               for s in ("dev", "test")}
        for j, g in enumerate(gammas):
            sc = lam ** (-g / 2.0)
            for s, (A, B) in rot.items():
                A, B = A * sc, B * sc
                for l, k in enumerate(ks):
                    scores[s][i, j, l] = spearman100(cosine_rows(A[:, :k], B[:, :k]), splits[s].score)
    flat = int(np.argmax(scores["dev"]))  # first maximum in (β, γ, k) order
    i, j, l = np.unravel_index(flat, scores["dev"].shape)
    best = {"beta": betas[i], "gamma": gammas[j], "k": ks[l], "dev": float(scores["dev"][i, j, l]),
            "test": float(scores["test"][i, j, l])}
    return SearchResult(betas, gammas, ks, scores["dev"], scores["test"], splits["dev"].spearman(),
                        splits["test"].spearman(), fit_on, best)
