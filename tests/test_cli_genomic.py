"""Genomic input of the command line (``[genomic]``, ``--genomic FILE``): genotype files in
BLUPF90's layout and as tables, single-step H⁻¹ and GBLUP's G⁻¹.

The oracle is the Python API with the relationship matrix built by hand from the same
genotypes, read here without the command line's reader: ``mme.genomic_relationship``,
``mme.single_step_inverse`` (or ``numpy.linalg.inv`` of G for GBLUP) and ``mme.fit`` with
the ``(levels, K⁻¹)`` pair. The genotypes (tests/data/cli/genotypes.txt: 200 of the 469
animals of the bundled pedigree, 500 markers) are simulated by tests/data/cli/genotypes.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mme
from mme.cli.main import main
from mme.examples.animal import FORMULA, load_animal
from test_cli import PEDIGREE, RECORDS, _err_line, _mme_subprocess_env

CLI_DATA = Path(__file__).resolve().parent / "data" / "cli"
GENOTYPES = CLI_DATA / "genotypes.txt"
SINGLE_STEP_TOML = CLI_DATA / "single_step.toml"
TABLES = ("fixed_effects.csv", "random_effects.csv", "variance_components.csv",
          "iteration_log.csv")

#: the command line's CSVs against the API's tables, the same stages on the same K⁻¹
#: (the brief asked for 1e-10; achieved 0 for single-step, whose H⁻¹ the same function
#: builds, and 3.7e-13 for GBLUP's variance components and PEV, its G⁻¹ taken by
#: Cholesky in the run and by numpy.linalg.inv in the oracle), margin 13
RTOL_API = 5e-12
#: the fixed effects' Satterthwaite df: the run computes them with NumPy's BLAS at 1
#: thread, the API at the machine's default (achieved 1.8e-11), margin 17
RTOL_DF = 3e-10
#: their p-values: a p-value of 1e-15 (t = 55 at 12 df) amplifies the df's error ~20x
#: (achieved 3.4e-10), margin 15
RTOL_P_VALUE = 5e-9
#: BLUPF90-layout vs table-layout genotype files: the same M, the same arithmetic
#: (achieved: 0, identical numbers; the margin allows for BLAS threading)
RTOL_LAYOUT = 1e-12


def _genotypes_by_hand() -> pd.DataFrame:
    """genotypes.txt read without the command line: one string of digits per animal."""
    ids, rows = [], []
    for line in GENOTYPES.read_text().splitlines():
        animal, digits = line.split()
        ids.append(animal)
        rows.append([int(c) for c in digits])
    return pd.DataFrame(np.array(rows, dtype=float), index=pd.Index(ids, name="id"),
                        columns=[f"m{j + 1}" for j in range(len(rows[0]))])


@pytest.fixture(scope="module")
def animal():
    ped_df, records = load_animal()
    return mme.Pedigree.from_frame(ped_df), records, _genotypes_by_hand()


@pytest.fixture(scope="module")
def single_step_fit(animal):
    """single_step.toml's model through the API: blend 0.05 with A22, tuned diag-offdiag."""
    ped, records, M = animal
    G = mme.genomic_relationship(M, blend=0.05, A22=ped, tune="diag-offdiag")
    Hinv = mme.single_step_inverse(ped, G)
    return mme.fit(FORMULA, records, relmat={"id": (ped.ids, Hinv)})


@pytest.fixture(scope="module")
def gblup_case(animal, tmp_path_factory):
    """The records of the 172 genotyped animals with one (a CSV) and their GBLUP fit: G
    blended with 0.05 I (no pedigree), its inverse by numpy. The simulated genotypes
    are not related to the weights, so a genomic value with SD 10 (the pedigree
    model's σ²_id ≈ 100) is added to them: g = Zb scaled, Z the centred genotypes, b
    ~ N(0, 1) (numpy.random.default_rng(15)); without it σ²_id is estimated at 0."""
    ped, records, M = animal
    rec = records[records["id"].astype(str).isin(M.index)].reset_index(drop=True)
    Z = M.loc[rec["id"].astype(str)].to_numpy()
    g = (Z - Z.mean(axis=0)) @ np.random.default_rng(15).normal(size=Z.shape[1])
    rec["weight"] = rec["weight"] + 10.0 * g / g.std()
    path = tmp_path_factory.mktemp("gblup") / "genotyped_records.csv"
    rec.to_csv(path, index=False)
    G = mme.genomic_relationship(M, blend=0.05)
    Ginv = np.linalg.inv(G.to_numpy())
    Ginv = sp.csc_matrix(0.5 * (Ginv + Ginv.T))
    return path, mme.fit(FORMULA, rec, relmat={"id": (G.index, Ginv)})


def _same_tables(out: Path, fit, rtol=RTOL_API):
    fe = pd.read_csv(out / "fixed_effects.csv", index_col="term")
    assert list(fe.index) == list(fit.fixed_effects.index)
    for c in ("estimate", "std_error", "t_value"):
        np.testing.assert_allclose(fe[c], fit.fixed_effects[c], rtol=rtol, err_msg=c)
    np.testing.assert_allclose(fe["df"], fit.fixed_effects["df"], rtol=RTOL_DF)
    np.testing.assert_allclose(fe["p_value"], fit.fixed_effects["p_value"], rtol=RTOL_P_VALUE)
    vc = pd.read_csv(out / "variance_components.csv")
    assert list(vc["group"]) == list(fit.variance_components["group"])
    for c in ("estimate", "std_error"):
        np.testing.assert_allclose(vc[c], fit.variance_components[c], rtol=rtol, err_msg=c)
    re_ = pd.read_csv(out / "random_effects.csv", dtype={"level": str})
    api = fit.random_effects
    assert list(re_["level"]) == [str(x) for x in api["level"]]
    scale = np.abs(api["blup"]).max()
    np.testing.assert_allclose(re_["blup"], api["blup"], rtol=rtol, atol=rtol * scale)
    for c in ("pev", "cond_var", "reliability", "accuracy"):
        np.testing.assert_allclose(re_[c], api[c], rtol=rtol, err_msg=c)
    log = pd.read_csv(out / "iteration_log.csv")
    np.testing.assert_allclose(log["loglik"], fit.iteration_log["loglik"], rtol=rtol)


def _tables(out: Path) -> dict:
    return {name: pd.read_csv(out / name) for name in TABLES}


def _single_step_args(out, genotypes=GENOTYPES, *extra):
    return ["fit", FORMULA, "--data", str(RECORDS), "--pedigree", str(PEDIGREE),
            "--relmat", "id", "--genomic", str(genotypes), "--blend", "0.05",
            "--tune", "diag-offdiag", "--out", str(out), "--quiet", *extra]


# -- the committed genotypes ------------------------------------------------------------
def test_genotypes_file_is_reproduced_by_its_script():
    res = subprocess.run([sys.executable, str(CLI_DATA / "genotypes.py")], capture_output=True,
                         text=True, env=_mme_subprocess_env(), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    M = _genotypes_by_hand()
    assert M.shape == (200, 500) and set(np.unique(M)) == {0.0, 1.0, 2.0}


# -- single-step -------------------------------------------------------------------------
def test_mme_run_single_step_equals_the_api(tmp_path, single_step_fit):
    """``python -m mme run single_step.toml`` (a subprocess, as a user runs it)."""
    res = subprocess.run([sys.executable, "-m", "mme", "run", str(SINGLE_STEP_TOML),
                          "--out", str(tmp_path)], capture_output=True, text=True,
                         env=_mme_subprocess_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "[mme] genotypes: 200 animals x 500 markers (BLUPF90 layout)" in res.stderr
    assert "H^-1 (single-step, tau 1, omega 1): 469 animals, 200 genotyped" in res.stderr
    _same_tables(tmp_path, single_step_fit)
    log = (tmp_path / "mme.log").read_text()
    assert "genotypes: 200 animals x 500 markers" in log and "tuned to A22" in log
    methods = (tmp_path / "methods.md").read_text()
    for fact in ("random id effects (469 levels) with covariance σ²_id H", "200 genotyped",
                 "500 markers", "VanRaden's (2008) method 1", "Chen et al. 2011)",
                 "G ← 0.95 G + 0.05 A₂₂", "H⁻¹ = A⁻¹ + [0 0; 0 G⁻¹ − A₂₂⁻¹]",
                 "Aguilar et al. 2010; Christensen & Lund 2010", "Legarra, Aguilar & Misztal",
                 "- VanRaden, P. M. (2008)", "- Aguilar, I., Misztal, I.",
                 "- Christensen, O. F. & Lund, M. S. (2010)", "- Legarra, A.",
                 "- Chen, C. Y.", "neither is given for the id effects", "469 animals"):
        assert fact in methods, fact
    assert "Kᵢᵢ = 1 + Fᵢ for the pedigree term" not in methods   # no A term left


def test_fit_options_single_step_with_tau_omega(tmp_path, animal):
    """``mme fit --genomic ... --tau --omega`` in-process; tau and omega reach H⁻¹."""
    ped, records, M = animal
    G = mme.genomic_relationship(M, blend=0.05, A22=ped, tune="diag-offdiag")
    api = mme.fit(FORMULA, records,
                  relmat={"id": (ped.ids, mme.single_step_inverse(ped, G, tau=1.0,
                                                                  omega=0.7))})
    assert main(_single_step_args(tmp_path, GENOTYPES, "--omega", "0.7")) == 0
    _same_tables(tmp_path, api)
    methods = (tmp_path / "methods.md").read_text()
    assert "[0 0; 0 τG⁻¹ − ωA₂₂⁻¹]" in methods and "τ = 1 and ω = 0.7" in methods


def test_blupf90_and_table_layouts_give_identical_results(tmp_path, single_step_fit):
    M = _genotypes_by_hand().astype(int)
    csv = tmp_path / "genotypes.csv"                   # a header naming the markers
    M.to_csv(csv)
    plain = tmp_path / "genotypes.dat"                 # whitespace, no header
    plain.write_text("".join(f"{i} {' '.join(map(str, row))}\n"
                             for i, row in zip(M.index, M.to_numpy())))
    runs = {}
    for name, path in (("blupf90", GENOTYPES), ("csv", csv), ("plain", plain)):
        assert main(_single_step_args(tmp_path / name, path)) == 0, name
        runs[name] = _tables(tmp_path / name)
    assert "table layout" in (tmp_path / "csv" / "mme.log").read_text()
    for name in ("csv", "plain"):
        for table in TABLES:
            a, b = runs["blupf90"][table], runs[name][table]
            assert list(a.columns) == list(b.columns)
            for c in a.columns.drop("seconds", errors="ignore"):     # not timings
                if pd.api.types.is_numeric_dtype(a[c]):
                    np.testing.assert_allclose(b[c], a[c], rtol=RTOL_LAYOUT,
                                               err_msg=f"{name} {table} {c}")
                else:
                    assert a[c].equals(b[c]), (name, table, c)
    _same_tables(tmp_path / "csv", single_step_fit)


# -- GBLUP ---------------------------------------------------------------------------------
def test_gblup_parameter_file_and_options_equal_the_api(tmp_path, gblup_case):
    records, fit = gblup_case
    assert fit.random_effects.query("group == 'id'").shape[0] == 200
    assert fit.variance_components["estimate"].iloc[1] > 10 and not fit.singular
    (tmp_path / "gblup.toml").write_text(
        f'[data]\nfiles = ["{records.as_posix()}"]\nfactors = ["id", "herd", "sex"]\n'
        f'[model]\nformula = "{FORMULA}"\n'
        f'[genomic]\nfile = "{GENOTYPES.as_posix()}"\nmodel = "gblup"\nterm = "id"\n'
        '[output]\nfolder = "results"\n')
    res = subprocess.run([sys.executable, "-m", "mme", "run", str(tmp_path / "gblup.toml")],
                         capture_output=True, text=True, env=_mme_subprocess_env(),
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "G^-1 (GBLUP): 200 animals; G by VanRaden method 1, blended with 0.05 I" \
        in res.stderr
    _same_tables(tmp_path / "results", fit)
    methods = (tmp_path / "results" / "methods.md").read_text()
    for fact in ("with covariance σ²_id G (G the genomic relationship matrix)",
                 "G ← 0.95 G + 0.05 I", "dense Cholesky factorization (GBLUP",
                 "- VanRaden, P. M. (2008)"):
        assert fact in methods, fact
    for absent in ("Aguilar", "single-step", "Meuwissen", "Chen, C. Y."):
        assert absent not in methods, absent
    # the same model from options, in-process
    out = tmp_path / "fit"
    assert main(["fit", FORMULA, "--data", str(records), "--genomic", str(GENOTYPES),
                 "--genomic-model", "gblup", "--genomic-term", "id", "--out", str(out),
                 "--quiet"]) == 0
    _same_tables(out, fit)


# -- the checkpoint's fingerprint -------------------------------------------------------
def test_checkpoint_fingerprint_holds_the_genomic_input(tmp_path, capsys):
    ck = tmp_path / "ck.json"
    assert main(_single_step_args(tmp_path / "a", GENOTYPES, "--checkpoint", str(ck),
                                  "--max-iter", "1")) == 2
    fp = json.loads(ck.read_text())["fingerprint"]["genomic"]
    assert fp["file"] == "genotypes.txt" and len(fp["sha256"]) == 64
    assert (fp["model"], fp["term"], fp["blend"], fp["tune"]) == ("single-step", "id", 0.05,
                                                                  "diag-offdiag")
    capsys.readouterr()
    args = _single_step_args(tmp_path / "b", GENOTYPES, "--checkpoint", str(ck))
    args[args.index("--blend") + 1] = "0.1"        # another G: refused
    assert main(args) == 1
    assert "(genomic differ)" in _err_line(capsys)
    other = tmp_path / "genotypes.txt"             # other genotypes: refused
    lines = GENOTYPES.read_text().splitlines()
    other.write_text("\n".join(lines[:-1]) + "\n")
    assert main(_single_step_args(tmp_path / "c", other, "--checkpoint", str(ck))) == 1
    assert "(genomic differ)" in _err_line(capsys)
    assert main(_single_step_args(tmp_path / "d", GENOTYPES, "--checkpoint", str(ck))) == 0


# -- bad genotype files: exit 1, one line naming the animal, the marker, the line ---------
def _edit(line_no: int, edit) -> str:
    lines = GENOTYPES.read_text().splitlines()
    lines[line_no - 1] = edit(lines[line_no - 1])
    return "\n".join(lines) + "\n"


def _digit(j: int, d: str):
    """Set the digit of marker j (1-based) of a BLUPF90 line."""
    def edit(line):
        animal, digits = line.split()
        return f"{animal:<6} {digits[:j - 1]}{d}{digits[j:]}"
    return edit


FIRST_ID = GENOTYPES.read_text().split()[0]
LINE3_ID = GENOTYPES.read_text().splitlines()[2].split()[0]


@pytest.mark.parametrize("name, text, culprit", [
    ("missing5", lambda: _edit(3, _digit(17, "5")),
     f"missing genotype of animal '{LINE3_ID}' (line 3) at marker 17: impute the genotypes "
     "first"),
    ("code3", lambda: _edit(3, _digit(4, "3")),
     f"genotype '3' of animal '{LINE3_ID}' (line 3) at marker 4 is not 0, 1 or 2"),
    ("short", lambda: _edit(3, lambda s: s[:-1]),
     f"rows of different length: animal '{LINE3_ID}' (line 3) has 499 genotypes, "
     f"'{FIRST_ID}' (the first row) has 500"),
    ("stranger", lambda: GENOTYPES.read_text() + "xx9    " + "0" * 500 + "\n",
     "1 genotyped animal(s) not in the pedigree"),
    ("twice", lambda: GENOTYPES.read_text() + GENOTYPES.read_text().splitlines()[0] + "\n",
     f"animal(s) '{FIRST_ID}' have more than one row of genotypes"),
    ("table_na", lambda: "id,m1,m2,m3\n" + f"{FIRST_ID},0,1,2\n{LINE3_ID},1,NA,0\n",
     f"missing genotype of animal '{LINE3_ID}' (line 3) at marker m2: impute"),
    ("table_value", lambda: "id m1 m2 m3\n" + f"{FIRST_ID} 0 1 2\n{LINE3_ID} 1 -1 0\n",
     f"genotype '-1' of animal '{LINE3_ID}' (line 3) at marker m2 is not 0, 1 or 2"),
    ("table_length", lambda: f"{FIRST_ID}\t0\t1\t2\n{LINE3_ID}\t1\t0\n",
     f"rows of different length: animal '{LINE3_ID}' (line 2) has 2 genotypes, "
     f"'{FIRST_ID}' (the first row) has 3"),
])
def test_bad_genotype_files_exit_1(tmp_path, capsys, name, text, culprit):
    path = tmp_path / f"{name}.txt"
    path.write_text(text())
    assert main(_single_step_args(tmp_path / "o", path)) == 1
    line = _err_line(capsys)
    assert culprit in line, line
    assert str(path) in line
    if name == "stranger":
        assert "'xx9'" in line and "animal_pedigree.csv" in line
    assert not (tmp_path / "o" / "fixed_effects.csv").exists()


@pytest.mark.parametrize("args, culprit", [
    (["--genomic", str(GENOTYPES)], "single-step needs --pedigree FILE; with genotypes only "
                                    "use --genomic-model gblup"),
    (["--genomic", str(GENOTYPES), "--genomic-model", "gblup"],
     "name the random term the genotypes apply to: --genomic-term TERM"),
    (["--genomic", str(GENOTYPES), "--genomic-model", "gblup", "--genomic-term", "id"],
     "GBLUP: 242 animal(s) with records in column 'id' are not genotyped"),
    (["--genomic", str(GENOTYPES), "--genomic-model", "gblup", "--genomic-term", "id",
      "--tau", "2"], "--tau and --omega scale G^-1 and A22^-1 in single-step's H^-1"),
    (["--genomic", str(GENOTYPES), "--genomic-model", "gblup", "--genomic-term", "id",
      "--tune", "mean"], "tune puts G on the scale of the pedigree's A22: it needs "
                         "--pedigree FILE"),
    (["--genomic", str(GENOTYPES), "--genomic-term", "herd", "--pedigree", str(PEDIGREE)],
     "8 'herd' value(s) in the data are not in its relationship matrix"),
    (["--blend", "0.1"], "--blend without --genomic FILE"),
    (["--genomic", str(GENOTYPES), "--pedigree", str(PEDIGREE), "--relmat", "id",
      "--blend", "1.5"], "--blend must be in [0, 1), got 1.5"),
    (["--genomic", str(GENOTYPES), "--pedigree", str(PEDIGREE), "--relmat", "id",
      "--blend", "0"], "G (200 x 200) is not positive definite"),
    (["--genomic", "nothere.txt", "--pedigree", str(PEDIGREE), "--relmat", "id"],
     "genotype file 'nothere.txt' not found"),
])
def test_bad_genomic_options_exit_1(tmp_path, capsys, args, culprit):
    assert main(["fit", FORMULA, "--data", str(RECORDS), "--out", str(tmp_path), "--quiet",
                 *args]) == 1
    line = _err_line(capsys)
    assert culprit in line, line


@pytest.mark.parametrize("body, culprit", [
    ('[genomic]\nmodel = "gblup"\n', "missing key 'file' in [genomic]"),
    ('[genomic]\nfile = "GEN"\nblnd = 0.1\n', "unknown key 'blnd' in [genomic]"),
    ('[genomic]\nfile = "GEN"\nmodel = "ssgblup"\n',
     "[genomic] model must be single-step or gblup, got 'ssgblup'"),
    ('[genomic]\nfile = "GEN"\ntune = "max"\n', "[genomic] tune must be diag-offdiag, mean"),
    ('[genomic]\nfile = "GEN"\n',
     "single-step needs a [pedigree] file; with genotypes only use model = \"gblup\""),
    ('[genomic]\nfile = "GEN"\nblend = "some"\n', "[genomic] blend must be int or float"),
    ('[options]\nthreads = 0\n', "[options] threads must be a whole number of at least 1"),
])
def test_bad_genomic_parameter_files(tmp_path, capsys, body, culprit):
    path = tmp_path / "model.toml"
    path.write_text(f'[data]\nfiles = ["{RECORDS.as_posix()}"]\n[model]\nformula = '
                    f'"{FORMULA}"\n' + body.replace("GEN", GENOTYPES.as_posix()))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert culprit in _err_line(capsys)
