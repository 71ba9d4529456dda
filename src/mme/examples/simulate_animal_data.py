"""Simulate the small pedigree and body-weight records of ``mme.examples.animal``.

    python -m mme.examples.simulate_animal_data [--out DIR]

writes ``animal_pedigree.csv`` (id, sire, dam; 0 = unknown parent) and
``animal_records.csv`` (id, herd, sex, weight) — by default into the package's
``data/`` folder, regenerating the shipped files exactly (fixed seed).

The population: 60 unrecorded founders (12 males, 48 females), then 4
discrete generations of 110 calves each, 500 animals born. Each generation's
calves have one of 5 sires drawn from the males of the two previous generations
and a dam drawn at random from the females of the two previous generations, so
half-sib and parent-offspring matings occur and some animals are inbred. A
recorded parent is made unknown with probability 5% (in truth that parent is an
unrelated base-population animal, which is what the model assumes for an unknown
parent). Sires are chosen at random (no selection).

True breeding values follow the recursion behind A = T D T':

    a_i = (a_s + a_d)/2 + m_i,   Var(m_i) = σ²_a d_i,
    d_i = 1/2 − (F_s + F_d)/4 (both parents known), 3/4 − F_p/4 (one), 1 (none),

with F from the tabular relationship matrix (500 × 500 is small). Weights are

    weight = 250 + 25·[sex = M] + herd + a + e,
    herd ~ N(0, 60), a ~ N(0, 90 A), e ~ N(0, 150)        (kg², kg)

over 8 herds, so h² = 90 / (90 + 60 + 150) = 0.30 with the denominator
:meth:`mme.Fit.heritability` uses (every variance component). 95% of the 440
non-founders have a record (414). As in a breeder's file, the pedigree then keeps
the recorded animals and their ancestors only — 469 animals, renumbered 1..469
in birth order; 109 of them are inbred (F up to 0.25).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["simulate", "TRUE_VARIANCES", "TRUE_H2", "SEED"]

#: the simulated variance components (kg²)
TRUE_VARIANCES = {"id": 90.0, "herd": 60.0, "Residual": 150.0}
#: σ²_a over the sum of all variances, as ``fit.heritability("id")`` defines it
TRUE_H2 = TRUE_VARIANCES["id"] / sum(TRUE_VARIANCES.values())
SEED = 20261203

N_FOUNDER_SIRES, N_FOUNDER_DAMS = 12, 48
N_GENERATIONS, N_PER_GENERATION = 4, 110
SIRES_PER_GENERATION = 5
N_HERDS = 8
P_UNKNOWN = 0.05
P_RECORDED = 0.95
MU, MALE_EFFECT = 250.0, 25.0


def simulate(seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(pedigree, records, truth): the two CSV tables and the true values.

    ``truth`` has one row per animal: id, generation, sex, inbreeding, tbv
    (true breeding value).
    """
    rng = np.random.default_rng(seed)
    s2a = TRUE_VARIANCES["id"]
    n_f = N_FOUNDER_SIRES + N_FOUNDER_DAMS
    n = n_f + N_GENERATIONS * N_PER_GENERATION

    sire = np.full(n, -1)
    dam = np.full(n, -1)
    gen = np.zeros(n, dtype=int)
    male = np.zeros(n, dtype=bool)
    male[:N_FOUNDER_SIRES] = True
    tbv = np.zeros(n)
    A = np.zeros((n, n))  # tabular relationship matrix, filled in birth order

    def add_animal(i: int) -> None:
        s, d = sire[i], dam[i]
        row = np.zeros(i)
        if s >= 0:
            row += 0.5 * A[s, :i]
        if d >= 0:
            row += 0.5 * A[d, :i]
        A[i, :i] = A[:i, i] = row
        A[i, i] = 1.0 + (0.5 * A[s, d] if s >= 0 and d >= 0 else 0.0)
        F = np.diag(A) - 1.0
        if s >= 0 and d >= 0:
            di = 0.5 - (F[s] + F[d]) / 4.0
        elif s >= 0 or d >= 0:
            di = 0.75 - F[s if s >= 0 else d] / 4.0
        else:
            di = 1.0
        # an unknown parent is, in truth, an unrelated base animal: its half of
        # the breeding value is part of the Mendelian term (d_i already counts it)
        tbv[i] = (0.5 * (tbv[s] if s >= 0 else 0.0) + 0.5 * (tbv[d] if d >= 0 else 0.0)
                  + rng.normal(0.0, np.sqrt(s2a * di)))

    for i in range(n_f):
        add_animal(i)

    i = n_f
    for g in range(1, N_GENERATIONS + 1):
        eligible = (gen >= g - 2) & (np.arange(n) < i)
        males = np.flatnonzero(eligible & male)
        females = np.flatnonzero(eligible & ~male)
        sires = rng.choice(males, size=min(SIRES_PER_GENERATION, len(males)), replace=False)
        for _ in range(N_PER_GENERATION):
            gen[i] = g
            male[i] = rng.random() < 0.5
            s = rng.choice(sires)
            d = rng.choice(females)
            sire[i] = -1 if rng.random() < P_UNKNOWN else s
            dam[i] = -1 if rng.random() < P_UNKNOWN else d
            add_animal(i)
            i += 1

    herd_effect = rng.normal(0.0, np.sqrt(TRUE_VARIANCES["herd"]), N_HERDS)
    herd = rng.integers(0, N_HERDS, n)
    e = rng.normal(0.0, np.sqrt(TRUE_VARIANCES["Residual"]), n)
    weight = MU + MALE_EFFECT * male + herd_effect[herd] + tbv + e
    recorded = (gen > 0) & (rng.random(n) < P_RECORDED)

    # as in a breeder's file, the pedigree lists the recorded animals and their
    # ancestors: an animal with neither a record nor a recorded descendant goes
    keep = recorded.copy()
    for i in range(n - 1, -1, -1):
        if keep[i]:
            for p in (sire[i], dam[i]):
                if p >= 0:
                    keep[p] = True
    new_id = np.cumsum(keep)  # ids 1..m in birth order
    k = np.flatnonzero(keep)
    ped = pd.DataFrame({"id": new_id[k],
                        "sire": np.where(sire[k] >= 0, new_id[np.maximum(sire[k], 0)], 0),
                        "dam": np.where(dam[k] >= 0, new_id[np.maximum(dam[k], 0)], 0)})
    r = np.flatnonzero(recorded)
    sex = np.where(male, "M", "F")
    records = pd.DataFrame({"id": new_id[r],
                            "herd": [f"H{h + 1}" for h in herd[r]],
                            "sex": sex[r],
                            "weight": np.round(weight[r], 1)})
    truth = pd.DataFrame({"id": new_id[k], "generation": gen[k], "sex": sex[k],
                          "inbreeding": np.diag(A)[k] - 1.0, "tbv": tbv[k]})
    return ped, records, truth


def write(out: Path | str | None = None, seed: int = SEED) -> tuple[Path, Path]:
    """Write the two CSVs into ``out`` (default: the package's data folder)."""
    out = Path(out) if out is not None else Path(__file__).resolve().parent.parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    ped, records, _ = simulate(seed)
    p_ped, p_rec = out / "animal_pedigree.csv", out / "animal_records.csv"
    ped.to_csv(p_ped, index=False)
    records.to_csv(p_rec, index=False)
    return p_ped, p_rec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default: mme/data)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    p_ped, p_rec = write(args.out, args.seed)
    ped, records, truth = simulate(args.seed)
    F = truth["inbreeding"]
    print(f"wrote {p_ped} ({len(ped)} animals, {int((ped.sire == 0).sum())} unknown sires, "
          f"{int((ped.dam == 0).sum())} unknown dams)")
    print(f"wrote {p_rec} ({len(records)} records, {records.herd.nunique()} herds)")
    print(f"inbred animals: {int((F > 0).sum())}, mean F {F.mean():.4f}, max F {F.max():.4f}; "
          f"true h2 = {TRUE_H2:.2f}")


if __name__ == "__main__":
    main()
