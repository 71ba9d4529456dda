# lme4 reference for tests/data/rank_deficient_slopes.csv: 30 groups x 8 records, simulated
# by tests/data/rank_deficient_slopes.py (numpy, default_rng(3): the x slope perfectly
# correlated with the intercept, no z slope; that script checks or rewrites the CSV).
# Fitted with (1 + x + z | g): the REML and ML optima have a rank-1 G0 (isSingular).
# Usage (from the repository root):
#   Rscript tests/data/rank_deficient_slopes.R  -> tests/data/rank_deficient_slopes.json
# Written with R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2 (the JSON's "versions");
# rerunning reproduces every number to <= 3e-14 relative (the KR df: BLAS round-off).
suppressMessages({library(lme4); library(lmerTest); library(jsonlite)})
d <- read.csv("tests/data/rank_deficient_slopes.csv")
m <- lmer(y ~ x + z + (1 + x + z | g), d, REML = TRUE)
ml <- lmer(y ~ x + z + (1 + x + z | g), d, REML = FALSE)
cf <- summary(m, ddf = "Satterthwaite")$coefficients
kr <- summary(m, ddf = "Kenward-Roger")$coefficients
re <- ranef(m)$g
write_json(list(loglik = as.numeric(logLik(m)), isSingular = isSingular(m),
                G0 = unname(as.matrix(VarCorr(m)$g)), sigma2 = sigma(m)^2,
                theta = unname(getME(m, "theta")),
                fixef = unname(cf[, "Estimate"]), se = unname(cf[, "Std. Error"]),
                df_satterthwaite = unname(cf[, "df"]),
                se_kenward_roger = unname(kr[, "Std. Error"]), df_kenward_roger = unname(kr[, "df"]),
                pbkrtest = as.character(packageVersion("pbkrtest")),
                ranef = unname(as.matrix(re)), ranef_levels = rownames(re),
                ml = list(loglik = as.numeric(logLik(ml)), isSingular = isSingular(ml),
                          G0 = unname(as.matrix(VarCorr(ml)$g)), sigma2 = sigma(ml)^2),
                lme4 = as.character(packageVersion("lme4")),
                lmerTest = as.character(packageVersion("lmerTest")),
                versions = list(R = R.version.string,
                                lme4 = as.character(packageVersion("lme4")),
                                lmerTest = as.character(packageVersion("lmerTest")),
                                pbkrtest = as.character(packageVersion("pbkrtest")),
                                Matrix = as.character(packageVersion("Matrix")),
                                jsonlite = as.character(packageVersion("jsonlite"))),
                provenance = list(script = "tests/data/rank_deficient_slopes.R",
                                  data = "tests/data/rank_deficient_slopes.csv, simulated by tests/data/rank_deficient_slopes.py")),
           "tests/data/rank_deficient_slopes.json", digits = NA, auto_unbox = TRUE)
