"""Figures and text of the learning-rate-free study (``kexue.experiments.lrfree``): held-out loss
curves per workload, the performance profile, the robustness sweep, and the goal checks."""

from __future__ import annotations

import math

import numpy as np

from kexue.experiments._lrfree_runs import DIVERGE_FACTOR, KNOBS, TUNED, profile

TAUS = np.logspace(0, math.log10(64), 121)  # performance-profile axis: 1 … 64 × the best


def _style(o: str) -> dict:
    from kexue.experiments._lrfree_runs import KEXUE

    return {"ls": "-" if o in KEXUE else ("--" if o in TUNED else ":"), "lw": 1.6 if o.startswith("EGAdapt") else 1.1}


def mean_curve(runs: list) -> tuple[list, list] | None:
    """(steps, mean held-out loss) over the runs that did not diverge, if they share their steps."""
    ok = [r["curve"] for r in runs if not r["diverged"]]
    if not ok or any([s for s, _ in c] != [s for s, _ in ok[0]] for c in ok):
        return None
    return [s for s, _ in ok[0]], list(np.mean([[v for _, v in c] for c in ok], axis=0))


def figures(ctx, cfg, sweep: dict, seeds: dict, m: dict) -> None:
    from matplotlib.figure import Figure

    W, O = cfg.workloads, cfg.optimisers
    fig = Figure(figsize=(3.6 * len(W), 3.4))
    for i, w in enumerate(W):
        ax = fig.add_subplot(1, len(W), i + 1)
        first = None
        for o in O:
            c = mean_curve(seeds[(w, o)])
            if c is None:
                continue
            first = first or c[1][0]
            ax.plot(c[0], c[1], label=o, **_style(o))
        if math.isfinite(m["target"][w]):
            ax.axhline(m["target"][w], color="k", lw=0.7, ls="-.")
        ax.set(yscale="log", xlabel="step", title=f"{w} ({cfg.steps[w]} steps)",
               ylabel="held-out loss" if i == 0 else None)
        if first is not None:
            ax.set_ylim(top=first * 1.3)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    ctx.figure("curves", fig, caption="Held-out loss during training, each method at its default (AdamW and SGD "
               "at their best grid value), mean over the seeds that did not diverge; dash-dot line: the "
               "target, 1.05 × the tuned AdamW's final loss.")

    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    prof = profile({(w, o): m["steps"][(w, o)] for w in W for o in O}, TAUS)
    for o in O:
        ax.step(TAUS, prof[o], where="post", label=o, **_style(o))
    ax.set(xscale="log", xlabel="τ (steps ÷ the fastest method's, per workload)",
           ylabel="fraction of workloads reached within τ", ylim=(-0.02, 1.02))
    ax.legend(fontsize=6)
    fig.tight_layout()
    ctx.figure("profile", fig, caption=f"Performance profile over the {len(W)} workloads (Dolan & Moré): steps "
               "to the target relative to the fastest method; a method that never reaches it stays below 1.")

    fig = Figure(figsize=(3.6 * len(W), 3.4))
    for i, w in enumerate(W):
        ax = fig.add_subplot(1, len(W), i + 1)
        finite = [r["final"] for (ww, _, _), r in sweep.items() if ww == w and not r["diverged"]]
        top = float(np.nanmax(finite)) * 1.05 if finite else 1.0
        for o in O:
            xs = list(cfg.mults)
            ys = [sweep[(w, o, x)]["final"] if not sweep[(w, o, x)]["diverged"] else top for x in xs]
            ax.plot(xs, ys, marker="o", ms=3, label=o, **_style(o))
            ax.plot([x for x in xs if sweep[(w, o, x)]["diverged"]],
                    [top for x in xs if sweep[(w, o, x)]["diverged"]], "kx", ms=7)
        ax.set(xscale="log", yscale="log", xlabel="knob × its default", title=w,
               ylabel="final held-out loss" if i == 0 else None)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    ctx.figure("sweep", fig, caption=f"Robustness sweep, seed {ctx.seed}: final held-out loss against each method's "
               "knob (initial LR, d0 or base LR) times its default; × = diverged.")


def goals(cfg, m: dict, o: str) -> dict:
    """The issue's goals for a kexue default: within 1.5 × tuned AdamW's steps on every workload,
    no divergence anywhere, geometric-mean steps at most Prodigy's and Schedule-Free's."""
    W = cfg.workloads
    slow = [w for w in W if not m["steps"][(w, o)] <= 1.5 * m["steps"][(w, "AdamW")]]
    divs = sum(m["div_all"][(w, o)] for w in W)
    rivals = [r for r in ("Prodigy", "SF-AdamW") if r in cfg.optimisers]
    behind = [r for r in rivals if not (math.isfinite(m["geomean"][o]) and m["geomean"][o] <= m["geomean"][r])]
    return {"slow": slow, "divergences": divs, "behind": behind}


def text(ctx, cfg, sweep: dict, seeds: dict, m: dict, versions: dict) -> None:
    from kexue.experiments._lrfree_workloads import corpus_info

    W, O = cfg.workloads, cfg.optimisers
    mode = "full" if cfg.full_data and not ctx.quick else "quick"
    rows = f"the first {cfg.held_out_rows:,} of " if cfg.held_out_rows else ""
    data = (f"the 60,000 MNIST training images, held-out loss on {rows}the 10,000 test images" if cfg.full_data
            else f"MNIST-5k split 4,500 train / 500 held out (held-out loss on {rows}those 500)")
    c = corpus_info()
    lines = []
    for o in [x for x in ("EGAdapt(SGD)", "EGAdapt(Adam)") if x in O]:
        g = goals(cfg, m, o)
        lines.append(f"- **{o}**: within 1.5 × tuned AdamW's steps on "
                     + ("every workload" if not g["slow"] else f"{len(W) - len(g['slow'])} of {len(W)} workloads "
                        f"(not on {', '.join(g['slow'])})")
                     + f"; {g['divergences']} divergence(s) over the seeds and the sweep; geometric-mean steps "
                     f"{m['geomean'][o]:.0f} against Prodigy {m['geomean'].get('Prodigy', math.nan):.0f} and "
                     f"Schedule-Free {m['geomean'].get('SF-AdamW', math.nan):.0f} — "
                     + ("undefined (inf): the target is missed on some workload" if not math.isfinite(m["geomean"][o])
                        else "level or ahead" if not g["behind"] else f"behind {', '.join(g['behind'])}") + ".")
    tuning = sum(len(cfg.grid(o)) * cfg.steps[w] for w in W for o in TUNED if o in O)
    ctx.text(f"""
**Setting ({mode} mode).** Workloads: {', '.join(f'{w} ({cfg.steps[w]} steps, {cfg.seeds[w]} seed(s))' for w in W)}.
MNIST workloads train on {data}; the character LSTM on the first 90 % of `pydoc_data.topics`
(Python {c['python']}, {c['characters']:,} characters, sha256 {c['sha256']}), held-out loss on the last 10 %.
Held-out loss every {1 / cfg.evals:.3g} of the run; steps to target is the first evaluation at or below the target.
Anchors: {', '.join(f'{k} {v}' for k, v in versions.items())}, each at its package's defaults
({', '.join(f'{o}: {KNOBS[o][0]} {KNOBS[o][1]:g}' for o in O if o not in TUNED)}).
Tuned references: AdamW and SGD (momentum 0.9) on the grid {', '.join(f'{x:g}' for x in cfg.grid('AdamW'))} × their
default ({KNOBS['AdamW'][1]:g}, {KNOBS['SGD'][1]:g}), one seed per grid point: {tuning:,} training steps of tuning in all.
A divergence is a NaN/inf training loss or one above {DIVERGE_FACTOR:g} × the first step's.
{"Quick mode is a smoke test (a few dozen steps, one seed): its numbers say nothing about the methods." if mode == "quick" else ""}

**The goals for kexue's default** (from the numbers above):

{chr(10).join(lines)}
""")
