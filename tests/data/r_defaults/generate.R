# References for R's defaults (issue 14): linear models as lm, formulas as R reads them
# (I(x^2), poly(x, 2, raw = TRUE), poly(x, 2)), and a split plot whose whole-plot
# variance lme4 estimates at exactly 0 (boundary (singular) fit).
#
# Usage (from the repository root):  Rscript tests/data/r_defaults/generate.R [OUTDIR]
# OUTDIR defaults to the directory of this script. Needs lme4, lmerTest and jsonlite. Inputs:
# src/mme/data/kfert.csv (the seed's RCBD, Cochran & Cox's potassium trial as printed),
# tests/data/lme4/sleepstudy_us.csv; the split plot is simulated here (set.seed(15)).
# Every case writes OUTDIR/<case>.json (digits = NA: full precision); a simulated data set
# is written as OUTDIR/<case>.csv and the model is fitted to the CSV as read back.
suppressMessages({library(lme4); library(jsonlite)})

args <- commandArgs(trailingOnly = TRUE)
script_dir <- local({
  f <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(f)) dirname(normalizePath(f)) else getwd()
})
outdir <- if (length(args) >= 1) args[1] else script_dir
root <- file.path(script_dir, "..", "..", "..")
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)

versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 Matrix = as.character(packageVersion("Matrix")),
                 jsonlite = as.character(packageVersion("jsonlite")))

write_json_case <- function(name, out) {
  out$versions <- versions
  writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null", null = "null"),
             file.path(outdir, paste0(name, ".json")))
}

# -- linear models (no random term): lm's logLik (ML, df = rank + 1) and logLik(REML = TRUE)
lm_case <- function(m, formula, data_file, factors, weights = NULL, notes = "") {
  cf <- summary(m)$coefficients
  co <- coef(m)
  list(formula = formula, data = data_file, factors = I(factors), weights = weights,
       notes = notes, nobs = nobs(m), rank = m$rank,
       logLik = as.numeric(logLik(m)), df = attr(logLik(m), "df"),
       logLik_REML = as.numeric(logLik(m, REML = TRUE)),
       AIC = AIC(m), BIC = BIC(m), sigma = sigma(m),
       coef = list(term = I(names(co)), estimate = unname(co)),
       estimable = list(term = I(rownames(cf)), estimate = unname(cf[, "Estimate"]),
                        se = unname(cf[, "Std. Error"])))
}

kf <- read.csv(file.path(root, "src/mme/data/kfert.csv"))
kf$repf <- factor(kf$rep); kf$Kf <- factor(kf$K2O_lbac)
kf$w <- kf$rep * (1 + (kf$K2O_lbac %% 36 == 0))   # prior weights 1..6 for the weighted case
kf$rep_copy <- kf$repf                              # an aliased copy of the block factor
lms <- list(
  rcbd_fixed = lm_case(lm(yield ~ Kf + repf, kf), "yield ~ K2O_lbac + rep", "src/mme/data/kfert.csv",
                       c("rep", "K2O_lbac"), notes = "the seed's RCBD with blocks fixed"),
  rcbd_aliased = lm_case(lm(yield ~ Kf + repf + rep_copy, kf), "yield ~ K2O_lbac + rep + rep_copy",
                         "src/mme/data/kfert.csv", c("rep", "K2O_lbac", "rep_copy"),
                         notes = "rep_copy = rep: two aliased columns, rank 7 of 9"),
  rcbd_weighted = lm_case(lm(yield ~ Kf + repf, kf, weights = w), "yield ~ K2O_lbac + rep",
                          "src/mme/data/kfert.csv", c("rep", "K2O_lbac"), weights = "w",
                          notes = "w = rep * (1 + [K2O_lbac divisible by 36])"),
  # formulas: K2O_lbac numeric, rep a factor
  quadratic_I = lm_case(lm(yield ~ repf + K2O_lbac + I(K2O_lbac^2), kf),
                        "yield ~ rep + K2O_lbac + I(K2O_lbac^2)", "src/mme/data/kfert.csv", "rep"),
  quadratic_raw = lm_case(lm(yield ~ repf + poly(K2O_lbac, 2, raw = TRUE), kf),
                          "yield ~ rep + poly(K2O_lbac, 2, raw = TRUE)", "src/mme/data/kfert.csv", "rep"),
  quadratic_orth = lm_case(lm(yield ~ repf + poly(K2O_lbac, 2), kf),
                           "yield ~ rep + poly(K2O_lbac, 2)", "src/mme/data/kfert.csv", "rep")
)
# lm names the factor columns after the R variable (repf, Kf); mme after the data column
for (nm in names(lms)) {
  for (part in c("coef", "estimable")) {
    t <- lms[[nm]][[part]]$term
    t <- sub("^Kf", "K2O_lbac", sub("^repf", "rep", t))
    lms[[nm]][[part]]$term <- I(t)
  }
}
# lmerTest's ranova: the REML likelihood-ratio test of (1|rep) against the linear model
# (logLik(lm, REML = TRUE)), on the kfert RCBD of tests/data/lme4 (rep 2 + 0.2)
kr <- read.csv(file.path(root, "tests/data/lme4/kfert_random.csv"))
kr$rep <- factor(kr$rep); kr$K2O_lbac <- factor(kr$K2O_lbac)
rv <- lmerTest::ranova(lmerTest::lmer(yield ~ K2O_lbac + (1|rep), kr))
ranova_out <- list(data = "tests/data/lme4/kfert_random.csv", formula = "yield ~ K2O_lbac + (1|rep)",
                   reduced = "yield ~ K2O_lbac", npar = rv$npar, logLik = rv$logLik, AIC = rv$AIC,
                   LRT = rv$LRT, Df = rv$Df, p = rv$`Pr(>Chisq)`)
versions$lmerTest <- as.character(packageVersion("lmerTest"))
write_json_case("linear_models", list(
  name = "linear_models", provenance = "tests/data/r_defaults/generate.R", cases = lms,
  ranova = ranova_out))

# -- lmer with poly() in the fixed part (sleepstudy)
ss <- read.csv(file.path(root, "tests/data/lme4/sleepstudy_us.csv"))
ss$Subject <- factor(ss$Subject)
lmer_case <- function(formula, reml = TRUE) {
  m <- lmer(as.formula(formula), ss, REML = reml)
  cf <- summary(m)$coefficients
  list(formula = formula, method = if (reml) "REML" else "ML", logLik = as.numeric(logLik(m)),
       fixef = list(term = I(rownames(cf)), estimate = unname(cf[, "Estimate"]),
                    se = unname(cf[, "Std. Error"])),
       varcorr = as.data.frame(VarCorr(m))[, c("grp", "vcov")])
}
write_json_case("poly_lmer", list(
  name = "poly_lmer", provenance = "tests/data/r_defaults/generate.R",
  data = "tests/data/lme4/sleepstudy_us.csv", factors = I("Subject"),
  cases = list(orth = lmer_case("Reaction ~ poly(Days, 2) + (1|Subject)"),
               raw = lmer_case("Reaction ~ poly(Days, 2, raw = TRUE) + (1|Subject)"),
               I = lmer_case("Reaction ~ Days + I(Days^2) + (1|Subject)"))))

# -- a split plot whose whole-plot (block:A) variance is estimated at 0 by lme4:
#    4 blocks x 2 whole-plot treatments A x 3 subplot treatments B, simulated with a
#    whole-plot SD of 0.3 (residual SD 1); set.seed(15) is one whose REML fit is singular
#    (seeds 3, 4, 8, 9, 15, ... of 1:60 are; 15 took 194 EM steps in mme before issue 14)
sim_splitplot <- function(seed) {
  set.seed(seed)
  d <- expand.grid(B = c("b1", "b2", "b3"), A = c("a1", "a2"), block = paste0("r", 1:4))
  d <- d[, c("block", "A", "B")]
  blk <- rnorm(4, 0, 1); wp <- rnorm(8, 0, 0.3)
  d$y <- round(10 + (d$A == "a2") * 1 + (d$B == "b2") * 0.5 + (d$B == "b3") * 1.0 +
               blk[as.integer(factor(d$block))] + wp[as.integer(interaction(d$block, d$A))] +
               rnorm(24, 0, 1), 2)
  d
}
sp_csv <- file.path(outdir, "splitplot_boundary.csv")
write.csv(sim_splitplot(15), sp_csv, row.names = FALSE)
sp <- read.csv(sp_csv)
for (f in c("block", "A", "B")) sp[[f]] <- factor(sp[[f]])
sp_formula <- "y ~ A * B + (1|block) + (1|block:A)"
sp_fit <- function(reml) {
  msgs <- character(0)
  m <- withCallingHandlers(lmer(as.formula(sp_formula), sp, REML = reml),
                           message = function(c) { msgs <<- c(msgs, conditionMessage(c))
                                                   invokeRestart("muffleMessage") })
  cf <- summary(m)$coefficients
  vc <- as.data.frame(VarCorr(m))
  re <- ranef(m, condVar = TRUE)
  list(method = if (reml) "REML" else "ML", logLik = as.numeric(logLik(m)),
       singular = isSingular(m), messages = I(trimws(msgs)), theta = unname(getME(m, "theta")),
       fixef = list(term = I(rownames(cf)), estimate = unname(cf[, "Estimate"]),
                    se = unname(cf[, "Std. Error"])),
       varcorr = list(grp = vc$grp, vcov = vc$vcov),
       ranef = lapply(names(re), function(g) list(
         group = g, levels = I(rownames(re[[g]])), blup = unname(re[[g]][[1]]),
         cond_var = unname(attr(re[[g]], "postVar")[1, 1, ]))))
}
reml <- sp_fit(TRUE); ml <- sp_fit(FALSE)
stopifnot(reml$singular, reml$varcorr$vcov[reml$varcorr$grp == "block:A"] == 0)
write_json_case("splitplot_boundary", list(
  name = "splitplot_boundary", provenance = "tests/data/r_defaults/generate.R (set.seed(15))",
  formula = sp_formula, factors = I(c("block", "A", "B")), nobs = nrow(sp),
  REML = reml, ML = ml))
cat("written to", outdir, "\n")
