"""Distributed BLUP (mme.distributed) under ``mpiexec -n 2`` from the pip ``mpich`` wheel.

Each test launches ``mpiexec -n K python tests/mpi_job.py`` in a subprocess with a
timeout (the suite cannot hang), every rank reading its own slice of a CSV file;
rank 0 writes the solutions as JSON, compared here with the single-machine direct
solution ``mme.fit(..., variances=...)`` (CHOLMOD). The faults: a rank given other
variances, a rank whose file is missing, a rank that raises while building its rows,
a rank that never joins a collective — each ends the job with one message naming
the rank and the reason, within the subprocess timeout.

The serial communicator (one process, no mpiexec) runs the same code in-process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mme
from mme.distributed import (DistributedError, RowPartition, blup_distributed, read_slice,
                             world)

HERE = Path(__file__).parent
ROOT = HERE.parent
JOB = HERE / "mpi_job.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from simulate_animal import simulate_animal  # noqa: E402

#: distributed PCG (tol 1e-12) vs the direct (CHOLMOD) solution, max |Δ| / max |solution|
#: per group; the issue asks 1e-8. Achieved 2.8e-10 (sim10k, 2 ranks; 2.9e-12
#: penicillin, 4.5e-15 Mrode 3.1), margin 18x
RTOL_BLUP_MPI = 5e-9
#: Monte-Carlo REML vs exact AI-REML (mme.fit): |difference| in Monte-Carlo SEs (the issue's
#: criterion; achieved 0.28, 0.30, 1.04 for herd, id, Residual with 30 samples, seed 1)
MC_SE_BOUND = 2.0
#: the Monte-Carlo SE must be a small part of the sampling SE for that check to mean
#: something: achieved 0.17 (herd), 0.16 (id), 0.16 (Residual) with 30 samples
MC_SE_FRACTION = 0.25
#: 1 rank vs 2 ranks of Monte-Carlo REML (the same draws): relative difference of the
#: estimates, achieved 1.2e-12 (bundled animal example, herd; 1.4e-14 on the 10k
#: simulation): round-off of the sums in another order, within PCG's tolerance; margin 24x
RTOL_MCREML_RANKS = 3e-11
#: seconds a whole mpiexec job may take before the test fails (the suite must not hang)
JOB_TIMEOUT = 240
#: the deadline of a collective inside the fault jobs (MME_MPI_TIMEOUT)
COLLECTIVE_TIMEOUT = 5.0


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec")


def _mpi_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return _mpiexec() is not None


needs_mpi = pytest.mark.skipif(not _mpi_available(),
                               reason="mpi4py and mpiexec (pip install 'mme[mpi]') needed")


def run_job(n: int, out: Path, data: Path, formula: str, variances: dict, *extra,
            pedigree: Path | None = None, factors: str = "", timeout: float = JOB_TIMEOUT,
            collective_timeout: float = 60.0):
    cmd = [_mpiexec(), "-n", str(n), sys.executable, str(JOB), "--data", str(data),
           "--formula", formula, "--variances", json.dumps(variances), "--out", str(out),
           "--factors", factors, "--timeout", str(collective_timeout), *extra]
    if pedigree is not None:
        cmd += ["--pedigree", str(pedigree)]
    env = _subprocess_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(ROOT))
    result = json.loads(out.read_text()) if out.exists() else None
    return proc, result


# -- reference models -----------------------------------------------------------------
def _mrode(tmp):
    d = json.loads((HERE / "data" / "mrode_3_1.json").read_text())
    ped = pd.DataFrame(d["pedigree"]).replace("", "0")
    ped.to_csv(tmp / "ped.csv", index=False)
    df = pd.DataFrame(d["data"])
    df.to_csv(tmp / "data.csv", index=False)
    return dict(formula="wwg ~ 0 + sex + (1|id)", variances=d["variances"], data=df,
                ped=ped, factors="id,sex")


def _penicillin(tmp):       # two crossed random effects, no relationship matrix
    df = pd.read_csv(HERE / "data" / "lme4" / "penicillin.csv", dtype={"plate": str,
                                                                        "sample": str})
    df.to_csv(tmp / "data.csv", index=False)
    return dict(formula="diameter ~ 1 + (1|plate) + (1|sample)",
                variances={"plate": 0.717, "sample": 3.731, "Residual": 0.302}, data=df,
                ped=None, factors="plate,sample")


def _pastes(tmp):           # nested: a grouping by two columns
    df = pd.read_csv(HERE / "data" / "lme4" / "pastes.csv", dtype=str)
    df["strength"] = df["strength"].astype(float)
    df.to_csv(tmp / "data.csv", index=False)
    return dict(formula="strength ~ 1 + (1|batch) + (1|batch:cask)",
                variances={"batch": 1.66, "batch:cask": 8.43, "Residual": 0.678}, data=df,
                ped=None, factors="batch,cask,sample")


def _sleepstudy(tmp):       # correlated random intercept and slope (2 × 2 blocks)
    df = pd.read_csv(HERE / "data" / "lme4" / "sleepstudy_us.csv", dtype={"Subject": str})
    df.to_csv(tmp / "data.csv", index=False)
    return dict(formula="Reaction ~ Days + (Days|Subject)",
                variances={"Subject": [[612.09, 9.604], [9.604, 35.07]], "Residual": 654.94},
                data=df, ped=None, factors="Subject")


def _sim10k(tmp):           # 10,000 animals: herd + animal (pedigree), sex
    ped, phen, _ = simulate_animal(10_000, seed=7)
    ped.to_csv(tmp / "ped.csv", index=False)
    phen.to_csv(tmp / "data.csv", index=False)
    return dict(formula="y ~ sex + (1|herd) + (1|id)",
                variances={"herd": 0.2, "id": 0.4, "Residual": 0.6}, data=phen,
                ped=ped.astype(str), factors="id,herd,sex")


CASES = {"mrode_3_1": _mrode, "penicillin": _penicillin, "pastes": _pastes,
         "sleepstudy": _sleepstudy, "sim10k": _sim10k}


def _direct(case):
    relmat = None
    if case["ped"] is not None:
        relmat = {"id": mme.Pedigree.from_frame(case["ped"].astype(str))}
    return mme.fit(case["formula"], case["data"], relmat=relmat, variances=case["variances"])


def _compare(fixed: dict, random: pd.DataFrame, fit) -> float:
    """Largest relative discrepancy (per group: max |Δ| / max |direct|)."""
    worst = 0.0
    fe = fit.fixed_effects["estimate"]
    got = pd.Series(fixed).reindex(fe.index)
    np.testing.assert_allclose(got.to_numpy(), fe.to_numpy(),
                               rtol=0, atol=RTOL_BLUP_MPI * np.abs(fe).max())
    worst = max(worst, float(np.abs(got - fe).max() / np.abs(fe).max()))
    ref = fit.random_effects
    key = ["group", "term", "level"]
    m = ref.merge(random, on=key, suffixes=("", "_mpi"), how="left")
    assert len(m) == len(ref) and m["blup_mpi"].notna().all()
    for g, part in m.groupby("group"):
        scale = np.abs(part["blup"]).max()
        np.testing.assert_allclose(part["blup_mpi"], part["blup"], rtol=0,
                                   atol=RTOL_BLUP_MPI * scale)
        worst = max(worst, float(np.abs(part["blup_mpi"] - part["blup"]).max() / scale))
    return worst


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            tmp = tmp_path_factory.mktemp(name)
            case = CASES[name](tmp)
            case["dir"] = tmp
            case["fit"] = _direct(case)
            made[name] = case
        return made[name]
    return get


# -- serial: the same code on one process -------------------------------------------------
@pytest.mark.parametrize("name", ["mrode_3_1", "penicillin", "pastes", "sleepstudy"])
def test_serial_equals_direct(cases, name):
    case = cases(name)
    relmat = ({"id": mme.Pedigree.from_frame(case["ped"].astype(str))}
              if case["ped"] is not None else None)
    res = blup_distributed(case["formula"], case["data"], case["variances"], relmat=relmat,
                           comm=world(), tol=1e-12)
    assert res.ranks == 1 and res.converged
    rand = res.random_effects[["group", "term", "level", "blup"]].rename(
        columns={"blup": "blup"})
    _compare(res.fixed_effects["estimate"].to_dict(), rand, case["fit"])


def test_partition_even_and_slices(tmp_path):
    part = RowPartition.even(5, 7)
    assert part.counts == (1, 1, 1, 1, 1, 0, 0) and part.n_rows == 5
    df = pd.DataFrame({"a": range(10), "b": list("abcdefghij")})
    df.to_csv(tmp_path / "d.csv", index=False)
    pieces = [read_slice(tmp_path / "d.csv", r, 3)[0] for r in range(3)]
    assert [len(p) for p in pieces] == [4, 3, 3]
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), df)


def test_parquet_slices_by_row_groups(tmp_path):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"a": np.arange(1000), "b": np.arange(1000) % 7})
    df.to_parquet(tmp_path / "d.parquet", row_group_size=128)
    pieces = [read_slice(tmp_path / "d.parquet", r, 3) for r in range(3)]
    assert pieces[0][1].counts == (334, 333, 333)
    pd.testing.assert_frame_equal(pd.concat([p[0] for p in pieces], ignore_index=True), df)


def test_cli_reader_rows_equal_whole_file(tmp_path):
    from mme.cli.io import read_table
    df = pd.DataFrame({"id": ["007", "8", "9", "10", "11"], "y": [1.0, 2, 3, 4, 5]})
    df.to_csv(tmp_path / "d.csv", index=False)
    got = read_table(tmp_path / "d.csv", factors=["id"], rows=(2, 2))
    assert got["id"].tolist() == ["9", "10"] and got["y"].tolist() == [3.0, 4.0]
    assert read_table(tmp_path / "d.csv", factors=["id"], rows=(0, 1))["id"][0] == "007"


def test_mc_reml_refuses_slopes_and_too_few_samples(cases):
    from mme.distributed import mc_reml
    case = cases("sleepstudy")
    with pytest.raises(DistributedError, match="random slopes"):
        mc_reml(case["formula"], case["data"], comm=world())
    case = cases("penicillin")
    with pytest.raises(DistributedError, match="n_samples must be at least 2"):
        mc_reml(case["formula"], case["data"], comm=world(), n_samples=1)


def test_serial_mc_reml_penicillin_near_exact_reml(cases):
    """Crossed terms without a relationship matrix, one process: within 2 MC SE of
    AI-REML (achieved z = -0.63, -0.87, 0.57 with 30 samples, seed 2; the 10k-animal
    pedigree case runs under mpiexec below)."""
    from mme.distributed import mc_reml
    case = cases("penicillin")
    exact = mme.fit(case["formula"], case["data"]).variance_components.set_index("group")
    res = mc_reml(case["formula"], case["data"], comm=world(), n_samples=MC_SAMPLES, seed=2)
    assert res.converged
    for g in ("plate", "sample", "Residual"):
        z = (res.variances[g] - exact.loc[g, "estimate"]) / res.mc_se[g]
        assert abs(z) <= MC_SE_BOUND, (g, z)


# -- mpiexec -n 2 ---------------------------------------------------------------------------
@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_mpi_two_ranks_equal_direct(cases, name, tmp_path):
    case = cases(name)
    proc, out = run_job(2, tmp_path / "out.json", case["dir"] / "data.csv", case["formula"],
                        case["variances"], factors=case["factors"],
                        pedigree=case["dir"] / "ped.csv" if case["ped"] is not None else None)
    assert proc.returncode == 0, proc.stderr
    assert out["ranks"] == 2 and out["converged"]
    n = len(case["data"])
    assert out["counts"] == [n - n // 2, n // 2]
    assert out["n_reduce"] == out["n_iter"] + 1      # one Allreduce per iteration (+ check)
    if n > 1000:                                     # G⁻¹'s rows split: balanced work
        lo, hi = min(out["nnz_local"]), max(out["nnz_local"])
        assert hi <= 1.2 * lo, out["nnz_local"]
    rand = pd.DataFrame(out["random"])
    print(name, "max rel", _compare(out["fixed"], rand, case["fit"]))


@needs_mpi
@pytest.mark.slow
def test_mpi_ginv_on_rank_0_alone_equals_direct(cases, tmp_path):
    """ginv="root": only rank 0 builds A⁻¹ and multiplies by G⁻¹ (the default splits its
    rows over the ranks, each building A⁻¹): the same solutions."""
    case = cases("sim10k")
    proc, out = run_job(2, tmp_path / "out.json", case["dir"] / "data.csv", case["formula"],
                        case["variances"], "--ginv", "root", factors=case["factors"],
                        pedigree=case["dir"] / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    assert out["nnz_local"][0] > 2 * out["nnz_local"][1]     # rank 0 holds all of A⁻¹
    _compare(out["fixed"], pd.DataFrame(out["random"]), case["fit"])


@needs_mpi
@pytest.mark.slow
def test_mpi_more_ranks_than_rows(cases, tmp_path):
    case = cases("mrode_3_1")        # 5 records on 7 ranks: two ranks hold none
    proc, out = run_job(7, tmp_path / "out.json", case["dir"] / "data.csv", case["formula"],
                        case["variances"], factors=case["factors"],
                        pedigree=case["dir"] / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    assert out["counts"] == [1, 1, 1, 1, 1, 0, 0]
    _compare(out["fixed"], pd.DataFrame(out["random"]), case["fit"])


FAULTS = {
    "differ": ("parameters differ between ranks", "'variances'"),
    "unreadable": ("rank 1: FileNotFoundError", "data.csv.absent"),
    "raise": ("rank 1: FormulaError", "'sex'"),
    "stuck": ("rank 0: no answer from the other ranks within 5 s", "checking the formula"),
}


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_mpi_fault_ends_the_job_with_one_message(cases, fault, tmp_path):
    case = cases("mrode_3_1")
    proc, out = run_job(2, tmp_path / "out.json", case["dir"] / "data.csv", case["formula"],
                        case["variances"], "--fault", fault, factors=case["factors"],
                        pedigree=case["dir"] / "ped.csv", timeout=120,
                        collective_timeout=COLLECTIVE_TIMEOUT)
    assert proc.returncode != 0 and out is None
    lines = [l for l in proc.stderr.splitlines() if l.startswith("mme: error:")]
    assert len(lines) == 1, proc.stderr
    for part in FAULTS[fault]:
        assert part in lines[0], lines[0]


@needs_mpi
@pytest.mark.slow
def test_mpi_killed_rank_ends_the_job(cases, tmp_path):
    """A rank killed by a signal: the launcher (Hydra) ends the job; nothing hangs."""
    case = cases("mrode_3_1")
    proc, out = run_job(2, tmp_path / "out.json", case["dir"] / "data.csv", case["formula"],
                        case["variances"], "--fault", "killed", factors=case["factors"],
                        pedigree=case["dir"] / "ped.csv", timeout=120,
                        collective_timeout=COLLECTIVE_TIMEOUT)
    assert proc.returncode != 0 and out is None


# -- Monte-Carlo REML ---------------------------------------------------------------------
MC_SAMPLES = 30


@needs_mpi
@pytest.mark.slow
def test_mpi_mc_reml_within_two_mc_se_of_ai_reml(cases, tmp_path):
    case = cases("sim10k")
    ped = mme.Pedigree.from_frame(case["ped"])
    exact = mme.fit(case["formula"], case["data"], relmat={"id": ped})
    proc, out = run_job(2, tmp_path / "out.json", case["dir"] / "data.csv", case["formula"],
                        None, "--mcreml", "--samples", str(MC_SAMPLES), "--seed", "1",
                        factors=case["factors"], pedigree=case["dir"] / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    assert out["converged"] and out["ranks"] == 2
    vc = exact.variance_components.set_index("group")
    for g in ("herd", "id", "Residual"):
        z = (out["variances"][g] - vc.loc[g, "estimate"]) / out["mc_se"][g]
        print(g, "z", z, "mc_se/se", out["mc_se"][g] / vc.loc[g, "std_error"])
        assert abs(z) <= MC_SE_BOUND, (g, z)
        assert out["mc_se"][g] <= MC_SE_FRACTION * vc.loc[g, "std_error"]
    # the same draws on one process (serial communicator) give the same estimates
    from mme.distributed import mc_reml
    one = mc_reml(case["formula"], case["data"], relmat={"id": ped}, comm=world(),
                  n_samples=MC_SAMPLES, seed=1)
    for g in ("herd", "id", "Residual"):
        print(g, "1 vs 2 ranks", abs(one.variances[g] / out["variances"][g] - 1))
        np.testing.assert_allclose(out["variances"][g], one.variances[g],
                                   rtol=RTOL_MCREML_RANKS)


# -- the command line under mpiexec ------------------------------------------------------
DATA = ROOT / "src" / "mme" / "data"
ANIMAL_FORMULA = "weight ~ sex + (1|herd) + (1|id)"
ANIMAL_VARIANCES = {"herd": 118.0, "id": 101.0, "Residual": 141.0}


def _subprocess_env() -> dict:
    """The ranks import the mme this test imported (the installed package in CI, src/
    when built in place), one BLAS thread each."""
    import mme
    path = str(Path(mme.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def run_cli(n: int | None, *args, timeout: float = JOB_TIMEOUT):
    cmd = ([_mpiexec(), "-n", str(n)] if n else []) + [sys.executable, "-m", "mme", *args]
    env = _subprocess_env()
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(ROOT))


def _animal():
    ped = mme.Pedigree.from_frame(pd.read_csv(DATA / "animal_pedigree.csv", dtype=str),
                                  missing=("0",))
    df = pd.read_csv(DATA / "animal_records.csv", dtype={"id": str, "herd": str, "sex": str})
    return ped, df


@needs_mpi
@pytest.mark.slow
def test_cli_fit_under_mpiexec_equals_direct(tmp_path):
    out = tmp_path / "res"
    proc = run_cli(2, "fit", ANIMAL_FORMULA, "--data", str(DATA / "animal_records.csv"),
                   "--pedigree", str(DATA / "animal_pedigree.csv"), "--relmat", "id",
                   "--variances", "herd=118,id=101,Residual=141", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    log = (out / "mme.log").read_text()
    assert "MPI: 2 ranks" in log
    assert "2 ranks: rows 0-206 (207), 207-413 (207)" in log
    assert log.count("mme.cli INFO mme 0.1.0") == 1          # one writer: rank 0
    assert "MPI: 2 rank(s)" in (out / "summary.txt").read_text()
    ped, df = _animal()
    fit = mme.fit(ANIMAL_FORMULA, df, relmat={"id": ped}, variances=ANIMAL_VARIANCES)
    fixed = pd.read_csv(out / "fixed_effects.csv", index_col=0)["estimate"].to_dict()
    rand = pd.read_csv(out / "random_effects.csv", dtype={"level": str})
    _compare(fixed, rand, fit)


@needs_mpi
@pytest.mark.slow
def test_cli_run_mc_reml_under_mpiexec_equals_one_process(tmp_path):
    toml = tmp_path / "model.toml"
    toml.write_text(f"""
[data]
files = ["{DATA / 'animal_records.csv'}"]
factors = ["id", "herd", "sex"]
[model]
formula = "{ANIMAL_FORMULA}"
method = "MC-REML"
relmat = ["id"]
[pedigree]
file = "{DATA / 'animal_pedigree.csv'}"
missing = ["0"]
[options]
samples = 20
seed = 3
""")
    proc2 = run_cli(2, "run", str(toml), "--out", str(tmp_path / "two"), "--quiet")
    assert proc2.returncode == 0, proc2.stderr
    proc1 = run_cli(None, "run", str(toml), "--out", str(tmp_path / "one"), "--quiet")
    assert proc1.returncode == 0, proc1.stderr
    two = pd.read_csv(tmp_path / "two" / "variance_components.csv")
    one = pd.read_csv(tmp_path / "one" / "variance_components.csv")
    assert list(two.columns) == ["group", "estimate", "std_error", "mc_se"]
    np.testing.assert_allclose(two["estimate"], one["estimate"], rtol=RTOL_MCREML_RANKS)
    log = pd.read_csv(tmp_path / "two" / "iteration_log.csv")
    assert len(log) >= 2 and (log["n_samples"] == 20).all()


@needs_mpi
@pytest.mark.slow
def test_cli_mpiexec_refuses_exact_reml_with_one_message(tmp_path):
    proc = run_cli(2, "fit", ANIMAL_FORMULA, "--data", str(DATA / "animal_records.csv"),
                   "--pedigree", str(DATA / "animal_pedigree.csv"), "--relmat", "id",
                   "--out", str(tmp_path / "res"))
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.startswith("mme: error:")]
    assert len(lines) == 1 and "--method MC-REML" in lines[0], proc.stderr
