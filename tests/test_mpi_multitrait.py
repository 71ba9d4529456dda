"""Distributed multi-trait BLUP, weights and by()/diag()/us(trait) residuals under
``mpiexec -n 2`` (the launch helpers of tests/test_mpi.py).

Multi-trait models take wide data (one row per animal, a column per trait, missing
records as NA); each rank reads whole rows, so the records of an animal stay on one
rank, and turns them into the long form of ``mme.build_design``. The references:
the single-machine direct solution ``mme.fit(..., variances=...)`` (CHOLMOD) of the
same model at the same variances, and Mrode's Examples 5.1/5.2 (3rd ed.) at his
variances, to his printed digits.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mme
from mme.distributed import DistributedError, blup_distributed, mc_reml, world

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from simulate_animal import simulate_animal  # noqa: E402
from test_mpi import COLLECTIVE_TIMEOUT, needs_mpi, run_cli, run_job  # noqa: E402

MRODE = HERE / "data" / "mrode"

#: distributed PCG (tol 1e-12) vs the direct (CHOLMOD) solution, max |Δ| / max |direct|
#: per group (fixed effects as one group); the issue asks 1e-8. Achieved on 2 ranks:
#: 3.7e-10 (2 traits, 3,000 animals, herd + animal, ~25% missing per trait),
#: 3.5e-10 (weights), 6.1e-10 (weights + by(site)); serially 5.0e-10 at most
#: (diag(trait)): margin 13x
RTOL_DIRECT = 8e-9
#: Mrode's printed digits: 3 decimals (half a unit of the last digit)
ATOL_MRODE = 5e-4 + 1e-9

MT_FORMULA = "cbind(y1, y2) ~ 0 + trait + trait:sex + (0 + trait | herd) + (0 + trait | id)"
MT_VARIANCES = {"herd": [[0.2, 0.05], [0.05, 0.1]], "id": [[0.4, 0.15], [0.15, 0.3]],
                "Residual": [[0.6, 0.2], [0.2, 0.8]]}
ST_FORMULA = "y1 ~ sex + (1|herd) + (1|id)"
ST_VARIANCES = {"herd": 0.2, "id": 0.4, "Residual": 0.6}
BY_VARIANCES = {"herd": 0.2, "id": 0.4, "Residual": [0.5, 0.6, 0.9]}
MRODE_FORMULA = "cbind(WWG, PWG) ~ 0 + trait:sex + (0 + trait | animal)"


def _simulated(n: int = 3000, seed: int = 11):
    """Two traits on 3,000 animals (herds, sexes, a pedigree); each trait missing at
    random in ~25% of the rows (some rows have neither); prior weights; 3 sites."""
    ped, phen, _ = simulate_animal(n, seed=seed)
    rng = np.random.default_rng(seed)
    phen = phen.rename(columns={"y": "y1"})[["id", "herd", "sex", "y1"]]
    phen["y2"] = 0.5 * phen["y1"] + rng.normal(size=n) + 0.3 * (phen["sex"] == "M")
    phen["w"] = rng.uniform(0.5, 2.0, n)
    phen["site"] = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    y1_full = phen["y1"].copy()
    phen.loc[rng.random(n) < 0.25, "y1"] = np.nan
    phen.loc[rng.random(n) < 0.25, "y2"] = np.nan
    st = phen.assign(y1=y1_full)          # single-trait cases: every record
    return ped.astype(str), phen, st


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mt")
    ped, phen, st = _simulated()
    ped.to_csv(tmp / "ped.csv", index=False)
    phen.to_csv(tmp / "mt.csv", index=False)
    st.to_csv(tmp / "st.csv", index=False)
    return dict(dir=tmp, ped=mme.Pedigree.from_frame(ped), mt=phen, st=st)


def _mrode(name: str, tmp: Path):
    d = json.loads((MRODE / f"{name}.json").read_text())
    ped = pd.DataFrame({k: d["pedigree"][k] for k in ("id", "sire", "dam")}).astype(str)
    rec = pd.DataFrame(d["records"])
    ped.to_csv(tmp / "ped.csv", index=False)
    rec.to_csv(tmp / "data.csv", index=False)
    return d, mme.Pedigree.from_frame(ped), rec


def _worst(fixed: dict, random: pd.DataFrame, fit) -> float:
    """Largest relative discrepancy from the direct fit, per group: max |Δ| / max |direct|
    (the fixed effects as one group); every row of the direct fit must be there."""
    fe = fit.fixed_effects["estimate"]
    got = pd.Series(fixed).reindex(fe.index)
    assert got.notna().all(), (list(fixed), list(fe.index))
    worst = float(np.abs(got - fe).max() / np.abs(fe).max())
    m = fit.random_effects.merge(random, on=["group", "term", "level"],
                                 suffixes=("", "_mpi"), how="left")
    assert len(m) == len(fit.random_effects) and m["blup_mpi"].notna().all()
    assert len(random) == len(fit.random_effects)
    for _, part in m.groupby("group"):
        worst = max(worst, float(np.abs(part["blup_mpi"] - part["blup"]).max()
                                 / np.abs(part["blup"]).max()))
    return worst


def _check_mrode(d: dict, fixed: dict, random: pd.DataFrame) -> int:
    n = 0
    for t, by_sex in d["expected"]["sex"].items():
        for sex, value in by_sex.items():
            assert abs(fixed[f"trait{t}:sex{sex}"] - value) < ATOL_MRODE, (t, sex)
            n += 1
    re = random.assign(level=random["level"].astype(str)).set_index(["term", "level"])
    ids = [str(i) for i in d["pedigree"]["id"]]
    for t in d["traits"]:
        got = re.loc[[(f"trait{t}", i) for i in ids], "blup"].to_numpy()
        np.testing.assert_allclose(got, d["expected"]["animal_blup"][t], rtol=0,
                                   atol=ATOL_MRODE)
        n += len(ids)
    return n


# -- one process (the serial communicator) ---------------------------------------------------
@pytest.mark.parametrize("residual,weights", [(None, None), ("diag(trait)", None),
                                              ("us(trait)", "w")])
def test_serial_multitrait_equals_direct(sim, residual, weights):
    v = MT_VARIANCES if residual != "diag(trait)" else {
        **MT_VARIANCES, "Residual": [0.6, 0.8]}
    fit = mme.fit(MT_FORMULA, sim["mt"], relmat={"id": sim["ped"]}, variances=v,
                  residual=residual, weights=weights)
    res = blup_distributed(MT_FORMULA, sim["mt"], v, relmat={"id": sim["ped"]}, comm=world(),
                           tol=1e-12, residual=residual, weights=weights)
    assert res.converged
    worst = _worst(res.fixed_effects["estimate"].to_dict(),
                   res.random_effects[["group", "term", "level", "blup"]], fit)
    print(residual, weights, "max rel", worst)
    assert worst <= RTOL_DIRECT


def test_serial_refusals(sim):
    with pytest.raises(DistributedError, match=r"OptionError.*ar1\(col\):ar1\(row\)"):
        blup_distributed(ST_FORMULA, sim["st"].assign(col=1, row=1), ST_VARIANCES,
                         comm=world(), residual="ar1(col):ar1(row)")
    with pytest.raises(DistributedError, match=r"OptionError: Monte-Carlo REML covers one "
                                               r"response.*cbind"):
        mc_reml(MT_FORMULA, sim["mt"], relmat={"id": sim["ped"]}, comm=world())
    with pytest.raises(DistributedError, match=r"OptionError: Monte-Carlo REML covers R = "
                                               r"σ²ₑI.*weights"):
        mc_reml(ST_FORMULA, sim["st"], relmat={"id": sim["ped"]}, comm=world(), weights="w")
    with pytest.raises(DistributedError, match=r"DataError: weights column 'w' must be finite "
                                               r"and > 0"):
        blup_distributed(ST_FORMULA, sim["st"].assign(w=-1.0), ST_VARIANCES, comm=world(),
                         relmat={"id": sim["ped"]}, weights="w")
    with pytest.raises(DistributedError, match=r"FormulaError.*\['nosuch'\] named by "
                                               r"weights=/residual="):
        blup_distributed(ST_FORMULA, sim["st"], ST_VARIANCES, comm=world(),
                         relmat={"id": sim["ped"]}, weights="nosuch")
    with pytest.raises(DistributedError, match=r"DataError: variances\['Residual'\] must be "
                                               r"2 × 2"):
        blup_distributed(MT_FORMULA, sim["mt"], {**MT_VARIANCES, "Residual": 0.6},
                         relmat={"id": sim["ped"]}, comm=world())
    with pytest.raises(DistributedError, match=r"DataError: response column 'y2' must be "
                                               r"numeric"):
        blup_distributed(MT_FORMULA, sim["mt"].assign(y2="x"), MT_VARIANCES,
                         relmat={"id": sim["ped"]}, comm=world())
    with pytest.raises(DistributedError, match=r"DataError: residual us\(trait\): level\(s\) "
                                               r"\['y2'\] have no records"):
        blup_distributed(MT_FORMULA, sim["mt"].assign(y2=np.nan), MT_VARIANCES,
                         relmat={"id": sim["ped"]}, comm=world())


# -- mpiexec -n 2 ---------------------------------------------------------------------------
@needs_mpi
@pytest.mark.slow
def test_mpi_multitrait_equals_direct(sim, tmp_path):
    """2 traits, ~25% missing each, herd and animal (pedigree) random, us(trait) R₀: 2
    ranks equal the direct solution; each rank holds whole animals (its long rows are
    the observed traits of its wide rows)."""
    df = sim["mt"]
    fit = mme.fit(MT_FORMULA, df, relmat={"id": sim["ped"]}, variances=MT_VARIANCES)
    proc, out = run_job(2, tmp_path / "out.json", sim["dir"] / "mt.csv", MT_FORMULA,
                        MT_VARIANCES, factors="id,herd,sex", pedigree=sim["dir"] / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    assert out["ranks"] == 2 and out["converged"]
    n = len(df)
    observed = df[["y1", "y2"]].notna().sum(axis=1).to_numpy()
    half = n - n // 2
    assert out["counts"] == [int(observed[:half].sum()), int(observed[half:].sum())]
    assert sum(out["counts"]) == fit.nobs
    assert out["n_reduce"] == out["n_iter"] + 1       # one Allreduce per iteration
    worst = _worst(out["fixed"], pd.DataFrame(out["random"]), fit)
    print("multi-trait, 2 ranks: max rel", worst, "iterations", out["n_iter"])
    assert worst <= RTOL_DIRECT


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mrode_5_1_multitrait", "mrode_5_2_multitrait_missing"])
def test_mpi_mrode_multitrait_printed_digits(name, tmp_path):
    d, ped, rec = _mrode(name, tmp_path)
    v = {"animal": d["G0"], "Residual": d["R0"]}
    proc, out = run_job(2, tmp_path / "out.json", tmp_path / "data.csv", MRODE_FORMULA, v,
                        "--relmat", "animal", factors="animal,sex",
                        pedigree=tmp_path / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    assert out["ranks"] == 2 and out["converged"]
    random = pd.DataFrame(out["random"])
    assert _check_mrode(d, out["fixed"], random) == 4 + 2 * len(d["pedigree"]["id"])
    fit = mme.fit(MRODE_FORMULA, rec, relmat={"animal": ped}, variances=v)
    worst = _worst(out["fixed"], random, fit)
    print(name, "2 ranks: max rel vs direct", worst)
    assert worst <= RTOL_DIRECT


@needs_mpi
@pytest.mark.slow
def test_mpi_multitrait_more_ranks_than_rows(tmp_path):
    """Mrode 5.2's 6 rows on 8 ranks: two ranks hold none, one holds a calf with WWG
    only; its long rows are the observed traits of its wide rows."""
    d, ped, rec = _mrode("mrode_5_2_multitrait_missing", tmp_path)
    v = {"animal": d["G0"], "Residual": d["R0"]}
    proc, out = run_job(8, tmp_path / "out.json", tmp_path / "data.csv", MRODE_FORMULA, v,
                        "--relmat", "animal", factors="animal,sex",
                        pedigree=tmp_path / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    observed = rec[["WWG", "PWG"]].notna().sum(axis=1).tolist()
    assert out["counts"] == observed + [0, 0]
    _check_mrode(d, out["fixed"], pd.DataFrame(out["random"]))


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("residual", [None, "by(site)"])
def test_mpi_weights_equal_direct(sim, residual, tmp_path):
    v = ST_VARIANCES if residual is None else BY_VARIANCES
    fit = mme.fit(ST_FORMULA, sim["st"], relmat={"id": sim["ped"]}, variances=v,
                  weights="w", residual=residual)
    extra = ["--weights", "w"] + (["--residual", residual] if residual else [])
    proc, out = run_job(2, tmp_path / "out.json", sim["dir"] / "st.csv", ST_FORMULA, v,
                        *extra, factors="id,herd,sex,site", pedigree=sim["dir"] / "ped.csv")
    assert proc.returncode == 0, proc.stderr
    assert out["ranks"] == 2 and out["converged"]
    worst = _worst(out["fixed"], pd.DataFrame(out["random"]), fit)
    print("weights", residual, "2 ranks: max rel", worst)
    assert worst <= RTOL_DIRECT


MT_FAULTS = {
    # (mpi_job arguments, formula, parts of the one error line)
    "mc-reml": (["--mcreml"], MT_FORMULA,
                ["OptionError", "Monte-Carlo REML covers one response", "cbind()"]),
    "ar1": (["--residual", "ar1(col):ar1(row)"], ST_FORMULA,
            ["OptionError", "residual='ar1(col):ar1(row)'", "not block-diagonal"]),
    "strtrait": (["--fault", "strtrait"], MT_FORMULA,
                 ["rank 1: DataError", "response column 'y2' must be numeric"]),
    "differ-residual": (["--fault", "differ-residual"], MT_FORMULA,
                        ["parameters differ between ranks", "'residual'", "diag(trait)"]),
}


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("fault", list(MT_FAULTS))
def test_mpi_multitrait_bad_input_one_message(sim, fault, tmp_path):
    args, formula, parts = MT_FAULTS[fault]
    data = sim["dir"] / ("mt.csv" if formula == MT_FORMULA else "st.csv")
    v = MT_VARIANCES if formula == MT_FORMULA else ST_VARIANCES
    proc, out = run_job(2, tmp_path / "out.json", data, formula, v, *args,
                        factors="id,herd,sex", pedigree=sim["dir"] / "ped.csv", timeout=120,
                        collective_timeout=COLLECTIVE_TIMEOUT)
    assert proc.returncode != 0 and out is None
    lines = [l for l in proc.stderr.splitlines() if l.startswith("mme: error:")]
    assert len(lines) == 1, proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]


# -- the command line ------------------------------------------------------------------------
MRODE_VARIANCES_CLI = "animal=[[20,18],[18,40]],Residual=[[40,11],[11,30]]"


@needs_mpi
@pytest.mark.slow
def test_cli_multitrait_under_mpiexec_equals_one_process(tmp_path):
    """``mpiexec -n 2 python -m mme fit "cbind(...)" --variances G0,R0``: Mrode 5.2 to
    his digits; its fixed_effects.csv/random_effects.csv have the rows and estimates of
    the single-process run's files."""
    d, _, _ = _mrode("mrode_5_2_multitrait_missing", tmp_path)
    args = ["fit", MRODE_FORMULA, "--data", str(tmp_path / "data.csv"), "--pedigree",
            str(tmp_path / "ped.csv"), "--relmat", "animal", "--factors", "sex",
            "--variances", MRODE_VARIANCES_CLI]
    two = run_cli(2, *args, "--out", str(tmp_path / "two"), "--quiet")
    assert two.returncode == 0, two.stderr
    one = run_cli(None, *args, "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    log = (tmp_path / "two" / "mme.log").read_text()
    assert "MPI: 2 ranks" in log and "2 traits" in log and "us(trait)" in log
    fixed = pd.read_csv(tmp_path / "two" / "fixed_effects.csv", index_col=0)["estimate"]
    rand = pd.read_csv(tmp_path / "two" / "random_effects.csv", dtype={"level": str})
    _check_mrode(d, fixed.to_dict(), rand)
    fixed1 = pd.read_csv(tmp_path / "one" / "fixed_effects.csv", index_col=0)["estimate"]
    rand1 = pd.read_csv(tmp_path / "one" / "random_effects.csv", dtype={"level": str})
    assert list(fixed.index) == list(fixed1.index)
    np.testing.assert_allclose(fixed, fixed1, rtol=0, atol=RTOL_DIRECT * np.abs(fixed1).max())
    key = ["group", "term", "level"]
    assert rand[key].equals(rand1[key])
    np.testing.assert_allclose(rand["blup"], rand1["blup"], rtol=0,
                               atol=RTOL_DIRECT * np.abs(rand1["blup"]).max())


@needs_mpi
@pytest.mark.slow
def test_cli_weights_by_site_under_mpiexec_equals_direct(sim, tmp_path):
    out = tmp_path / "res"
    proc = run_cli(2, "fit", ST_FORMULA, "--data", str(sim["dir"] / "st.csv"), "--pedigree",
                   str(sim["dir"] / "ped.csv"), "--relmat", "id", "--factors", "site",
                   "--weights", "w", "--residual", "by(site)",
                   "--variances", "herd=0.2,id=0.4,Residual=[0.5,0.6,0.9]",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "residual by(site) over 3 levels with weights" in (out / "mme.log").read_text()
    fit = mme.fit(ST_FORMULA, sim["st"], relmat={"id": sim["ped"]}, variances=BY_VARIANCES,
                  weights="w", residual="by(site)")
    fixed = pd.read_csv(out / "fixed_effects.csv", index_col=0)["estimate"].to_dict()
    rand = pd.read_csv(out / "random_effects.csv", dtype={"level": str})
    assert _worst(fixed, rand, fit) <= RTOL_DIRECT


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("extra,parts", [
    (["--method", "MC-REML"], ["--method MC-REML covers one response", "cbind()"]),
    (["--variances", MRODE_VARIANCES_CLI, "--residual", "ar1(col):ar1(row)"],
     ["--residual ar1(col):ar1(row)", "not supported by the distributed solver"]),
])
def test_cli_mpiexec_multitrait_refusals(extra, parts, tmp_path):
    _mrode("mrode_5_2_multitrait_missing", tmp_path)
    proc = run_cli(2, "fit", MRODE_FORMULA, "--data", str(tmp_path / "data.csv"),
                   "--pedigree", str(tmp_path / "ped.csv"), "--relmat", "animal",
                   *extra, "--out", str(tmp_path / "res"))
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.startswith("mme: error:")]
    assert len(lines) == 1, proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
