"""A compact U-Net ε-network for small images (1×28×28 MNIST, 1×8×8 digits) on a CPU.

Sinusoidal time embedding → MLP, added inside every residual block; ``len(mults)`` resolution
levels (28 → 14 → 7 for three levels), skip connections by concatenation, optional self-attention
at the lowest resolution. Called as ``net(x, k)`` with diffusers' 0-based timestep k = t - 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from kexue.utils import KexueError


def timestep_embedding(k: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of the (float) timestep, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=k.device) / half)
    a = k.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def _groups(ch: int, groups: int) -> int:
    g = min(groups, ch)
    while ch % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(cin, groups), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = nn.GroupNorm(_groups(cout, groups), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x))) + self.t(temb)[:, :, None, None]
        h = self.c2(self.drop(F.silu(self.n2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    def __init__(self, ch: int, groups: int = 8, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.attn = nn.MultiheadAttention(ch, heads if ch % heads == 0 else 1, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)
        y, _ = self.attn(y, y, y, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`: ``base`` channels at the top level, multiplied by ``mults``
    per resolution level, ``n_res`` residual blocks per level, optional self-attention at the
    lowest resolution."""

    channels: int = 1
    base: int = 32
    mults: tuple[int, ...] = (1, 2, 2)
    n_res: int = 1
    attention: bool = False
    groups: int = 8
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "mults", tuple(int(m) for m in self.mults))
        if self.n_res < 1 or not self.mults or self.base < 1 or self.channels < 1 or min(self.mults) < 1:
            raise KexueError("UNet needs channels, base, n_res ≥ 1 and at least one positive level in mults")

    def to_dict(self) -> dict:
        return {**asdict(self), "mults": list(self.mults)}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(**{**d, "mults": tuple(d["mults"])})


class UNet(nn.Module):
    """ε-network: ``UNet(UNetConfig(base=16, mults=(1, 2, 2)))`` or ``UNet(base=16, mults=(1, 2, 2))``.

    Input (B, C, H, W) with H, W divisible by 2^(len(mults)-1); output has the same shape.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise KexueError("give UNet either a UNetConfig or keyword arguments, not both")
        self.config = config
        channels, base, mults, n_res = config.channels, config.base, config.mults, config.n_res
        attention, groups, dropout = config.attention, config.groups, config.dropout
        tdim = 4 * base
        self.temb = nn.Sequential(nn.Linear(base, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)
        chs = [base * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = base
        for i, co in enumerate(chs):
            self.down.append(nn.ModuleList([ResBlock(c if j == 0 else co, co, tdim, groups, dropout) for j in range(n_res)]))
            c = co
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, tdim, groups, dropout)
        self.mid_attn = Attention(c, groups) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, tdim, groups, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chs))):
            co = chs[i]
            self.up.append(nn.ModuleList([ResBlock(c + co if j == 0 else co, co, tdim, groups, dropout) for j in range(n_res)]))
            c = co
            if i > 0:
                self.upsample.append(nn.Conv2d(c, chs[i - 1], 3, padding=1))
                c = chs[i - 1]
        self.norm_out = nn.GroupNorm(_groups(c, groups), c)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start as the zero predictor: a stable first loss of ≈1
        if self.conv_out.bias is not None:  # always: Conv2d's default bias=True
            nn.init.zeros_(self.conv_out.bias)
        self.levels = len(chs)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        f = 2 ** (self.levels - 1)
        if x.ndim != 4 or x.shape[2] % f or x.shape[3] % f:
            raise KexueError(f"UNet expects (B, C, H, W) with H, W divisible by {f}, got {tuple(x.shape)}")
        k = torch.as_tensor(k, device=x.device)
        if k.ndim == 0:
            k = k.expand(x.shape[0])
        temb = self.temb(timestep_embedding(k, self.config.base))
        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down):
            for b in cast(nn.ModuleList, blocks):
                h = b(h, temb)
            skips.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for j, blocks in enumerate(self.up):
            h = torch.cat([h, skips[self.levels - 1 - j]], dim=1)
            for b in cast(nn.ModuleList, blocks):
                h = b(h, temb)
            if j < self.levels - 1:
                h = self.upsample[j](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
