# References for Fit.confint (lme4's profile / Wald / parametric bootstrap intervals),
# Fit.summary (lmerTest's printed summary) and Fit.predict intervals (R's predict.lm).
# Usage (from the repository root):
#   Rscript tests/data/intervals/generate_intervals.R tests/data/intervals
# Needs R with lme4, lmerTest, jsonlite; written with R 4.2.2, lme4 1.1-31, lmerTest 3.1-3,
# jsonlite 1.8.4 ("versions" in the JSON). Data: the CSVs of tests/data/lme4 (written by
# generate_lme4.R) and lme4::Dyestuff2 (written here to dyestuff2.csv: a zero variance).
# Writes OUTDIR/intervals.json, OUTDIR/summary_<case>.txt (R's printed summary).
suppressMessages({library(lme4); library(lmerTest); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
outdir <- if (length(args)) args[1] else "tests/data/intervals"
lme4dir <- "tests/data/lme4"
versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 lmerTest = as.character(packageVersion("lmerTest")),
                 jsonlite = as.character(packageVersion("jsonlite")))
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

kfert <- function() {
  d <- read.csv(file.path(lme4dir, "kfert_random.csv"))
  d$rep <- factor(d$rep); d$K2O_lbac <- factor(d$K2O_lbac, levels = c(36, 54, 72, 108, 144))
  d
}
sleep <- function() {
  d <- read.csv(file.path(lme4dir, "sleepstudy_us.csv")); d$Subject <- factor(d$Subject); d
}
penicillin <- function() {
  d <- read.csv(file.path(lme4dir, "penicillin.csv"))
  d$plate <- factor(d$plate); d$sample <- factor(d$sample); d
}
write.csv(Dyestuff2, file.path(outdir, "dyestuff2.csv"), row.names = FALSE)
dyestuff2 <- function() {
  d <- read.csv(file.path(outdir, "dyestuff2.csv")); d$Batch <- factor(d$Batch); d
}

ci_list <- function(ci) list(parm = rownames(ci), columns = colnames(ci),
                             lower = unname(ci[, 1]), upper = unname(ci[, 2]))

cases <- list(
  kfert_random = list(data = kfert, formula = "yield ~ K2O_lbac + (1|rep)", reml = TRUE),
  kfert_random_ml = list(data = kfert, formula = "yield ~ K2O_lbac + (1|rep)", reml = FALSE),
  sleepstudy_us = list(data = sleep, formula = "Reaction ~ Days + (Days|Subject)", reml = TRUE),
  sleepstudy_diag = list(data = sleep, formula = "Reaction ~ Days + (1|Subject) + (0+Days|Subject)",
                         reml = TRUE),
  penicillin = list(data = penicillin, formula = "diameter ~ 1 + (1|plate) + (1|sample)", reml = TRUE),
  dyestuff2 = list(data = dyestuff2, formula = "Yield ~ 1 + (1|Batch)", reml = TRUE)
)

out <- list(provenance = "tests/data/intervals/generate_intervals.R", versions = versions,
            cases = list())
for (name in names(cases)) {
  cs <- cases[[name]]
  d <- cs$data()
  m <- lme4::lmer(as.formula(cs$formula), data = d, REML = cs$reml, control = ctrl)
  res <- list(formula = cs$formula, method = if (cs$reml) "REML" else "ML",
              logLik = as.numeric(logLik(m)), singular = isSingular(m))
  # confint.merMod's defaults: profile of the ML deviance (devfun2 calls refitML), limits
  # read off an interpolating spline through ~15-30 profile points per side
  res$profile <- ci_list(suppressMessages(confint(m, method = "profile", oldNames = FALSE)))
  # the same profile on a ~16x finer grid: the spline's interpolation error shrinks
  pf <- suppressMessages(profile(m, signames = FALSE, delta.cutoff = 1 / 128, maxpts = 2000))
  res$profile_fine <- ci_list(confint(pf))
  res$profile_90 <- ci_list(suppressMessages(confint(m, method = "profile", level = 0.9,
                                                     oldNames = FALSE)))
  res$wald <- ci_list(confint(m, method = "Wald", oldNames = FALSE))
  out$cases[[name]] <- res
}

# parametric bootstrap of the seed's RCBD (REML refits of simulated responses, as bootMer)
set.seed(20261203)
m <- lme4::lmer(yield ~ K2O_lbac + (1|rep), data = kfert(), control = ctrl)
bfun <- function(x) c(sqrt(unlist(lapply(VarCorr(x), function(v) diag(v)))), sigma(x), fixef(x))
bb <- suppressMessages(suppressWarnings(bootMer(m, bfun, nsim = 2000, use.u = FALSE,
                                                type = "parametric")))
colnames(bb$t) <- c("sd_(Intercept)|rep", "sigma", names(fixef(m)))
out$boot_kfert <- list(nsim = nrow(bb$t), parm = colnames(bb$t),
                       replicates = lapply(seq_len(ncol(bb$t)), function(j) unname(bb$t[, j])),
                       confint_perc = ci_list(confint(bb, type = "perc")))

# lmerTest's summary (Satterthwaite df), printed and as numbers
summaries <- list(kfert_random = cases$kfert_random, sleepstudy_us = cases$sleepstudy_us)
out$summary <- list()
for (name in names(summaries)) {
  cs <- summaries[[name]]
  d <- cs$data()
  # the call carries the formula itself, so that "Formula:" prints it
  m <- eval(bquote(lmerTest::lmer(.(as.formula(cs$formula)), data = d, control = ctrl)))
  s <- summary(m)
  txt <- capture.output(print(s))
  writeLines(txt, file.path(outdir, paste0("summary_", name, ".txt")))
  sr <- residuals(m, type = "pearson", scaled = TRUE)
  cf <- s$coefficients
  out$summary[[name]] <- list(
    scaled_residual_quantiles = unname(quantile(sr)),
    coefficients = list(term = rownames(cf), estimate = unname(cf[, 1]), se = unname(cf[, 2]),
                        df = unname(cf[, 3]), t = unname(cf[, 4]), p = unname(cf[, 5])),
    correlation = unname(as.matrix(cov2cor(as.matrix(vcov(m))))),
    format_pval = unname(format.pval(cf[, 5], digits = max(3L, getOption("digits") - 3L))))
}

# predict.lm intervals: the RCBD with blocks fixed, new data = every rate x block and one
# block twice (rows repeat)
d <- kfert()
fit_lm <- lm(yield ~ K2O_lbac + rep, data = d)
nd <- expand.grid(K2O_lbac = levels(d$K2O_lbac), rep = levels(d$rep))
nd <- rbind(nd, nd[c(2, 7), ])
nd$K2O_lbac <- factor(nd$K2O_lbac, levels = levels(d$K2O_lbac)); nd$rep <- factor(nd$rep)
pr <- list(newdata = list(K2O_lbac = as.character(nd$K2O_lbac), rep = as.character(nd$rep)))
for (iv in c("confidence", "prediction")) for (lev in c(0.95, 0.9)) {
  p <- predict(fit_lm, nd, interval = iv, level = lev, se.fit = TRUE)
  pr[[paste0(iv, "_", lev * 100)]] <- list(fit = unname(p$fit[, 1]), lwr = unname(p$fit[, 2]),
                                          upr = unname(p$fit[, 3]), se_fit = unname(p$se.fit))
}
out$predict_lm <- c(list(formula = "yield ~ K2O_lbac + rep"), pr,
                   list(confint = ci_list(confint(fit_lm))))

writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null"),
           file.path(outdir, "intervals.json"))
