# lme4 reference for tests/data/rank_deficient_slopes.csv (30 groups x 8 records;
# simulated with the x slope perfectly correlated with the intercept and no z slope).
# Rscript tests/data/rank_deficient_slopes.R  -> rank_deficient_slopes.json
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv("tests/data/rank_deficient_slopes.csv")
m <- lmer(y ~ x + z + (1 + x + z | g), d, REML = TRUE)
vc <- as.data.frame(VarCorr(m))
write_json(list(loglik = as.numeric(logLik(m)), isSingular = isSingular(m),
                G0 = unname(as.matrix(VarCorr(m)$g)), sigma2 = sigma(m)^2,
                lme4 = as.character(packageVersion("lme4"))),
           "tests/data/rank_deficient_slopes.json", digits = NA, auto_unbox = TRUE)
