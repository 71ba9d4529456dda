"""Preconditioned conjugate gradients for several right-hand sides at once, one
Allreduce per iteration.

The k right-hand sides (the data, Monte-Carlo samples, working variates) run k
independent CG recurrences in lockstep (each column its own step lengths α, β):
the products C·P of every active column go through one Allreduce of a dim × k
block, so the number of collectives per iteration is one whatever k is. A column
stops when its recursive residual ‖b − Cx‖/‖b‖ falls to ``tol``; its true residual
is then checked with a product of x carried in the next iteration's Allreduce
(still one per iteration), and the column restarts from x if they disagree.

The vectors are replicated on every rank (dim × k doubles each), and every rank
takes the same decisions from the same reduced numbers (see ``comm``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BlockPCGResult", "block_pcg"]

#: restarts from x allowed per column when the true residual disagrees with the recursive one
MAX_RESTARTS = 5


@dataclass
class BlockPCGResult:
    """Solutions X (dim × k) and how they were reached."""

    X: np.ndarray = field(repr=False)
    n_iter: int
    rel_residual: np.ndarray        # true relative residual per column
    converged: np.ndarray           # per column
    history: np.ndarray = field(repr=False)   # largest recursive residual of the active columns
    seconds: float = 0.0
    n_reduce: int = 0


def _cdot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Column-wise A'B (numpy's loop: no BLAS thread wake-ups on small machines)."""
    return np.einsum("ij,ij->j", A, B)


def block_pcg(matvec, B: np.ndarray, precond, tol: float = 1e-8, max_iter: int = 5000,
              X0: np.ndarray | None = None, callback=None, snapshot=None
              ) -> BlockPCGResult:
    """Solve C X = B (B: dim × k) by k lockstep PCG recurrences.

    ``matvec(V)`` returns C V for V of shape dim × m (one collective); ``precond(R)``
    returns M⁻¹R. ``callback(iteration, rel)`` is called after each iteration with the
    recursive relative residuals of all columns. ``snapshot(iteration, X)`` is called
    after each iteration with the current iterates (a checkpoint writer: ``X`` is the
    solver's own array, to be copied or written, not kept); a run restarted with
    ``X0=X`` continues from there with a fresh residual.
    """
    t0 = time.perf_counter()
    B = np.asarray(B, dtype=float)
    if B.ndim == 1:
        B = B[:, None]
    dim, k = B.shape
    bnorm = np.sqrt(_cdot(B, B))
    X = np.zeros((dim, k)) if X0 is None else np.array(X0, dtype=float).reshape(dim, k)
    n_reduce = 0
    if X0 is not None:
        R = B - matvec(X)
        n_reduce += 1
    else:
        R = B.copy()
    safe = np.where(bnorm > 0, bnorm, 1.0)
    rel = np.sqrt(_cdot(R, R)) / safe
    rel[bnorm == 0] = 0.0
    if X0 is None:
        X[:, bnorm == 0] = 0.0
    Z = precond(R)
    P = Z.copy()
    rz = _cdot(R, Z)
    active = rel > tol            # iterating
    verify = np.zeros(k, dtype=bool)   # waiting for the true residual of X
    done = ~active                # converged (true residual ≤ tol) or given up
    restarts = np.zeros(k, dtype=int)
    hist = []
    it = 0
    while (active.any() or verify.any()) and it < max_iter:
        a = np.flatnonzero(active)
        v = np.flatnonzero(verify)
        V = (np.concatenate([P[:, a], X[:, v]], axis=1) if v.size
             else (P if a.size == k else P[:, a]))
        CV = matvec(V)
        n_reduce += 1
        if v.size:
            Rv = B[:, v] - CV[:, a.size:]
            relv = np.sqrt(_cdot(Rv, Rv)) / safe[v]
            ok = (relv <= tol) | (restarts[v] >= MAX_RESTARTS)
            rel[v] = relv
            verify[v] = False
            done[v[ok]] = True
            again = v[~ok]
            if again.size:          # restart these columns from X
                restarts[again] += 1
                R[:, again] = Rv[:, ~ok]
                Zr = precond(R[:, again])
                P[:, again] = Zr
                rz[again] = _cdot(R[:, again], Zr)
                active[again] = True
        if a.size:
            # every column active: views, updated in place (no copies of dim × k blocks)
            sel = slice(None) if a.size == k else a
            Q = CV[:, :a.size]
            Pa = P[:, sel]
            pq = _cdot(Pa, Q)
            if np.any(pq <= 0.0):
                from .._errors import DataError
                raise DataError("the MME are not positive definite (p'Cp ≤ 0 in PCG)")
            alpha = rz[a] / pq
            if a.size == k:
                X += Pa * alpha
                Q *= alpha
                R -= Q
                Ra = R
            else:
                X[:, a] += Pa * alpha
                Ra = R[:, a] - Q * alpha
                R[:, a] = Ra
            rel[a] = np.sqrt(_cdot(Ra, Ra)) / safe[a]
            it += 1
            hist.append(float(rel[a].max()))
            small = rel[a] <= tol
            verify[a[small]] = True
            active[a[small]] = False
            go = a[~small]
            if go.size == k:
                Zg = precond(R)
                rz_new = _cdot(R, Zg)
                beta = rz_new / rz
                rz[:] = rz_new
                P *= beta
                P += Zg
            elif go.size:
                Zg = precond(R[:, go])
                rz_new = _cdot(R[:, go], Zg)
                beta = rz_new / rz[go]
                rz[go] = rz_new
                P[:, go] = Zg + P[:, go] * beta
        if callback is not None:
            callback(it, rel.copy())
        if snapshot is not None:
            snapshot(it, X)
    if verify.any():                # max_iter reached with columns waiting for their check
        v = np.flatnonzero(verify)
        Rv = B[:, v] - matvec(X[:, v])
        n_reduce += 1
        rel[v] = np.sqrt(_cdot(Rv, Rv)) / safe[v]
        done[v] = True
    converged = done & (rel <= tol)
    return BlockPCGResult(X=X, n_iter=it, rel_residual=rel, converged=converged,
                          history=np.asarray(hist), seconds=time.perf_counter() - t0,
                          n_reduce=n_reduce)
