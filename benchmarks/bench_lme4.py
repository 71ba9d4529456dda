#!/usr/bin/env python
"""Benchmark mme.fit against lme4 (R) and statsmodels MixedLM on one data set.

Model: ``y ~ trt + x + (1|g)`` by REML, simulated with a fixed seed
(default 100,000 records, 5,000 unbalanced levels of ``g``, true
sigma2_g = 0.5, sigma2_e = 1.0). The data are written to
``benchmarks/work/`` as CSV so every tool fits exactly the same numbers.

    python benchmarks/bench_lme4.py [--n 100000] [--levels 5000] [--seed 1]
        [--skip-mme] [--skip-lme4] [--skip-statsmodels]
        [--statsmodels-n N] [--statsmodels-timeout SEC] [--repeats R]

Writes ``benchmarks/results_lme4.md`` and ``benchmarks/results_lme4.json``
(use ``--out-prefix`` to write elsewhere, e.g. for development runs).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
sys.path.insert(0, HERE)

from _machine import machine_info, machine_markdown  # noqa: E402
from _rscript import RscriptError, rscript_command, run_rscript  # noqa: E402

FORMULA = "y ~ trt + x + (1|g)"
TRUE = {"sigma2_g": 0.5, "sigma2_e": 1.0, "Intercept": 10.0, "trtB": 0.5, "trtC": -0.3, "trtD": 1.0, "x": 0.8}
GOALS = {"lme4": 3.0, "statsmodels": 30.0}  # mme must be at least this many times faster
LOGLIK_TOL = 1e-3


# --------------------------------------------------------------------------- data
def simulate(n, levels, seed):
    """Unbalanced one-way random-intercept data with a 4-level treatment and a covariate.

    Level sizes are 1 + Multinomial(n - levels, p) with p ~ Gamma(2) normalised,
    so every level is present and sizes vary (mean n/levels, CV about 0.7).
    """
    if levels > n:
        raise ValueError("--levels must not exceed --n")
    rng = np.random.default_rng(seed)
    p = rng.gamma(2.0, 1.0, size=levels)
    sizes = 1 + rng.multinomial(n - levels, p / p.sum())
    width = len(str(levels))
    labels = np.array([f"g{i:0{width}d}" for i in range(1, levels + 1)])
    gidx = np.repeat(np.arange(levels), sizes)
    u = rng.normal(0.0, math.sqrt(TRUE["sigma2_g"]), size=levels)
    trt = rng.choice(np.array(["A", "B", "C", "D"]), size=n)
    x = rng.normal(0.0, 1.0, size=n)
    eff = {"A": 0.0, "B": TRUE["trtB"], "C": TRUE["trtC"], "D": TRUE["trtD"]}
    mu = TRUE["Intercept"] + np.vectorize(eff.get)(trt) + TRUE["x"] * x
    y = mu + u[gidx] + rng.normal(0.0, math.sqrt(TRUE["sigma2_e"]), size=n)
    df = pd.DataFrame({"y": y, "trt": trt, "x": x, "g": labels[gidx]})
    return df.iloc[rng.permutation(n)].reset_index(drop=True)


def subsample_groups(df, n_target, seed):
    """Whole levels of g, in random order, until about n_target records."""
    rng = np.random.default_rng(seed + 1000)
    sizes = df.groupby("g").size()
    order = sizes.index.to_numpy()[rng.permutation(len(sizes))]
    cum = np.cumsum(sizes.loc[order].to_numpy())
    keep = set(order[: int(np.searchsorted(cum, n_target)) + 1])
    return df[df["g"].isin(keep)].reset_index(drop=True)


def write_csv(df, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    df.to_csv(path, index=False, float_format="%.17g")


def read_csv(path):
    """Read back exactly what R reads (round-trip floats, string factors)."""
    return pd.read_csv(path, dtype={"trt": str, "g": str})


# --------------------------------------------------------------------------- helpers
def norm_term(name):
    """'trt[T.B]', 'trtB', '(Intercept)', 'Intercept' -> 'trtB', 'Intercept'."""
    return re.sub(r"\[T\.|[\[\]\(\)\s]", "", str(name))


def max_abs_diff(a, b):
    """max |a[k]-b[k]| over common normalised keys (None if nothing in common)."""
    if not a or not b:
        return None
    common = set(a) & set(b)
    if not common:
        return None
    return max(abs(a[k] - b[k]) for k in common)


# --------------------------------------------------------------------------- mme
def _mme_vc(vc):
    """sigma2_g and sigma2_e from mme's variance_components DataFrame."""
    s2g = s2e = None
    for _, row in vc.iterrows():
        grp = str(row.get("group", ""))
        if re.search(r"resid|error|^e$|^units$", grp, re.I):
            s2e = float(row["estimate"])
        elif grp == "g":
            t2 = row.get("term2")
            if t2 is None or (isinstance(t2, float) and math.isnan(t2)) or str(t2).strip() in ("", str(row.get("term1"))):
                s2g = float(row["estimate"])
    return s2g, s2e


def run_mme(df, label="mme", repeats=1):
    import mme  # noqa: F401  (import excluded from the timing)

    try:  # mme's formula backend; pre-import so its import cost is excluded too
        import formulaic  # noqa: F401
    except ImportError:
        pass
    res = {"tool": label, "n": len(df), "levels": int(df["g"].nunique())}
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fit = mme.fit(FORMULA, data=df)
            times.append(time.perf_counter() - t0)
    except Exception:
        res["error"] = traceback.format_exc()
        print(f"[{label}] mme.fit raised:\n{res['error']}", file=sys.stderr)
        return res
    res["times"] = times
    res["seconds"] = min(times)
    res["loglik"] = float(fit.loglik)
    res["n_iter"] = int(fit.n_iter)
    res["converged"] = bool(fit.converged)
    vc = fit.variance_components
    res["variance_components"] = json.loads(vc.to_json(orient="records"))
    res["sigma2_g"], res["sigma2_e"] = _mme_vc(vc)
    fe = fit.fixed_effects
    res["fixed_effects"] = {
        norm_term(k): [float(fe.loc[k, "estimate"]), float(fe.loc[k, "std_error"])] for k in fe.index
    }
    print(f"[{label}] {res['seconds']:.3f} s, n_iter={res['n_iter']}, converged={res['converged']}, "
          f"logLik={res['loglik']:.6f}")
    print(vc.to_string())
    return res


# --------------------------------------------------------------------------- lme4
def run_lme4(csv, repeats=1, timeout=None):
    out = os.path.join(WORK, "lme4_out.txt")
    script, script_args = "lme4_fit.R", [csv, out, str(repeats), FORMULA]
    res = {"tool": "lme4", "cmd": " ".join(rscript_command(script, script_args))}
    try:
        r = run_rscript(script, script_args, timeout, out_file=out)
    except RscriptError as exc:
        res["error"] = str(exc)
        if exc.process_seconds is not None and exc.kind != "timeout":
            res["process_seconds"] = exc.process_seconds
        print(f"[lme4] failed: {exc}", file=sys.stderr)
        return res
    res["process_seconds"] = r.process_seconds
    kv = r.values
    res["times"] = [float(t) for t in kv["elapsed"].split(",")]
    res["seconds"] = min(res["times"])
    res["loglik"] = float(kv["loglik"])
    res["reml_criterion"] = float(kv["reml_criterion"])
    res["sigma2_g"] = float(kv["vc:g"])
    res["sigma2_e"] = float(kv["vc:Residual"])
    res["fixed_effects"] = {
        norm_term(k[3:]): [float(x) for x in v.split(",")] for k, v in kv.items() if k.startswith("fe:")
    }
    res["n_iter"] = int(kv["feval"])
    res["iter_note"] = f"{kv['optimizer']} function evaluations"
    res["conv_messages"] = kv.get("conv_messages", "")
    res["converged"] = not kv.get("conv_messages")
    res["n"] = int(kv["nobs"])
    res["levels"] = int(kv["ngroups"])
    res["versions"] = {k: kv[k] for k in ("R", "lme4", "Matrix")}
    print(f"[lme4] {res['seconds']:.3f} s (Rscript process {res['process_seconds']:.1f} s), "
          f"feval={res['n_iter']}, logLik={res['loglik']:.6f}"
          + (f", messages: {res['conv_messages']}" if res["conv_messages"] else ""))
    return res


# --------------------------------------------------------------------------- statsmodels
def statsmodels_worker(csv, out, repeats):
    """Runs in a child process (so a timeout can stop it)."""
    import warnings

    import statsmodels
    from statsmodels.regression.mixed_linear_model import MixedLM

    df = read_csv(csv)
    times, build, caught = [], [], []
    for _ in range(repeats):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            model = MixedLM.from_formula("y ~ trt + x", groups="g", data=df)
            t1 = time.perf_counter()
            # full_output=True only keeps the optimizer's return values (for the iteration count)
            r = model.fit(reml=True, full_output=True)
            t2 = time.perf_counter()
        caught = [f"{x.category.__name__}: {x.message}" for x in w]
        times.append(t2 - t0)
        build.append(t1 - t0)
    res = {
        "times": times,
        "build_seconds": build,
        "loglik": float(r.llf),
        "sigma2_g": float(np.asarray(r.cov_re)[0, 0]),
        "sigma2_e": float(r.scale),
        "converged": bool(r.converged),
        "n_iter": sum(max(len(h.get("allvecs", [])) - 1, 0) for h in (r.hist or [])) or None,
        "fcalls": sum(int(h.get("fcalls", 0)) for h in (r.hist or [])),
        "iter_note": "BFGS iterations",
        "method": getattr(r, "method", None),
        "fixed_effects": {norm_term(k): [float(r.fe_params[k]), float(r.bse_fe[k])] for k in r.fe_params.index},
        "warnings": sorted(set(caught)),
        "n": len(df),
        "levels": int(df["g"].nunique()),
        "version": statsmodels.__version__,
    }
    with open(out, "w") as fh:
        json.dump(res, fh)


def run_statsmodels(csv, repeats, timeout, label):
    out = os.path.join(WORK, "statsmodels_out.json")
    if os.path.exists(out):
        os.remove(out)
    cmd = [sys.executable, os.path.abspath(__file__), "--_statsmodels-worker", csv, out, "--repeats", str(repeats)]
    res = {"tool": label}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        res["error"] = f"timed out after {timeout:.0f} s (killed)"
        res["timed_out"] = True
        res["seconds_lower_bound"] = float(timeout)
        print(f"[{label}] {res['error']}", file=sys.stderr)
        return res
    res["process_seconds"] = time.perf_counter() - t0
    if proc.returncode != 0 or not os.path.exists(out):
        res["error"] = f"worker exit {proc.returncode}\n{proc.stderr[-4000:]}"
        print(f"[{label}] failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
        return res
    with open(out) as fh:
        res.update(json.load(fh))
    res["seconds"] = min(res["times"])
    print(f"[{label}] {res['seconds']:.3f} s (model build {min(res['build_seconds']):.2f} s), "
          f"converged={res['converged']}, logLik={res['loglik']:.6f}")
    return res


# --------------------------------------------------------------------------- report
def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def build_rows(results):
    """Add ratio-to-mme and Δ vs lme4 to each result."""
    by = {r["tool"]: r for r in results}
    lme4 = by.get("lme4")
    for r in results:
        ref = by.get(r.get("mme_ref", "mme"))
        sec = r.get("seconds")
        if ref and ref.get("seconds") and sec is not None:
            r["ratio_to_mme"] = sec / ref["seconds"]
        elif ref and ref.get("seconds") and r.get("seconds_lower_bound"):
            r["ratio_to_mme_lower_bound"] = r["seconds_lower_bound"] / ref["seconds"]
        if lme4 and lme4.get("loglik") is not None and r.get("loglik") is not None and r.get("n") == lme4.get("n"):
            r["abs_dloglik_vs_lme4"] = abs(r["loglik"] - lme4["loglik"])
            r["max_abs_dbeta_vs_lme4"] = max_abs_diff(
                {k: v[0] for k, v in r.get("fixed_effects", {}).items()},
                {k: v[0] for k, v in lme4.get("fixed_effects", {}).items()},
            )
    return results


def goal_lines(results):
    by = {r["tool"]: r for r in results}
    lines = []
    for tool, goal in GOALS.items():
        cands = [r for r in results if r["tool"].startswith(tool)]
        if not cands:
            lines.append(f"- mme ≥{goal:g}× faster than {tool}: **not run**")
            continue
        r = cands[0]
        ref = by.get(r.get("mme_ref", "mme"), {})
        note = ""
        if r.get("mme_ref", "mme") != "mme":
            note = f" (on a subsample of n={r.get('n')} records; compared with mme on the same subsample)"
        if "ratio_to_mme" in r:
            ok = r["ratio_to_mme"] >= goal
            lines.append(f"- mme ≥{goal:g}× faster than {tool}: ratio {r['ratio_to_mme']:.2f}× → "
                         f"**{'PASS' if ok else 'FAIL'}**{note}")
        elif "ratio_to_mme_lower_bound" in r:
            ok = r["ratio_to_mme_lower_bound"] >= goal
            lines.append(f"- mme ≥{goal:g}× faster than {tool}: {tool} timed out; ratio > "
                         f"{r['ratio_to_mme_lower_bound']:.1f}× → **{'PASS' if ok else 'undetermined'}**{note}")
        elif ref.get("error") or "seconds" not in ref:
            lines.append(f"- mme ≥{goal:g}× faster than {tool}: **undetermined** (mme did not run)")
        else:
            lines.append(f"- mme ≥{goal:g}× faster than {tool}: **undetermined** ({tool} failed)")
    m = by.get("mme")
    if m and m.get("abs_dloglik_vs_lme4") is not None:
        d = m["abs_dloglik_vs_lme4"]
        lines.append(f"- |ΔlogLik| mme vs lme4 = {d:.2e} (tolerance {LOGLIK_TOL:g}) → "
                     f"**{'OK' if d <= LOGLIK_TOL else 'DISAGREE'}**")
    return lines


def markdown(args, results, machine):
    head = (
        f"## mme vs lme4 vs statsmodels — `{FORMULA}`, REML\n\n"
        f"Simulated data: n = {args.n:,} records, {args.levels:,} levels of `g` (unbalanced), "
        f"4-level `trt`, numeric `x`; seed {args.seed}; true σ²_g = {TRUE['sigma2_g']}, "
        f"σ²_e = {TRUE['sigma2_e']}.\n\n"
        f"Goals: mme ≥{GOALS['lme4']:g}× faster than lme4 and ≥{GOALS['statsmodels']:g}× faster than "
        f"statsmodels (ratio = tool seconds / mme seconds; >1 means mme is faster).\n\n"
    )
    cols = ["tool", "n", "seconds", "ratio to mme", "iterations", "converged", "logLik",
            "σ²_g", "σ²_e", "|ΔlogLik| vs lme4", "max|Δβ| vs lme4"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        if r.get("error") and "seconds" not in r:
            msg = r["error"].strip().splitlines()[-1] if r["error"].strip() else "error"
            sec = f"> {r['seconds_lower_bound']:.0f}" if r.get("seconds_lower_bound") else "—"
            ratio = f"> {r['ratio_to_mme_lower_bound']:.1f}" if r.get("ratio_to_mme_lower_bound") else "—"
            rows.append(f"| {r['tool']} | {r.get('n', '—')} | {sec} | {ratio} | — | — | "
                        f"error: {msg[:80]} | — | — | — | — |")
            continue
        it = r.get("n_iter")
        it = "—" if it is None else (f"{it} ({r['iter_note']})" if r.get("iter_note") else str(it))
        rows.append(
            f"| {r['tool']} | {r.get('n', '—'):,} | {r['seconds']:.3f} | {_f(r.get('ratio_to_mme'), '.2f')} | "
            f"{it} | {r.get('converged')} | {_f(r.get('loglik'), '.6f')} | {_f(r.get('sigma2_g'), '.6f')} | "
            f"{_f(r.get('sigma2_e'), '.6f')} | {_f(r.get('abs_dloglik_vs_lme4'), '.2e')} | "
            f"{_f(r.get('max_abs_dbeta_vs_lme4'), '.2e')} |"
        )
    notes = [
        "",
        "Timings: mme = wall time of `mme.fit(...)` only (imports excluded, data already in memory); "
        "lme4 = `system.time(lmer(..., REML=TRUE))` elapsed inside Rscript (R start-up, `library(lme4)` "
        "and `read.csv` excluded); statsmodels = `MixedLM.from_formula(...)` + `.fit(reml=True)` "
        "in a child process (import and CSV read excluded)."
        + (f" Best of {args.repeats} repeats per tool." if args.repeats > 1 else " One run per tool."),
        "Iterations: mme = AI-REML iterations; lme4 = optimizer function evaluations; "
        "statsmodels = optimizer iterations from `fit(reml=True, full_output=True)` history (summed over any "
        "fallback optimizers; `full_output=True` only records the optimizer's return values).",
    ]
    for r in results:
        if r.get("conv_messages"):
            notes.append(f"lme4 messages: {r['conv_messages']}")
        if r.get("warnings"):
            notes.append(f"{r['tool']} warnings: " + "; ".join(w[:200] for w in r["warnings"]))
        if r.get("error") and "Traceback" in r.get("error", ""):
            notes.append(f"\n{r['tool']} error:\n\n```\n{r['error'].strip()}\n```")
    return (head + "\n".join(goal_lines(results)) + "\n\n" + "\n".join(rows) + "\n" + "\n\n".join(notes)
            + "\n\n" + machine_markdown(machine))


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    ap.add_argument("--levels", type=int, default=5_000, help="levels of g (default 5000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-mme", action="store_true")
    ap.add_argument("--skip-lme4", action="store_true")
    ap.add_argument("--skip-statsmodels", action="store_true")
    ap.add_argument("--statsmodels-n", type=int, default=None,
                    help="fit statsmodels on a subsample of about this many records (whole levels of g); "
                         "mme is then also timed on the same subsample for the ratio")
    ap.add_argument("--statsmodels-timeout", type=float, default=1800.0,
                    help="kill statsmodels after this many seconds (default 1800)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per tool; the minimum time is reported")
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_lme4"),
                    help="write <prefix>.md and <prefix>.json (default benchmarks/results_lme4)")
    ap.add_argument("--_statsmodels-worker", nargs=2, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._statsmodels_worker:
        statsmodels_worker(*args._statsmodels_worker, repeats=args.repeats)
        return 0

    t_sim = time.perf_counter()
    df = simulate(args.n, args.levels, args.seed)
    csv = os.path.join(WORK, f"lme4_n{args.n}_L{args.levels}_s{args.seed}.csv")
    write_csv(df, csv)
    df = read_csv(csv)
    sizes = df.groupby("g").size()
    print(f"data: {csv}  ({len(df):,} records, {len(sizes):,} levels, size min/median/max "
          f"{sizes.min()}/{int(sizes.median())}/{sizes.max()}; {time.perf_counter() - t_sim:.1f} s)")

    results = []
    if not args.skip_mme:
        results.append(run_mme(df, repeats=args.repeats))
    if not args.skip_lme4:
        results.append(run_lme4(csv, repeats=args.repeats))
    if not args.skip_statsmodels:
        sm_csv, label, ref = csv, "statsmodels", "mme"
        if args.statsmodels_n and args.statsmodels_n < len(df):
            sub = subsample_groups(df, args.statsmodels_n, args.seed)
            sm_csv = csv.replace(".csv", f"_sub{args.statsmodels_n}.csv")
            write_csv(sub, sm_csv)
            sub = read_csv(sm_csv)
            label = f"statsmodels (subsample n={len(sub):,})"
            ref = f"mme (subsample n={len(sub):,})"
            if not args.skip_mme:
                results.append(run_mme(sub, label=ref, repeats=args.repeats))
        r = run_statsmodels(sm_csv, args.repeats, args.statsmodels_timeout, label)
        r["mme_ref"] = ref
        results.append(r)

    build_rows(results)
    machine = machine_info()
    md = markdown(args, results, machine)
    print()
    print(md)
    with open(args.out_prefix + ".md", "w") as fh:
        fh.write(md)
    with open(args.out_prefix + ".json", "w") as fh:
        json.dump({"args": vars(args), "formula": FORMULA, "true_values": TRUE, "goals": GOALS,
                   "data_csv": os.path.relpath(csv, HERE), "results": results, "machine": machine},
                  fh, indent=2, default=str)
    print(f"wrote {args.out_prefix}.md and {args.out_prefix}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
