"""Benchmark: training steps/s of kexue.train on the IWAE paper's MNIST model vs a plain PyTorch loop.

    .venv/bin/python benchmarks/bench_vae_train.py [--steps 200] [-M 1 5 50] [--threads 1]

Same model (784–200–200–50 tanh, Bernoulli decoder), same loss (kexue.vae.iwae_loss with M
samples), same optimiser (Adam, lr 1e-3), batches of 100 dynamically binarised images of the
60,000-image MNIST training set. Contenders, timed interleaved (benchmarks/_bench.py):

- ``kexue.train``: :func:`kexue.train.train` (accelerate, deterministic per-step batches and
  RNG, loss logging) — what :func:`kexue.vae.fit_vae` runs;
- ``plain loop``: the loop a user writes by hand, indexing a shuffled tensor;
- ``DataLoader loop``: the idiomatic ``DataLoader(TensorDataset(X), shuffle=True)`` loop.

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
    ap.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    ap.add_argument("-M", type=int, nargs="+", default=[1, 5, 50], help="importance samples in the objective")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from kexue.data import load_mnist_train
    from kexue.train import train
    from kexue.vae import VAE, iwae_loss

    X = torch.as_tensor(load_mnist_train()[0]).float().div_(255)
    print(f"# VAE training step, {len(X):,} MNIST images, batch 100, {a.steps} steps per run, "
          f"{a.threads} thread(s); {load()}")
    print(f"{'M':>3}  {'kexue.train':>12}  {'plain loop':>12}  {'DataLoader':>12}  {'ratio plain':>11}  {'ratio DataLoader':>16}")
    for M in a.M:
        def loss_fn(m, batch, M=M):
            return iwae_loss(m, torch.bernoulli(batch[0]), M)

        def ours():
            torch.manual_seed(0)
            train(VAE(), loss_fn, [X], steps=a.steps, batch_size=100, lr=1e-3, seed=0)

        def plain():
            torch.manual_seed(0)
            model = VAE()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            perm, losses = torch.randperm(len(X)), []
            for step in range(a.steps):
                i = (step * 100) % (len(X) - 99)
                loss = loss_fn(model, [X[perm[i:i + 100]]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss))

        def dataloader():
            torch.manual_seed(0)
            model = VAE()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=100, shuffle=True)
            for step, batch in zip(range(a.steps), loader):
                loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        t = interleaved({"ours": ours, "plain": plain, "dl": dataloader}, repeats=a.repeats)
        sps = {k: a.steps / v for k, v in t.items()}
        print(f"{M:>3}  {sps['ours']:9.1f}/s  {sps['plain']:9.1f}/s  {sps['dl']:9.1f}/s  "
              f"{sps['ours'] / sps['plain']:10.2f}x  {sps['ours'] / sps['dl']:15.2f}x", flush=True)
    print(f"# after: {load()}")


if __name__ == "__main__":
    main()
