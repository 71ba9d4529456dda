"""Simulate tests/data/cli/genotypes.txt: SNP genotypes of 200 animals of the bundled animal
pedigree (src/mme/data/animal_pedigree.csv, 469 animals), in BLUPF90's layout.

500 unlinked biallelic markers are dropped through the pedigree: each founder (and each
unknown parent) draws its two alleles with the marker's frequency p ~ U(0.05, 0.5); an
animal receives one of its sire's two alleles and one of its dam's, each with probability
1/2 (Mendelian sampling). 200 animals are genotyped, drawn without replacement from the 469
(the rest, with records or not, are not). numpy.random.default_rng(2026), draws in the
order p, founders' alleles in pedigree order, transmissions in pedigree order, the
genotyped animals. The genotypes are not related to the records' weights (the file is for
the command line's genomic input, whose results are compared with the Python API's).

The file is BLUPF90's: per line the id padded with blanks to 6 characters, a blank, then
one digit 0/1/2 (copies of the counted allele) per marker.

Usage (from the repository root):
    PYTHONPATH=src python tests/data/cli/genotypes.py           # check (exit 1 if it differs)
    PYTHONPATH=src python tests/data/cli/genotypes.py --write   # rewrite the file
"""
import pathlib
import sys

import numpy as np
import pandas as pd

import mme

ROOT = pathlib.Path(__file__).resolve().parents[3]
PEDIGREE = ROOT / "src" / "mme" / "data" / "animal_pedigree.csv"
PATH = pathlib.Path(__file__).with_name("genotypes.txt")


def simulate(seed=2026, n_markers=500, n_genotyped=200):
    ped = mme.Pedigree.from_frame(pd.read_csv(PEDIGREE, dtype=str), missing=("0",))
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.5, n_markers)
    n = ped.n
    sire, dam = np.asarray(ped.sire), np.asarray(ped.dam)   # parents before offspring
    alleles = np.zeros((n, 2, n_markers), dtype=np.int8)
    founders = (sire < 0) & (dam < 0)
    alleles[founders] = rng.random((int(founders.sum()), 2, n_markers)) < p
    for i in np.flatnonzero(~founders):
        for side, parent in enumerate((sire[i], dam[i])):
            if parent < 0:
                alleles[i, side] = rng.random(n_markers) < p
            else:
                pick = rng.integers(0, 2, n_markers)
                alleles[i, side] = alleles[parent, pick, np.arange(n_markers)]
    genotypes = alleles.sum(axis=1)
    chosen = np.sort(rng.choice(n, n_genotyped, replace=False))
    ids = ped.ids[chosen]
    return "".join(f"{a:<6} {''.join(map(str, g))}\n" for a, g in zip(ids, genotypes[chosen]))


if __name__ == "__main__":
    text = simulate()
    if "--write" in sys.argv:
        PATH.write_text(text)
        print(f"wrote {PATH}")
    elif PATH.read_text() != text:
        print(f"{PATH} differs from the simulation")
        sys.exit(1)
    else:
        print(f"{PATH} reproduced")
