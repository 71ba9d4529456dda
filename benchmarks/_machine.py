"""Machine and software-version description shared by the benchmark scripts.

Usage::

    from _machine import machine_info, machine_markdown
    info = machine_info()              # dict, JSON-serialisable
    print(machine_markdown(info))      # markdown block for a results file

``machine_info`` records the CPU, cores, RAM, the Python stack, R/lme4, and -
importantly for sparse-Cholesky timings - which BLAS numpy uses and which BLAS
CHOLMOD (scikit-sparse) actually has mapped into the process after a
factorisation (read from ``/proc/self/maps``).
"""
from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata as _md
import os
import platform
import re
import subprocess
import sys

_BLAS_RE = re.compile(r"(blas|lapack|cholmod|suitesparse|mkl|atlas|blis|gfortran)", re.I)
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "GOTO_NUM_THREADS",
)


def _run(cmd, timeout=60):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist):
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def cpu_info():
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        model = platform.processor() or None
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags]
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "cpus_available_to_process": affinity,
        "simd": simd,
    }


def ram_gib():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _mapped_libs(pattern=_BLAS_RE):
    """Shared objects currently mapped into this process matching ``pattern``."""
    libs = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[5].startswith("/") and ".so" in parts[5]:
                    path = parts[5]
                    if pattern.search(os.path.basename(path)) and path not in libs:
                        libs.append(path)
    except OSError:
        pass
    return libs


def numpy_blas():
    """BLAS that numpy was built against / loads."""
    import numpy as np

    out = {}
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key, {})
            out[key] = {k: d.get(k) for k in ("name", "version", "openblas configuration") if d.get(k)}
    except Exception as exc:  # numpy < 1.25 has no mode="dicts"
        out["error"] = repr(exc)
    return out


def cholmod_blas():
    """Factorise a small SPD matrix with CHOLMOD, then report which BLAS/LAPACK
    libraries are mapped in this process and what ``libcholmod`` links to."""
    out = {}
    try:
        import numpy as np
        import scipy.sparse as sp
        from mme.engine.cholesky import Cholesky

        n = 400
        rng = np.random.default_rng(0)
        a = sp.random(n, n, density=0.05, random_state=rng, format="csc")
        a = sp.tril(a @ a.T + sp.identity(n) * n).tocsc()
        f = Cholesky(a, "default", "supernodal")
        f.factorize(a)
        f.solve(np.ones(n))
        out["factorization"] = "ok (supernodal, n=400)"
    except Exception as exc:
        out["factorization"] = f"failed: {exc!r}"
    mapped = _mapped_libs()
    out["mapped_blas_like_libs"] = mapped
    chol = [p for p in mapped if "cholmod" in os.path.basename(p)]
    out["libcholmod"] = chol[0] if chol else None
    if chol:
        ldd = _run(["ldd", chol[0]]) or ""
        deps = {}
        for line in ldd.splitlines():
            m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
            if m and re.search(r"(blas|lapack)", m.group(1), re.I):
                deps[m.group(1)] = os.path.realpath(m.group(2))
        out["libcholmod_blas_deps_resolved"] = deps
    alt = "/etc/alternatives/libblas.so.3-x86_64-linux-gnu"
    out["libblas.so.3_alternative"] = os.path.realpath(alt) if os.path.exists(alt) else None
    alt = "/etc/alternatives/liblapack.so.3-x86_64-linux-gnu"
    out["liblapack.so.3_alternative"] = os.path.realpath(alt) if os.path.exists(alt) else None
    return out


def threadpools():
    """threadpoolctl view (library, version, threading layer, threads, path)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def r_info(rscript="Rscript"):
    code = (
        'v <- function(p) tryCatch(as.character(packageVersion(p)), error=function(e) NA);'
        'cat("R=", R.version.string, "\\n", sep="");'
        'cat("lme4=", v("lme4"), "\\n", sep="");'
        'cat("Matrix=", v("Matrix"), "\\n", sep="");'
        'la <- tryCatch(La_library(), error=function(e) NA);'
        'cat("LAPACK=", la, "\\n", sep="");'
        'b <- tryCatch(extSoftVersion()[["BLAS"]], error=function(e) NA);'
        'cat("BLAS=", b, "\\n", sep="");'
    )
    from _rscript import RscriptError, run_rscript

    try:
        out = run_rscript(expr=code, timeout=60, parse="text", rscript=rscript).values.strip()
    except RscriptError:
        return None
    info = {}
    for line in out.splitlines():
        k, _, v = line.partition("=")
        if k in ("R", "lme4", "Matrix", "LAPACK", "BLAS"):
            info[k] = v or None
    return info


def mme_version():
    info = {"version": _version("mme")}
    try:
        mod = importlib.import_module("mme")
        info["module_file"] = getattr(mod, "__file__", None)
        if getattr(mod, "__version__", None):
            info["version"] = mod.__version__
    except Exception as exc:
        info["import_error"] = repr(exc)
    # the revision of the mme actually imported when it lives in a git checkout (e.g. a
    # worktree on PYTHONPATH); otherwise that of the repository holding these scripts
    here = os.path.dirname(os.path.abspath(__file__))
    mod_dir = os.path.dirname(info.get("module_file") or "")
    # (the module file must be tracked there: site-packages can sit inside e.g. pyenv's own git)
    tracked = mod_dir and _run(["git", "-C", mod_dir, "ls-files", "--error-unmatch", "__init__.py"])
    for where, src in ((mod_dir if tracked else None, "imported module"), (here, "benchmarks folder")):
        rev = _run(["git", "-C", where, "rev-parse", "--short", "HEAD"]) if where else None
        if rev:
            # the code, not the results files a benchmark run itself rewrites
            dirty = _run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no",
                          "--", ":/src", ":/setup.py", ":/pyproject.toml", ":/benchmarks/*.py",
                          ":/benchmarks/*.R"])
            info["git"] = rev + ("+dirty" if dirty else "")
            info["git_of"] = src
            break
    return info


def machine_info(include_r=True, include_cholmod=True):
    """Return a JSON-serialisable dict describing the machine and versions."""
    info = {
        "timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_info(),
        "ram_gib": ram_gib(),
        "thread_env": {k: os.environ.get(k) for k in _THREAD_VARS if os.environ.get(k) is not None},
        "python": sys.version.split()[0],
        "packages": {
            d: _version(d)
            for d in ("numpy", "scipy", "pandas", "scikit-sparse", "formulaic", "statsmodels", "Cython", "threadpoolctl")
        },
        "mme": mme_version(),
        "numpy_blas": numpy_blas(),
    }
    if include_cholmod:
        info["cholmod_blas"] = cholmod_blas()
    # after the CHOLMOD factorisation so the system OpenBLAS also shows up
    info["threadpools"] = threadpools()
    if include_r:
        info["r"] = r_info()
    return info


def machine_markdown(info):
    """Render ``machine_info()`` output as a markdown bullet list."""
    cpu = info["cpu"]
    pk = info["packages"]
    lines = ["### Machine and versions", ""]
    lines.append(f"- Date: {info['timestamp']}; host `{info['hostname']}`; {info['os']}")
    lines.append(
        f"- CPU: {cpu['model']} — {cpu['logical_cpus']} logical CPUs "
        f"({cpu['cpus_available_to_process']} available to this process); SIMD: {', '.join(cpu['simd']) or '?'}"
    )
    lines.append(f"- RAM: {info['ram_gib']} GiB")
    lines.append(f"- Thread env vars: {info['thread_env'] or 'none set'}")
    lines.append(
        f"- Python {info['python']}; numpy {pk['numpy']}; scipy {pk['scipy']}; pandas {pk['pandas']}; "
        f"scikit-sparse {pk['scikit-sparse']}; formulaic {pk['formulaic']}; statsmodels {pk['statsmodels']}"
    )
    m = info["mme"]
    lines.append(f"- mme {m.get('version')} (git {m.get('git', '?')}"
                 + (f", of the {m['git_of']}" if m.get("git_of") else "") + ")")
    r = info.get("r")
    if r:
        lines.append(f"- {r.get('R')}; lme4 {r.get('lme4')}; Matrix {r.get('Matrix')}")
        lines.append(f"- R BLAS: `{r.get('BLAS')}`; R LAPACK: `{r.get('LAPACK')}`")
    elif "r" in info:
        lines.append("- R: not available")
    nb = info["numpy_blas"].get("blas", {})
    lines.append(f"- numpy BLAS (build): {nb.get('name')} {nb.get('version')}")
    cb = info.get("cholmod_blas")
    if cb:
        lines.append(f"- CHOLMOD: `{cb.get('libcholmod')}`; BLAS deps (resolved): "
                     + ", ".join(f"`{v}`" for v in (cb.get("libcholmod_blas_deps_resolved") or {}).values()))
        lines.append(f"- `/etc/alternatives/libblas.so.3-x86_64-linux-gnu` → `{cb.get('libblas.so.3_alternative')}`")
        lines.append("- BLAS-like libraries mapped after a CHOLMOD factorisation: "
                     + ", ".join(f"`{p}`" for p in cb.get("mapped_blas_like_libs", [])))
    tp = info.get("threadpools")
    if isinstance(tp, list):
        for d in tp:
            lines.append(
                f"- threadpoolctl: {d['internal_api']} {d['version']} ({d.get('threading_layer')}, "
                f"{d['num_threads']} threads, {d.get('architecture')}) `{d['filepath']}`"
            )
    else:
        lines.append(f"- threadpoolctl: {tp}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import json

    i = machine_info()
    print(json.dumps(i, indent=2))
    print(machine_markdown(i))
