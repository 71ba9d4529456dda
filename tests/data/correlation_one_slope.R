# lme4 reference for tests/data/correlation_one_slope.csv: 40 groups x 6 records,
# random intercepts only in truth (set.seed(3); y = 1 + x + u_g + e, sd(u) = 0.7), fitted
# with (1 + x | g): the slope variance is small and its correlation with the intercept
# goes to -1 (a rank-1 G0 on the boundary).
# Rscript tests/data/correlation_one_slope.R  -> correlation_one_slope.json
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv("tests/data/correlation_one_slope.csv")
m <- lmer(y ~ x + (1 + x | g), d, REML = TRUE)
write_json(list(loglik = as.numeric(logLik(m)), isSingular = isSingular(m),
                G0 = unname(as.matrix(VarCorr(m)$g)), sigma2 = sigma(m)^2,
                theta = unname(getME(m, "theta")),
                lme4 = as.character(packageVersion("lme4"))),
           "tests/data/correlation_one_slope.json", digits = NA, auto_unbox = TRUE)
