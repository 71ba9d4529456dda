"""Regenerate the pictures in docs/ with mme.plot (needs matplotlib: pip install mme[plot]).

    python docs/make_figures.py [--out DIR]      # default: the folder of this script

kfert_caterpillar.png          block BLUPs of the seed's RCBD, yield ~ K2O_lbac + (1|rep)
kfert_marginal_covariance.png  V = ZGZ' + R of its 15 plots
animal_caterpillar.png         EBVs of the 469 animals of python -m mme.examples.animal
animal_marginal_covariance.png V of 45 records of that model (3 herds, half-sibs adjacent)
field_map.png                  residuals on the field of python -m mme.examples.field, fitted
                               with AR1 ⊗ AR1 residuals (yield ~ rep + (1|gen))
field_variogram.png            their sample semivariogram beside the fitted one
fa_biplot.png                  FA(2) genotype × environment biplot of mme.examples.field.load_met
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import mme  # noqa: E402
from mme import plot  # noqa: E402
from mme.examples.animal import FORMULA, load_animal  # noqa: E402
from mme.examples.field import FORMULA as FIELD_FORMULA, MET_FORMULA, load_field, load_met  # noqa: E402
from mme.examples.rcbd import load_kfert  # noqa: E402

DPI = 110


def _save(ax, path: Path) -> None:
    ax.figure.savefig(path, dpi=DPI)
    plt.close(ax.figure)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Regenerate docs/*.png")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    out = Path(ap.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)

    field = mme.fit(FIELD_FORMULA, load_field(), residual="ar1(col):ar1(row)")
    _save(plot.field_map(field), out / "field_map.png")
    axes = plot.variogram(field, max_lag=8)
    _save(axes[0], out / "field_variogram.png")

    met = mme.fit(MET_FORMULA, load_met(), structure={"gen": "fa(2)"})
    _save(plot.fa_biplot(met, "gen"), out / "fa_biplot.png")

    kfert = mme.fit("yield ~ K2O_lbac + (1|rep)", load_kfert())
    ax = plot.caterpillar(kfert, "rep")
    ax.set_title("kfert RCBD: block (rep) BLUPs, yield ~ K2O_lbac + (1|rep)", fontsize=10)
    _save(ax, out / "kfert_caterpillar.png")
    _save(plot.marginal_covariance(kfert), out / "kfert_marginal_covariance.png")

    ped_df, records = load_animal()
    ped = mme.Pedigree.from_frame(ped_df)
    animal = mme.fit(FORMULA, records, relmat={"id": ped})
    ax = plot.caterpillar(animal, "id")
    ax.set_title(f"Animal model: EBVs of the {ped.n} pedigree animals\n"
                 f"{FORMULA}, A from the pedigree", fontsize=10)
    ax.set_ylabel("animal (sorted by EBV)")
    ax.set_xlabel("EBV (kg) ± 1.96·√cond_var  (95% intervals)")
    _save(ax, out / "animal_caterpillar.png")
    # 15 records from each of three herds, half-sibs (same sire) next to each other
    sel = (records.reset_index(drop=True).assign(pos=lambda d: d.index)
           .merge(ped_df, on="id", how="left"))
    sel = sel[sel["herd"].isin(["H1", "H2", "H3"])].groupby("herd", sort=True).head(15)
    rows = sel.sort_values(["herd", "sire", "id"], key=_natural)["pos"].to_numpy()
    ax = plot.marginal_covariance(animal, rows=rows)
    img = ax.images[0]
    lo, hi = img.get_array().min(), img.get_array().max()
    if -1e-10 * hi < lo < 0:  # roundoff (~1e-14) in A for unrelated pairs: V >= 0 in truth
        img.set_cmap("Blues")
        img.set_clim(0.0, hi)
    ax.set_title(f"Animal model: V = ZGZ' + R of {len(rows)} of {animal.nobs} records\n"
                 "3 herds (blocks), relatives within and across herds", fontsize=9)
    _save(ax, out / "animal_marginal_covariance.png")


def _natural(col):
    """Sort key: ids as numbers, other columns as they are."""
    return col.astype(int) if col.name in ("sire", "id") else col


if __name__ == "__main__":
    main()
