"""The STS evaluation harness for whitening (SPEC 5.3): encode sentence pairs, score cosine
similarity against gold scores with Spearman ×100, and grid-search (β, γ, k).

Pairs come from STS-B (:func:`stsb_embeddings`, the post's benchmark) or from a user's own
tab-separated file of ``sentence1, sentence2, score`` rows (:func:`read_pairs`,
:func:`pairs_embeddings`). This module is the only part of whitening that needs the data
loaders and the encoders; :mod:`kexue.whitening` itself works on any matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kexue.utils import KexueError, plural
from kexue.whitening import Whitening

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def cosine_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for each row pair, in float64."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    na = np.linalg.norm(A, axis=1)
    nb = np.linalg.norm(B, axis=1)
    return (A * B).sum(1) / np.maximum(na * nb, np.finfo(np.float64).tiny)


def spearman100(pred, gold) -> float:
    """Spearman rank correlation ×100, the STS metric."""
    import warnings

    from scipy.stats import ConstantInputWarning, spearmanr

    with warnings.catch_warnings():  # constant input: NaN is the answer, scipy's warning is noise on our console
        warnings.simplefilter("ignore", ConstantInputWarning)
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


def _encode_pairs(s1: list[str], s2: list[str], score, encoder, pooling, cache_dir, tracker) -> STSPairs:
    # one list sentence1 + sentence2, so the disk cache is shared with anyone encoding the same split
    from kexue import encoders

    n = len(s1)
    E = encoders.encode(list(s1) + list(s2), encoder, pooling, cache_dir=cache_dir, tracker=tracker)
    return STSPairs(E[:n], E[n:], np.asarray(score, dtype=np.float64))


def stsb_embeddings(encoder: str = "minilm", pooling: str = "default", data_dir=None, cache_dir=None,
                    tracker=None, splits=("train", "dev", "test"), limit: int | None = None) -> dict[str, STSPairs]:
    """Encode STS-B with a kexue encoder: {split: STSPairs}. ``limit`` keeps the first ``limit``
    pairs of each split (for quick runs and tests)."""
    from kexue import data

    st = data.load_stsb(data_dir)
    out = {}
    for name in splits:
        s = st[name]
        n = len(s) if limit is None else min(limit, len(s))
        out[name] = _encode_pairs(s.sentence1[:n], s.sentence2[:n], s.score[:n], encoder, pooling, cache_dir, tracker)
    return out


def read_pairs(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(sentence1, sentence2, score) from a UTF-8 TSV file with one pair per line: ``sentence1 TAB
    sentence2 TAB score``. A first line whose score is not a number is a header and skipped; blank
    lines are skipped. Any other malformed line is a one-line KexueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise KexueError(f"pairs file {path} not found; pass a TSV file of sentence1<TAB>sentence2<TAB>score lines")
    s1: list[str] = []
    s2: list[str] = []
    score: list[float] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise KexueError(f"pairs file {path} is not UTF-8 text; save it as UTF-8 TSV") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise KexueError(f"{path}:{i} has {len(parts)} tab-separated fields; expected sentence1, sentence2, score")
        try:
            v = float(parts[2])
        except ValueError:
            if i == 1:
                continue  # a header row
            raise KexueError(f"{path}:{i}: score {parts[2]!r} is not a number") from None
        if not np.isfinite(v):
            raise KexueError(f"{path}:{i}: score {parts[2]!r} is not finite")
        s1.append(parts[0])
        s2.append(parts[1])
        score.append(v)
    if len(score) < 10:
        raise KexueError(f"{path} has {plural(len(score), 'pair')}; a Spearman correlation needs at least 10")
    return s1, s2, np.asarray(score, dtype=np.float64)


def pairs_embeddings(path, encoder: str = "minilm", pooling: str = "default", seed: int = 0, cache_dir=None,
                     tracker=None) -> dict[str, STSPairs]:
    """A user's pairs file (see :func:`read_pairs`) encoded and split at random (``seed``) into two
    halves, ``dev`` (where the search chooses β, γ, k) and ``test`` (where the choice is scored)."""
    s1, s2, score = read_pairs(path)
    P = _encode_pairs(s1, s2, score, encoder, pooling, cache_dir, tracker)
    perm = np.random.default_rng(seed).permutation(len(score))
    half = len(perm) // 2
    return {name: STSPairs(P.A[idx], P.B[idx], P.score[idx])
            for name, idx in (("dev", np.sort(perm[:half])), ("test", np.sort(perm[half:])))}


def k_grid(d: int) -> list[int]:
    """k ∈ {d, d/2, d/3, d/4, d/8, d/16, ...} (rounded, >= 8), descending and distinct."""
    ks = [d, d // 2, d // 3, d // 4]
    q = 8
    while d // q >= 8:
        ks.append(d // q)
        q *= 2
    return sorted(set(k for k in ks if k >= 1), reverse=True)


def nearest_k(ks: list[int], target: float) -> int:
    """The k of ``ks`` closest to ``target`` (ties to the larger k), e.g. k ≈ d/3 for the tables."""
    return min(ks, key=lambda k: (abs(k - target), -k))


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
    warnings: list = field(default_factory=list)  # one-line notes for the caller to show (the library never prints)

    def at(self, beta: float, gamma: float, k: int) -> tuple[float, float]:
        i, j, l = self.betas.index(beta), self.gammas.index(gamma), self.ks.index(k)
        return float(self.dev[i, j, l]), float(self.test[i, j, l])

    def to_dict(self) -> dict:
        return {"betas": self.betas, "gammas": self.gammas, "ks": self.ks, "dev": self.dev.tolist(),
                "test": self.test.tolist(), "raw_dev": self.raw_dev, "raw_test": self.raw_test,
                "fit_on": self.fit_on, "best": self.best, "warnings": self.warnings}


def search(splits: dict[str, STSPairs], betas=GRID, gammas=GRID, ks=None, fit_on: str = "all") -> SearchResult:
    """Grid search over (β, γ, k): choose by dev Spearman, report test (SPEC 5.3 conclusion).

    ``fit_on="all"`` fits μ, Σ on every sentence of every split given, as the post does
    (unsupervised: no labels are used); ``fit_on="train"`` uses the train sentences only.
    One pass builds the accumulators; each β needs one eigendecomposition; γ and k only rescale
    and truncate the rotated vectors. Ties on dev go to the first setting in grid order.
    """
    from kexue import validate

    validate.choice(fit_on, ("all", "train"), "fit_on")
    for s in ("dev", "test") + (("train",) if fit_on == "train" else ()):
        if s not in splits:
            raise KexueError(f"search needs a {s} split; fit_on='train' needs train pairs (use fit_on='all')")
    fit_splits = list(splits) if fit_on == "all" else ["train"]
    d = splits["dev"].A.shape[1]
    ks = k_grid(d) if ks is None else sorted(set(int(k) for k in ks), reverse=True)
    betas, gammas = [float(b) for b in betas], [float(g) for g in gammas]
    w = Whitening(beta=betas[0], gamma=1.0)
    w.fit_chunks(M for s in fit_splits for M in (splits[s].A, splits[s].B))
    notes = []
    if w.rank() < d:
        n = w.n_samples_seen_
        notes.append(f"the embeddings are rank-deficient: rank {w.rank()} of dimension {d} ({n} sentences); "
                     f"with γ > 0, k > {w.rank()} rescales directions that hold only rounding noise")
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
    if np.isnan(scores["dev"]).all():
        raise KexueError("every (β, γ, k) gives a NaN dev Spearman (constant gold scores or similarities, "
                         "or fewer than 2 dev pairs); check the pairs file")
    flat = int(np.nanargmax(scores["dev"]))  # first maximum in (β, γ, k) order; NaN settings never win
    i, j, l = (int(v) for v in np.unravel_index(flat, scores["dev"].shape))
    best = {"beta": betas[i], "gamma": gammas[j], "k": ks[l], "dev": float(scores["dev"][i, j, l]),
            "test": float(scores["test"][i, j, l])}
    return SearchResult(betas, gammas, ks, scores["dev"], scores["test"], splits["dev"].spearman(),
                        splits["test"].spearman(), fit_on, best, notes)
