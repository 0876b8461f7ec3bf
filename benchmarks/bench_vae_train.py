"""Benchmark: training steps/s of kexue.train on the IWAE paper's MNIST model vs a plain PyTorch loop.

    .venv/bin/python benchmarks/bench_vae_train.py [--steps 60] [-M 1 5 50] [--threads 1]

Same model (784–200–200–50 tanh, Bernoulli decoder), same loss (kexue.vae.iwae_loss with M
samples), same optimiser (Adam, lr 1e-3), batches of 100 dynamically binarised images of the
60,000-image MNIST training set. Contenders, timed interleaved (benchmarks/_bench.py):

- ``kexue.train``: :func:`kexue.train.train` (accelerate, deterministic per-step batches and
  RNG, loss logging) with the optimiser :func:`kexue.vae.fit_vae` uses (fused Adam) — what
  ``fit_vae`` runs;
- ``plain loop``: the loop a user writes by hand, indexing a shuffled tensor, default Adam;
- ``plain, fused``: the same loop with fused Adam (isolates the loop's own overhead);
- ``DataLoader loop``: the idiomatic ``DataLoader(TensorDataset(X), shuffle=True)`` loop, default Adam.

ratio = kexue steps/s ÷ peer steps/s (≥ 1 means kexue is at least as fast).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import interleaved, load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60, help="training steps per timed run")
    ap.add_argument("-M", type=int, nargs="+", default=[1, 5, 50], help="importance samples in the objective")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also time the parts of one step")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from kexue.data import load_mnist_train
    from kexue.train import train
    from kexue.vae import VAE, iwae_loss
    from kexue.vae.fit import make_optimizer

    X = torch.as_tensor(load_mnist_train()[0]).float().div_(255)
    print(f"# VAE training step, {len(X):,} MNIST images, batch 100, {a.steps} steps per run, "
          f"{a.threads} thread(s); {load()}")
    print(f"{'M':>3}  {'kexue.train':>12}  {'plain loop':>12}  {'plain, fused':>12}  {'DataLoader':>12}  "
          f"{'ratio plain':>11}  {'ratio fused':>11}  {'ratio DataLoader':>16}")
    for M in a.M:
        def loss_fn(m, batch, M=M):
            return iwae_loss(m, torch.bernoulli(batch[0]), M)

        def ours():
            torch.manual_seed(0)
            model = VAE()
            train(model, loss_fn, [X], steps=a.steps, batch_size=100, optimizer=make_optimizer(model, 1e-3), seed=0)

        def plain(fused=False):
            torch.manual_seed(0)
            model = VAE()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
            perm, losses = torch.randperm(len(X)), []
            for step in range(a.steps):
                i = (step * 100) % (len(X) - 99)
                loss = loss_fn(model, [X[perm[i:i + 100]]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))

        def dataloader():
            torch.manual_seed(0)
            model = VAE()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=100, shuffle=True)
            for _step, batch in zip(range(a.steps), loader):
                loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        t = interleaved({"ours": ours, "plain": plain, "fused": lambda: plain(True), "dl": dataloader}, repeats=a.repeats)
        sps = {k: a.steps / v for k, v in t.items()}
        print(f"{M:>3}  {sps['ours']:9.1f}/s  {sps['plain']:9.1f}/s  {sps['fused']:9.1f}/s  {sps['dl']:9.1f}/s  "
              f"{sps['ours'] / sps['plain']:10.2f}x  {sps['ours'] / sps['fused']:10.2f}x  {sps['ours'] / sps['dl']:15.2f}x",
              flush=True)
    if a.profile:
        _profile(X, a)
    print(f"# after: {load()}")


def _profile(X, a) -> None:
    """Median milliseconds of each part of a training step: binarising the batch, the forward
    pass (the M-sample loss), the backward pass and Adam's update."""
    import statistics
    import time

    from kexue.vae import VAE, iwae_loss
    from kexue.vae.fit import make_optimizer

    print(f"# step profile (ms, median of {a.steps} steps): binarise / forward / backward / Adam")
    for M in a.M:
        torch.manual_seed(0)
        model = VAE()
        opt = make_optimizer(model, 1e-3)
        parts = {"binarise": [], "forward": [], "backward": [], "adam": []}
        for step in range(a.steps):
            t0 = time.perf_counter()
            x = torch.bernoulli(X[step * 100 % 59900:][:100])
            t1 = time.perf_counter()
            loss = iwae_loss(model, x, M)
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            for times, dt in zip(parts.values(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times.append(dt)
        print(f"M={M:>3}: " + " / ".join(f"{statistics.median(v) * 1e3:.2f}" for v in parts.values()), flush=True)


if __name__ == "__main__":
    main()
