"""A Materials-and-Methods paragraph written from a fit (``methods.md``).

Only what the fit and the run know goes in: the model (response, fixed terms,
random terms with their covariance structures, the residual structure, weights),
the data (records used, levels, the pedigree's animals, founders, generations and
inbreeding), the estimation (REML or ML by AI-REML, EM fallback rounds and a
boundary finish if any were taken, the convergence criterion, rounds and logLik),
how standard errors, PEV, reliabilities and the fixed effects' df were computed, and
the software with its versions. References are listed as they apply.
"""
from __future__ import annotations

import importlib.metadata as md
import inspect

import numpy as np

REFS = {
    "henderson": "Henderson, C. R. (1984). Applications of Linear Models in Animal "
                 "Breeding. University of Guelph.",
    "henderson76": "Henderson, C. R. (1976). A simple method for computing the inverse of a "
                   "numerator relationship matrix used in prediction of breeding values. "
                   "Biometrics 32:69-83.",
    "quaas": "Quaas, R. L. (1976). Computing the diagonal elements and inverse of a large "
             "numerator relationship matrix. Biometrics 32:949-953.",
    "ml92": "Meuwissen, T. H. E. & Luo, Z. (1992). Computing inbreeding coefficients in "
            "large populations. Genetics Selection Evolution 24:305-313.",
    "gtc": "Gilmour, A. R., Thompson, R. & Cullis, B. R. (1995). Average information REML: "
           "an efficient algorithm for variance parameter estimation in linear mixed "
           "models. Biometrics 51:1440-1450.",
    "patterson": "Patterson, H. D. & Thompson, R. (1971). Recovery of inter-block information "
                 "when block sizes are unequal. Biometrika 58:545-554.",
    "cholmod": "Chen, Y., Davis, T. A., Hager, W. W. & Rajamanickam, S. (2008). Algorithm "
               "887: CHOLMOD, supernodal sparse Cholesky factorization and update/downdate. "
               "ACM Transactions on Mathematical Software 35:22.",
    "satterthwaite": "Satterthwaite, F. E. (1946). An approximate distribution of estimates "
                     "of variance components. Biometrics Bulletin 2:110-114.",
    "kr": "Kenward, M. G. & Roger, J. H. (1997). Small sample inference for fixed effects "
          "from restricted maximum likelihood. Biometrics 53:983-997.",
    "takahashi": "Takahashi, K., Fagan, J. & Chen, M.-S. (1973). Formation of a sparse bus "
                 "impedance matrix and its application to short circuit study. 8th PICA "
                 "Conference Proceedings, 63-69.",
}


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def software_versions() -> dict:
    """Versions of mme and the libraries it computes with (BLAS from threadpoolctl)."""
    import mme
    out = {"mme": mme.__version__}
    for pkg in ("numpy", "scipy", "pandas", "scikit-sparse", "formulaic"):
        v = _version(pkg)
        if v:
            out[pkg] = v
    try:
        import threadpoolctl
        for lib in threadpoolctl.threadpool_info():
            if lib.get("user_api") == "blas":
                out["BLAS"] = f"{lib.get('internal_api')} {lib.get('version')}"
                break
    except Exception:  # BLAS introspection is best effort
        pass
    return out


def _residual_words(residual: str | None, multi: bool, weights: str | None) -> str:
    r = (residual or ("us(trait)" if multi else "")).replace(" ", "")
    if not r:
        text = "Residuals were independent with a common variance σ²ₑ (R = σ²ₑI)"
    elif r == "us(trait)":
        text = ("Residuals of the traits of one record had an unstructured covariance "
                "matrix R₀ (R = R₀ ⊗ I), records being independent")
    elif r == "diag(trait)":
        text = "Each trait had its own residual variance, uncorrelated between traits"
    elif r.startswith("by(") and ":" not in r:
        text = f"A separate residual variance was fitted for each level of {r[3:-1]}"
    else:
        text = f"The residual covariance had the structure {residual}"
    if weights:
        text += f", scaled by the prior weights in {weights} (Var(eᵢ) = σ²ₑ/wᵢ)"
    return text + "."


def _random_words(fit, info) -> list:
    relmat = set(info.get("relmat") or ())
    structure = info.get("structure") or {}
    covary = info.get("covary") or {}
    out = []
    for b in fit.blocks:
        n = len(b.levels)
        terms = list(b.terms)
        what = (f"random {b.group} effects ({n:,} levels)" if terms == ["(Intercept)"]
                else f"random effects of {', '.join(terms)} within {b.group} ({n:,} levels)")
        if b.group in covary:
            what = (f"the random effects {', '.join(covary[b.group])} joined as '{b.group}' "
                    f"({n:,} levels)")
        K = "I"
        if b.group in relmat or any(t in relmat for t in covary.get(b.group, ())):
            K = "A"
        if b.group in structure:
            g0 = f"a factor-analytic G₀ ({structure[b.group]})"
        elif len(terms) > 1:
            g0 = f"an unstructured {len(terms)} × {len(terms)} G₀"
        else:
            g0 = f"variance σ²_{b.group}"
        cov = f"covariance {g0} ⊗ {K}" if len(terms) > 1 or b.group in structure else \
            f"covariance σ²_{b.group} {K}"
        out.append(f"{what} with {cov}")
    return out


def methods_text(fit, info: dict | None = None) -> str:
    """The paragraph (Markdown) for ``fit``; ``info`` adds what the run knows: data files,
    rows read, pedigree statistics, relmat/covary/structure/residual/weights options,
    ordering, the estimation route."""
    info = dict(info or {})
    from ..engine.reml import TOL_DECREMENT_ABS, fit_variances
    tol = inspect.signature(fit_variances).parameters["tol_ll"].default
    refs = ["henderson", "cholmod"]
    p = []
    mf_resp = fit.formula.split("~")[0].strip()
    fixed = [n for n in fit.fixed_names]
    s = (f"The response {mf_resp} was analysed with the linear mixed model "
         f"`{fit.formula}`, fitted to {fit.nobs:,} records")
    if info.get("rows_read") is not None and info["rows_read"] != fit.nobs \
            and not info.get("multi"):
        s += f" ({info['rows_read']:,} rows read; rows with missing values dropped)"
    s += ". "
    from ..model.formula import parse_formula
    fixed_part = parse_formula(fit.formula).fixed
    s += (f"The fixed part was `{fixed_part}`, with the coefficients {', '.join(fixed)} "
          f"({len(fixed)}"
          + (f"; not estimable: {', '.join(fit.aliased)}" if fit.aliased else "") + "). ")
    rnd = _random_words(fit, info)
    if rnd:
        s += "The model included " + "; ".join(rnd) + ". "
    ped = info.get("pedigree")
    if ped:
        s += (f"A is the numerator relationship matrix of a pedigree of {ped['n']:,} animals "
              f"({ped['founders']:,} founders, {ped['generations']} generations; "
              f"{ped['inbred']:,} inbred, mean inbreeding {ped['mean_F']:.4f}, maximum "
              f"{ped['max_F']:.4f}); its inverse was built directly by Henderson's (1976) rules "
              "with Quaas' (1976) correction for inbreeding, the inbreeding coefficients "
              "computed by the algorithm of Meuwissen & Luo (1992). ")
        refs += ["henderson76", "quaas", "ml92"]
    s += _residual_words(info.get("residual"), info.get("multi", False), info.get("weights"))
    p.append(s)

    kinds = [r.kind for r in fit.history]
    ordering = info.get("ordering")
    solve = (f"Henderson's mixed-model equations were solved by a sparse Cholesky "
             f"factorization (CHOLMOD{', ' + ordering.upper() + ' ordering' if ordering else ''})")
    if not fit.estimated:
        e = (f"{solve} at the given variances (no variance estimation): "
             + ", ".join(f"{r.group}{'' if not r.term1 else ' ' + r.term1}"
                         f"{'' if not r.term2 else ':' + r.term2} = {r.estimate:.6g}"
                         for r in fit.variance_components.itertuples()) + ". ")
    elif not fit.blocks and info.get("route") == "least squares":
        e = f"The residual variance was estimated from the residual sum of squares ({fit.method}). "
    else:
        what = ("Restricted maximum likelihood (REML; Patterson & Thompson 1971)"
                if fit.method == "REML" else "Maximum likelihood (ML)")
        if fit.method == "REML":
            refs.append("patterson")
        refs.append("gtc")
        em = sum(k.startswith("EM") for k in kinds)
        halved = sum("/2^" in k for k in kinds)
        lam = any(k.startswith("Λ") for k in kinds)
        n_rounds = fit.n_iter + info.get("previous_rounds", 0)
        e = (f"{what} estimates of the variance components were obtained by the average-"
             f"information algorithm (AI-REML; Gilmour, Thompson & Cullis 1995), variances "
             f"kept positive and G₀ positive definite"
             + (f", with {halved} step-halved rounds" if halved else "")
             + (f" and {em} EM rounds where the AI step did not increase the likelihood"
                if em else "")
             + f"; {solve}, analysed once and refactorized at each round. "
             f"Convergence was declared when the Newton decrement s′AI⁻¹s (s the score) fell "
             f"below {TOL_DECREMENT_ABS:g}, or below {tol:g} × |log L| together with the change "
             f"in log L; ")
        if fit.converged:
            e += (f"the iterations converged after {n_rounds} rounds"
                  + (f" (resumed from a checkpoint after {info['previous_rounds']})"
                     if info.get("previous_rounds") else "")
                  + f" at log L = {fit.loglik:.4f}. ")
        else:
            e += (f"the iterations had NOT converged after {n_rounds} rounds (log L = "
                  f"{fit.loglik:.4f}). ")
        if lam:
            e += ("AI-REML heading to a singular covariance matrix was finished in the "
                  "relative-factor parameterization (COBYQA). ")
        if fit.singular:
            e += "The fit is singular: a variance component is estimated at the boundary. "
        e += ("Standard errors of the variance components come from the inverse of the "
              "average-information matrix. ")
    if fit.blocks:
        e += ("Prediction-error variances (PEV) of the random effects are the diagonal of the "
              "inverse of the coefficient matrix (selected inversion; Takahashi et al. 1973); "
              "reliability = 1 − PEV/(σ²Kᵢᵢ), with Kᵢᵢ = 1 + Fᵢ for the pedigree term, and "
              "accuracy = √reliability. ")
        refs.append("takahashi")
    df = str(fit.df_method)
    if df.lower().startswith("satterthwaite"):
        e += ("Denominator degrees of freedom of the fixed effects' t tests were computed by "
              "Satterthwaite's (1946) approximation from the asymptotic covariance of the "
              "variance parameters. ")
        refs.append("satterthwaite")
    elif df.lower().startswith("kenward"):
        e += "Degrees of freedom of the fixed effects followed Kenward & Roger (1997). "
        refs.append("kr")
    elif df == "residual":
        e += "The fixed effects' t tests used the residual degrees of freedom (n − p). "
    else:
        e += f"Degrees of freedom of the fixed effects: {df}. "
    p.append(e)

    v = software_versions()
    p.append("Analyses were run with " + f"mme {v.pop('mme')} ("
             + ", ".join(f"{k} {val}" for k, val in v.items()) + ").")
    out = "## Statistical analysis\n\n" + "\n\n".join(p) + "\n\n### References\n\n"
    seen = []
    for r in refs:
        if r not in seen:
            seen.append(r)
    out += "\n".join(f"- {REFS[r]}" for r in sorted(seen, key=lambda r: REFS[r])) + "\n"
    return out


def pedigree_facts(ped) -> dict:
    """n, founders, generations, inbred, mean and max F of an ``mme.Pedigree``."""
    F = ped.inbreeding.to_numpy()
    gens = int(generations(ped).max()) + 1 if ped.n else 0
    return {"n": ped.n, "founders": ped.n_founders, "generations": gens, "inbred": int(np.count_nonzero(F > 0)),
            "mean_F": float(F.mean()) if ped.n else 0.0,
            "max_F": float(F.max()) if ped.n else 0.0, "added": len(ped.added_founders)}


def generations(ped) -> np.ndarray:
    """Generation number of each animal (0 for founders, 1 + the larger of the parents')."""
    s, d = np.asarray(ped.sire), np.asarray(ped.dam)
    g = np.zeros(ped.n, dtype=np.int64)
    hs, hd = s >= 0, d >= 0
    for _ in range(ped.n + 1):   # one pass per generation (the pedigree has no loops)
        new = np.zeros_like(g)
        new[hs] = g[s[hs]] + 1
        new[hd] = np.maximum(new[hd], g[d[hd]] + 1)
        if np.array_equal(new, g):
            break
        g = new
    return g
