"""Per-step time of the kexue.eg optimisers vs their torch.optim base, on a ~10M-parameter MLP.

Prints, for each optimiser, the median time of ``optimizer.step()`` alone and of a whole
training step (forward + backward + step), and both as ratios to the base optimiser
(torch.optim.SGD for the SGD family and EG types, torch.optim.Adam for the Adam family).
All optimisers are timed in the same run, interleaved round by round, so machine load affects
them alike. Usage: ``.venv/bin/python benchmarks/bench_eg.py [--rounds 5] [--steps 10]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kexue.eg import EG, EGAdapt, EGPlusMinus, EGStep, AdamHD, SGDHD


def model_10m() -> torch.nn.Module:
    # 784·2560 + 2560·2560 + 2560·1024 + 1024·10 ≈ 10.2M parameters
    return torch.nn.Sequential(torch.nn.Linear(784, 2560), torch.nn.ReLU(), torch.nn.Linear(2560, 2560),
                               torch.nn.ReLU(), torch.nn.Linear(2560, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))


OPTS = {
    "torch SGD(m=0.9)": ("SGD", lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9)),
    "torch Adam": ("Adam", lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    "EG": ("SGD", lambda ps: EG(ps, lr=1e-3)),
    "EGPlusMinus": ("SGD", lambda ps: EGPlusMinus(ps, lr=1e-3)),
    "EGStep": ("SGD", lambda ps: EGStep(ps, lr=1e-3)),
    "SGDHD(m=0.9)": ("SGD", lambda ps: SGDHD(ps, lr=1e-3, momentum=0.9)),
    "EGAdapt(SGD m=0.9)": ("SGD", lambda ps: EGAdapt(torch.optim.SGD(ps, lr=1e-3, momentum=0.9))),
    "AdamHD": ("Adam", lambda ps: AdamHD(ps, lr=1e-3)),
    "EGAdapt(Adam)": ("Adam", lambda ps: EGAdapt(torch.optim.Adam(ps, lr=1e-3))),
}
BASE = {"SGD": "torch SGD(m=0.9)", "Adam": "torch Adam"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, 784), torch.randint(0, 10, (args.batch,))
    setups = {}
    for name, (_, make) in OPTS.items():
        model = model_10m()
        # EG types need non-negative weights; start them at |w| (same cost per step)
        if name in ("EG",):
            with torch.no_grad():
                for p in model.parameters():
                    p.abs_()
        setups[name] = (model, make(list(model.parameters())))
    n_params = sum(p.numel() for p in model_10m().parameters())
    step_t = {k: [] for k in OPTS}
    full_t = {k: [] for k in OPTS}
    for r in range(args.rounds + 1):  # round 0 warms up (allocates optimiser state)
        for name, (model, opt) in setups.items():
            st, ft = [], []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                st.append(t2 - t1)
                ft.append(t2 - t0)
            if r > 0:
                step_t[name] += st
                full_t[name] += ft
    print(f"model: {n_params / 1e6:.1f}M parameters, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians over {args.rounds}×{args.steps} steps")
    print(f"{'optimiser':<22}{'step() ms':>11}{'ratio':>8}{'train step ms':>15}{'ratio':>8}   base")
    for name, (base, _) in OPTS.items():
        s, f = statistics.median(step_t[name]), statistics.median(full_t[name])
        bs, bf = statistics.median(step_t[BASE[base]]), statistics.median(full_t[BASE[base]])
        print(f"{name:<22}{s * 1e3:>11.2f}{s / bs:>8.2f}{f * 1e3:>15.1f}{f / bf:>8.2f}   {BASE[base]}")


if __name__ == "__main__":
    main()
