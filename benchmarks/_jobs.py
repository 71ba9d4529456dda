"""How the benchmark drivers run a measured job: one fresh Python process per job (its
own peak memory, no warm caches from the previous job), CPU use of other processes read
from /proc/stat around it, and the result files written the same way.

Shared by bench_animal.py, bench_multitrait.py and bench_field.py.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import time


def maxrss_gib() -> float:
    """Peak resident set size of this process (GiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _stat_snap():
    """(total, idle) CPU ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [float(x) for x in fh.readline().split()[1:]]
    return sum(v), v[3] + v[4]   # total, idle + iowait


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat): other processes' load."""
    try:
        t0, i0 = _stat_snap()
        time.sleep(seconds)
        t1, i1 = _stat_snap()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1e-9)
    except OSError:  # pragma: no cover
        return float("nan")


def wait_idle(limit: float, threshold: float = 0.15) -> float:
    """CPU busy fraction once it is below ``threshold`` or ``limit`` seconds have passed."""
    t0 = time.perf_counter()
    busy = cpu_busy()
    while busy > threshold and time.perf_counter() - t0 < limit:
        busy = cpu_busy(2.0)
    return busy


def run_worker(cmd: list, out: str, timeout: float, wait: float) -> dict:
    """Run ``cmd`` (a worker writing its JSON result to ``out``) after waiting up to
    ``wait`` s for idle CPUs; return that result with ``wall`` seconds, ``cpu_busy_before``,
    ``cpu_other_during`` (the share of all CPU ticks other processes used during the job)
    and the load averages before and after — or ``{"error": ..., "wall": ...}``."""
    busy = wait_idle(wait)
    if os.path.exists(out):
        os.remove(out)
    la0 = list(os.getloadavg())
    s0 = _stat_snap()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not os.path.exists(out):
        return {"error": f"exit status {proc.returncode}", "wall": wall}
    with open(out) as fh:
        res = json.load(fh)
    s1 = _stat_snap()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime) * os.sysconf("SC_CLK_TCK")
    total = s1[0] - s0[0]
    res.update(wall=wall, cpu_busy_before=busy, loadavg_before=la0,
               loadavg_after=list(os.getloadavg()),
               cpu_other_during=max(0.0, ((total - (s1[1] - s0[1])) - own) / max(total, 1e-9)))
    return res


def write_results(results: dict, out_prefix: str, render) -> str:
    """Attach the machine block, write ``out_prefix``.json and .md (``render(results,
    machine_markdown)``), print and return the Markdown."""
    try:
        from _machine import machine_info, machine_markdown
        info = machine_info(include_r=False)
        md = machine_markdown(info)
    except Exception as exc:  # pragma: no cover
        info, md = {"error": repr(exc)}, f"machine info unavailable: {exc!r}"
    results["machine"] = info
    with open(out_prefix + ".json", "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    text = render(results, md)
    with open(out_prefix + ".md", "w") as fh:
        fh.write(text)
    print(text)
    return text
