"""Step time of every optimiser of the learning-rate-free study on each of its workloads.

A whole training step (forward, backward, ``step()``) on one torch thread, each optimiser with its
own model copy, timed in turn (``_bench.interleaved``: medians over ``--repeats`` rounds of
``--steps`` steps). Prints ms per step and the ratio to the base each method wraps or modifies
(EGAdapt(SGD), SGD-HD → SGD; EGAdapt(Adam), Adam-HD, Prodigy, SF-AdamW, DAdapt-Adam → Adam;
EGStep → plain SGD), and the load average. The study uses these times to size its step budgets.

    python benchmarks/bench_lrfree.py [--workloads logreg,cnn] [--steps 20] [--repeats 5] [--full]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _bench import interleaved, load  # noqa: E402

BASE = {"EGAdapt(SGD)": "SGD", "SGD-HD": "SGD", "EGStep": "SGD(no momentum)", "EGAdapt(Adam)": "Adam",
        "Adam-HD": "Adam", "Prodigy": "Adam", "SF-AdamW": "Adam", "DAdapt-Adam": "Adam", "AdamW": "Adam"}


def main(argv=None) -> None:
    import torch

    from kexue.experiments._lrfree_runs import OPTIMISERS, make_optimizer, train_mode_hooks
    from kexue.experiments._lrfree_workloads import WORKLOADS, build
    from kexue.train import batch_indices

    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="the full-mode data (60,000 MNIST images)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# {load()}; one torch thread; {a.steps} steps per timing, median of {a.repeats}")
    names = list(OPTIMISERS) + ["Adam", "SGD(no momentum)"]
    for wname in a.workloads.split(","):
        fns = {}
        for name in names:
            w = build(wname, 0, full=a.full, held_out_rows=256)
            if name == "Adam":
                opt = torch.optim.Adam(w.model.parameters(), lr=1e-3)
            elif name == "SGD(no momentum)":
                opt = torch.optim.SGD(w.model.parameters(), lr=1e-2)
            else:
                opt = make_optimizer(name, w.model.parameters())
            train_mode_hooks(opt)[0]()
            n, k = len(w.data[0]), [0]

            def run(w=w, opt=opt, n=n, k=k):
                for _ in range(a.steps):
                    idx = batch_indices(n, w.batch_size, k[0], 0)
                    k[0] += 1
                    opt.zero_grad(set_to_none=True)
                    w.loss(w.model, [t[idx] for t in w.data]).backward()
                    opt.step()
            fns[name] = run
        t = interleaved(fns, repeats=a.repeats)
        for name in names:
            ms = t[name] / a.steps * 1e3
            ratio = f"  {t[name] / t[BASE[name]]:5.2f}x {BASE[name]}" if name in BASE else ""
            print(f"{wname:<7} {name:<17} {ms:8.2f} ms/step{ratio}")
    print(f"# {load()}")


if __name__ == "__main__":
    main()
