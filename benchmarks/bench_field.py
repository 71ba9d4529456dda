#!/usr/bin/env python
"""Field trial (AR1 ⊗ AR1) vs a dense-V REML, and a 20-site MET with FA(2): issue 13's benchmark.

    python benchmarks/bench_field.py [--seed 1] [--skip-field] [--skip-met]
        [--met-sites 20] [--met-genotypes 300] [--wait-idle 60] [--timeout-minutes 30]
        [--out-prefix benchmarks/results_field] [--render-only]

1. **Field trial.** A 30-column × 40-row field (1,200 plots) of 400 genotypes in 3
   complete replicates (rep k = columns 10k−9 … 10k, genotypes randomised within each
   rep); 5% of the plots (60) lost at random, 1,140 records. Errors e ~ N(0, σ² AR1(ρ_c) ⊗
   AR1(ρ_r)) over the whole rectangle with σ² = 4, ρ_c = 0.6, ρ_r = 0.4; genotype effects
   N(0, σ²_g = 2); rep effects 0, +1.5, −1. Model::

       yield ~ rep + (1|gen),  residual="ar1(col):ar1(row)"

   fitted by ``mme.fit`` (AI-REML on the sparse MME) and, in the same process, by a dense-V
   REML written here in NumPy: V = σ²_g ZZ' + σ² R(ρ_c, ρ_r) on the observed plots, the
   exact REML log-likelihood and its analytic gradient, maximised by SciPy's L-BFGS-B over
   (log σ²_g, log σ², atanh ρ_c, atanh ρ_r) from mme's own starting point (its
   iteration 0). Reported: seconds, iterations, round / factorization at θ̂, peak RSS,
   estimates vs truth, the dense optimiser's seconds and logLik (equal to mme's?), and the
   ratio dense ÷ mme.

2. **Multi-environment trial.** ``--met-sites`` sites (default 20), each a 40-column ×
   30-row field (1,200 plots) of ``--met-genotypes`` genotypes (default 300; all
   genotypes in every site) in 4 complete replicates (rep k = columns 10k−9 … 10k); 3% of
   the plots lost at random (24,000 plots, ~23,280 records by default). Genotype × site
   effects U (genotypes × sites) with rows ~ N(0, G₀), G₀ = ΛΛ' + Ψ, Λ's first column
   U(0.8, 1.6), second N(0, 0.7²), Ψ U(0.1, 0.4); per-site errors σ²_s AR1(ρ_c,s) ⊗
   AR1(ρ_r,s) with σ²_s U(2, 6), ρ_c,s U(0.3, 0.7), ρ_r,s U(0.1, 0.5); site means
   N(50, 5²), rep-within-site effects N(0, 1). Model::

       yield ~ 0 + site + site:rep + (0 + site | gen),
       structure={"gen": "fa(2)"}, residual="by(site, ar1(col):ar1(row))"

   Reported: converged?, iterations, seconds, the iteration log, round / factorization at
   θ̂, peak RSS, and estimates vs truth: the implied G₀ and its genetic correlations (the
   loadings are identified only up to rotation) against the simulated G₀ and the realised
   one (sample covariance of U's rows), and σ², ρ_c, ρ_r per site.

Each fit runs in a fresh subprocess (``--worker``), so peak RSS (``ru_maxrss``) is that of
one job; the ``mme`` logger's iteration lines are streamed to a file, so a fit that is
killed at ``--timeout-minutes`` still leaves its log. No unit test times anything: this
script is the only place these timings are made.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
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

GOAL_MET_SECONDS = 120.0

FIELD_FORMULA = "yield ~ rep + (1|gen)"
FIELD_RESIDUAL = "ar1(col):ar1(row)"
FIELD = {"cols": 30, "rows": 40, "genotypes": 400, "reps": 3, "missing": 0.05,
         "gen": 2.0, "sigma2": 4.0, "rho_col": 0.6, "rho_row": 0.4, "rep_effects": [0.0, 1.5, -1.0]}

MET_FORMULA = "yield ~ 0 + site + site:rep + (0 + site | gen)"
MET_RESIDUAL = "by(site, ar1(col):ar1(row))"
MET = {"cols": 40, "rows": 30, "reps": 4, "missing": 0.03}


def fmt(x, spec):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


# --------------------------------------------------------------------------- simulation
def _ar1_chol(n, rho):
    i = np.arange(n)
    return np.linalg.cholesky(rho ** np.abs(i[:, None] - i))


def _field_errors(rng, n_c, n_r, s2, rc, rr):
    """σ² AR1(ρ_c) ⊗ AR1(ρ_r) over the n_c × n_r rectangle, column-major (col slowest)."""
    Lc, Lr = _ar1_chol(n_c, rc), _ar1_chol(n_r, rr)
    z = rng.standard_normal((n_c, n_r))
    return np.sqrt(s2) * (Lc @ z @ Lr.T).ravel()


def _plots(n_c, n_r, reps):
    cc, rr = np.meshgrid(np.arange(1, n_c + 1), np.arange(1, n_r + 1), indexing="ij")
    cc, rr = cc.ravel(), rr.ravel()
    rep = (cc - 1) // (n_c // reps) + 1
    return cc, rr, rep


def simulate_field(seed):
    p = FIELD
    rng = np.random.default_rng(seed)
    cc, rr, rep = _plots(p["cols"], p["rows"], p["reps"])
    gen = np.empty(cc.size, dtype=np.int64)
    for k in range(1, p["reps"] + 1):
        gen[rep == k] = rng.permutation(p["genotypes"])
    e = _field_errors(rng, p["cols"], p["rows"], p["sigma2"], p["rho_col"], p["rho_row"])
    g = rng.normal(0.0, np.sqrt(p["gen"]), p["genotypes"])
    y = 50.0 + np.asarray(p["rep_effects"])[rep - 1] + g[gen] + e
    df = pd.DataFrame({"col": cc, "row": rr, "rep": pd.Categorical(rep.astype(str)),
                       "gen": [f"G{k:03d}" for k in gen], "yield": y})
    lost = rng.choice(cc.size, int(round(p["missing"] * cc.size)), replace=False)
    keep = np.setdiff1d(np.arange(cc.size), lost)
    realised = {"gen": float(np.var(g, ddof=1)), "sigma2": float(np.var(e[keep], ddof=1))}
    return df.iloc[keep].reset_index(drop=True), realised


def simulate_met(seed, n_sites, n_gen):
    p = MET
    rng = np.random.default_rng(seed + 100)
    lam = np.column_stack([rng.uniform(0.8, 1.6, n_sites), rng.normal(0.0, 0.7, n_sites)])
    psi = rng.uniform(0.1, 0.4, n_sites)
    G0 = lam @ lam.T + np.diag(psi)
    U = rng.multivariate_normal(np.zeros(n_sites), G0, n_gen)
    s2 = rng.uniform(2.0, 6.0, n_sites)
    rc = rng.uniform(0.3, 0.7, n_sites)
    rr = rng.uniform(0.1, 0.5, n_sites)
    mu = rng.normal(50.0, 5.0, n_sites)
    cc, row, rep = _plots(p["cols"], p["rows"], p["reps"])
    per_rep = cc.size // p["reps"]
    if n_gen > per_rep:
        raise ValueError(f"{n_gen} genotypes do not fit in a rep of {per_rep} plots")
    frames, ev = [], []
    for s in range(n_sites):
        gen = np.empty(cc.size, dtype=np.int64)
        for k in range(1, p["reps"] + 1):
            # n_gen genotypes per rep; any spare plots get random genotypes
            fill = np.r_[np.arange(n_gen), rng.integers(0, n_gen, per_rep - n_gen)]
            gen[rep == k] = rng.permutation(fill)
        e = _field_errors(rng, p["cols"], p["rows"], s2[s], rc[s], rr[s])
        repeff = rng.normal(0.0, 1.0, p["reps"])
        repeff -= repeff[0]
        y = mu[s] + repeff[rep - 1] + U[gen, s] + e
        keep = np.sort(rng.choice(cc.size, cc.size - int(round(p["missing"] * cc.size)),
                                  replace=False))
        frames.append(pd.DataFrame({"site": f"S{s + 1:02d}", "col": cc[keep], "row": row[keep],
                                    "rep": rep[keep].astype(str), "gen": gen[keep],
                                    "yield": y[keep]}))
        ev.append(float(np.var(e[keep], ddof=1)))
    df = pd.concat(frames, ignore_index=True)
    df["site"] = pd.Categorical(df["site"])
    df["rep"] = pd.Categorical(df["rep"])
    df["gen"] = [f"G{k:03d}" for k in df["gen"]]
    truth = {"G0": G0, "lambda": lam, "psi": psi, "sigma2": s2, "rho_col": rc, "rho_row": rr,
             "G0_realised": np.cov(U.T), "sigma2_realised": np.asarray(ev)}
    return df, truth


# --------------------------------------------------------------------------- mme fit
class _StreamLog(logging.Handler):
    """The ``mme`` logger's lines, kept and appended to a file as they come."""

    def __init__(self, path):
        super().__init__(logging.INFO)
        self.lines, self.path = [], path
        if path:
            open(path, "w").close()

    def emit(self, record):
        line = f"{time.perf_counter():.3f} {record.getMessage()}"
        self.lines.append(line)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")


def fit_and_measure(formula, data, log_path=None, **kw):
    """``mme.fit`` (timed), then a factorization and a REML round at θ̂ (as bench_multitrait)."""
    import mme
    from mme._threads import dense_blas_threads
    from mme.engine.reml import Likelihood

    out = {"formula": formula, "kwargs": {k: str(v) for k, v in kw.items()},
           "n_records": int(len(data)), "rss_data_gib": maxrss_gib()}
    logger = logging.getLogger("mme")
    cap = _StreamLog(log_path)
    old_level = logger.level
    logger.addHandler(cap)
    logger.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        out["t_fit_start"] = t0
        try:
            fit = mme.fit(formula, data, **kw)
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
               n_params=int(len(fit.internals.estimate.theta)),
               seconds_per_iteration=float(it["seconds"].median()) if len(it) else None,
               variance_components=fit.variance_components.to_dict(orient="records"))
    system = fit.internals.mme
    out["n_factorize_fit"] = int(system.n_factorize)
    out["dim_C"] = int(system.dim)
    out["nnz_C_lower"] = int(system.C.nnz)
    out["ordering"] = str(system.ordering)
    with dense_blas_threads(1):      # as inside mme.fit (and bench_multitrait's workers)
        _time_round(out, fit, system, Likelihood)
    return out, fit


def _time_round(out, fit, system, Likelihood):
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
    system.theta = theta.copy()
    out["nnz_L"] = int(factor.nnz_L)
    rnd = []
    for _ in range(2):
        system.set_values(G0s, R0)    # θ unknown to the system: evaluate refactorizes
        t0 = time.perf_counter()
        ev = model.evaluate(theta)
        rnd.append(time.perf_counter() - t0)
    out.update(seconds_factorization=min(fac), seconds_factorization_all=fac,
               seconds_round=min(rnd), seconds_round_all=rnd,
               ratio_round_factorization=min(rnd) / min(fac),
               loglik_round=float(ev.loglik),
               max_abs_score=float(np.max(np.abs(ev.score))),
               peak_rss_gib=maxrss_gib())


def _vc_rows(fit):
    return fit.variance_components


def _cmp(name, truth, realised, est, se):
    z = (est - truth) / se if se is not None and np.isfinite(se) and se > 0 else np.nan
    return {"parameter": name, "true": float(truth),
            "realised": None if realised is None else float(realised),
            "estimate": float(est), "se": None if se is None or not np.isfinite(se) else float(se),
            "z_true": float(z)}


# --------------------------------------------------------------------------- dense-V REML
class DenseField:
    """REML of ``y ~ rep + (1|gen)`` with σ² AR1 ⊗ AR1 errors, V formed densely (NumPy)."""

    def __init__(self, df):
        from scipy.linalg import cho_factor, cho_solve   # noqa: F401  (import cost outside)
        self.y = df["yield"].to_numpy(float)
        self.X = pd.get_dummies(df["rep"], drop_first=True, dtype=float)
        self.X.insert(0, "(Intercept)", 1.0)
        self.X = self.X.to_numpy()
        g = pd.factorize(df["gen"])[0]
        self.ZZ = (g[:, None] == g[None, :]).astype(float)
        # AR1 correlations of the observed plots = rows/columns of the small AR1 matrices
        self.ci = df["col"].to_numpy() - df["col"].min()
        self.ri = df["row"].to_numpy() - df["row"].min()
        self.dc = np.abs(np.subtract.outer(np.arange(self.ci.max() + 1), np.arange(self.ci.max() + 1)))
        self.dr = np.abs(np.subtract.outer(np.arange(self.ri.max() + 1), np.arange(self.ri.max() + 1)))
        self.n, self.p = self.X.shape
        self.n_eval = 0

    @staticmethod
    def natural(phi):
        return np.array([np.exp(phi[0]), np.exp(phi[1]), np.tanh(phi[2]), np.tanh(phi[3])])

    @staticmethod
    def working(theta):
        return np.array([np.log(theta[0]), np.log(theta[1]), np.arctanh(theta[2]),
                         np.arctanh(theta[3])])

    def loglik_grad(self, theta, grad=True):
        """Exact REML logLik (mme's constant: −½(n−p) log 2π included) and ∂ℓ/∂θ (natural θ)."""
        from scipy.linalg import cho_factor, cho_solve
        from scipy.linalg.lapack import dpotri
        self.n_eval += 1
        sg, s2, rc, rr = theta
        ac, ar = rc ** self.dc, rr ** self.dr
        Ac, Ar = ac[np.ix_(self.ci, self.ci)], ar[np.ix_(self.ri, self.ri)]
        Rc = Ac * Ar
        V = sg * self.ZZ + s2 * Rc
        cf = cho_factor(V, lower=True, check_finite=False)
        logdetV = 2.0 * np.log(np.diag(cf[0])).sum()
        ViX = cho_solve(cf, self.X, check_finite=False)
        XViX = self.X.T @ ViX
        cx = np.linalg.cholesky(XViX)
        Viy = cho_solve(cf, self.y, check_finite=False)
        beta = np.linalg.solve(XViX, self.X.T @ Viy)
        Py = Viy - ViX @ beta
        ll = -0.5 * ((self.n - self.p) * np.log(2 * np.pi) + logdetV
                     + 2.0 * np.log(np.diag(cx)).sum() + self.y @ Py)
        if not grad:
            return ll, None
        Vi, info = dpotri(cf[0], lower=1)          # V⁻¹ from the Cholesky factor (lower half)
        Vi = np.tril(Vi) + np.tril(Vi, -1).T
        P = Vi - ViX @ np.linalg.solve(XViX, ViX.T)
        dac = np.where(self.dc > 0, self.dc * rc ** np.maximum(self.dc - 1, 0), 0.0)
        dar = np.where(self.dr > 0, self.dr * rr ** np.maximum(self.dr - 1, 0), 0.0)
        dAc, dAr = dac[np.ix_(self.ci, self.ci)], dar[np.ix_(self.ri, self.ri)]
        dVs = (self.ZZ, Rc, s2 * dAc * Ar, s2 * Ac * dAr)
        g = np.array([-0.5 * np.sum(P * D) + 0.5 * Py @ (D @ Py) for D in dVs])
        return ll, g

    def fit(self, theta0, maxiter=500):
        from scipy.optimize import minimize

        def f(phi):
            th = self.natural(phi)
            ll, g = self.loglik_grad(th)
            jac = g * np.array([th[0], th[1], 1 - th[2] ** 2, 1 - th[3] ** 2])
            return -ll, -jac

        t0 = time.perf_counter()
        self.n_eval = 0
        res = minimize(f, self.working(theta0), jac=True, method="L-BFGS-B",
                       options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-8, "maxcor": 20})
        secs = time.perf_counter() - t0
        return {"seconds": secs, "loglik": float(-res.fun), "theta": self.natural(res.x).tolist(),
                "n_iter": int(res.nit), "n_eval": int(self.n_eval), "success": bool(res.success),
                "message": str(res.message),
                "gradient_natural_at_optimum": self.loglik_grad(self.natural(res.x))[1].tolist()}


# --------------------------------------------------------------------------- workers
def worker_field(args):
    df, realised = simulate_field(args.seed)
    p = FIELD
    out, fit = fit_and_measure(FIELD_FORMULA, df, os.path.join(WORK, "field_mme.log"),
                               residual=FIELD_RESIDUAL)
    out["n_records"] = int(len(df))
    out["n_plots_rectangle"] = p["cols"] * p["rows"]
    if fit is None:
        return out
    vc = fit.variance_components
    est, se = vc["estimate"].to_numpy(), vc["std_error"].to_numpy()
    names = [("σ²_g", p["gen"], realised["gen"]), ("σ²", p["sigma2"], realised["sigma2"]),
             ("ρ_col", p["rho_col"], None), ("ρ_row", p["rho_row"], None)]
    out["comparison"] = [_cmp(nm, t, r, est[i], se[i]) for i, (nm, t, r) in enumerate(names)]
    log = fit.iteration_log
    theta0 = log.loc[log["iteration"] == 0, [c for c in log.columns if c.startswith("theta")]]
    theta0 = theta0.iloc[0].to_numpy(float)
    theta_hat = np.asarray(fit.internals.estimate.theta, float)
    # --- dense-V REML, same process, same data, same start
    t0 = time.perf_counter()
    dense = DenseField(df)
    setup = time.perf_counter() - t0
    ll_at_mme, g_at_mme = dense.loglik_grad(theta_hat)
    d = dense.fit(theta0)
    d["seconds_setup"] = setup
    d["seconds_total"] = setup + d["seconds"]
    d["theta0"] = theta0.tolist()
    d["loglik_at_mme_theta"] = float(ll_at_mme)
    d["gradient_at_mme_theta"] = g_at_mme.tolist()
    d["gradient_times_se_at_mme_theta"] = (np.abs(g_at_mme) * se).tolist()
    d["loglik_minus_mme"] = d["loglik"] - out["loglik"]
    d["loglik_at_mme_theta_minus_mme"] = float(ll_at_mme) - out["loglik"]
    d["ratio_dense_over_mme"] = d["seconds_total"] / out["seconds_fit"]
    d["theta_minus_mme"] = (np.asarray(d["theta"]) - theta_hat).tolist()
    out["dense"] = d
    out["peak_rss_gib_incl_dense"] = maxrss_gib()
    return out


def worker_met(args):
    t0 = time.perf_counter()
    df, truth = simulate_met(args.seed, args.met_sites, args.met_genotypes)
    sim_s = time.perf_counter() - t0
    out, fit = fit_and_measure(MET_FORMULA, df, os.path.join(WORK, "met_mme.log"),
                               structure={"gen": "fa(2)"}, residual=MET_RESIDUAL)
    out["seconds_simulate"] = sim_s
    out["n_sites"], out["n_genotypes"] = args.met_sites, args.met_genotypes
    out["n_plots_rectangles"] = args.met_sites * MET["cols"] * MET["rows"]
    out["n_records"] = int(len(df))
    out["truth"] = {k: np.asarray(v).tolist() for k, v in truth.items()}
    if fit is None:
        return out
    fa = fit.factor_analytic("gen")
    G = fa.G0.to_numpy()
    out["G0_hat"] = G.tolist()
    out["specific_variances_hat"] = np.asarray(fa.specific_variances).tolist()
    out["rotated_loadings_hat"] = fa.rotated_loadings.to_numpy().tolist()

    def corr(M):
        s = np.sqrt(np.diag(M))
        return M / np.outer(s, s)

    iu = np.triu_indices(len(G), 1)
    cmp = {}
    for key in ("G0", "G0_realised"):
        T = truth[key]
        C, Ct = corr(G), corr(T)
        cmp[key] = {
            "variances_rel_err_mean": float(np.mean(np.abs(np.diag(G) / np.diag(T) - 1))),
            "variances_rel_err_max": float(np.max(np.abs(np.diag(G) / np.diag(T) - 1))),
            "covariances_abs_err_mean": float(np.mean(np.abs(G - T)[iu])),
            "correlations_abs_err_mean": float(np.mean(np.abs(C - Ct)[iu])),
            "correlations_abs_err_max": float(np.max(np.abs(C - Ct)[iu])),
            "correlation_of_correlations": float(np.corrcoef(C[iu], Ct[iu])[0, 1]),
            "frobenius_rel": float(np.linalg.norm(G - T) / np.linalg.norm(T)),
            "mean_true_correlation": float(np.mean(Ct[iu])),
            "mean_est_correlation": float(np.mean(C[iu])),
        }
    out["G0_comparison"] = cmp
    vc = fit.variance_components
    res = vc[vc["group"] == "Residual"]
    sites = sorted(df["site"].cat.categories)
    rows = []
    for s, site in enumerate(sites):
        r = res[res["term1"].astype(str).str.contains(site)]
        rec = {"site": site}
        for key, pat in (("sigma2", None), ("rho_col", "ar1(col)"), ("rho_row", "ar1(row)")):
            rr = r[r["term2"].astype(str).str.contains(pat, regex=False)] if pat else \
                r[~r["term2"].astype(str).str.contains("ar1", regex=False)]
            rec[key] = float(rr["estimate"].iloc[0]) if len(rr) == 1 else None
            rec[key + "_se"] = float(rr["std_error"].iloc[0]) if len(rr) == 1 else None
            rec[key + "_true"] = float(truth[key][s])
        rows.append(rec)
    out["residual_by_site"] = rows
    out["residual_rows_raw"] = res.head(6).to_dict(orient="records")
    return out


WORKERS = {"field": worker_field, "met": worker_met}


def run_job(kind, args):
    out = os.path.join(WORK, f"field_{kind}_s{args.seed}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--seed", str(args.seed),
           "--met-sites", str(args.met_sites), "--met-genotypes", str(args.met_genotypes),
           "--worker-out", out]
    print(f"[{dt.datetime.now():%H:%M:%S}] {kind}", flush=True)
    res = run_worker(cmd, out, args.timeout_minutes * 60, args.wait_idle)
    logf = os.path.join(WORK, f"{kind}_mme.log")
    if "error" in res and os.path.exists(logf):
        with open(logf) as fh:
            res["log_lines"] = fh.read().splitlines()
    return res


# --------------------------------------------------------------------------- report
def _iteration_log_md(r, max_theta=8):
    if not r:
        return []
    if "iteration_log" not in r:
        return ["```", *(r.get("log_lines") or ["(no log lines)"]), "```",
                *(["", "```", r["traceback"], "```"] if r.get("traceback") else [])]
    log = pd.DataFrame(r["iteration_log"])
    th = [c for c in log.columns if c.startswith("theta")]
    more = f" … ({len(th)} in all)" if len(th) > max_theta else ""
    lines = [f"| iter | kind | logLik | step | decrement | seconds | θ[0:{min(len(th), max_theta)}]{more} |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for _, row in log.iterrows():
        lines.append(f"| {int(row['iteration'])} | {row['kind']} | {row['loglik']:.4f} | "
                     f"{row['step']:.3g} | {row['decrement']:.3g} | {row['seconds']:.2f} | "
                     + " ".join(f"{row[c]:.4g}" for c in th[:max_theta]) + " |")
    return lines


def _common_rows(r):
    return [
        ("records", f"{r.get('n_records', 0):,}"),
        ("**`mme.fit` seconds**", f"**{r['seconds_fit']:.2f}**" if "seconds_fit" in r else "–"),
        ("converged", str(r.get("converged", "–"))),
        ("AI-REML iterations", str(r.get("n_iter", "–"))),
        ("variance parameters", str(r.get("n_params", "–"))),
        ("factorizations during the fit", str(r.get("n_factorize_fit", "–"))),
        ("median iteration, s", fmt(r.get("seconds_per_iteration"), ".3f")),
        ("numeric factorization at θ̂ (best of 2), s", fmt(r.get("seconds_factorization"), ".4f")),
        ("REML round at θ̂ (best of 2), s", fmt(r.get("seconds_round"), ".4f")),
        ("**round / factorization**", fmt(r.get("ratio_round_factorization"), ".2f")),
        ("dim(C); nnz(C) lower; nnz(L)", f"{r.get('dim_C', 0):,}; {r.get('nnz_C_lower', 0):,}; "
                                         f"{r.get('nnz_L', 0):,}"),
        ("CHOLMOD ordering", str(r.get("ordering", "–"))),
        ("peak RSS after the fit / whole job, GiB",
         f"{fmt(r.get('peak_rss_fit_gib'), '.2f')} / {fmt(r.get('peak_rss_gib_incl_dense', r.get('peak_rss_gib')), '.2f')}"),
        ("REML logLik", fmt(r.get("loglik"), ".6f")),
        ("warnings", "; ".join(r.get("warnings") or []) or "none"),
        ("load average (1 min) before → after the job",
         f"{r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f}" if "loadavg_before" in r else "–"),
        ("other processes' CPU share during the job", fmt(r.get("cpu_other_during"), ".0%")),
    ]


def _start_fit_md(r):
    """The FA starting-value fit (the ``mme`` logger's lines before "FA start"): not in
    ``fit.iteration_log`` but inside the ``mme.fit`` seconds."""
    lines = r.get("log_lines") or []
    idx = [i for i, x in enumerate(lines) if "FA start" in x]
    if not idx or "t_fit_start" not in r:
        return []
    pre = lines[:idx[0] + 1]
    t_end = float(pre[-1].split()[0])
    out = ["", "### Starting values (inside the `mme.fit` seconds, not in `fit.iteration_log`)", "",
           f"mme starts FA(k) from the same model with a diagonal G₀ (more than 8 sites) fitted "
           f"first: {pre[-1].split(' ', 1)[1]}; that fit ended "
           f"{t_end - r['t_fit_start']:.1f} s after `mme.fit` was called. Its iterations "
           "(logger lines, θ cut):", "", "```"]
    out += [x.split(" theta=")[0] + ("  (" + x.rsplit("(", 1)[1] if " theta=" in x else "")
            for x in pre if x.split(" ", 1)[1].startswith(("iter", "FA start"))]
    return out + ["```"]


def _met_time_split(r):
    """Where the MET fit's seconds went: the starting-value fit, EM fallbacks, AI steps."""
    if "iteration_log" not in r:
        return []
    log = pd.DataFrame(r["iteration_log"])
    em = log[log["kind"].astype(str).str.contains("EM")]
    lines = r.get("log_lines") or []
    idx = [i for i, x in enumerate(lines) if "FA start" in x]
    start = (float(lines[idx[0]].split()[0]) - r["t_fit_start"]) if idx and "t_fit_start" in r else None
    tot = r["seconds_fit"]
    out = ["", "Where the `mme.fit` seconds went: "
           + (f"starting-value fit {start:.1f} s ({start / tot:.0%}); " if start is not None else "")
           + (f"{len(em)} EM-fallback iteration(s) (AI steps rejected after halving / damping) "
              f"{em['seconds'].sum():.1f} s ({em['seconds'].sum() / tot:.0%}); " if len(em) else "")
           + f"iteration log in all {log['seconds'].sum():.1f} s of {tot:.1f} s."]
    return out


def render(results, machine_md):
    L = ["# Field trial (AR1 ⊗ AR1) and a 20-site MET with FA(2) (`benchmarks/bench_field.py`)", "",
         f"Run {results['date']}, command `{results['command']}`; total "
         f"{results['total_minutes']:.1f} min. Load average (1/5/15 min) at the start "
         f"{' / '.join(f'{x:.2f}' for x in results['loadavg_start'])}, at the end "
         f"{' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} "
         f"({results['machine'].get('cpu', {}).get('logical_cpus', '?')} logical CPUs; the "
         "machine is shared with other work, see the per-job rows). Issue 13.", ""]
    f = results.get("field")
    if f:
        p = FIELD
        L += ["## 1. Field trial: mme vs a dense-V REML", "",
              f"`mme.fit(\"{FIELD_FORMULA}\", df, residual=\"{FIELD_RESIDUAL}\")` on a "
              f"{p['cols']} × {p['rows']} field ({p['cols'] * p['rows']:,} plots, "
              f"{p['missing']:.0%} lost at random: {f.get('n_records', 0):,} records), "
              f"{p['genotypes']} genotypes × {p['reps']} complete reps (column blocks). "
              f"Simulated σ²_g = {p['gen']:g}, σ² = {p['sigma2']:g}, ρ_col = {p['rho_col']:g}, "
              f"ρ_row = {p['rho_row']:g}. Dense-V: NumPy/SciPy, V = σ²_g ZZ' + σ² AR1⊗AR1 on "
              "the observed plots (n × n), Cholesky, exact REML logLik and analytic gradient "
              "(−½ tr(P Vᵢ) + ½ y'P Vᵢ P y), L-BFGS-B on (log σ²_g, log σ², atanh ρ_c, atanh ρ_r) "
              "from mme's iteration-0 θ (ftol 1e-15, gtol 1e-8); NumPy's BLAS at its default "
              "threads, mme.fit at its own default (bundled BLAS 1 thread, CHOLMOD's BLAS "
              "default).", ""]
        if "error" in f and "seconds_fit" not in f:
            L += [f"FAILED: {f['error']}", ""] + _iteration_log_md(f)
        else:
            L += ["| | mme |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in _common_rows(f)]
            d = f.get("dense")
            if d:
                L += ["", "| dense-V REML (same process, same data, same start) | |", "|---|---:|",
                      f"| **seconds** (setup {d['seconds_setup']:.2f} + optimiser) | **{d['seconds_total']:.2f}** |",
                      f"| L-BFGS-B iterations / logLik+gradient evaluations | {d['n_iter']} / {d['n_eval']} |",
                      f"| optimiser message | {d['message']} |",
                      f"| logLik reached | {d['loglik']:.8f} |",
                      f"| **logLik reached − mme's logLik** | **{d['loglik_minus_mme']:+.2e}** |",
                      f"| dense logLik at mme's θ̂ − mme's logLik | {d['loglik_at_mme_theta_minus_mme']:+.2e} |",
                      "| max \\|dense ∂ℓ/∂θ\\| · SE at mme's θ̂ | "
                      f"{max(d['gradient_times_se_at_mme_theta']):.2e} |",
                      "| dense θ̂ − mme θ̂ (σ²_g, σ², ρ_c, ρ_r) | "
                      + ", ".join(f"{x:+.1e}" for x in d["theta_minus_mme"]) + " |",
                      f"| **speed ratio dense ÷ mme** | **{d['ratio_dense_over_mme']:.1f}×** |"]
            L += ["", "### Estimates vs truth", "", "| parameter | simulated | realised | estimate ± SE | z |",
                  "|---|---:|---:|---:|---:|"]
            for c in f.get("comparison", []):
                L.append(f"| {c['parameter']} | {c['true']:.3f} | {fmt(c['realised'], '.3f')} | "
                         f"{c['estimate']:.3f} ± {fmt(c['se'], '.3f')} | {fmt(c['z_true'], '+.2f')} |")
            L += ["", "realised: sample variance of the simulated genotype effects / of the "
                  "errors on the observed plots.", "", "### mme iteration log", ""] + _iteration_log_md(f)
    m = results.get("met")
    if m:
        a = results["args"]
        L += ["", "## 2. Multi-environment trial: per-site AR1 ⊗ AR1, FA(2) genotype × site", "",
              f"`mme.fit(\"{MET_FORMULA}\", df, structure={{\"gen\": \"fa(2)\"}}, "
              f"residual=\"{MET_RESIDUAL}\")` on {a['met_sites']} sites × ({MET['cols']} × "
              f"{MET['rows']} plots) = {a['met_sites'] * MET['cols'] * MET['rows']:,} plots, "
              f"{MET['missing']:.0%} lost at random per site ({m.get('n_records', 0):,} records), "
              f"{a['met_genotypes']} genotypes in every site, {MET['reps']} complete reps per "
              "site (column blocks). Simulated G₀ = ΛΛ' + Ψ (Λ: U(0.8, 1.6), N(0, 0.7²); Ψ: "
              "U(0.1, 0.4)), per-site σ² U(2, 6), ρ_col U(0.3, 0.7), ρ_row U(0.1, 0.5). "
              f"Goal: under {GOAL_MET_SECONDS:.0f} s on 2 cores.", ""]
        if "seconds_fit" not in m:
            L += [f"**FAILED: {m.get('error')}**", "", "Log lines (`mme` logger) up to the end:", ""]
            L += _iteration_log_md(m)
        else:
            ok = m.get("converged") and m["seconds_fit"] <= GOAL_MET_SECONDS
            L += ["| | mme |", "|---|---:|"] + [f"| {x} | {y} |" for x, y in _common_rows(m)]
            L += [f"| goal: converged in ≤ {GOAL_MET_SECONDS:.0f} s | "
                  f"**{'PASS' if ok else 'FAIL'}** |"]
            if "error" in m:
                L += ["", f"**FAILED: {m['error']}**", ""] + _iteration_log_md(m)
            gc = m.get("G0_comparison")
            if gc:
                L += ["", "### Implied G₀ vs truth (rotation-free)", "",
                      "| | vs simulated G₀ | vs realised G₀ (sample cov of U) |", "|---|---:|---:|"]
                for key, lab, spec in (
                        ("variances_rel_err_mean", "mean \\|ĝᵢᵢ/gᵢᵢ − 1\\|", ".3f"),
                        ("variances_rel_err_max", "max \\|ĝᵢᵢ/gᵢᵢ − 1\\|", ".3f"),
                        ("covariances_abs_err_mean", "mean \\|ĝᵢⱼ − gᵢⱼ\\| (i<j)", ".3f"),
                        ("correlations_abs_err_mean", "mean \\|r̂ᵢⱼ − rᵢⱼ\\|", ".3f"),
                        ("correlations_abs_err_max", "max \\|r̂ᵢⱼ − rᵢⱼ\\|", ".3f"),
                        ("correlation_of_correlations", "cor(r̂ᵢⱼ, rᵢⱼ) over the 190 pairs", ".3f"),
                        ("frobenius_rel", "‖Ĝ₀ − G₀‖_F / ‖G₀‖_F", ".3f"),
                        ("mean_true_correlation", "mean rᵢⱼ (truth)", ".3f"),
                        ("mean_est_correlation", "mean r̂ᵢⱼ (estimate)", ".3f")):
                    L.append(f"| {lab} | {gc['G0'][key]:{spec}} | {gc['G0_realised'][key]:{spec}} |")
            rb = m.get("residual_by_site")
            if rb:
                L += ["", "### Residual parameters per site", "",
                      "| site | σ² true | σ² est ± SE | ρ_col true | ρ_col est ± SE | ρ_row true | ρ_row est ± SE |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
                for r in rb:
                    L.append(f"| {r['site']} | {r['sigma2_true']:.2f} | {fmt(r['sigma2'], '.2f')} ± "
                             f"{fmt(r['sigma2_se'], '.2f')} | {r['rho_col_true']:.2f} | "
                             f"{fmt(r['rho_col'], '.2f')} ± {fmt(r['rho_col_se'], '.2f')} | "
                             f"{r['rho_row_true']:.2f} | {fmt(r['rho_row'], '.2f')} ± "
                             f"{fmt(r['rho_row_se'], '.2f')} |")
                zs = [(r[k] - r[k + "_true"]) / r[k + "_se"] for r in rb
                      for k in ("sigma2", "rho_col", "rho_row") if r[k] is not None and r[k + "_se"]]
                if zs:
                    zs = np.asarray(zs)
                    L += ["", f"z = (estimate − truth)/SE over the {len(zs)} residual parameters: "
                              f"mean {zs.mean():+.2f}, sd {zs.std(ddof=1):.2f}, "
                              f"{np.mean(np.abs(zs) <= 2):.0%} within 2 SE."]
            L += _start_fit_md(m)
            L += _met_time_split(m)
            L += ["", "### mme iteration log", "", "θ order: FA(2) parameters (loadings, specific "
                  "variances) then per site σ², ρ_col, ρ_row; only the first 8 shown.", ""]
            L += _iteration_log_md(m)
    L += ["", "## How the figures are made", "",
          "- Each part runs in a fresh subprocess; peak RSS = `ru_maxrss` of that process (data, "
          "the fit, then the timings at θ̂; for part 1 also the dense-V fit, its own figure).",
          "- At θ̂, after the fit: `set_values(θ̂)` and `Cholesky.factorize(C)` twice (best "
          "kept) = one numeric factorization; then twice `set_values(θ̂)` + "
          "`Likelihood(system, \"REML\").evaluate(θ̂)` = one REML round (factorization, solves, "
          "selected inverse, score and AI) — as `bench_multitrait.py`, with NumPy/SciPy's "
          "bundled BLAS at 1 thread as inside `mme.fit`.",
          "- The dense-V logLik uses mme's constant (−½(n − p) log 2π included), so the two "
          "logLiks are directly comparable.",
          "- Before each job the driver waits (up to `--wait-idle` s) for the CPUs to be idle and "
          "records the load average and the other processes' CPU share during the job.", "",
          "## Machine", "", machine_md, ""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-field", action="store_true")
    ap.add_argument("--skip-met", action="store_true")
    ap.add_argument("--met-sites", type=int, default=20)
    ap.add_argument("--met-genotypes", type=int, default=300)
    ap.add_argument("--wait-idle", type=float, default=60.0)
    ap.add_argument("--timeout-minutes", type=float, default=30.0, help="per job")
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_field"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--worker-out")
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)

    if args.worker:
        res = WORKERS[args.worker](args)
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
    results = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "command": "python benchmarks/bench_field.py " + " ".join(sys.argv[1:]),
               "args": vars(args), "loadavg_start": list(os.getloadavg())}
    if not args.skip_field:
        results["field"] = run_job("field", args)
    if not args.skip_met:
        results["met"] = run_job("met", args)
    results["loadavg_end"] = list(os.getloadavg())
    results["total_minutes"] = (time.perf_counter() - t_start) / 60.0
    write_results(results, args.out_prefix, render)


if __name__ == "__main__":
    main()
