"""Sample quality for generated MNIST digits, with no download: a small CNN trained on
MNIST-5k (cached) supplies features and class probabilities.

- ``frechet_distance``: ‖μ₁-μ₂‖² + tr(Σ₁ + Σ₂ - 2(Σ₁Σ₂)^{1/2}) between Gaussian fits of the
  classifier's penultimate features (FID's formula, in our classifier's feature space — so the
  numbers are comparable with each other, not with published FIDs).
- ``confidence``: mean max-softmax probability (do samples look like *some* digit?).
- ``mode_entropy``: entropy of the predicted-class histogram in nats (log 10 ≈ 2.303 is perfect
  coverage of the ten digits).

Images are float arrays in [0, 1] of shape (N, 784).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)
import torch

from kexue.nets import SmallCNN
from kexue.utils import KexueError


def to_unit(X: np.ndarray) -> np.ndarray:
    """uint8 0..255 images → float32 in [0, 1]."""
    return np.asarray(X, dtype=np.float32) / 255.0


def mnist_classifier(cache_dir: str | Path | None = None, seed: int = 0, epochs: int = 8, tracker=None) -> SmallCNN:
    """A SmallCNN trained on MNIST-5k (≈98 % test accuracy); cached as safetensors in ``cache_dir``."""
    from safetensors.torch import load_file, save_file

    from kexue.data import load_mnist5k
    from kexue.train import train
    from kexue.utils import atomic_path

    clf = SmallCNN()
    path = Path(cache_dir) / f"mnist_cnn_seed{seed}_ep{epochs}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        try:
            clf.load_state_dict(load_file(path))
            return clf.eval()
        except Exception:
            pass  # a corrupt cache is rebuilt below
    X, y = load_mnist5k()
    Xt, yt = torch.from_numpy(to_unit(X)), torch.from_numpy(y)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = SmallCNN()

        def loss(m, b):
            # light augmentation: random shifts of up to 2 pixels, so features generalise
            x = b[0].reshape(-1, 1, 28, 28)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            return torch.nn.functional.cross_entropy(m(x), b[1])

        steps = epochs * len(X) // 64
        res = train(clf, loss, [Xt, yt], steps=steps, batch_size=64, lr=1e-3, seed=seed, tracker=tracker,
                    description="MNIST classifier")
    clf = cast(SmallCNN, res.model.eval())  # train returns the module it was given
    if path is not None:
        with atomic_path(path, parents=True) as tmp:
            save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp))
    return clf


@torch.no_grad()
def classify(clf: SmallCNN, X: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, 128) float64 and softmax probabilities (N, 10) for images in [0, 1]."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != clf.side**2:
        raise KexueError(f"expected images of shape (N, {clf.side**2}), got {X.shape}")
    feats, probs = [], []
    for i in range(0, len(X), batch):
        f = clf.features(torch.from_numpy(X[i:i + batch]))
        feats.append(f.double().numpy())
        probs.append(torch.softmax(clf.head(f), dim=1).double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (rows are samples)."""
    import warnings

    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        # rank-deficient covariances (few samples, dead ReLUs) are expected; the real part is used
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@dataclass
class Quality:
    fd: float
    confidence: float
    mode_entropy: float
    class_hist: list

    def row(self) -> list:
        return [self.fd, self.confidence, self.mode_entropy]


def sample_quality(clf: SmallCNN, samples: np.ndarray, reference_features: np.ndarray) -> Quality:
    """FD to the reference features, mean confidence and class-histogram entropy of ``samples``."""
    samples = np.clip(np.asarray(samples, dtype=np.float32), 0.0, 1.0)
    f, p = classify(clf, samples)
    hist = np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p)
    nz = hist[hist > 0]
    return Quality(frechet_distance(f, reference_features), float(p.max(1).mean()), float(-(nz * np.log(nz)).sum()),
                   hist.tolist())
