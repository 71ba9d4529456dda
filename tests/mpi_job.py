"""One distributed job for tests/test_mpi.py, run as ``mpiexec -n K python tests/mpi_job.py``.

Every rank reads its own slice of ``--data`` (``mme.distributed.read_slice``) and the
pedigree, solves (BLUP at ``--variances``, or Monte-Carlo REML with ``--mcreml``);
rank 0 writes the result to ``--out`` as JSON. A DistributedError is printed once,
by rank 0, as ``mme: error: ...`` and every rank exits with status 1.

``--fault`` makes one rank misbehave: ``differ`` (other variances), ``unreadable``
(its slice's file does not exist), ``raise`` (an error while building its rows),
``stuck`` (it sleeps instead of joining a collective), ``killed`` (SIGKILL),
``strtrait`` (the last response of a cbind() formula read as text),
``differ-residual`` (another ``--residual``).
``--residual`` and ``--weights`` are those of ``mme.fit``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--pedigree")
    ap.add_argument("--formula", required=True)
    ap.add_argument("--variances", required=True, help="JSON")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tol", type=float, default=1e-12)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--fault", choices=["differ", "unreadable", "raise", "stuck", "killed",
                                        "strtrait", "differ-residual"])
    ap.add_argument("--relmat", default="id", help="the random term of the pedigree")
    ap.add_argument("--residual")
    ap.add_argument("--weights")
    ap.add_argument("--fault-rank", type=int, default=1)
    ap.add_argument("--factors", default="", help="columns read as strings, comma-separated")
    ap.add_argument("--mcreml", action="store_true")
    ap.add_argument("--ginv", default="auto", help="auto | split | root")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    import mme
    from mme.distributed import DistributedError, blup_distributed, read_slice, world
    comm = world(timeout=a.timeout)
    bad = a.fault is not None and comm.rank == a.fault_rank
    try:
        with comm.step("reading this rank's slice of the records"):
            path = a.data + ".absent" if bad and a.fault == "unreadable" else a.data
            df, part = read_slice(path, comm.rank, comm.size,
                                  {"dtype": {c: str for c in a.factors.split(",") if c}})
            if bad and a.fault == "raise":
                df = df.drop(columns=["sex"])
            if bad and a.fault == "strtrait":
                from mme.model.formula import parse_formula
                last = parse_formula(a.formula).responses[-1]
                df[last] = df[last].astype(str)
        relmat = None
        if a.pedigree:
            ped = mme.Pedigree.from_frame(pd.read_csv(a.pedigree, dtype=str))
            relmat = {a.relmat: ped}
        variances = json.loads(a.variances)     # "null": Monte-Carlo REML's default start
        if bad and a.fault == "differ":
            variances = {k: np.multiply(2, v).tolist() for k, v in variances.items()}
        residual = a.residual
        if bad and a.fault == "differ-residual":
            residual = "diag(trait)" if residual in (None, "us(trait)") else None
        if bad and a.fault == "stuck":
            time.sleep(3600)
        if bad and a.fault == "killed":
            import os
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        if a.mcreml:
            from mme.distributed import mc_reml
            res = mc_reml(a.formula, df, relmat=relmat, start=variances, comm=comm,
                          n_samples=a.samples, seed=a.seed, residual=residual,
                          weights=a.weights)
            out = {"variances": res.variances, "mc_se": res.mc_se, "n_iter": res.n_iter,
                   "converged": res.converged, "ranks": comm.size}
        else:
            res = blup_distributed(a.formula, df, variances, relmat=relmat, comm=comm,
                                   tol=a.tol, ginv=a.ginv, residual=residual,
                                   weights=a.weights)
            out = {"fixed": res.fixed_effects["estimate"].to_dict(),
                   "random": res.random_effects[["group", "term", "level", "blup"]]
                   .to_dict("list"),
                   "n_iter": res.n_iter, "rel_residual": res.rel_residual,
                   "converged": res.converged, "counts": list(res.partition.counts),
                   "ranks": res.ranks, "n_reduce": res.n_reduce,
                   "nnz_local": comm.allgather(res.nnz_local, "nonzeros per rank")}
    except DistributedError as exc:
        if comm.rank == 0:
            print(f"mme: error: {exc}", file=sys.stderr, flush=True)
        if "no answer" in str(exc):
            comm.abort(1)       # a stuck rank never returns: end the whole job
        return 1
    if comm.rank == 0:
        with open(a.out, "w") as fh:
            json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
