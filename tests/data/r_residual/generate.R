# Reference fits for residual (R-side) structures: prior weights, a residual variance per
# level of a factor (nlme varIdent), and an unstructured residual covariance between two
# traits (nlme corSymm x varIdent), alone and with a 2 x 2 genetic (sire) covariance.
#
# Usage (from the repository root):  Rscript tests/data/r_residual/generate.R [OUTDIR]
# OUTDIR defaults to the directory of this script. Needs lme4, lmerTest, pbkrtest, nlme,
# emmeans, jsonlite. Every data set is simulated here (set.seed per case).
#
# Each case writes OUTDIR/<case>.csv (the data exactly as fitted: every model is fitted to
# the CSV as read back, so R and Python see the same numbers; for the two-trait cases this is
# the long form, one row per observed trait value, and <case>_wide.csv has one row per unit
# with an empty cell for a missing trait) and OUTDIR/<case>.json with full precision
# (digits = NA): the model calls as text, REML/ML, the factor columns, the R/package
# versions, the simulated true values and the estimates.
#
# Checks made here (recorded in each JSON under "checks"; the script stops if one fails):
# * every log-likelihood is recomputed from the estimates with a dense V (n x n):
#   REML  l = -1/2 [(n - p) log 2 pi + log|V| + log|X'V^-1 X| + r'V^-1 r]
#   ML    l = -1/2 [n log 2 pi + log|V| + r'V^-1 r],  r = y - X beta_hat;
#   the same dense V gives the fixed-effect SEs sqrt(diag (X'V^-1X)^-1) and the BLUPs
#   G Z'V^-1 r, compared with R's.
# * weights: lme4 and pbkrtest. pbkrtest 0.5.2 (and so lmerTest's ddf = "Kenward-Roger")
#   IGNORES prior weights: .get_SigmaG() builds Sigma = sum_k gamma_k G_k + sigma^2 I with an
#   identity residual term, while Phi = vcov(m) is the weighted one. The KR reference is
#   therefore computed on the equivalent UNWEIGHTED model y* = sqrt(w) y, X* = sqrt(w) X,
#   random term (0 + s | g) with s = sqrt(w) (same REML criterion up to the constant
#   1/2 sum log w, same estimates; KR is invariant under this fixed linear transformation of
#   the data). pbkrtest's numbers on the weighted fit are kept, labelled as ignoring weights.
#   Checked a second way: pbkrtest:::vcovAdj_internal on the weighted model with the right
#   dV/dsigma^2 = W^-1 gives the same Phi_A (to 1e-10).
# * nlme: the optimum is re-found (a) by nlme from perturbed starting values and (b) by
#   maximising the dense log-likelihood above directly (BFGS then Nelder-Mead polish, from
#   nlme's estimates); the spread of log-likelihoods and variance parameters is recorded under
#   "reproducibility" and sets the tolerances of tests/test_residual_reference.py.
suppressMessages({
  library(lme4); library(lmerTest); library(pbkrtest); library(nlme); library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
script_dir <- local({
  f <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(f)) dirname(normalizePath(f)) else getwd()
})
outdir <- if (length(args) >= 1) args[1] else script_dir
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  lmerTest = as.character(packageVersion("lmerTest")),
  pbkrtest = as.character(packageVersion("pbkrtest")),
  nlme = as.character(packageVersion("nlme")),
  Matrix = as.character(packageVersion("Matrix")),
  emmeans = as.character(packageVersion("emmeans")),
  jsonlite = as.character(packageVersion("jsonlite"))
)

write_ref <- function(out, name) {
  writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null",
                    null = "null"),
             file.path(outdir, paste0(name, ".json")))
}

read_factors <- function(path, factors) {
  d <- read.csv(path, stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

# write the data, read them back with the factor columns as factors (levels sorted)
roundtrip <- function(data, name, factors) {
  csv <- file.path(outdir, paste0(name, ".csv"))
  write.csv(data, csv, row.names = FALSE, na = "")
  read_factors(csv, factors)
}

check <- function(ok, what) {
  if (!isTRUE(ok)) stop("check failed: ", what)
  invisible(TRUE)
}

# named vectors as JSON objects ({"A": 0, "B": 1}); jsonlite would drop the names
keep_names <- function(x) lapply(x, function(v)
  if (is.atomic(v) && !is.null(names(v)) && is.null(dim(v))) as.list(v) else v)

call_text <- function(cl) paste(deparse(cl, width.cutoff = 500L), collapse = " ")

# --------------------------------------------------------------------- dense algebra --
# log-likelihood (REML or ML) of y ~ N(X beta, V) at V, with beta the GLS estimate
dense_fit <- function(y, X, V, reml) {
  n <- length(y); p <- ncol(X)
  L <- chol(V)                                  # V = L'L
  Xs <- backsolve(L, X, transpose = TRUE)       # L'^-1 X
  ys <- backsolve(L, y, transpose = TRUE)
  XtVX <- crossprod(Xs)
  beta <- solve(XtVX, crossprod(Xs, ys))
  rs <- ys - Xs %*% beta
  logdetV <- 2 * sum(log(diag(L)))
  quad <- sum(rs^2)
  if (reml) {
    ll <- -0.5 * ((n - p) * log(2 * pi) + logdetV +
                  as.numeric(determinant(XtVX, logarithm = TRUE)$modulus) + quad)
  } else {
    ll <- -0.5 * (n * log(2 * pi) + logdetV + quad)
  }
  r <- y - X %*% beta
  list(loglik = ll, beta = drop(beta), vcov = solve(XtVX),
       Vinv_r = drop(backsolve(L, backsolve(L, r, transpose = TRUE))))
}

# block-diagonal residual covariance over units: unit u's observed traits tidx get R0[o, o]
block_R <- function(unit, tidx, R0) {
  n <- length(unit)
  R <- matrix(0, n, n)
  for (u in unique(unit)) {
    i <- which(unit == u)
    R[i, i] <- R0[tidx[i], tidx[i], drop = FALSE]
  }
  R
}

# 2 x 2 covariance from (log sd1, log sd2, atanh rho)
cov2 <- function(t) {
  s <- exp(t[1:2]); r <- tanh(t[3])
  matrix(c(s[1]^2, r * s[1] * s[2], r * s[1] * s[2], s[2]^2), 2, 2)
}
cov2_par <- function(S) c(log(sqrt(diag(S))), atanh(S[1, 2] / sqrt(S[1, 1] * S[2, 2])))

# maximise f (a log-likelihood) from par0: BFGS, then Nelder-Mead, then BFGS again
polish <- function(f, par0) {
  o <- optim(par0, function(p) -f(p), method = "BFGS",
             control = list(reltol = 1e-15, maxit = 10000, ndeps = rep(1e-5, length(par0))))
  o <- optim(o$par, function(p) -f(p), method = "Nelder-Mead",
             control = list(reltol = 1e-15, maxit = 20000))
  o <- optim(o$par, function(p) -f(p), method = "BFGS",
             control = list(reltol = 1e-15, maxit = 10000, ndeps = rep(1e-6, length(par0))))
  list(par = o$par, loglik = -o$value)
}

rel_diff <- function(a, b) max(abs(a - b) / pmax(abs(b), 1e-300))

# nlme's lme with its default tolerances (msTol = 1e-7, tolerance = 1e-6) stops short of the
# optimum: on bivariate_sire, lmeControl(opt = "optim", maxIter = 200, msMaxIter = 200) ends
# 1.8e-5 below the maximum of the REML log-likelihood (2.3e-4 from another start), G0 0.15 %
# off. The reference fits use tight tolerances, with which three starts agree to ~1e-11.
# The fits with the looser controls are recorded under reproducibility$other_controls.
CTRL_TIGHT_TEXT <- paste("lmeControl(opt = 'optim', maxIter = 200, msMaxIter = 1000,",
                         "msTol = 1e-14, tolerance = 1e-12, reltol = 1e-14)")
ctrl_tight <- lmeControl(opt = "optim", maxIter = 200, msMaxIter = 1000, msTol = 1e-14,
                         tolerance = 1e-12, reltol = 1e-14)
other_ctrls <- list(
  "lmeControl(opt = 'optim', maxIter = 200, msMaxIter = 200)" =
    lmeControl(opt = "optim", maxIter = 200, msMaxIter = 200),
  "lmeControl() (nlminb, defaults)" = lmeControl())

# ---------------------------------------------------------------- 1. weights_lmer --
# Unbalanced: 12 groups of unequal size, 3 treatments with unequal frequencies, a
# covariate, prior weights w in [0.5, 3] (Var(e_i) = sigma^2 / w_i).
weights_case <- function() {
  name <- "weights_lmer"
  set.seed(20240701)
  n <- 150; ng <- 12
  truth <- list(intercept = 10, trt = c(A = 0, B = 1.0, C = -1.5), x = 0.5,
                sigma2_g = 1.44, sigma2 = 2.25)
  g <- sample(ng, n, replace = TRUE, prob = seq(1, 3, length.out = ng))
  trt <- sample(c("A", "B", "C"), n, replace = TRUE, prob = c(0.5, 0.3, 0.2))
  x <- round(rnorm(n, 10, 3), 2)
  w <- round(runif(n, 0.5, 3), 2)
  u <- rnorm(ng, 0, sqrt(truth$sigma2_g))
  y <- truth$intercept + truth$trt[trt] + truth$x * x + u[g] +
    rnorm(n, 0, sqrt(truth$sigma2)) / sqrt(w)
  dat <- data.frame(g = sprintf("G%02d", g), trt = trt, x = x, w = w, y = round(unname(y), 4))
  dat <- dat[order(dat$g, dat$trt, dat$x), ]
  factors <- c("g", "trt")
  d <- roundtrip(dat, name, factors)
  truth$u <- setNames(u, sprintf("G%02d", seq_len(ng)))

  form <- y ~ trt + x + (1 | g)
  ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
  # the equivalent unweighted model, for pbkrtest (see the header)
  Xw <- model.matrix(~ trt + x, d)
  xnames <- colnames(Xw)
  Xs <- Xw * sqrt(d$w)
  colnames(Xs) <- paste0("X", seq_len(ncol(Xs)))
  dt <- data.frame(ys = d$y * sqrt(d$w), Xs, s = sqrt(d$w), g = d$g)
  form_t <- as.formula(paste("ys ~ 0 +", paste(colnames(Xs), collapse = " + "),
                             "+ (0 + s | g)"))

  one <- function(reml) {
    m <- lmer(form, data = d, weights = w, REML = reml, control = ctrl)
    mt <- lmer(form_t, data = dt, REML = reml, control = ctrl)
    cs <- summary(m, ddf = "Satterthwaite")$coefficients
    cst <- summary(mt, ddf = "Satterthwaite")$coefficients
    vc <- as.data.frame(VarCorr(m))
    sig2 <- sigma(m)^2; sg2 <- vc$vcov[1]
    # checks: the transformed model is the same model; dense logLik, SEs, BLUPs
    slw <- sum(log(d$w))
    check(abs(as.numeric(logLik(m)) - as.numeric(logLik(mt)) - 0.5 * slw) < 1e-6,
          "weighted vs transformed logLik")
    check(rel_diff(unname(fixef(mt)), unname(fixef(m))) < 1e-5, "transformed fixef")
    check(rel_diff(as.data.frame(VarCorr(mt))$vcov, vc$vcov) < 1e-4, "transformed VarCorr")
    Z <- model.matrix(~ 0 + g, d)
    V <- sg2 * tcrossprod(Z) + sig2 * diag(1 / d$w)
    df_ <- dense_fit(d$y, Xw, V, reml)
    re <- ranef(m, condVar = TRUE)
    blup_dense <- drop(sg2 * crossprod(Z, df_$Vinv_r))
    chk <- list(
      loglik_dense = df_$loglik,
      loglik_dense_minus_R = df_$loglik - as.numeric(logLik(m)),
      loglik_transformed_unweighted = as.numeric(logLik(mt)),
      se_dense_rel = rel_diff(sqrt(diag(df_$vcov)), unname(cs[, "Std. Error"])),
      blup_dense_maxabs = max(abs(blup_dense - re$g[, 1])),
      satterthwaite_df_transformed_rel = rel_diff(unname(cst[, "df"]), unname(cs[, "df"])))
    # the optimum re-found on the dense log-likelihood, (log sigma_g^2, log sigma^2)
    pol <- polish(function(t) dense_fit(d$y, Xw, exp(t[1]) * tcrossprod(Z) +
                                          exp(t[2]) * diag(1 / d$w), reml)$loglik,
                  log(c(sg2, sig2)))
    chk$dense_optimum_minus_R_logLik <- pol$loglik - as.numeric(logLik(m))
    chk$max_rel_variance_diff_dense_optimum <- max(abs(exp(pol$par) / c(sg2, sig2) - 1))
    check(abs(chk$loglik_dense_minus_R) < 1e-6, "dense logLik (weights)")
    check(chk$se_dense_rel < 1e-4, "dense SE (weights)")
    check(chk$blup_dense_maxabs < 1e-4, "dense BLUP (weights)")
    pv <- attr(re$g, "postVar")
    # lme4's condVar is diag (Z'R^-1 Z + G^-1)^-1 (the definition used for nlme's BLUPs below)
    cvar <- diag(solve(crossprod(Z, Z * (d$w / sig2)) + diag(ncol(Z)) / sg2))
    chk$cond_var_dense_rel <- rel_diff(cvar, pv[1, 1, ])
    check(chk$cond_var_dense_rel < 1e-5, "dense condVar (weights)")
    out <- list(
      formula = "y ~ trt + x + (1 | g)", weights = "w", call = call_text(getCall(m)),
      REML = reml, method = if (reml) "REML" else "ML",
      nobs = nobs(m), logLik = as.numeric(logLik(m)), sum_log_w = slw,
      sigma2 = sig2,
      varcorr = list(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov,
                     sdcor = vc$sdcor),
      fixef = list(term = I(rownames(cs)), estimate = unname(cs[, "Estimate"]),
                   se = unname(cs[, "Std. Error"]), df_satterthwaite = unname(cs[, "df"])),
      vcov = unname(as.matrix(vcov(m))),
      ranef = list(group = "g", term = "(Intercept)", levels = I(rownames(re$g)),
                   blup = unname(re$g[, 1]), cond_var = unname(pv[1, 1, ])),
      checks = chk)
    if (reml) {
      ck <- summary(mt, ddf = "Kenward-Roger")$coefficients
      VA_raw <- pbkrtest::vcovAdj(mt)           # keeps the attributes Lb_ddf needs
      VA <- as.matrix(VA_raw); attributes(VA) <- list(dim = dim(VA))
      ckw <- summary(m, ddf = "Kenward-Roger")$coefficients
      VAw <- as.matrix(pbkrtest::vcovAdj(m)); attributes(VAw) <- list(dim = dim(VAw))
      out$fixef$se_kr <- unname(ck[, "Std. Error"])
      out$fixef$df_kr <- unname(ck[, "df"])
      out$vcov_adj <- unname(VA)
      out$kr_adjustment_rel <- max(abs(VA - out$vcov)) / max(abs(out$vcov))
      out$kr_note <- paste(
        "se_kr, df_kr, vcov_adj: pbkrtest::vcovAdj / lmerTest summary(ddf = 'Kenward-Roger')",
        "on the equivalent unweighted model", deparse(form_t, width.cutoff = 500L),
        "with ys = sqrt(w) y, X* = sqrt(w) X, s = sqrt(w). The *_pbkrtest_ignoring_weights",
        "entries are the same functions applied to the weighted lmer fit directly: pbkrtest",
        "0.5.2 takes the residual covariance as sigma^2 I there (ignores w), so they are NOT",
        "Kenward-Roger for the weighted model.")
      # a second route to the same Phi_A: pbkrtest's own formula (vcovAdj_internal) on the
      # weighted model with the correct derivative of V for sigma^2, dV/dsigma^2 = W^-1
      Gk <- list(Matrix::Matrix(tcrossprod(Z), sparse = TRUE), Matrix::Diagonal(x = 1 / d$w))
      VA2 <- as.matrix(pbkrtest:::vcovAdj_internal(
        vcov(m), list(Sigma = sg2 * Gk[[1]] + sig2 * Gk[[2]], G = Gk, n.ggamma = 2), Xw))
      out$checks$vcov_adj_internal_weighted_rel <- max(abs(VA2 - VA)) / max(abs(VA))
      check(out$checks$vcov_adj_internal_weighted_rel < 1e-7, "KR: two routes to Phi_A")
      # estimated marginal means of trt (emmeans' reference grid: x at its mean) with KR
      # SEs and df: L from emmeans on the weighted fit, Phi_A and Lb_ddf on the transformed
      # model
      em <- emmeans::emmeans(m, "trt", lmer.df = "satterthwaite")
      L <- em@linfct
      out$emmeans_trt_kr <- list(
        specs = "trt", level = I(as.character(summary(em)$trt)),
        linfct = unname(L), emmean = unname(drop(L %*% fixef(m))),
        se_kr = unname(sqrt(diag(L %*% VA %*% t(L)))),
        df_kr = sapply(seq_len(nrow(L)), function(i)
          pbkrtest::Lb_ddf(L[i, , drop = FALSE], as.matrix(vcov(mt)), VA_raw)),
        note = paste("L = emmeans(m, 'trt')@linfct (x at its mean); se_kr = sqrt(diag L",
                     "Phi_A L'), df_kr = pbkrtest::Lb_ddf(L_i, vcov, Phi_A), both from the",
                     "unweighted equivalent model"))
      out$fixef$se_kr_pbkrtest_ignoring_weights <- unname(ckw[, "Std. Error"])
      out$fixef$df_kr_pbkrtest_ignoring_weights <- unname(ckw[, "df"])
      out$vcov_adj_pbkrtest_ignoring_weights <- unname(VAw)
    }
    out
  }
  reml <- one(TRUE); ml <- one(FALSE)

  # lm with the same weights (no random term)
  ml_lm <- lm(y ~ trt + x, data = d, weights = w)
  sl <- summary(ml_lm)
  p <- ml_lm$rank
  lm_out <- list(
    formula = "y ~ trt + x", weights = "w", call = call_text(ml_lm$call),
    nobs = nobs(ml_lm),
    logLik_ML = as.numeric(logLik(ml_lm)), logLik_REML = as.numeric(logLik(ml_lm, REML = TRUE)),
    sigma2 = sl$sigma^2,
    sigma2_ML = sum(d$w * residuals(ml_lm)^2) / nobs(ml_lm),
    df_residual = ml_lm$df.residual,
    coef = list(term = I(names(coef(ml_lm))), estimate = unname(coef(ml_lm)),
                se = unname(sl$coefficients[, "Std. Error"])),
    note = paste("logLik_ML = logLik(lm) (sigma^2 = sigma2_ML = sum w e^2 / n);",
                 "logLik_REML = logLik(lm, REML = TRUE) at sigma2 = summary(lm)$sigma^2 =",
                 "sum w e^2 / (n - p); se are summary(lm)'s (with sigma2), df = n - p."))
  Vlm <- diag(lm_out$sigma2 / d$w)
  check(abs(dense_fit(d$y, Xw, Vlm, TRUE)$loglik - lm_out$logLik_REML) < 1e-8, "lm REML dense")
  check(abs(dense_fit(d$y, Xw, diag(lm_out$sigma2_ML / d$w), FALSE)$loglik -
              lm_out$logLik_ML) < 1e-8, "lm ML dense")

  out <- list(name = name, factors = I(factors), versions = versions,
              notes = "simulated with set.seed(20240701); Var(e_i) = sigma^2 / w_i",
              truth = keep_names(truth), REML = reml, ML = ml, lm = lm_out)
  write_ref(out, name)
  cat(sprintf("%-16s n=%d  REML logLik=%.8f  ML logLik=%.8f  sigma2=%.4f (true %.2f)  ",
              name, nrow(d), reml$logLik, ml$logLik, reml$sigma2, truth$sigma2),
      sprintf("sigma2_g=%.4f (true %.2f)  KR adj=%.3g\n", reml$varcorr$vcov[1], truth$sigma2_g,
              reml$kr_adjustment_rel))
  invisible(out)
}

# --------------------------------------------------------------- 2. varident_lme --
# 3 sites with residual SDs 1, 2, 4; 5 treatments; 4 blocks per site (blockid unique per
# site x block, random); 3 plots missing.
varident_case <- function() {
  name <- "varident_lme"
  set.seed(20240702)
  sites <- c("S1", "S2", "S3"); trts <- paste0("T", 1:5)
  truth <- list(site_mean = c(S1 = 20, S2 = 25, S3 = 30),
                trt = c(T1 = 0, T2 = 1, T3 = 2, T4 = -1, T5 = 0.5),
                sigma2_block = 2.25, residual_sd = c(S1 = 1, S2 = 2, S3 = 4))
  truth$residual_var <- truth$residual_sd^2
  dat <- expand.grid(trt = trts, block = paste0("B", 1:4), site = sites,
                     stringsAsFactors = FALSE)[, c("site", "block", "trt")]
  dat$blockid <- paste0(dat$site, dat$block)
  ub <- setNames(rnorm(12, 0, sqrt(truth$sigma2_block)), unique(dat$blockid))
  dat$y <- round(unname(truth$site_mean[dat$site] + truth$trt[dat$trt] + ub[dat$blockid] +
                          rnorm(nrow(dat), 0, truth$residual_sd[dat$site])), 4)
  dat <- dat[-c(7, 33, 52), ]                   # three plots missing
  truth$u <- ub
  factors <- c("site", "block", "trt", "blockid")
  d <- roundtrip(dat, name, factors)

  fit_lme <- function(method, varStart = NULL, pdStart = NULL, ctrl = ctrl_tight) {
    vf <- if (is.null(varStart)) varIdent(form = ~ 1 | site) else
      varIdent(value = varStart, form = ~ 1 | site)
    rnd <- if (is.null(pdStart)) ~ 1 | blockid else
      list(blockid = pdSymm(matrix(pdStart), form = ~ 1))
    eval(bquote(lme(y ~ site + trt, random = .(rnd), weights = vf, data = d,
                    method = .(method), control = ctrl)))
  }
  fit_gls <- function(method, varStart = NULL) {
    vf <- if (is.null(varStart)) varIdent(form = ~ 1 | site) else
      varIdent(value = varStart, form = ~ 1 | site)
    gls(y ~ site + trt, weights = vf, data = d, method = method,
        control = glsControl(maxIter = 200, msMaxIter = 200))
  }
  X <- model.matrix(~ site + trt, d)
  Z <- model.matrix(~ 0 + blockid, d)

  site_var <- function(m) {
    a <- coef(m$modelStruct$varStruct, unconstrained = FALSE, allCoef = TRUE)
    a <- a[sites]
    list(level = I(sites), coef = unname(a), variance = unname(m$sigma^2 * a^2))
  }
  params <- function(m) {   # variance parameters on the natural scale
    sv <- site_var(m)$variance
    if (inherits(m, "lme")) c(as.numeric(getVarCov(m)), sv) else sv
  }
  dense_V <- function(sb2, sv) {
    R <- diag(sv[match(as.character(d$site), sites)])
    if (is.null(sb2)) R else sb2 * tcrossprod(Z) + R
  }

  summarise <- function(m, reml, starts, others = list()) {
    is_lme <- inherits(m, "lme")
    tt <- summary(m)$tTable
    sv <- site_var(m)
    sb2 <- if (is_lme) as.numeric(getVarCov(m)) else NULL
    V <- dense_V(sb2, sv$variance)
    dfit <- dense_fit(d$y, X, V, reml)
    # polish the optimum on the dense log-likelihood (log variances)
    f <- function(t) dense_fit(d$y, X, dense_V(if (is_lme) exp(t[1]) else NULL,
                                               exp(if (is_lme) t[-1] else t)), reml)$loglik
    pol <- polish(f, log(params(m)))
    # refits from perturbed starting values
    re_ll <- sapply(starts, function(s) as.numeric(logLik(s)))
    re_par <- sapply(starts, params)
    se_vcov <- sqrt(diag(dfit$vcov))     # sqrt(diag (X'V^-1X)^-1) at R's estimates
    adj <- if (reml) 1 else sqrt(length(d$y) / (length(d$y) - ncol(X)))
    chk <- list(
      loglik_dense_minus_R = dfit$loglik - as.numeric(logLik(m)),
      se_dense_rel = rel_diff(sqrt(diag(dfit$vcov)), unname(tt[, "Std.Error"])),
      se_adjusted_rel = rel_diff(se_vcov * adj, unname(tt[, "Std.Error"])),
      beta_dense_rel = rel_diff(dfit$beta, unname(tt[, "Value"])))
    check(abs(chk$loglik_dense_minus_R) < 1e-8, paste("dense logLik", name))
    check(chk$se_adjusted_rel < 1e-6, paste("dense SE", name))
    check(chk$beta_dense_rel < 1e-6, paste("dense beta", name))
    repro <- list(
      n_refits = length(starts),
      refit_logLik = re_ll,
      max_abs_logLik_diff_refits = max(abs(re_ll - as.numeric(logLik(m)))),
      max_rel_variance_diff_refits = max(abs(re_par / params(m) - 1)),
      other_controls = lapply(others, function(o) list(
        logLik_minus_reference = as.numeric(logLik(o)) - as.numeric(logLik(m)),
        max_rel_variance_diff = max(abs(params(o) / params(m) - 1)))),
      dense_optimum_logLik = pol$loglik,
      dense_optimum_minus_R_logLik = pol$loglik - as.numeric(logLik(m)),
      dense_optimum_variances = exp(pol$par),
      max_rel_variance_diff_dense_optimum = max(abs(exp(pol$par) / params(m) - 1)))
    check(repro$dense_optimum_minus_R_logLik > -1e-9, "dense optimum below nlme's")
    out <- list(
      formula = "y ~ site + trt",
      random = if (is_lme) "~1 | blockid" else NULL,
      weights = "varIdent(form = ~1 | site)",
      call = if (is_lme) {
        sprintf("lme(y ~ site + trt, random = ~1 | blockid, weights = varIdent(form = ~1 | site), data = d, method = '%s', control = %s)",
                if (reml) "REML" else "ML", CTRL_TIGHT_TEXT)
      } else {
        "gls(y ~ site + trt, weights = varIdent(form = ~1 | site), data = d, method = 'REML', control = glsControl(maxIter = 200, msMaxIter = 200))"
      },
      REML = reml, method = if (reml) "REML" else "ML",
      nobs = nrow(d), logLik = as.numeric(logLik(m)),
      sigma = m$sigma,
      varident = sv,
      residual_variance = list(level = I(sites), variance = sv$variance),
      fixef = list(term = I(rownames(tt)), estimate = unname(tt[, "Value"]),
                   se = unname(tt[, "Std.Error"]), se_unadjusted = se_vcov,
                   df_nlme = if (is_lme) unname(tt[, "DF"]) else
                     rep(m$dims$N - m$dims$p, nrow(tt)),
                   t = unname(tt[, "t-value"]), p_nlme = unname(tt[, "p-value"])),
      vcov = unname(as.matrix(vcov(m))),
      checks = chk, reproducibility = repro)
    out$se_note <- SE_NOTE
    if (is_lme) {
      re <- ranef(m)
      blup_dense <- drop(sb2 * crossprod(Z, dfit$Vinv_r))
      out$checks$blup_dense_maxabs <- max(abs(blup_dense - re[, 1]))
      check(out$checks$blup_dense_maxabs < 1e-6, "dense BLUP varident")
      out$random_variance <- sb2
      # Var(u | y, beta = beta_hat) = (Z'R^-1 Z + I / sigma_b^2)^-1 (lme4's condVar), dense
      Rinv <- diag(1 / diag(dense_V(NULL, sv$variance)))
      cvar <- diag(solve(crossprod(Z, Rinv %*% Z) + diag(ncol(Z)) / sb2))
      check(identical(sub("^blockid", "", colnames(Z)), rownames(re)), "Z columns varident")
      out$ranef <- list(group = "blockid", term = "(Intercept)", levels = I(rownames(re)),
                        blup = unname(re[, 1]), cond_var_dense = unname(cvar))
      out$ranef_note <- paste("blup: nlme's ranef(m); cond_var_dense: diag (Z'R^-1 Z +",
                              "G^-1)^-1 at nlme's estimates, computed densely in generate.R",
                              "(lme4's condVar definition; nlme does not report it)")
    }
    out
  }

  res <- list()
  for (method in c("REML", "ML")) {
    reml <- method == "REML"
    m <- fit_lme(method)
    starts <- list(fit_lme(method, varStart = c(S2 = 0.8, S3 = 1.5), pdStart = 0.2),
                   fit_lme(method, varStart = c(S2 = 5, S3 = 10), pdStart = 5),
                   fit_lme(method, varStart = c(S2 = 3, S3 = 2), pdStart = 1))
    others <- Filter(Negate(is.null), lapply(other_ctrls, function(ct)
      tryCatch(fit_lme(method, ctrl = ct), error = function(e) NULL)))
    res[[method]] <- summarise(m, reml, starts, others)
    res[[method]]$control <- CTRL_TIGHT_TEXT
  }
  g <- fit_gls("REML")
  res$gls_REML <- summarise(g, TRUE, list(fit_gls("REML", c(S2 = 0.7, S3 = 1.2)),
                                          fit_gls("REML", c(S2 = 6, S3 = 9))))
  out <- list(name = name, factors = I(factors), versions = versions,
              notes = paste("simulated with set.seed(20240702): 3 sites x 4 blocks x 5 treatments",
                            "(rows 7, 33, 52 of the full layout dropped);",
                            "residual variance of site k = sigma^2 * varIdent coef_k^2"),
              truth = keep_names(truth), REML = res$REML, ML = res$ML, gls_REML = res$gls_REML)
  write_ref(out, name)
  for (k in names(res)) {
    r <- res[[k]]
    cat(sprintf("%-16s %-8s n=%d logLik=%.8f  resid var %s  block var %s  refit dlogLik %.2g  dense dlogLik %.2g\n",
                name, k, r$nobs, r$logLik, paste(sprintf("%.3f", r$residual_variance$variance), collapse = "/"),
                if (is.null(r$random_variance)) "-" else sprintf("%.3f", r$random_variance),
                r$reproducibility$max_abs_logLik_diff_refits,
                r$reproducibility$dense_optimum_minus_R_logLik))
  }
  invisible(out)
}

SE_NOTE <- paste(
  "se: summary(m)$tTable's Std.Error; se_unadjusted: sqrt(diag (X'V^-1X)^-1) with V built",
  "densely from R's estimates. For REML they are equal (checked); for ML nlme multiplies",
  "by sqrt(N / (N - p)) (summary.lme's adjustSigma = TRUE; gls puts the factor into",
  "vcov(m) itself), checked; se_unadjusted is the SE on lme4's convention.")

# ----------------------------------------------------------- two-trait data helpers --
# wide (unit, ..., y1, y2) -> long (one row per observed value, y1 before y2 in each unit)
to_long <- function(wide, keep) {
  l <- rbind(data.frame(wide[keep], trait = "y1", tidx = 1L, y = wide$y1),
             data.frame(wide[keep], trait = "y2", tidx = 2L, y = wide$y2))
  l <- l[order(match(l[[keep[1]]], wide[[keep[1]]]), l$tidx), ]
  l <- l[!is.na(l$y), ]
  rownames(l) <- NULL
  l
}

# the two-trait residual covariance from an nlme fit (sigma, varIdent by trait, corSymm)
R0_of <- function(m) {
  a <- coef(m$modelStruct$varStruct, unconstrained = FALSE, allCoef = TRUE)[c("y1", "y2")]
  rho <- as.numeric(coef(m$modelStruct$corStruct, unconstrained = FALSE))
  s <- m$sigma * unname(a)
  R0 <- matrix(c(s[1]^2, rho * s[1] * s[2], rho * s[1] * s[2], s[2]^2), 2, 2,
               dimnames = list(c("y1", "y2"), c("y1", "y2")))
  list(R0 = R0, sigma = m$sigma, varident = a, rho = rho)
}

sym_rows <- function(S, names) {   # the (a, b), a <= b entries of a 2 x 2, as R prints them
  list(term1 = I(c(names[1], names[2], names[1])), term2 = I(c("", "", names[2])),
       estimate = c(S[1, 1], S[2, 2], S[1, 2]))
}

# -------------------------------------------------------------- 3. bivariate_gls --
bivariate_gls_case <- function() {
  name <- "bivariate_gls"
  set.seed(20240703)
  nu <- 80
  truth <- list(intercept = c(y1 = 5, y2 = 10), slope = c(y1 = 1.0, y2 = -0.5),
                R0 = matrix(c(1, 1, 1, 4), 2, 2))     # variances 1 and 4, correlation 0.5
  x <- round(rnorm(nu, 0, 1.5), 3)
  E <- matrix(rnorm(2 * nu), nu, 2) %*% chol(truth$R0)
  truth$R0_sample <- unname(cov(E))    # of the simulated errors, all 80 units
  wide <- data.frame(unit = sprintf("U%02d", seq_len(nu)), x = x,
                     y1 = round(truth$intercept[1] + truth$slope[1] * x + E[, 1], 4),
                     y2 = round(truth$intercept[2] + truth$slope[2] * x + E[, 2], 4))
  miss <- sample(nu, 24)                   # 12 units without y1, 12 others without y2
  wide$y1[miss[1:12]] <- NA; wide$y2[miss[13:24]] <- NA
  write.csv(wide, file.path(outdir, paste0(name, "_wide.csv")), row.names = FALSE, na = "")
  long <- to_long(wide, c("unit", "x"))
  factors <- c("unit", "trait")
  d <- roundtrip(long, name, factors)
  check(identical(levels(d$trait), c("y1", "y2")), "trait levels")

  fit <- function(method, start = NULL) {
    cs <- if (is.null(start)) corSymm(form = ~ tidx | unit) else
      corSymm(value = start$rho, form = ~ tidx | unit)
    vf <- if (is.null(start)) varIdent(form = ~ 1 | trait) else
      varIdent(value = c(y2 = start$ratio), form = ~ 1 | trait)
    gls(y ~ 0 + trait + trait:x, correlation = cs, weights = vf, data = d, method = method,
        control = glsControl(maxIter = 200, msMaxIter = 200))
  }
  X <- model.matrix(~ 0 + trait + trait:x, d)
  res <- list()
  for (method in c("REML", "ML")) {
    reml <- method == "REML"
    m <- fit(method)
    r <- R0_of(m)
    tt <- summary(m)$tTable
    check(identical(rownames(tt), colnames(X)), "gls term names")
    dfit <- dense_fit(d$y, X, block_R(d$unit, d$tidx, r$R0), reml)
    f <- function(t) dense_fit(d$y, X, block_R(d$unit, d$tidx, cov2(t)), reml)$loglik
    pol <- polish(f, cov2_par(r$R0))
    starts <- list(fit(method, list(rho = -0.3, ratio = 0.5)),
                   fit(method, list(rho = 0.9, ratio = 5)))
    re_R0 <- lapply(starts, function(s) R0_of(s)$R0)
    re_ll <- sapply(starts, function(s) as.numeric(logLik(s)))
    se_vcov <- sqrt(diag(dfit$vcov))     # sqrt(diag (X'V^-1X)^-1) at R's estimates
    adj <- if (reml) 1 else sqrt(length(d$y) / (length(d$y) - ncol(X)))
    chk <- list(loglik_dense_minus_R = dfit$loglik - as.numeric(logLik(m)),
                se_dense_rel = rel_diff(sqrt(diag(dfit$vcov)), unname(tt[, "Std.Error"])),
                se_adjusted_rel = rel_diff(se_vcov * adj, unname(tt[, "Std.Error"])),
                beta_dense_rel = rel_diff(dfit$beta, unname(tt[, "Value"])))
    check(abs(chk$loglik_dense_minus_R) < 1e-8, "dense logLik bivariate_gls")
    check(chk$se_adjusted_rel < 1e-6, "dense SE bivariate_gls")
    check(chk$beta_dense_rel < 1e-6, "dense beta bivariate_gls")
    # the R0 scale of an entry: the geometric mean of its two variances
    scale <- sqrt(outer(diag(r$R0), diag(r$R0)))
    repro <- list(
      refit_logLik = re_ll,
      max_abs_logLik_diff_refits = max(abs(re_ll - as.numeric(logLik(m)))),
      max_R0_diff_refits_rel_scale = max(sapply(re_R0, function(S) max(abs(S - r$R0) / scale))),
      dense_optimum_logLik = pol$loglik,
      dense_optimum_minus_R_logLik = pol$loglik - as.numeric(logLik(m)),
      dense_optimum_R0 = unname(cov2(pol$par)),
      max_R0_diff_dense_optimum_rel_scale = max(abs(cov2(pol$par) - r$R0) / scale))
    check(repro$dense_optimum_minus_R_logLik > -1e-9, "dense optimum below gls's")
    res[[method]] <- list(
      formula = "y ~ 0 + trait + trait:x",
      correlation = "corSymm(form = ~tidx | unit)", weights = "varIdent(form = ~1 | trait)",
      call = sprintf("gls(y ~ 0 + trait + trait:x, correlation = corSymm(form = ~tidx | unit), weights = varIdent(form = ~1 | trait), data = d, method = '%s', control = glsControl(maxIter = 200, msMaxIter = 200))", method), REML = reml, method = method,
      nobs = nrow(d), logLik = as.numeric(logLik(m)),
      sigma = r$sigma, varident = list(level = I(c("y1", "y2")), coef = unname(r$varident)),
      rho = r$rho,
      R0 = unname(r$R0),
      residual_rows = sym_rows(r$R0, c("y1", "y2")),
      fixef = list(term = I(rownames(tt)), estimate = unname(tt[, "Value"]),
                   se = unname(tt[, "Std.Error"]), se_unadjusted = se_vcov,
                   t = unname(tt[, "t-value"])),
      se_note = SE_NOTE,
      vcov = unname(as.matrix(vcov(m))),
      checks = chk, reproducibility = repro)
  }
  out <- list(name = name, factors = I(factors), versions = versions,
              notes = paste("simulated with set.seed(20240703): 80 units, 12 without y1,",
                            "12 others without y2. bivariate_gls.csv is the long form",
                            "(unit, x, trait, tidx, y; y1 before y2 in a unit) that was fitted;",
                            "bivariate_gls_wide.csv has one row per unit (unit, x, y1, y2)."),
              wide_csv = paste0(name, "_wide.csv"),
              truth = keep_names(truth),
              REML = res$REML, ML = res$ML)
  write_ref(out, name)
  for (k in names(res)) {
    r <- res[[k]]
    cat(sprintf("%-16s %-5s n=%d logLik=%.8f R0=[%.4f %.4f %.4f] refit dlogLik %.2g  dense dlogLik %.2g\n",
                name, k, r$nobs, r$logLik, r$R0[1, 1], r$R0[1, 2], r$R0[2, 2],
                r$reproducibility$max_abs_logLik_diff_refits,
                r$reproducibility$dense_optimum_minus_R_logLik))
  }
  invisible(out)
}

# ------------------------------------------------------------- 4. bivariate_sire --
bivariate_sire_case <- function() {
  name <- "bivariate_sire"
  set.seed(20240704)
  ns <- 40; no <- 8; n <- ns * no
  G0 <- matrix(c(1, 0.4 * sqrt(2), 0.4 * sqrt(2), 2), 2, 2)   # correlation 0.4
  R0 <- matrix(c(4, 0.3 * 6, 0.3 * 6, 9), 2, 2)               # correlation 0.3
  truth <- list(mean = c(y1 = 10, y2 = 20), G0 = G0, R0 = R0)
  U <- matrix(rnorm(2 * ns), ns, 2) %*% chol(G0)
  E <- matrix(rnorm(2 * n), n, 2) %*% chol(R0)
  sire <- rep(seq_len(ns), each = no)
  wide <- data.frame(sire = sprintf("S%02d", sire), animal = sprintf("A%03d", seq_len(n)),
                     y1 = round(truth$mean[1] + U[sire, 1] + E[, 1], 4),
                     y2 = round(truth$mean[2] + U[sire, 2] + E[, 2], 4))
  miss <- sample(n, 64)                    # 32 animals without y1, 32 others without y2
  wide$y1[miss[1:32]] <- NA; wide$y2[miss[33:64]] <- NA
  write.csv(wide, file.path(outdir, paste0(name, "_wide.csv")), row.names = FALSE, na = "")
  long <- to_long(wide, c("sire", "animal"))
  factors <- c("sire", "animal", "trait")
  d <- roundtrip(long, name, factors)
  check(identical(levels(d$trait), c("y1", "y2")), "trait levels")
  truth$u <- list(sire = I(sprintf("S%02d", seq_len(ns))), y1 = U[, 1], y2 = U[, 2])
  # the covariances of the simulated effects themselves (40 sires: G0 is poorly determined)
  truth$G0_sample <- unname(cov(U)); truth$R0_sample <- unname(cov(E))

  fit <- function(method, start = NULL, ctrl = ctrl_tight) {
    if (is.null(start)) {
      lme(y ~ 0 + trait, random = ~ 0 + trait | sire,
          correlation = corSymm(form = ~ tidx | sire/animal),
          weights = varIdent(form = ~ 1 | trait), data = d, method = method, control = ctrl)
    } else {
      lme(y ~ 0 + trait, random = list(sire = pdSymm(start$G, form = ~ 0 + trait)),
          correlation = corSymm(value = start$rho, form = ~ tidx | sire/animal),
          weights = varIdent(value = c(y2 = start$ratio), form = ~ 1 | trait),
          data = d, method = method, control = ctrl)
    }
  }
  X <- model.matrix(~ 0 + trait, d)
  # Z: one column per (sire, trait), sire-major: S01:y1, S01:y2, S02:y1, ...
  sires <- levels(d$sire)
  Z <- matrix(0, nrow(d), 2 * ns)
  Z[cbind(seq_len(nrow(d)), 2 * (as.integer(d$sire) - 1) + d$tidx)] <- 1
  dense_V <- function(G, R) Z %*% kronecker(diag(ns), G) %*% t(Z) + block_R(d$animal, d$tidx, R)

  G_of <- function(m) {
    G <- unclass(getVarCov(m)); attributes(G) <- list(dim = c(2L, 2L)); G
  }
  res <- list()
  for (method in c("REML", "ML")) {
    reml <- method == "REML"
    m <- fit(method)
    G <- G_of(m); r <- R0_of(m)
    check(identical(rownames(getVarCov(m)), c("traity1", "traity2")), "G0 names")
    # R0 as getVarCov(m, type = "conditional") computes it (corMatrix of the corStruct group
    # scaled by sigma / varWeights), for an animal with both traits. getVarCov itself fails
    # here (nlme 3.1-162 indexes corMatrix() by the sire, while the corStruct groups are
    # sire/animal), so its lines are applied to the animal's group "sire/animal".
    csT <- m$modelStruct$corStruct
    cg <- as.character(getGroups(csT))
    both <- names(which(table(cg) == 2))[1]
    Vc <- corMatrix(csT)[[both]]
    sds <- m$sigma / varWeights(m$modelStruct$varStruct)[cg == both]
    R0_cond <- unname(t(Vc * sds) * sds)
    check(max(abs(R0_cond - unname(r$R0))) < 1e-10, "R0 vs getVarCov(conditional) lines")
    V <- dense_V(G, r$R0)
    dfit <- dense_fit(d$y, X, V, reml)
    tt <- summary(m)$tTable
    re <- ranef(m)
    check(identical(rownames(re), sires) && identical(colnames(re), c("traity1", "traity2")),
          "ranef layout")
    blup_dense <- matrix(kronecker(diag(ns), G) %*% crossprod(Z, dfit$Vinv_r), ns, 2,
                         byrow = TRUE)
    se_vcov <- sqrt(diag(dfit$vcov))     # sqrt(diag (X'V^-1X)^-1) at R's estimates
    adj <- if (reml) 1 else sqrt(length(d$y) / (length(d$y) - ncol(X)))
    chk <- list(loglik_dense_minus_R = dfit$loglik - as.numeric(logLik(m)),
                se_dense_rel = rel_diff(sqrt(diag(dfit$vcov)), unname(tt[, "Std.Error"])),
                se_adjusted_rel = rel_diff(se_vcov * adj, unname(tt[, "Std.Error"])),
                beta_dense_rel = rel_diff(dfit$beta, unname(tt[, "Value"])),
                blup_dense_maxabs = max(abs(blup_dense - as.matrix(re))),
                R0_from_getVarCov_conditional = R0_cond, R0_conditional_group = both)
    check(abs(chk$loglik_dense_minus_R) < 1e-8, "dense logLik bivariate_sire")
    check(chk$se_adjusted_rel < 1e-6, "dense SE bivariate_sire")
    check(chk$beta_dense_rel < 1e-6, "dense beta bivariate_sire")
    check(chk$blup_dense_maxabs < 1e-6, "dense BLUP bivariate_sire")
    Rb <- block_R(d$animal, d$tidx, r$R0)
    cvar <- matrix(diag(solve(crossprod(Z, solve(Rb, Z)) + kronecker(diag(ns), solve(G)))),
                   ns, 2, byrow = TRUE)
    f <- function(t) dense_fit(d$y, X, dense_V(cov2(t[1:3]), cov2(t[4:6])), reml)$loglik
    pol <- polish(f, c(cov2_par(G), cov2_par(r$R0)))
    starts <- list(
      fit(method, list(G = diag(c(3, 0.5)), rho = -0.2, ratio = 0.8)),
      fit(method, list(G = matrix(c(0.1, 0.05, 0.05, 0.3), 2), rho = 0.7, ratio = 2.5)),
      fit(method, list(G = diag(c(0.5, 0.5)), rho = 0, ratio = 1)))
    others <- Filter(Negate(is.null), lapply(other_ctrls, function(ct)
      tryCatch(fit(method, ctrl = ct), error = function(e) NULL)))
    re_ll <- sapply(starts, function(s) as.numeric(logLik(s)))
    sG <- sqrt(outer(diag(G), diag(G))); sR <- sqrt(outer(diag(r$R0), diag(r$R0)))
    repro <- list(
      refit_logLik = re_ll,
      refit_what = c("perturbed start 1", "perturbed start 2", "start G0 = 0.5 I, rho = 0"),
      max_abs_logLik_diff_refits = max(abs(re_ll - as.numeric(logLik(m)))),
      max_G0_diff_refits_rel_scale = max(sapply(starts, function(s) max(abs(G_of(s) - G) / sG))),
      max_R0_diff_refits_rel_scale = max(sapply(starts, function(s)
        max(abs(R0_of(s)$R0 - r$R0) / sR))),
      other_controls = lapply(others, function(o) list(
        logLik_minus_reference = as.numeric(logLik(o)) - as.numeric(logLik(m)),
        max_G0_diff_rel_scale = max(abs(G_of(o) - G) / sG),
        max_R0_diff_rel_scale = max(abs(R0_of(o)$R0 - r$R0) / sR))),
      dense_optimum_logLik = pol$loglik,
      dense_optimum_minus_R_logLik = pol$loglik - as.numeric(logLik(m)),
      dense_optimum_G0 = unname(cov2(pol$par[1:3])),
      dense_optimum_R0 = unname(cov2(pol$par[4:6])),
      max_G0_diff_dense_optimum_rel_scale = max(abs(cov2(pol$par[1:3]) - G) / sG),
      max_R0_diff_dense_optimum_rel_scale = max(abs(cov2(pol$par[4:6]) - r$R0) / sR))
    check(repro$dense_optimum_minus_R_logLik > -1e-9, "dense optimum below lme's")
    res[[method]] <- list(
      formula = "y ~ 0 + trait", random = "~0 + trait | sire",
      correlation = "corSymm(form = ~tidx | sire/animal)",
      weights = "varIdent(form = ~1 | trait)",
      control = CTRL_TIGHT_TEXT,
      call = sprintf("lme(y ~ 0 + trait, random = ~0 + trait | sire, correlation = corSymm(form = ~tidx | sire/animal), weights = varIdent(form = ~1 | trait), data = d, method = '%s', control = %s)", method, CTRL_TIGHT_TEXT), REML = reml, method = method,
      nobs = nrow(d), logLik = as.numeric(logLik(m)),
      G0 = G, G0_names = I(c("traity1", "traity2")),
      sire_rows = sym_rows(G, c("traity1", "traity2")),
      sigma = r$sigma, varident = list(level = I(c("y1", "y2")), coef = unname(r$varident)),
      rho = r$rho, R0 = unname(r$R0),
      residual_rows = sym_rows(r$R0, c("y1", "y2")),
      fixef = list(term = I(rownames(tt)), estimate = unname(tt[, "Value"]),
                   se = unname(tt[, "Std.Error"]), se_unadjusted = se_vcov,
                   df_nlme = unname(tt[, "DF"])),
      se_note = SE_NOTE,
      vcov = unname(as.matrix(vcov(m))),
      ranef = list(group = "sire", levels = I(rownames(re)),
                   traity1 = unname(re[, "traity1"]), traity2 = unname(re[, "traity2"]),
                   cond_var_dense_traity1 = cvar[, 1], cond_var_dense_traity2 = cvar[, 2]),
      ranef_note = paste("traity1/2: nlme's ranef(m); cond_var_dense_*: the diagonal of",
                         "(Z'R^-1 Z + I (x) G0^-1)^-1 at nlme's estimates, computed densely in",
                         "generate.R (lme4's condVar definition; nlme does not report it)"),
      checks = chk, reproducibility = repro)
  }
  out <- list(name = name, factors = I(factors), versions = versions,
              notes = paste("simulated with set.seed(20240704): 40 sires x 8 offspring,",
                            "32 animals without y1, 32 others without y2.",
                            "bivariate_sire.csv is the long form (sire, animal, trait, tidx, y)",
                            "that was fitted; bivariate_sire_wide.csv has one row per animal",
                            "(sire, animal, y1, y2)."),
              wide_csv = paste0(name, "_wide.csv"),
              truth = keep_names(truth), REML = res$REML, ML = res$ML)
  write_ref(out, name)
  for (k in names(res)) {
    r <- res[[k]]
    cat(sprintf("%-16s %-5s n=%d logLik=%.8f G0=[%.4f %.4f %.4f] R0=[%.4f %.4f %.4f]\n",
                name, k, r$nobs, r$logLik, r$G0[1, 1], r$G0[1, 2], r$G0[2, 2],
                r$R0[1, 1], r$R0[1, 2], r$R0[2, 2]),
        sprintf("%-22s refit dlogLik %.2g (G0 %.2g, R0 %.2g)  dense dlogLik %.2g (G0 %.2g, R0 %.2g)\n",
                "", r$reproducibility$max_abs_logLik_diff_refits,
                r$reproducibility$max_G0_diff_refits_rel_scale,
                r$reproducibility$max_R0_diff_refits_rel_scale,
                r$reproducibility$dense_optimum_minus_R_logLik,
                r$reproducibility$max_G0_diff_dense_optimum_rel_scale,
                r$reproducibility$max_R0_diff_dense_optimum_rel_scale))
  }
  invisible(out)
}

weights_case()
varident_case()
bivariate_gls_case()
bivariate_sire_case()
