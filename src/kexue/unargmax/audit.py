"""Certified audit of a softmax output layer for unargmaxable classes (SPEC 3).

Class k of a layer with rows w_i and biases b_i is *argmaxable* iff some z makes it the strict
maximum of Wz + b (SPEC 3.1). Every verdict carries a certificate
(:mod:`kexue.unargmax.certificates`). Pipeline, cheapest first, each stage only on the classes
still open: exact duplicates (λ = e_i), batched candidates and the braid walk on blocks of
classes (:mod:`~kexue.unargmax.stages`), then the exact LP or Frank–Wolfe per class
(:mod:`~kexue.unargmax.lp`). Blocks and classes run on joblib processes or a Dask cluster.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from kexue import validate
from kexue.parallel import SharedArrays, consume, opened, parallel
from kexue.unargmax.certificates import ARGMAXABLE, NEAR, STAGES, UNARGMAXABLE, UNDECIDED, default_min_margin
from kexue.unargmax.config import AuditConfig, LayerStats, layer_stats
from kexue.unargmax.lp import fw_class, lp_class
from kexue.unargmax.reach import ReachResult, reach_block
from kexue.unargmax.result import AuditResult
from kexue.unargmax.stages import precheck_block
from kexue.utils import KexueError, atomic_path, require, tracker_or_null


def duplicates(W, b, mem_mb=256) -> dict:
    """Exact duplicate rows (with equal or lower bias): λ = e_i certifies them, residual 0.

    Rows are hashed a block at a time (bounded memory), equal hashes confirmed byte for byte.
    Returns {k: i} for classes k that have an identical row i ≠ k with b_i ≥ b_k."""
    C, d = W.shape
    rows = max(1, int(mem_mb * 2**20 / (W.dtype.itemsize * d)))
    groups: dict = {}
    for r in range(0, C, rows):
        blk = np.ascontiguousarray(W[r:r + rows])
        for j in range(blk.shape[0]):
            groups.setdefault(hashlib.blake2b(blk[j].tobytes(), digest_size=16).digest(), []).append(r + j)
    dup = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        first = np.asarray(W[members[0]])
        members = [m for m in members if np.array_equal(np.asarray(W[m]), first)]
        for k in members:
            others = [m for m in members if m != k]
            if not others:
                continue
            i = others[0] if b is None else others[int(np.argmax(b[others]))]
            if b is None or b[i] >= b[k]:
                dup[k] = int(i)
    return dup


def check_layer(W, b):
    """(W, b) checked: W 2-D floating (float32/float64 kept, memmaps not copied), ≥ 2 classes,
    finite (a block at a time); b one finite entry per class. Returns (W, b float64 or None)."""
    if not hasattr(W, "shape") or not hasattr(W, "dtype"):
        W = validate.matrix(W, "the output layer W", min_rows=2)
    if W.ndim != 2:
        raise KexueError(f"the output layer must be a 2-D matrix (classes × dim); got shape {tuple(W.shape)}")
    if W.shape[0] < 2 or W.shape[1] < 1:
        raise KexueError(f"the output layer needs at least 2 classes and 1 dimension; got shape {tuple(W.shape)}")
    if not np.issubdtype(W.dtype, np.floating):
        W = np.asarray(W, np.float64)
    elif W.dtype not in (np.float32, np.float64):
        W = np.asarray(W, np.float32)
    rows = max(1, int(2**26 / W.shape[1]))
    for r in range(0, W.shape[0], rows):
        blk = np.asarray(W[r:r + rows])
        if not np.isfinite(blk).all():
            bad = r + int(np.argwhere(~np.isfinite(blk))[0][0])
            raise KexueError(f"row {bad} of the output layer has NaN or inf; clean the weights (or drop that class) before the audit")
    if b is not None:
        b = np.asarray(b, np.float64)
        if b.shape != (W.shape[0],):
            raise KexueError(f"the bias must have one entry per class ({W.shape[0]}); got shape {b.shape}")
        validate.finite(b, "the bias")
    return W, b


CONNECT_TIMEOUT = 30  # seconds to reach a Dask scheduler


@contextmanager
def _runner(config: AuditConfig):
    """A factory of joblib ``Parallel`` objects, one per stage: on local loky processes (a fresh
    pool each, joblib's own memmapping off: :func:`kexue.parallel.parallel`), or on a Dask
    cluster (joblib's dask backend). Either way the arrays travel as :class:`ArrayFile` handles."""
    from joblib import Parallel, parallel_config

    if config.scheduler is None:
        yield lambda ordered=False: parallel(config.n_jobs, ordered=ordered)
        return
    distributed = require("dask", "dask.distributed", "a Dask scheduler (--scheduler / --cluster)")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    cluster = None
    if config.scheduler.startswith("local:"):
        n = config.scheduler.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise KexueError(f"--cluster local:N needs a worker count N ≥ 1; got {config.scheduler!r}")
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(config.scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise KexueError(f"cannot reach the Dask scheduler {config.scheduler} ({e}); is `dask scheduler` running there?") from None
    try:
        with parallel_config(backend="dask"):
            yield lambda ordered=False: Parallel(n_jobs=-1, return_as="generator" if ordered else "generator_unordered")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _Collector:
    """The result arrays, filled stage by stage."""

    def __init__(self, C, d, keep, fw, path=None):
        self.verdict = np.full(C, UNDECIDED, np.int8)
        self.stage = np.full(C, -1, np.int16)
        self.margin, self.rel, self.residual = np.full(C, np.nan), np.full(C, np.nan), np.full(C, np.nan)
        self.path = path
        if path is not None:  # streamed: rows are written to the file as blocks are decided
            self.Z = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(C, d))
        else:
            self.Z = np.zeros((C, d)) if keep else None
        self.certs, self.notes, self.rounds, self.secs, self.weak = {}, {}, {}, {}, {}
        self.post = np.full(C, UNDECIDED, np.int8) if fw else None

    def add_sec(self, key, v):
        self.secs[key] = self.secs.get(key, 0.0) + v

    def witness(self, k, verdict, stage, margin, rel, z):
        self.verdict[k], self.stage[k], self.margin[k], self.rel[k] = verdict, stage, margin, rel
        if self.Z is not None and z is not None:
            self.Z[k] = z

    def certificate(self, k, stage, idx, lam, residual):
        self.verdict[k], self.stage[k], self.residual[k] = UNARGMAXABLE, stage, residual
        self.certs[k] = (np.asarray(idx), np.asarray(lam))


def _prechecks(W, W32, b, todo, stats: LayerStats, out: _Collector, par, tracker) -> dict:
    cfg = stats.config
    # without a bias the screening is streamed (no C × block logits); with one, a block's float32
    # logits fill at most screen_mb per worker
    bs = cfg.block or (1024 if b is None else max(16, min(1024, int(cfg.screen_mb * 2**20 / (4 * W.shape[0])))))
    blocks = [todo[i:i + bs] for i in range(0, todo.size, bs)]
    work = {}
    from joblib import delayed

    gen = consume(par()(delayed(precheck_block)(W, W32, b, blk, stats) for blk in blocks))
    for r in tracker.track(gen, "pre-checks", total=len(blocks)):
        for c, k in enumerate(r["ks"]):
            if r["stage"][c] >= 0:
                out.witness(k, ARGMAXABLE, r["stage"][c], r["margin"][c], r["rel"][c], None if r["Z"] is None else r["Z"][c])
                if out.post is not None and b is None:
                    out.post[k] = ARGMAXABLE  # without bias the post's criterion is exact (SPEC 3.3)
        out.weak.update(r["weak"])
        work.update(r["work"])
        for key, v in r["secs"].items():
            out.add_sec(key, v)
    return work


def _exact(W, W32, b, todo, work, stats: LayerStats, out: _Collector, par, tracker):
    from joblib import delayed

    C = stats.n_classes
    name = stats.config.method
    if name == "lp":
        allrows = np.arange(C)
        gen = par()(delayed(lp_class)(W, b, int(k), work.get(int(k), allrows[allrows != k]), stats, W32) for k in todo)
    else:
        gen = par()(delayed(fw_class)(W, b, int(k), stats) for k in todo)
    gen = consume(gen)
    for r in tracker.track(gen, "exact LP" if name == "lp" else "Frank–Wolfe", total=int(todo.size)):
        k = r["k"]
        for key, v in r.get("secs", {name: r["seconds"]}).items():
            out.add_sec(key, v)
        out.rounds[k] = r["rounds"]
        if out.post is not None:
            out.post[k] = r["post"]
        if out.verdict[k] != UNDECIDED:
            continue
        stage = STAGES.index(r.get("stage", name))
        if r["verdict"] == ARGMAXABLE:
            out.witness(k, ARGMAXABLE, stage, r["margin"], r["rel"], r["z"])
        elif r["verdict"] == UNARGMAXABLE:
            out.certificate(k, stage, r["idx"], r["lam"], r["residual"])
        else:
            out.notes[k] = r["note"]


def _reach(W, W32, b, ks, stats: LayerStats, out: _Collector, par, tracker) -> ReachResult:
    """The reachable-probability intervals of the classes ``ks`` (SPEC 3.8), blocks of classes
    sized so that a worker's C × block logits (five float32/float64 arrays) fit ``screen_mb``."""
    from joblib import delayed

    cfg = stats.config
    C, d = stats.n_classes, len(stats.mu)
    bs = cfg.block or max(8, min(512, int(cfg.screen_mb * 2**20 / (40 * C))))
    blocks = [ks[i:i + bs] for i in range(0, ks.size, bs)]
    lower, upper, iters = np.full(C, np.nan), np.full(C, np.nan), np.zeros(C, np.int64)
    H = np.zeros((C, d), np.float32) if stats.keep and cfg.witness_path is None else None
    gen = consume(par()(delayed(reach_block)(W, W32, b, blk, cfg.reach, stats, cfg.reach_tol, cfg.reach_iters,
                                             H is not None) for blk in blocks))
    secs = 0.0
    for r in tracker.track(gen, "reachable probability", total=len(blocks)):
        k = r["ks"]
        lower[k], upper[k], iters[k] = r["lower"], r["upper"], r["iters"]
        if H is not None:
            H[k] = r["H"]
        secs += r["secs"]["reach"]
    out.add_sec("reach", secs)
    audited = np.zeros(C, bool)
    audited[ks] = True
    assert cfg.reach is not None  # the caller only reaches here with a radius
    return ReachResult(radius=float(cfg.reach), lower=lower, upper=upper, iters=iters, tol=cfg.reach_tol,
                       witnesses=H, seconds=secs, audited=audited)


def _near(out: _Collector, min_margin: float):
    """Weak pre-check witnesses fill in where the LP found nothing better; every certified witness
    below ``min_margin`` becomes near-unargmaxable."""
    for k, (rel, z, m) in out.weak.items():
        if out.verdict[k] == UNDECIDED or (out.verdict[k] == ARGMAXABLE and rel > out.rel[k]):
            out.notes.pop(k, None)
            out.witness(k, ARGMAXABLE, STAGES.index("lda") if out.stage[k] < 0 else out.stage[k], m, rel, z)
    if min_margin > 0:
        out.verdict[(out.verdict == ARGMAXABLE) & (out.rel < min_margin)] = NEAR


def audit(W, b=None, config: AuditConfig | None = None, *, classes=None, precision=None, tracker=None,
          **settings) -> AuditResult:
    """Certify every class of the softmax layer (W, b) as argmaxable or unargmaxable (SPEC 3).

    ``W`` (C, d) (a NumPy array or memmap; not copied), ``b`` (C,) or None; ``config`` an
    :class:`AuditConfig`, any of whose fields can also be given as keywords (``n_jobs=2``);
    ``classes`` audits a subset of the classes (against all rows); ``precision`` names the format
    the weights came in (a dtype or a GGUF type like "Q8_0") when ``min_margin`` is None; a
    progress ``tracker`` (:class:`kexue.utils.Tracker`). With ``reach=R`` the result's ``reach``
    holds each class's reachable-probability interval (SPEC 3.8, :func:`reachable`)."""
    return _audit(W, b, AuditConfig.with_overrides(config, settings), classes, precision, tracker, True)


def reachable(W, b=None, radius: float | None = None, config: AuditConfig | None = None, *, classes=None,
              tracker=None, **settings) -> ReachResult:
    """The reachable probability alone (SPEC 3.8): for every class i (or ``classes``), a
    certified interval [lower, upper] around max_{‖h‖₂ ≤ radius} softmax(Wh + b)_i, without the
    argmaxable verdicts. ``radius`` (or the config's ``reach``) is R ≥ 0; the other settings as
    :func:`audit` (``reach_tol``, ``reach_iters``, ``n_jobs``, ``scheduler``, …)."""
    if radius is not None:
        settings["reach"] = radius
    cfg = AuditConfig.with_overrides(config, settings)
    if cfg.reach is None:
        raise KexueError("reachable() needs the radius R of the hidden states (radius=R, R ≥ 0)")
    res = _audit(W, b, cfg, classes, None, tracker, False).reach
    assert res is not None  # cfg.reach was set above
    return res


def _audit(W, b, cfg: AuditConfig, classes, precision, tracker, verdicts: bool) -> AuditResult:
    if cfg.witness_path is None:
        return _run(W, b, cfg, classes, precision, tracker, verdicts, None)
    with atomic_path(cfg.witness_path) as tmp:  # streamed witnesses: the file appears when complete
        res = _run(W, b, cfg, classes, precision, tracker, verdicts, str(tmp))
    res.witnesses = np.load(cfg.witness_path, mmap_mode="r")
    return res


def _run(W, b, cfg: AuditConfig, classes, precision, tracker, verdicts: bool, witness_file) -> AuditResult:
    t_start = time.perf_counter()
    W, b = check_layer(W, b)
    tracker = tracker_or_null(tracker)
    C, d = W.shape
    min_margin = cfg.min_margin if cfg.min_margin is not None else default_min_margin(precision or W.dtype)
    # float32 for the screening products (exact if W came in float32), float64 for the rest
    W32 = W if W.dtype == np.float32 else np.asarray(W, np.float32)
    if W.dtype != np.float64 and C * d * 8 <= cfg.f64_mb * 2**20:
        W = np.asarray(W, np.float64)  # exact; saves a conversion per matrix product
    ks_all = np.arange(C) if classes is None else np.unique(np.asarray(classes, np.int64))
    if ks_all.size and (ks_all.min() < 0 or ks_all.max() >= C):
        raise KexueError(f"class ids must be in 0..{C - 1}")
    audited = np.zeros(C, bool)
    audited[ks_all] = True
    keep = cfg.keeps_witnesses(C, d)
    out = _Collector(C, d, keep, cfg.method == "fw", witness_file)
    walls = {}
    t0 = time.perf_counter()
    for k, i in (duplicates(W, b, cfg.mem_mb) if verdicts else {}).items():
        if audited[k]:
            out.certificate(k, STAGES.index("duplicate"), [i], [1.0], 0.0)
            if out.post is not None:
                out.post[k] = UNARGMAXABLE
    out.add_sec("duplicate", time.perf_counter() - t0)
    # worker processes get W, its float32 copy, b and the whitening matrix as files of our own
    # (read-only memory maps), never as pickled copies nor through joblib's temporary folder
    with SharedArrays(cfg.shared_dir) as shared, _runner(cfg) as par:
        t0 = time.perf_counter()
        workers = cfg.n_jobs > 1 or cfg.scheduler is not None
        # a remote Dask cluster may not see this machine's files: unless shared_dir names a
        # folder it sees, W goes as an array, which joblib's dask backend scatters to the cluster
        # once per stage (not per task)
        remote = cfg.scheduler is not None and not cfg.scheduler.startswith("local:") and cfg.shared_dir is None
        if workers and not remote:
            W32 = shared.share(W32) if W32 is not W else None
            W, b = shared.share(W), shared.share(b)  # the in-memory copies can go
            W32 = W if W32 is None else W32
        Wl, bl = opened(W), opened(b)
        stats = layer_stats(Wl, bl, cfg, min_margin, 1 if cfg.scheduler else cfg.n_jobs, par if workers else None, W)
        stats = replace(stats, keep=keep, A=shared.share(stats.A) if workers and not remote else stats.A)
        out.add_sec("setup", time.perf_counter() - t0)
        walls["setup"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        todo = ks_all[out.verdict[ks_all] == UNDECIDED] if verdicts else ks_all[:0]
        work = _prechecks(W, W32, b, todo, stats, out, par, tracker) if cfg.prechecks and todo.size else {}
        walls["prechecks"] = time.perf_counter() - t0
        todo = todo[out.verdict[todo] == UNDECIDED]
        if cfg.method == "fw" and b is not None and verdicts:
            # with a bias the post's criterion can disagree with a pre-check witness: evaluate it on
            # every class so that the comparison is complete (verdicts stay those with certificates)
            todo = ks_all[out.post[ks_all] == UNDECIDED]
        t0 = time.perf_counter()
        if todo.size:
            _exact(W, W32, b, todo, work, stats, out, par, tracker)
        if verdicts:
            walls[cfg.method] = time.perf_counter() - t0
        reach = None
        if cfg.reach is not None:
            t0 = time.perf_counter()
            reach = _reach(W, W32, b, ks_all, stats, out, par, tracker)
            walls["reach"] = time.perf_counter() - t0
    _near(out, min_margin)
    if out.path is not None:
        out.Z.flush()
    return AuditResult(n_classes=int(ks_all.size), dim=d, bias=b is not None, box=cfg.box, method=cfg.method,
                       verdict=out.verdict, stage=out.stage, margin=out.margin, residual=out.residual,
                       witnesses=out.Z, certificates=out.certs, notes=out.notes, post_verdict=out.post,
                       stage_seconds=out.secs, lp_rounds=out.rounds, audited=audited, rel_margin=out.rel,
                       min_margin=float(min_margin), wall_seconds=walls, reach=reach,
                       seconds=time.perf_counter() - t_start)
