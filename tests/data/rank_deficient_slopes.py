"""Simulate tests/data/rank_deficient_slopes.csv (the input of rank_deficient_slopes.R).

30 groups g0..g29 with 8 records each; x, z ~ N(0, 1); a group effect u_g ~ N(0, 1) that
is both the intercept deviation and, times 0.5, the x slope deviation (intercept and x
slope perfectly correlated) and no z slope:

    y = 1 + 0.5 x + 0.3 z + u_g + 0.5 u_g x + e,   e ~ N(0, 1)

so that (1 + x + z | g) has a rank-1 G₀ (lme4: isSingular). numpy.random.default_rng(3),
draws in the order x, z, u, e. This reproduces the committed CSV byte for byte (the seed
and the order were recovered from the CSV; the file was first written without a script).

Usage (from the repository root):
    python tests/data/rank_deficient_slopes.py           # check the CSV (exit 1 if it differs)
    python tests/data/rank_deficient_slopes.py --write   # rewrite the CSV
then ``Rscript tests/data/rank_deficient_slopes.R`` for the lme4 reference (JSON).
"""
import pathlib
import sys

import numpy as np
import pandas as pd

PATH = pathlib.Path(__file__).with_name("rank_deficient_slopes.csv")


def simulate(seed=3, n_groups=30, per_group=8):
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    x = rng.normal(size=n)
    z = rng.normal(size=n)
    u = rng.normal(size=n_groups)
    e = rng.normal(size=n)
    g = np.repeat(np.arange(n_groups), per_group)
    y = 1 + 0.5 * x + 0.3 * z + u[g] + 0.5 * u[g] * x + e
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"g{i}" for i in g]})


def main(argv):
    text = simulate().to_csv(index=False)
    if "--write" in argv:
        PATH.write_text(text)
        print(f"wrote {PATH}")
        return 0
    same = PATH.read_text() == text
    print("identical" if same else f"{PATH} differs from the simulation")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
