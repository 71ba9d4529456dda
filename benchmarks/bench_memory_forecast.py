#!/usr/bin/env python
"""The command line's memory forecast against the memory a fit actually takes.

    python benchmarks/bench_memory_forecast.py [--sizes 100000,300000] [--seed 1]
        [--out benchmarks/results_memory_forecast.md]

For each size, ``simulate_animal.simulate_animal(n, seed)`` (the animal benchmark's
data: ``bench_animal.py``) is written as CSV files (records, pedigree) by one
process; a fresh process then runs the command line in-process,

    mme fit "y ~ sex + (1|herd) + (1|id)" --data records.csv --pedigree pedigree.csv
        --relmat id --out DIR --quiet

with two wrappers around the runner (nothing else changed):

* ``mme.cli.memory.forecast`` — keeps the ``Forecast`` (nnz(L), its parts, the total);
* ``mme.cli.runner._forecast`` — right after the forecast, before anything of the
  factorization is allocated, reads the process's resident set (``VmRSS``) and resets
  its high-water mark (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0).

When ``main()`` returns (the whole fit: AI-REML rounds, the final PEV, Satterthwaite
df, the result files) ``VmHWM`` is the peak resident set since the forecast; the
measured need is that peak less the RSS at the forecast, which is what the forecast
predicts (the memory the fit adds to the process). Within 25% is the goal.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
sys.path.insert(0, HERE)

FORMULA = "y ~ sex + (1|herd) + (1|id)"
GOAL = 0.25
MIB = 2 ** 20


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _paths(n: int, seed: int) -> tuple:
    stem = os.path.join(WORK, f"memfc_n{n}_s{seed}")
    return stem + "_records.csv", stem + "_pedigree.csv"


def worker_simulate(n: int, seed: int) -> dict:
    from simulate_animal import simulate_animal
    rec, ped_path = _paths(n, seed)
    if not (os.path.exists(rec) and os.path.exists(ped_path)):
        t0 = time.perf_counter()
        ped, phen, _ = simulate_animal(n, seed=seed)
        os.makedirs(WORK, exist_ok=True)
        ped.to_csv(ped_path, index=False)
        phen[["id", "sex", "herd", "y"]].to_csv(rec, index=False)
        return {"simulated_seconds": time.perf_counter() - t0}
    return {"simulated_seconds": None}


def worker_fit(n: int, seed: int) -> dict:
    import mme
    from mme.cli import memory, runner
    from mme.cli.main import main
    rec, ped = _paths(n, seed)
    seen = {}
    forecast, _forecast = memory.forecast, runner._forecast

    def keep_forecast(*a, **kw):
        fc = forecast(*a, **kw)
        seen["forecast"] = fc
        return fc

    def after_forecast(cfg, system, progress):
        _forecast(cfg, system, progress)
        seen["hwm_before"] = _status("VmHWM")
        seen["rss_at_forecast"] = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")              # VmHWM := VmRSS
        seen["hwm_reset"] = _status("VmHWM")
        seen["t_forecast"] = time.perf_counter()

    memory.forecast, runner._forecast = keep_forecast, after_forecast
    out = os.path.join(WORK, f"memfc_out_n{n}_s{seed}")
    t0 = time.perf_counter()
    status = main(["fit", FORMULA, "--data", rec, "--pedigree", ped, "--relmat", "id",
                   "--out", out, "--quiet"])
    t1 = time.perf_counter()
    peak = _status("VmHWM")
    fc = seen["forecast"]
    with open(os.path.join(out, "iteration_log.csv")) as fh:
        rounds = sum(1 for _ in fh) - 2       # header and the start row
    return {"n": n, "status": status, "mme": mme.__version__, "dim": fc.dim,
            "nnz_C": fc.nnz_C, "nnz_L": fc.nnz_L, "supernodal": fc.supernodal,
            "stored_L": fc.stored_L, "held": fc.held, "transient": fc.transient,
            "peak_phase": fc.peak_phase, "predicted": fc.total,
            "available": fc.available, "source": fc.source,
            "rss_at_forecast": seen["rss_at_forecast"], "hwm_before": seen["hwm_before"],
            "hwm_reset": seen["hwm_reset"], "peak_after": peak,
            "measured": peak - seen["rss_at_forecast"], "rounds": rounds,
            "seconds_total": t1 - t0, "seconds_after_forecast": t1 - seen["t_forecast"]}


def run_worker(kind: str, n: int, seed: int) -> dict:
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                          "--n", str(n), "--seed", str(seed)],
                         capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} {n}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def render(results: list, args, seconds: float) -> str:
    from _machine import machine_info, machine_markdown
    info = machine_info(include_r=False)
    lines = [
        "# Memory forecast vs measured peak (`benchmarks/bench_memory_forecast.py`)", "",
        f"Run {dt.datetime.now().isoformat(timespec='seconds')}, command "
        f"`python benchmarks/bench_memory_forecast.py --sizes "
        f"{','.join(str(r['n']) for r in results)} --seed {args.seed}`; total "
        f"{seconds / 60:.1f} min; mme {results[0]['mme']}.", "",
        f"Model `{FORMULA}` with the pedigree as `--relmat id`, through the command line "
        "(`mme.cli.main.main`, in a fresh process per size) on the animal benchmark's "
        "simulated data (`simulate_animal.py`, one record per animal). *Predicted*: the "
        "forecast printed after the symbolic analysis (`mme.cli.memory`): the parts held "
        "through the fit plus the largest transient set of a REML round. *Measured*: the "
        "peak resident set of the process after the forecast (`VmHWM`, reset at the "
        "forecast) less its resident set at the forecast — the memory the fit added "
        "(AI-REML rounds, final PEV and Satterthwaite df, result files).", "",
        "| | " + " | ".join(f"{r['n']:,} animals" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")

    row("MME dimension", lambda r: f"{r['dim']:,}")
    row("nnz(C) (lower)", lambda r: f"{r['nnz_C']:,}")
    row("nnz(L) (from the pattern)", lambda r: f"{r['nnz_L']:,}")
    row("factor kind; stored entries of L", lambda r: (
        f"supernodal; {r['stored_L']:,}" if r["supernodal"] else "simplicial"))
    for part in results[0]["held"]:
        row(f"predicted, held: {part}", lambda r, p=part: f"{r['held'][p] / MIB:.1f} MiB")
    for phase in results[0]["transient"]:
        row(f"predicted, transient: {phase}", lambda r, p=phase: (
            f"{sum(r['transient'][p].values()) / MIB:.1f} MiB"
            + (" (peak)" if r["peak_phase"] == p else "")))
    row("**predicted total**", lambda r: f"**{r['predicted'] / MIB:.1f} MiB**")
    row("RSS at the forecast", lambda r: f"{r['rss_at_forecast'] / MIB:.1f} MiB")
    row("peak RSS after it", lambda r: f"{r['peak_after'] / MIB:.1f} MiB")
    row("**measured increase**", lambda r: f"**{r['measured'] / MIB:.1f} MiB**")
    row("predicted / measured", lambda r: f"{r['predicted'] / r['measured']:.3f}")
    row(f"within {GOAL:.0%}", lambda r: "PASS" if abs(r['predicted'] / r['measured'] - 1)
        <= GOAL else "FAIL")
    row("REML rounds; exit status", lambda r: f"{r['rounds']}; {r['status']}")
    row("seconds (whole run / after the forecast)",
        lambda r: f"{r['seconds_total']:.1f} / {r['seconds_after_forecast']:.1f}")
    row("process peak before the forecast (VmHWM)", lambda r: f"{r['hwm_before'] / MIB:.1f} MiB")
    lines += ["", "The forecast compares its total with the memory available (here "
              f"{results[0]['source']}: {results[0]['available'] / 2**30:.1f} GiB) and "
              "refuses the model, before the factorization, when it does not fit "
              "(`--memory-limit`, `MME_MEMORY_LIMIT`; `tests/test_cli.py` refuses the "
              "bundled example on purpose).", "", machine_markdown(info), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results_memory_forecast.md"))
    ap.add_argument("--worker", choices=["simulate", "fit"])
    ap.add_argument("--n", type=int)
    args = ap.parse_args()
    if args.worker:
        fn = worker_simulate if args.worker == "simulate" else worker_fit
        print(json.dumps(fn(args.n, args.seed)))
        return
    t0 = time.perf_counter()
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        run_worker("simulate", n, args.seed)
        r = run_worker("fit", n, args.seed)
        print(f"{n:>9,} animals: predicted {r['predicted'] / MIB:8.1f} MiB, measured "
              f"{r['measured'] / MIB:8.1f} MiB (ratio {r['predicted'] / r['measured']:.3f})",
              flush=True)
        results.append(r)
    os.makedirs(WORK, exist_ok=True)
    with open(os.path.join(WORK, "memory_forecast.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    text = render(results, args, time.perf_counter() - t0)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
