# Writes stroup_nin.csv from the R package nlme's Wheat2 data set (Debian: r-cran-nlme), the
# Nebraska Intrastate Nursery 1988/89 (Stroup, Baenziger & Mulitze 1994, Crop Sci. 34, 62-66):
# 56 entries in 4 complete blocks, 224 plots with a yield on a 22 x 11 grid of 242 plots.
#
# nlme gives plot centres in metres (longitude = 1.2 m steps, latitude = 4.3 m steps); the
# published ASReml fit (agridat's stroup.nin, tests/data/field_trials/published_asreml.json)
# numbers the same grid col = longitude / 1.2 (1..22) and row = latitude / 4.3 (1..11): the
# 224 yields sit at the same (col, row) in both (checked yield by yield, 3 Dec 2026).
# The 18 plots without a yield are written as rows with empty gen, rep and yield, as
# agridat keeps them, so the grid is complete in the file.
#
# Run: Rscript tests/data/field_trials/stroup_nin_from_nlme.R   (from the repository root)
suppressPackageStartupMessages(library(nlme))
d <- as.data.frame(Wheat2)
out <- data.frame(gen = as.character(d$variety), rep = paste0("R", d$Block),
                  yield = d$yield, col = as.integer(round(d$longitude / 1.2)),
                  row = as.integer(round(d$latitude / 4.3)))
grid <- expand.grid(col = 1:22, row = 1:11)
key <- paste(out$col, out$row)
empty <- grid[!(paste(grid$col, grid$row) %in% key), ]
empty <- data.frame(gen = NA, rep = NA, yield = NA, col = empty$col, row = empty$row)
out <- rbind(out, empty)
out <- out[order(out$row, out$col), ]
stopifnot(nrow(out) == 242, sum(!is.na(out$yield)) == 224, !any(duplicated(paste(out$col, out$row))))
write.csv(out, "tests/data/field_trials/stroup_nin.csv", row.names = FALSE, na = "")
cat("nlme", as.character(packageVersion("nlme")), "R", R.version.string, "\n")
