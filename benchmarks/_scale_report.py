"""The printed report of ``bench_hubness_scale.py``: one row per measure, then the goals, the
IVF-PQ builds, the sampled estimate against the full scan, memory against the goal and the
whitening plan (every figure is also in the benchmark's ``--json``)."""

from __future__ import annotations

GIB = 2**30
PLAN_DIM = 768


def report(res: dict, a) -> None:
    g = lambda b: "-" if b is None else f"{b / GIB:.2f}"  # noqa: E731
    f = lambda x, fmt: f"{'-':>{int(fmt.split('.')[0])}}" if x is None else format(x, fmt)  # noqa: E731
    print(f"\n{'measure':<24}{'wall s':>10}{'recall':>8}  {'param':<12}{'skew':>7}{'hubs':>7}{'anti':>7}"
          f"{'maxRSS':>8}{'anon':>7}{'pdirty':>7}{'goal':>7}")
    print("(skew: of N_k; hubs: share of k-occurrences on points with N_k > 2k; anti: share of points with N_k = 0; "
          "memory in GiB: kernel peak RSS incl. the map's file pages, sampled peaks of anonymous and private dirty "
          "memory, goal = index + 1 GiB; sklearn's wall is extrapolated, kiez's excludes loading the file)")
    for kind, ds in res["datasets"].items():
        if ds.get("source"):  # a real set: its rows below are prefixed "real"
            print(f"{kind} ({ds['n']:,} × {ds['dim']}): {ds['source']['title']}, rows not normalised")
        if ds.get("threads"):
            print(f"{kind}: every timed kexue command with --threads {ds['threads']}, kiez's FAISS on as many")
        for name in ("kexue-ivf", "kexue-ivf+mp", "kexue-ivfpq", "kexue-ivfpq-refine", "kexue-ivf-cluster",
                     "sklearn-brute", "kiez-faiss"):
            r = ds.get(name)
            if r is None:
                continue
            m = r.get("memory", {})
            wall = r["extrapolated_s"] if name == "sklearn-brute" else r["seconds"] if name == "kiez-faiss" else r["wall_s"]
            par = ",".join(f"{k}={v}" for k, v in r.get("params", {}).items()) or r.get("index_param") or ""
            print(f"{kind[:4] + ' ' + name:<24}{wall:10.1f}{f(r.get('recall'), '8.3f')}  {par:<12}"
                  f"{f(r.get('skewness'), '7.2f')}{f(r.get('hub_occurrence'), '7.3f')}{f(r.get('antihub_occurrence'), '7.3f')}"
                  f"{g(m.get('maxrss_bytes')):>8}{g(m.get('anon_peak_bytes')):>7}{g(m.get('private_dirty_peak_bytes')):>7}"
                  f"{g(m.get('goal_bytes')):>7}")
        if "sklearn-brute" in ds:
            print(f"  sklearn brute: {ds['sklearn-brute']['note']}; sklearn / kexue-ivf {ds['sklearn_over_kexue']:.2f}x (goal ≥ 5x)")
        if "kiez-faiss" in ds:
            k = ds["kiez-faiss"]
            print(f"  kiez {k['index_key']} {k['index_param']}: {k['seconds']:.1f} s timed (load {k['load_s']:.1f} s apart); "
                  f"kexue-ivf / kiez {ds['kexue_over_kiez']:.2f}x (goal ≤ 1.0x)")
        else:
            print(f"  kiez FAISS row skipped: {res['kiez_skipped']}")
        if "kexue-ivf+mp" in ds:
            print(f"  MP on top: {ds['kexue-ivf+mp']['ratio_to_nk']:.2f}x the N_k wall (goal ≤ 2x)")
        for key in ("kexue-ivfpq", "kexue-ivfpq-refine"):
            if key not in ds:
                continue
            b = ds[key]["build"]
            print(f"  {key} {b['factory']}: build {b['build_s']:.1f} s + tune {b['tune_s']:.1f} s, nprobe {b['nprobe']} "
                  f"(sample recall {b['recall']:.3f}), index {b['index_bytes'] / GIB:.3f} GiB")
        if "estimate" in ds:
            e = ds["estimate"]
            print(f"  estimate from {e['n_sampled']} of {e['n_index']} queries ({e['seconds']:.1f} s): skewness "
                  f"{e['skewness']:.3f} [{e['skewness_ci'][0]:.3f}, {e['skewness_ci'][1]:.3f}] vs full scan "
                  f"{e['full_scan_skewness']:.3f} ({'inside' if e['inside_ci'] else 'OUTSIDE'} the CI); hubs "
                  f"{e['hub_occurrence']:.3f} vs {e['full_scan_hub_occurrence']:.3f}, antihubs "
                  f"{e['antihub_occurrence']:.3f} vs {e['full_scan_antihub_occurrence']:.3f}")
        for key in ("kexue-ivf", "kexue-ivfpq", "kexue-ivfpq-refine", "estimate"):
            if key in ds:
                m = ds[key]["memory"]
                print(f"  {key} memory vs index + 1 GiB ({g(m['goal_bytes'])} GiB): peak RSS "
                      f"{'within' if m['rss_within_goal'] else 'OVER'}, private {'within' if m['private_within_goal'] else 'OVER'}")
        if "kexue-ivf-cluster" in ds:
            print(f"  --cluster {a.cluster}: N_k identical to the local run: {ds['kexue-ivf-cluster']['identical_nk']}")
    if res.get("real_skipped"):
        print(f"  real row skipped: {res['real_skipped']}")
    if res.get("cluster_skipped"):
        print(f"  --cluster skipped: {res['cluster_skipped']}")
    w = res.get("whitening")
    if w:
        for label in ("data", str(PLAN_DIM)):
            x = w[label]
            print(f"whitening d={x['dim']} ({x['rows']:,} rows, blocks of {x['block_rows']:,}): streaming fit "
                  f"{x['stream_bytes_per_s'] / 1e6:.0f} MB/s, partial_fit {x['partial_fit_bytes_per_s'] / 1e6:.0f} MB/s a block, "
                  f"merge {x['merge_s'] * 1e3:.0f} ms, decompose {x['decompose_s'] * 1e3:.0f} ms, private peak "
                  f"{g(max(x['memory']['anon_peak_bytes'], x['memory']['private_dirty_peak_bytes']))} GiB")
        p = w["plan"]
        print(f"plan {p['rows']:,} × {p['dim']} float32 ({p['bytes'] / 1e9:.0f} GB) at {p['bytes_per_s_per_machine'] / 1e6:.0f} MB/s "
              f"per machine like this one ({res['machine']['cores']} cores), {g(p['private_memory_per_process_bytes'])} GiB each "
              "(reading the data at that rate assumed): " + ", ".join(
                  f"{m} machine{'s' if m != '1' else ''} {t / 3600:.2f} h" for m, t in p["machines"].items()))
