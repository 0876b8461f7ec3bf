"""kexue's DDPM/DDIM samplers vs diffusers' schedulers driving the same network.

Same inputs on both sides, timed interleaved (A B A B …, medians) with the load average printed
before and after (benchmarks/_bench.py):
1. scheduler overhead alone — a null network (returns a constant), so the time is the step maths
   and bookkeeping; reported per step;
2. end to end with the same U-Net (kexue.ddpm.UNet, base 16, levels 1,2,2: the full-mode model),
   64 images of 28×28: DDIM-20 and DDIM-50 (η = 0), as a user calls each library.
Ratios are ours/diffusers (below 1 means kexue is faster). Usage: python benchmarks/bench_ddpm.py [threads]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import interleaved, load, ratio_line  # noqa: E402


def main():
    import diffusers

    from kexue.ddpm import DDIMSampler, DDPMSampler, NoiseSchedule, UNet, linear_schedule

    # one intra-op thread by default: the project's policy ($KEXUE_THREADS or 1)
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
    print(load())
    print("1) scheduler overhead per step (null network, batch 64×1×28×28)")
    cases = [("DDIM-50 η=0", DDIMSampler(sched, 50, 0.0), theirs(ref_ddim, 50, null, eta=0.0), 50, 7),
             ("DDIM-50 η=1", DDIMSampler(sched, 50, 1.0), theirs(ref_ddim, 50, null, eta=1.0), 50, 7),
             ("DDPM-1000", DDPMSampler(sched, "posterior"), theirs(ref_ddpm, T, null), T, 3)]
    for name, smp, ref, n, reps in cases:
        t = interleaved({"ours": ours(smp, null), "diffusers": ref}, repeats=reps)
        print(f"   {name:12s} ours {t['ours'] / n * 1e6:8.1f} µs/step   diffusers {t['diffusers'] / n * 1e6:8.1f} µs/step"
              f"   ratio {t['ours'] / t['diffusers']:.2f}")
    print("2) end to end with the same U-Net (kexue UNet base 16, levels 1,2,2), 64 images")
    for steps, reps in ((20, 9), (50, 5)):
        t = interleaved({"ours": ours(DDIMSampler(sched, steps, 0.0), unet),
                         "diffusers": theirs(ref_ddim, steps, unet, eta=0.0)}, repeats=reps)
        print("   " + ratio_line(f"DDIM-{steps} η=0", t["ours"], t["diffusers"], "diffusers"))
    print(load())


if __name__ == "__main__":
    main()
