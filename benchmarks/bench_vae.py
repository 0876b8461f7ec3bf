"""Benchmark: kexue.vae.log_likelihood vs a plain per-image loop and pythae's VAE.get_nll.

    .venv/bin/python benchmarks/bench_vae.py [--n 1000] [-K 1000] [--threads 1] [--repeats 3]

All three estimate log q(x) with K importance samples from the encoder (SPEC 1.4) on the same
network (the IWAE paper's 784–200–200–50 Bernoulli model, briefly trained on MNIST-5k):

- ours: chunks of images × samples sized to the cache, one decoder pass per chunk, Σ x·a from a
  small matrix product, running logsumexps (:func:`kexue.vae.log_likelihood`);
- loop: the straightforward per-image loop, ``logsumexp(model.log_weights(x_i, K))``;
- pythae: ``VAE.get_nll`` of pythae 0.1.2 wrapping *our* encoder and decoder weights (its
  BaseEncoder/BaseDecoder interface), so it computes the same estimator on the same network.
  ``make bench`` installs it with ``pip install --no-deps pythae cloudpickle imageio``.

Timed interleaved (A B C A B C …, medians; benchmarks/_bench.py) with the load average printed.
The estimates must agree within Monte-Carlo error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import interleaved, load  # noqa: E402


def _pythae(model):
    try:
        from pythae.models import VAE as PVAE
        from pythae.models import VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
    except Exception as e:  # not installed or broken: say so, keep the loop comparison
        print(f"# pythae unavailable ({type(e).__name__}: {e}); compared with the per-image loop only")
        return None

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

    return PVAE(VAEConfig(input_dim=(784,), latent_dim=model.latent_dim, reconstruction_loss="bce"),
                encoder=Enc(model), decoder=Dec(model)).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="test images")
    ap.add_argument("-K", type=int, default=1000, help="importance samples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300, help="training steps for the benchmarked model")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from kexue.data import load_mnist5k, load_mnist_test
    from kexue.vae import fit_vae, log_likelihood, prepare

    model = fit_vae(load_mnist5k()[0], steps=a.steps, seed=0)
    x = prepare(load_mnist_test()[0][:a.n], "binary", "stochastic", seed=1)
    res = {}

    def ours():
        res["ours"] = log_likelihood(model, x, K=a.K, seed=0).nll

    def loop():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            lq = [float(torch.logsumexp(model.log_weights(x[i:i + 1], a.K, generator=g)[:, 0], 0)) - np.log(a.K)
                  for i in range(len(x))]
        res["loop"] = -float(np.mean(lq))

    fns = {"ours": ours, "loop": loop}
    pv = _pythae(model)
    if pv is not None:
        def pythae():
            torch.manual_seed(0)
            with torch.no_grad():
                res["pythae"] = -float(pv.get_nll(x, n_samples=a.K, batch_size=100))
        fns["pythae"] = pythae
    print(f"# log q(x): N={a.n} test images, K={a.K}, {a.threads} thread(s), {a.repeats} interleaved repeats; {load()}")
    t = interleaved(fns, repeats=a.repeats)
    for k in fns:
        extra = "" if k == "ours" else f"   {k}/ours = {t[k] / t['ours']:5.2f}x"
        print(f"{k:<7} {t[k]:8.2f} s   NLL {res[k]:.3f} nats{extra}")
    print(f"# after: {load()}")


if __name__ == "__main__":
    main()
