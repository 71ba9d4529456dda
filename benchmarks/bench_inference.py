#!/usr/bin/env python
"""Benchmark of fixed-effects inference at scale: Kenward–Roger and Satterthwaite
emmeans (and type-III F tests) after an mme fit, with time and peak memory.

Model: ``y ~ trt + x + (1|g)`` by REML on the data of ``bench_lme4.py``
(default 100,000 records, 5,000 unbalanced levels of ``g``, 4-level ``trt``, a
N(0,1) covariate ``x``; same simulator and seed). emmeans/pbkrtest in R stop at
3,000 observations by default (``pbkrtest.limit``) because pbkrtest forms the n × n
V; mme works from the MME.

    python benchmarks/bench_inference.py [--n 100000] [--levels 5000] [--seed 1]
        [--sub-n 2000] [--probes 200] [--out-prefix benchmarks/results_inference]

What is timed (each on a fresh fit, so no cached piece is reused):

- ``fit``: ``mme.fit`` (context only);
- ``emmeans KR``: ``fit.emmeans("trt")`` — Kenward–Roger: the exact traces path when
  q ≤ 5000 (dense Cᵘᵘ from q solves), then Φ_A and one df per mean;
- ``emmeans KR (Hutchinson)``: the same with the stochastic traces forced (the path
  used above 5,000 random effects);
- ``emmeans Satterthwaite``: ``fit.emmeans("trt", df_method="satterthwaite")``
  (observed information of θ by 2k score evaluations, ∂Φ/∂θ);
- ``anova KR`` / ``anova Satterthwaite``: type-III F tests, after the emmeans call.

Peak memory: ``tracemalloc`` peak of each step (numpy arrays included, CHOLMOD's own
allocations not) and the process's maximum resident set size
(``resource.getrusage``) at the end.

Agreement check on a subsample of about ``--sub-n`` records (whole levels of g):
the large-data path (MME, Hutchinson traces) and the exact MME path against the
small-data path (pbkrtest's formulas with the n × n V formed densely, from
``tests/test_inference.py``): information matrix, Φ_A, KR df of the four means.

Writes ``<out-prefix>.md`` (and the raw numbers to ``benchmarks/work/<name>.json``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from _machine import machine_info, machine_markdown  # noqa: E402
from bench_lme4 import simulate, subsample_groups  # noqa: E402

FORMULA = "y ~ trt + x + (1|g)"
GOAL_SECONDS = 30.0
GOAL_GIB = 2.0


def timed(label, fn, results):
    gc.collect()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    results.append({"step": label, "seconds": sec, "peak_gib": peak / 2**30})
    print(f"{label:36s} {sec:8.2f} s   peak {peak / 2**30:6.3f} GiB", flush=True)
    return out


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run_large(df, probes):
    import mme
    from mme.inference.kenward_roger import kenward_roger

    steps = []
    tracemalloc.start()
    fit = timed("fit (REML)", lambda: mme.fit(FORMULA, df), steps)
    emm_kr = timed("emmeans KR (exact traces)", lambda: fit.emmeans("trt"), steps)
    timed("contrasts KR, pairwise + Tukey", lambda: emm_kr.contrast("pairwise", adjust="tukey"),
          steps)
    timed("anova KR (after emmeans)", lambda: fit.anova("kenward-roger"), steps)
    fit2 = mme.fit(FORMULA, df)
    emm_sat = timed("emmeans Satterthwaite", lambda: fit2.emmeans("trt", df_method="satterthwaite"),
                    steps)
    timed("anova Satterthwaite (after emmeans)", lambda: fit2.anova("satterthwaite"), steps)
    fit3 = mme.fit(FORMULA, df)
    kr_h = timed(f"KR pieces, Hutchinson ({probes} probes)",
                 lambda: kenward_roger(fit3, trace_method="hutchinson", n_probes=probes), steps)
    tracemalloc.stop()
    kr_x = kenward_roger(fit)
    L = emm_kr.linfct
    compare = {
        "information_rel_diff": rel(kr_h.information, kr_x.information),
        "vcov_adj_rel_diff": rel(kr_h.vcov_adj, kr_x.vcov_adj),
        "df_rel_diff": rel(kr_h.df(L), kr_x.df(L)),
        "hutchinson_max_rel_se": float(kr_h.trace_rel_se.max()),
    }
    return {"steps": steps, "emmeans_kr": str(emm_kr), "emmeans_sat": str(emm_sat),
            "kr_table": emm_kr.table.to_dict(orient="list"),
            "hutchinson_vs_exact": compare, "q": int(fit.internals.likelihood.q),
            "maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_small(df, probes):
    import mme
    from mme.inference.kenward_roger import kenward_roger
    from test_inference import dense_lb_ddf, dense_pbkrtest

    fit = mme.fit(FORMULA, df)
    L = fit.emmeans("trt").linfct
    t0 = time.perf_counter()
    D = dense_pbkrtest(fit)
    t_dense = time.perf_counter() - t0
    dense_df = np.array([dense_lb_ddf(l, D["Phi"], D["P"], D["W"]) for l in L])
    out = {"n": int(fit.nobs), "q": int(fit.internals.likelihood.q), "dense_seconds": t_dense}
    for method in ("exact", "hutchinson"):
        t0 = time.perf_counter()
        kr = kenward_roger(fit, trace_method=method, n_probes=probes)
        sec = time.perf_counter() - t0
        out[method] = {"seconds": sec,
                       "information_rel_diff": rel(kr.information, D["IE2"]),
                       "vcov_adj_rel_diff": rel(kr.vcov_adj, D["PhiA"]),
                       "df_rel_diff": rel(kr.df(L), dense_df),
                       "df": kr.df(L).tolist()}
    out["dense_df"] = dense_df.tolist()
    return out


def markdown(args, large, small, info):
    lines = ["# Inference benchmark: Kenward–Roger and Satterthwaite emmeans at scale", ""]
    lines.append(f"Model `{FORMULA}` by REML; {args.n:,} records, {args.levels:,} levels of `g` "
                 f"(q = {large['q']:,} random effects), seed {args.seed} "
                 "(data simulator of `bench_lme4.py`). Produced by "
                 "`python benchmarks/bench_inference.py`.")
    lines.append("")
    lines.append("| step | seconds | tracemalloc peak (GiB) |")
    lines.append("|---|---:|---:|")
    for s in large["steps"]:
        lines.append(f"| {s['step']} | {s['seconds']:.2f} | {s['peak_gib']:.3f} |")
    lines.append("")
    inf_steps = [s for s in large["steps"] if s["step"] != "fit (REML)"]
    worst = max(s["seconds"] for s in inf_steps)
    peak = max(s["peak_gib"] for s in inf_steps)
    lines.append(f"Process maximum resident set size: {large['maxrss_gib']:.2f} GiB. "
                 f"Goal: each inference step < {GOAL_SECONDS:.0f} s and < {GOAL_GIB:.0f} GiB — "
                 f"slowest {worst:.2f} s, largest tracemalloc peak {peak:.3f} GiB, "
                 f"max RSS {large['maxrss_gib']:.2f} GiB: "
                 f"{'met' if worst < GOAL_SECONDS and large['maxrss_gib'] < GOAL_GIB else 'NOT met'}.")
    lines.append("")
    lines.append("Kenward–Roger emmeans (full data):")
    lines.append("")
    lines.append("```")
    lines.append(large["emmeans_kr"])
    lines.append("```")
    lines.append("")
    lines.append("Satterthwaite emmeans (full data):")
    lines.append("")
    lines.append("```")
    lines.append(large["emmeans_sat"])
    lines.append("```")
    lines.append("")
    h = large["hutchinson_vs_exact"]
    lines.append(f"Hutchinson traces ({args.probes} probes) against the exact traces on the full "
                 f"data: information max rel. diff {h['information_rel_diff']:.1e}, "
                 f"Φ_A {h['vcov_adj_rel_diff']:.1e}, KR df of the means "
                 f"{h['df_rel_diff']:.1e} (estimated rel. SE of the traces "
                 f"{h['hutchinson_max_rel_se']:.1e}).")
    lines.append("")
    lines.append(f"## Agreement with the dense (n × n) computation on a subsample "
                 f"({small['n']:,} records, q = {small['q']})")
    lines.append("")
    lines.append("pbkrtest's formulas with V formed densely (`tests/test_inference.py::dense_pbkrtest`, "
                 f"{small['dense_seconds']:.1f} s) against the MME paths:")
    lines.append("")
    lines.append("| MME path | seconds | information | Φ_A | KR df of the 4 means |")
    lines.append("|---|---:|---:|---:|---:|")
    for m in ("exact", "hutchinson"):
        r = small[m]
        lines.append(f"| {m} | {r['seconds']:.3f} | {r['information_rel_diff']:.1e} | "
                     f"{r['vcov_adj_rel_diff']:.1e} | {r['df_rel_diff']:.1e} |")
    lines.append("")
    lines.append("(max relative differences). KR df, dense: "
                 + ", ".join(f"{d:.4f}" for d in small["dense_df"]) + "; exact MME: "
                 + ", ".join(f"{d:.4f}" for d in small["exact"]["df"]) + "; Hutchinson: "
                 + ", ".join(f"{d:.4f}" for d in small["hutchinson"]["df"]) + ".")
    lines.append("")
    lines.append(machine_markdown(info))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--levels", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sub-n", type=int, default=2_000)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_inference"))
    args = ap.parse_args(argv)
    df = simulate(args.n, args.levels, args.seed)
    print(f"data: {len(df):,} records, {df['g'].nunique():,} levels", flush=True)
    large = run_large(df, args.probes)
    sub = subsample_groups(df, args.sub_n, args.seed)
    small = run_small(sub, args.probes)
    print(json.dumps({k: v for k, v in small.items()}, indent=1))
    info = machine_info(include_r=False)
    os.makedirs(os.path.join(HERE, "work"), exist_ok=True)
    with open(os.path.join(HERE, "work", os.path.basename(args.out_prefix) + ".json"), "w") as fh:
        json.dump({"args": vars(args), "large": large, "small": small, "machine": info}, fh,
                  indent=1, default=str)
    md = markdown(args, large, small, info)
    with open(args.out_prefix + ".md", "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
