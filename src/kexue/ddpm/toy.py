"""SPEC 7.4 on toy data with the exact ε-model: which reverse variance reproduces the forward
marginals (used by the experiment and the tests)."""

from __future__ import annotations

import torch

from kexue.ddpm.sampler import DDPMSampler
from kexue.ddpm.schedule import linear_schedule


def variance_check(n: int = 2000, dim: int = 64, T: int = 1000, seed: int = 0) -> list[list]:
    """SPEC 7.4 on two toy data sets with the *exact* ε-model, run through DDPMSampler.step.

    Single point x_0 = c: ε*(x_t, t) = (x_t - ᾱ_t c)/β̄_t, q(x_t) = N(ᾱ_t c, β̄_t² I).
    Standard normal data: ε*(x_t, t) = E[ε | x_t] = β̄_t x_t, q(x_t) = N(0, I) for every t.
    The chain starts from the exact q(x_T); a variance choice is exact when every reverse marginal
    p(x_t) equals q(x_t). Rows: [data, variance, max_t |Var p(x_t)/Var q(x_t) - 1| in closed form
    (float64 mean/variance recursion of the linear-Gaussian chain), the same by Monte Carlo with
    ``n`` chains of dimension ``dim``, |E p(x_0) - E q(x_0)| by Monte Carlo].
    The last step also draws its noise (``final_noise``), as the exact reverse chain does.
    """
    sched = linear_schedule(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
    c = 0.8
    ab, bb = sched.alpha_bars, sched.beta_bars
    models = {  # exact ε-models; the network index is k = t - 1
        "single point": (lambda x, k: (x - float(ab[int(k[0]) + 1]) * c) / float(bb[int(k[0]) + 1]),
                         lambda t: (float(ab[t]) * c, float(bb[t]) ** 2)),
        "standard normal": (lambda x, k: float(bb[int(k[0]) + 1]) * x, lambda t: (0.0, 1.0)),
    }
    rows = []
    for data, (model, q) in models.items():
        for variance in ("posterior", "beta"):
            smp = DDPMSampler(sched, variance, final_noise=True)
            g = torch.Generator().manual_seed(seed)
            m, v = q(T)
            x = m + v ** 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
            cf_err = mc_err = 0.0
            for t in range(T, 0, -1):
                k = torch.full((n,), t - 1)
                x = smp.step(model(x, k), t, t - 1, x, torch.randn(n, dim, generator=g, dtype=torch.float64))
                # closed form of the same step: x ← a x + b + σ z with x̂_0 = c or ᾱ_t x_t
                k1 = float(sched.alphas[t] * bb[t - 1] ** 2 / bb[t] ** 2)
                k2 = float(ab[t - 1] * sched.betas[t] ** 2 / bb[t] ** 2)
                a, b = (k1, k2 * c) if data == "single point" else (k1 + k2 * float(ab[t]), 0.0)
                m, v = a * m + b, a * a * v + smp.sigma2(t)
                if t > 1:  # Var q(x_0) = 0 for the single point; compare the means there instead
                    qv = q(t - 1)[1]
                    cf_err = max(cf_err, abs(v / qv - 1))
                    mc_err = max(mc_err, abs(float(x.var(0).mean()) / qv - 1))
            rows.append([data, variance, cf_err, mc_err, abs(float(x.mean()) - q(0)[0])])
    return rows
