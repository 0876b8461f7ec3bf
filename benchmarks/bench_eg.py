"""Whole training step (forward + backward + ``optimizer.step()``) of the kexue.eg optimisers vs
their torch.optim base, on an 11.2M-parameter MLP (issue 14: goal ≤ 1.3× the base).

Every contender has its own copy of the model and its own optimiser state; one training step of
each is timed in turn (A B C … A B C …, ``_bench.interleaved``), so machine load affects them
alike, and the medians are compared. The base is torch.optim.SGD(momentum=0.9) for the SGD
family and the EG types, torch.optim.Adam for the Adam family, both with torch's default
implementation for CPU tensors. kexue's optimisers run their default path — for EGPlusMinus,
EGStep and EGAdapt on a group this large that is the compiled kernel (``compile=None``; its
one-off compile falls in the untimed warm-up rounds); ``--eager`` adds their multi-tensor rows
(``compile=False``); the per-tensor reference path (``foreach=False``) is timed too, for the
speed-up, unless ``--no-reference``.

    .venv/bin/python benchmarks/bench_eg.py [--repeats 15] [--batch 128] [--only EGStep,…] [--eager] [--compiled]
"""

from __future__ import annotations

import argparse

import torch
from _bench import interleaved, load

from kexue.eg import EG, EGAdapt, EGPlusMinus, EGStep, AdamHD, SGDHD


def model_11m() -> torch.nn.Module:
    # 784·2560 + 2560·2560 + 2560·1024 + 1024·10 + biases ≈ 11.2M parameters
    return torch.nn.Sequential(torch.nn.Linear(784, 2560), torch.nn.ReLU(), torch.nn.Linear(2560, 2560),
                               torch.nn.ReLU(), torch.nn.Linear(2560, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))


SGD = "torch SGD(m=0.9)"
ADAM = "torch Adam"
OPTS = {  # name: (base name, factory(params, keyword arguments: foreach, compile))
    SGD: (SGD, lambda ps, kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9)),
    ADAM: (ADAM, lambda ps, kw: torch.optim.Adam(ps, lr=1e-3)),
    "EG": (SGD, lambda ps, kw: EG(ps, lr=1e-3, **kw)),
    "EGPlusMinus": (SGD, lambda ps, kw: EGPlusMinus(ps, lr=1e-3, **kw)),
    "EGStep": (SGD, lambda ps, kw: EGStep(ps, lr=1e-3, **kw)),
    "SGDHD(m=0.9)": (SGD, lambda ps, kw: SGDHD(ps, lr=1e-3, momentum=0.9, **kw)),
    "EGAdapt(SGD m=0.9)": (SGD, lambda ps, kw: EGAdapt(torch.optim.SGD(ps, lr=1e-3, momentum=0.9), **kw)),
    "AdamHD": (ADAM, lambda ps, kw: AdamHD(ps, lr=1e-3, **kw)),
    "EGAdapt(Adam)": (ADAM, lambda ps, kw: EGAdapt(torch.optim.Adam(ps, lr=1e-3), **kw)),
}
HAS_COMPILE = ("EGPlusMinus", "EGStep", "EGAdapt(SGD m=0.9)", "EGAdapt(Adam)")  # take compile=


def train_step(name: str, kw: dict, x, y, compiled: bool = False):
    torch.manual_seed(0)
    model = model_11m()
    if name == "EG":  # EG needs non-negative weights; |w| costs the same per step
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
    opt = OPTS[name][1](list(model.parameters()), kw)
    opt_step = torch.compile(opt.step) if compiled else opt.step  # inductor fuses the element-wise chain

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt_step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated optimiser names (the bases are always timed)")
    ap.add_argument("--no-reference", action="store_true", help="skip the foreach=False rows")
    ap.add_argument("--eager", action="store_true",
                    help="also time the optimisers that take compile= with compile=False (multi-tensor path)")
    ap.add_argument("--compiled", action="store_true",
                    help="also time each kexue optimiser with torch.compile(opt.step) (compile time excluded)")
    args = ap.parse_args()
    names = [n for n in OPTS if n in (SGD, ADAM) or not args.only or n in args.only.split(",")]
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, 784), torch.randint(0, 10, (args.batch,))
    fns = {}
    for n in names:
        fns[n] = train_step(n, {}, x, y)
        if n in HAS_COMPILE and args.eager:
            fns[n + " [eager]"] = train_step(n, dict(compile=False), x, y)
        if n not in (SGD, ADAM) and not args.no_reference:
            fns[n + " [reference]"] = train_step(n, dict(foreach=False), x, y)
        if n not in (SGD, ADAM) and args.compiled:
            fns[n + " [compiled step]"] = train_step(n, {}, x, y, compiled=True)
    before = load()
    t = interleaved(fns, repeats=args.repeats, warmup=2)
    after = load()
    n_params = sum(p.numel() for p in model_11m().parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved train steps")
    print(f"before: {before}\nafter:  {after}")
    print(f"{'optimiser':<34}{'train step ms':>14}{'ratio to base':>15}   base")
    for k, v in t.items():
        base = OPTS[k.split(" [")[0]][0]
        print(f"{k:<34}{v * 1e3:>14.1f}{v / t[base]:>15.2f}   {base}")


if __name__ == "__main__":
    main()
