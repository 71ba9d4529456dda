#!/usr/bin/env python
"""Scale check of the pedigree code (not a unit test).

Simulates a pedigree of ``--generations`` x ``--per-generation`` animals
(default 10 x 100,000 = 1M): generation 0 are founders; in each later
generation the sires are ``--sires`` males selected at random from the
previous generation, the dams random females of the previous generation,
and each parent is unknown with probability ``--unknown`` (default 0.1).

Times ``Pedigree.from_frame`` (normalisation, validation, sorting),
inbreeding (Meuwissen & Luo 1992), A^-1 (Henderson/Quaas) and log|A|, prints
seconds, nnz and the machine/versions line, and writes ``<out-prefix>.md`` and
``<out-prefix>.json`` (default ``benchmarks/results_pedigree``; sizes, seconds per
stage, the machine description of ``_machine.py``).

    python benchmarks/bench_pedigree.py [--generations 10] [--per-generation 100000]
        [--sires 1000] [--unknown 0.1] [--shuffle] [--string-ids] [--seed 1]
        [--out-prefix benchmarks/results_pedigree]

For a quick check on a small pedigree, write elsewhere so the committed results
stay those of the full size::

    python benchmarks/bench_pedigree.py --per-generation 10000 --out-prefix benchmarks/work/pedigree_small
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# stage key -> label (the keys are those of the JSON's "seconds")
STAGES = {
    "validate": "validate: `Pedigree.from_frame` (normalise + validate + sort)",
    "inbreeding": "inbreeding (Meuwissen & Luo)",
    "ainverse": "A⁻¹ (Henderson/Quaas, COO → CSC)",
    "logdet": "log|A|",
}


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


def markdown(res):
    sz, sec, out = res["sizes"], res["seconds"], res["result"]
    L = ["# Pedigree scale check (`benchmarks/bench_pedigree.py`)", ""]
    L.append(f"Run {res['timestamp']}, command `{res['command']}`.")
    L.append("")
    L.append(f"Simulated pedigree: {sz['animals']:,} animals = {sz['generations']} generations × "
             f"{sz['per_generation']:,}; {sz['sires']:,} sires selected per generation, random dams; "
             f"each parent unknown with probability {sz['unknown']:g}; rows "
             f"{'shuffled' if sz['shuffle'] else 'in generation order'}; "
             f"{'string' if sz['string_ids'] else 'integer'} ids; seed {sz['seed']} "
             f"(simulation {res['simulate_seconds']:.1f} s, not a stage). Each stage runs once.")
    L.append("")
    L.append(f"| stage | seconds ({sz['animals']:,} animals) |")
    L.append("|---|---:|")
    for k, label in STAGES.items():
        L.append(f"| {label.replace('|', chr(92) + '|')} | {sec[k]:.3f} |")
    L.append(f"| **total** | **{sum(sec.values()):.3f}** |")
    L.append("")
    L.append(f"A⁻¹: {out['ainverse_shape'][0]:,} × {out['ainverse_shape'][1]:,}, nnz = "
             f"{out['ainverse_nnz']:,} (both triangles); inbred animals: {out['inbred']:,}; mean F = "
             f"{out['mean_f']:.5f}; max F = {out['max_f']:.4f}; log|A| = {out['logdet_a']:.2f}.")
    L.append("")
    L.append(f"`{out['repr']}`")
    L.append("")
    la = res["loadavg_1min"]
    L.append(f"Load average (1 min) at start / end: {la[0]:.2f} / {la[1]:.2f} on {os.cpu_count()} CPUs "
             "(other processes on the machine perturb the timings).")
    L.append("")
    m = res.get("machine")
    if m is not None:
        from _machine import machine_markdown
        L.append(machine_markdown(m))
        L.append(f"mme imported from `{m['mme'].get('module_file')}`.")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--per-generation", type=int, default=100_000)
    ap.add_argument("--sires", type=int, default=1000)
    ap.add_argument("--unknown", type=float, default=0.1)
    ap.add_argument("--shuffle", action="store_true", help="rows in random order")
    ap.add_argument("--string-ids", action="store_true", help="ids as strings 'A1', ...")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out-prefix", default=os.path.join(HERE, "results_pedigree"),
                    help="write <prefix>.md and <prefix>.json (default benchmarks/results_pedigree)")
    args = ap.parse_args(argv)

    from mme import Pedigree  # the public API (module paths inside the package may change)

    t0 = time.perf_counter()
    df = simulate(args.generations, args.per_generation, args.sires, args.unknown, args.seed)
    if args.string_ids:
        for c in ("id", "sire", "dam"):
            df[c] = np.where(df[c] > 0, "A" + df[c].astype(str), "")
    if args.shuffle:
        df = df.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    t_sim = time.perf_counter() - t0
    print(f"pedigree: {len(df):,} animals, {args.generations} generations x "
          f"{args.per_generation:,}, {args.sires} sires/generation, "
          f"{args.unknown:.0%} unknown parents, shuffle={args.shuffle}, "
          f"string ids={args.string_ids}")

    times = {}
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ped = Pedigree.from_frame(df)
    times["validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    F = ped.inbreeding
    times["inbreeding"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    Ainv = ped.ainverse()
    times["ainverse"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ld = ped.logdet_a()
    times["logdet"] = time.perf_counter() - t0
    loadavg = [load_start, os.getloadavg()[0]]

    for k, v in times.items():
        print(f"  {STAGES[k]:<62s} {v:8.2f} s")
    print(f"  {'total':<62s} {sum(times.values()):8.2f} s")
    print(f"A^-1: {Ainv.shape[0]:,} x {Ainv.shape[1]:,}, nnz = {Ainv.nnz:,} (both triangles)")
    print(f"inbred animals: {(F > 0).sum():,}; mean F = {F.mean():.5f}; max F = {F.max():.4f}; "
          f"log|A| = {ld:.2f}")
    print(repr(ped))

    try:
        from _machine import machine_info
        info = machine_info(include_r=False)
        cpu, pk = info["cpu"], info["packages"]
        print(f"machine: {cpu['model']}, {cpu['cpus_available_to_process']} CPUs, "
              f"{info['ram_gib']} GiB; Python {info['python']}, numpy {pk['numpy']}, "
              f"scipy {pk['scipy']}, pandas {pk['pandas']}, Cython {pk['Cython']}; "
              f"mme git {info['mme'].get('git', '?')}")
    except Exception as exc:  # pragma: no cover
        print(f"machine info unavailable: {exc!r}")
        info = None

    res = {
        "timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_pedigree.py"]
                            + (sys.argv[1:] if argv is None else list(argv))),
        "args": vars(args),
        "sizes": {"animals": len(df), "generations": args.generations,
                  "per_generation": args.per_generation, "sires": args.sires, "unknown": args.unknown,
                  "shuffle": args.shuffle, "string_ids": args.string_ids, "seed": args.seed},
        "simulate_seconds": t_sim,
        "stages": STAGES,
        "seconds": times,
        "total_seconds": sum(times.values()),
        "loadavg_1min": loadavg,
        "result": {"ainverse_shape": [int(Ainv.shape[0]), int(Ainv.shape[1])], "ainverse_nnz": int(Ainv.nnz),
                   "inbred": int((F > 0).sum()), "mean_f": float(F.mean()), "max_f": float(F.max()),
                   "logdet_a": float(ld), "repr": repr(ped)},
        "machine": info,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out_prefix)), exist_ok=True)
    with open(args.out_prefix + ".json", "w") as fh:
        json.dump(res, fh, indent=2, default=str)
    with open(args.out_prefix + ".md", "w") as fh:
        fh.write(markdown(res))
    print(f"wrote {args.out_prefix}.md and {args.out_prefix}.json")


if __name__ == "__main__":
    main()
