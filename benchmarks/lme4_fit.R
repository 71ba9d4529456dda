# Fit y ~ trt + x + (1|g) by REML with lme4 and write results as plain
# "key<TAB>value" lines (no jsonlite dependency).
#
# Usage: Rscript --vanilla lme4_fit.R data.csv out.txt [repeats] [formula]
#
# Only the lmer() call is timed (system.time, elapsed); reading the CSV and
# loading lme4 are excluded. With repeats > 1 every elapsed time is written.
args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 2) stop("usage: lme4_fit.R data.csv out.txt [repeats] [formula]")
csv <- args[1]
out <- args[2]
repeats <- if (length(args) >= 3) as.integer(args[3]) else 1L
form <- if (length(args) >= 4) args[4] else "y ~ trt + x + (1|g)"

suppressPackageStartupMessages(library(lme4))

d <- read.csv(csv, colClasses = c(y = "numeric", trt = "factor", x = "numeric", g = "factor"))

elapsed <- numeric(repeats)
warn <- character(0)
for (i in seq_len(repeats)) {
  st <- withCallingHandlers(
    system.time(fit <- lmer(as.formula(form), data = d, REML = TRUE)),
    warning = function(w) {
      warn <<- c(warn, conditionMessage(w))
      invokeRestart("muffleWarning")
    }
  )
  elapsed[i] <- st[["elapsed"]]
}

fmt <- function(v) sprintf("%.17g", v)
lines <- character(0)
add <- function(k, v) lines <<- c(lines, paste(k, v, sep = "\t"))

add("elapsed", paste(fmt(elapsed), collapse = ","))
add("loglik", fmt(as.numeric(logLik(fit))))
add("reml_criterion", fmt(unname(lme4::REMLcrit(fit))))
vc <- as.data.frame(VarCorr(fit))
for (i in seq_len(nrow(vc))) {
  add(paste0("vc:", vc$grp[i]), fmt(vc$vcov[i]))
}
fe <- summary(fit)$coefficients
for (i in seq_len(nrow(fe))) {
  add(paste0("fe:", rownames(fe)[i]), paste(fmt(fe[i, "Estimate"]), fmt(fe[i, "Std. Error"]), sep = ","))
}
add("optimizer", paste(fit@optinfo$optimizer, collapse = ","))
add("feval", fit@optinfo$feval)
add("conv_messages", paste(gsub("[\t\n]", " ", c(fit@optinfo$conv$lme4$messages, warn)), collapse = " | "))
add("nobs", nobs(fit))
add("ngroups", paste(ngrps(fit), collapse = ","))
add("R", R.version.string)
add("lme4", as.character(packageVersion("lme4")))
add("Matrix", as.character(packageVersion("Matrix")))
writeLines(lines, out)
