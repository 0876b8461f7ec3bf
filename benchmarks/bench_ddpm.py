"""Per-step overhead of kexue's samplers vs diffusers' schedulers with the same network.

Two measurements in one run, same inputs for both sides:
1. scheduler overhead alone — a null network (returns a constant), so the time is the step maths
   and bookkeeping; reported per step;
2. end to end with the same small U-Net (kexue.ddpm.UNet) — network time dominates there.
Prints the ratios ours/diffusers (< 1 means ours is faster).
"""

from __future__ import annotations

import time

import torch


def best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    import diffusers

    from kexue.ddpm import DDIMSampler, DDPMSampler, NoiseSchedule, UNet, linear_schedule

    import sys

    # one intra-op thread by default: on a busy 2-core machine a second thread mostly spin-waits
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    torch.manual_seed(0)
    T = 1000
    ref_ddim = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=False)
    ref_ddpm = diffusers.DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    sched = NoiseSchedule.from_alphas_cumprod(ref_ddim.alphas_cumprod.double().numpy())
    assert torch.allclose(sched.alpha_bars[1:] ** 2, linear_schedule(T).alpha_bars[1:] ** 2, atol=1e-6)
    x_T = torch.randn(64, 1, 28, 28)
    const = torch.zeros_like(x_T)
    null = lambda x, k: const  # noqa: E731
    unet = UNet(base=16, mults=(1, 2, 2)).eval()

    def ours(sampler, net):
        return lambda: sampler(net, x_T=x_T.clone(), generator=torch.Generator().manual_seed(0))

    def theirs(sch, steps, net, **kw):
        def run():
            g = torch.Generator().manual_seed(0)
            sch.set_timesteps(steps)
            x = x_T.clone()
            with torch.no_grad():
                for k in sch.timesteps:
                    x = sch.step(net(x, k.expand(len(x))), k, x, generator=g, **kw).prev_sample
            return x
        return run

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {torch.get_num_threads()}")
    print("1) scheduler overhead per step (null network, batch 64×1×28×28)")
    cases = [("DDIM-50 η=0", DDIMSampler(sched, 50, 0.0), theirs(ref_ddim, 50, null, eta=0.0), 50),
             ("DDIM-50 η=1", DDIMSampler(sched, 50, 1.0), theirs(ref_ddim, 50, null, eta=1.0), 50),
             ("DDPM-1000", DDPMSampler(sched, "posterior"), theirs(ref_ddpm, T, null), T)]
    for name, smp, ref, n in cases:
        r = 3 if n <= 50 else 2
        a, b = best_of(ours(smp, null), r), best_of(ref, r)
        print(f"   {name:12s} ours {a / n * 1e6:8.1f} µs/step   diffusers {b / n * 1e6:8.1f} µs/step   ratio {a / b:.2f}")
    print("2) end to end with the same U-Net (kexue UNet base 16, 188k parameters), DDIM-20 η=0")
    a = best_of(ours(DDIMSampler(sched, 20, 0.0), unet), repeat=2)
    b = best_of(theirs(ref_ddim, 20, unet, eta=0.0), repeat=2)
    print(f"   ours {a:.3f} s   diffusers {b:.3f} s   ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
