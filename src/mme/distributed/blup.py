"""BLUE and BLUP at known variances with the records split over MPI ranks.

    res = blup_distributed("y ~ sex + (1|herd) + (1|id)", my_rows,
                           {"herd": 0.2, "id": 0.4, "Residual": 0.6},
                           relmat={"id": ped})

Every rank calls it with its own rows (``partition.read_slice``, or rows it made);
the result — the same on every rank — is an ``mme.engine.pcg.PCGResult`` with the
fixed and random effects in the layout of ``mme.fit(..., variances=...)``, plus the
partition and the time per iteration. Without MPI (or with one rank) it is the
single-machine solver: the same code with the serial communicator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import ConvergenceWarning
from ..engine.pcg import PCGResult, _tables
from ..model.covariance import parse_variances
from .comm import Communicator, world
from .design import LocalDesign, build_local_design
from .operator import DistributedOperator
from .partition import RowPartition
from .pcg import block_pcg
from .preconditioner import BlockPreconditioner

__all__ = ["DistributedResult", "blup_distributed", "solve_distributed"]


@dataclass
class DistributedResult(PCGResult):
    """A PCGResult with the distribution facts.

    ``partition`` (rows per rank), ``ranks``, ``seconds_per_iteration``; ``seconds``
    splits the solve into ``local_products`` (this rank's W'W V, G⁻¹V),
    ``allreduce`` (including waiting for the slowest rank) and ``vector_updates``;
    ``n_reduce`` (Allreduce calls of the iterations), ``nnz_local`` (nonzeros this
    rank multiplies by per iteration).
    """

    partition: RowPartition = None
    ranks: int = 1
    seconds_per_iteration: float = np.nan
    n_reduce: int = 0
    nnz_local: int = 0


def blup_distributed(formula: str, data: pd.DataFrame, variances: dict,
                     relmat: dict | None = None, comm: Communicator | None = None,
                     residual: str | None = None, weights: str | None = None,
                     **kw) -> DistributedResult:
    """BLUE/BLUP at known variances, this rank holding the records ``data``.

    Collective: every rank calls it with its rows and the same formula, variances
    and options (a difference is refused). ``residual`` and ``weights`` are those of
    ``mme.fit`` (``"by(site)"``, ``"us(trait)"``/``"diag(trait)"`` with a cbind()
    formula, a column of prior weights; not ``ar1(col):ar1(row)``); a multi-trait
    model takes wide data, one row per animal or record with its traits, and
    ``variances={"id": G0, "Residual": R0}`` with t × t matrices. Keywords go to
    :func:`solve_distributed`; with ``ginv="root"`` only rank 0 builds G⁻¹, all of it
    (rank 0 does the G⁻¹ products alone), by default every rank builds only its share
    of G⁻¹'s rows (a pedigree's A⁻¹ by rows, ``Pedigree.ainverse_rows``: no rank holds
    it whole).
    """
    comm = world() if comm is None else comm
    t0 = time.perf_counter()
    design = build_local_design(formula, data, comm, relmat,
                                kinv="root" if kw.get("ginv") == "root" else "all",
                                residual=residual, weights=weights)
    t1 = time.perf_counter()
    res = solve_distributed(design, variances, comm, **kw)
    res.seconds = {"design": t1 - t0, **res.seconds}
    return res


def solve_distributed(design: LocalDesign, variances: dict, comm: Communicator,
                      tol: float = 1e-8, max_iter: int = 5000, preconditioner: str = "block",
                      warn: bool = True, ginv: str = "auto", x0: np.ndarray | None = None,
                      snapshot=None) -> DistributedResult:
    """Solve the MME of a distributed design at known variances by PCG.

    Parameters
    ----------
    design : LocalDesign
    variances : dict
        As ``mme.fit(variances=...)``: ``{"id": 30, "Residual": 60}``; t × t matrices
        for a multi-trait model's terms and its ``us(trait)`` residual, the t
        variances of a ``by()``/``diag()`` residual.
    comm : Communicator
    tol : float
        Stop when ‖rhs − C x‖ / ‖rhs‖ ≤ tol (true residual).
    max_iter : int
    preconditioner : "block" (default) or "jacobi"
    ginv : "auto", "split" or "root"
        Who multiplies by G⁻¹: every rank its share of the rows ("split", when every
        rank holds K⁻¹; "auto" chooses it then) or rank 0 alone ("root").
    x0 : array, optional
        Starting solution (a checkpoint's iterate; the same on every rank).
    snapshot : callable, optional
        ``snapshot(iteration, X)`` after every PCG iteration (see ``block_pcg``).
    """
    comm.check_same("the solver's parameters", variances=variances, tol=float(tol),
                    max_iter=int(max_iter), preconditioner=preconditioner, ginv=ginv)
    t0 = time.perf_counter()
    with comm.step("reading the variances"):
        G0s, R0 = parse_variances(design.blocks, variances, design.residual)
    op = DistributedOperator(design, G0s, float(R0[0, 0]), comm, ginv=ginv, R0=R0)
    with comm.step("building the preconditioner"):
        M = BlockPreconditioner(op, preconditioner)
    rhs = op.rhs(design.y, "W'y")
    t1 = time.perf_counter()
    l0, r0 = op.seconds_local, op.seconds_reduce
    r = block_pcg(op.matvec, rhs, M, tol=tol, max_iter=max_iter, X0=x0, snapshot=snapshot)
    t2 = time.perf_counter()
    local, reduce = op.seconds_local - l0, op.seconds_reduce - r0
    x = r.X[:, 0]
    nnz_local = op.nnz_local
    del op, M, rhs      # G⁻¹'s rows, diag(C), M: freed before the result tables are made
    if not r.converged[0] and warn and comm.is_root:
        import warnings
        warnings.warn(f"PCG did not reach a relative residual of {tol:g} in {r.n_iter} "
                      f"iterations (reached {r.rel_residual[0]:.3g})", ConvergenceWarning,
                      stacklevel=2)
    fixed, rand, sol = _tables(design, x)
    return DistributedResult(
        fixed_effects=fixed, random_effects=rand, solutions=sol, solution=x,
        n_iter=r.n_iter, rel_residual=float(r.rel_residual[0]),
        converged=bool(r.converged[0]), residual_history=r.history,
        seconds={"setup": t1 - t0, "solve": t2 - t1, "local_products": local,
                 "allreduce": reduce, "vector_updates": t2 - t1 - local - reduce},
        preconditioner=preconditioner,
        operator="data (distributed)",
        variances={k: (np.asarray(v).tolist() if np.ndim(v) else float(v))
                   for k, v in variances.items()},
        partition=design.partition, ranks=comm.size,
        seconds_per_iteration=(t2 - t1) / max(r.n_iter, 1), n_reduce=r.n_reduce,
        nnz_local=nnz_local)
