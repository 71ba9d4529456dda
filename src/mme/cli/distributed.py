"""The command line under MPI: ``mpiexec -n K python -m mme fit|run ...``.

With K > 1 ranks (or ``--method MC-REML`` on any number) the run takes the
distributed path of :mod:`mme.distributed`: every rank reads its own rows of the
data files (the rows of all files, stacked, split into K contiguous slices) and the
pedigree, builds its rows of W, and

* with known variances (``--variances`` / ``[model.variances]``) solves the MME by
  PCG with one Allreduce per iteration (BLUE/BLUP; no PEV), also for cbind()
  multi-trait formulas, ``--weights`` and ``--residual by(col)|diag(trait)|us(trait)``
  (wide data: the traits of a row stay on the rank that read it);
* with ``--method MC-REML`` estimates the variances by Monte-Carlo AI-REML
  (``--samples``, ``--seed``) and writes the BLUE/BLUP at the estimates.

Rank 0 alone writes the results (the files of a single-machine PCG run, plus
``variance_components.csv`` and ``iteration_log.csv`` for MC-REML) and ``mme.log``;
the log says how many ranks ran and how the rows were split. With ``--checkpoint
FILE`` rank 0 writes the MC-REML state after every round, or the PCG iterate every
``--checkpoint-every`` seconds, and a rerun resumes from it
(:mod:`mme.cli.mpi_checkpoint`). An error on any rank
is one line ``mme: error: ...`` from rank 0 naming the rank(s) and reason; a rank
that stops answering ends the job after ``MME_MPI_TIMEOUT`` seconds (default 600).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pandas as pd

import mme
from .. import distributed as dist
from ..distributed.partition import RowPartition, file_rows, pieces
from ..model.formula import parse_formula
from . import mpi_checkpoint as mck
from . import outputs
from .errors import EXIT_NOT_CONVERGED, EXIT_OK, InputError
from .io import read_table, resolve_sep
from .progress import LogFile, Progress

#: methods of the distributed path
MC_REML = "MC-REML"
#: relative residual of the distributed PCG at known variances: solutions within ~1e-9
#: relative of the direct solve (1e-10 left 2e-8 on the bundled animal example)
PCG_TOL = 1e-12


def wanted(cfg) -> bool:
    """Does this run take the distributed path? (K > 1 ranks, or MC-REML asked for)."""
    return dist.comm.launched()[1] > 1 or cfg.method == MC_REML


def _check(cfg, mf) -> None:
    unsupported = [name for name in ("covary", "structure") if getattr(cfg, name)]
    if unsupported:
        raise InputError(f"the distributed solver (MPI, MC-REML) does not take "
                         f"{', '.join('--' + n for n in unsupported)}; run on one process "
                         "without --method MC-REML")
    if cfg.residual and "ar1" in cfg.residual:
        raise InputError(f"--residual {cfg.residual}: an ar1(col):ar1(row) residual "
                         "correlates records across a field and is not supported by the "
                         "distributed solver (MPI, MC-REML); it takes --weights and "
                         "--residual by(col), diag(trait), us(trait); run on one process")
    if cfg.method == MC_REML:
        what = (["a cbind() multi-trait formula"] if mf.multi_response else []) + \
            [f"--{n} {getattr(cfg, n)}" for n in ("residual", "weights") if getattr(cfg, n)]
        if what:
            raise InputError(f"--method {MC_REML} covers one response with R = s2e I, not "
                             f"{' and '.join(what)}: give --variances for BLUP under MPI, "
                             "or estimate the variances on one process")
    if cfg.variances is None and cfg.method != MC_REML:
        raise InputError(f"under MPI (more than one rank) variances are estimated by "
                         f"--method {MC_REML} (Monte-Carlo REML); exact {cfg.method} "
                         "needs the factorization on one machine: run it without mpiexec, "
                         "or give --variances for BLUP")
    if cfg.variances is not None and cfg.method == MC_REML:
        raise InputError(f"--method {MC_REML} estimates the variances: drop --variances "
                         "(or drop the method for BLUP at known variances)")


def _read_rows(cfg, comm, factors: list) -> tuple[pd.DataFrame, RowPartition]:
    """This rank's rows of the data files (stacked in order) and the partition."""
    paths = [Path(p) for p in cfg.data]
    for p in paths:
        if not p.exists():
            raise InputError(f"data file {str(p)!r} not found")
    seps = [resolve_sep(p, cfg.sep) for p in paths]
    counts = [file_rows(p, s == "parquet", header=not cfg.names) for p, s in zip(paths, seps)]
    part = RowPartition.even(sum(counts), comm.size)
    frames = []
    for i, start, n in pieces(part, comm.rank, counts):
        df = read_table(paths[i], sep=cfg.sep, names=cfg.names, factors=factors,
                        missing=cfg.missing, rows=(start, n))
        if len(df) != n:
            raise InputError(f"{paths[i]}: rank {comm.rank} expected rows {start:,}-"
                             f"{start + n - 1:,} but read {len(df):,} (blank lines or "
                             "quoted multi-line fields are not supported under MPI)")
        frames.append(df)
    if not frames:      # no rows here: the columns from the first file's header
        frames.append(read_table(paths[0], sep=cfg.sep, names=cfg.names, factors=factors,
                                 missing=cfg.missing, rows=(0, 0)))
    cols = list(frames[0].columns)
    for f in frames[1:]:
        if list(f.columns) != cols:
            raise InputError(f"the data files' columns differ ({cols} vs {list(f.columns)})")
    return (frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)), part


def run(cfg, progress: Progress) -> int:
    """The distributed run of ``cfg`` (collective: every rank calls it)."""
    comm = dist.world()
    if not comm.is_root:
        progress = Progress(quiet=True, bar=False)
    out = Path(cfg.out)
    if comm.is_root:
        out.mkdir(parents=True, exist_ok=True)
    with LogFile(out / outputs.LOG if comm.is_root else None), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = _run(cfg, progress, comm, out)
        if comm.is_root:
            for w in caught:
                progress.note(f"warning: {w.category.__name__}: {' '.join(str(w.message).split())}")
    return status


def _run(cfg, progress: Progress, comm, out: Path) -> int:
    from .runner import load_pedigree
    t0 = time.perf_counter()
    progress.note(f"mme {mme.__version__}: {cfg.source}; results to {out}")
    progress.note(f"MPI: {comm.size} rank{'s' if comm.size > 1 else ''}"
                  + ("" if comm.size > 1 else " (serial communicator)")
                  + f"; collective timeout {comm.timeout:g} s")
    mf = parse_formula(cfg.formula)
    comm.check_same("the run's parameters", formula=cfg.formula, data=list(map(str, cfg.data)),
                    variances=cfg.variances, method=cfg.method, relmat=list(cfg.relmat),
                    residual=cfg.residual, weights=cfg.weights,
                    samples=cfg.mc_samples, seed=cfg.mc_seed, max_iter=cfg.max_iter,
                    checkpoint=str(cfg.checkpoint), checkpoint_every=cfg.checkpoint_every)
    with comm.step("checking the options"):
        _check(cfg, mf)
    groups = [f for t in mf.random for f in t.factors]
    factors = [f for f in dict.fromkeys(list(cfg.factors) + groups + list(cfg.relmat))
               if f != "trait"]    # the factor a cbind() formula adds to the long form
    t = time.perf_counter()
    with comm.step("reading this rank's rows of the data"):
        df, part = _read_rows(cfg, comm, factors)
    progress.note(f"data: {part.n_rows:,} rows read in slices, {part.describe()} "
                  f"({time.perf_counter() - t:.2f} s)")
    relmat = None
    with comm.step("reading the pedigree"):
        if cfg.pedigree:
            ped, _ = load_pedigree(cfg.pedigree, cfg.pedigree_sep, cfg.pedigree_missing,
                                   cfg.pedigree_columns, progress if comm.is_root else None)
            relmat = {r: ped for r in cfg.relmat}
    if relmat:
        progress.note(f"pedigree: {ped.n:,} animals (read by every rank, each builds only its "
                      "share of the rows of A^-1 and G^-1)")
    t = time.perf_counter()
    design = dist.build_local_design(cfg.formula, df, comm, relmat, kinv="all",
                                     residual=cfg.residual, weights=cfg.weights)
    levels = ", ".join(f"{b.group} {len(b.levels):,}" for b in design.blocks)
    progress.note(f"design: {design.n_total:,} records after dropping missing values, "
                  f"{design.partition.describe()}; {design.p} fixed effects"
                  + (f", {len(design.responses)} traits" if design.multi_response else "")
                  + (f", residual {design.residual.describe()}"
                     if not design.residual.is_scalar else "")
                  + (f", random levels: {levels}" if levels else "")
                  + f" ({time.perf_counter() - t:.2f} s)")
    if cfg.method == MC_REML:
        return _mc_reml(cfg, design, comm, progress, out, t0)
    writer, found = _checkpoint(cfg, design, comm, progress, mck.PCG,
                                variances=cfg.variances, tol=PCG_TOL)
    x0, offset = None, 0
    if found is not None:
        x0, offset = found[1]["x"], int(found[0]["iteration"])
        progress.note(f"resuming from checkpoint {cfg.checkpoint} at PCG iteration {offset} "
                      f"(written by {_ranks(found[0])}): PCG restarts from "
                      "its solution with a fresh residual")
    snapshots = mck.PCGSnapshots(writer, cfg.checkpoint_every, offset)
    progress.note("solving the MME at the given variances by distributed PCG "
                  "(one Allreduce per iteration)")
    res = dist.solve_distributed(design, cfg.variances, comm, tol=PCG_TOL,
                                 max_iter=max(cfg.max_iter, 5000), x0=x0,
                                 snapshot=snapshots if writer is not None else None)
    if offset:
        res.n_iter += offset
    with comm.step("writing the checkpoint"):
        snapshots.write(res.n_iter - offset, res.solution,
                        "converged" if res.converged else "not converged")
    progress.note(f"PCG {'converged' if res.converged else 'NOT converged'} in "
                  f"{res.n_iter} iterations"
                  + (f" ({offset} of them before the checkpoint)" if offset else "")
                  + f" (relative residual {res.rel_residual:.3g}), "
                  f"{1e3 * res.seconds_per_iteration:.2f} ms per iteration on {comm.size} "
                  f"rank{'s' if comm.size > 1 else ''}")
    if comm.is_root:
        paths = outputs.write_pcg(out, res, cfg.formula)
        _append_ranks(paths[-1], design, comm)
        progress.note(f"wrote {', '.join(p.name for p in paths)} and {outputs.LOG} to {out} "
                      f"({time.perf_counter() - t0:.1f} s)")
    return EXIT_OK if res.converged else EXIT_NOT_CONVERGED


def _checkpoint(cfg, design, comm, progress, kind: str, **keys):
    """The checkpoint writer (rank 0; None elsewhere or without ``--checkpoint``) and the
    checkpoint found (state, arrays), the same on every rank, or None."""
    if not cfg.checkpoint:
        return None, None
    fp = None
    with comm.step("fingerprinting the model and data for the checkpoint"):
        if comm.is_root:
            fp = mck.fingerprint(cfg, design, kind, **keys)
    found = mck.share(comm, cfg.checkpoint, fp)
    writer = mck.Writer(cfg.checkpoint, fp, kind, comm.size) if comm.is_root else None
    if writer is not None and writer.stale:
        progress.note(f"checkpoint: removed {len(writer.stale)} temporary file(s) of a "
                      "writer killed mid-write")
    if found is None:
        progress.note(f"checkpoint: {cfg.checkpoint} (none yet; written by rank 0)")
    return writer, found


def _ranks(state: dict) -> str:
    n = state.get("ranks", "?")
    return f"{n} rank{'' if n == 1 else 's'}"


def _append_ranks(summary: Path, design, comm) -> None:
    with open(summary, "a", encoding="utf-8") as fh:
        fh.write(f"MPI: {comm.size} rank(s); {design.partition.describe()}\n")


def _mc_reml(cfg, design, comm, progress, out, t0) -> int:
    progress.note(f"Monte-Carlo AI-REML: {cfg.mc_samples} samples (seed {cfg.mc_seed}) "
                  "solved with the data in one block PCG")

    def callback(rec):
        theta = ", ".join(f"{v:.6g}" for v in rec["theta"])
        progress.note(f"MC-REML round {rec['iteration']}: theta ({theta}), MC SE "
                      f"({', '.join(f'{v:.3g}' for v in rec['mc_se'])}), PCG "
                      f"{rec['pcg_iterations']}+{rec['pcg_iterations_ai']} iterations, "
                      f"{rec['seconds']:.2f} s")
    writer, found = _checkpoint(cfg, design, comm, progress, mck.MCREML,
                                samples=cfg.mc_samples, seed=cfg.mc_seed)
    resume = None
    if found is not None:
        resume = mck.mcreml_state(*found)
        progress.note(f"resuming from checkpoint {cfg.checkpoint} after MC-REML round "
                      f"{resume.n_iter} ({resume.n_samples} samples, written by "
                      f"{_ranks(found[0])}"
                      + ("; it had converged: writing its results" if resume.converged
                         else "") + ")")

    def on_round(state):
        with comm.step("writing the checkpoint"):
            if writer is not None:
                mck.save_mcreml(writer, state)
    res = dist.mc_reml_design(design, comm, n_samples=cfg.mc_samples, seed=cfg.mc_seed,
                              max_iter=cfg.max_iter, callback=callback,
                              on_round=on_round if cfg.checkpoint else None, resume=resume)
    progress.note(f"MC-REML {'converged' if res.converged else 'NOT converged'} after "
                  f"{res.n_iter} rounds ({res.seconds:.1f} s, {res.pcg_iterations} PCG "
                  "iterations)")
    if comm.is_root:
        paths = outputs.write_mcreml(out, res, cfg.formula)
        _append_ranks(paths[-1], design, comm)
        progress.note(f"wrote {', '.join(p.name for p in paths)} and {outputs.LOG} to {out} "
                      f"({time.perf_counter() - t0:.1f} s)")
        if not progress.quiet:
            print(res.table.to_string(index=False), flush=True)
    return EXIT_OK if res.converged else EXIT_NOT_CONVERGED
