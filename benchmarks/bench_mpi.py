#!/usr/bin/env python
"""Distributed BLUP (and Monte-Carlo REML) over MPI: time per PCG iteration, iterations
to 1e-8 and peak memory per rank, by number of animals and ranks.

    python benchmarks/bench_mpi.py --runs 1000000:1,1000000:2,2000000:1,2000000:2
    python benchmarks/bench_mpi.py --runs 10000000:2 --out-prefix benchmarks/results_mpi_10m
    python benchmarks/bench_mpi.py --mcreml 1000000:2 --samples 20 --direct

The driver runs each job as ``mpiexec -n K python bench_mpi.py --worker ...`` (a
fresh set of processes per job, ``_jobs.run_worker``) and writes
``results_mpi.json``/``.md``. Not a timed test.

Data, generated on the fly (``generate``): a pedigree of N animals in 10 cohorts
(founders, then sires drawn from √(cohort)/2 males of the 3 previous cohorts, dams
from the females of the 5 previous ones, 7% of parents unknown), true breeding values
by a_i = (a_s + a_d)/2 + m_i (Mendelian variance 1/2, 3/4, 1 by known parents;
inbreeding ignored in the simulation, not in A⁻¹), one record per animal
y = 10 + 0.5·male + herd + a + e with herds of ~50 records, σ²ₐ = 0.4, σ²_herd = 0.2,
σ²ₑ = 0.6. Every rank makes the same pedigree and true values (seeded: the pedigree is
replicated, as in the solver), and only its own records: residuals and herds come
from one random stream per block of 65,536 animals, so a record is the same whatever
the number of ranks. Every rank holds the pedigree (``mme.Pedigree.from_parents``: the
parents' positions, no id strings; inbreeding computed) and builds only its share of
G⁻¹'s rows, A⁻¹'s among them (``Pedigree.ainverse_rows``; ``--ginv split``, the
default), or rank 0 builds all of G⁻¹ (``--ginv root``); the animal column holds level
positions (relmat ``(RangeIndex(N), pedigree)``). ``--whole-ainverse`` gives the
design the whole A⁻¹ built by every rank instead (relmat ``(RangeIndex(N), A⁻¹)``,
the route before the rows), for comparison.

Model ``y ~ sex + (1|herd) + (1|id)`` at the true variances; PCG with the block
preconditioner to a relative residual of 1e-8.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

S2A, S2H, S2E = 0.4, 0.2, 0.6
VARIANCES = {"herd": S2H, "id": S2A, "Residual": S2E}
FORMULA = "y ~ sex + (1|herd) + (1|id)"
BLOCK = 65_536


def pedigree(n: int, seed: int = 1, cohorts: int = 10, unknown: float = 0.07):
    """(sire, dam, male, a): parents as positions (−1 unknown), parents first."""
    rng = np.random.default_rng([seed, 0])
    sizes = np.full(cohorts, n // cohorts)
    sizes[: n % cohorts] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)])
    male = rng.random(n) < 0.5
    sire = np.full(n, -1, dtype=np.int64)
    dam = np.full(n, -1, dtype=np.int64)
    a = np.empty(n)
    a[:sizes[0]] = rng.standard_normal(sizes[0]) * np.sqrt(S2A)
    for c in range(1, cohorts):
        lo, hi = starts[c], starts[c + 1]
        m = hi - lo
        s_lo, d_lo = starts[max(0, c - 3)], starts[max(0, c - 5)]
        males = np.flatnonzero(male[s_lo:lo]) + s_lo
        females = np.flatnonzero(~male[d_lo:lo]) + d_lo
        k = max(1, int(np.sqrt(m) / 2))
        chosen = rng.choice(males, size=min(k, males.size), replace=False)
        sire[lo:hi] = chosen[rng.integers(0, chosen.size, m)]
        dam[lo:hi] = females[rng.integers(0, females.size, m)]
        sire[lo:hi][rng.random(m) < unknown] = -1
        dam[lo:hi][rng.random(m) < unknown] = -1
        ks, kd = sire[lo:hi] >= 0, dam[lo:hi] >= 0
        d = np.where(ks & kd, 0.5, np.where(ks | kd, 0.75, 1.0))
        mean = 0.5 * (np.where(ks, a[np.maximum(sire[lo:hi], 0)], 0.0)
                      + np.where(kd, a[np.maximum(dam[lo:hi], 0)], 0.0))
        a[lo:hi] = mean + rng.standard_normal(m) * np.sqrt(d * S2A)
    return sire, dam, male, a


def records(rows: slice, n: int, male: np.ndarray, a: np.ndarray, seed: int = 1
            ) -> pd.DataFrame:
    """The records of animals ``rows`` (one each), the same whoever makes them."""
    n_herds = max(2, n // 50)
    herd_eff = np.random.default_rng([seed, 1]).standard_normal(n_herds) * np.sqrt(S2H)
    lo, hi = rows.start, rows.stop
    herd = np.empty(hi - lo, dtype=np.int64)
    e = np.empty(hi - lo)
    for b in range(lo // BLOCK, (hi - 1) // BLOCK + 1 if hi > lo else 0):
        rng = np.random.default_rng([seed, 2, b])
        blo, bhi = b * BLOCK, min((b + 1) * BLOCK, n)
        h = rng.integers(0, n_herds, bhi - blo)
        z = rng.standard_normal(bhi - blo)
        s, t = max(lo, blo), min(hi, bhi)
        herd[s - lo:t - lo] = h[s - blo:t - blo]
        e[s - lo:t - lo] = z[s - blo:t - blo] * np.sqrt(S2E)
    idx = np.arange(lo, hi)
    y = 10.0 + 0.5 * male[idx] + herd_eff[herd] + a[idx] + e
    return pd.DataFrame({"y": y, "sex": pd.Categorical(np.where(male[idx], "M", "F"),
                                                       categories=["F", "M"]),
                         "herd": herd, "id": idx})


def pedigree_rows(sire: np.ndarray, dam: np.ndarray):
    """(mme.Pedigree.from_parents, log|A|): A⁻¹ is built by rows in the operator."""
    import mme
    ped = mme.Pedigree.from_parents(sire, dam)
    return ped, ped.logdet_a()


def ainverse(sire: np.ndarray, dam: np.ndarray):
    """(A⁻¹ in position order, log|A|) by mme.Pedigree (inbreeding included)."""
    import mme
    n = sire.size
    ped = mme.Pedigree(np.arange(1, n + 1), sire + 1, dam + 1, missing=(0,))
    if not np.array_equal(ped.ids.to_numpy().astype(np.int64), np.arange(1, n + 1)):
        raise RuntimeError("the simulated pedigree is not in parents-first order")
    return ped.ainverse(), ped.logdet_a()


def _rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(a) -> None:
    from mme.distributed import RowPartition, build_local_design, world
    from mme.distributed.blup import solve_distributed
    comm = world(timeout=3600)
    t = {}
    t0 = time.perf_counter()
    sire, dam, male, tbv = pedigree(a.n, a.seed)
    t["pedigree"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    holds = comm.is_root or a.ginv == "split"
    if a.whole_ainverse:
        Kinv, logdet = ainverse(sire, dam) if holds else (None, 0.0)
    else:           # the pedigree (and inbreeding) only: rows of A⁻¹ come in the PCG setup
        Kinv, logdet = pedigree_rows(sire, dam) if holds else (None, 0.0)
    t["ainverse"] = time.perf_counter() - t0
    comm.allreduce(np.zeros(1), "waiting for A⁻¹ on rank 0")      # stages timed apart
    del sire, dam           # the pedigree holds them (from_parents does not copy them)
    rss_setup = _rss_gib()
    part = RowPartition.even(a.n, comm.size)
    t0 = time.perf_counter()
    df = records(part.rows(comm.rank), a.n, male, tbv, a.seed)
    t["records"] = time.perf_counter() - t0
    del male
    relmat = {"id": (pd.RangeIndex(a.n), Kinv, logdet)}     # Kinv: A⁻¹ or the pedigree
    t0 = time.perf_counter()
    design = build_local_design(FORMULA, df, comm, relmat,
                                kinv="all" if a.ginv == "split" else "root")
    t["design"] = time.perf_counter() - t0
    del Kinv, relmat, df
    out = {"n": a.n, "ranks": comm.size, "rows": list(design.partition.counts),
           "ainverse_route": "whole" if a.whole_ainverse else "rows",
           "dim": design.dim, "nnz_W_local": int(design.W.nnz)}
    if a.mc_worker:
        from mme.distributed import mc_reml_design
        t0 = time.perf_counter()
        res = mc_reml_design(design, comm, n_samples=a.samples, seed=a.seed, ginv=a.ginv,
                             callback=(lambda r: print(r, flush=True)) if comm.is_root
                             else None)
        t["mc_reml"] = time.perf_counter() - t0
        out.update(mc_reml={"variances": res.variances, "se": res.se, "mc_se": res.mc_se,
                            "rounds": res.n_iter, "converged": res.converged,
                            "pcg_iterations": res.pcg_iterations, "samples": res.n_samples,
                            "history": res.history})
    else:
        n_red0 = comm.n_collectives
        res = solve_distributed(design, VARIANCES, comm, tol=1e-8, max_iter=10_000,
                                ginv=a.ginv)
        for key in ("setup", "solve", "local_products", "allreduce", "vector_updates"):
            t["pcg_" + key] = res.seconds[key]
        out.update(ginv=a.ginv, pcg_iterations=res.n_iter, rel_residual=res.rel_residual,
                   converged=res.converged, ms_per_iteration=1e3 * res.seconds_per_iteration,
                   nnz_local=res.nnz_local, collectives=comm.n_collectives - n_red0,
                   seconds_waiting=comm.seconds_waiting)
        sol = res.random_effects
        ebv = sol.loc[sol["group"] == "id", "blup"].to_numpy()
        if comm.is_root:
            out["corr_ebv_tbv"] = float(np.corrcoef(ebv, tbv)[0, 1])
    rss = comm.allgather({"rank": comm.rank, "peak_rss_gib": _rss_gib(),
                          "rss_after_setup_gib": rss_setup, "seconds": t},
                         "peak memory per rank")
    out["per_rank"] = rss
    if comm.is_root:
        with open(a.out, "w") as fh:
            json.dump(out, fh, default=float)


def direct_worker(a) -> None:
    """Exact AI-REML (mme.fit, CHOLMOD) on the same data, one process."""
    import mme
    t0 = time.perf_counter()
    sire, dam, male, tbv = pedigree(a.n, a.seed)
    Kinv, logdet = ainverse(sire, dam)
    df = records(slice(0, a.n), a.n, male, tbv, a.seed)
    df["id"] = df["id"].astype(str)
    levels = pd.Index(np.arange(a.n).astype(str), dtype=object)
    t1 = time.perf_counter()
    fit = mme.fit(FORMULA, df, relmat={"id": (levels, Kinv, logdet)})
    t2 = time.perf_counter()
    vc = fit.variance_components.set_index("group")
    log = fit.iteration_log
    rounds = log[log["iteration"] > 0]
    with open(a.out, "w") as fh:
        json.dump({"n": a.n, "seconds_fit": t2 - t1, "seconds_data": t1 - t0,
                   "variances": vc["estimate"].to_dict(), "se": vc["std_error"].to_dict(),
                   "rounds": int(fit.n_iter), "peak_rss_gib": _rss_gib(),
                   "seconds_per_round_median": float(rounds["seconds"].median()),
                   "seconds_rounds": [float(x) for x in log["seconds"]]}, fh)


def _mpiexec() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else "mpiexec"


def render(results: dict, machine: str) -> str:
    lines = [f"# Distributed BLUP over MPI (`benchmarks/bench_mpi.py`)", "",
             f"Run {results['started']}, command `{results['command']}`; total "
             f"{results['minutes']:.1f} min. Free memory at the start: "
             f"{results['mem_available_gib']:.1f} GiB.", "",
             f"Model `{FORMULA}`, relmat A⁻¹ of the simulated pedigree (every rank holds "
             "the pedigree and builds only its share of G⁻¹'s rows, A⁻¹'s among them, "
             "`Pedigree.ainverse_rows`; `--ginv split`; *A⁻¹ s* is the pedigree and its "
             "inbreeding, the rows being built in the PCG setup), "
             "true variances (σ²ₐ 0.4, σ²_herd 0.2, σ²ₑ 0.6), distributed PCG with the block "
             "preconditioner to a relative residual of 1e-8; one Allreduce per "
             "iteration. Records generated per rank (docstring of the script). `mpiexec` "
             "from the pip `mpich` wheel; both ranks share the machine's 2 cores with "
             "other jobs (see the CPU share column).", "",
             "Per iteration, on rank 0: *local* = its W'W v and G⁻¹v, *reduce* = the "
             "Allreduce including the wait for the slowest rank, *vectors* = the "
             "replicated PCG updates and preconditioner (the part that does not shrink "
             "with more ranks).", "",
             "| animals | ranks | rows per rank | PCG iterations | ms / iteration | local | "
             "reduce | vectors | A⁻¹ s (rank 0) | design s | PCG setup s | peak RSS per rank "
             "GiB | others' CPU share | wall s |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['ranks']} | – | {r['error']} | | | | | | "
                         f"{r['wall']:.0f} |")
            continue
        pr = r["per_rank"]
        s0 = pr[0]["seconds"]
        it = max(r["pcg_iterations"], 1)
        per = " | ".join(f"{1e3 * s0['pcg_' + k] / it:.1f}"
                         for k in ("local_products", "allreduce", "vector_updates"))
        lines.append(
            f"| {r['n']:,} | {r['ranks']} | {', '.join(f'{c:,}' for c in r['rows'])} | "
            f"{r['pcg_iterations']} | {r['ms_per_iteration']:.1f} | {per} | "
            f"{s0['ainverse']:.1f} | {max(p['seconds']['design'] for p in pr):.1f} | "
            f"{s0['pcg_setup']:.1f} | "
            f"{', '.join(format(p['peak_rss_gib'], '.2f') for p in pr)} | "
            f"{100 * r.get('cpu_other_during', float('nan')):.0f}% | {r['wall']:.0f} |")
    if results.get("mcreml"):
        lines += ["", "## Monte-Carlo REML vs exact AI-REML (same data)", "",
                  "| animals | ranks | samples | rounds | PCG iterations | MC-REML s | "
                  "peak RSS per rank GiB | σ²_herd | σ²ₐ | σ²ₑ | exact AI-REML s | exact "
                  "σ²_herd | σ²ₐ | σ²ₑ | peak RSS GiB | AI-REML s per round (median) |",
                  "|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---|---|---|---:|---:|"]
    for r in results.get("mcreml", []):
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['ranks']} | {r['error']} |")
            continue
        m = r["mc_reml"]
        est = " | ".join(f"{m['variances'][g]:.4f} ± {m['mc_se'][g]:.4f} (MC)"
                         for g in ("herd", "id", "Residual"))
        d = r.get("direct") or {}
        if "variances" in d:
            dx = (f"{d['seconds_fit']:.0f} | " + " | ".join(
                f"{d['variances'][g]:.4f} ± {d['se'][g]:.4f}" for g in ("herd", "id",
                                                                        "Residual"))
                  + f" | {d['peak_rss_gib']:.2f} | "
                  + (f"{d['seconds_per_round_median']:.0f}" if "seconds_per_round_median" in d
                     else "–"))
        else:
            dx = (d.get("error", "not run") + " | | | | | ")
        lines.append(f"| {r['n']:,} | {r['ranks']} | {m['samples']} | {m['rounds']} | "
                     f"{m['pcg_iterations']} | {r['per_rank'][0]['seconds']['mc_reml']:.0f} | "
                     f"{', '.join(format(p['peak_rss_gib'], '.2f') for p in r['per_rank'])} | "
                     f"{est} | {dx} |")
    lines += ["", "## Machine", "", machine, ""]
    return "\n".join(lines)


def _mem_available_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mc-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench_mpi_job.json")
    ap.add_argument("--runs", default="1000000:1,1000000:2,2000000:1,2000000:2",
                    help="N:K pairs, comma-separated")
    ap.add_argument("--mcreml", default="", help="N:K pairs for Monte-Carlo REML")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--ginv", default="split", choices=["split", "root"],
                    help="G⁻¹ products: every rank its share of rows (each builds A⁻¹), "
                         "or rank 0 alone")
    ap.add_argument("--whole-ainverse", action="store_true",
                    help="every rank builds the whole A⁻¹ (the route before the rows)")
    ap.add_argument("--direct", action="store_true",
                    help="also run exact AI-REML (mme.fit) at each --mcreml size")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--wait-idle", type=float, default=0.0)
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_mpi"))
    ap.add_argument("--render", action="store_true",
                    help="rewrite <out-prefix>.md from its .json (after a change of layout)")
    a = ap.parse_args()
    if a.render:
        from _machine import machine_markdown
        with open(a.out_prefix + ".json") as fh:
            results = json.load(fh)
        with open(a.out_prefix + ".md", "w") as fh:
            fh.write(render(results, machine_markdown(results["machine"])))
        return None
    if a.worker:
        return worker(a)
    if a.direct_worker:
        return direct_worker(a)
    from _jobs import run_worker, write_results
    t0 = time.perf_counter()
    results = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "python benchmarks/bench_mpi.py " + " ".join(sys.argv[1:]),
               "mem_available_gib": _mem_available_gib(), "runs": [], "mcreml": []}
    tmp = os.path.join(HERE, f".bench_mpi_{os.getpid()}.json")
    # one BLAS/OpenMP thread per rank: the ranks share the cores
    env_cmd = ["env", "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", sys.executable,
               os.path.abspath(__file__), "--worker"]

    def job(n, k, extra=()):
        cmd = [_mpiexec(), "-n", str(k), *env_cmd, "--n", str(n), "--seed", str(a.seed),
               "--out", tmp, "--ginv", a.ginv, *extra] + (
                   ["--whole-ainverse"] if a.whole_ainverse else [])
        print(f"[bench_mpi] {n:,} animals on {k} rank(s) {' '.join(extra)}", flush=True)
        r = run_worker(cmd, tmp, a.timeout, a.wait_idle)
        r.setdefault("n", n)
        r.setdefault("ranks", k)
        print(json.dumps({k: v for k, v in r.items() if k != "per_rank"}, default=float),
              flush=True)
        return r

    for spec in filter(None, a.runs.split(",")):
        n, k = (int(x) for x in spec.split(":"))
        results["runs"].append(job(n, k))
    for spec in filter(None, a.mcreml.split(",")):
        n, k = (int(x) for x in spec.split(":"))
        r = job(n, k, ("--mc-worker", "--samples", str(a.samples)))
        if a.direct:
            cmd = [sys.executable, os.path.abspath(__file__), "--direct-worker", "--n", str(n),
                   "--seed", str(a.seed), "--out", tmp]
            print(f"[bench_mpi] exact AI-REML at {n:,} animals", flush=True)
            r["direct"] = run_worker(cmd, tmp, a.timeout, a.wait_idle)
        results["mcreml"].append(r)
    if os.path.exists(tmp):
        os.remove(tmp)
    results["minutes"] = (time.perf_counter() - t0) / 60
    write_results(results, a.out_prefix, render)


if __name__ == "__main__":
    # the workers run under mpiexec: threads per rank = 1 (2 cores shared by the ranks)
    main()
