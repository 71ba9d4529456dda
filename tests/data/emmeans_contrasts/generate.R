# Reference contrasts of estimated marginal means from emmeans: every contrast family with
# its default multiplicity adjustment, and every adjustment explicitly, with estimates, SE,
# df, t ratios, p values and (adjusted) confidence limits, and the notes emmeans prints.
#
# Usage (from the repository root):  Rscript tests/data/emmeans_contrasts/generate.R [OUTDIR]
# OUTDIR defaults to the directory of this script. Needs lme4, lmerTest, pbkrtest, emmeans,
# mvtnorm, jsonlite. Written with R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2,
# emmeans 1.8.4-1, mvtnorm (see "versions" in the JSON).
#
# Data (read from files already in the repository, nothing simulated here):
#   kfert_random  tests/data/lme4/kfert_random.csv, yield ~ K2O_lbac + (1|rep), Kenward-Roger
#   kfert_fixed   the same data, lm(yield ~ K2O_lbac + rep) (residual df)
#   rcbd_missing  tests/data/r_unbalanced/rcbd_missing.csv (two plots missing: unbalanced, 5
#                 levels), lmer, Kenward-Roger and Satterthwaite
#   splitplot     tests/data/r_unbalanced/splitplot_unbalanced.csv, angle ~ recipe *
#                 temperature + (1|recipe:replicate), Kenward-Roger, contrasts within `by` groups
#
# "mvt" adjustments are Monte Carlo (mvtnorm::pmvt / qmvt, GenzBretz with abseps 1e-3):
# set.seed(1) is called before each summary so the file is reproducible; other numbers are
# deterministic. "crit_tight" is the critical value of the Tukey / dunnettx interval found
# with uniroot at tol 1e-14 on ptukey / emmeans:::.pdunnx (emmeans itself stops qtukey at
# R's eps 1e-4 and uniroot at tol 5e-4), to test those formulas beyond emmeans' own rounding.
suppressMessages({
  library(lme4); library(lmerTest); library(pbkrtest); library(emmeans); library(jsonlite)
})
args <- commandArgs(trailingOnly = TRUE)
script_dir <- local({
  f <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(f)) dirname(normalizePath(f)) else getwd()
})
outdir <- if (length(args) >= 1) args[1] else script_dir
datadir <- file.path(script_dir, "..")

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  lmerTest = as.character(packageVersion("lmerTest")),
  pbkrtest = as.character(packageVersion("pbkrtest")),
  emmeans = as.character(packageVersion("emmeans")),
  mvtnorm = as.character(packageVersion("mvtnorm")),
  jsonlite = as.character(packageVersion("jsonlite"))
)

read_factors <- function(path, factors) {
  d <- read.csv(path, stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

# run expr, collecting the messages emmeans emits (e.g. 'adjust = "tukey" was changed ...')
with_messages <- function(expr) {
  msgs <- character()
  val <- withCallingHandlers(expr, message = function(m) {
    msgs <<- c(msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage")
  })
  list(value = val, messages = msgs)
}

tight_crit <- function(adjust, level, fam, ncon, df) {
  sapply(df, function(d) {
    if (adjust == "tukey") {
      f <- function(q) ptukey(q, fam, d) - level
      uniroot(f, c(1e-3, 100), tol = 1e-14)$root / sqrt(2)
    } else if (adjust == "dunnettx") {
      f <- function(x) emmeans:::.pdunnx(x, ncon, d) - level
      uniroot(f, c(1e-3, 100), tol = 1e-14)$root
    } else NA
  })
}

# one contrast call: method (family), extra arguments, adjust (NULL = the family's default)
job <- function(emm, method, adjust = NULL, level = 0.95, by = "missing", ...) {
  cargs <- list(emm, method = method, ...)
  if (!is.null(adjust)) cargs$adjust <- adjust
  if (!identical(by, "missing")) cargs["by"] <- list(by)
  con <- with_messages(do.call(contrast, cargs))
  set.seed(1)
  s <- with_messages(summary(con$value, infer = c(TRUE, TRUE), level = level))
  tab <- as.data.frame(s$value)
  printed <- with_messages(capture.output(print(con$value)))
  out <- list(method = method, args = list(...), adjust_arg = adjust,
              by_arg = if (identical(by, "missing")) "missing" else by,
              level = level,
              adjust = attr(s$value, "adjust"), mesg = attr(s$value, "mesg"),
              messages = unique(c(con$messages, s$messages)),
              table = tab, printed = printed$value,
              fam_size = con$value@misc$famSize)
  a <- out$adjust
  if (a %in% c("tukey", "dunnettx")) {
    byv <- con$value@misc$by.vars
    ncon <- if (is.null(byv)) nrow(tab) else nrow(tab) / nrow(unique(tab[byv]))
    out$crit_tight <- tight_crit(a, level, con$value@misc$famSize, ncon, tab$df)
  }
  out
}

std_jobs <- function(emm) {
  jobs <- list(
    job(emm, "pairwise"), job(emm, "revpairwise"), job(emm, "tukey"),
    job(emm, "trt.vs.ctrl"), job(emm, "trt.vs.ctrl", ref = 3), job(emm, "trt.vs.ctrlk"),
    job(emm, "dunnett"), job(emm, "consec"), job(emm, "poly"), job(emm, "eff"),
    job(emm, "del.eff"), job(emm, "mean_chg"),
    job(emm, "pairwise", level = 0.90))
  for (a in c("none", "tukey", "sidak", "bonferroni", "holm", "hochberg", "hommel", "BH", "BY",
              "fdr", "scheffe", "dunnettx", "mvt"))
    jobs[[length(jobs) + 1]] <- job(emm, "pairwise", adjust = a)
  for (a in c("none", "tukey", "scheffe", "bonferroni", "mvt", "sidak"))
    jobs[[length(jobs) + 1]] <- job(emm, "trt.vs.ctrl", adjust = a)
  for (a in c("scheffe", "holm", "tukey", "dunnettx", "mvt"))
    jobs[[length(jobs) + 1]] <- job(emm, "poly", adjust = a)
  for (a in c("none", "tukey", "mvt", "scheffe"))
    jobs[[length(jobs) + 1]] <- job(emm, "eff", adjust = a)
  for (a in c("none", "tukey", "dunnettx"))
    jobs[[length(jobs) + 1]] <- job(emm, "consec", adjust = a)
  jobs
}

emm_table <- function(emm) as.data.frame(summary(emm))

# the "pairwise ~ K" form: the emm_list printed, and its parts
emm_list <- function(m, formula, ...) {
  r <- with_messages(emmeans(m, as.formula(formula), ...))
  set.seed(1)
  printed <- capture.output(print(r$value))
  list(formula = formula, args = list(...), printed = printed, messages = r$messages,
       emmeans = as.data.frame(summary(r$value$emmeans)),
       contrasts = as.data.frame(summary(r$value$contrasts)))
}

cases <- list()
kf <- read_factors(file.path(datadir, "lme4", "kfert_random.csv"), c("rep", "K2O_lbac"))
m <- lmer(yield ~ K2O_lbac + (1|rep), data = kf, REML = TRUE)
emm <- emmeans(m, "K2O_lbac", lmer.df = "kenward-roger")
cases$kfert_random <- list(
  data = "tests/data/lme4/kfert_random.csv", formula = "yield ~ K2O_lbac + (1|rep)",
  factors = c("rep", "K2O_lbac"), df_method = "kenward-roger", specs = "K2O_lbac",
  emmeans = emm_table(emm), jobs = std_jobs(emm),
  emm_lists = list(emm_list(m, "pairwise ~ K2O_lbac", lmer.df = "kenward-roger"),
                   emm_list(m, "trt.vs.ctrl ~ K2O_lbac", lmer.df = "kenward-roger"),
                   emm_list(m, "consec ~ K2O_lbac", lmer.df = "kenward-roger"),
                   emm_list(m, "poly ~ K2O_lbac", lmer.df = "kenward-roger"),
                   emm_list(m, "pairwise ~ K2O_lbac", lmer.df = "kenward-roger",
                            adjust = "bonferroni")))

mf <- lm(yield ~ K2O_lbac + rep, data = kf)
emm <- emmeans(mf, "K2O_lbac")
cases$kfert_fixed <- list(
  data = "tests/data/lme4/kfert_random.csv", formula = "yield ~ K2O_lbac + rep",
  factors = c("rep", "K2O_lbac"), df_method = "residual", specs = "K2O_lbac",
  emmeans = emm_table(emm), jobs = std_jobs(emm),
  emm_lists = list(emm_list(mf, "pairwise ~ K2O_lbac")))

rm <- read_factors(file.path(datadir, "r_unbalanced", "rcbd_missing.csv"), c("rep", "K2O_lbac"))
m <- lmer(yield ~ K2O_lbac + (1|rep), data = rm, REML = TRUE)
emm <- emmeans(m, "K2O_lbac", lmer.df = "kenward-roger")
cases$rcbd_missing <- list(
  data = "tests/data/r_unbalanced/rcbd_missing.csv", formula = "yield ~ K2O_lbac + (1|rep)",
  factors = c("rep", "K2O_lbac"), df_method = "kenward-roger", specs = "K2O_lbac",
  emmeans = emm_table(emm), jobs = std_jobs(emm),
  emm_lists = list(emm_list(m, "pairwise ~ K2O_lbac", lmer.df = "kenward-roger")))
emm <- emmeans(m, "K2O_lbac", lmer.df = "satterthwaite")
cases$rcbd_missing_satterthwaite <- list(
  data = "tests/data/r_unbalanced/rcbd_missing.csv", formula = "yield ~ K2O_lbac + (1|rep)",
  factors = c("rep", "K2O_lbac"), df_method = "satterthwaite", specs = "K2O_lbac",
  emmeans = emm_table(emm),
  jobs = list(job(emm, "pairwise"), job(emm, "consec"), job(emm, "trt.vs.ctrl"),
              job(emm, "poly"), job(emm, "eff"), job(emm, "pairwise", adjust = "scheffe")))

sp <- read_factors(file.path(datadir, "r_unbalanced", "splitplot_unbalanced.csv"),
                   c("replicate", "recipe", "temperature"))
m <- lmer(angle ~ recipe * temperature + (1|recipe:replicate), data = sp, REML = TRUE)
emm <- emmeans(m, ~ temperature | recipe, lmer.df = "kenward-roger")
emm2 <- emmeans(m, ~ recipe * temperature, lmer.df = "kenward-roger")
cases$splitplot <- list(
  data = "tests/data/r_unbalanced/splitplot_unbalanced.csv",
  formula = "angle ~ recipe * temperature + (1|recipe:replicate)",
  factors = c("replicate", "recipe", "temperature"), df_method = "kenward-roger",
  specs = "~ temperature | recipe",
  emmeans = emm_table(emm),
  jobs = list(job(emm, "pairwise"), job(emm, "trt.vs.ctrl"), job(emm, "consec"),
              job(emm, "poly"), job(emm, "eff"),
              job(emm, "pairwise", adjust = "bonferroni"), job(emm, "pairwise", adjust = "holm"),
              job(emm, "pairwise", adjust = "scheffe"), job(emm, "pairwise", adjust = "sidak"),
              job(emm, "pairwise", adjust = "dunnettx"), job(emm, "trt.vs.ctrl", adjust = "mvt"),
              job(emm, "trt.vs.ctrl", by = NULL)),
  emm_lists = list(emm_list(m, "pairwise ~ temperature | recipe", lmer.df = "kenward-roger")))
cases$splitplot_cells <- list(
  data = "tests/data/r_unbalanced/splitplot_unbalanced.csv",
  formula = "angle ~ recipe * temperature + (1|recipe:replicate)",
  factors = c("replicate", "recipe", "temperature"), df_method = "kenward-roger",
  specs = "~ recipe * temperature",
  emmeans = emm_table(emm2),
  jobs = list(job(emm2, "pairwise", by = "temperature"), job(emm2, "poly", by = "recipe"),
              job(emm2, "consec", by = "temperature", adjust = "bonferroni")))

out <- list(provenance = list(script = "tests/data/emmeans_contrasts/generate.R"),
            versions = versions, cases = cases)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null", null = "null"),
           file.path(outdir, "emmeans_contrasts.json"))
cat("wrote", file.path(outdir, "emmeans_contrasts.json"), "\n")
