# Unbalanced reference fits, where Kenward-Roger's adjusted Var(beta) (pbkrtest::vcovAdj)
# differs from the unadjusted one, so that KR SEs and df are really exercised.
#
# Usage (from the repository root):  Rscript tests/data/r_unbalanced/generate.R [OUTDIR]
# OUTDIR defaults to the directory of this script. Needs lme4, lmerTest, pbkrtest, emmeans,
# jsonlite. Inputs: tests/data/lme4/{cake_splitplot,sleepstudy_us,kfert_random}.csv (subsets
# of them, chosen deterministically) and one simulated data set (set.seed).
#
# Each case writes OUTDIR/<case>.csv (the data exactly as fitted: the model is fitted to the
# CSV as read back, so R and Python see the same numbers) and OUTDIR/<case>.json with full
# precision (digits = NA), the formula, REML, the factor columns and the R/package versions.
suppressMessages({
  library(lme4); library(lmerTest); library(pbkrtest); library(emmeans); library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
script_dir <- local({
  f <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(f)) dirname(normalizePath(f)) else getwd()
})
outdir <- if (length(args) >= 1) args[1] else script_dir
lme4dir <- file.path(script_dir, "..", "lme4")
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  lmerTest = as.character(packageVersion("lmerTest")),
  pbkrtest = as.character(packageVersion("pbkrtest")),
  emmeans = as.character(packageVersion("emmeans")),
  Matrix = as.character(packageVersion("Matrix")),
  jsonlite = as.character(packageVersion("jsonlite"))
)

read_factors <- function(path, factors) {
  d <- read.csv(path, stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

anova_list <- function(m, ddf) {
  a <- anova(m, type = 3, ddf = ddf)
  list(term = rownames(a), numdf = a$NumDF, dendf = a$DenDF, F = a$`F value`, p = a$`Pr(>F)`)
}

# emmeans(m, specs, by = by) with the df method and confidence level given; the contrasts
# (pairwise, no adjustment and Tukey) when asked.
emm <- function(m, specs, by = NULL, df = "kenward-roger", level = 0.95, pairs = FALSE) {
  em <- emmeans(m, specs, by = by, lmer.df = df)
  out <- list(specs = specs, by = by, df_method = df, level = level,
              table = as.data.frame(confint(em, level = level)))
  if (pairs) {
    out$pairwise_none <- as.data.frame(contrast(em, "pairwise", adjust = "none"))
    out$pairwise_tukey <- as.data.frame(contrast(em, "pairwise", adjust = "tukey"))
  }
  out
}

ref_case <- function(name, data, formula, factors, emmeans_specs = list(), notes = "") {
  csv <- file.path(outdir, paste0(name, ".csv"))
  write.csv(data, csv, row.names = FALSE)
  d <- read_factors(csv, factors)          # fit exactly what the CSV holds
  m <- lmer(as.formula(formula), data = d, REML = TRUE,
            control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
  cs <- summary(m, ddf = "Satterthwaite")$coefficients
  ck <- summary(m, ddf = "Kenward-Roger")$coefficients
  V <- as.matrix(vcov(m))
  VA <- as.matrix(pbkrtest::vcovAdj(m))
  attributes(VA) <- list(dim = dim(VA))
  vc <- as.data.frame(VarCorr(m))
  out <- list(
    name = name, formula = formula, REML = TRUE, method = "REML",
    factors = I(factors), notes = notes, versions = versions,
    nobs = nobs(m), logLik = as.numeric(logLik(m)), AIC = AIC(m), BIC = BIC(m),
    singular = isSingular(m),
    group_sizes = lapply(ngrps(m), identity),
    varcorr = list(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov, sdcor = vc$sdcor),
    fixef = list(term = I(rownames(cs)), estimate = unname(cs[, "Estimate"]),
                 se = unname(cs[, "Std. Error"]), df_satterthwaite = unname(cs[, "df"]),
                 se_kr = unname(ck[, "Std. Error"]), df_kr = unname(ck[, "df"]),
                 t_kr = unname(ck[, "t value"]), p_kr = unname(ck[, "Pr(>|t|)"])),
    vcov = unname(V),
    vcov_adj = unname(VA),
    # how far KR's adjustment moves Var(beta): max |VA - V| / max |V|
    kr_adjustment_rel = max(abs(VA - V)) / max(abs(V)),
    anova_kr = anova_list(m, "Kenward-Roger"),
    anova_satterthwaite = anova_list(m, "Satterthwaite"),
    emmeans = lapply(emmeans_specs, function(s) do.call(emm, c(list(m = m), s)))
  )
  writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null", null = "null"),
             file.path(outdir, paste0(name, ".json")))
  cat(sprintf("%-24s n=%3d  logLik=%.6f  max|VA-V|/max|V| = %.3g\n", name, nobs(m),
              as.numeric(logLik(m)), out$kr_adjustment_rel))
  invisible(m)
}

# a. cake split plot, every 10th row removed (27 of 270: whole plots of 5 or 6 subplots, all
#    18 recipe x temperature cells still present; every 9th row would empty two whole cells)
ck <- read.csv(file.path(lme4dir, "cake_splitplot.csv"), stringsAsFactors = FALSE)
ck <- ck[-seq(10, nrow(ck), by = 10), c("replicate", "recipe", "temperature", "angle")]
ref_case("splitplot_unbalanced", ck, "angle ~ recipe * temperature + (1|recipe:replicate)",
         factors = c("replicate", "recipe", "temperature"),
         notes = "tests/data/lme4/cake_splitplot.csv without rows 10, 20, ..., 270",
         emmeans_specs = list(
           list(specs = "recipe", df = "kenward-roger"),
           list(specs = "recipe", df = "satterthwaite"),
           list(specs = "temperature", df = "kenward-roger"),
           list(specs = "recipe", by = "temperature", df = "kenward-roger", level = 0.90),
           list(specs = "temperature", by = "recipe", df = "kenward-roger", level = 0.90)))

# b. sleepstudy with unequal numbers of days per subject: subject k (k = 1..18 in data order)
#    keeps Days 0 .. 9 - ((k - 1) %% 5), and then every 13th remaining row is dropped
ss <- read.csv(file.path(lme4dir, "sleepstudy_us.csv"), stringsAsFactors = FALSE)
k <- match(ss$Subject, unique(ss$Subject))
ss <- ss[ss$Days <= 9 - ((k - 1) %% 5), ]
ss <- ss[-seq(13, nrow(ss), by = 13), ]
ref_case("sleepstudy_unbalanced", ss, "Reaction ~ Days + (Days | Subject)",
         factors = "Subject",
         notes = "sleepstudy: subject k keeps Days <= 9 - ((k-1) %% 5), then every 13th row dropped")

# c. kfert RCBD (blocks random) with two plots missing: rep 1 / 54 lb and rep 3 / 108 lb
kf <- read.csv(file.path(lme4dir, "kfert_random.csv"), stringsAsFactors = FALSE)
kf <- kf[!((kf$rep == 1 & kf$K2O_lbac == 54) | (kf$rep == 3 & kf$K2O_lbac == 108)), ]
ref_case("rcbd_missing", kf, "yield ~ K2O_lbac + (1|rep)",
         factors = c("rep", "K2O_lbac"),
         notes = "tests/data/lme4/kfert_random.csv without plots (rep 1, 54) and (rep 3, 108)",
         emmeans_specs = list(
           list(specs = "K2O_lbac", df = "kenward-roger", pairs = TRUE),
           list(specs = "K2O_lbac", df = "satterthwaite", pairs = TRUE)))

# d. simulated: two crossed random factors (site, rater), a 3-level treatment, a covariate
set.seed(20240611)
nsite <- 10; nrater <- 8; n <- 120
site_eff <- rnorm(nsite, 0, 1.5)
rater_eff <- rnorm(nrater, 0, 1.0)
site <- sample(nsite, n, replace = TRUE, prob = seq_len(nsite))
rater <- sample(nrater, n, replace = TRUE, prob = rev(seq_len(nrater)) + 2)
trt <- sample(c("T1", "T2", "T3"), n, replace = TRUE, prob = c(0.45, 0.35, 0.20))
x <- round(rnorm(n, 20, 4), 2)
y <- 50 + c(T1 = 0, T2 = 1.5, T3 = 3)[trt] + 0.4 * (x - 20) + site_eff[site] +
  rater_eff[rater] + rnorm(n, 0, 2)
tw <- data.frame(site = sprintf("S%02d", site), rater = sprintf("R%d", rater), trt = trt,
                 x = x, y = round(unname(y), 3))
tw <- tw[order(tw$site, tw$rater, tw$trt), ]
ref_case("two_random_unbalanced", tw, "y ~ trt + x + (1|site) + (1|rater)",
         factors = c("site", "rater", "trt"),
         notes = "simulated with set.seed(20240611): 120 rows, 10 sites x 8 raters crossed, unbalanced",
         emmeans_specs = list(
           list(specs = "trt", df = "kenward-roger", level = 0.90, pairs = TRUE),
           list(specs = "trt", df = "satterthwaite", level = 0.90, pairs = TRUE)))
