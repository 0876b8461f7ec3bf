"""Sections 3b and 5b of the unargmax experiment: the reachable probabilities of SmolLM2's tokens
(all of them) and of a sample of Gemma 3 270M's (SPEC 3.8, issue 32).

R is taken from each model itself: the norms of its final hidden states (after the last RMSNorm:
the vectors its head multiplies) on STS-B sentences, with the GGUF file's weights (transformers
dequantises them; offline). The same run checks that the model's logits are h·Wᵀ (+ b) of the
layer the audit reads, so that R bounds the inputs of exactly that layer. Without transformers a
section says so and uses the range its model's norms had when measured."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

FALLBACK_R = (30.0, 60.0)  # SmolLM2: 29.8-59.7 on 816 tokens of 200 STS-B sentences
GEMMA = "gemma3-270m"  # the survey's key (kexue.unargmax.zoo)
GEMMA_FALLBACK_R = (57.0, 141.5)  # Gemma 3 270M: 57.02-141.50 on 335 tokens of 40 STS-B sentences (2026-12-06)
GEMMA_CLASSES = {False: 4096, True: 256}  # the sample of Gemma's 262,144 classes: full, quick mode
LINEAR_TOL = 1e-4  # relative to the largest logit: beyond it the logits are not h·Wᵀ + b of the layer


@dataclass
class HiddenNorms:
    """What running a model on sentences says about its final hidden states h."""

    norms: np.ndarray  # ‖h‖₂ of every token position
    first: np.ndarray  # ‖h‖₂ at each sentence's first position (the <bos> where the tokenizer adds one)
    rest: np.ndarray  # ‖h‖₂ at the other positions
    logit_diff: float | None  # max |model logits − (h·Wᵀ + b)| (float32) when a head was given
    logit_scale: float | None  # max |model logits|
    softcap: float | None  # the config's final_logit_softcapping (None: no cap)

    def linear(self) -> bool | None:
        """Whether the model's logits are h·Wᵀ + b of the given head (None: not checked)."""
        if self.logit_diff is None:
            return None
        return self.logit_diff <= LINEAR_TOL * max(1.0, self.logit_scale)

    def summary(self) -> dict:
        return {"tokens": int(self.norms.size), "min": round(float(self.norms.min()), 3),
                "median": round(float(np.median(self.norms)), 3), "max": round(float(self.norms.max()), 3),
                "first_position_min": round(float(self.first.min()), 3),
                "first_position_max": round(float(self.first.max()), 3),
                "later_positions_min": round(float(self.rest.min()), 3) if self.rest.size else None,
                "logit_max_abs_diff": None if self.logit_diff is None else float(f"{self.logit_diff:.3g}"),
                "logit_max_abs": None if self.logit_scale is None else round(self.logit_scale, 3),
                "final_logit_softcapping": self.softcap}


def hidden_norms(gguf_path, sentences, W=None, b=None) -> HiddenNorms | None:
    """Run the GGUF causal LM at ``gguf_path`` offline through transformers on ``sentences`` (one
    at a time, no padding) and return the norms of its final hidden states, the vectors its head
    multiplies. With a head ``W`` (C × d, + ``b``) also the largest difference between the model's
    logits and h·Wᵀ + b. None when transformers/torch (the ``lm`` extra) are missing or cannot read
    the file."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return None
    folder, name = os.path.dirname(os.fspath(gguf_path)), os.path.basename(os.fspath(gguf_path))
    from kexue.encoders import quiet_gguf_load

    try:
        with quiet_gguf_load():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         local_files_only=True).eval()
    except (OSError, ValueError, KeyError, ImportError):  # ImportError: the gguf package is missing
        return None
    Wt = None if W is None else np.asarray(W, dtype=np.float32).T
    norms, first, rest, diff, scale = [], [], [], 0.0, 0.0
    with torch.no_grad():
        for s in sentences:
            out = model(**tok(s, return_tensors="pt"), output_hidden_states=True)
            h = out.hidden_states[-1][0]  # after the final norm layer
            n = h.norm(dim=-1).numpy()
            norms.append(n)
            first.append(n[:1])
            rest.append(n[1:])
            if Wt is not None:
                logits = out.logits[0].numpy()
                ref = h.numpy() @ Wt + (0.0 if b is None else np.asarray(b, dtype=np.float32))
                diff = max(diff, float(np.abs(logits - ref).max()))
                scale = max(scale, float(np.abs(logits).max()))
    cap = getattr(model.config, "final_logit_softcapping", None)
    return HiddenNorms(*(np.concatenate(a).astype(np.float64) for a in (norms, first, rest)),
                       diff if Wt is not None else None, scale if Wt is not None else None,
                       None if cap is None else float(cap))


def _sentences(data_dir, n: int) -> list[str] | None:
    from kexue.data import load_stsb

    try:
        return list(load_stsb(data_dir)["test"].sentence1[:n])
    except (OSError, ValueError, KeyError):  # STS-B not downloaded (KexueError is a ValueError)
        return None


def _reach_table(ctx, tag: str, table: str, layer, radii, classes, jobs: int, src: str) -> list[dict]:
    """Run :func:`~kexue.unargmax.reachable` at R = max and min of ``radii``; metrics
    ``reach_{tag}_*`` (largest R) and ``reach_{tag}_rmin_*``, a table named ``table``. Returns, per
    R, the radius and the classes certified below 0.5 and 0.9."""
    from kexue.unargmax import reachable

    rows, found = [], []
    for suffix, R in (("", radii[1]), ("_rmin", radii[0])):
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        rr = reachable(layer.W, layer.b, R, n_jobs=jobs, classes=classes, reach_tol=1e-4, tracker=ctx.tracker)
        secs = time.perf_counter() - t0
        ids = np.flatnonzero(rr._mask())
        b5, b9 = rr.below(0.5), rr.below(0.9)
        m = f"reach_{tag}{suffix}"
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
        found.append({"R": R, "below_0.5": b5, "below_0.9": b9})
    ctx.table(table, ["R", "classes", "cannot reach 0.5", "cannot reach 0.9", "widest interval", "seconds",
                      "load before"], rows,
              caption="For each class i, a certified interval around max softmax(Wh)_i over ‖h‖₂ ≤ R (lower: a "
                      f"witness h; upper: a dual bound), at {src}; {jobs} worker processes.")
    return found


def _linearity(hn: HiddenNorms, has_bias: bool) -> str:
    """One sentence on whether the model's logits are h·Wᵀ + b of the layer read (what R means)."""
    cap = (f" Its config sets a final logit soft-cap of {hn.softcap:g}." if hn.softcap is not None else
           " Its config sets no final logit soft-cap.")
    if hn.linear():
        return (f"The model's logits equal h·Wᵀ{' + b' if has_bias else ''} of the layer read here to {hn.logit_diff:.1e} "
                f"(float32; largest |logit| {hn.logit_scale:.1f}), so the probabilities below are the model's own "
                "softmax at ‖h‖₂ ≤ R." + cap)
    return (f"**The model's logits are not h·Wᵀ{' + b' if has_bias else ''} of the layer read here** (largest difference "
            f"{hn.logit_diff:.3g}, largest |logit| {hn.logit_scale:.1f}).{cap} The intervals below are for "
            "softmax(Wh + b) of the layer with ‖h‖₂ ≤ R, which then is not the model's output probability.")


def run(ctx, layer, jobs: int) -> None:
    from kexue.data import smollm2_path

    ctx.text("### 3b. How high can each token's probability go? (SPEC 3.8)")
    sents = _sentences(ctx.data_dir, 40 if ctx.quick else 200)
    hn = None if sents is None else hidden_norms(smollm2_path(), sents, layer.W, layer.b)
    if hn is not None:
        radii = (float(hn.norms.min()), float(hn.norms.max()))
        ctx.metric("reach_smollm2_hidden_norms", hn.summary())
        src = (f"the norms of SmolLM2's own final hidden states on {hn.norms.size} tokens of STS-B sentences "
               f"(min {radii[0]:.2f}, median {np.median(hn.norms):.2f}, max {radii[1]:.2f})")
    else:
        radii = FALLBACK_R
        src = ("R = 30 and 60 (transformers or STS-B is not available here, so the model was not run; its final "
               "hidden states had norms 29.8-59.7 when measured)")
    C = layer.W.shape[0]
    classes = np.sort(np.random.default_rng(ctx.seed).choice(C, 2048, replace=False)) if ctx.quick else None
    _reach_table(ctx, "smollm2", "reachable", layer, radii, classes, jobs, src)
    if hn is not None:
        ctx.text(_linearity(hn, layer.b is not None))


def run_gemma(ctx, jobs: int) -> None:
    """Section 5b: Gemma 3 270M, a seeded random sample of its classes (4,096; quick mode 256),
    at R = the largest and smallest norms of its own final hidden states. The layer comes from the
    survey's cache (fetched in full mode; quick mode never downloads and skips it when absent)."""
    from kexue.unargmax import zoo
    from kexue.utils import KexueError

    ctx.text("### 5b. How high can Gemma 3 270M's token probabilities go? (SPEC 3.8, a sample of classes)")
    try:
        path = zoo.fetch(GEMMA, download=not ctx.quick)
        layer = zoo.load(GEMMA, download=False)
    except (KexueError, OSError) as e:  # not cached (quick mode) or not fetched: one line, go on
        ctx.text(f"Skipped: Gemma 3 270M is not in the kexue cache and was not fetched ({type(e).__name__}).")
        ctx.metric("reach_gemma3_skipped", f"{type(e).__name__}: {e}")
        return
    sents = _sentences(ctx.data_dir, 40 if ctx.quick else 200)
    hn = None if sents is None else hidden_norms(path, sents, layer.W, layer.b)
    if hn is not None:
        radii = (float(hn.norms.min()), float(hn.norms.max()))
        ctx.metric("reach_gemma3_hidden_norms", hn.summary())
        src = (f"the norms of Gemma's own final hidden states on {hn.norms.size} tokens of {len(sents)} STS-B "
               f"sentences (min {radii[0]:.2f}, median {np.median(hn.norms):.2f}, max {radii[1]:.2f}; at each "
               f"sentence's first position, <bos>: {hn.first.min():.2f}-{hn.first.max():.2f}"
               + (f"; elsewhere at least {hn.rest.min():.2f})" if hn.rest.size else ")"))
    else:
        radii = GEMMA_FALLBACK_R
        src = (f"R = {radii[0]:g} and {radii[1]:g} (transformers or STS-B is not available here, so the model was not "
               "run; its final hidden states had norms 57.02-141.50 on 335 tokens of 40 STS-B sentences when measured)")
    C = layer.W.shape[0]
    n = min(C, GEMMA_CLASSES[bool(ctx.quick)])
    classes = np.sort(np.random.default_rng(ctx.seed).choice(C, n, replace=False))
    found = _reach_table(ctx, "gemma3", "reachable_gemma3", layer, radii, classes, jobs,
                         f"{n} of Gemma 3 270M's {C:,} classes drawn at random (seed {ctx.seed}), " + src)
    if hn is not None:
        ctx.text(_linearity(hn, layer.b is not None))
    top = found[0]
    ctx.text(f"At R = {top['R']:.2f}, {top['below_0.5'].size} of the {n} sampled classes cannot reach p = 0.5"
             + (": " + ", ".join(f"{int(k)} {layer.token(int(k))!r}" for k in top["below_0.5"][:20])
                + (" …" if top["below_0.5"].size > 20 else "") if top["below_0.5"].size else "")
             + f"; {top['below_0.9'].size} cannot reach p = 0.9.")
