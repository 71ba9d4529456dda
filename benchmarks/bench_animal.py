#!/usr/bin/env python
"""Animal-model benchmark: every stage of a pedigree (A⁻¹) REML fit, timed by size.

    python benchmarks/bench_animal.py [--sizes 10000,100000,300000] [--pcg-sizes 1000000]
        [--seed 1] [--budget-minutes 25] [--wait-idle 180] [--no-fit-above N]
        [--out-prefix benchmarks/results_animal]

Data: ``simulate_animal.simulate_animal(n, seed)`` (overlapping generations,
selected sires, 7% unknown parents, herds; σ²ₐ = 0.4, σ²_herd = 0.2, σ²ₑ = 0.6,
h² = 1/3), one record per animal; model ``y ~ sex + (1|herd) + (1|id)`` with
``relmat={"id": Pedigree}``.

Each size runs in fresh subprocesses so that peak RSS (``ru_maxrss``) is that of
one job: ``simulate`` (writes ``benchmarks/work/animal_n{n}_s{seed}.pkl``),
``stages`` (each stage once, in order, timed alone) and ``fit`` (``mme.fit``
end to end, REML). Sizes in ``--pcg-sizes`` (1M by default) get only BLUP
with known variances by PCG (``mme.pcg``), no factorization. The direct route
does work at 1M on this simulated pedigree (``results_animal_1m.md``, AMD EPYC,
2 cores: nnz(L) 240M, factorization 52 s, a REML round 163 s, the whole
AI-REML fit 15 min in 9.4 GiB) with ``--budget-minutes 60``, beyond the default
budget.

Stages (``stages`` job):

* pedigree: ``Pedigree.from_frame`` (normalise, validate, sort)
* inbreeding: Meuwissen & Luo; A⁻¹: Henderson/Quaas (incl. log|A|)
* design: ``parse_formula`` + ``build_design``; assembly: ``MME(design)``
  (pattern of C, G⁻¹ slots) + ``set_values``
* analyze: ``engine.cholesky.Cholesky`` (CHOLMOD's ordering + symbolic, once per model)
* numeric factorization: ``Cholesky.factorize`` (best of 2); nnz(L) from the analysis
  (the selected inverse reads the factor in place: no L() copy since the binding)
* selected inverse: ``MME.selected_inverse`` at the G⁻¹ slots (what one REML
  round needs; includes its own ``L()`` copy)
* REML round: ``Likelihood.evaluate(θ)`` at the true θ (factorization, solve,
  selected inverse, score, AI) — the cost of one AI-REML iteration
* PCG: ``mme.pcg.solve_pcg`` at the true variances, checked against the direct
  solution

Before each job the driver waits (up to ``--wait-idle`` seconds) until the CPUs
are idle, and it reports the share of CPU other processes used during each job:
on 2 cores, one busy core from elsewhere slows OpenBLAS-threaded stages
(CHOLMOD, LAPACK) many-fold.

The ``fit`` job reports the whole ``mme.fit`` time, seconds per iteration from
``fit.iteration_log`` and ĥ² ± SE. The 300k fit runs only if its projected time
(REML round at 300k x evaluations the 100k fit needed) fits in the budget.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
sys.path.insert(0, HERE)
from _jobs import maxrss_gib, run_worker  # noqa: E402

FORMULA = "y ~ sex + (1|herd) + (1|id)"
#: the numeric factorization a REML round is compared with
RATIO_GOAL = 3.0
PCG_GOAL_SECONDS = 60.0


def data_path(n, seed):
    return os.path.join(WORK, f"animal_n{n}_s{seed}.pkl")


def load(n, seed):
    with open(data_path(n, seed), "rb") as fh:
        return pickle.load(fh)


class Timer:
    def __init__(self):
        self.seconds = {}
        self.rss = {}

    def __call__(self, name, fn):
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = time.perf_counter() - t0
        self.rss[name] = maxrss_gib()
        print(f"  {name:<28s} {self.seconds[name]:9.3f} s   (peak RSS {self.rss[name]:.2f} GiB)",
              flush=True)
        return out


def true_theta(model, truth):
    """θ in the model's order (G₀ elements per block, then σ²ₑ) at the simulated values."""
    out = [s.theta_of(np.atleast_2d(truth["sigma2"][s.block.group])) for s in model.mme.structures]
    return np.concatenate(out + [np.array([truth["sigma2"]["Residual"]])])


def blup_accuracy(levels, blup, pev, reliability, truth):
    bv = truth["bv"].copy()
    bv.index = bv.index.astype(str)
    a = bv.reindex(levels).to_numpy()
    corr = float(np.corrcoef(blup, a)[0, 1])
    return {"corr_bv": corr,
            "corr_predicted": float(np.sqrt(1.0 - np.mean(pev) / np.var(a, ddof=1))),
            "sqrt_mean_reliability": float(np.sqrt(np.mean(reliability)))}


# --------------------------------------------------------------------------- workers
def worker_simulate(n, seed):
    from simulate_animal import describe, simulate_animal
    t0 = time.perf_counter()
    ped, phen, truth = simulate_animal(n, seed=seed)
    secs = time.perf_counter() - t0
    os.makedirs(WORK, exist_ok=True)
    with open(data_path(n, seed), "wb") as fh:
        pickle.dump((ped, phen, truth), fh, protocol=pickle.HIGHEST_PROTOCOL)
    F = truth["F"]
    return {"seconds": secs, "summary": describe(ped, phen, truth), "n_records": len(phen),
            "n_herds": int(phen["herd"].nunique()), "n_sires": truth["n_sires"],
            "n_dams": int(ped["dam"][ped["dam"] > 0].nunique()),
            "unknown_fraction": truth["unknown_fraction"], "mean_F": float(F.mean()),
            "max_F": float(F.max()), "inbred_fraction": float((F > 0).mean()),
            "h2_true": truth["h2"], "peak_rss_gib": maxrss_gib()}


def worker_stages(n, seed):
    import mme
    from mme.model.design import build_design
    from mme.model.formula import parse_formula
    from mme.engine.pcg import solve_pcg
    from mme.engine.reml import Likelihood
    from mme.engine.system import MME
    from mme.engine.cholesky import Cholesky

    ped, phen, truth = load(n, seed)
    rss_data = maxrss_gib()
    T = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = T("pedigree", lambda: mme.Pedigree.from_frame(ped))
    T("inbreeding", lambda: P.inbreeding)
    Ainv = T("A⁻¹", lambda: P.ainverse())
    nnz_ainv = int(Ainv.nnz)
    del Ainv
    design = T("design", lambda: build_design(parse_formula(FORMULA), phen, {"id": P}))
    system = T("assembly", lambda: MME(design))
    model = Likelihood(system, "REML")
    theta = true_theta(model, truth)
    G0s, s2e = model.split(theta)
    system.set_values(G0s, s2e)
    factor = T("analyze", lambda: Cholesky(system.C, system.ordering))
    system.factor, system.n_analyze = factor, 1
    T("numeric factorization", lambda: factor.factorize(system.C))
    first = T.seconds["numeric factorization"]
    T("numeric factorization", lambda: factor.factorize(system.C))
    T.seconds["numeric factorization"] = min(first, T.seconds["numeric factorization"])
    nnz_L = int(factor.nnz_L)
    flops_chol = float(factor.symbolic()["flops"])   # CHOLMOD's Common->fl (Σ colcount²)
    rows = np.concatenate([s.rows for s in system.structures])
    cols = np.concatenate([s.cols for s in system.structures])
    T("selected inverse", lambda: system.selected_inverse(rows, cols))
    ev = T("REML round", lambda: model.evaluate(theta))
    direct = ev.solution.copy()
    del ev
    res = T("PCG (known variances)", lambda: solve_pcg(design, {**truth["sigma2"]}, tol=1e-10))
    pcg_rel = float(np.linalg.norm(res.solution - direct) / np.linalg.norm(direct))
    return {"seconds": T.seconds, "rss_after": T.rss, "rss_data_gib": rss_data,
            "nnz_L": nnz_L, "sum_colcount_sq": flops_chol, "ordering": system.ordering, "nnz_C_lower": int(system.C.nnz), "dim_C": int(system.dim),
            "nnz_Ainv": nnz_ainv, "pcg_iterations": res.n_iter,
            "pcg_rel_residual": res.rel_residual, "pcg_rel_diff_vs_direct": pcg_rel,
            "pcg_seconds": res.seconds, "peak_rss_gib": maxrss_gib()}


def worker_fit(n, seed):
    import mme

    ped, phen, truth = load(n, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = mme.Pedigree.from_frame(ped)
    t0 = time.perf_counter()
    fit = mme.fit(FORMULA, phen, relmat={"id": P})
    total = time.perf_counter() - t0
    log = fit.iteration_log
    it = log[log["iteration"] > 0]
    h2 = fit.heritability("id")
    vc = fit.variance_components
    re_ = fit.random_effects
    a = re_[re_["group"] == "id"]
    acc = blup_accuracy(a["level"].to_numpy(), a["blup"].to_numpy(), a["pev"].to_numpy(),
                        a["reliability"].to_numpy(), truth)
    system = fit.internals.mme
    return {"seconds_fit": total, "n_iter": int(fit.n_iter), "converged": bool(fit.converged),
            "seconds_per_iteration": float(it["seconds"].median()),
            "seconds_iterations": [float(s) for s in log["seconds"]],
            "kinds": list(log["kind"]),
            "seconds_in_iterations": float(log["seconds"].sum()),
            "seconds_outside_iterations": total - float(log["seconds"].sum()),
            "n_factorize": int(system.n_factorize), "n_analyze": int(system.n_analyze),
            "h2": float(h2["estimate"]), "h2_se": float(h2["std_error"]), "h2_true": truth["h2"],
            "variance_components": vc.to_dict(orient="records"),
            "loglik": float(fit.loglik), **acc, "peak_rss_gib": maxrss_gib()}


def worker_pcg(n, seed):
    import mme
    from mme.model.design import build_design
    from mme.model.formula import parse_formula
    from mme.engine.pcg import solve_pcg

    ped, phen, truth = load(n, seed)
    rss_data = maxrss_gib()
    T = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = T("pedigree", lambda: mme.Pedigree.from_frame(ped))
    T("inbreeding", lambda: P.inbreeding)
    T("A⁻¹", lambda: P.ainverse())
    design = T("design", lambda: build_design(parse_formula(FORMULA), phen, {"id": P}))
    out = {}
    for pc in ("jacobi", "block"):
        res = T(f"PCG {pc}", lambda: solve_pcg(design, {**truth["sigma2"]}, tol=1e-8,
                                                preconditioner=pc))
        a = res.random_effects
        a = a[a["group"] == "id"]
        bv = truth["bv"].copy()
        bv.index = bv.index.astype(str)
        out[pc] = {"iterations": res.n_iter, "rel_residual": res.rel_residual,
                   "converged": res.converged, "seconds": res.seconds,
                   "corr_bv": float(np.corrcoef(a["blup"], bv.reindex(a["level"]))[0, 1])}
    total = sum(T.seconds[k] for k in ("pedigree", "inbreeding", "A⁻¹", "design", "PCG jacobi"))
    return {"seconds": T.seconds, "rss_after": T.rss, "rss_data_gib": rss_data, "pcg": out,
            "total_seconds": total, "peak_rss_gib": maxrss_gib()}


WORKERS = {"simulate": worker_simulate, "stages": worker_stages, "fit": worker_fit,
           "pcg": worker_pcg}


# --------------------------------------------------------------------------- driver
#: before each job, wait up to this many seconds for the other processes to go idle
WAIT_IDLE = 180.0


def run_job(kind, n, seed, timeout):
    out = os.path.join(WORK, f"animal_{kind}_n{n}_s{seed}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n),
           "--seed", str(seed), "--worker-out", out]
    print(f"[{dt.datetime.now():%H:%M:%S}] {kind} n={n:,}", flush=True)
    return run_worker(cmd, out, timeout, WAIT_IDLE)


STAGE_ROWS = ["pedigree", "inbreeding", "A⁻¹", "design", "assembly", "analyze",
              "numeric factorization", "selected inverse", "REML round",
              "PCG (known variances)"]


def fmt(v, spec=".2f", none="–"):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return none
    return format(v, spec)


def _projection(results, target=1_000_000):
    """Power-law extrapolation of nnz(L), factorization and REML round from the two largest sizes."""
    ok = [r for r in results["sizes"] if "stages" in r and "error" not in r["stages"]]
    if len(ok) < 2:
        return " (not projected: fewer than two sizes measured)."
    a, b = ok[-2], ok[-1]

    def grow(key_a, key_b):
        e = np.log(key_b / key_a) / np.log(b["n"] / a["n"])
        return key_b * (target / b["n"]) ** e, e

    nnz, e_nnz = grow(a["stages"]["nnz_L"], b["stages"]["nnz_L"])
    fac, e_fac = grow(a["stages"]["seconds"]["numeric factorization"],
                      b["stages"]["seconds"]["numeric factorization"])
    rnd, e_rnd = grow(a["stages"]["seconds"]["REML round"], b["stages"]["seconds"]["REML round"])
    return (f" from {a['n']:,} to {b['n']:,} animals nnz(L) grew as n^{e_nnz:.2f}, one "
            f"numeric factorization as n^{e_fac:.2f} and one REML round as n^{e_rnd:.2f}; "
            f"extrapolated to {target:,}: nnz(L) ≈ {nnz / 1e6:.0f}M, factorization ≈ "
            f"{fac / 60:.1f} min, REML round ≈ {rnd / 60:.0f} min, i.e. a 6-evaluation fit ≈ "
            f"{6 * rnd / 3600:.1f} h (a projection, not a measurement).")


def render(results, args, machine_md):
    sizes = [r["n"] for r in results["sizes"]]
    head = "| stage | " + " | ".join(f"{n:,} animals" for n in sizes) + " |"
    sep = "|---|" + "---:|" * len(sizes)
    lines = ["# Animal-model benchmark (`benchmarks/bench_animal.py`)", "",
             f"Run {results['date']}, command `{results['command']}`; total "
             f"{results['total_minutes']:.1f} min.", "",
             f"Model `{FORMULA}`, `relmat={{\"id\": Pedigree}}`, REML by AI-REML. Data from "
             "`benchmarks/simulate_animal.py`: 10 overlapping cohorts, sires selected on own "
             "phenotype (√(cohort size)/2 per year), random dams, 7% unknown parents, herds of "
             "~50, one record per animal; σ²ₐ = 0.4, σ²_herd = 0.2, σ²ₑ = 0.6 (h² = 1/3).", "",
             "## Stages (seconds; each stage once, in a fresh process per size)", "", head, sep]
    for row in STAGE_ROWS:
        cells = [fmt(r.get("stages", {}).get("seconds", {}).get(row), ".3f") for r in results["sizes"]]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")

    def line(label, fn):
        cells = []
        for r in results["sizes"]:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    line("**full REML fit (`mme.fit`)**", lambda r: f"**{r['fit']['seconds_fit']:.1f}**")
    line("AI-REML iterations (EM only as a fallback)", lambda r: f"{r['fit']['n_iter']}")
    line("seconds per iteration (`iteration_log`, median)",
         lambda r: f"{r['fit']['seconds_per_iteration']:.3f}")
    line("fit time outside the iterations", lambda r: f"{r['fit']['seconds_outside_iterations']:.1f}")
    line("factorizations in the fit", lambda r: f"{r['fit']['n_factorize']}")
    line(f"**REML round / numeric factorization** (goal ≤ {RATIO_GOAL:g})",
         lambda r: f"**{r['ratio']:.1f}** {'PASS' if r['ratio'] <= RATIO_GOAL else 'FAIL'}")
    line("selected inverse / numeric factorization",
         lambda r: f"{r['stages']['seconds']['selected inverse'] / r['stages']['seconds']['numeric factorization']:.1f}")
    line("GFlop/s: factorization (Σc²/t) / selected inverse (2Σc²/t)",
         lambda r: f"{r['stages']['sum_colcount_sq'] / r['stages']['seconds']['numeric factorization'] / 1e9:.2f}"
                   f" / {2 * r['stages']['sum_colcount_sq'] / r['stages']['seconds']['selected inverse'] / 1e9:.2f}")
    line("CHOLMOD ordering (`ordering=\"auto\"`)", lambda r: r["stages"].get("ordering", "default"))
    line("dim(C)", lambda r: f"{r['stages']['dim_C']:,}")
    line("nnz(C) (lower)", lambda r: f"{r['stages']['nnz_C_lower'] / 1e6:.2f} M")
    line("nnz(L)", lambda r: f"{r['stages']['nnz_L'] / 1e6:.1f} M")
    line("peak RSS, stages job", lambda r: f"{r['stages']['peak_rss_gib']:.2f} GiB")
    line("peak RSS, fit job", lambda r: f"{r['fit']['peak_rss_gib']:.2f} GiB")
    line("ĥ² ± SE (true 1/3)", lambda r: f"{r['fit']['h2']:.4f} ± {r['fit']['h2_se']:.4f}")
    line("(ĥ² − h²) / SE", lambda r: f"{(r['fit']['h2'] - r['fit']['h2_true']) / r['fit']['h2_se']:+.2f}")
    line("corr(â, a) / predicted √(1 − mean PEV / var a)",
         lambda r: f"{r['fit']['corr_bv']:.4f} / {r['fit']['corr_predicted']:.4f}")
    line("PCG iterations (tol 1e-10) / max rel. diff to direct",
         lambda r: f"{r['stages']['pcg_iterations']} / {r['stages']['pcg_rel_diff_vs_direct']:.1e}")
    line("other processes' CPU share during the stages / fit job",
         lambda r: f"{r['stages']['cpu_other_during']:.0%} / "
                   + (f"{r['fit']['cpu_other_during']:.0%}" if "fit" in r else "–"))
    lines.append("")
    lines.append("c = column counts of L (Σc² ≈ flops of the numeric factorization; the "
                 "Takahashi recurrences take about twice as many). Before each job the driver waits "
                 "(up to `--wait-idle` s) for the machine to be idle; the share of the 2 CPUs "
                 "used by other processes during a job is reported — well above 0% means the "
                 "timings of that job are disturbed (OpenBLAS' threads in CHOLMOD and LAPACK "
                 "slow down badly when a core is taken).")
    lines.append("")
    lines.append("REML round / numeric factorization uses the median seconds per iteration of "
                 "the fit (`fit.iteration_log`) where the fit ran, else the timed "
                 "`Likelihood.evaluate` (REML round row).")
    for r in results["sizes"]:
        for key in ("stages", "fit"):
            if key in r and "error" in r[key]:
                lines.append(f"- {r['n']:,}: {key} job failed: {r[key]['error']}")
        if r.get("fit_skipped"):
            lines.append(f"- {r['n']:,}: full REML fit not run: {r['fit_skipped']}")
    if results.get("pcg"):
        lines += ["", "## BLUP with known variances by PCG only (no factorization)", "",
                  "At these sizes only BLUP at the true variances is run, by "
                  "`mme.pcg.solve_pcg` (assembled C, Jacobi and block preconditioners, tol 1e-8 "
                  "relative residual): no REML, no PEV/reliabilities. "
                  "Reason: time, not memory: on this simulated pedigree a 1M-animal "
                  "REML fit takes ~15 min in 9.4 GiB on 2 cores (`results_animal_1m.md`, "
                  "run with `--budget-minutes 60`), beyond this run's budget:" + _projection(results), ""]
        for r in results["pcg"]:
            if "error" in r:
                lines.append(f"- {r['n']:,}: failed: {r['error']}")
                continue
            s = r["seconds"]
            lines += [f"### {r['n']:,} animals", "", "| stage | seconds | peak RSS (GiB) |",
                      "|---|---:|---:|"]
            for k in s:
                lines.append(f"| {k} | {s[k]:.2f} | {r['rss_after'][k]:.2f} |")
            ok = r["total_seconds"] < PCG_GOAL_SECONDS
            lines.append(f"| other processes' CPU share during the job | "
                         f"{r.get('cpu_other_during', float('nan')):.0%} | |")
            lines.append(f"| **pedigree → BLUP (Jacobi)** | **{r['total_seconds']:.1f}** "
                         f"(goal < {PCG_GOAL_SECONDS:g} s: {'PASS' if ok else 'FAIL'}) | "
                         f"{r['peak_rss_gib']:.2f} |")
            lines.append("")
            for pc, v in r["pcg"].items():
                lines.append(f"- {pc}: {v['iterations']} iterations, relative residual "
                             f"{v['rel_residual']:.2e}, setup {v['seconds']['setup']:.2f} s + "
                             f"solve {v['seconds']['solve']:.2f} s; corr(â, a) = {v['corr_bv']:.4f}")
            lines.append("")
    lines += ["", "## Simulated data", ""]
    for r in results["sizes"] + results.get("pcg", []):
        if "simulate" in r and "summary" in r["simulate"]:
            lines += [f"- **{r['n']:,}** (simulated in {r['simulate']['seconds']:.1f} s): "
                      + r["simulate"]["summary"].replace("\n", "; ")]
    lines += ["", "## Machine", "", machine_md, ""]
    return "\n".join(lines)


def main():
    global WAIT_IDLE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,300000")
    ap.add_argument("--pcg-sizes", default="1000000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget-minutes", type=float, default=25.0)
    ap.add_argument("--no-fit-above", type=int, default=None,
                    help="skip the full REML fit above this many animals")
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_animal"))
    ap.add_argument("--wait-idle", type=float, default=WAIT_IDLE,
                    help="seconds to wait, before each job, for other processes to go idle")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the .md from the existing .json (no runs)")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--n", type=int)
    ap.add_argument("--worker-out")
    args = ap.parse_args()

    if args.worker:
        # the thread policy mme.fit applies, for the stages timed outside mme.fit too
        from mme._threads import dense_blas_threads
        with dense_blas_threads(1):
            res = WORKERS[args.worker](args.n, args.seed)
        with open(args.worker_out, "w") as fh:
            json.dump(res, fh, default=float)
        return

    WAIT_IDLE = args.wait_idle
    if args.render_only:
        from _machine import machine_markdown
        with open(args.out_prefix + ".json") as fh:
            results = json.load(fh)
        with open(args.out_prefix + ".md", "w") as fh:
            fh.write(render(results, args, machine_markdown(results["machine"])))
        return
    t_start = time.perf_counter()
    budget = args.budget_minutes * 60.0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pcg_sizes = [int(s) for s in args.pcg_sizes.split(",") if s]
    results = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "command": "python benchmarks/bench_animal.py " + " ".join(sys.argv[1:]),
               "formula": FORMULA, "sizes": [], "pcg": []}
    evals_per_fit = None   # REML-round equivalents a fit needed at the last size
    for n in sizes:
        r = {"n": n}
        results["sizes"].append(r)
        remaining = budget - (time.perf_counter() - t_start)
        r["simulate"] = run_job("simulate", n, args.seed, timeout=max(remaining, 60))
        remaining = budget - (time.perf_counter() - t_start)
        r["stages"] = run_job("stages", n, args.seed, timeout=max(remaining, 60))
        if "error" in r["stages"]:
            continue
        round_s = r["stages"]["seconds"]["REML round"]
        remaining = budget - (time.perf_counter() - t_start)
        projected = None if evals_per_fit is None else evals_per_fit * round_s
        if args.no_fit_above is not None and n > args.no_fit_above:
            r["fit_skipped"] = f"--no-fit-above {args.no_fit_above}"
        elif projected is not None and projected > remaining - 60:
            r["fit_skipped"] = (f"projected {projected / 60:.0f} min ({evals_per_fit:.1f} REML "
                                f"rounds as at the previous size x {round_s:.0f} s) exceeds the "
                                f"remaining budget ({remaining / 60:.0f} min)")
        else:
            r["fit"] = run_job("fit", n, args.seed, timeout=max(remaining, 60))
            if "error" not in r["fit"]:
                evals_per_fit = r["fit"]["seconds_fit"] / round_s
        fac = r["stages"]["seconds"]["numeric factorization"]
        per_round = (r["fit"]["seconds_per_iteration"] if "fit" in r and "error" not in r["fit"]
                     else round_s)
        r["ratio"] = per_round / fac
        print(f"  => REML round {per_round:.2f} s / factorization {fac:.2f} s = {r['ratio']:.1f}",
              flush=True)
    for n in pcg_sizes:
        remaining = budget - (time.perf_counter() - t_start)
        sim = run_job("simulate", n, args.seed, timeout=max(remaining, 60))
        res = run_job("pcg", n, args.seed, timeout=max(remaining, 60))
        res["n"] = n
        res["simulate"] = sim
        results["pcg"].append(res)
    results["total_minutes"] = (time.perf_counter() - t_start) / 60.0
    try:
        from _machine import machine_info, machine_markdown
        info = machine_info(include_r=False)
        md = machine_markdown(info)
    except Exception as exc:  # pragma: no cover
        info, md = {"error": repr(exc)}, f"machine info unavailable: {exc!r}"
    results["machine"] = info
    with open(args.out_prefix + ".json", "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    text = render(results, args, md)
    with open(args.out_prefix + ".md", "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
