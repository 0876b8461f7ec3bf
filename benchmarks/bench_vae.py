"""Benchmark: kexue.vae.log_likelihood vs pythae's VAE.get_nll on the same model and data.

    .venv/bin/python benchmarks/bench_vae.py [--n 1000] [-K 1000] [--threads 1]

Both estimate log q(x) with K importance samples from the encoder (SPEC 1.4). pythae loops over
images and, per image, over chunks of ``batch_size`` samples; ours batches rows and samples
together in memory-bounded blocks. The pythae model wraps *our* encoder and decoder weights
(pythae's BaseEncoder/BaseDecoder interface), so both compute the same estimator on the same
network; the two estimates must agree within Monte-Carlo error. A plain per-image loop over our
own ``log_weights`` is timed too. (pythae 0.1.2 is installed with ``pip install --no-deps pythae``;
it imports and runs with this project's torch.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="test images")
    ap.add_argument("-K", type=int, default=1000, help="importance samples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300, help="training steps for the benchmarked model")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from kexue.data import load_mnist5k, load_mnist_test
    from kexue.vae import fit_vae, log_likelihood, prepare

    X, _ = load_mnist5k()
    Xt, _ = load_mnist_test()
    model = fit_vae(X, steps=a.steps, seed=0)
    x = prepare(Xt[:a.n], "binary", "stochastic", seed=1)

    t0 = time.perf_counter()
    ours = log_likelihood(model, x, K=a.K, seed=0)
    t_ours = time.perf_counter() - t0
    print(f"kexue log_likelihood  N={a.n} K={a.K}: {t_ours:7.2f} s   NLL {ours.nll:.3f} nats "
          f"(mean MC s.e. {ours.stderr.mean():.3f})")

    # the straightforward per-image loop (one image, all K samples at once)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        loop = np.array([float(torch.logsumexp(model.log_weights(x[i:i + 1], a.K, generator=g)[:, 0], 0)) - np.log(a.K)
                         for i in range(len(x))])
    t_loop = time.perf_counter() - t0
    print(f"per-image loop                        : {t_loop:7.2f} s   NLL {-loop.mean():.3f} nats   "
          f"ratio loop/ours = {t_loop / t_ours:.2f}")

    try:
        from pythae.models import VAE as PVAE
        from pythae.models import VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
    except Exception as e:  # pythae not installed or broken: say so, keep the loop comparison
        print(f"pythae unavailable ({type(e).__name__}: {e}); compared with the per-image loop only")
        return

    class Enc(BaseEncoder):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            mu, lv = self.m.enc1(x.reshape(len(x), -1))
            return ModelOutput(embedding=mu, log_covariance=lv)

    class Dec(BaseDecoder):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            return ModelOutput(reconstruction=self.m.dec.mean(z))

    pv = PVAE(VAEConfig(input_dim=(784,), latent_dim=model.latent_dim, reconstruction_loss="bce"),
              encoder=Enc(model), decoder=Dec(model)).eval()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        ll = pv.get_nll(x, n_samples=a.K, batch_size=100)
    t_py = time.perf_counter() - t0
    print(f"pythae VAE.get_nll (batch_size=100)   : {t_py:7.2f} s   NLL {-ll:.3f} nats   "
          f"ratio pythae/ours = {t_py / t_ours:.2f}")
    print(f"agreement: |ours − pythae| = {abs(ours.nll + ll):.3f} nats (MC s.e. of the mean ≈ {ours.stderr.mean() / np.sqrt(a.n):.3f}; "
          "pythae's BCE clamps log-probabilities at −100, ours uses logits)")


if __name__ == "__main__":
    main()
