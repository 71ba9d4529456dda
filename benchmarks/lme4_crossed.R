# Fit the crossed model y ~ service + (1|s) + (1|d) + (1|dept) by REML with lme4
# and write plain "key<TAB>value" lines (no jsonlite dependency).
#
# Usage: Rscript --vanilla lme4_crossed.R data.csv out.txt [repeats]
#
# Called by bench_crossed.py. Only the lmer() call is timed (system.time,
# elapsed); R start-up, library(lme4) and read.csv are excluded. `service` is
# read as numeric 0/1 (coefficient "service"), s, d and dept as factors.
args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 2) stop("usage: lme4_crossed.R data.csv out.txt [repeats]")
csv <- args[1]
out <- args[2]
repeats <- if (length(args) >= 3) as.integer(args[3]) else 1L
form <- y ~ service + (1 | s) + (1 | d) + (1 | dept)

suppressPackageStartupMessages(library(lme4))

d <- read.csv(csv, colClasses = c(y = "numeric", service = "numeric", s = "factor",
                                  d = "factor", dept = "factor"))

elapsed <- numeric(repeats)
warn <- character(0)
for (i in seq_len(repeats)) {
  st <- withCallingHandlers(
    system.time(fit <- lmer(form, data = d, REML = TRUE)),
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
for (i in seq_len(nrow(vc))) add(paste0("vc:", vc$grp[i]), fmt(vc$vcov[i]))
fe <- summary(fit)$coefficients
for (i in seq_len(nrow(fe))) {
  add(paste0("fe:", rownames(fe)[i]), paste(fmt(fe[i, "Estimate"]), fmt(fe[i, "Std. Error"]), sep = ","))
}
add("optimizer", paste(fit@optinfo$optimizer, collapse = ","))
add("feval", fit@optinfo$feval)
add("conv_messages", paste(gsub("[\t\n]", " ", c(fit@optinfo$conv$lme4$messages, warn)), collapse = " | "))
add("nobs", nobs(fit))
add("ngroups", paste(paste(names(ngrps(fit)), ngrps(fit), sep = "="), collapse = ","))
add("R", R.version.string)
add("lme4", as.character(packageVersion("lme4")))
add("Matrix", as.character(packageVersion("Matrix")))
writeLines(lines, out)
