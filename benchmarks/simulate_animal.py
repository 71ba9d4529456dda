#!/usr/bin/env python
"""Simulate a pedigree and phenotypes for an animal model with known variances.

    y = mu + sex + herd + a + e,   herd ~ N(0, s2_herd),  a ~ N(0, s2_a A),  e ~ N(0, s2_e)

Population (one cohort = one birth year, overlapping generations):

* cohort 0 are founders (both parents unknown);
* in each later cohort every animal gets a sire from a few *selected* sires
  (by default sqrt(cohort size)/2 of them per year, chosen by truncation on own
  phenotype among the males born 1..3 years before - the best fifth of a random
  set of candidates, see ``selected_fraction`` - so good sires can be used in
  several years) and a dam drawn at random from the many females born 1..5
  years before;
* each recorded parent is then made unknown with probability ``unknown``
  (default 7%); such an animal's missing parent is, in truth, a base-population
  animal (unrelated, not inbred, mean 0) - exactly what the model assumes for an
  unknown parent, so REML on the recorded pedigree is unbiased;
* inbreeding accumulates (few sires, overlapping generations, selection).

True breeding values follow the recursion of A = T D T':

    a_i = (a_s + a_d)/2 + m_i,   Var(m_i) = s2_a d_i,
    d_i = 1/2 - (F_s + F_d)/4 (both parents known), 3/4 - F_p/4 (one), 1 (none),

with the parents' inbreeding F from ``mme``'s Meuwissen & Luo kernel, recomputed
on the pedigree so far after each cohort. Selection is on phenotypes that are
part of the data and the whole pedigree is recorded, so it is ignorable for
REML/BLUP (Henderson 1975; Sorensen & Kennedy 1984): the simulated variances
are the base-population parameters the animal model estimates.

Every animal has one record (``record_fraction`` < 1 drops records at random
after the simulation). Herds have unequal sizes (gamma-distributed shares,
``herd_size`` records on average); sex is M/F with probability 1/2.

Usage::

    from simulate_animal import simulate_animal
    ped, phen, truth = simulate_animal(10_000, seed=1)
    fit = mme.fit("y ~ sex + (1|herd) + (1|id)", phen,
                  relmat={"id": mme.Pedigree.from_frame(ped)})

    python benchmarks/simulate_animal.py --n 10000   # prints a summary
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

__all__ = ["simulate_animal", "TRUE_VARIANCES"]

#: default variances: h2 = 0.4 / 1.2 = 1/3, herd share 1/6
TRUE_VARIANCES = {"id": 0.4, "herd": 0.2, "Residual": 0.6}


def _prefix_inbreeding(sire: np.ndarray, dam: np.ndarray, m: int, F: np.ndarray) -> None:
    """F[:m] for the first m animals (parents before offspring, -1 unknown)."""
    from mme import _core
    _core.inbreeding(sire[:m], dam[:m], F[:m])


def simulate_animal(n_animals: int = 10_000, *, n_cohorts: int = 10,
                    sigma2_a: float = TRUE_VARIANCES["id"],
                    sigma2_herd: float = TRUE_VARIANCES["herd"],
                    sigma2_e: float = TRUE_VARIANCES["Residual"],
                    mu: float = 10.0, sex_effect: float = 0.5, herd_size: float = 50.0,
                    sires_per_year: int | None = None, selected_fraction: float = 0.2,
                    sire_ages=(1, 2, 3), dam_ages=(1, 2, 3, 4, 5),
                    unknown: float = 0.07, selection: bool = True,
                    record_fraction: float = 1.0, seed: int = 1):
    """Simulate a pedigree, phenotypes and the true values behind them.

    Parameters
    ----------
    n_animals : int
        Animals in the pedigree (all cohorts, founders included).
    n_cohorts : int
        Birth years; cohort 0 are the founders, the others have equal sizes.
    sigma2_a, sigma2_herd, sigma2_e : float
        Additive genetic (base population), herd and residual variances.
    mu, sex_effect : float
        Mean of females and the male - female difference.
    herd_size : float
        Average records per herd.
    sires_per_year : int, optional
        Sires used per year; default max(5, round(sqrt(cohort size) / 2)), i.e.
        16 sires x ~60 offspring for cohorts of 1,000 and 158 x ~630 for 100,000,
        so inbreeding accumulates in large populations too.
    selected_fraction : float
        Selection on phenotype: the sires are the best ``sires_per_year`` of a
        random ``sires_per_year / selected_fraction`` male candidates
        (truncation selection of intensity i = 1.4 for the default 0.2).
    sire_ages, dam_ages : sequences of int
        Ages (years) at which males can be sires and females dams.
    unknown : float
        Probability that a recorded parent is unknown.
    selection : bool
        Select sires on own phenotype (True) or at random (False).
    record_fraction : float
        Fraction of animals with a record (dropped at random after simulating).
    seed : int

    Returns
    -------
    ped : DataFrame
        ``id, sire, dam`` (int; 0 = unknown), parents before offspring.
    phen : DataFrame
        ``id, sex ("F"/"M"), herd ("h00001"...), cohort, y``.
    truth : dict
        ``sigma2`` (dict keyed like ``mme.fit``'s ``variances``), ``h2``
        (s2_a over the sum of the three variances, as ``Fit.heritability``),
        ``mu``, ``sex_effect``, ``bv`` (Series by id), ``herd_effect`` (Series by
        herd), ``F`` (Series by id), ``d`` (Mendelian-sampling factors, by id),
        ``n_sires`` (distinct sires used), ``unknown_fraction`` (unknown parents
        among non-founders).
    """
    if n_animals < 4 * n_cohorts:
        raise ValueError("n_animals must be at least 4 x n_cohorts")
    rng = np.random.default_rng(seed)
    n = int(n_animals)
    sizes = np.full(n_cohorts, n // n_cohorts, dtype=np.int64)
    sizes[-1] += n - sizes.sum()
    start = np.concatenate([[0], np.cumsum(sizes)])
    cohort = np.repeat(np.arange(n_cohorts), sizes)

    sire = np.full(n, -1, dtype=np.int64)
    dam = np.full(n, -1, dtype=np.int64)
    male = rng.random(n) < 0.5
    n_herds = max(2, int(round(n / herd_size)))
    share = rng.gamma(2.0, 1.0, n_herds)
    herd = rng.choice(n_herds, size=n, p=share / share.sum())
    herd_eff = rng.normal(0.0, np.sqrt(sigma2_herd), n_herds)
    e = rng.normal(0.0, np.sqrt(sigma2_e), n)
    z = rng.standard_normal(n)            # Mendelian sampling, standardised
    F = np.zeros(n)
    d = np.ones(n)
    a = np.zeros(n)
    y = np.zeros(n)

    def finish(lo, hi):
        s, dm = sire[lo:hi], dam[lo:hi]
        ks, kd = s >= 0, dm >= 0
        Fs = np.where(ks, F[np.maximum(s, 0)], 0.0)
        Fd = np.where(kd, F[np.maximum(dm, 0)], 0.0)
        dd = np.where(ks & kd, 0.5 - 0.25 * (Fs + Fd),
                      np.where(ks, 0.75 - 0.25 * Fs, np.where(kd, 0.75 - 0.25 * Fd, 1.0)))
        pa = 0.5 * (np.where(ks, a[np.maximum(s, 0)], 0.0) + np.where(kd, a[np.maximum(dm, 0)], 0.0))
        d[lo:hi] = dd
        a[lo:hi] = pa + np.sqrt(sigma2_a * dd) * z[lo:hi]
        y[lo:hi] = (mu + sex_effect * male[lo:hi] + herd_eff[herd[lo:hi]] + a[lo:hi] + e[lo:hi])

    finish(start[0], start[1])
    for t in range(1, n_cohorts):
        lo, hi = start[t], start[t + 1]
        m = hi - lo
        # sires: the best (or random) males among those born sire_ages years ago
        cand = np.flatnonzero(male[:lo] & np.isin(cohort[:lo], [t - k for k in sire_ages]))
        if len(cand) == 0:
            cand = np.flatnonzero(male[:lo])
        k = sires_per_year or max(5, int(round(np.sqrt(m) / 2)))
        k = min(len(cand), k)
        if selection:
            pool = rng.choice(cand, size=min(len(cand), int(np.ceil(k / selected_fraction))),
                              replace=False)
            sires = pool[np.argsort(-y[pool], kind="stable")[:k]]
        else:
            sires = rng.choice(cand, size=k, replace=False)
        # dams: random females born dam_ages years ago, one offspring each if possible
        fcand = np.flatnonzero(~male[:lo] & np.isin(cohort[:lo], [t - k for k in dam_ages]))
        if len(fcand) == 0:
            fcand = np.flatnonzero(~male[:lo])
        sire[lo:hi] = rng.choice(sires, size=m)
        dam[lo:hi] = rng.choice(fcand, size=m, replace=len(fcand) < m)
        sire[lo:hi][rng.random(m) < unknown] = -1
        dam[lo:hi][rng.random(m) < unknown] = -1
        # inbreeding of the parents (all born before lo)
        _prefix_inbreeding(sire, dam, lo, F)
        finish(lo, hi)
    _prefix_inbreeding(sire, dam, n, F)

    ids = np.arange(1, n + 1, dtype=np.int64)
    ped = pd.DataFrame({"id": ids, "sire": sire + 1, "dam": dam + 1})  # -1 → 0 = unknown
    herd_labels = np.array([f"h{h:05d}" for h in range(n_herds)], dtype=object)
    phen = pd.DataFrame({"id": ids, "sex": np.where(male, "M", "F"), "herd": herd_labels[herd],
                         "cohort": cohort, "y": y})
    if record_fraction < 1.0:
        phen = phen.loc[rng.random(n) < record_fraction].reset_index(drop=True)
    nonf = cohort > 0
    truth = {
        "sigma2": {"id": sigma2_a, "herd": sigma2_herd, "Residual": sigma2_e},
        "h2": sigma2_a / (sigma2_a + sigma2_herd + sigma2_e),
        "mu": mu, "sex_effect": sex_effect,
        "bv": pd.Series(a, index=ids, name="bv"),
        "herd_effect": pd.Series(herd_eff, index=herd_labels, name="herd_effect"),
        "F": pd.Series(F, index=ids, name="F"),
        "d": pd.Series(d, index=ids, name="d"),
        "n_sires": int(len(np.unique(sire[sire >= 0]))),
        "unknown_fraction": float(np.mean(np.concatenate([sire[nonf], dam[nonf]]) < 0)),
    }
    return ped, phen, truth


def describe(ped: pd.DataFrame, phen: pd.DataFrame, truth: dict) -> str:
    F = truth["F"]
    bv = truth["bv"]
    coh = phen.set_index("id")["cohort"].reindex(bv.index)
    trend = bv.groupby(coh.to_numpy()).mean()
    fmean = F.groupby(coh.to_numpy()).mean()
    lines = [
        f"{len(ped):,} animals, {len(phen):,} records, {phen['herd'].nunique():,} herds, "
        f"{truth['n_sires']:,} sires, {ped['dam'][ped['dam'] > 0].nunique():,} dams",
        f"unknown parents among non-founders: {truth['unknown_fraction']:.1%}; "
        f"inbred animals: {(F > 0).mean():.1%}; mean F {F.mean():.4f}, max F {F.max():.3f}",
        "mean F by cohort:  " + " ".join(f"{v:.3f}" for v in fmean),
        "mean a by cohort:  " + " ".join(f"{v:+.3f}" for v in trend),
        f"var(a) = {bv.var():.4f} (s2_a = {truth['sigma2']['id']}), h2 = {truth['h2']:.4f}",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--cohorts", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--random-sires", action="store_true", help="no selection")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ped, phen, truth = simulate_animal(args.n, n_cohorts=args.cohorts, seed=args.seed,
                                       selection=not args.random_sires)
    print(f"simulated in {time.perf_counter() - t0:.2f} s")
    print(describe(ped, phen, truth))


if __name__ == "__main__":
    main()
