#!/usr/bin/env python
"""Multi-trait and maternal animal models: AI-REML fits timed, checked against the simulated truth.

    python benchmarks/bench_multitrait.py [--animals 100000] [--calves 50000] [--seed 1]
        [--skip-maternal] [--wait-idle 60] [--out-prefix benchmarks/results_multitrait]

Two simulated problems, each fitted by REML with ``mme.fit`` and compared with the
simplest model of the same data (the base line):

1. **Two-trait animal model** on a pedigree of ``--animals`` animals
   (``simulate_animal.simulate_animal``'s pedigree: 10 overlapping cohorts, random
   sires, √(cohort size)/2 sires per year, 7% unknown parents; its own phenotype is not
   used). Breeding values (a₁, a₂) ~ N(0, G₀ ⊗ A) with G₀ = [[1, 0.5], [0.5, 2]]
   (r_g = 0.354), residuals ~ N(0, R₀) with R₀ = [[2, 0.6], [0.6, 3]], a sex effect
   per trait; every animal has a record of trait 1, trait 2 is missing (NaN) on a
   random 30%. Model::

       cbind(y1, y2) ~ 0 + trait + trait:sex + (0 + trait | animal)

   with ``relmat={"animal": Pedigree}`` and the default ``us(trait)`` residual. Base
   line: ``y1 ~ sex + (1|animal)`` and ``y2 ~ sex + (1|animal)`` (records with y2).

2. **Maternal model** on ``--calves`` calves (the non-founders of a pedigree of
   ``calves / 0.9`` animals; 10% unknown parents, so ~10% of the calves have an unknown
   dam, coded 0): direct and maternal genetic effects (a_d, a_m) ~ N(0, G₀ ⊗ A) with
   G₀ = [[20, −4], [−4, 9]], a maternal permanent environment (variance 3) per dam,
   residual 15, 50 herds as fixed effects. A calf with an unknown dam gets no maternal
   genetic or permanent-environment effect in the simulation, as the model assumes (a
   model-consistent truth); its ``dam_pe`` is the level "none". Model::

       bw ~ herd + (1|animal) + (1|dam) + (1|dam_pe)

   with ``relmat={"animal": ped, "dam": ped}``, ``covary={"genetic": ["animal", "dam"]}``.
   Base line: ``bw ~ herd + (1|animal)``.

Every fit runs in a fresh subprocess (peak RSS, ``ru_maxrss``, is that of one fit)
and records: ``mme.fit`` seconds (pedigree construction outside), iterations, whether
it converged, every warning, the iteration log (also kept when the fit raises: the
``mme`` logger's per-iteration lines), nnz(L), peak RSS; then, at θ̂ and in the same
process as ``bench_animal.py`` does: one numeric factorization
(``Cholesky.factorize``, best of 2), one selected inverse at the G⁻¹ slots and
one REML round (``Likelihood.evaluate(θ̂)`` after ``set_values``, so it refactorizes;
best of 2). Estimates ± SE (from AI⁻¹) are compared with the simulated parameters and
with the realised ones: G₀ as the sample covariance of the standardised Mendelian
sampling terms (a_i − (a_s + a_d)/2)/√d_i of all animals (founders: a_i), i.e. the
i.i.d. draws behind the breeding values; R₀ (σ²ₑ, σ²_pe) as the sample (co)variance of
the residuals (pe effects) in the data (covariance over records with both traits).

No unit test times anything: this script is the only place these timings are made.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pickle
import sys
import time
import traceback
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
sys.path.insert(0, HERE)

from _jobs import maxrss_gib, run_worker, write_results  # noqa: E402  (the drivers' conventions)

RATIO_GOAL = 3.0

MT_FORMULA = "cbind(y1, y2) ~ 0 + trait + trait:sex + (0 + trait | animal)"
MT_BASE = {"y1": "y1 ~ sex + (1|animal)", "y2": "y2 ~ sex + (1|animal)"}
MT_G0 = np.array([[1.0, 0.5], [0.5, 2.0]])
MT_R0 = np.array([[2.0, 0.6], [0.6, 3.0]])
MT_MU = np.array([10.0, 20.0])
MT_SEX = np.array([0.5, -1.0])          # male − female, per trait
MT_MISSING = 0.30

MAT_FORMULA = "bw ~ herd + (1|animal) + (1|dam) + (1|dam_pe)"
MAT_BASE = "bw ~ herd + (1|animal)"
MAT_G0 = np.array([[20.0, -4.0], [-4.0, 9.0]])
MAT_PE = 3.0
MAT_E = 15.0
MAT_HERDS = 50
MAT_UNKNOWN = 0.10


def data_path(kind, n, seed):
    return os.path.join(WORK, f"{kind}_n{n}_s{seed}.pkl")


# --------------------------------------------------------------------------- simulation
def _mendelian(ped, cohort, d, G0, rng):
    """Breeding values (n × k) ~ N(0, G₀ ⊗ A) by a_i = (a_s + a_d)/2 + √d_i w_i, w_i ~ N(0, G₀),
    cohort by cohort (parents are in earlier cohorts). Returns (a, w)."""
    n, k = len(ped), G0.shape[0]
    w = rng.standard_normal((n, k)) @ np.linalg.cholesky(G0).T
    a = np.zeros((n, k))
    s = ped["sire"].to_numpy() - 1            # 0-based, −1 unknown
    dm = ped["dam"].to_numpy() - 1
    for c in np.unique(cohort):
        idx = np.flatnonzero(cohort == c)
        pa = 0.5 * (np.where((s[idx] >= 0)[:, None], a[np.maximum(s[idx], 0)], 0.0)
                    + np.where((dm[idx] >= 0)[:, None], a[np.maximum(dm[idx], 0)], 0.0))
        a[idx] = pa + np.sqrt(d[idx])[:, None] * w[idx]
    return a, w


def simulate_multitrait(n, seed):
    from simulate_animal import simulate_animal
    ped, phen, truth = simulate_animal(n, seed=seed, selection=False)
    rng = np.random.default_rng(seed + 1000)
    cohort = phen["cohort"].to_numpy()
    a, w = _mendelian(ped, cohort, truth["d"].to_numpy(), MT_G0, rng)
    e = rng.standard_normal((n, 2)) @ np.linalg.cholesky(MT_R0).T
    male = (phen["sex"] == "M").to_numpy()
    y = MT_MU + male[:, None] * MT_SEX + a + e
    miss2 = rng.random(n) < MT_MISSING
    y[miss2, 1] = np.nan
    df = pd.DataFrame({"animal": phen["id"].to_numpy(), "sex": phen["sex"].to_numpy(),
                       "y1": y[:, 0], "y2": y[:, 1]})
    both = ~miss2
    Re = np.cov(e[both].T)
    Re[0, 0] = np.var(e[:, 0], ddof=1)        # trait 1: all records
    Re[1, 1] = np.var(e[both, 1], ddof=1)
    realised = {"G0": np.cov(w.T), "R0": Re}
    info = {"n_animals": n, "n_records_y1": int(np.isfinite(y[:, 0]).sum()),
            "n_records_y2": int(np.isfinite(y[:, 1]).sum()),
            "unknown_parent_fraction": truth["unknown_fraction"],
            "n_sires": truth["n_sires"], "mean_F": float(truth["F"].mean()),
            "max_F": float(truth["F"].max()),
            "var_bv_all_animals": np.cov(a.T).tolist()}
    return ped, df, {"realised": realised, "info": info}


def simulate_maternal(n_calves, seed):
    from simulate_animal import simulate_animal
    n_ped = int(round(n_calves / 0.9))
    ped, phen, truth = simulate_animal(n_ped, seed=seed, selection=False, unknown=MAT_UNKNOWN,
                                       herd_size=n_ped / MAT_HERDS)
    rng = np.random.default_rng(seed + 2000)
    cohort = phen["cohort"].to_numpy()
    a, w = _mendelian(ped, cohort, truth["d"].to_numpy(), MAT_G0, rng)
    calves = np.flatnonzero(cohort > 0)
    dam = ped["dam"].to_numpy()[calves]            # 1-based ids, 0 unknown
    known = dam > 0
    dams = np.unique(dam[known])
    pe = pd.Series(rng.normal(0.0, np.sqrt(MAT_PE), len(dams)), index=dams)
    herd_codes = pd.factorize(phen["herd"].to_numpy()[calves], sort=True)
    herd_eff = rng.normal(0.0, 5.0, len(herd_codes[1]))
    e = rng.normal(0.0, np.sqrt(MAT_E), len(calves))
    mat = np.zeros(len(calves))
    mat[known] = a[dam[known] - 1, 1] + pe.reindex(dam[known]).to_numpy()
    y = 200.0 + herd_eff[herd_codes[0]] + a[calves, 0] + mat + e
    df = pd.DataFrame({"animal": ped["id"].to_numpy()[calves], "dam": dam,
                       "dam_pe": np.where(known, dam.astype(str), "none"),
                       "herd": phen["herd"].to_numpy()[calves], "bw": y})
    n_calves_per_dam = pd.Series(dam[known]).value_counts()
    realised = {"G0": np.cov(w.T), "dam_pe": float(np.var(pe.to_numpy(), ddof=1)),
                "Residual": float(np.var(e, ddof=1))}
    info = {"n_pedigree": n_ped, "n_calves": int(len(calves)),
            "unknown_dam_fraction": float(np.mean(~known)),
            "n_dams_with_calves": int(len(dams)),
            "calves_per_dam_mean": float(n_calves_per_dam.mean()),
            "calves_per_dam_max": int(n_calves_per_dam.max()),
            "n_herds": int(len(herd_codes[1])), "n_sires": truth["n_sires"],
            "mean_F": float(truth["F"].mean())}
    return ped, df, {"realised": realised, "info": info}


# --------------------------------------------------------------------------- fitting
class _LogCapture(logging.Handler):
    """Keeps the ``mme`` logger's per-iteration lines (available when a fit raises)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{time.perf_counter():.3f} {record.getMessage()}")


def fit_and_measure(formula, data, relmat_ped, relmat_terms, covary=None):
    """``mme.fit`` (timed), then a factorization, a selected inverse and a REML round at θ̂."""
    import mme
    from mme.engine.reml import Likelihood

    out = {"formula": formula, "rss_data_gib": maxrss_gib()}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = mme.Pedigree.from_frame(relmat_ped)
    out["seconds_pedigree"] = time.perf_counter() - t0
    relmat = {t: P for t in relmat_terms}
    logger = logging.getLogger("mme")
    cap = _LogCapture()
    old_level = logger.level
    logger.addHandler(cap)
    logger.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        try:
            fit = mme.fit(formula, data, relmat=relmat, covary=covary)
        except Exception as exc:   # a failed fit is a result, not a crash of the benchmark
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["traceback"] = traceback.format_exc()
            fit = None
        out["seconds_fit"] = time.perf_counter() - t0
    logger.removeHandler(cap)
    logger.setLevel(old_level)
    out["peak_rss_fit_gib"] = maxrss_gib()
    out["log_lines"] = cap.lines
    out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    if fit is None:
        return out, None
    log = fit.iteration_log
    out["iteration_log"] = log.to_dict(orient="list")
    it = log[log["iteration"] > 0]
    out.update(n_iter=int(fit.n_iter), converged=bool(fit.converged),
               singular=bool(fit.singular), loglik=float(fit.loglik),
               kinds=list(log["kind"]),
               seconds_per_iteration=float(it["seconds"].median()) if len(it) else None,
               seconds_in_iterations=float(log["seconds"].sum()),
               variance_components=fit.variance_components.to_dict(orient="records"))
    system = fit.internals.mme
    out["n_factorize_fit"] = int(system.n_factorize)
    out["dim_C"] = int(system.dim)
    out["nnz_C_lower"] = int(system.C.nnz)
    out["ordering"] = str(system.ordering)
    # --- a factorization, a selected inverse and a REML round at θ̂, in this process
    theta = np.asarray(fit.internals.estimate.theta, float)
    model = Likelihood(system, "REML")
    G0s, R0 = model.split(theta)
    system.set_values(G0s, R0)
    factor = system.factor
    fac = []
    for _ in range(2):
        t0 = time.perf_counter()
        factor.factorize(system.C)
        fac.append(time.perf_counter() - t0)
    system.theta = theta.copy()      # the factor is at θ̂ again
    out["nnz_L"] = int(factor.nnz_L)
    out["sum_colcount_sq"] = float(factor.symbolic()["flops"])   # CHOLMOD's Common->fl
    rows = np.concatenate([s.rows for s in system.structures])
    cols = np.concatenate([s.cols for s in system.structures])
    t0 = time.perf_counter()
    system.selected_inverse(rows, cols)
    out["seconds_selinv_gslots"] = time.perf_counter() - t0
    rnd = []
    for _ in range(2):
        system.set_values(G0s, R0)    # θ unknown to the system: evaluate refactorizes
        t0 = time.perf_counter()
        model.evaluate(theta)
        rnd.append(time.perf_counter() - t0)
    out.update(seconds_factorization=min(fac), seconds_factorization_all=fac,
               seconds_round=min(rnd), seconds_round_all=rnd,
               ratio_round_factorization=min(rnd) / min(fac),
               ratio_iteration_factorization=(out["seconds_per_iteration"] / min(fac)
                                              if out["seconds_per_iteration"] else None),
               peak_rss_gib=maxrss_gib())
    # --- last (it moves the factor): the first fit.fixed_effects builds Satterthwaite's df,
    # i.e. Var(θ̂) from the observed information (central differences of the score: 2k
    # REML rounds) and ∂Var(β̂)/∂θ — work done after mme.fit returns, timed on its own
    n0 = system.n_factorize
    t0 = time.perf_counter()
    fe = fit.fixed_effects
    out["seconds_fixed_effects"] = time.perf_counter() - t0
    out["n_factorize_fixed_effects"] = int(system.n_factorize - n0)
    out["fixed_effects"] = {k: [float(v) for v in r] for k, r in
                            fe[["estimate", "std_error"]].iterrows()}
    out["peak_rss_gib"] = maxrss_gib()
    return out, fit


def _compare(name, truth, realised, est, se):
    z = (est - truth) / se if se and np.isfinite(se) and se > 0 else np.nan
    zr = ((est - realised) / se if realised is not None and se and np.isfinite(se) and se > 0
          else np.nan)
    return {"parameter": name, "true": float(truth),
            "realised": None if realised is None else float(realised),
            "estimate": float(est), "se": None if not np.isfinite(se) else float(se),
            "z_true": float(z), "within_2se_true": bool(abs(z) <= 2) if np.isfinite(z) else None,
            "z_realised": float(zr),
            "within_2se_realised": bool(abs(zr) <= 2) if np.isfinite(zr) else None}


def _vc(fit, group, t1, t2=""):
    vc = fit.variance_components
    r = vc[(vc["group"] == group) & (vc["term1"] == t1) & (vc["term2"] == t2)]
    if len(r) != 1:
        raise KeyError((group, t1, t2, vc.to_string()))
    return float(r["estimate"].iloc[0]), float(r["std_error"].iloc[0])


# --------------------------------------------------------------------------- workers
def worker_simulate_mt(n, seed):
    t0 = time.perf_counter()
    ped, df, truth = simulate_multitrait(n, seed)
    os.makedirs(WORK, exist_ok=True)
    with open(data_path("mt", n, seed), "wb") as fh:
        pickle.dump((ped, df, truth), fh, protocol=pickle.HIGHEST_PROTOCOL)
    return {"seconds": time.perf_counter() - t0, **truth["info"],
            "realised": {k: np.asarray(v).tolist() for k, v in truth["realised"].items()}}


def worker_simulate_mat(n, seed):
    t0 = time.perf_counter()
    ped, df, truth = simulate_maternal(n, seed)
    os.makedirs(WORK, exist_ok=True)
    with open(data_path("mat", n, seed), "wb") as fh:
        pickle.dump((ped, df, truth), fh, protocol=pickle.HIGHEST_PROTOCOL)
    return {"seconds": time.perf_counter() - t0, **truth["info"],
            "realised": {k: np.asarray(v).tolist() for k, v in truth["realised"].items()}}


def _load(kind, n, seed):
    with open(data_path(kind, n, seed), "rb") as fh:
        return pickle.load(fh)


def worker_mt_fit(n, seed):
    ped, df, truth = _load("mt", n, seed)
    out, fit = fit_and_measure(MT_FORMULA, df, ped, ["animal"])
    if fit is None:
        return out
    G, R = truth["realised"]["G0"], truth["realised"]["R0"]
    rows = []
    names = {0: "traity1", 1: "traity2"}
    for (i, j) in ((0, 0), (1, 1), (0, 1)):
        t1, t2 = (names[i], "") if i == j else (names[j], names[i])
        try:
            est, se = _vc(fit, "animal", t1, t2)
        except KeyError:
            est, se = _vc(fit, "animal", names[i], names[j])
        rows.append(_compare(f"G0[{i + 1},{j + 1}] (animal)", MT_G0[i, j], G[i, j], est, se))
    rnames = {0: "y1", 1: "y2"}
    for (i, j) in ((0, 0), (1, 1), (0, 1)):
        t1, t2 = (rnames[i], "") if i == j else (rnames[j], rnames[i])
        try:
            est, se = _vc(fit, "Residual", t1, t2)
        except KeyError:
            est, se = _vc(fit, "Residual", rnames[i], rnames[j])
        rows.append(_compare(f"R0[{i + 1},{j + 1}] (residual)", MT_R0[i, j], R[i, j], est, se))
    rg = fit.genetic_correlation("animal").iloc[0]
    rg_true = MT_G0[0, 1] / np.sqrt(MT_G0[0, 0] * MT_G0[1, 1])
    rows.append(_compare("r_g", rg_true, G[0, 1] / np.sqrt(G[0, 0] * G[1, 1]),
                         float(rg["estimate"]), float(rg["std_error"])))
    for k, t in enumerate(("y1", "y2")):
        h = fit.heritability("animal", f"trait{t}")
        rows.append(_compare(f"h²({t})", MT_G0[k, k] / (MT_G0[k, k] + MT_R0[k, k]),
                             G[k, k] / (G[k, k] + R[k, k]),
                             float(h["estimate"]), float(h["std_error"])))
    fe = fit.fixed_effects
    for k, t in enumerate(("y1", "y2")):
        for name in (f"trait{t}:sexM", f"sexM:trait{t}"):
            if name in fe.index:
                rows.append(_compare(f"sex effect {t} ({name})", MT_SEX[k], None,
                                     float(fe.loc[name, "estimate"]),
                                     float(fe.loc[name, "std_error"])))
    out["comparison"] = rows
    return out


def _worker_mt_uni(trait):
    def run(n, seed):
        ped, df, truth = _load("mt", n, seed)
        data = df.dropna(subset=[trait]).reset_index(drop=True)
        out, fit = fit_and_measure(MT_BASE[trait], data, ped, ["animal"])
        if fit is None:
            return out
        k = 0 if trait == "y1" else 1
        G, R = truth["realised"]["G0"], truth["realised"]["R0"]
        rows = []
        est, se = _vc(fit, "animal", "(Intercept)")
        rows.append(_compare(f"σ²_a ({trait})", MT_G0[k, k], G[k, k], est, se))
        est, se = _vc(fit, "Residual", "")
        rows.append(_compare(f"σ²_e ({trait})", MT_R0[k, k], R[k, k], est, se))
        h = fit.heritability("animal")
        rows.append(_compare(f"h²({trait})", MT_G0[k, k] / (MT_G0[k, k] + MT_R0[k, k]),
                             G[k, k] / (G[k, k] + R[k, k]),
                             float(h["estimate"]), float(h["std_error"])))
        out["comparison"] = rows
        return out
    return run


def worker_mat_fit(n, seed):
    ped, df, truth = _load("mat", n, seed)
    out, fit = fit_and_measure(MAT_FORMULA, df, ped, ["animal", "dam"],
                               covary={"genetic": ["animal", "dam"]})
    if fit is None:
        return out
    re = truth["realised"]
    G = re["G0"]
    rows = []
    est, se = _vc(fit, "genetic", "animal")
    rows.append(_compare("σ²_a direct", MAT_G0[0, 0], G[0, 0], est, se))
    est, se = _vc(fit, "genetic", "dam")
    rows.append(_compare("σ²_m maternal", MAT_G0[1, 1], G[1, 1], est, se))
    try:
        est, se = _vc(fit, "genetic", "dam", "animal")
    except KeyError:
        est, se = _vc(fit, "genetic", "animal", "dam")
    rows.append(_compare("σ_am", MAT_G0[0, 1], G[0, 1], est, se))
    est, se = _vc(fit, "dam_pe", "(Intercept)")
    rows.append(_compare("σ²_pe", MAT_PE, re["dam_pe"], est, se))
    est, se = _vc(fit, "Residual", "")
    rows.append(_compare("σ²_e", MAT_E, re["Residual"], est, se))
    rc = fit.genetic_correlation("genetic").iloc[0]
    rows.append(_compare("r_am", MAT_G0[0, 1] / np.sqrt(MAT_G0[0, 0] * MAT_G0[1, 1]),
                         G[0, 1] / np.sqrt(G[0, 0] * G[1, 1]),
                         float(rc["estimate"]), float(rc["std_error"])))
    h = fit.heritability("genetic", "animal")
    tot = MAT_G0[0, 0] + MAT_G0[1, 1] + MAT_PE + MAT_E
    tot_r = G[0, 0] + G[1, 1] + re["dam_pe"] + re["Residual"]
    rows.append(_compare("h²_direct = σ²_a / (σ²_a + σ²_m + σ²_pe + σ²_e)", MAT_G0[0, 0] / tot,
                         G[0, 0] / tot_r, float(h["estimate"]), float(h["std_error"])))
    out["comparison"] = rows
    return out


def worker_mat_base(n, seed):
    ped, df, truth = _load("mat", n, seed)
    out, fit = fit_and_measure(MAT_BASE, df[["animal", "herd", "bw"]], ped, ["animal"])
    if fit is None:
        return out
    rows = []
    est, se = _vc(fit, "animal", "(Intercept)")
    rows.append(_compare("σ²_a direct (maternal terms omitted: biased by design)",
                         MAT_G0[0, 0], truth["realised"]["G0"][0, 0], est, se))
    est, se = _vc(fit, "Residual", "")
    rows.append(_compare("σ²_e (absorbs the maternal variance)", MAT_E,
                         truth["realised"]["Residual"], est, se))
    out["comparison"] = rows
    return out


WORKERS = {"simulate_mt": worker_simulate_mt, "mt_fit": worker_mt_fit,
           "mt_uni_y1": _worker_mt_uni("y1"), "mt_uni_y2": _worker_mt_uni("y2"),
           "simulate_mat": worker_simulate_mat, "mat_fit": worker_mat_fit,
           "mat_base": worker_mat_base}


# --------------------------------------------------------------------------- driver
def run_job(kind, n, seed, timeout, wait):
    out = os.path.join(WORK, f"multitrait_{kind}_n{n}_s{seed}.json")
    os.makedirs(WORK, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n),
           "--seed", str(seed), "--worker-out", out]
    print(f"[{dt.datetime.now():%H:%M:%S}] {kind} n={n:,} (load avg {os.getloadavg()[0]:.2f})",
          flush=True)
    res = run_worker(cmd, out, timeout, wait)
    msg = (f"  {kind}: {res.get('seconds_fit', res.get('seconds', float('nan'))):.1f} s"
           + (f", {res['n_iter']} iterations, converged={res['converged']}, round/fact "
              f"{res['ratio_round_factorization']:.2f}, peak RSS {res['peak_rss_gib']:.2f} GiB"
              if "n_iter" in res else "")
           + (f"  ERROR {res['error']}" if "error" in res else "")
           + (f"  warnings: {res['warnings']}" if res.get("warnings") else ""))
    print(msg, flush=True)
    return res


def fmt(v, spec=".2f", none="–"):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return none
    return format(v, spec)


METRIC_ROWS = [
    ("**`mme.fit` seconds**", lambda r: f"**{r['seconds_fit']:.1f}**"),
    ("AI-REML iterations", lambda r: f"{r['n_iter']}"),
    ("converged", lambda r: "yes" if r["converged"] else "**NO**"),
    ("warnings", lambda r: "; ".join(r["warnings"]) if r["warnings"] else "none"),
    ("iteration kinds", lambda r: ", ".join(r["kinds"][1:])),
    ("seconds per iteration (median of `iteration_log`)",
     lambda r: fmt(r["seconds_per_iteration"], ".2f")),
    ("factorizations in the fit", lambda r: f"{r['n_factorize_fit']}"),
    ("first `fit.fixed_effects` after the fit (Satterthwaite df), s / factorizations",
     lambda r: f"{r['seconds_fixed_effects']:.1f} / {r['n_factorize_fixed_effects']}"),
    ("numeric factorization at θ̂ (best of 2), s", lambda r: f"{r['seconds_factorization']:.3f}"),
    ("selected inverse at the G⁻¹ slots, s", lambda r: f"{r['seconds_selinv_gslots']:.3f}"),
    ("REML round at θ̂ (`Likelihood.evaluate`, best of 2), s", lambda r: f"{r['seconds_round']:.3f}"),
    (f"**REML round / factorization** (goal ≤ {RATIO_GOAL:g})",
     lambda r: f"**{r['ratio_round_factorization']:.2f}** "
               f"{'PASS' if r['ratio_round_factorization'] <= RATIO_GOAL else 'FAIL'}"),
    ("median iteration / factorization", lambda r: fmt(r["ratio_iteration_factorization"], ".2f")),
    ("dim(C)", lambda r: f"{r['dim_C']:,}"),
    ("nnz(C) (lower)", lambda r: f"{r['nnz_C_lower'] / 1e6:.2f} M"),
    ("nnz(L)", lambda r: f"{r['nnz_L'] / 1e6:.2f} M"),
    ("CHOLMOD ordering", lambda r: r["ordering"]),
    ("Pedigree.from_frame (outside the fit), s", lambda r: f"{r['seconds_pedigree']:.2f}"),
    ("peak RSS after the fit / whole job (incl. the rows above)", lambda r: f"{r['peak_rss_fit_gib']:.2f} / "
                                                     f"{r['peak_rss_gib']:.2f} GiB"),
    ("REML logLik", lambda r: f"{r['loglik']:.3f}"),
    ("load average before → after the job", lambda r: f"{r['loadavg_before'][0]:.2f} → "
                                                       f"{r['loadavg_after'][0]:.2f}"),
    ("other processes' CPU share during the job", lambda r: f"{r['cpu_other_during']:.0%}"),
]


def _metrics_table(jobs):
    head = "| | " + " | ".join(label for label, _ in jobs) + " |"
    lines = [head, "|---|" + "---:|" * len(jobs)]
    for label, fn in METRIC_ROWS:
        cells = []
        for _, r in jobs:
            if r is None:
                cells.append("not run")
                continue
            if "error" in r and label.startswith("**`mme.fit`"):
                cells.append(f"FAILED: {r['error']}")
                continue
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _comparison_table(r):
    if not r or "comparison" not in r:
        return ["(no estimates: the fit failed)"]
    lines = ["| parameter | simulated | realised | estimate ± SE | z vs simulated | within 2 SE "
             "| z vs realised | within 2 SE |", "|---|---:|---:|---:|---:|:-:|---:|:-:|"]
    for c in r["comparison"]:
        yn = {True: "yes", False: "**NO**", None: "–"}
        lines.append(
            f"| {c['parameter']} | {c['true']:.4f} | {fmt(c['realised'], '.4f')} | "
            f"{c['estimate']:.4f} ± {fmt(c['se'], '.4f')} | {fmt(c['z_true'], '+.2f')} | "
            f"{yn[c['within_2se_true']]} | {fmt(c['z_realised'], '+.2f')} | "
            f"{yn[c['within_2se_realised']]} |")
    return lines


def _iteration_log_md(r):
    if not r:
        return []
    if "iteration_log" not in r:
        return ["```", *(r.get("log_lines") or ["(no log lines)"]), "```",
                "", "```", r.get("traceback", ""), "```"]
    log = pd.DataFrame(r["iteration_log"])
    th = [c for c in log.columns if c.startswith("theta")]
    lines = ["| iter | kind | logLik | step | decrement | seconds | θ |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for _, row in log.iterrows():
        lines.append(f"| {int(row['iteration'])} | {row['kind']} | {row['loglik']:.4f} | "
                     f"{row['step']:.3g} | {row['decrement']:.3g} | {row['seconds']:.2f} | "
                     + " ".join(f"{row[c]:.4g}" for c in th) + " |")
    return lines


def render(results, machine_md):
    a = results["args"]
    L = ["# Multi-trait and maternal animal models (`benchmarks/bench_multitrait.py`)", "",
         f"Run {results['date']}, command `{results['command']}`; total "
         f"{results['total_minutes']:.1f} min. Load average (1/5/15 min) at the start "
         f"{' / '.join(f'{x:.2f}' for x in results['loadavg_start'])}, at the end "
         f"{' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} "
         f"({results['machine'].get('cpu', {}).get('logical_cpus', '?')} logical CPUs; the "
         "machine is shared with other work, see the per-job rows).", ""]
    if results.get("size_note"):
        L += [results["size_note"], ""]
    mt = results.get("multitrait")
    if mt:
        s = mt["simulate"]
        L += ["## 1. Two-trait animal model", "",
              f"`mme.fit(\"{MT_FORMULA}\", wide, relmat={{\"animal\": Pedigree}})` (residual "
              "`us(trait)`, the default), REML by AI-REML, on "
              f"{s.get('n_animals', a['animals']):,} animals, each with a record of y1, "
              f"y2 missing on a random {MT_MISSING:.0%} ({s.get('n_records_y2', 0):,} y2 "
              "records). Simulated G₀ = [[1, 0.5], [0.5, 2]] (r_g = 0.354), R₀ = [[2, 0.6], "
              "[0.6, 3]], sex effect (M − F) +0.5 (y1), −1.0 (y2); pedigree from "
              "`simulate_animal.py` (random sires, "
              f"{s.get('unknown_parent_fraction', float('nan')):.1%} unknown parents among "
              f"non-founders, {s.get('n_sires', '?'):,} sires, mean F "
              f"{s.get('mean_F', float('nan')):.4f}). Base line: one univariate fit per trait "
              f"(`{MT_BASE['y1']}`; `{MT_BASE['y2']}` on the records with y2).", ""]
        L += _metrics_table([("2-trait fit", mt.get("fit")), ("base line y1", mt.get("uni_y1")),
                             ("base line y2", mt.get("uni_y2"))])
        f = mt.get("fit") or {}
        u1, u2 = mt.get("uni_y1") or {}, mt.get("uni_y2") or {}
        if "seconds_fit" in f and "seconds_fit" in u1 and "seconds_fit" in u2:
            L += ["", f"2-trait fit / (sum of the two univariate fits): "
                      f"{f['seconds_fit'] / (u1['seconds_fit'] + u2['seconds_fit']):.1f}×; "
                      f"nnz(L) 2-trait / univariate y1: "
                      f"{f.get('nnz_L', float('nan')) / u1.get('nnz_L', float('nan')):.1f}×."]
        L += ["", "### Estimates vs truth (2-trait fit)", ""] + _comparison_table(f)
        L += ["", "### Estimates vs truth (univariate base lines)", ""]
        L += _comparison_table(u1) + [""] + _comparison_table(u2)
        L += ["", "### Iteration log of the 2-trait fit (`fit.iteration_log`, verbatim)", "",
              "θ order: G₀ (animal) elements, then R₀ elements, as in "
              "`variance_components`.", ""] + _iteration_log_md(f)
    mat = results.get("maternal")
    if mat:
        s = mat["simulate"]
        L += ["", "## 2. Maternal model", "",
              f"`mme.fit(\"{MAT_FORMULA}\", calves, relmat={{\"animal\": ped, \"dam\": ped}}, "
              "covary={\"genetic\": [\"animal\", \"dam\"]})`, REML by AI-REML, on "
              f"{s.get('n_calves', a['calves']):,} calves (pedigree of "
              f"{s.get('n_pedigree', 0):,} animals; {s.get('unknown_dam_fraction', 0):.1%} of the "
              f"calves have an unknown dam, coded 0; {s.get('n_dams_with_calves', 0):,} dams "
              f"with {s.get('calves_per_dam_mean', 0):.2f} calves on average, at most "
              f"{s.get('calves_per_dam_max', 0)}; {s.get('n_herds', 0)} herds as fixed effects). "
              "Simulated G₀ (direct, maternal) = [[20, −4], [−4, 9]] (r_am = −0.298), "
              "σ²_pe = 3, σ²ₑ = 15. Calves with an unknown dam carry no maternal effect in the "
              "simulation, as the model assumes; their `dam_pe` level is \"none\". Base line: "
              f"`{MAT_BASE}` (maternal terms omitted, so its variances are biased by design; "
              "it is there for time and iterations).", ""]
        L += _metrics_table([("maternal fit", mat.get("fit")), ("base line", mat.get("base"))])
        f, b = mat.get("fit") or {}, mat.get("base") or {}
        if "seconds_fit" in f and "seconds_fit" in b:
            L += ["", f"maternal fit / base line: {f['seconds_fit'] / b['seconds_fit']:.1f}× the "
                      f"time, nnz(L) {f.get('nnz_L', float('nan')) / b.get('nnz_L', float('nan')):.1f}×."]
        L += ["", "### Estimates vs truth (maternal fit)", ""] + _comparison_table(f)
        L += ["", "h² here is `Fit.heritability(\"genetic\", \"animal\")`: σ²_a over the sum of "
                  "the variances in `variance_components` (the covariance σ_am is not in the "
                  "denominator); the simulated value uses the same definition."]
        L += ["", "### Estimates of the base line", ""] + _comparison_table(b)
        L += ["", "### Iteration log of the maternal fit (`fit.iteration_log`, verbatim)", "",
              "θ order: G₀ (genetic: animal, dam, covariance), σ²_pe, σ²ₑ.", ""] + _iteration_log_md(f)
    problems = []
    for label, part, keys in (("2-trait", "multitrait", ("fit", "uni_y1", "uni_y2")),
                              ("maternal", "maternal", ("fit", "base"))):
        for k in keys:
            r = (results.get(part) or {}).get(k)
            if r is None:
                continue
            bad = ("error" in r or r.get("warnings") or not r.get("converged", False)
                   or r.get("singular"))
            if bad:
                problems += [f"### {label} {k}: " + (r.get("error") or "; ".join(r["warnings"])
                                                      or "not converged"), ""]
                problems += _iteration_log_md(r) + [""]
    L += ["", "## Failures, warnings, non-convergence", ""]
    L += problems or ["None: every fit converged without a warning or an error."]
    L += ["", "## How the figures are made", "",
          "- Each fit runs in a fresh subprocess (peak RSS = `ru_maxrss` of that process: data, "
          "pedigree, the fit, then the timing of the stages below). `mme.fit` seconds exclude "
          "`Pedigree.from_frame` (its own row).",
          "- At θ̂, after the fit, in the same process: `set_values(θ̂)` and "
          "`Cholesky.factorize(C)` twice (best kept) = one numeric factorization; "
          "`MME.selected_inverse` at the G⁻¹ slots; then twice `set_values(θ̂)` + "
          "`Likelihood(system, \"REML\").evaluate(θ̂)` = one REML round (factorization, "
          "solves, selected inverse — for a `us(trait)` residual also at the residual cells — "
          "score and AI). The ratio is round / factorization (goal ≤ 3).",
          "- `fit.fixed_effects` (first access, after the timings above) computes "
          "Satterthwaite's df: Var(θ̂) as the inverse observed information by central "
          "differences of the score (2 REML rounds per variance parameter) and ∂Var(β̂)/∂θ. "
          "That work is not in the `mme.fit` seconds; it has its own row. The SEs of the "
          "variance parameters (and of r and h²) come from AI⁻¹ and cost nothing extra.",
          "- \"realised\": G₀ as the sample covariance of the standardised Mendelian-sampling "
          "draws (a_i − (a_s + a_d)/2)/√d_i of all pedigree animals (the i.i.d. N(0, G₀) draws "
          "behind the breeding values); R₀ as the sample (co)variance of the simulated "
          "residuals of the records in the data (covariance over the records with both "
          "traits); σ²_pe as the sample variance of the dams' pe effects. \"simulated\" = the "
          "parameters above. z = (estimate − value) / SE, SE from AI⁻¹ (delta method for r "
          "and h²).",
          "- Before each job the driver waits (up to `--wait-idle` s) for the CPUs to be idle "
          "and records the load average and the share of the CPUs other processes used "
          "during the job.", ""]
    L += ["## Machine", "", machine_md, ""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--animals", type=int, default=100_000)
    ap.add_argument("--calves", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-maternal", action="store_true")
    ap.add_argument("--skip-multitrait", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=60.0,
                    help="seconds to wait, before each job, for other processes to go idle")
    ap.add_argument("--timeout-minutes", type=float, default=60.0, help="per job")
    ap.add_argument("--size-note", default="", help="a sentence for the .md (e.g. why these sizes)")
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_multitrait"))
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the .md from the existing .json (no runs)")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--n", type=int)
    ap.add_argument("--worker-out")
    args = ap.parse_args()

    if args.worker:
        from mme._threads import dense_blas_threads
        with dense_blas_threads(1):
            res = WORKERS[args.worker](args.n, args.seed)
        with open(args.worker_out, "w") as fh:
            json.dump(res, fh, default=float)
        return

    from _machine import machine_markdown
    if args.render_only:
        with open(args.out_prefix + ".json") as fh:
            results = json.load(fh)
        with open(args.out_prefix + ".md", "w") as fh:
            fh.write(render(results, machine_markdown(results["machine"])))
        return
    t_start = time.perf_counter()
    timeout = args.timeout_minutes * 60
    results = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "command": "python benchmarks/bench_multitrait.py " + " ".join(sys.argv[1:]),
               "args": vars(args), "loadavg_start": list(os.getloadavg()),
               "size_note": args.size_note}
    n, c, seed, w = args.animals, args.calves, args.seed, args.wait_idle
    if not args.skip_multitrait:
        mt = results["multitrait"] = {"n": n}
        mt["simulate"] = run_job("simulate_mt", n, seed, timeout, w)
        if "error" not in mt["simulate"]:
            for key, kind in (("fit", "mt_fit"), ("uni_y1", "mt_uni_y1"), ("uni_y2", "mt_uni_y2")):
                mt[key] = run_job(kind, n, seed, timeout, w)
    if not args.skip_maternal:
        mat = results["maternal"] = {"n": c}
        mat["simulate"] = run_job("simulate_mat", c, seed, timeout, w)
        if "error" not in mat["simulate"]:
            for key, kind in (("fit", "mat_fit"), ("base", "mat_base")):
                mat[key] = run_job(kind, c, seed, timeout, w)
    results["loadavg_end"] = list(os.getloadavg())
    results["total_minutes"] = (time.perf_counter() - t_start) / 60.0
    write_results(results, args.out_prefix, render)


if __name__ == "__main__":
    main()
