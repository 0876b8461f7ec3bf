"""Small networks shared by the experiments (MNIST-sized inputs, CPU-friendly)."""

from __future__ import annotations

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)
import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected net: ``sizes = [d_in, h1, ..., d_out]`` with an activation between layers."""

    def __init__(self, sizes: list[int], act: type[nn.Module] = nn.ReLU):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for 1×28×28 (or 1×8×8) images.

    ``features(x)`` returns the penultimate activations (used for Fréchet distances);
    ``forward(x)`` the logits. Accepts flat (N, side²) or (N, 1, side, side) input.
    """

    def __init__(self, n_classes: int = 10, side: int = 28, width: int = 32, feat_dim: int = 128):
        super().__init__()
        self.side = side
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (side // 4) ** 2, feat_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feat_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, self.side, self.side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
