"""One fit of the command line: read → build → forecast memory → estimate → write.

The stages are the public ones of :mod:`mme.fitting` (``build_design``, ``build_mme``,
``estimate``, ``assemble``, with the same BLAS threading as ``mme.fit``), so the
numbers written equal ``mme.fit``'s. Between ``build_mme`` and the estimation
CHOLMOD's symbolic analysis is run once (and kept for the fit) and the memory
forecast (:mod:`mme.cli.memory`) may refuse the model. With ``checkpoint`` the θ, the
iteration log and the AI matrix of every REML round are saved, and an
existing matching checkpoint is resumed (:mod:`mme.cli.checkpoint`). A ``[genomic]``
file gives its term a single-step H⁻¹ or GBLUP's G⁻¹ (:mod:`mme.cli.genomic`), passed
as the ``(levels, K⁻¹)`` pair a Python user would pass. ``threads`` caps every thread
pool of the run (``mme._threads.thread_limit``).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pandas as pd

import mme
from .. import fitting
from .._threads import dense_blas_threads, thread_limit
from ..breeding.pedigree import DEFAULT_MISSING
from ..engine.estimate import LEAST_SQUARES
from ..model.formula import parse_formula
from ..model.ids import normalize_ids
from . import checkpoint as ckpt
from . import memory, outputs
from .errors import EXIT_NOT_CONVERGED, EXIT_OK, InputError
from .formulas import check_formula
from .genomic import genomic_relmat
from .io import read_pedigree_frame, read_tables
from .methods import methods_text, pedigree_facts
from .progress import LogFile, Progress


def _warning_line(w) -> str:
    return f"{w.category.__name__}: {' '.join(str(w.message).split())}"


def load_pedigree(path, sep="auto", missing=None, columns=("id", "sire", "dam"),
                  progress: Progress | None = None):
    """(Pedigree, its warnings as lines) from a file (see ``io.read_pedigree_frame``)."""
    frame = read_pedigree_frame(path, sep=sep, columns=columns)
    tokens = tuple(missing) if missing is not None else DEFAULT_MISSING
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ped = mme.Pedigree.from_frame(frame, *columns, missing=tokens)
        except mme.PedigreeError as exc:
            from .pedigree import SUSPICIOUS
            odd = [i for i in getattr(exc, "ids", []) if SUSPICIOUS.match(str(i))]
            if not odd:
                raise
            declared = [str(t) for t in tokens if t]
            raise mme.PedigreeError(
                f"{path}: {exc} ({', '.join(map(repr, odd))} looks like an undeclared "
                f"unknown-parent code: --missing {','.join(declared + odd)})") from exc
    lines = [_warning_line(w) for w in caught]
    if progress is not None:
        for line in lines:
            progress.note(f"pedigree: {line}")
    return ped, lines


def run_fit(cfg, progress: Progress) -> int:
    """Fit the model of ``cfg`` (a ``params.RunConfig``) and write its results.

    Returns the exit status (0, or 2 when REML did not converge); raises InputError
    or an mme.MMEError on bad input.
    """
    from . import distributed
    if distributed.wanted(cfg):
        return distributed.run(cfg, progress)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with LogFile(out / outputs.LOG), warnings.catch_warnings(record=True) as caught, \
            thread_limit(getattr(cfg, "threads", None)):
        warnings.simplefilter("always")
        status = _run(cfg, progress, out, caught)
        for w in caught:
            progress.note(f"warning: {_warning_line(w)}")
    return status


def _run(cfg, progress: Progress, out: Path, caught: list) -> int:
    t0 = time.perf_counter()
    progress.note(f"mme {mme.__version__}: {cfg.source}; results to {out}")
    progress.note(threads_line(getattr(cfg, "threads", None)))
    mf = parse_formula(cfg.formula)
    groups = [f for t in mf.random for f in t.factors]
    factors = list(dict.fromkeys(list(cfg.factors) + groups + list(cfg.relmat)
                                 + [c for v in (cfg.covary or {}).values() for c in v]))
    progress.note(f"reading data: {', '.join(map(str, cfg.data))}")
    df = read_tables(cfg.data, sep=cfg.sep, names=cfg.names,
                     factors=[f for f in factors if f not in ("trait",)], missing=cfg.missing)
    progress.note(f"data: {len(df):,} rows, {df.shape[1]} columns")
    check_formula(cfg.formula, df.columns)
    if cfg.weights and cfg.weights not in df.columns:
        raise InputError(f"weights column {cfg.weights!r} not found; columns are "
                         f"{', '.join(map(str, df.columns))}")
    relmat, ped_info, ped, gen_info = {}, None, None, None
    known = set(groups) | {c for v in (cfg.covary or {}).values() for c in v}
    bad = [r for r in cfg.relmat if r not in known]
    if bad:
        raise InputError(f"relmat {', '.join(map(repr, bad))} is not a random term of the "
                         f"formula (random groups: {', '.join(groups) or 'none'})")
    if cfg.pedigree:
        progress.note(f"reading pedigree: {cfg.pedigree}")
        ped, _ = load_pedigree(cfg.pedigree, cfg.pedigree_sep, cfg.pedigree_missing,
                               cfg.pedigree_columns, progress)
        ped_info = pedigree_facts(ped)
        progress.note(f"pedigree: {ped.n:,} animals, {ped.n_founders:,} founders, "
                      f"{ped_info['generations']} generations, {ped_info['inbred']:,} inbred "
                      f"(max F {ped_info['max_F']:.4f})")
        relmat = {r: ped for r in cfg.relmat}
    g = getattr(cfg, "genomic", None)
    if g is not None:
        progress.note(f"reading genotypes: {g.file}")
        relmat[g.term], gen_info = genomic_relmat(g, ped, cfg.pedigree, progress)
        if g.model == "gblup":
            _check_genotyped(df, g.term, mf, gen_info)
        del gen_info["genotyped"]
    relmat = relmat or None
    with dense_blas_threads(1):
        t = time.perf_counter()
        design = fitting.build_design(cfg.formula, df, relmat, residual=cfg.residual,
                                      weights=cfg.weights, covary=cfg.covary,
                                      structure=cfg.structure)
        levels = ", ".join(f"{b.group} {len(b.levels):,}" for b in design.blocks)
        progress.note(f"design: {design.n:,} records, {design.p} fixed effects"
                      + (f", random levels: {levels}" if levels else "")
                      + f" ({time.perf_counter() - t:.2f} s)")
        if getattr(cfg, "solver", "direct") == "pcg":
            return _pcg(cfg, design, progress, out)
        system = fitting.build_mme(design, ordering=cfg.ordering)
        _forecast(cfg, system, progress)
        fp = ckpt.fingerprint(cfg, system) if cfg.checkpoint else None
        start, previous = None, []
        if cfg.checkpoint and cfg.variances is None:
            state = ckpt.load(cfg.checkpoint)
            if state is not None:
                ckpt.check(state, fp, cfg.checkpoint)
                start, previous = state["theta"], list(state.get("rounds", []))
                n_prev = max([r["iteration"] for r in previous], default=0)
                progress.note(f"resuming from checkpoint {cfg.checkpoint} after {n_prev} "
                              f"REML rounds (logLik "
                              f"{previous[-1]['loglik'] if previous else float('nan'):.6f})")
        rounds = list(previous)
        offset = max([r["iteration"] for r in previous], default=0)

        def callback(rec):
            progress.reml_round(rec, offset)
            if cfg.checkpoint:
                d = ckpt.record_dict(rec)
                d["iteration"] += offset
                rounds.append(d)
                ckpt.save(cfg.checkpoint, fp, rec.theta, rounds, ai=rec.ai,
                          ai_theta=rec.theta if rec.ai is not None else None)

        if cfg.variances is not None:
            route = f"{cfg.method}, BLUP at known variances"
        elif not system.structures and system.residual.is_scalar:
            route = "least squares, as R's lm"
        else:
            route = f"{cfg.method}, AI-REML"
        progress.note(f"estimating ({route})")
        progress.reml_start(cfg.max_iter, previous[-1]["loglik"] if previous else None)
        try:
            est = fitting.estimate(system, method=cfg.method, variances=cfg.variances,
                                   max_iter=cfg.max_iter, start=start, callback=callback)
        finally:
            progress.reml_end()
        fit = fitting.assemble(est)
        if cfg.checkpoint and est.route not in (LEAST_SQUARES,) and fit.estimated:
            full = outputs.iteration_rows(fit, previous)
            ckpt.save(cfg.checkpoint, fp, est.theta,
                      [_row_record(r) for r in full.to_dict("records")],
                      "converged" if fit.converged else "not converged",
                      ai=fit.internals.ai, ai_theta=est.theta)
        progress.note(f"logLik ({fit.loglik_kind}) {fit.loglik:.6f}, "
                      + (fit.estimation if fit.estimation in ("least squares",
                                                              "BLUP at known variances")
                         else ("converged" if fit.converged else "NOT converged")
                         + f" after {fit.n_iter + offset} rounds"
                         + (f" ({offset} of them before the checkpoint)" if offset else "")))
        info = {"relmat": cfg.relmat, "covary": cfg.covary, "structure": cfg.structure,
                "residual": cfg.residual, "weights": cfg.weights, "multi": mf.multi_response,
                "rows_read": len(df), "pedigree": ped_info, "genomic": gen_info,
                "ordering": system.ordering,
                "route": est.route, "previous_rounds": offset}
        _ = fit.df_beta  # Satterthwaite df while the factor is in hand
        paths = outputs.write_fit(out, fit, methods_text(fit, info), previous)
    progress.note(f"wrote {', '.join(p.name for p in paths)} and {outputs.LOG} to {out} "
                  f"({time.perf_counter() - t0:.1f} s)")
    if not progress.quiet:
        print(fit.summary(), flush=True)
    if fit.estimated and not fit.converged:
        progress.note("REML did not converge: results written; rerun with a larger max_iter"
                      + (" (the checkpoint resumes from the last round)" if cfg.checkpoint
                         else ", with --checkpoint to continue later"))
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def threads_line(n) -> str:
    """The run's threads, for the log: the cap (``threads``) and each pool's threads."""
    from .._threads import _pools
    bundled, system = _pools()
    parts = [f"system BLAS (CHOLMOD's) {c.num_threads}" for c in system[:1]]
    parts += [f"NumPy/SciPy's BLAS {c.num_threads}"
              + (" (1 during the fit, beside CHOLMOD's)" if system else "")
              for c in bundled[:1]]
    head = (f"threads: at most {n} in every pool" if n is not None else
            "threads: as the libraries started (threads / --threads caps them)")
    return head + (f": {', '.join(parts)}" if parts else "")


def _check_genotyped(df, term: str, mf, info: dict) -> None:
    """GBLUP: every animal with a record must be genotyped (G has no row for others)."""
    col = next(t.factors[0] for t in mf.random if t.group == term)
    ids = normalize_ids(df[col].dropna())
    absent = pd.unique(ids[~pd.Index(ids).isin(info["genotyped"])])
    if len(absent):
        raise InputError(f"GBLUP: {len(absent):,} animal(s) with records in column {col!r} "
                         f"are not genotyped in {info['file']}, e.g. "
                         f"{', '.join(map(repr, list(absent[:5])))}: use model = "
                         "\"single-step\" with their pedigree, or leave their records out")


def _row_record(row: dict) -> dict:
    theta = [v for k, v in row.items() if k.startswith("theta")]
    rec = {k: v for k, v in row.items() if not k.startswith("theta")}
    rec["iteration"] = int(rec["iteration"])
    for k in ("loglik", "step", "decrement", "seconds"):
        v = float(rec[k])
        rec[k] = v if v == v else None
    rec["theta"] = [float(t) for t in theta]
    return rec


def _forecast(cfg, system, progress: Progress) -> None:
    """CHOLMOD's symbolic analysis (kept for the fit) and the memory forecast."""
    limit = cfg.memory_limit
    if limit is not None and str(limit).lower() in ("off", "none", "no"):
        return
    from ..engine.cholesky import Cholesky
    t = time.perf_counter()
    factor = Cholesky(system.C, system.ordering)
    system.factor = factor          # the analysis the first factorization would do
    system.n_analyze += 1
    fc = memory.forecast(system, factor, limit)
    progress.note(f"symbolic analysis ({system.ordering}): dim {fc.dim:,}, nnz(C) "
                  f"{fc.nnz_C:,}, nnz(L) {fc.nnz_L:,}; memory {fc.describe()} "
                  f"({time.perf_counter() - t:.2f} s)")
    if not fc.fits:
        raise InputError(memory.refusal(fc))


def _pcg(cfg, design, progress: Progress, out: Path) -> int:
    from ..engine.pcg import solve_pcg
    if cfg.variances is None:
        raise InputError("--solver pcg solves at known variances: give --variances")
    progress.note("solving the MME at the given variances by PCG (no factorization)")
    res = solve_pcg(design, cfg.variances, tol=1e-10, max_iter=max(cfg.max_iter, 5000))
    paths = outputs.write_pcg(out, res, cfg.formula)
    progress.note(f"PCG {'converged' if res.converged else 'NOT converged'} in {res.n_iter} "
                  f"iterations; wrote {', '.join(p.name for p in paths)} to {out}")
    return EXIT_OK if res.converged else EXIT_NOT_CONVERGED
