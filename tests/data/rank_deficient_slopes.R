# lme4 reference for tests/data/rank_deficient_slopes.csv (30 groups x 8 records;
# simulated with the x slope perfectly correlated with the intercept and no z slope).
# Rscript tests/data/rank_deficient_slopes.R  -> rank_deficient_slopes.json
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
                lmerTest = as.character(packageVersion("lmerTest"))),
           "tests/data/rank_deficient_slopes.json", digits = NA, auto_unbox = TRUE)
