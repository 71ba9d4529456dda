# lme4 reference for tests/data/correlation_one_slope.csv: 40 groups x 6 records, random
# intercepts only in truth, fitted with (1 + x | g): the slope variance is small and its
# correlation with the intercept goes to -1 (a rank-1 G0 on the boundary).
# Simulation (below): set.seed(3); x ~ N(0, 1) (240), u ~ N(0, 0.7^2) (40 groups), e ~ N(0, 1)
# (240), drawn in that order; y = 1 + x + u_g + e. It reproduces the committed CSV byte for
# byte (the CSV was first written without this code; the draws were recovered from it).
# Usage (from the repository root):
#   Rscript tests/data/correlation_one_slope.R              # check the CSV, write the JSON
#   Rscript tests/data/correlation_one_slope.R --simulate   # rewrite the CSV first
# Written with R 4.2.2, lme4 1.1-31 (the JSON's "versions"); rerunning reproduces it exactly.
suppressMessages({library(lme4); library(jsonlite)})
csv <- "tests/data/correlation_one_slope.csv"
simulate <- function() {
  set.seed(3)
  g <- rep(1:40, each = 6)
  x <- rnorm(240)
  u <- rnorm(40, sd = 0.7)
  e <- rnorm(240)
  data.frame(y = 1 + x + u[g] + e, x = x, g = paste0("g", g))
}
sim <- tempfile(fileext = ".csv")
write.csv(simulate(), sim, row.names = FALSE)
if ("--simulate" %in% commandArgs(trailingOnly = TRUE)) {
  invisible(file.copy(sim, csv, overwrite = TRUE))
} else if (!identical(readLines(sim), readLines(csv))) {
  stop(csv, " differs from the simulation")
}
d <- read.csv(csv)
m <- lmer(y ~ x + (1 + x | g), d, REML = TRUE)
write_json(list(loglik = as.numeric(logLik(m)), isSingular = isSingular(m),
                G0 = unname(as.matrix(VarCorr(m)$g)), sigma2 = sigma(m)^2,
                theta = unname(getME(m, "theta")),
                lme4 = as.character(packageVersion("lme4")),
                versions = list(R = R.version.string,
                                lme4 = as.character(packageVersion("lme4")),
                                Matrix = as.character(packageVersion("Matrix")),
                                jsonlite = as.character(packageVersion("jsonlite"))),
                provenance = list(script = "tests/data/correlation_one_slope.R",
                                  data = "tests/data/correlation_one_slope.csv, simulated by the same script")),
           "tests/data/correlation_one_slope.json", digits = NA, auto_unbox = TRUE)
