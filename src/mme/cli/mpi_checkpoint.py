"""Checkpoints of a distributed run (``--checkpoint FILE`` under ``mpiexec`` or with
``--method MC-REML``): resume a long job killed by a time limit where it stopped.

Two files, both written by rank 0 alone and atomically (``mme.cli.checkpoint``'s
temporary file + fsync + ``os.replace``):

* ``FILE`` — JSON in the format of the single-machine checkpoint (``format``,
  ``fingerprint``, ``theta``, ``rounds``, ``status``) plus ``kind`` and the state
  below; it names the arrays file it goes with;
* ``FILE.<tag>.npz`` beside it — the PCG solutions the state needs (float64, bit
  for bit). It is written first, under a name of its own (``r7`` after round 7,
  ``i120`` after PCG iteration 120), then the JSON that names it replaces the old
  JSON, and only then the previous arrays file is removed: a job killed at any
  moment leaves a JSON and the arrays file it names, of the same round.

**Monte-Carlo REML** (kind ``MC-REML (distributed)``) writes after every round: θ,
the rounds (the iteration log), the number of samples drawn (the draws are remade
from ``--seed``; ``n_samples`` says how many doublings), the last AI and Monte-Carlo
covariance, the stopping rule's verdict, and in the arrays the last round's PCG
solutions (data and samples, and the working variates), which start the next round's
PCG. With all that a resumed run takes the uninterrupted run's steps exactly: the
same draws, the same PCG starts, the same reductions (equal θ to round-off; with
another number of ranks the sums are added in another order, ~1e-12 relative).

**BLUP by PCG** (kind ``PCG (distributed)``) writes the iterate x every
``checkpoint_every`` seconds (``--checkpoint-every``, default 600; 0: every
iteration) and when the solve ends. A resumed solve restarts PCG from x with a
fresh residual b − Cx: simpler than saving the recursion (r, p, ρ and the
per-column state) and self-correcting (the true residual is recomputed), at the
price of the Krylov directions (a few more iterations than the uninterrupted run);
the solution meets the same tolerance, so it equals the uninterrupted one to the
PCG tolerance.

The fingerprint is the single-machine one (model options, each file's size and
SHA-256, records, equations, parameters) plus the ``solver`` (kind) and, for
MC-REML, ``samples`` and ``seed``, for BLUP the ``variances`` and PCG ``tol``.
The number of ranks is not in it: the draws and the PCG vectors do not depend on
how the rows are split, so a job may resume on another number of ranks (recorded
as ``ranks`` in the JSON and said in the log). ``max_iter`` is not in it either: a
run stopped by ``max_iter`` continues with a larger one. A checkpoint of another
model, data or options is refused with the keys that differ; an unreadable one
(JSON or arrays) with the file named.

``MME_TEST_KILL`` (tests only): ``after-write:N`` kills rank 0 (SIGKILL) after its
N-th checkpoint is written, ``in-write:N`` while the N-th JSON is half written.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .errors import InputError

#: the kinds of distributed checkpoint (the ``solver`` key of their fingerprint)
MCREML = "MC-REML (distributed)"
PCG = "PCG (distributed)"
#: seconds between two checkpoints of a PCG solve (``--checkpoint-every``): a job
#: killed by its time limit loses at most this much; writing x (8 bytes per equation:
#: 80 MB at 10M equations) takes well under a second
DEFAULT_EVERY = 600.0


def fingerprint(cfg, design, kind: str, **extra) -> dict:
    """What a distributed checkpoint must match (rank 0: it reads the files)."""
    fp = {**ckpt.model_keys(cfg), "n_records": int(design.n_total),
          "dim": int(design.dim), "k": len(design.blocks) + 1, "solver": kind, **extra}
    return json.loads(json.dumps(fp))   # as read back (tuples → lists, keys → str)


def arrays_path(path, tag: str) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.{tag}.npz")


class Writer:
    """Writes the checkpoints of one run (rank 0)."""

    def __init__(self, path, fp: dict, kind: str, ranks: int):
        self.path, self.fp, self.kind, self.ranks = Path(path), fp, kind, ranks
        self.n_written = 0
        # temporary files of a writer killed mid-write (never renamed: not a checkpoint)
        self.stale = glob.glob(os.path.join(glob.escape(str(self.path.parent)),
                                            glob.escape("." + self.path.name) + "*.tmp"))
        for old in self.stale:
            Path(old).unlink(missing_ok=True)

    def save(self, tag: str, state: dict, arrays: dict) -> None:
        """The arrays under ``tag``, then the JSON naming them, then drop older arrays."""
        arr = arrays_path(self.path, tag)
        ckpt.atomic_write(arr, lambda fh: np.savez(fh, tag=np.array(tag), **arrays))
        doc = {"format": ckpt.FORMAT, "kind": self.kind, "fingerprint": self.fp,
               "theta": None, "rounds": [], "status": "running", **state,
               "ranks": self.ranks,
               "arrays": {"file": arr.name, "bytes": arr.stat().st_size, "tag": tag,
                          "shapes": {k: list(np.shape(v)) for k, v in arrays.items()}}}
        self.n_written += 1
        text = json.dumps(doc, indent=1).encode("utf-8")
        kill = _test_kill()

        def write(fh):
            if kill == ("in-write", self.n_written):
                fh.write(text[:len(text) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            fh.write(text)
        ckpt.atomic_write(self.path, write)
        for old in glob.glob(glob.escape(str(self.path)) + ".*.npz"):
            if Path(old) != arr:
                Path(old).unlink(missing_ok=True)
        if kill == ("after-write", self.n_written):
            os.kill(os.getpid(), signal.SIGKILL)


def _test_kill():
    text = os.environ.get("MME_TEST_KILL")
    if not text:
        return None
    where, _, n = text.partition(":")
    return where, int(n)


def load(path, fp: dict) -> tuple[dict, dict] | None:
    """(state, arrays) of the checkpoint at ``path`` if it exists and matches ``fp``
    (rank 0); refuses one of another model or options, or an unreadable one."""
    path = Path(path)
    state = ckpt.load(path)
    if state is None:
        return None
    ckpt.check(state, fp, path)
    info = state.get("arrays")
    if not isinstance(info, dict) or "file" not in info:
        raise InputError(f"checkpoint {str(path)!r} names no arrays file; remove it or "
                         "choose another --checkpoint")
    arr = path.with_name(info["file"])
    if not arr.exists():
        raise InputError(f"checkpoint {str(path)!r}: its arrays file {str(arr)!r} is "
                         "missing; remove the checkpoint or choose another --checkpoint")
    try:
        with np.load(arr, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"checkpoint arrays file {str(arr)!r} cannot be read ({exc}); "
                         "remove it and the checkpoint, or choose another "
                         "--checkpoint") from None
    tag = str(arrays.pop("tag", ""))
    shapes = {k: tuple(v) for k, v in info.get("shapes", {}).items()}
    if tag != info.get("tag") or {k: v.shape for k, v in arrays.items()} != shapes:
        raise InputError(f"checkpoint arrays file {str(arr)!r} does not go with "
                         f"{str(path)!r} (tag or shapes differ); remove both or choose "
                         "another --checkpoint")
    return state, arrays


def share(comm, path, fp: dict | None) -> tuple[dict, dict] | None:
    """Rank 0 reads the checkpoint (``fp`` given there), every rank gets it (collective)."""
    found = None
    with comm.step("reading the checkpoint"):
        if comm.is_root:
            found = load(path, fp)
    head = comm.bcast(None if found is None else
                      (found[0], {k: v.shape for k, v in found[1].items()}),
                      "sharing the checkpoint")
    if head is None:
        return None
    state, shapes = head
    arrays = {k: comm.bcast_array(found[1][k] if comm.is_root else None, shape,
                                  f"sharing the checkpoint's {k}")
              for k, shape in sorted(shapes.items())}
    return state, arrays


# -- Monte-Carlo REML -----------------------------------------------------------------
def mcreml_state(state: dict, arrays: dict):
    """The ``MCREMLState`` of a checkpoint."""
    from ..distributed.mcreml import MCREMLState
    return MCREMLState(theta=np.array(state["theta"], dtype=float),
                       n_iter=int(state["n_iter"]), n_samples=int(state["n_samples"]),
                       history=list(state["rounds"]), converged=bool(state["converged"]),
                       pcg_iterations=int(state["pcg_iterations"]),
                       ai=np.array(state["ai"], dtype=float),
                       mc_cov=np.array(state["mc_cov"], dtype=float),
                       X=arrays["X"], S=arrays["S"])


def save_mcreml(writer: Writer, st) -> None:
    """After a round: the state of ``st`` (an ``MCREMLState``)."""
    status = "converged" if st.converged else "running"
    writer.save(f"r{st.n_iter}", {
        "theta": [float(t) for t in st.theta], "rounds": st.history, "status": status,
        "n_iter": int(st.n_iter), "n_samples": int(st.n_samples),
        "converged": bool(st.converged), "pcg_iterations": int(st.pcg_iterations),
        "ai": np.asarray(st.ai).tolist(), "mc_cov": np.asarray(st.mc_cov).tolist()},
        {"X": st.X, "S": st.S})


# -- PCG --------------------------------------------------------------------------------
class PCGSnapshots:
    """``snapshot(iteration, X)`` for ``solve_distributed``: x every ``every`` seconds
    (rank 0 writes; the others do nothing), numbered on from a resumed iteration."""

    def __init__(self, writer: Writer | None, every: float, offset: int = 0):
        self.writer, self.every, self.offset = writer, float(every), int(offset)
        self.last = time.monotonic()

    def __call__(self, it: int, X) -> None:
        if self.writer is None or time.monotonic() - self.last < self.every:
            return
        try:
            self.write(it, X[:, 0], "running")
        except OSError as exc:      # rank 0 alone: warn and solve on (no collective here)
            import warnings
            warnings.warn(f"checkpoint {str(self.writer.path)!r} could not be written at "
                          f"PCG iteration {self.offset + it} ({exc}); no more checkpoints "
                          "of this solve", RuntimeWarning, stacklevel=2)
            self.writer = None

    def write(self, it: int, x, status: str) -> None:
        if self.writer is None:
            return
        n = self.offset + int(it)
        self.writer.save(f"i{n}", {"iteration": n, "status": status}, {"x": np.asarray(x)})
        self.last = time.monotonic()
