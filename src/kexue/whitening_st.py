"""Whitening inside a sentence-transformers model (SPEC 5.1 as the model's last layer).

The whitening map x ↦ (x − βμ) U_k Λ_k^{−γ/2} is affine, so inside a ``SentenceTransformer`` it
is sentence-transformers' own ``Dense`` layer with identity activation: weight (U_k Λ_k^{−γ/2})ᵀ,
bias −βμ U_k Λ_k^{−γ/2}. Using the library's own module means ``model.save(dir)`` writes it as
safetensors + JSON like every other layer, and ``SentenceTransformer(dir)`` loads it offline
with no pickle, no ``trust_remote_code`` and without kexue installed::

    from sentence_transformers import SentenceTransformer
    from kexue.whitening_st import fit_whitening

    model = SentenceTransformer("all-MiniLM-L6-v2")
    model.append(fit_whitening(model, corpus, beta=1.0, gamma=1.0, k=128))
    model.encode(sentences)          # whitened, k coordinates
    model.save("minilm-whitened")    # SentenceTransformer("minilm-whitened") gives the same vectors
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kexue import validate
from kexue.utils import KexueError, tracker_or_null, require
from kexue.whitening import Whitening


def _dense_class():
    require("text", "sentence_transformers", "whitening inside a sentence-transformers model")
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.models import Dense
    return Dense


def whitening_dense(w: Whitening):
    """A sentence-transformers ``Dense`` layer computing ``w.transform`` (float32) for a fitted
    :class:`~kexue.whitening.Whitening`; append it to a model whose embeddings ``w`` was fitted on."""
    torch = require("torch", "torch", "a whitening layer for sentence-transformers")

    W, shift = w.affine()  # float64: the bias is formed before rounding to float32
    Dense = _dense_class()
    return Dense(W.shape[0], W.shape[1], bias=True, activation_function=torch.nn.Identity(),
                 init_weight=torch.from_numpy(np.ascontiguousarray(W.T, dtype=np.float32)),
                 init_bias=torch.from_numpy((-(shift @ W)).astype(np.float32)))


def fit_whitening(model, sentences: Sequence[str], beta: float = 1.0, gamma: float = 1.0, k: int | None = None, *,
                  batch_size: int = 256, tracker=None):
    """Fit whitening (β, γ, k) on ``model``'s embeddings of ``sentences`` and return it as a
    ``Dense`` layer to append (``model.append(...)`` or ``SentenceTransformer(modules=[..., layer])``).

    The corpus is encoded ``batch_size`` sentences at a time and streamed into the fit, so memory
    is O(batch·d + d²) whatever its size. No labels are used: fitting on the sentences you will
    compare (as the post does) or on any in-domain corpus are both fine.
    """
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise KexueError(f"sentences must be a list of strings, not {type(sentences).__name__}")
    bad = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
    if bad is not None:
        raise KexueError(f"sentence {bad} is a {type(sentences[bad]).__name__}, not a string")
    validate.integer(len(sentences), "the number of sentences", lo=2)
    batch_size = validate.integer(batch_size, "batch_size", lo=1)
    w = Whitening(beta=beta, gamma=gamma, n_components=k)
    d = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    if k is not None and d is not None and validate.integer(k, "k", lo=1) > d:
        raise KexueError(f"k={k} is larger than the model's embedding dimension {d}; choose k <= {d}")
    starts = range(0, len(sentences), batch_size)
    chunks = (model.encode(list(sentences[s:s + batch_size]), batch_size=batch_size, convert_to_numpy=True,
                           show_progress_bar=False)
              for s in tracker_or_null(tracker).track(starts, "encoding the corpus", len(starts)))
    w.fit_chunks(chunks)
    return whitening_dense(w)
