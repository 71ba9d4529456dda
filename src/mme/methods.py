"""The Materials-and-Methods paragraph of a fit (``Fit.methods_text()``, the command
line's ``methods.md``).

Everything in it is read from the fit: the model in words and as the formula
(fixed effects with their factors' levels and covariates, random effects with their
covariance structures — I, a pedigree's A, a supplied relationship matrix, an
unstructured or factor-analytic G₀, terms joined by ``covary`` — and the residual
structure: σ²ₑI, prior weights, ``by()``, ``diag(trait)``, ``us(trait)``,
``ar1(col):ar1(row)``), the data (records, levels, the pedigree's animals and
inbreeding), the estimation (REML or ML; AI-REML with step-halving and EM fallback
rounds as they were taken, the boundary finish; the convergence criterion; rounds
and log L), standard errors, PEV and reliabilities, the df method of the fixed
effects' tests (and Kenward–Roger where it was used), and the software with its
versions (mme, NumPy, SciPy, pandas, formulaic, SuiteSparse/CHOLMOD as linked into ``_core``,
the BLAS libraries loaded, via threadpoolctl). References are listed as they apply.

``info`` adds what only a run knows (the command line passes it): rows read, the
pedigree's founders and generations, the weights column's name, rounds taken before
a checkpoint was resumed, the genomic term (G's method, genotyped animals and
markers, tuning and blending, the single-step H⁻¹ or GBLUP's G⁻¹).
"""
from __future__ import annotations

import importlib.metadata as md
import platform

import numpy as np
import pandas as pd

__all__ = ["methods_text", "software_versions", "pedigree_facts", "generations", "REFS"]

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
    "gcv": "Gilmour, A. R., Cullis, B. R. & Verbyla, A. P. (1997). Accounting for natural "
           "and extraneous variation in the analysis of field experiments. Journal of "
           "Agricultural, Biological, and Environmental Statistics 2:269-293.",
    "sct": "Smith, A., Cullis, B. & Thompson, R. (2001). Analyzing variety by environment "
           "data using multiplicative mixed models and adjustments for spatial field trend. "
           "Biometrics 57:1138-1147.",
    "patterson": "Patterson, H. D. & Thompson, R. (1971). Recovery of inter-block information "
                 "when block sizes are unequal. Biometrika 58:545-554.",
    "cholmod": "Chen, Y., Davis, T. A., Hager, W. W. & Rajamanickam, S. (2008). Algorithm "
               "887: CHOLMOD, supernodal sparse Cholesky factorization and update/downdate. "
               "ACM Transactions on Mathematical Software 35:22.",
    "satterthwaite": "Satterthwaite, F. E. (1946). An approximate distribution of estimates "
                     "of variance components. Biometrics Bulletin 2:110-114.",
    "kuznetsova": "Kuznetsova, A., Brockhoff, P. B. & Christensen, R. H. B. (2017). lmerTest "
                  "package: tests in linear mixed effects models. Journal of Statistical "
                  "Software 82(13):1-26.",
    "kr": "Kenward, M. G. & Roger, J. H. (1997). Small sample inference for fixed effects "
          "from restricted maximum likelihood. Biometrics 53:983-997.",
    "vanraden08": "VanRaden, P. M. (2008). Efficient methods to compute genomic predictions. "
                  "Journal of Dairy Science 91:4414-4423.",
    "legarra09": "Legarra, A., Aguilar, I. & Misztal, I. (2009). A relationship matrix "
                 "including full pedigree and genomic information. Journal of Dairy Science "
                 "92:4656-4663.",
    "aguilar10": "Aguilar, I., Misztal, I., Johnson, D. L., Legarra, A., Tsuruta, S. & "
                 "Lawlor, T. J. (2010). Hot topic: A unified approach to utilize phenotypic, "
                 "full pedigree, and genomic information for genetic evaluation of Holstein "
                 "final score. Journal of Dairy Science 93:743-752.",
    "christensen10": "Christensen, O. F. & Lund, M. S. (2010). Genomic prediction when some "
                     "animals are not genotyped. Genetics Selection Evolution 42:2.",
    "chen11": "Chen, C. Y., Misztal, I., Aguilar, I., Legarra, A. & Muir, W. M. (2011). "
              "Effect of different genomic relationship matrices on accuracy and scale. "
              "Journal of Animal Science 89:2673-2679.",
    "takahashi": "Takahashi, K., Fagan, J. & Chen, M.-S. (1973). Formation of a sparse bus "
                 "impedance matrix and its application to short circuit study. 8th PICA "
                 "Conference Proceedings, 63-69.",
}

#: fixed-effect coefficients listed by name up to this many (then only counted)
MAX_NAMED_COEFFICIENTS = 12


# -- software ------------------------------------------------------------------------
def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def suitesparse_version() -> str | None:
    """'SuiteSparse x.y.z (CHOLMOD a.b.c)' of the library ``mme._core`` is linked
    against (its ``SuiteSparse_version``/``cholmod_l_version`` at run time), or None."""
    try:
        from . import _core
        _, (ss, ch) = _core.cholmod_versions()
    except Exception:      # a core built without the binding: leave it out
        return None
    return f"SuiteSparse {ss[0]}.{ss[1]}.{ss[2]} (CHOLMOD {ch[0]}.{ch[1]}.{ch[2]})"


def _blas_libraries() -> list:
    """'OpenBLAS 0.3.21 (system)', ... for each BLAS threadpoolctl finds loaded."""
    try:
        import threadpoolctl
        info = threadpoolctl.threadpool_info()
    except Exception:      # BLAS introspection is best effort
        return []
    names = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "accelerate": "Accelerate",
             "flexiblas": "FlexiBLAS"}
    out = []
    for lib in info:
        if lib.get("user_api") != "blas":
            continue
        path = str(lib.get("filepath") or "").replace("\\", "/")
        owner = next((o for o in ("numpy", "scipy") if f"/{o}.libs/" in path or
                      f"/{o}/.dylibs/" in path), None)
        api = names.get(str(lib.get("internal_api")), str(lib.get("internal_api")))
        text = f"{api} {lib.get('version')}" + (f" ({owner}'s)" if owner else " (system)")
        if text not in out:
            out.append(text)
    return out


def software_versions() -> dict:
    """Versions of mme and the libraries it computes with: {'mme': ..., 'Python': ...,
    'numpy': ..., ..., 'SuiteSparse': 'x.y.z (CHOLMOD a.b.c)', 'BLAS': '...'}."""
    import mme
    out = {"mme": mme.__version__, "Python": platform.python_version()}
    for pkg in ("numpy", "scipy", "pandas", "formulaic"):
        v = _version(pkg)
        if v:
            out[pkg] = v
    ss = suitesparse_version()
    if ss:
        name, rest = ss.split(" ", 1)
        out[name] = rest
    blas = _blas_libraries()
    if blas:
        out["BLAS"] = ", ".join(blas)
    return out


# -- the pedigree ----------------------------------------------------------------------
def pedigree_facts(ped) -> dict:
    """n, founders, generations, inbred, mean and max F of an ``mme.Pedigree``."""
    F = ped.inbreeding.to_numpy()
    gens = int(generations(ped).max()) + 1 if ped.n else 0
    return {"n": ped.n, "founders": ped.n_founders, "generations": gens,
            "inbred": int(np.count_nonzero(F > 0)),
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


def _pedigree_from_block(b) -> dict:
    """What a pedigree term's block knows of its pedigree: animals and their F (1 + F is
    the diagonal of A, kept as ``Kdiag``)."""
    F = np.asarray(b.Kdiag, float) - 1.0
    return {"n": len(b.levels), "inbred": int(np.count_nonzero(F > 1e-12)),
            "mean_F": float(F.mean()), "max_F": float(F.max())}


# -- the model -------------------------------------------------------------------------
def _rounds(n: int) -> str:
    return f"{n} round{'s' if n != 1 else ''}"


def _and(items: list) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _fixed_words(fit) -> str:
    design = fit.internals.design
    from .model.formula import parse_formula
    mf = parse_formula(fit.formula)
    data = design.data
    factors, covariates = [], []
    try:
        variables = sorted(design.fixed_spec.required_variables)
    except Exception:      # a spec without the attribute: name no variables
        variables = []
    for v in variables:
        if v not in data.columns:
            continue
        col = data[v]
        if v == "trait" and mf.multi_response:
            factors.append(f"trait ({len(mf.responses)} levels)")
        elif (isinstance(col.dtype, pd.CategoricalDtype)
              or not np.issubdtype(np.asarray(col).dtype, np.number) or col.dtype == bool):
            factors.append(f"{v} ({col.nunique():,} levels)")
        else:
            covariates.append(v)
    what = []
    if factors:
        what.append("the factor" + ("s " if len(factors) > 1 else " ") + _and(factors))
    if covariates:
        what.append("the covariate" + ("s " if len(covariates) > 1 else " ")
                    + _and(covariates))
    names = list(fit.fixed_names)
    coefs = (", ".join(names) if len(names) <= MAX_NAMED_COEFFICIENTS
             else ", ".join(names[:MAX_NAMED_COEFFICIENTS - 1]) + ", …")
    s = f"The fixed part `{mf.fixed}`"
    if what:
        s += " comprises " + " and ".join(what) + ", with"
    else:
        s += " has"
    s += f" {len(names)} coefficient{'s' if len(names) != 1 else ''}: {coefs}"
    if fit.aliased:
        s += f" (not estimable, aliased: {', '.join(fit.aliased)})"
    return s + ". "


def _random_words(fit, info: dict, refs: list) -> tuple:
    """(sentences on the random terms, pedigree facts dict or None)."""
    from .model.formula import parse_formula
    groups = {t.group for t in parse_formula(fit.formula).random}
    blocks = fit.internals.design.blocks
    covary = info.get("covary") or {}
    genomic = info.get("genomic")
    out, ped = [], None
    for b in blocks:
        n = len(b.levels)
        terms = list(b.terms)
        joined = b.group not in groups
        if joined:
            members = covary.get(b.group) or terms
            what = (f"the random effects {', '.join(members)} joined as '{b.group}' "
                    f"({n:,} levels, correlated)")
        elif terms == ["(Intercept)"]:
            what = f"random {b.group} effects ({n:,} levels)"
        else:
            what = f"random effects of {', '.join(terms)} within {b.group} ({n:,} levels)"
        if b.k_is_identity:
            K = "I"
        elif genomic and genomic.get("term") == b.group:
            K = "H" if genomic["model"] == "single-step" else "G"
        elif b.Kdiag is not None:
            K = "A"
            ped = ped or _pedigree_from_block(b)
        else:
            K = "K"
        d = len(terms)
        if b.structure:
            k = b.structure.strip()[3:-1]
            g0 = (f"a factor-analytic G₀ = ΛΛ′ + Ψ of {k} factor{'s' if k != '1' else ''} "
                  f"(FA{k}; Smith, Cullis & Thompson 2001)")
            refs.append("sct")
            cov = f"covariance G₀ ⊗ {K}, {g0}"
        elif d > 1:
            cov = f"covariance G₀ ⊗ {K}, G₀ an unstructured {d} × {d} matrix"
        else:
            cov = f"covariance σ²_{b.group} {K}"
        if K == "K":
            cov += " (K the relationship matrix supplied through its inverse)"
        elif K == "H":
            cov += " (H the single-step relationship matrix of pedigree and genotypes)"
        elif K == "G":
            cov += " (G the genomic relationship matrix)"
        out.append(f"{what} with {cov}")
    return out, ped


def _residual_words(fit, info: dict, refs: list) -> str:
    res = fit.internals.design.residual
    weights = res.weights is not None
    wname = info.get("weights")
    if res.kind == "ar1ar1":
        fields = res.fields
        c, r = res.factors
        if res.by:
            text = (f"The residuals of each level of {res.by} ({len(fields)} fields) had the "
                    f"covariance σ²ₑ AR1(ρ_c) ⊗ AR1(ρ_r) over the field's columns ({c}) and rows "
                    f"({r}), with their own σ²ₑ, ρ_c and ρ_r")
        else:
            f0 = fields[0]
            text = (f"The residuals had the separable autoregressive covariance σ²ₑ AR1(ρ_c) ⊗ "
                    f"AR1(ρ_r) over the {f0.n_c} columns ({c}) × {f0.n_r} rows ({r}) of the "
                    "field")
        text += " (Gilmour, Cullis & Verbyla 1997)"
        if res.n_missing:
            text += f"; {res.n_missing:,} plots without a record were carried as missing values"
        refs.append("gcv")
        return text + "."
    if res.kind == "scalar":
        text = "Residuals were independent with a common variance σ²ₑ (R = σ²ₑI)"
    elif res.kind == "us":
        text = (f"The residuals of the {res.t} traits of one record had an unstructured "
                f"{res.t} × {res.t} covariance matrix R₀ (R = ⊕ R₀ over records, each "
                "restricted to the traits it has), records being independent")
    elif res.factor == "trait":
        text = ("Each trait had its own residual variance, the traits' residuals "
                "uncorrelated")
    else:
        text = (f"A separate residual variance was fitted for each of the {res.t} levels of "
                f"{res.factor} (R = ⊕ σ²ₑ,ⱼ I)")
    if weights:
        text += (", scaled by prior weights" + (f" (column {wname})" if wname else "")
                 + ": Var(eᵢ) = σ²ₑ/wᵢ")
    return text + "."


def _genomic_words(g: dict, refs: list) -> str:
    """The sentences on G and the single-step H⁻¹ (``info["genomic"]``: model, term,
    n_genotyped, n_markers, blend, blend_with, tune, tau, omega)."""
    refs.append("vanraden08")
    n, m = g["n_genotyped"], g["n_markers"]
    text = (f"G is the genomic relationship matrix of the {n:,} genotyped animals, computed "
            f"from {m:,} markers coded 0/1/2 by VanRaden's (2008) method 1 (G = ZZ′/2Σpₖ(1 − "
            "pₖ), Z the genotypes centred by twice the allele frequencies p estimated from "
            "them)")
    steps = []
    if g.get("tune"):
        how = ("the averages of its diagonal and of its off-diagonal elements equal to "
               "those of A₂₂" if g["tune"] == "diag-offdiag" else
               "the average of its elements equal to that of A₂₂")
        steps.append(f"tuned to the pedigree relationships A₂₂ of the genotyped animals "
                     f"({how}; Chen et al. 2011)")
        if g["tune"] == "diag-offdiag":
            refs.append("chen11")
    if g.get("blend"):
        w = g["blend"]
        other = "A₂₂" if g.get("blend_with") == "A22" else "I"
        steps.append(f"blended as G ← {1 - w:g} G + {w:g} {other}")
    if steps:
        text += ", " + " and then ".join(steps)
    text += ". "
    if g["model"] == "single-step":
        tau, omega = g.get("tau", 1.0), g.get("omega", 1.0)
        scaled = (tau, omega) != (1.0, 1.0)
        text += ("The single-step relationship matrix H (Legarra, Aguilar & Misztal 2009) "
                 "combines A and G; its inverse was built directly as H⁻¹ = A⁻¹ + "
                 + ("[0 0; 0 τG⁻¹ − ωA₂₂⁻¹]" if scaled else "[0 0; 0 G⁻¹ − A₂₂⁻¹]")
                 + " (Aguilar et al. 2010; Christensen & Lund 2010), the block on the "
                 "genotyped animals"
                 + (f", with τ = {tau:g} and ω = {omega:g}" if scaled else "") + ". ")
        refs += ["legarra09", "aguilar10", "christensen10"]
    else:
        text += ("Its inverse was computed by a dense Cholesky factorization (GBLUP, "
                 "genotyped animals only). ")
    return text


# -- the paragraph ---------------------------------------------------------------------
def methods_text(fit, info: dict | None = None) -> str:
    """The Materials-and-Methods section (Markdown) for ``fit``.

    ``info`` (optional) adds what a run knows beyond the fit: ``rows_read``,
    ``pedigree`` (``pedigree_facts`` of the pedigree: founders and generations),
    ``weights`` (the column's name), ``covary`` (the joined terms' names),
    ``previous_rounds`` (REML rounds before a resumed checkpoint), ``genomic`` (the
    genomic term: model "single-step" or "gblup", term, n_genotyped, n_markers, blend,
    blend_with "A22" or "I", tune, tau, omega).
    """
    from .engine.estimate import BOUNDARY, LEAST_SQUARES
    from .engine.reml import BOUND_REL, TOL_DECREMENT_ABS, fit_variances
    import inspect
    info = dict(info or {})
    tol = inspect.signature(fit_variances).parameters["tol_ll"].default
    refs = (["henderson"] if fit.blocks else []) + ["cholmod"]
    est = fit.internals.estimate
    from .model.formula import parse_formula
    mf = parse_formula(fit.formula)
    multi = mf.multi_response

    # the model and the data
    if multi:
        s = (f"The responses {', '.join(mf.responses)} were analysed jointly with the "
             f"multi-trait linear mixed model `{fit.formula}`, fitted to {fit.nobs:,} "
             "observations (one per trait recorded on a row)")
    else:
        s = (f"The response {mf.response} was analysed with the linear mixed model "
             f"`{fit.formula}`, fitted to {fit.nobs:,} records")
        if info.get("rows_read") is not None and info["rows_read"] != fit.nobs:
            s += f" ({info['rows_read']:,} rows read; rows with missing values dropped)"
    s += ". " + _fixed_words(fit)
    rnd, ped_block = _random_words(fit, info, refs)
    if rnd:
        s += "The model included " + "; ".join(rnd) + ". "
    ped = info.get("pedigree") or ped_block
    if ped:
        more = (f"{ped['founders']:,} founders, {ped['generations']} generations; "
                if "founders" in ped else "")
        s += (f"A is the numerator relationship matrix of a pedigree of {ped['n']:,} animals "
              f"({more}{ped['inbred']:,} inbred, mean inbreeding {ped['mean_F']:.4f}, maximum "
              f"{ped['max_F']:.4f}); its inverse was built directly by Henderson's (1976) rules "
              "with Quaas' (1976) correction for inbreeding, the inbreeding coefficients "
              "computed by the algorithm of Meuwissen & Luo (1992). ")
        refs += ["henderson76", "quaas", "ml92"]
    if info.get("genomic"):
        s += _genomic_words(info["genomic"], refs)
    s += _residual_words(fit, info, refs)
    paragraphs = [s]

    # the estimation
    kinds = [r.kind for r in fit.history]
    ordering = info.get("ordering") or getattr(fit.internals.mme, "ordering", None)
    order_words = {"amd": "with an AMD ordering", "metis": "with a METIS ordering",
                   "nesdis": "with a nested-dissection ordering",
                   "default": "with its default ordering", "natural": "without reordering"}
    equations = ("Henderson's (1984) mixed-model equations" if fit.blocks
                 else "The normal equations")
    solve = (f"{equations} were solved by a sparse Cholesky factorization (CHOLMOD"
             + (f" {order_words.get(ordering, 'with the ' + str(ordering) + ' ordering')}"
                if ordering else "") + ")")
    if not fit.estimated:
        e = (f"{solve} at the given variances (BLUP at known variances; no variance "
             "estimation, so no standard errors of the variances or of functions of them "
             "such as heritability): "
             + ", ".join(f"{r.group}{'' if not r.term1 else ' ' + r.term1}"
                         f"{'' if not r.term2 else ':' + r.term2} = {r.estimate:.6g}"
                         for r in fit.variance_components.itertuples()) + ". ")
    elif est.route == LEAST_SQUARES:
        e = (f"{solve}. The residual variance was estimated from the residual sum of squares"
             + (" divided by n − p" if fit.method == "REML" else " divided by n (ML)") + ". "
             f"The log-likelihood reported, log L = {fit.loglik:.4f}, is that of the linear "
             "model at its maximum (σ² = RSS/n; p + 1 parameters), as R's logLik(lm). ")
    else:
        what = ("Restricted maximum likelihood (REML; Patterson & Thompson 1971)"
                if fit.method == "REML" else "Maximum likelihood (ML)")
        if fit.method == "REML":
            refs.append("patterson")
        refs.append("gtc")
        em = sum(k.startswith("EM") for k in kinds)
        halved = sum("/2^" in k for k in kinds)
        n_prev = int(info.get("previous_rounds") or 0)
        n_rounds = fit.n_iter + n_prev
        e = (f"{what} estimates of the variance parameters were obtained by the "
             "average-information algorithm (AI-REML; Gilmour, Thompson & Cullis 1995) from "
             "moment starting values: each round a Newton step with the average-information "
             "matrix (variances on the log scale), halved until log L did not decrease, and "
             "an EM step in its place where halving failed (no step that lowered log L was "
             "accepted); variances were kept at or above a lower bound fixed for the fit "
             f"({BOUND_REL:g} of the largest starting value; a variance whose Newton step crossed "
             "zero was tried at that bound, the other parameters' step taken given it, and "
             "a variance at the bound is reported as 0) and "
             f"G₀ positive definite. {solve}, analysed once and refactorized at each round. "
             "Convergence was declared when the Newton decrement s′AI⁻¹s (s the score) fell "
             f"below {TOL_DECREMENT_ABS:g}, or below {tol:g} × |log L| together with the "
             "change in log L. ")
        if fit.converged:
            e += (f"The iterations converged after {_rounds(n_rounds)}"
                  + (f" (resumed from a checkpoint after {n_prev})" if n_prev else "")
                  + f" at log L = {fit.loglik:.4f}")
        else:
            e += (f"The iterations had NOT converged after {_rounds(n_rounds)} (log L = "
                  f"{fit.loglik:.4f})")
        steps = ([f"{halved} with a halved step"] if halved else []) + (
            [f"{em} EM fallback round{'s' if em != 1 else ''}"] if em else [])
        e += (f" ({'; '.join(steps)})" if steps else
              (" (every round a full AI step)" if fit.n_iter else "")) + ". "
        if est.route == BOUNDARY or any(k.startswith("Λ") for k in kinds):
            e += ("AI-REML heading to a singular covariance matrix was finished in the "
                  "relative-factor parameterization (COBYQA). ")
        if fit.singular:
            e += "The fit is singular: a variance component is estimated at the boundary. "
        e += ("Standard errors of the variance parameters come from the inverse of the "
              "average-information matrix. ")
    if fit.blocks:
        e += ("Prediction-error variances (PEV) of the random effects are the diagonal of the "
              "inverse of the coefficient matrix (selected inversion; Takahashi et al. 1973); "
              "reliability = 1 − PEV/(σ²Kᵢᵢ)"
              + (", with Kᵢᵢ = 1 + Fᵢ for the pedigree term," if ped_block else "")
              + " and accuracy = √reliability"
              + (f" (neither is given for the {info['genomic']['term']} effects, whose Kᵢᵢ "
                 "were not computed)" if info.get("genomic") else "") + ". ")
        refs.append("takahashi")
    df = str(fit.df_method)
    if df.lower().startswith("satterthwaite"):
        e += ("Denominator degrees of freedom of the fixed effects' t tests were computed by "
              "Satterthwaite's (1946) approximation from the asymptotic covariance of the "
              "variance parameters (the inverse observed information), as in lmerTest "
              "(Kuznetsova, Brockhoff & Christensen 2017).")
        refs += ["satterthwaite", "kuznetsova"]
    elif df == "residual":
        e += "The fixed effects' t tests used the residual degrees of freedom (n − p)."
    else:
        e += f"Degrees of freedom of the fixed effects' tests: {df}."
    if fit.internals.kenward_roger_cache:
        e += (" Estimated marginal means, their contrasts and F tests used the Kenward & "
              "Roger (1997) adjusted covariance of the fixed effects and its degrees of "
              "freedom.")
        refs.append("kr")
    paragraphs.append(e)

    v = software_versions()
    paragraphs.append("Analyses were run with " + f"mme {v.pop('mme')} ("
                      + ", ".join(f"{k} {val}" for k, val in v.items()) + ").")
    out = "## Statistical analysis\n\n" + "\n\n".join(paragraphs) + "\n\n### References\n\n"
    seen = list(dict.fromkeys(refs))
    out += "\n".join(f"- {REFS[r]}" for r in sorted(seen, key=lambda r: REFS[r])) + "\n"
    return out
