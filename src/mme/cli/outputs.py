"""The result files of a fit, in the output folder.

    fixed_effects.csv        term, estimate, std_error, df, t_value, p_value
    random_effects.csv       group, term, level, blup, pev, cond_var, reliability, accuracy
                             (for a pedigree term the EBVs, with their PEV, reliability
                             and accuracy, one row per animal of the pedigree)
    variance_components.csv  group, term1, term2, estimate, std_error
    iteration_log.csv        iteration, kind, loglik, step, decrement, seconds, theta0, ...
    summary.txt              Fit.summary()
    methods.md               the Materials-and-Methods paragraph (mme.cli.methods)
    mme.log                  the run's log (written by mme.cli.progress)

Numbers are written with full precision (they read back to the same floats), so the
files equal the Python API's tables. A PCG solve at known variances writes only
fixed_effects.csv (estimate) and random_effects.csv (blup) and summary.txt; a
Monte-Carlo REML run (``--method MC-REML``) writes those, variance_components.csv
(group, estimate, std_error, mc_se) and iteration_log.csv (one row per round: θ, its
Monte-Carlo SE, samples, PCG iterations, seconds).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

FILES = ("fixed_effects.csv", "random_effects.csv", "variance_components.csv",
         "iteration_log.csv", "summary.txt", "methods.md")
LOG = "mme.log"


def iteration_rows(fit, previous: list | None = None) -> pd.DataFrame:
    """The iteration log: ``previous`` rounds (a resumed run's checkpoint) then this fit's,
    numbered on (its start row, at the checkpoint's θ, dropped when resuming)."""
    log = fit.iteration_log
    if not previous:
        return log
    prev = pd.DataFrame([{k: v for k, v in r.items() if k != "theta"}
                         | {f"theta{i}": t for i, t in enumerate(r["theta"])}
                         for r in previous])
    last = int(prev["iteration"].max())
    new = log[log["iteration"] > 0].copy()
    new["iteration"] += last
    return pd.concat([prev, new], ignore_index=True)[log.columns]


def write_fit(out, fit, methods: str, previous: list | None = None) -> list:
    """Write the tables, summary and methods of ``fit`` to ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def put(name, writer):
        path = out / name
        writer(path)
        paths.append(path)

    put("fixed_effects.csv", lambda p: fit.fixed_effects.to_csv(p, index_label="term"))
    put("random_effects.csv", lambda p: fit.random_effects.to_csv(p, index=False))
    put("variance_components.csv", lambda p: fit.variance_components.to_csv(p, index=False))
    put("iteration_log.csv", lambda p: iteration_rows(fit, previous).to_csv(p, index=False))
    put("summary.txt", lambda p: p.write_text(fit.summary() + "\n", encoding="utf-8"))
    put("methods.md", lambda p: p.write_text(methods, encoding="utf-8"))
    return paths


def write_pcg(out, result, formula: str) -> list:
    """Write a PCG solve at known variances (``mme.engine.pcg.PCGResult``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "fixed_effects.csv", out / "random_effects.csv", out / "summary.txt"]
    result.fixed_effects.to_csv(paths[0], index_label="term")
    result.random_effects.to_csv(paths[1], index=False)
    state = "converged" if result.converged else "NOT converged"
    paths[2].write_text(
        f"BLUE/BLUP at known variances by preconditioned conjugate gradients (mme)\n"
        f"Formula: {formula}\nVariances: {result.variances}\n"
        f"PCG {state} in {result.n_iter} iterations, relative residual "
        f"{result.rel_residual:.3g} ({result.preconditioner} preconditioner)\n"
        "No PEV or reliabilities: they need the inverse of the coefficient matrix.\n",
        encoding="utf-8")
    return paths


def write_mcreml(out, result, formula: str) -> list:
    """Write a Monte-Carlo REML run (``mme.distributed.MCREMLResult``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["fixed_effects.csv", "random_effects.csv", "variance_components.csv",
             "iteration_log.csv", "summary.txt"]
    paths = [out / n for n in names]
    result.fixed_effects.to_csv(paths[0], index_label="term")
    result.random_effects.to_csv(paths[1], index=False)
    result.table.to_csv(paths[2], index=False)
    groups = list(result.variances)
    rows = []
    for rec in result.history:
        row = {"iteration": rec["iteration"]}
        row |= {f"theta_{g}": v for g, v in zip(groups, rec["theta"])}
        row |= {f"mc_se_{g}": v for g, v in zip(groups, rec["mc_se"])}
        row |= {k: rec[k] for k in ("n_samples", "pcg_iterations", "pcg_iterations_ai",
                                    "seconds")}
        rows.append(row)
    pd.DataFrame(rows).to_csv(paths[3], index=False)
    state = "converged" if result.converged else "NOT converged"
    paths[4].write_text(
        "Variance components by Monte-Carlo AI-REML (mme.distributed; Matilainen et al. "
        "2013)\n"
        f"Formula: {formula}\n"
        f"{state} after {result.n_iter} rounds, {result.n_samples} Monte-Carlo samples, "
        f"{result.pcg_iterations} PCG iterations\n\n"
        + result.table.to_string(index=False) + "\n\n"
        "std_error: sampling SE from the average information; mc_se: Monte-Carlo SE of "
        "the estimate (more samples make it smaller).\n"
        "Fixed and random effects: BLUE/BLUP at the estimates (no PEV).\n",
        encoding="utf-8")
    return paths
