"""The communicator of a distributed run: collectives with a deadline, agreement on
errors, and a serial stand-in that makes the same code the single-machine solver.

Every collective of :mod:`mme.distributed` goes through :class:`Communicator`:

* **Deadlines.** A collective is started non-blocking (``Iallreduce``,
  ``Iallgather``, ``Iallgatherv``) and polled until it completes or ``timeout``
  seconds pass. A rank that died or is stuck therefore cannot hang the others: they
  raise :class:`~mme.DistributedError` naming the operation ("no answer within 600 s
  in 'PCG iteration 17'") and, at the top level, abort the job.
* **Agreement on errors.** :meth:`Communicator.step` wraps a phase that may fail on
  one rank only (reading its slice of the records, building its rows of W): at the
  end of the phase every rank contributes "ok" or its error; if any rank failed,
  *every* rank raises the same :class:`~mme.DistributedError` with one line per
  failed rank ("rank 1: DataError: …"), so the ranks never disagree about which
  collective comes next. Inside the PCG iterations a failure flag travels in the
  iteration's one ``Allreduce`` (:meth:`Communicator.allreduce` with ``failed=``).
* **Same parameters.** :meth:`Communicator.check_same` refuses a run whose ranks
  were given different parameters (variances, tolerance, formula, …).

:class:`SerialComm` implements the few MPI calls used here for one process, so a
run without MPI (or ``mpiexec -n 1``) is the same code with a trivial reduction.

The PCG vectors are replicated on every rank and the ranks take their decisions
(convergence, step lengths) from reduced numbers. That needs ``Allreduce`` to give
bitwise the same result on every rank, which MPICH and Open MPI do for ``MPI_SUM``
on doubles (recursive doubling adds a + b = b + a exactly; the large-message
algorithm reduces each chunk once and broadcasts it); the deadline turns a
disagreement into an error instead of a hang.
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from contextlib import contextmanager

import numpy as np

from .._errors import DistributedError

__all__ = ["Communicator", "SerialComm", "world", "launched", "DEFAULT_TIMEOUT"]

#: environment variables by which MPI launchers (MPICH/Hydra and PMI, Open MPI, SLURM's
#: srun with PMI) tell a process its rank and the job's size, read without importing MPI
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")

#: seconds a collective may wait for the other ranks (MME_MPI_TIMEOUT overrides)
DEFAULT_TIMEOUT = 600.0

#: polling of a non-blocking collective: MPI advances a collective only inside MPI calls,
#: so it is tested without pause for _SPIN seconds (a blocking Allreduce spins too), then
#: with pauses from _POLL_FIRST up to _POLL_MAX (a rank waiting long for a slow one
#: leaves the CPU to others). Sleeping from the start made a 1.6 MB Allreduce 3.6x slower.
_SPIN = 0.5
_POLL_FIRST, _POLL_MAX = 2e-5, 2e-3


class _DoneRequest:
    """A request that is already complete (the serial stand-in's collectives)."""

    def Test(self) -> bool:
        return True

    def Cancel(self) -> None:
        pass


class SerialComm:
    """One process: the MPI calls :class:`Communicator` uses, without MPI."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def Iallreduce(self, sendbuf, recvbuf, op=None):
        np.copyto(recvbuf, sendbuf)
        return _DoneRequest()

    def Iallgather(self, sendbuf, recvbuf):
        np.copyto(np.asarray(recvbuf).reshape(np.shape(sendbuf)), sendbuf)
        return _DoneRequest()

    def Iallgatherv(self, sendbuf, recvspec):
        recvbuf = recvspec[0]
        recvbuf[:len(sendbuf)] = sendbuf
        return _DoneRequest()

    def Abort(self, code: int = 1) -> None:
        os._exit(code)


def world(timeout: float | None = None) -> "Communicator":
    """MPI's COMM_WORLD when mpi4py is installed and more than one rank runs, else the
    serial stand-in (one process)."""
    try:
        from mpi4py import MPI
    except ImportError:
        return Communicator(SerialComm(), timeout)
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return Communicator(SerialComm(), timeout)
    return Communicator(comm, timeout)


def launched() -> tuple[int, int]:
    """(rank, size) from the launcher's environment, (0, 1) outside mpiexec/srun."""
    size = next((os.environ[v] for v in _SIZE_VARS if os.environ.get(v)), "1")
    rank = next((os.environ[v] for v in _RANK_VARS if os.environ.get(v)), "0")
    try:
        return int(rank), int(size)
    except ValueError:
        return 0, 1


def _timeout_default() -> float:
    text = os.environ.get("MME_MPI_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise DistributedError(f"MME_MPI_TIMEOUT must be a number of seconds, got {text!r}")
    if not value > 0:
        raise DistributedError(f"MME_MPI_TIMEOUT must be > 0 seconds, got {text!r}")
    return value


class Communicator:
    """Collectives with a deadline and agreement on errors (see the module docstring).

    Parameters
    ----------
    comm : mpi4py communicator or SerialComm
    timeout : float, optional
        Seconds a collective may wait (default: ``MME_MPI_TIMEOUT`` or 600).
    """

    def __init__(self, comm=None, timeout: float | None = None):
        self.comm = SerialComm() if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        self.timeout = _timeout_default() if timeout is None else float(timeout)
        self.n_collectives = 0
        self.seconds_waiting = 0.0
        self._sum = None
        if not isinstance(self.comm, SerialComm):
            from mpi4py import MPI
            self._sum = MPI.SUM

    @property
    def is_serial(self) -> bool:
        return self.size == 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- waiting with a deadline ------------------------------------------------
    def _wait(self, req, what: str) -> None:
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        spin_until = t0 + _SPIN
        pause = _POLL_FIRST
        while not req.Test():
            now = time.perf_counter()
            if now < spin_until:
                continue            # MPI progresses a collective only inside its calls
            if now > deadline:
                raise DistributedError(
                    f"rank {self.rank}: no answer from the other ranks within "
                    f"{self.timeout:g} s in {what!r} (a rank died, is stuck, or took a "
                    "different path); set MME_MPI_TIMEOUT for longer steps")
            time.sleep(pause)
            pause = min(2 * pause, _POLL_MAX)
        self.n_collectives += 1
        self.seconds_waiting += time.perf_counter() - t0

    # -- collectives ------------------------------------------------------------
    def allreduce(self, local: np.ndarray, what: str, failed: BaseException | None = None
                  ) -> np.ndarray:
        """Σ over ranks of ``local`` (float64, any shape), one collective.

        ``failed``: this rank's exception if it could not compute ``local``; a flag
        travels with the sum and, if any rank failed, every rank raises the same
        DistributedError (after one more collective to share the reasons).
        """
        local = np.asarray(local, dtype=np.float64)
        send = np.empty(local.size + 1)
        send[:-1] = local.ravel()
        send[-1] = 1.0 if failed is not None else 0.0
        if failed is not None:
            send[:-1] = 0.0
        recv = np.empty_like(send)
        self._wait(self.comm.Iallreduce(send, recv, self._sum) if self._sum is not None
                   else self.comm.Iallreduce(send, recv), what)
        if recv[-1] != 0.0:
            self._raise_agreed(failed, what)
        return recv[:-1].reshape(local.shape)

    def allgather(self, obj, what: str) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                             dtype=np.uint8)
        sizes = np.empty(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(np.array([data.size], dtype=np.int64), sizes),
                   what + " (sizes)")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        recv = np.empty(int(sizes.sum()), dtype=np.uint8)
        if self.is_serial:
            req = self.comm.Iallgatherv(data, [recv, sizes, offsets])
        else:
            from mpi4py import MPI
            req = self.comm.Iallgatherv(data, [recv, sizes, offsets, MPI.BYTE])
        self._wait(req, what)
        return [pickle.loads(recv[o:o + s].tobytes()) for o, s in zip(offsets, sizes)]

    def bcast(self, obj, what: str, root: int = 0):
        """``obj`` of rank ``root`` on every rank (by allgather: small objects only)."""
        return self.allgather(obj if self.rank == root else None, what)[root]

    def bcast_array(self, arr: np.ndarray | None, shape: tuple, what: str,
                    root: int = 0) -> np.ndarray:
        """A float64 array of rank ``root`` on every rank (a sum with zeros elsewhere)."""
        local = np.zeros(shape) if self.rank != root else np.asarray(arr, dtype=np.float64)
        return self.allreduce(local, what)

    # -- agreement ----------------------------------------------------------------
    def _raise_agreed(self, failed: BaseException | None, what: str):
        reasons = self.allgather(None if failed is None else _describe(failed),
                                 f"sharing the errors of {what!r}")
        lines = [f"rank {r}: {msg}" for r, msg in enumerate(reasons) if msg is not None]
        raise DistributedError(f"{what} failed on {len(lines)} of {self.size} ranks: "
                               + "; ".join(lines)) from failed

    @contextmanager
    def step(self, what: str):
        """Run a phase that may fail on some ranks only; all ranks raise together.

        ``with comm.step("reading the records"): df = read_slice(...)``
        """
        failed = None
        try:
            yield
        except Exception as exc:      # noqa: BLE001 — every failure is shared
            failed = exc
        self.allreduce(np.zeros(0), what, failed=failed)

    def check_same(self, what: str, **params) -> None:
        """Refuse parameters that differ between ranks (names each one and its values)."""
        mine = {k: _canonical(v) for k, v in params.items()}
        every = self.allgather(mine, f"comparing {what}")
        differ = [k for k in mine if any(e.get(k) != mine[k] for e in every)]
        if differ:
            detail = "; ".join(
                f"{k!r}: " + ", ".join(f"rank {r} {e.get(k)}" for r, e in enumerate(every))
                for k in differ)
            raise DistributedError(f"{what}: parameters differ between ranks ({detail}); "
                                   "every rank must be given the same")

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (MPI_Abort); a serial run exits."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _canonical(value):
    """A comparable, printable form of a parameter (arrays → nested lists)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
