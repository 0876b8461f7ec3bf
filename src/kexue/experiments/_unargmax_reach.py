"""Section 3b of the unargmax experiment: SmolLM2's reachable probabilities (SPEC 3.8, issue 32).

R is taken from the model itself: the norms of its final hidden states (after the last RMSNorm:
the vectors its head multiplies) on STS-B sentences, with the GGUF file's weights (transformers
dequantises them; offline). Without transformers the section says so and uses R = 30 and 60,
the range those norms had when measured (29.8-59.7 on 816 tokens)."""

from __future__ import annotations

import os
import time

import numpy as np

FALLBACK_R = (30.0, 60.0)


def hidden_norms(data_dir, n_sentences: int = 200) -> np.ndarray | None:
    """‖h‖₂ of SmolLM2-135M's final hidden states on STS-B test sentences, or None when
    transformers (the ``lm`` extra) or the files are missing."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return None
    from kexue.data import load_stsb, smollm2_path

    p = smollm2_path()
    folder, name = os.path.dirname(p), os.path.basename(p)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
        sents = list(load_stsb(data_dir)["test"].sentence1[:n_sentences])
    except (OSError, ValueError, KeyError):
        return None
    norms = []
    with torch.no_grad():
        for s in sents:
            out = model(**tok(s, return_tensors="pt"), output_hidden_states=True)
            norms.append(out.hidden_states[-1][0].norm(dim=-1).numpy())  # after the final norm layer
    return np.concatenate(norms).astype(np.float64)


def run(ctx, layer, jobs: int) -> None:
    from kexue.unargmax import reachable

    ctx.text("### 3b. How high can each token's probability go? (SPEC 3.8)")
    norms = hidden_norms(ctx.data_dir, 40 if ctx.quick else 200)
    if norms is not None:
        radii = (float(norms.min()), float(norms.max()))
        ctx.metric("reach_smollm2_hidden_norms", {"tokens": int(norms.size), "min": round(radii[0], 3),
                                                  "median": round(float(np.median(norms)), 3), "max": round(radii[1], 3)})
        src = (f"the norms of SmolLM2's own final hidden states on {norms.size} tokens of STS-B sentences "
               f"(min {radii[0]:.2f}, median {np.median(norms):.2f}, max {radii[1]:.2f})")
    else:
        radii = FALLBACK_R
        src = "R = 30 and 60 (transformers is not installed here, so the model was not run; its final hidden states had norms 29.8-59.7 when measured)"
    C = layer.W.shape[0]
    classes = np.sort(np.random.default_rng(ctx.seed).choice(C, 2048, replace=False)) if ctx.quick else None
    rows = []
    for tag, R in (("", radii[1]), ("_rmin", radii[0])):
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        rr = reachable(layer.W, layer.b, R, n_jobs=jobs, classes=classes, reach_tol=1e-4, tracker=ctx.tracker)
        secs = time.perf_counter() - t0
        ids = np.flatnonzero(rr._mask())
        b5, b9 = rr.below(0.5), rr.below(0.9)
        m = f"reach_smollm2{tag}"
        ctx.metric(f"{m}_radius", round(R, 3))
        ctx.metric(f"{m}_seconds", round(secs, 1))
        ctx.metric(f"{m}_classes", int(ids.size))
        ctx.metric(f"{m}_max_width", float(f"{rr.width[ids].max():.3g}"))
        ctx.metric(f"{m}_below_0.5", int(b5.size))
        ctx.metric(f"{m}_below_0.9", int(b9.size))
        ctx.metric(f"{m}_unresolved", int(rr.unresolved(0.5).size + rr.unresolved(0.9).size))
        ctx.metric(f"{m}_below_0.9_tokens", [layer.token(int(k)) for k in b9[:60]])
        rows.append([f"{R:.2f}", ids.size, int(b5.size), int(b9.size), f"{rr.width[ids].max():.1e}", round(secs, 1),
                     f"{load0:.2f}"])
    ctx.table("reachable", ["R", "classes", "cannot reach 0.5", "cannot reach 0.9", "widest interval", "seconds",
                            "load before"], rows,
              caption="For each class i, a certified interval around max softmax(Wh)_i over ‖h‖₂ ≤ R (lower: a "
                      f"witness h; upper: a dual bound), at {src}; {jobs} worker processes.")
