#!/usr/bin/env python
"""The CHOLMOD binding of ``mme._core`` against scikit-sparse, head to head in one process.

    python benchmarks/bench_cholmod_binding.py [--sizes 100000,300000] [--seed 1]
        [--repeats 3] [--out benchmarks/results_cholmod_binding.md]

On the animal benchmark's model (``bench_animal.py``: ``y ~ sex + (1|herd) + (1|id)``,
simulated pedigree, data from ``simulate_animal``; written once to
``benchmarks/work/``), at the simulated variances, in one fresh process per size:

* analyze: ``Cholesky(C, ordering)`` vs ``sksparse.cholmod.analyze(C, ordering_method)``
  (the same ordering, ``system.ordering``: AMD for a pedigree model);
* numeric factorization: ``Cholesky.factorize(C)`` vs ``Factor.cholesky_inplace(C)``;
* selected inverse at every slot of C, as a REML round needs it: the binding's
  (``Cholesky.selected_inverse`` on CHOLMOD's supernodal layout into the factor's
  reused buffer + the slots of C, found once) vs the previous route (``Factor.L()``
  copy to CSC, its supernode partition, ``_core.selected_inverse_supernodal`` on the
  CSC copy into a fresh array, the slots of C in L found once) — the L() copy is
  timed separately;
* a solve with one right-hand side and the log-determinant.

The BLAS thread policy of a fit applies (``dense_blas_threads(1)``; the selected
inverse of a large L on every core, ``all_cores_for_large``, for both routes). The
analysis is timed ``--repeats`` times; then each route analyzes once and runs
``--repeats`` rounds (factorize, selected inverse, solve, logdet) on that analysis, as
a fit does, the two routes' rounds alternating. Best (minimum: a shared host) and
median of each step are kept, and the round (factorization + selected inverse [+ L()
copy]) repeat by repeat. The load
averages before and after are recorded. Both routes' results are compared
(permutation, log-determinant, selected inverse, solve).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
sys.path.insert(0, HERE)


def worker(n: int, seed: int, repeats: int) -> dict:
    import numpy as np
    from sksparse import cholmod

    import bench_animal as ba
    from _jobs import maxrss_gib
    from mme import _core
    from mme._threads import all_cores_for_large, dense_blas_threads
    from mme.engine.cholesky import PARALLEL_SELINV_MIN_NNZ, Cholesky, supernode_partition
    from mme.engine.reml import Likelihood
    from mme.engine.system import MME
    from mme.model.design import build_design
    from mme.model.formula import parse_formula
    import mme

    if not os.path.exists(ba.data_path(n, seed)):
        ba.worker_simulate(n, seed)
    ped, phen, truth = ba.load(n, seed)
    P = mme.Pedigree.from_frame(ped)
    system = MME(build_design(parse_formula(ba.FORMULA), phen, {"id": P}))
    model = Likelihood(system, "REML")
    G0s, s2e = model.split(ba.true_theta(model, truth))
    system.set_values(G0s, s2e)
    C, ordering = system.C, system.ordering
    rows, cols = system.pattern_rows, system.pattern_cols
    b = np.linspace(-1.0, 1.0, system.dim)
    times = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    threads = dense_blas_threads(1)      # as inside mme.fit (dense_blas_threads=1)
    threads.__enter__()
    # 1. analysis, as often as the other steps (a fit analyzes once)
    for _ in range(repeats):
        timed("binding: analyze", lambda: Cholesky(C, ordering)).free()
        timed("scikit-sparse: analyze", lambda: cholmod.analyze(C, ordering_method=ordering))
    # 2. REML rounds on one analysis each, as a fit runs them: the binding's factor (and
    #    its selected-inverse buffer) persists; the previous route copied L() and filled a
    #    fresh array every round
    ours = Cholesky(C, ordering)
    theirs = cholmod.analyze(C, ordering_method=ordering)
    pinv = np.empty(system.dim, dtype=np.int64)
    pinv[theirs.P()] = np.arange(system.dim)
    slots = pos = sn = None
    big = ours.nnz_L >= PARALLEL_SELINV_MIN_NNZ
    for _ in range(repeats):
        timed("binding: factorize", lambda: ours.factorize(C))
        if slots is None:
            slots = timed("binding: slots of C (once per analysis)", lambda: ours.slots(rows, cols))
        Zx = timed("binding: selected inverse", lambda: ours.selected_inverse())
        z_ours = Zx[slots]
        x_ours = timed("binding: solve", lambda: ours.solve(b))
        ld_ours = timed("binding: logdet", lambda: ours.logdet())

        timed("scikit-sparse: factorize", lambda: theirs.cholesky_inplace(C))
        L = timed("scikit-sparse: L() copy", lambda: theirs.L())
        if not L.has_sorted_indices:
            L.sort_indices()
        if pos is None:
            def slots_csc():
                r, c = pinv[rows], pinv[cols]
                out = np.empty(r.shape[0], dtype=np.int64)
                _core.csc_positions(L.indptr, L.indices, np.maximum(r, c), np.minimum(r, c), out)
                return out

            pos = timed("scikit-sparse: slots of C (once per analysis)", slots_csc)
            sn = timed("scikit-sparse: supernode partition (once)", lambda: supernode_partition(L))

        def selinv_csc():       # as MME.selected_inverse did: a fresh output array
            Zc = np.empty_like(L.data)
            with all_cores_for_large(big):
                _core.selected_inverse_supernodal(L.indptr, L.indices, L.data, Zc, sn)
            return Zc

        Zc = timed("scikit-sparse: selected inverse on L()", selinv_csc)
        z_theirs = Zc[pos]
        x_theirs = timed("scikit-sparse: solve", lambda: theirs.solve_A(b))
        ld_theirs = timed("scikit-sparse: logdet", lambda: theirs.logdet())
        nnz_L_csc = int(L.nnz)
        del L, Zc
    threads.__exit__(None, None, None)
    sym = ours.symbolic()
    agree = {
        "same_permutation": bool(np.array_equal(ours.perm, theirs.P())),
        "logdet_abs_diff": abs(ld_ours - float(ld_theirs)),
        "selinv_max_rel_diff": float(np.abs(z_ours - z_theirs).max() / np.abs(z_theirs).max()),
        "solve_max_rel_diff": float(np.abs(x_ours - x_theirs).max() / np.abs(x_theirs).max()),
    }
    best = {k: min(v) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    # a round's time, repeat by repeat (the steps of one round ran back to back)
    rounds_ours = np.add(times["binding: factorize"], times["binding: selected inverse"])
    rounds_theirs = (np.add(times["scikit-sparse: factorize"], times["scikit-sparse: L() copy"])
                     + np.asarray(times["scikit-sparse: selected inverse on L()"]))
    rnd_ours, rnd_theirs = float(rounds_ours.min()), float(rounds_theirs.min())
    return {"n": n, "dim": int(system.dim), "nnz_C_lower": int(C.nnz), "ordering": ordering,
            "nnz_L": int(ours.nnz_L), "nnz_L_csc_copy": nnz_L_csc, "xsize": sym.get("xsize"),
            "nsuper": sym.get("nsuper"), "supernodal": sym["supernodal"],
            "seconds_best": best, "seconds_median": median, "seconds_all": times,
            "agree": agree,
            "factorize_plus_selinv": {"binding": rnd_ours, "scikit-sparse": rnd_theirs,
                                      "ratio": rnd_ours / rnd_theirs,
                                      "binding_median": float(np.median(rounds_ours)),
                                      "scikit-sparse_median": float(np.median(rounds_theirs)),
                                      "ratio_median": float(np.median(rounds_ours)
                                                            / np.median(rounds_theirs)),
                                      "ratio_per_repeat": (rounds_ours / rounds_theirs).tolist()},
            "peak_rss_gib": maxrss_gib()}


def render(results: list, machine_md: str, loads: tuple) -> str:
    L = ["# CHOLMOD through mme's binding vs through scikit-sparse (one process per size)", "",
         f"Run {dt.datetime.now():%Y-%m-%d %H:%M}; load averages (1/5/15 min) before "
         f"{loads[0]}, after {loads[1]}. Best (and median) of the repeats; binding and "
         "scikit-sparse rounds alternate in the same process, each route on one analysis "
         "(the binding's selected-inverse buffer reused, as in a fit).", ""]
    for r in results:
        s = r["seconds_best"]
        L += [f"## {r['n']:,} animals: dim(C) {r['dim']:,}, nnz(C) {r['nnz_C_lower']:,}, "
              f"ordering `{r['ordering']}`, nnz(L) {r['nnz_L']:,} "
              f"({'supernodal' if r['supernodal'] else 'simplicial'}: {r['nsuper'] or 0:,} "
              f"supernodes, {r['xsize'] or r['nnz_L']:,} values stored; L() copy {r['nnz_L_csc_copy']:,})",
              "", "| step | binding s | scikit-sparse s | ratio (best) | ratio (median) |",
              "|---|---:|---:|---:|---:|"]
        md = r.get("seconds_median", s)
        for step, other in (("analyze", "analyze"), ("factorize", "factorize"),
                            ("selected inverse", "selected inverse on L()"),
                            ("solve", "solve"), ("logdet", "logdet"),
                            ("slots of C (once per analysis)", "slots of C (once per analysis)")):
            a, b = s[f"binding: {step}"], s[f"scikit-sparse: {other}"]
            am, bm = md[f"binding: {step}"], md[f"scikit-sparse: {other}"]
            L.append(f"| {step} | {a:.3f} | {b:.3f} | {a / b:.2f} | {am / bm:.2f} |")
        L.append(f"| L() copy (scikit-sparse only) | – | {s['scikit-sparse: L() copy']:.3f} | | |")
        fr = r["factorize_plus_selinv"]
        per = ", ".join(f"{x:.2f}" for x in fr.get("ratio_per_repeat", []))
        L += ["", f"**REML round** (factorization + selected inverse, the work of a round beyond "
                  f"the solves): binding {fr['binding']:.3f} s, scikit-sparse + L() copy "
                  f"{fr['scikit-sparse']:.3f} s, ratio {fr['ratio']:.2f} (best); medians "
                  f"{fr.get('binding_median', float('nan')):.3f} / "
                  f"{fr.get('scikit-sparse_median', float('nan')):.3f} s, ratio "
                  f"{fr.get('ratio_median', float('nan')):.2f}; per repeat {per}.",
              f"Agreement: same permutation {r['agree']['same_permutation']}, |Δ logdet| "
              f"{r['agree']['logdet_abs_diff']:.2e}, selected inverse max rel. diff "
              f"{r['agree']['selinv_max_rel_diff']:.2e}, solve max rel. diff "
              f"{r['agree']['solve_max_rel_diff']:.2e}. Peak RSS {r['peak_rss_gib']:.2f} GiB.",
              ""]
    return "\n".join(L + ["## Machine", "", machine_md, ""])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results_cholmod_binding.md"))
    ap.add_argument("--worker", type=int, default=None)
    ap.add_argument("--worker-out")
    args = ap.parse_args()
    if args.worker is not None:
        res = worker(args.worker, args.seed, args.repeats)
        with open(args.worker_out, "w") as fh:
            json.dump(res, fh)
        return
    from _machine import machine_info, machine_markdown
    os.makedirs(WORK, exist_ok=True)
    load0 = os.getloadavg()
    results = []
    for n in [int(x) for x in args.sizes.split(",") if x]:
        out = os.path.join(WORK, f"cholmod_binding_n{n}.json")
        print(f"[{dt.datetime.now():%H:%M:%S}] n={n:,}", flush=True)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n),
                        "--seed", str(args.seed), "--repeats", str(args.repeats),
                        "--worker-out", out], check=True)
        with open(out) as fh:
            results.append(json.load(fh))
        print(json.dumps(results[-1]["seconds_best"], indent=1), flush=True)
    load1 = os.getloadavg()
    loads = tuple(" / ".join(f"{v:.1f}" for v in x) for x in (load0, load1))
    md = render(results, machine_markdown(machine_info(include_r=False)), loads)
    with open(args.out, "w") as fh:
        fh.write(md)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump({"results": results, "load_before": load0, "load_after": load1}, fh, indent=1)
    print(md)


if __name__ == "__main__":
    main()
