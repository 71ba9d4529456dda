"""The seed's randomized complete block design (Cochran & Cox's potassium trial):
yield of 5 K₂O rates in 3 blocks, analysed with blocks fixed and blocks random.

    python -m mme.examples.rcbd
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

import mme


def load_kfert() -> pd.DataFrame:
    """The bundled RCBD data, with ``rep`` and ``K2O_lbac`` as factors (levels in numeric order)."""
    with resources.files("mme").joinpath("data/kfert.csv").open() as fh:
        df = pd.read_csv(fh)
    for col in ("rep", "K2O_lbac"):
        df[col] = pd.Categorical(df[col].astype(str),
                                 categories=[str(v) for v in sorted(df[col].unique())])
    return df


def main() -> None:
    df = load_kfert()
    fixed = mme.fit("yield ~ K2O_lbac + rep", data=df)
    random = mme.fit("yield ~ K2O_lbac + (1|rep)", data=df)
    for title, f in (("Blocks fixed", fixed), ("Blocks random (Kenward-Roger df)", random)):
        print(f"==== {title} " + "=" * (60 - len(title)))
        print(f.summary())
        print()
        em = f.emmeans("K2O_lbac", df_method="kenward-roger" if f.blocks else "residual")
        print(em)
        print(em.contrast({"c(1, 0, 0, 0, -1)": [1, 0, 0, 0, -1]}))
        print()


if __name__ == "__main__":
    main()
