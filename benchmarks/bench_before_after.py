#!/usr/bin/env python
"""Before/after timing of mme at two git refs (did a change make the package slower?).

    python benchmarks/bench_before_after.py BASE_REF HEAD_REF [--repeats 5]
        [--out benchmarks/results_before_after.md] [--problems lme4,crossed]
        [--fits-per-process 1] [--no-warmup] [--timeout 1200] [--repo PATH] [--worktree-root /tmp]
        [--keep-data] [--remove-worktrees]

For each ref this

1. resolves it to a commit SHA and makes (or reuses) a detached worktree
   ``<worktree-root>/mme_ref_<sha>`` with ``git worktree add --detach`` — the
   working tree of the repository itself is never touched, so a refactor in progress
   there does not matter;
2. builds the extension in place there (``python setup.py build_ext --inplace -q``,
   with that ref's own ``setup.py``).

The problems (data generated ONCE, by the generators of the benchmark scripts, with
their default sizes and seeds, written as CSV to a temporary folder):

* ``lme4``    — ``bench_lme4.py``: ``y ~ trt + x + (1|g)``, 100,000 records,
  5,000 unbalanced levels, seed 1;
* ``crossed`` — ``bench_crossed.py``: ``y ~ service + (1|s) + (1|d) + (1|dept)``,
  73,421 records, InstEval-shaped (2,972 × 1,128 × 14 levels), seed 1.

Each timed run is a fresh Python subprocess with ``PYTHONPATH=<worktree>/src`` that
reads the CSV, imports mme through its public API only (``import mme``; the process
checks that ``mme.__file__`` lies in that worktree), does a warm-up fit on the first
3,000 rows (first-call costs; ``--no-warmup`` to skip) and times only
``mme.fit(formula, data)`` with default arguments (``dense_blas_threads`` etc. as
they are). It prints one JSON line (seconds, logLik, n_iter, git SHA, ...). With
``--fits-per-process K`` (default 1) a process times K fits one by one and reports its
fastest — useful for the lme4 problem, whose fit takes only ~0.1 s, so that a few tens
of milliseconds of host noise are 20-30 % of one run. Runs
alternate BASE, HEAD, BASE, HEAD, ... (and the problems are interleaved), ``--repeats``
runs per ref and problem, so slow phases of a shared host hit both refs alike.

Noise: on the shared 2-CPU VM, comparing a commit with ITSELF at ``--repeats 2`` gave
median ratios of 1.17 and 1.30 on the lme4 problem (a false "SLOWER"), while
``--repeats 5 --fits-per-process 5`` gave 1.02 (crossed: 0.95-0.96 and 0.94). For a
claim worth quoting use at least ``--repeats 5 --fits-per-process 5`` on a quiet host, and
read the ratios against the "spread" column.

Verdict per problem: HEAD is "no slower beyond noise" when
median(HEAD seconds) / median(BASE seconds) ≤ 1.10; otherwise it is flagged SLOWER.

Writes ``--out`` (Markdown) and a JSON file beside it (same name, ``.json``), with the
machine description of ``_machine.py``, both SHAs and every run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

NOISE_RATIO = 1.10      # verdict threshold on median(HEAD) / median(BASE)
WARMUP_ROWS = 3000      # rows of the warm-up fit in each subprocess (as bench_crossed.py)
RULE = (f'"no slower beyond noise" if median(HEAD seconds) / median(BASE seconds) ≤ {NOISE_RATIO:.2f}, '
        f'otherwise "SLOWER"')


# --------------------------------------------------------------------------- problems
def _make_lme4(path):
    """The data of ``bench_lme4.py`` at its defaults (n=100000, levels=5000, seed=1)."""
    import bench_lme4

    n, levels, seed = 100_000, 5_000, 1
    bench_lme4.write_csv(bench_lme4.simulate(n, levels, seed), path)
    df = bench_lme4.read_csv(path)
    return {"n": len(df), "levels": {"g": int(df["g"].nunique())},
            "generator": f"bench_lme4.simulate(n={n}, levels={levels}, seed={seed})"}


def _make_crossed(path):
    """The data of ``bench_crossed.py`` at its defaults (73421 records, 2972/1128/14, seed 1)."""
    import bench_crossed

    args = dict(n=73421, n_s=2972, n_d=1128, n_dept=14, seed=1)
    df = bench_crossed.write_and_read(bench_crossed.simulate(**args), path)
    return {"n": len(df), "levels": {c: int(df[c].nunique()) for c in ("s", "d", "dept")},
            "generator": "bench_crossed.simulate(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"}


def _formula(module):
    """The benchmark script's own FORMULA (benchmarks/ is on sys.path by then)."""
    import importlib

    return importlib.import_module(module).FORMULA


PROBLEMS = {
    "lme4": {
        "title": "random intercept, 100k records / 5k levels (bench_lme4.py)",
        "module": "bench_lme4",
        "make": _make_lme4,
        "dtypes": {"trt": "str", "g": "str"},       # as bench_lme4.read_csv
    },
    "crossed": {
        "title": "crossed 3 factors, InstEval-shaped, 73k records (bench_crossed.py)",
        "module": "bench_crossed",
        "make": _make_crossed,
        "dtypes": {"s": "str", "d": "str", "dept": "str"},  # as bench_crossed.write_and_read
    },
}


# --------------------------------------------------------------------------- worker
def worker(spec_json):
    """Runs in the fresh subprocess: read data, import mme, warm up, time ONE mme.fit."""
    import warnings

    import pandas as pd

    spec = json.loads(spec_json)
    df = pd.read_csv(spec["csv"], dtype=spec["dtypes"])

    import mme  # the public API only: module paths inside the package change between refs

    try:  # mme's formula backend; import cost excluded like the benchmark scripts do
        import formulaic  # noqa: F401
    except ImportError:
        pass
    mme_file = os.path.realpath(mme.__file__)
    src = os.path.realpath(spec["src"])
    if not mme_file.startswith(src + os.sep):
        raise SystemExit(f"imported mme from {mme_file}, expected it under {src} "
                         "(PYTHONPATH not honoured? an editable install shadowing it?)")
    proc = subprocess.run(["git", "-C", os.path.dirname(mme_file), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    sha = proc.stdout.strip() if proc.returncode == 0 else None

    out = {"problem": spec["problem"], "label": spec["label"], "git_sha": sha,
           "mme_file": mme_file, "mme_version": getattr(mme, "__version__", None)}
    if spec["warmup_rows"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            try:
                mme.fit(spec["formula"], data=df.iloc[:spec["warmup_rows"]])
            except Exception as exc:  # a warm-up failure must not stop the timed fit
                out["warmup_error"] = repr(exc)
            out["warmup_seconds"] = time.perf_counter() - t0

    out["loadavg_1min"] = os.getloadavg()[0]
    times = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(spec["fits_per_process"]):
            t0 = time.perf_counter()
            fit = mme.fit(spec["formula"], data=df)
            times.append(time.perf_counter() - t0)
    # with several fits per process, the process's figure is its fastest fit
    out.update({"seconds": min(times), "fit_times": times, "loglik": float(fit.loglik),
                "n_iter": int(fit.n_iter)})
    try:
        out["converged"] = bool(fit.converged)
        out["nobs"] = int(fit.nobs)
        out["variance_components"] = {str(r.group): float(r.estimate)
                                      for r in fit.variance_components.itertuples()}
    except Exception as exc:  # optional extras; the Fit API may change between refs
        out["extras_error"] = repr(exc)
    out["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- git / build
def _git(repo, *args, check=True):
    proc = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git -C {repo} {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve(repo, ref):
    return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def ensure_worktree(repo, sha, root):
    """Detached worktree of ``sha`` at <root>/mme_ref_<sha>; reused when it exists."""
    path = os.path.join(root, f"mme_ref_{sha}")
    if os.path.exists(path):
        have = _git(path, "rev-parse", "HEAD", check=False)
        if have != sha:
            raise RuntimeError(f"{path} exists but is not a worktree at {sha} (HEAD: {have or '?'}); "
                               "remove it (git worktree remove --force <path>) and rerun")
        dirty = _git(path, "status", "--porcelain", "--untracked-files=no", check=False)
        if dirty:
            print(f"warning: reused worktree {path} has modified tracked files:\n{dirty}", file=sys.stderr)
        print(f"reusing worktree {path}")
        return path, False
    _git(repo, "worktree", "add", "--detach", path, sha)
    print(f"created worktree {path}")
    return path, True


def build(path, timeout):
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=path, capture_output=True, text=True, timeout=timeout)
    sec = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build failed in {path} ({' '.join(cmd)}, exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    print(f"built {path} in {sec:.1f} s")
    return sec


# --------------------------------------------------------------------------- runs
def run_one(spec, src, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = src  # replaces any inherited PYTHONPATH: only this worktree's mme
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=os.path.dirname(spec["csv"]))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"worker exit {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}"}
    res = json.loads(lines[-1])
    res["process_seconds"] = wall
    return res


def summarise(problem, runs, labels):
    """Best / median per label, ratios HEAD/BASE, logLik agreement, verdict."""
    base, head = labels
    ok = {lab: [r for r in runs if r["label"] == lab and "seconds" in r] for lab in labels}
    s = {"problem": problem, "failed_runs": sum(1 for r in runs if "error" in r)}
    for lab in labels:
        t = [r["seconds"] for r in ok[lab]]
        s[lab] = {"runs": len(t), "times": t,
                  "best": min(t) if t else None, "median": statistics.median(t) if t else None,
                  "spread": max(t) / min(t) if t else None,
                  "n_iter": sorted({r["n_iter"] for r in ok[lab]}),
                  "loglik": sorted({r["loglik"] for r in ok[lab]}),
                  "converged": sorted({r.get("converged") for r in ok[lab]}, key=str)}
    if s[base]["best"] and s[head]["best"]:
        s["ratio_best"] = s[head]["best"] / s[base]["best"]
        s["ratio_median"] = s[head]["median"] / s[base]["median"]
        s["max_abs_dloglik"] = max(abs(a["loglik"] - b["loglik"]) for a in ok[head] for b in ok[base])
        s["verdict"] = ("no slower beyond noise" if s["ratio_median"] <= NOISE_RATIO
                        else f"SLOWER (median ratio > {NOISE_RATIO:.2f})")
    else:
        s["verdict"] = "undetermined (runs failed)"
    return s


# --------------------------------------------------------------------------- report
def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def markdown(meta, summaries, runs, machine):
    base, head = meta["refs"]["BASE"], meta["refs"]["HEAD"]
    L = [f"# Before/after: mme at `{base['ref']}` ({base['sha'][:12]}) vs `{head['ref']}` ({head['sha'][:12]})", ""]
    if base["sha"] == head["sha"]:
        L += ["**BASE and HEAD are the same commit: this is a self-comparison; the ratios show "
              "the run-to-run noise of this machine, not a change.**", ""]
    L += [f"- BASE = `{base['ref']}` = {base['sha']}", f"- HEAD = `{head['ref']}` = {head['sha']}",
          f"- Rule: {RULE}.", f"- Command: `{meta['command']}`", ""]
    L.append("| problem | records | BASE best s | BASE median s | HEAD best s | HEAD median s | "
             "ratio H/B (best) | ratio H/B (median) | spread max/min B / H | max abs ΔlogLik | "
             "AI-REML iterations B / H | verdict |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|")
    for s in summaries:
        d = meta["data"][s["problem"]]
        b, h = s["BASE"], s["HEAD"]
        L.append(f"| {s['problem']}: {PROBLEMS[s['problem']]['title']} | {d['n']:,} | "
                 f"{_f(b['best'], '.3f')} | {_f(b['median'], '.3f')} | {_f(h['best'], '.3f')} | "
                 f"{_f(h['median'], '.3f')} | {_f(s.get('ratio_best'), '.3f')} | "
                 f"{_f(s.get('ratio_median'), '.3f')} | {_f(b['spread'], '.2f')} / {_f(h['spread'], '.2f')} | "
                 f"{_f(s.get('max_abs_dloglik'), '.2e')} | "
                 f"{','.join(map(str, b['n_iter'])) or '—'} / {','.join(map(str, h['n_iter'])) or '—'} | "
                 f"**{s['verdict']}**" + (f" ({s['failed_runs']} runs failed)" if s["failed_runs"] else "")
                 + " |")
    L.append("")
    warm = (f"a warm-up fit on the first {meta['warmup_rows']:,} rows (lazy imports, first-call costs)"
            if meta["warmup_rows"] else "no warm-up fit (cold first call)")
    L.append(
        f"Method: each ref is checked out as a detached worktree (`git worktree add --detach`) and "
        f"built in place with its own `setup.py` (`python setup.py build_ext --inplace -q`). Every "
        f"timed run is a fresh Python process with `PYTHONPATH=<worktree>/src` that reads the CSV, "
        f"`import mme` (public API only; the process checks `mme.__file__` is in the worktree), "
        f"{warm}, then times only `mme.fit(formula, data)` with default arguments "
        f"(`dense_blas_threads` at its default)"
        + (f", {meta['fits_per_process']} times, the process reporting its fastest fit"
           if meta["fits_per_process"] > 1 else "")
        + f". {meta['repeats']} runs (processes) per ref and problem, in the "
        f"order BASE, HEAD, BASE, HEAD, … with the problems interleaved. Best = minimum, median = "
        f"median over the runs; ratio < 1 means HEAD is faster; spread = slowest / fastest run of a "
        f"ref, a gauge of the noise the ratios must be read against. The data are generated once per "
        f"invocation by the benchmark scripts' own generators at their default sizes and seeds "
        f"and written as CSV (17 significant digits).")
    L.append("")
    la = meta["loadavg"]
    L.append(f"Load average (1 min) at start / end: {la[0]:.2f} / {la[1]:.2f} on "
             f"{os.cpu_count()} CPUs; other processes on the host perturb the timings.")
    L.append("")
    L.append("## Data")
    L.append("")
    for p, d in meta["data"].items():
        L.append(f"- `{p}`: `{PROBLEMS[p]['formula']}`, REML; {d['n']:,} records; levels "
                 + ", ".join(f"{k} = {v:,}" for k, v in d["levels"].items()) + f"; `{d['generator']}`")
    L.append("")
    L.append("## Builds")
    L.append("")
    L.append("| ref | SHA | worktree | build s |")
    L.append("|---|---|---|---:|")
    for lab in ("BASE", "HEAD"):
        r = meta["refs"][lab]
        L.append(f"| {lab} `{r['ref']}` | {r['sha']} | `{r['worktree']}` | {r['build_seconds']:.1f} |")
    L.append("")
    L.append("## Every run")
    L.append("")
    L.append("| # | problem | ref | seconds | logLik | AI-REML iterations | converged | load 1 min | note |")
    L.append("|---:|---|---|---:|---:|---:|---|---:|---|")
    for i, r in enumerate(runs, 1):
        if "error" in r:
            L.append(f"| {i} | {r['problem']} | {r['label']} | — | — | — | — | — | "
                     f"error: {r['error'].strip().splitlines()[-1][:120] if r['error'].strip() else '?'} |")
            continue
        note = "; ".join(r.get("warnings", []))[:160].replace("|", "/").replace("\n", " ")
        L.append(f"| {i} | {r['problem']} | {r['label']} | {r['seconds']:.3f} | {r['loglik']:.6f} | "
                 f"{r['n_iter']} | {r.get('converged')} | {r['loadavg_1min']:.2f} | {note} |")
    L.append("")
    if machine is not None:
        from _machine import machine_markdown
        L.append(machine_markdown(machine))
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main
def _default_repo():
    proc = subprocess.run(["git", "-C", HERE, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_ref", nargs="?", help="git ref of the 'before' state")
    ap.add_argument("head_ref", nargs="?", help="git ref of the 'after' state")
    ap.add_argument("--repeats", type=int, default=5, help="runs per ref and problem (default 5)")
    ap.add_argument("--out", default=os.path.join(HERE, "results_before_after.md"),
                    help="Markdown output; the JSON goes beside it (default benchmarks/results_before_after.md)")
    ap.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma list of {', '.join(PROBLEMS)}")
    ap.add_argument("--fits-per-process", type=int, default=1,
                    help="timed fits in each subprocess; the process reports its fastest (default 1)")
    ap.add_argument("--no-warmup", action="store_true", help="no warm-up fit before the timed fit")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per subprocess (default 1200)")
    ap.add_argument("--repo", default=None, help="git repository (default: the one holding this script)")
    ap.add_argument("--worktree-root", default=tempfile.gettempdir(),
                    help="where the worktrees mme_ref_<sha> go (default the temp folder)")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated CSV folder")
    ap.add_argument("--remove-worktrees", action="store_true",
                    help="remove the worktrees this run created when done (default: keep them for reuse)")
    ap.add_argument("--_worker", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        return worker(args._worker)
    if not args.base_ref or not args.head_ref:
        ap.error("BASE_REF and HEAD_REF are required")
    if args.repeats < 1 or args.fits_per_process < 1:
        ap.error("--repeats and --fits-per-process must be at least 1")
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown:
        ap.error(f"unknown problem(s) {unknown}; choose from {list(PROBLEMS)}")
    repo = args.repo or _default_repo()
    if not repo:
        ap.error("not inside a git repository: pass --repo")

    sys.path.insert(0, HERE)
    for p in problems:
        PROBLEMS[p]["formula"] = _formula(PROBLEMS[p]["module"])

    # refs -> worktrees -> builds
    refs, created = {}, []
    for lab, ref in (("BASE", args.base_ref), ("HEAD", args.head_ref)):
        sha = resolve(repo, ref)
        if not sha:
            ap.error(f"{ref!r} is not a commit in {repo}")
        refs[lab] = {"ref": ref, "sha": sha}
    built = {}
    for lab in ("BASE", "HEAD"):
        sha = refs[lab]["sha"]
        if sha not in built:
            path, new = ensure_worktree(repo, sha, args.worktree_root)
            if new:
                created.append(path)
            built[sha] = (path, build(path, args.timeout))
        refs[lab]["worktree"], refs[lab]["build_seconds"] = built[sha]
        refs[lab]["src"] = os.path.join(refs[lab]["worktree"], "src")

    # data, once
    data_dir = tempfile.mkdtemp(prefix="mme_bab_data_")
    data = {}
    for p in problems:
        t0 = time.perf_counter()
        csv = os.path.join(data_dir, f"{p}.csv")
        data[p] = PROBLEMS[p]["make"](csv)
        data[p]["csv"] = csv
        print(f"data {p}: {data[p]['n']:,} records, levels {data[p]['levels']} "
              f"({time.perf_counter() - t0:.1f} s) -> {csv}")

    # interleaved runs
    load_start = os.getloadavg()[0]
    runs = []
    warmup = 0 if args.no_warmup else WARMUP_ROWS
    for rep in range(args.repeats):
        for p in problems:
            for lab in ("BASE", "HEAD"):
                spec = {"problem": p, "label": lab, "csv": data[p]["csv"], "dtypes": PROBLEMS[p]["dtypes"],
                        "formula": PROBLEMS[p]["formula"], "src": refs[lab]["src"], "warmup_rows": warmup,
                        "fits_per_process": args.fits_per_process}
                r = run_one(spec, refs[lab]["src"], args.timeout)
                r.update({"problem": p, "label": lab, "repeat": rep + 1})
                if "error" not in r and r.get("git_sha") != refs[lab]["sha"]:
                    r["error"] = f"ran git SHA {r.get('git_sha')}, expected {refs[lab]['sha']}"
                runs.append(r)
                if "error" in r:
                    print(f"[{rep + 1}/{args.repeats}] {p:8s} {lab}: ERROR {r['error'][-500:]}", file=sys.stderr)
                else:
                    print(f"[{rep + 1}/{args.repeats}] {p:8s} {lab}: {r['seconds']:.3f} s, "
                          f"logLik {r['loglik']:.6f}, {r['n_iter']} iterations, load {r['loadavg_1min']:.2f}")
    load_end = os.getloadavg()[0]

    summaries = [summarise(p, [r for r in runs if r["problem"] == p], ("BASE", "HEAD")) for p in problems]

    try:
        from _machine import machine_info
        machine = machine_info(include_r=False)
        versions = sorted({str(r.get("mme_version")) for r in runs if "error" not in r})
        # the parent process's own `import mme` says nothing about the refs: describe those instead
        machine["mme"] = {"version": ", ".join(versions) or "?",
                          "git": f"BASE {refs['BASE']['sha'][:12]} / HEAD {refs['HEAD']['sha'][:12]} "
                                 f"(worktrees)"}
    except Exception as exc:
        print(f"machine info unavailable: {exc!r}", file=sys.stderr)
        machine = None

    cli = sys.argv[1:] if argv is None else list(argv)
    meta = {"command": " ".join(["python", os.path.relpath(os.path.abspath(__file__), repo)] + cli),
            "repo": repo, "refs": refs, "repeats": args.repeats, "warmup_rows": warmup,
            "fits_per_process": args.fits_per_process,
            "rule": RULE, "noise_ratio": NOISE_RATIO, "loadavg": [load_start, load_end],
            "data": {p: {k: v for k, v in d.items() if k != "csv"} for p, d in data.items()}}
    md = markdown(meta, summaries, runs, machine)
    print()
    print(md)
    out_md = args.out
    out_json = os.path.splitext(out_md)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    with open(out_md, "w") as fh:
        fh.write(md)
    with open(out_json, "w") as fh:
        json.dump({**meta, "problems": {p: {"formula": PROBLEMS[p]["formula"], "title": PROBLEMS[p]["title"]}
                                        for p in problems},
                   "summary": summaries, "runs": runs, "machine": machine}, fh, indent=2, default=str)
    print(f"wrote {out_md} and {out_json}")

    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        print(f"data kept in {data_dir}")
    if args.remove_worktrees:
        for path in created:
            _git(repo, "worktree", "remove", "--force", path, check=False)
            print(f"removed worktree {path}")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
