#!/usr/bin/env python
"""Scale check of the pedigree code (not a unit test).

Simulates a pedigree of ``--generations`` x ``--per-generation`` animals
(default 10 x 100,000 = 1M): generation 0 are founders; in each later
generation the sires are ``--sires`` males selected at random from the
previous generation, the dams random females of the previous generation,
and each parent is unknown with probability ``--unknown`` (default 0.1).

Times ``Pedigree.from_frame`` (normalisation, validation, sorting),
inbreeding (Meuwissen & Luo 1992), A^-1 (Henderson/Quaas) and log|A|, and
prints seconds, nnz and the machine/versions line.

    python benchmarks/bench_pedigree.py [--generations 10] [--per-generation 100000]
        [--sires 1000] [--unknown 0.1] [--shuffle] [--string-ids] [--seed 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def simulate(generations, per_gen, n_sires, unknown, seed):
    rng = np.random.default_rng(seed)
    n = generations * per_gen
    ids = np.arange(1, n + 1, dtype=np.int64)
    male = rng.random(n) < 0.5
    sire = np.zeros(n, dtype=np.int64)  # 0 = unknown
    dam = np.zeros(n, dtype=np.int64)
    for g in range(1, generations):
        prev = ids[(g - 1) * per_gen:g * per_gen]
        pm = prev[male[(g - 1) * per_gen:g * per_gen]]
        pf = prev[~male[(g - 1) * per_gen:g * per_gen]]
        sel = rng.choice(pm, size=min(n_sires, len(pm)), replace=False)
        lo, hi = g * per_gen, (g + 1) * per_gen
        sire[lo:hi] = rng.choice(sel, size=per_gen)
        dam[lo:hi] = rng.choice(pf, size=per_gen)
        sire[lo:hi][rng.random(per_gen) < unknown] = 0
        dam[lo:hi][rng.random(per_gen) < unknown] = 0
    return pd.DataFrame({"id": ids, "sire": sire, "dam": dam})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--per-generation", type=int, default=100_000)
    ap.add_argument("--sires", type=int, default=1000)
    ap.add_argument("--unknown", type=float, default=0.1)
    ap.add_argument("--shuffle", action="store_true", help="rows in random order")
    ap.add_argument("--string-ids", action="store_true", help="ids as strings 'A1', ...")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from mme.breeding.pedigree import Pedigree

    df = simulate(args.generations, args.per_generation, args.sires, args.unknown, args.seed)
    if args.string_ids:
        for c in ("id", "sire", "dam"):
            df[c] = np.where(df[c] > 0, "A" + df[c].astype(str), "")
    if args.shuffle:
        df = df.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    print(f"pedigree: {len(df):,} animals, {args.generations} generations x "
          f"{args.per_generation:,}, {args.sires} sires/generation, "
          f"{args.unknown:.0%} unknown parents, shuffle={args.shuffle}, "
          f"string ids={args.string_ids}")

    times = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ped = Pedigree.from_frame(df)
    times["from_frame (normalise + validate + sort)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    F = ped.inbreeding
    times["inbreeding (Meuwissen & Luo)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    Ainv = ped.ainverse()
    times["A^-1 (Henderson/Quaas, COO -> CSC)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ld = ped.logdet_a()
    times["log|A|"] = time.perf_counter() - t0

    for k, v in times.items():
        print(f"  {k:<45s} {v:8.2f} s")
    print(f"  {'total':<45s} {sum(times.values()):8.2f} s")
    print(f"A^-1: {Ainv.shape[0]:,} x {Ainv.shape[1]:,}, nnz = {Ainv.nnz:,} (both triangles)")
    print(f"inbred animals: {(F > 0).sum():,}; mean F = {F.mean():.5f}; max F = {F.max():.4f}; "
          f"log|A| = {ld:.2f}")
    print(repr(ped))
    try:
        from _machine import machine_info
        info = machine_info(include_r=False, include_cholmod=False)
        cpu, pk = info["cpu"], info["packages"]
        print(f"machine: {cpu['model']}, {cpu['cpus_available_to_process']} CPUs, "
              f"{info['ram_gib']} GiB; Python {info['python']}, numpy {pk['numpy']}, "
              f"scipy {pk['scipy']}, pandas {pk['pandas']}, Cython {pk['Cython']}; "
              f"mme git {info['mme'].get('git', '?')}")
    except Exception as exc:  # pragma: no cover
        print(f"machine info unavailable: {exc!r}")


if __name__ == "__main__":
    main()
