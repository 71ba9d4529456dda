"""Checkpoints of distributed runs (``--checkpoint`` under mpiexec / with MC-REML).

A job is killed by the test hook ``MME_TEST_KILL`` (rank 0 sends itself SIGKILL after
its N-th checkpoint, or while the N-th JSON is half written: the launcher then ends
the other ranks, as a scheduler's time limit would) and rerun with the same options:
the resumed run must give what the uninterrupted run gives — Monte-Carlo REML to
round-off (the same draws and PCG starts), BLUP to the PCG tolerance (PCG restarts
from the saved iterate) — and the same output files. Bundled animal example (414
records, 469 animals), 10 samples: each mpiexec job takes 2-3 s.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mme
from mme.distributed import build_local_design, mc_reml_design, world

sys.path.insert(0, str(Path(__file__).parent))
from test_mpi import (ANIMAL_FORMULA, ANIMAL_VARIANCES, DATA, JOB_TIMEOUT,  # noqa: E402
                      ROOT, _animal, _compare, _mpiexec, _subprocess_env, needs_mpi)

#: resumed vs uninterrupted Monte-Carlo REML on the same number of ranks: the same
#: draws, PCG starts and reductions, so the same floating-point operations — achieved
#: 0.0 (bitwise equal θ, tables and iteration log); compared exactly
#: resumed on 1 rank from a checkpoint written by 2 ranks vs the uninterrupted 2-rank
#: run: the sums are added in another order; achieved 2.1e-13 relative (animal
#: example, 10 samples), margin 24x
RTOL_RESUME_OTHER_RANKS = 5e-12
#: resumed BLUP vs the uninterrupted one: both solve to PCG relative residual 1e-12
#: from different starts; achieved 4.5e-10 (max |Δ| / max |BLUP|), margin 22x. Both are
#: also within test_mpi's RTOL_BLUP_MPI of the direct (CHOLMOD) solution
RTOL_RESUME_PCG = 1e-8
#: MC-REML options of the CLI runs
SAMPLES, SEED = "10", "1"

PED, RECORDS = DATA / "animal_pedigree.csv", DATA / "animal_records.csv"


def cli(n: int | None, *args, kill: str | None = None):
    """``[mpiexec -n n] python -m mme fit <animal model> ...`` (n None: one process)."""
    cmd = ([_mpiexec(), "-n", str(n)] if n else []) + [
        sys.executable, "-m", "mme", "fit", ANIMAL_FORMULA, "--data", str(RECORDS),
        "--pedigree", str(PED), "--relmat", "id", "--quiet", *args]
    env = _subprocess_env()
    env.pop("MME_TEST_KILL", None)
    if kill:
        env["MME_TEST_KILL"] = kill
    return subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env,
                          cwd=str(ROOT))


def mc(n, out, ckpt=None, *extra, kill=None):
    args = ["--method", "MC-REML", "--samples", SAMPLES, "--seed", SEED, "--out", str(out),
            *extra]
    if ckpt is not None:
        args += ["--checkpoint", str(ckpt)]
    return cli(n, *args, kill=kill)


def error_line(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("mme: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def same_outputs(a: Path, b: Path) -> None:
    """The files of two MC-REML runs: equal, but for the seconds of each round."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in ("variance_components.csv", "fixed_effects.csv", "random_effects.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    la, lb = (pd.read_csv(d / "iteration_log.csv").drop(columns="seconds") for d in (a, b))
    pd.testing.assert_frame_equal(la, lb, check_exact=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 2-rank MC-REML run that nothing stops (it writes a checkpoint too)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = mc(2, tmp / "out", tmp / "ck.json")
    assert proc.returncode == 0, proc.stderr
    return tmp


# -- the library: resume from any round, sample doubling included (one process) --------
def test_mc_reml_resumed_from_every_round_equals_uninterrupted():
    ped, df = _animal()
    comm = world()
    design = build_local_design(ANIMAL_FORMULA, df, comm, {"id": ped})
    kw = dict(n_samples=10, seed=4, max_mc_se_ratio=0.25, max_samples=40)
    states = []
    full = mc_reml_design(design, comm, on_round=lambda s: states.append(copy.deepcopy(s)),
                          **kw)
    assert full.converged and full.n_samples > 10       # the samples were doubled
    assert [s.n_iter for s in states] == list(range(1, full.n_iter + 1))
    assert states[-1].converged and not any(s.converged for s in states[:-1])
    for st in states:
        res = mc_reml_design(design, comm, resume=st, **kw)
        assert res.n_iter == full.n_iter and res.n_samples == full.n_samples
        assert res.variances == full.variances and res.mc_se == full.mc_se, st.n_iter
        assert res.se == full.se
        assert [h["theta"] for h in res.history] == [h["theta"] for h in full.history]
        pd.testing.assert_frame_equal(res.random_effects, full.random_effects,
                                      check_exact=True)


def test_mc_reml_refuses_a_state_of_other_options():
    from mme import MMEError
    ped, df = _animal()
    comm = world()
    design = build_local_design(ANIMAL_FORMULA, df, comm, {"id": ped})
    states = []
    mc_reml_design(design, comm, n_samples=10, max_iter=1, on_round=states.append)
    with pytest.raises(MMEError, match="10 samples cannot follow from n_samples=4"):
        mc_reml_design(design, comm, n_samples=4, resume=states[0])
    big = copy.deepcopy(states[0])
    big.n_samples, big.X = 80, np.zeros((design.dim, 81))     # 10 → 20 → 40 stops at 40
    with pytest.raises(MMEError, match="80 samples cannot follow from n_samples=10"):
        mc_reml_design(design, comm, n_samples=10, max_samples=40, resume=big)
    bad = copy.deepcopy(states[0])
    bad.X = bad.X[:-1]
    with pytest.raises(MMEError, match=r"resume: X has shape \(478, 11\), this model needs "
                                       r"\(479, 11\)"):
        mc_reml_design(design, comm, n_samples=10, resume=bad)


# -- mpiexec -n 2: killed and resumed ---------------------------------------------------
@needs_mpi
@pytest.mark.slow
def test_mpi_mc_reml_killed_after_round_2_resumes_as_uninterrupted(uninterrupted, tmp_path):
    ck = tmp_path / "ck.json"
    killed = mc(2, tmp_path / "out", ck, kill="after-write:2")
    assert killed.returncode != 0
    state = json.loads(ck.read_text())
    assert state["n_iter"] == 2 and state["status"] == "running" and state["ranks"] == 2
    assert [p.name for p in tmp_path.glob("ck.json.*")] == ["ck.json.r2.npz"]
    shutil.copytree(tmp_path, tmp_path / "copy")     # the same checkpoint, for 1 rank
    resumed = mc(2, tmp_path / "out", ck)
    assert resumed.returncode == 0, resumed.stderr
    log = (tmp_path / "out" / "mme.log").read_text()
    assert ("resuming from checkpoint " + str(ck) + " after MC-REML round 2 (10 samples, "
            "written by 2 ranks)") in log
    assert "MC-REML round 3:" in log.split("resuming")[1]
    assert "MC-REML round 1:" not in log.split("resuming")[1]
    same_outputs(uninterrupted / "out", tmp_path / "out")
    final = json.loads(ck.read_text())
    assert final["status"] == "converged"
    assert final == {**json.loads((uninterrupted / "ck.json").read_text()),
                     "rounds": final["rounds"]}       # but the seconds of the rounds
    # the same command once more: the converged checkpoint only writes its results
    again = mc(2, tmp_path / "again", ck)
    assert again.returncode == 0, again.stderr
    assert "it had converged: writing its results" in \
        (tmp_path / "again" / "mme.log").read_text()
    same_outputs(uninterrupted / "out", tmp_path / "again")
    # another number of ranks: the checkpoint of 2 ranks resumed on 1
    one = mc(1, tmp_path / "copy" / "out", tmp_path / "copy" / "ck.json")
    assert one.returncode == 0, one.stderr
    assert "written by 2 ranks" in (tmp_path / "copy" / "out" / "mme.log").read_text()
    a = pd.read_csv(uninterrupted / "out" / "variance_components.csv")
    b = pd.read_csv(tmp_path / "copy" / "out" / "variance_components.csv")
    print("1 rank resumed vs 2 uninterrupted", (b["estimate"] / a["estimate"] - 1).abs().max())
    np.testing.assert_allclose(b["estimate"], a["estimate"], rtol=RTOL_RESUME_OTHER_RANKS)


@needs_mpi
@pytest.mark.slow
def test_mpi_job_terminated_mid_round_resumes_as_uninterrupted(tmp_path):
    """The scheduler's way: SIGTERM to every process of the job (mpiexec and the ranks)
    while a round runs, at whatever point the round is; rerun, the same results."""
    import os
    import signal
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from simulate_animal import simulate_animal
    ped, phen, _ = simulate_animal(4000, seed=3)
    ped.to_csv(tmp_path / "ped.csv", index=False)
    phen.to_csv(tmp_path / "data.csv", index=False)

    def cmd(out, ck=None):
        c = [_mpiexec(), "-n", "2", sys.executable, "-m", "mme", "fit",
             "y ~ sex + (1|herd) + (1|id)", "--data", str(tmp_path / "data.csv"),
             "--pedigree", str(tmp_path / "ped.csv"), "--relmat", "id", "--quiet",
             "--method", "MC-REML", "--samples", "6", "--max-iter", "4", "--out", str(out)]
        return c + (["--checkpoint", str(ck)] if ck else [])
    env = _subprocess_env()
    env.pop("MME_TEST_KILL", None)
    full = subprocess.run(cmd(tmp_path / "full"), capture_output=True, text=True, env=env,
                          timeout=JOB_TIMEOUT)
    assert full.returncode in (0, 2), full.stderr
    ck = tmp_path / "ck.json"
    job = subprocess.Popen(cmd(tmp_path / "out", ck), env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not ck.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(job.pid, signal.SIGTERM)        # round 2 is running
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    at = json.loads(ck.read_text())["n_iter"]
    print("terminated after round", at, "of 4; uninterrupted exit", full.returncode)
    assert at < 4
    resumed = subprocess.run(cmd(tmp_path / "out", ck), capture_output=True, text=True,
                             env=env, timeout=JOB_TIMEOUT)
    assert resumed.returncode == full.returncode, resumed.stderr
    assert f"after MC-REML round {at} " in (tmp_path / "out" / "mme.log").read_text()
    same_outputs(tmp_path / "full", tmp_path / "out")


@needs_mpi
@pytest.mark.slow
def test_mpi_killed_while_writing_leaves_the_previous_checkpoint(uninterrupted, tmp_path):
    """Killed with the 3rd JSON half written: the checkpoint is round 2's, whole, with its
    arrays; the half-written temporary file is never the checkpoint, and is removed."""
    ck = tmp_path / "ck.json"
    killed = mc(2, tmp_path / "out", ck, kill="in-write:3")
    assert killed.returncode != 0
    tmp = list(tmp_path.glob(".ck.json*.tmp"))
    assert len(tmp) == 1                              # the torn write, under another name
    with pytest.raises(json.JSONDecodeError):
        json.loads(tmp[0].read_text())
    state = json.loads(ck.read_text())
    assert state["n_iter"] == 2 and (tmp_path / state["arrays"]["file"]).exists()
    resumed = mc(2, tmp_path / "out", ck)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(tmp_path.glob(".ck.json*.tmp"))
    log = (tmp_path / "out" / "mme.log").read_text()
    assert "after MC-REML round 2" in log and "removed 1 temporary file(s)" in log
    same_outputs(uninterrupted / "out", tmp_path / "out")


@needs_mpi
@pytest.mark.slow
def test_mpi_blup_killed_at_iteration_20_resumes_to_the_pcg_tolerance(tmp_path):
    variances = ",".join(f"{k}={v:g}" for k, v in ANIMAL_VARIANCES.items())
    args = ["--variances", variances, "--checkpoint", str(tmp_path / "ck.json"),
            "--checkpoint-every", "0"]
    full = cli(2, "--variances", variances, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = cli(2, *args, "--out", str(tmp_path / "out"), kill="after-write:20")
    assert killed.returncode != 0
    state = json.loads((tmp_path / "ck.json").read_text())
    assert state["iteration"] == 20 and state["kind"] == "PCG (distributed)"
    resumed = cli(2, *args, "--out", str(tmp_path / "out"))
    assert resumed.returncode == 0, resumed.stderr
    log = (tmp_path / "out" / "mme.log").read_text()
    assert "resuming from checkpoint" in log and "at PCG iteration 20" in log
    assert "(20 of them before the checkpoint)" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        sorted(p.name for p in (tmp_path / "full").iterdir())
    n_iter = json.loads((tmp_path / "ck.json").read_text())["iteration"]
    assert f"PCG converged in {n_iter} iterations" in \
        (tmp_path / "out" / "summary.txt").read_text()
    assert n_iter > 20
    ped, df = _animal()
    fit = mme.fit(ANIMAL_FORMULA, df, relmat={"id": ped}, variances=ANIMAL_VARIANCES)
    worst = {}
    for d in ("full", "out"):
        fixed = pd.read_csv(tmp_path / d / "fixed_effects.csv", index_col=0)["estimate"]
        rand = pd.read_csv(tmp_path / d / "random_effects.csv", dtype={"level": str})
        worst[d] = _compare(fixed.to_dict(), rand, fit)      # test_mpi's RTOL_BLUP_MPI
    a = pd.read_csv(tmp_path / "full" / "random_effects.csv")["blup"]
    b = pd.read_csv(tmp_path / "out" / "random_effects.csv")["blup"]
    diff = float((a - b).abs().max() / a.abs().max())
    print("vs direct", worst, "resumed vs uninterrupted", diff)
    assert diff <= RTOL_RESUME_PCG


# -- refusals ---------------------------------------------------------------------------
@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("change, keys", [(("--samples", "12"), "samples"),
                                          (("--seed", "2"), "seed")])
def test_mpi_checkpoint_of_other_options_is_refused(uninterrupted, tmp_path, change, keys):
    shutil.copy(uninterrupted / "ck.json", tmp_path / "ck.json")
    args = ["--method", "MC-REML", "--samples", SAMPLES, "--seed", SEED,
            "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck.json")]
    i = args.index(change[0])
    args[i + 1] = change[1]
    proc = cli(2, *args)
    assert proc.returncode == 1
    line = error_line(proc)
    assert f"checkpoint {str(tmp_path / 'ck.json')!r} was written for another model or " \
           f"data ({keys} differ)" in line, line


@pytest.mark.slow
def test_single_machine_checkpoint_is_refused_by_mc_reml(tmp_path):
    proc = cli(None, "--out", str(tmp_path / "reml"), "--checkpoint", str(tmp_path / "ck.json"))
    assert proc.returncode == 0, proc.stderr
    proc = mc(None, tmp_path / "out", tmp_path / "ck.json")
    assert proc.returncode == 1
    line = error_line(proc)
    assert "was written for another model or data" in line
    for key in ("method", "samples", "seed", "solver"):
        assert key in line, line


@needs_mpi
@pytest.mark.slow
def test_mpi_corrupt_checkpoint_names_the_file(tmp_path):
    ck = tmp_path / "ck.json"
    ck.write_text('{"format": 1, "theta": [1, 2')          # torn by hand
    proc = mc(2, tmp_path / "out", ck)
    assert proc.returncode == 1
    line = error_line(proc)
    assert f"checkpoint {str(ck)!r} is not a checkpoint file" in line and "rank 0" in line


@pytest.mark.slow
def test_corrupt_checkpoint_arrays_name_the_file(tmp_path):
    """One process (MC-REML without mpiexec takes the same path, serial communicator)."""
    proc = mc(None, tmp_path / "first", tmp_path / "first.json")
    assert proc.returncode == 0, proc.stderr
    shutil.copy(tmp_path / "first.json", tmp_path / "ck.json")
    name = json.loads((tmp_path / "ck.json").read_text())["arrays"]["file"]
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) // 3])
    proc = mc(None, tmp_path / "out", tmp_path / "ck.json")
    assert proc.returncode == 1
    assert f"checkpoint arrays file {str(tmp_path / name)!r} cannot be read" in \
        error_line(proc)
    (tmp_path / name).unlink()
    proc = mc(None, tmp_path / "out", tmp_path / "ck.json")
    assert proc.returncode == 1
    assert f"its arrays file {str(tmp_path / name)!r} is missing" in error_line(proc)


def test_checkpoint_every_option(tmp_path, capsys):
    from mme.cli.main import _config, build_parser, main
    args = build_parser().parse_args(["fit", "y ~ 1", "--data", "d.csv",
                                      "--checkpoint-every", "30"])
    assert _config(args).checkpoint_every == 30.0
    assert main(["fit", "y ~ 1", "--data", "d.csv", "--checkpoint-every", "-1",
                 "--out", str(tmp_path)]) == 1
    assert "mme: error: checkpoint_every must be >= 0 seconds, got -1" in \
        capsys.readouterr().err
    toml = tmp_path / "m.toml"
    toml.write_text(f'[data]\nfiles = ["{RECORDS}"]\n[model]\nformula = "weight ~ sex"\n'
                    '[options]\ncheckpoint_every = 120\n')
    from mme.cli.params import load_params
    assert load_params(toml).checkpoint_every == 120.0
