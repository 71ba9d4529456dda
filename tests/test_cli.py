"""The command line (``mme.cli``): driven in-process through ``main([...])`` as a user
would type it, and once as a subprocess (``python -m mme --help``). The files it
writes are compared with the Python API's tables on the bundled animal example."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mme
from mme.cli import memory
from mme.cli.errors import InputError
from mme.cli.formulas import check_formula
from mme.cli.main import main
from mme.examples.animal import FORMULA, load_animal

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "mme" / "data"
RECORDS, PEDIGREE = DATA / "animal_records.csv", DATA / "animal_pedigree.csv"
TOML = ROOT / "tests" / "data" / "cli" / "animal.toml"
FILES = ("fixed_effects.csv", "random_effects.csv", "variance_components.csv",
         "iteration_log.csv", "summary.txt", "methods.md", "mme.log")


#: a checkpoint's AI against the same round of the in-process fit: the same stages and
#: arithmetic on the same θ path (achieved: identical, 0.0; margin for BLAS threading)
RTOL_RESUME = 1e-10

@pytest.fixture(scope="module")
def api_fit():
    ped_df, records = load_animal()
    ped = mme.Pedigree.from_frame(ped_df)
    return mme.fit(FORMULA, records, relmat={"id": ped}), ped


def _fit_args(out, *extra):
    return ["fit", FORMULA, "--data", str(RECORDS), "--pedigree", str(PEDIGREE),
            "--relmat", "id", "--out", str(out), "--quiet", *extra]


def _mme_subprocess_env() -> dict:
    # the mme this test imported (the installed package in CI, src/ when built in place),
    # ahead of what PYTHONPATH already holds (e.g. a tqdm installed beside)
    here = str(Path(mme.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mme: error: ")
    return err[0]


def _assert_same_tables(out: Path, fit):
    fe = pd.read_csv(out / "fixed_effects.csv", index_col="term")
    pd.testing.assert_frame_equal(fe, fit.fixed_effects, check_exact=False, rtol=1e-12)
    vc = pd.read_csv(out / "variance_components.csv", keep_default_na=False,
                     dtype={"term1": str, "term2": str})
    vc["estimate"] = vc["estimate"].astype(float)
    np.testing.assert_allclose(vc["estimate"], fit.variance_components["estimate"], rtol=1e-12)
    np.testing.assert_allclose(vc["std_error"].astype(float),
                               fit.variance_components["std_error"], rtol=1e-12)
    assert list(vc["group"]) == list(fit.variance_components["group"])
    re_ = pd.read_csv(out / "random_effects.csv", dtype={"level": str})
    api = fit.random_effects
    assert list(re_.columns) == list(api.columns)
    assert list(re_["level"]) == [str(x) for x in api["level"]]
    for c in ("blup", "pev", "cond_var", "reliability", "accuracy"):
        np.testing.assert_allclose(re_[c], api[c], rtol=1e-10, atol=1e-12)
    assert (out / "summary.txt").read_text().strip() == fit.summary().strip()


# -- mme fit / mme run -----------------------------------------------------------------
def test_fit_writes_the_api_tables(tmp_path, api_fit, capsys):
    fit, ped = api_fit
    assert main(_fit_args(tmp_path)) == 0
    for name in FILES:
        assert (tmp_path / name).exists(), name
    _assert_same_tables(tmp_path, fit)
    log = pd.read_csv(tmp_path / "iteration_log.csv")
    np.testing.assert_allclose(log["loglik"], fit.iteration_log["loglik"], rtol=1e-12)
    methods = (tmp_path / "methods.md").read_text()
    for fact in ("414 records", "AI-REML", "Gilmour", "469 animals", "Meuwissen", "herd effects "
                 "(8 levels)", "Satterthwaite", f"mme {mme.__version__}",
                 f"converged after {fit.n_iter} rounds", f"{fit.loglik:.4f}",
                 f"{ped.n_founders} founders", "5 generations", "AMD"):
        assert fact in methods, fact
    assert "REML round" in (tmp_path / "mme.log").read_text()
    assert capsys.readouterr().err == ""          # --quiet


def test_run_parameter_file_equals_fit(tmp_path, api_fit):
    assert main(["run", str(TOML), "--out", str(tmp_path), "--quiet"]) == 0
    _assert_same_tables(tmp_path, api_fit[0])


def test_blupf90_whitespace_files_without_header(tmp_path, api_fit):
    records = pd.read_csv(RECORDS)
    rec_file = tmp_path / "renf90.dat"
    rec_file.write_text("\n".join(" ".join(f"{v:>6}" for v in row)
                                  for row in records[["id", "herd", "sex", "weight"]]
                                  .itertuples(index=False)) + "\n")
    ped = pd.read_csv(PEDIGREE, dtype=str)
    ped_file = tmp_path / "ped.txt"
    ped_file.write_text("\n".join(f"{a} {s} {d}" for a, s, d in ped.itertuples(index=False)))
    # numbers-only first line and no names: refused, naming the way out
    assert main(["fit", FORMULA, "--data", str(rec_file), "--quiet", "--out",
                 str(tmp_path / "x")]) == 1
    out = tmp_path / "out"
    assert main(["fit", FORMULA, "--data", str(rec_file), "--names", "id,herd,sex,weight",
                 "--pedigree", str(ped_file), "--relmat", "id", "--missing", "0",
                 "--out", str(out), "--quiet"]) == 0
    _assert_same_tables(out, api_fit[0])


def test_parquet(tmp_path, api_fit, capsys):
    path = tmp_path / "records.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path.write_bytes(b"PAR1 not really")
        assert main(_fit_args(tmp_path / "o")[:3] + [str(path)] + _fit_args(tmp_path)[4:]) == 1
        assert "pip install 'mme[parquet]'" in _err_line(capsys)
        return
    pd.read_csv(RECORDS, dtype={"id": str}).to_parquet(path)
    args = _fit_args(tmp_path)
    args[3] = str(path)
    assert main(args) == 0
    _assert_same_tables(tmp_path, api_fit[0])
    # the pedigree as Parquet too (its ids read as text, as from CSV)
    ped_path = tmp_path / "ped.parquet"
    pd.read_csv(PEDIGREE, dtype=str).to_parquet(ped_path, index=False)
    args = _fit_args(tmp_path / "p")
    args[3], args[5] = str(path), str(ped_path)
    assert main(args) == 0
    _assert_same_tables(tmp_path / "p", api_fit[0])


def test_known_variances_and_pcg(tmp_path):
    ped_df, records = load_animal()
    ped = mme.Pedigree.from_frame(ped_df)
    v = {"herd": 118.0, "id": 100.0, "Residual": 140.0}
    api = mme.fit(FORMULA, records, relmat={"id": ped}, variances=v)
    text = "herd=118,id=100,Residual=140"
    assert main(_fit_args(tmp_path / "d", "--variances", text)) == 0
    re_ = pd.read_csv(tmp_path / "d" / "random_effects.csv", dtype={"level": str})
    np.testing.assert_allclose(re_["blup"], api.random_effects["blup"], rtol=1e-10, atol=1e-10)
    assert "given variances" in (tmp_path / "d" / "methods.md").read_text()
    assert main(_fit_args(tmp_path / "p", "--variances", text, "--solver", "pcg")) == 0
    pcg = pd.read_csv(tmp_path / "p" / "random_effects.csv", dtype={"level": str})
    np.testing.assert_allclose(pcg["blup"], api.random_effects["blup"], atol=1e-5)



def _mme_run(toml: Path, *extra) -> subprocess.CompletedProcess:
    """``python -m mme run TOML`` as a user runs it, in the parameter file's folder."""
    return subprocess.run([sys.executable, "-m", "mme", "run", str(toml), *extra],
                          capture_output=True, text=True, env=_mme_subprocess_env(),
                          cwd=toml.parent, timeout=300)


def test_mme_run_reads_parquet(tmp_path, api_fit):
    pytest.importorskip("pyarrow")
    records = pd.read_csv(RECORDS, dtype={"id": str, "herd": str, "sex": str})
    records.to_parquet(tmp_path / "records.parquet", index=False)
    (tmp_path / "model.toml").write_text(
        '[data]\nfiles = ["records.parquet"]\n'
        f'[model]\nformula = "{FORMULA}"\nrelmat = ["id"]\n'
        f'[pedigree]\nfile = "{PEDIGREE.as_posix()}"\nmissing = ["0"]\n'
        '[output]\nfolder = "results"\n')
    res = _mme_run(tmp_path / "model.toml")
    assert res.returncode == 0, res.stderr
    assert "records.parquet" in res.stderr and "data: 414 rows" in res.stderr
    assert "Random effects:" in res.stdout                # the summary (lme4's layout)
    _assert_same_tables(tmp_path / "results", api_fit[0])


def test_mme_run_reads_blupf90_whitespace_files(tmp_path, api_fit):
    """A BLUPF90-style data file (no header, columns aligned by blanks, herd and sex
    coded as integers) and pedigree (id sire dam, 0 unknown) through ``mme run``."""
    records = pd.read_csv(RECORDS, dtype={"id": str, "herd": str, "sex": str})
    herd = {h: i + 1 for i, h in enumerate(sorted(records["herd"].unique()))}
    coded = pd.DataFrame({"id": records["id"], "herd": records["herd"].map(herd),
                          "sex": records["sex"].map({"F": 1, "M": 2}),
                          "weight": records["weight"]})
    (tmp_path / "renf90.dat").write_text("".join(
        f"{r.id:>6} {r.herd:>3} {r.sex:>2} {r.weight!r:>22}\n" for r in coded.itertuples()))
    ped = pd.read_csv(PEDIGREE, dtype=str)
    (tmp_path / "renadd.ped").write_text("".join(
        f"{a:>6} {s:>6} {d:>6}\n" for a, s, d in ped.itertuples(index=False)))
    (tmp_path / "model.toml").write_text(
        '[data]\nfiles = ["renf90.dat"]\nnames = ["id", "herd", "sex", "weight"]\n'
        'factors = ["sex"]\n'
        f'[model]\nformula = "{FORMULA}"\nrelmat = ["id"]\n'
        '[pedigree]\nfile = "renadd.ped"\nmissing = ["0"]\n')
    res = _mme_run(tmp_path / "model.toml", "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    out = tmp_path / "mme_out"                 # the default folder, beside the file
    # the API on the original coding: the same estimates (sex 2 = M; herds renumbered)
    fit = api_fit[0]
    vc = pd.read_csv(out / "variance_components.csv")
    np.testing.assert_allclose(vc["estimate"], fit.variance_components["estimate"],
                               rtol=1e-10)
    fe = pd.read_csv(out / "fixed_effects.csv", index_col="term")
    np.testing.assert_allclose(fe["estimate"], fit.fixed_effects["estimate"], rtol=1e-10)
    assert list(fe.index) == ["(Intercept)", "sex2"]
    re_ = pd.read_csv(out / "random_effects.csv", dtype={"level": str})
    api = fit.random_effects
    ids = api["group"] == "id"
    np.testing.assert_allclose(
        re_[re_["group"] == "id"].set_index("level")["blup"].reindex(api.loc[ids, "level"]),
        api.loc[ids, "blup"], rtol=1e-9, atol=1e-10)

# -- bad input: exit 1, one line naming the culprit ------------------------------------
@pytest.mark.parametrize("args, culprit", [
    (["fit", FORMULA, "--data", "nope.csv"], "'nope.csv' not found"),
    (["fit", "weight ~ sexx + (1|herd)", "--data", str(RECORDS)], "'sexx' is not a column"),
    (["fit", FORMULA, "--data", str(RECORDS), "--pedigree", str(PEDIGREE)], "--relmat"),
    (["fit", FORMULA, "--data", str(RECORDS), "--variances", "id=abc"], "'id'"),
    (["fit", FORMULA, "--data", str(RECORDS), "--method", "XX"], "argument --method"),
    (["fit", FORMULA], "--data"),
    (["fit", FORMULA, "--data", str(RECORDS), "--memory-limit", "lots"], "'lots'"),
    (["fit", "weight ~ sex + (1|herd)", "--data", str(RECORDS), "--weights", "w"], "'w'"),
    (["run", "missing.toml"], "'missing.toml' not found"),
])
def test_bad_input_exits_1_with_one_line(tmp_path, capsys, args, culprit):
    assert main(args + ["--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert culprit in err
    assert "Traceback" not in err


@pytest.mark.parametrize("body, culprit", [
    ('[model]\nformula = "weight ~ sex"\n', "missing key 'files' in [data]"),
    ('[data]\nfiles = ["r.csv"]\n', "missing key 'formula' in [model]"),
    ('[data]\nfiles = ["r.csv"]\nsepp = ","\n[model]\nformula = "y ~ x"\n',
     "unknown key 'sepp' in [data]"),
    ('[data]\nfiles = ["nothere.csv"]\n[model]\nformula = "y ~ x"\n', "nothere.csv' not found"),
    ('[data]\nfiles = ["REC"]\n[model]\nformula = "weight ~ sex + (1|herd)"\n'
     'relmat = ["id"]\n', "relmat needs a [pedigree]"),
    ('[data]\nfiles = ["REC"]\n[model]\nformula = "weight ~ sex + (1|hrd)"\n',
     "column(s) 'hrd' not found"),
    ('[data\nfiles=1', "not valid TOML"),
])
def test_bad_parameter_files(tmp_path, capsys, body, culprit):
    path = tmp_path / "model.toml"
    path.write_text(body.replace("REC", RECORDS.as_posix()))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert culprit in _err_line(capsys)


def test_formula_from_a_file_executes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.toml"
    path.write_text(f'[data]\nfiles = ["{RECORDS.as_posix()}"]\n[model]\n'
                    "formula = 'weight ~ I(__import__(\"os\").system(\"touch pwned\"))'\n")
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "'__import__' is not allowed" in _err_line(capsys)
    assert not (tmp_path / "pwned").exists()


def test_formula_allow_list():
    cols = ["y", "x", "log.y", "g", "a"]
    for ok in ("y ~ x + (1|g)", "log(y) ~ poly(x, degree=2) + (x || g)", "log.y ~ I(x**2) + C(a)",
               "cbind(y, x) ~ 0 + trait + (0 + trait | g)", "y ~ scale(x) + a:x + a*x - 1"):
        check_formula(ok, cols)
    for bad, msg in (("y ~ x.real", "attribute access"), ("y ~ eval(x)", "call eval"),
                     ("y ~ x[0]", "'['"), ("y ~ C(a, 'x')", "strings"),
                     ("y ~ lambda", "not a column"), ("y ~ (x", "unbalanced")):
        with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("(", r"\(")):
            check_formula(bad, cols)


def test_usage_error_exits_1(capsys):
    assert main(["bogus"]) == 1
    assert main(["pedigree"]) == 1
    assert main(["--help"]) == 0
    assert "mme run model.toml" not in capsys.readouterr().err


def test_run_help_documents_the_keys(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("[data]", "files", "factors", "[model]", "formula", "relmat", "variances",
                "[pedigree]", "missing", "[options]", "max_iter", "ordering", "checkpoint",
                "memory_limit", "threads", "[genomic]", "single-step", "gblup", "blend",
                "tune", "tau", "omega", "[output]", "folder"):
        assert key in out, key


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["fit", FORMULA, "--data", "nope.csv", "--debug", "--quiet",
                 "--out", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err


# -- convergence, checkpoint and resume -------------------------------------------------
def test_checkpoint_resume_reaches_the_uninterrupted_fit(tmp_path, api_fit, capsys):
    fit = api_fit[0]
    ck = tmp_path / "fit.ckpt.json"
    # a run stopped after one round: exit 2, results written, checkpoint of round 1
    assert main(_fit_args(tmp_path / "a", "--checkpoint", str(ck), "--max-iter", "1")) == 2
    state = json.loads(ck.read_text())
    assert state["status"] == "not converged" and len(state["theta"]) == 3
    assert [r["iteration"] for r in state["rounds"]] == [0, 1]
    # the AI at round 1's θ, as the uninterrupted fit computed it there
    assert fit.history[1].ai is not None
    np.testing.assert_allclose(state["ai_theta"], fit.history[1].theta, rtol=RTOL_RESUME)
    np.testing.assert_allclose(state["ai"], fit.history[1].ai, rtol=RTOL_RESUME)
    assert not list(tmp_path.glob(".*.tmp"))        # written atomically, nothing left over
    # resumed: the same estimates as the uninterrupted fit
    args = [a for a in _fit_args(tmp_path / "b", "--checkpoint", str(ck)) if a != "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "resuming from checkpoint" in err and "REML round 2: AI" in err
    assert "REML round 1:" not in err
    vc = pd.read_csv(tmp_path / "b" / "variance_components.csv")
    np.testing.assert_allclose(vc["estimate"], fit.variance_components["estimate"], rtol=1e-8)
    log = pd.read_csv(tmp_path / "b" / "iteration_log.csv")
    assert log["iteration"].tolist() == list(range(len(log)))
    assert abs(log["loglik"].iloc[-1] - fit.loglik) < 1e-8 * abs(fit.loglik)
    final = json.loads(ck.read_text())
    assert final["status"] == "converged"
    # the final checkpoint holds the AI matrix at the estimate: its inverse gives the SEs
    ai = np.array(final["ai"])
    assert ai.shape == (3, 3) and np.allclose(ai, ai.T)
    np.testing.assert_allclose(final["ai_theta"], final["theta"])
    np.testing.assert_allclose(np.sqrt(np.diag(np.linalg.inv(ai))), vc["std_error"], rtol=1e-10)
    assert "resumed from a checkpoint after 1" in (tmp_path / "b" / "methods.md").read_text()
    # another model is refused by the fingerprint
    capsys.readouterr()
    args = _fit_args(tmp_path / "c", "--checkpoint", str(ck), "--method", "ML")
    assert main(args) == 1
    assert "method differ" in _err_line(capsys)



def _simulate_animal(n: int, seed: int = 7, cohorts: int = 8) -> tuple:
    """(pedigree, records) of an animal model with n animals: founders, then cohorts
    whose sires are a few males and dams any females of earlier cohorts; one record per
    animal, herds of ~50, y = 10 + 0.5 male + herd + a + e (σ²: herd 0.2, a 0.4, e 0.6)."""
    rng = np.random.default_rng(seed)
    cohort = np.repeat(np.arange(cohorts), n // cohorts)
    n = len(cohort)
    male = rng.integers(0, 2, n).astype(bool)
    sire, dam = np.full(n, -1), np.full(n, -1)
    for c in range(1, cohorts):
        idx, prev = np.flatnonzero(cohort == c), np.flatnonzero(cohort < c)
        sires = rng.choice(prev[male[prev]], size=max(5, len(idx) // 40), replace=False)
        sire[idx] = rng.choice(sires, len(idx))
        dam[idx] = rng.choice(prev[~male[prev]], len(idx))
    a = np.zeros(n)
    for c in range(cohorts):                # parents are in earlier cohorts
        idx = np.flatnonzero(cohort == c)
        known = sire[idx] >= 0
        mid = np.where(known, (a[sire[idx]] + a[dam[idx]]) / 2, 0.0)
        a[idx] = mid + rng.normal(0, np.sqrt(0.4 * np.where(known, 0.5, 1.0)))
    herd = rng.integers(0, n // 50, n)
    y = (10 + 0.5 * male + rng.normal(0, np.sqrt(0.2), n // 50)[herd] + a
         + rng.normal(0, np.sqrt(0.6), n))
    ids = np.array([f"a{i}" for i in range(n)], dtype=object)
    parent = lambda p: np.where(p >= 0, ids[np.maximum(p, 0)], "0")   # noqa: E731
    ped = pd.DataFrame({"id": ids, "sire": parent(sire), "dam": parent(dam)})
    rec = pd.DataFrame({"id": ids, "herd": [f"h{h}" for h in herd],
                        "sex": np.where(male, "M", "F"), "y": y})
    return ped, rec


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_reaches_the_uninterrupted_estimates(tmp_path):
    """A checkpointed `python -m mme fit` killed with SIGKILL in REML round 3 (after the
    checkpoint of round 2) and started again with the same command ends at the
    estimates of an uninterrupted fit (1e-8 relative; the same θ path, in fact)."""
    import signal
    import time
    ped, rec = _simulate_animal(30_000)      # a REML round takes ~0.2 s
    ped.to_csv(tmp_path / "ped.csv", index=False)
    rec.to_csv(tmp_path / "rec.csv", index=False)
    ck = tmp_path / "ck.json"

    def args(out):
        return ["fit", "y ~ sex + (1|herd) + (1|id)", "--data", str(tmp_path / "rec.csv"),
                "--pedigree", str(tmp_path / "ped.csv"), "--relmat", "id",
                "--out", str(out), "--quiet"]

    cmd = [sys.executable, "-m", "mme"] + args(tmp_path / "resumed") + ["--checkpoint", str(ck)]
    proc = subprocess.Popen(cmd, env=_mme_subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen, deadline = -1, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ck.exists():
                try:
                    seen = max(r["iteration"] for r in json.loads(ck.read_text())["rounds"])
                except (ValueError, KeyError):      # never torn: written then renamed
                    pytest.fail("a checkpoint was read half-written")
                if seen >= 2:
                    break
            time.sleep(0.005)
        assert proc.poll() is None, ("the fit ended before it could be killed: "
                                     + proc.stderr.read().decode())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and seen >= 2
    state = json.loads(ck.read_text())
    assert state["status"] == "running"
    # every round's checkpoint holds the AI at its θ: symmetric positive definite
    ai = np.array(state["ai"])
    assert ai.shape == (3, 3) and np.allclose(ai, ai.T) and np.all(np.linalg.eigvalsh(ai) > 0)
    np.testing.assert_allclose(state["ai_theta"], state["theta"])
    killed_at = max(r["iteration"] for r in state["rounds"])
    assert not (tmp_path / "resumed" / "variance_components.csv").exists()
    # the same command again: resumes after the last checkpointed round
    res = subprocess.run([c for c in cmd if c != "--quiet"], env=_mme_subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming from checkpoint {ck} after {killed_at} REML rounds" in res.stderr
    assert f"REML round {killed_at + 1}: AI" in res.stderr
    assert f"REML round {killed_at}:" not in res.stderr
    # the uninterrupted fit (in-process, the same reader and stages)
    assert main(args(tmp_path / "whole")) == 0
    for name in ("variance_components.csv", "fixed_effects.csv"):
        a = pd.read_csv(tmp_path / "resumed" / name)
        b = pd.read_csv(tmp_path / "whole" / name)
        np.testing.assert_allclose(a["estimate"], b["estimate"], rtol=1e-8, err_msg=name)
    # the same rounds (the start row, iteration 0, is not handed to the checkpoint
    # callback, so a run killed before its end has none)
    la = pd.read_csv(tmp_path / "resumed" / "iteration_log.csv")
    lb = pd.read_csv(tmp_path / "whole" / "iteration_log.csv").query("iteration > 0")
    assert la["iteration"].tolist() == lb["iteration"].tolist()
    np.testing.assert_allclose(la["loglik"], lb["loglik"], rtol=1e-12)
    theta = [c for c in la.columns if c.startswith("theta")]
    np.testing.assert_allclose(la[theta], lb[theta], rtol=1e-8)
    final = json.loads(ck.read_text())
    assert final["status"] == "converged" and np.array(final["ai"]).shape == (3, 3)

# -- memory forecast ----------------------------------------------------------------------
def test_memory_forecast_refuses_with_figures(tmp_path, capsys, monkeypatch):
    assert main(_fit_args(tmp_path, "--memory-limit", "100K")) == 1
    line = _err_line(capsys)
    for piece in ("not enough memory", "predicted", "nnz(L) = 3,788", "available 100.0 KiB",
                  "--solver pcg", "--ordering"):
        assert piece in line, piece
    assert not (tmp_path / "fixed_effects.csv").exists()
    monkeypatch.setenv("MME_MEMORY_LIMIT", "1K")
    assert main(_fit_args(tmp_path)) == 1
    assert "available 1.0 KiB" in _err_line(capsys)
    assert main(_fit_args(tmp_path, "--memory-limit", "off")) == 0


def test_forecast_reads_cholmods_symbolic_factor():
    """The forecast's nnz(L), CHOLMOD's choice of a supernodal factor and its stored
    values come from the binding's symbolic analysis alone (before any numeric
    factorization); scikit-sparse's numeric factor of the same matrix, copied to CSC,
    is checked against them: nnz(L) for a simplicial factor, the supernodes' lower
    trapezoids (zeros of amalgamation included) for a supernodal one."""
    import scipy.sparse as sp
    from sksparse import cholmod
    from mme.engine.cholesky import Cholesky
    A = sp.random(400, 400, 0.01, format="csc", random_state=3)
    A = sp.csc_matrix(sp.tril(A @ A.T + 40 * sp.identity(400)))

    def banded(n, band):
        offs = list(range(-band + 1, 1))
        return sp.csc_matrix(sp.diags([np.full(n - abs(o), -0.01 if o else 4.0) for o in offs],
                                      offs, shape=(n, n)))

    for M, supernodal, ordering in ((banded(1500, 30), False, "default"),
                                    (banded(1500, 60), True, "default"), (A, True, "amd"),
                                    (A, True, "metis"), (A, True, "natural")):
        ours = Cholesky(M, ordering)
        system = type("MME", (), {"C": M, "dim": M.shape[0], "p": 1})()
        fc = memory.forecast(system, ours, "1G")
        theirs = cholmod.analyze(M, ordering_method=ordering)
        theirs.cholesky_inplace(M)
        assert fc.supernodal == supernodal == ours.is_supernodal
        sym = ours.symbolic()
        if supernodal:
            c, r = sym["ncols"], sym["nrows"]
            assert theirs.L().nnz == int((c * r - c * (c - 1) // 2).sum())
            assert fc.stored_L == int((c * r).sum())
        else:
            assert theirs.L().nnz == fc.nnz_L == fc.stored_L
        ours.factorize(M)
        assert ours.value_count == fc.stored_L
        assert fc.total == sum(fc.held.values()) + max(
            sum(v.values()) for v in fc.transient.values())
    assert memory.parse_size("1.5G") == 3 * 2 ** 29
    avail, source = memory.available_memory()
    assert avail > 0 and source


# -- progress -------------------------------------------------------------------------------
def test_progress_lines_and_tqdm_bar(tmp_path, capsys, monkeypatch):
    args = [a for a in _fit_args(tmp_path) if a != "--quiet"]
    assert main(args) == 0
    cap = capsys.readouterr()
    for piece in ("[mme] reading data", "[mme] pedigree: 469 animals", "[mme] design: 414",
                  "nnz(L) 3,788", "[mme] REML round 1: AI, logLik"):
        assert piece in cap.err, piece
    assert "Random effects:" in cap.out             # the summary on stdout

    # stderr is not a terminal (captured, or a batch job's log file): lines only, no
    # bar, whether tqdm is installed or not
    FakeBar.made.clear()
    fake = type(sys)("tqdm")
    fake.tqdm = FakeBar
    monkeypatch.setitem(sys.modules, "tqdm", fake)
    assert main(args) == 0
    assert not FakeBar.made and "[mme] REML round 3: AI" in capsys.readouterr().err
    # a terminal: the bar follows the rounds, the lines go above it through tqdm.write
    monkeypatch.setattr("mme.cli.progress.is_terminal", lambda stream: True)
    assert main(args) == 0
    err = capsys.readouterr().err
    bar = FakeBar.made[0]
    assert bar.n >= 3 and "logLik" in bar.post and bar.closed
    assert bar.kw["total"] == 200 and bar.kw["file"] is not None
    assert "[mme] REML round 3: AI" in err and FakeBar.written == bar.n   # one per round
    # a terminal without tqdm: the lines
    FakeBar.made.clear()
    monkeypatch.setitem(sys.modules, "tqdm", None)          # import tqdm fails
    assert main(args) == 0
    assert not FakeBar.made and "[mme] REML round 3: AI" in capsys.readouterr().err


class FakeBar:
    """tqdm's interface as Progress uses it, recording the calls."""
    made, written = [], 0

    def __init__(self, **kw):
        self.kw, self.n, self.post, self.closed = kw, 0, None, False
        FakeBar.made.append(self)

    def update(self, k):
        self.n += k

    def set_postfix(self, ordered_dict=None, **kw):
        self.post = dict(ordered_dict or {}, **kw)

    def close(self):
        self.closed = True

    @staticmethod
    def write(line, file=None):
        FakeBar.written += 1
        print(line, file=file)


def test_progress_with_the_real_tqdm_on_a_terminal():
    """With tqdm installed (a dependency), a terminal gets the bar and every line; a
    file gets the lines only, no carriage-return redraws. Without tqdm, the lines."""
    import io
    from types import SimpleNamespace
    from mme.cli.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    rec = lambda it: SimpleNamespace(iteration=it, kind="AI", loglik=-10.0 + it,  # noqa: E731
                                     step=1.0, decrement=10.0 ** -it, seconds=0.5)
    outputs = {}
    for name, stream in (("terminal", Terminal()), ("file", io.StringIO())):
        p = Progress(stream=stream)
        p.note("reading data")
        p.reml_start(max_iter=20)
        for it in (1, 2, 3):
            p.reml_round(rec(it))
        p.reml_end()
        p.note("done")
        outputs[name] = stream.getvalue()
        lines = [ln.strip("\r") for ln in outputs[name].replace("\r", "\n").splitlines()]
        for piece in ("[mme] reading data", "[mme] REML round 1: AI, logLik -9.000000",
                      "[mme] REML round 3: AI", "[mme] done"):
            assert any(ln.startswith(piece) for ln in lines), (name, piece)
    assert "\r" not in outputs["file"]
    assert outputs["file"].count("\n") == 5
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert Progress(stream=Terminal()).tqdm is None and "\r" not in outputs["terminal"]
    else:                       # the bar drew itself on the terminal (and cleared itself)
        assert "\r" in outputs["terminal"] and "AI-REML" in outputs["terminal"]


# -- threads --------------------------------------------------------------------------------
#: results with --threads 1 and 2: only the order of BLAS's floating-point sums can
#: differ (achieved: 0, identical tables on this machine)
RTOL_THREADS = 1e-12


def test_threads_limit_every_pool_and_leave_the_results(tmp_path, monkeypatch, capsys):
    from threadpoolctl import threadpool_info
    from mme import fitting
    from mme._threads import available_cores
    before = {d["filepath"]: d["num_threads"] for d in threadpool_info()}
    seen = {}
    estimate = fitting.estimate

    def spy(*a, **kw):          # the pools while the fit runs
        seen[len(seen)] = (threadpool_info(), available_cores())
        return estimate(*a, **kw)

    monkeypatch.setattr(fitting, "estimate", spy)
    assert main(_fit_args(tmp_path / "t1", "--threads", "1")) == 0
    pools, cores = seen[0]
    assert cores == 1 and pools and all(d["num_threads"] == 1 for d in pools), pools
    assert "threads: at most 1 in every pool" in (tmp_path / "t1" / "mme.log").read_text()
    # restored after the run
    assert {d["filepath"]: d["num_threads"] for d in threadpool_info()} == before
    # [options] threads = 2 in a parameter file
    toml = tmp_path / "model.toml"
    toml.write_text(TOML.read_text().replace("../../../src", str(ROOT / "src"))
                    .replace('ordering = "auto"', 'ordering = "auto"\nthreads = 2'))
    assert main(["run", str(toml), "--out", str(tmp_path / "t2"), "--quiet"]) == 0
    pools, cores = seen[1]
    assert cores == min(2, len(os.sched_getaffinity(0)))
    system = [d for d in pools if d["user_api"] == "blas"
              and not any(k in d["filepath"] for k in ("numpy", "scipy"))]
    assert all(d["num_threads"] == 2 for d in system) and \
        all(d["num_threads"] <= 2 for d in pools), pools
    assert "threads: at most 2 in every pool" in (tmp_path / "t2" / "mme.log").read_text()
    for name in ("fixed_effects.csv", "variance_components.csv", "iteration_log.csv"):
        a, b = pd.read_csv(tmp_path / "t1" / name), pd.read_csv(tmp_path / "t2" / name)
        for c in a.select_dtypes("number").columns.drop("seconds", errors="ignore"):
            np.testing.assert_allclose(b[c], a[c], rtol=RTOL_THREADS, err_msg=f"{name} {c}")
    r1 = pd.read_csv(tmp_path / "t1" / "random_effects.csv")
    r2 = pd.read_csv(tmp_path / "t2" / "random_effects.csv")
    for c in ("blup", "pev", "reliability"):
        np.testing.assert_allclose(r2[c], r1[c], rtol=RTOL_THREADS,
                                   atol=RTOL_THREADS * np.abs(r1[c]).max(), err_msg=c)
    assert main(_fit_args(tmp_path, "--threads", "0")) == 1
    assert "--threads must be a whole number of at least 1, got 0" in _err_line(capsys)


# -- pedigree commands -------------------------------------------------------------------
def test_pedigree_check_and_inbreeding(tmp_path, capsys, api_fit):
    ped = api_fit[1]
    assert main(["pedigree", "check", str(PEDIGREE)]) == 0
    out = capsys.readouterr().out
    assert "469 animals" in out and f"founders (both parents unknown): {ped.n_founders}" in out
    assert "generations: 5" in out and "109 inbred" in out and out.rstrip().endswith(
        "(0 warnings)")
    f_csv = tmp_path / "F.csv"
    assert main(["pedigree", "inbreeding", str(PEDIGREE), "--out", str(f_csv)]) == 0
    tab = pd.read_csv(f_csv, dtype={"id": str})
    np.testing.assert_allclose(tab.set_index("id")["F"].reindex(ped.ids), ped.inbreeding,
                               rtol=0, atol=1e-15)


def test_pedigree_check_faults(tmp_path, capsys):
    loop = tmp_path / "loop.txt"
    loop.write_text("id sire dam\nA B C\nB A C\nC 0 0\nE C A\n")
    assert main(["pedigree", "check", str(loop)]) == 1
    line = _err_line(capsys)
    assert "own ancestors" in line and "used both as a sire and as a dam" in line
    dash = tmp_path / "dash.txt"
    dash.write_text("S - -\nD - -\nK S D\n")       # '-' as sire and as dam: a code
    assert main(["pedigree", "check", str(dash)]) == 1
    assert "'-' looks like an undeclared unknown-parent code: --missing 0,NA,-" in \
        _err_line(capsys)
    assert main(["pedigree", "check", str(dash), "--missing", "-"]) == 0
    capsys.readouterr()
    odd = tmp_path / "odd.csv"
    odd.write_text("id,sire,dam,born\nS,-,?,2000\nD,-,?,2001\nK,S,D,2001\nK,S,D,2001\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # the CLI reports warnings, it does not raise them
        assert main(["pedigree", "check", str(odd), "--birth-year", "born"]) == 0
    out = capsys.readouterr().out
    assert "parent id '-'" in out and "--missing" in out      # undeclared unknown code
    assert "exact duplicate" in out
    assert "born no later than a parent (born): K" in out


def test_python_m_mme_help():
    # the same mme this test imported (the installed package in CI, src/ when built in place)
    env = dict(os.environ, PYTHONPATH=str(Path(mme.__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, "-m", "mme", "--help"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0
    for word in ("fit", "run", "pedigree", "exit status"):
        assert word in res.stdout


# -- Materials and Methods (Fit.methods_text, methods.md) ------------------------------
def _versions_in(text):
    import numpy
    import scipy
    for v in (f"mme {mme.__version__}", f"numpy {numpy.__version__}",
              f"scipy {scipy.__version__}", f"pandas {pd.__version__}"):
        assert v in text, v
    assert "BLAS" in text


def test_methods_text_rcbd():
    from mme.examples.rcbd import load_kfert
    fit = mme.fit("yield ~ K2O_lbac + (1|rep)", load_kfert())
    text = fit.methods_text()
    for fact in ("`yield ~ K2O_lbac + (1|rep)`", "15 records", "K2O_lbac (5 levels)",
                 "5 coefficients", "random rep effects (3 levels)", "σ²_rep I",
                 "R = σ²ₑI", "Restricted maximum likelihood (REML", "AI-REML",
                 "Gilmour, Thompson & Cullis 1995", "an EM step in its place",
                 f"converged after {fit.n_iter} rounds at log L = {fit.loglik:.4f}",
                 "Newton decrement", "Satterthwaite", "Kuznetsova", "Henderson's (1984)",
                 "- Henderson, C. R. (1984)", "- Kuznetsova, A.", "SuiteSparse", "CHOLMOD"):
        assert fact in text, fact
    _versions_in(text)
    for absent in ("Meuwissen", "pedigree", "Kenward", "1 + Fᵢ", "AR1", "factor-analytic"):
        assert absent not in text, absent
    fit.emmeans("K2O_lbac")                 # Kenward-Roger: now it applies
    text = fit.methods_text()
    assert "Kenward & Roger (1997)" in text and "- Kenward, M. G." in text
    # blocks fixed: least squares, residual df, no REML
    lm = mme.fit("yield ~ K2O_lbac + rep", load_kfert()).methods_text()
    assert "rep (3 levels)" in lm and "residual degrees of freedom (n − p)" in lm
    assert "REML" not in lm and "Satterthwaite" not in lm


def test_methods_text_animal_model_and_methods_md(tmp_path, api_fit):
    fit, ped = api_fit
    text = fit.methods_text()
    for fact in (f"`{FORMULA}`", "414 records", "sex (2 levels)", "herd effects (8 levels)",
                 "id effects (469 levels) with covariance σ²_id A", "469 animals",
                 "109 inbred", "Meuwissen & Luo (1992)", "- Meuwissen, T. H. E. & Luo, Z.",
                 "- Quaas, R. L.", "REML", "AMD ordering", "Satterthwaite",
                 f"{fit.loglik:.4f}", "Kᵢᵢ = 1 + Fᵢ"):
        assert fact in text, fact
    _versions_in(text)
    # methods.md of the command line: the same text, plus what the run knows (founders,
    # generations of the pedigree file)
    assert main(_fit_args(tmp_path)) == 0
    md_text = (tmp_path / "methods.md").read_text()
    assert md_text.replace(f"{ped.n_founders} founders, 5 generations; ", "") == text


def test_methods_text_structures():
    rng = np.random.default_rng(1)
    n = 96
    df = pd.DataFrame({"site": np.repeat(["a", "b"], n // 2), "g": rng.integers(0, 8, n),
                       "w": rng.uniform(0.5, 2.0, n), "x": rng.normal(size=n),
                       "col": np.tile(np.repeat(np.arange(1, 7), 8), 2),
                       "row": np.tile(np.arange(1, 9), 12)})
    df["y"] = rng.normal(size=n) + rng.normal(size=8)[df["g"]] + 0.1 * df["row"]
    t = mme.fit("y ~ x + (1|g)", df, residual="by(site)", weights="w").methods_text()
    assert "each of the 2 levels of site" in t and "prior weights" in t and "AR1" not in t
    t = mme.fit("y ~ x + (1|g)", df, residual="by(site, ar1(col):ar1(row))").methods_text()
    assert "AR1(ρ_c) ⊗ AR1(ρ_r)" in t and "(2 fields)" in t
    assert "- Gilmour, A. R., Cullis, B. R. & Verbyla, A. P. (1997)" in t
    wide = pd.DataFrame({"sire": np.repeat(np.arange(30), 4)})
    u = rng.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], 30)[wide["sire"]]
    wide["y1"], wide["y2"] = u[:, 0] + rng.normal(size=120), u[:, 1] + rng.normal(size=120)
    f = "cbind(y1, y2) ~ 0 + trait + (0 + trait | sire)"
    t = mme.fit(f, wide).methods_text()
    assert "unstructured 2 × 2 covariance matrix R₀" in t and "2 × 2 matrix" in t
    t = mme.fit(f, wide, structure={"sire": "fa(1)"}).methods_text()
    assert "factor-analytic G₀ = ΛΛ′ + Ψ of 1 factor" in t
    assert "- Smith, A., Cullis, B. & Thompson, R. (2001)" in t
    t = mme.fit(f, wide, variances={"sire": [[1, 0.5], [0.5, 1]],
                                    "Residual": [[1, 0], [0, 1]]}).methods_text()
    assert "at the given variances" in t and "AI-REML" not in t


def test_progress_estimates_the_time_left():
    """The expected rounds left follow the decrement's rate: 1e-3 → 1e-5 (÷100 a round)
    reaches TOL_DECREMENT_ABS = 1e-9 in ⌈log(1e-4) / log(1e-2)⌉ = 2 more rounds."""
    import io
    from types import SimpleNamespace
    from mme.cli.progress import Progress
    from mme.engine.reml import TOL_DECREMENT_ABS
    assert TOL_DECREMENT_ABS == 1e-9
    p = Progress(stream=io.StringIO(), bar=False)
    p.reml_start(max_iter=50)
    rec = lambda it, d: SimpleNamespace(iteration=it, kind="AI", loglik=-10.0 + it, step=1.0,
                                        decrement=d, seconds=3.0)
    p.reml_round(rec(1, 1e-3))
    p.reml_round(rec(2, 1e-5))
    lines = p.stream.getvalue().splitlines()
    assert not lines[0].endswith("left")                 # no rate after one round
    assert lines[1].endswith("~2 rounds (~6 s) left")
    p.reml_round(rec(3, 1e-10))
    assert p.stream.getvalue().splitlines()[2].endswith("converging")
    p.reml_start(max_iter=3)                             # capped by max_iter
    p.reml_round(rec(1, 1.0))
    p.reml_round(rec(2, 0.9))
    assert p.stream.getvalue().splitlines()[-1].endswith("~1 round (~3 s) left")
    p.reml_round(rec(3, 2.0))                            # a growing decrement: no estimate
    assert p.stream.getvalue().splitlines()[-1].endswith("s")
