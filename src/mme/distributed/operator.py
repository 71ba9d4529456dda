"""The distributed coefficient matrix of the MME: C V summed over ranks in one Allreduce.

    C V = Σ_r W_r' R_r⁻¹ W_r V  +  G⁻¹ V,      rhs = Σ_r W_r' R_r⁻¹ y_r

R_r⁻¹ is the block of R⁻¹ of rank r's records (block-diagonal over rows of wide
data, which no rank splits: :mod:`mme.distributed.residual`); with R = σ²ₑI it is
the scalar 1/σ²ₑ and no matrix is formed.

Each rank multiplies by its own rows of W (iteration on data: C is never formed,
Schaeffer & Kennedy 1986; the distributed form of BLUPF90's and MiX99's solvers),
G⁻¹V = (⊕ₖ G₀ₖ⁻¹ ⊗ Kₖ⁻¹) V is added either by the owner rank (rank 0, which alone
holds the relationship matrices: ``ginv="root"``) or by every rank for its share of
G⁻¹'s rows (contiguous row blocks of about equal nonzeros: ``ginv="split"``, when
every rank holds the sources of K⁻¹), and one ``Allreduce`` of a dim × k block sums
the parts: one collective per product, whatever the number of right-hand sides k.
With "root", rank 0 multiplies by W_0 *and* all of G⁻¹ (A⁻¹ has ~5–7 nonzeros per
animal, more than a record's row of W'W), so the others wait for it; "split"
balances the work.

**G⁻¹ by rows.** A rank builds only its rows of G⁻¹, never the whole: the cuts come
from each row's nonzeros (or an upper bound: ``Pedigree.ainverse_row_nnz``, counted
without building anything), the same on every rank (checked); then for each term k
and each of its d columns t whose rows (offset + t·L + l, term-major) meet the
rank's range, the rows l of Kₖ⁻¹ in it are made (a pedigree's by
``Pedigree.ainverse_rows``, :mod:`mme.distributed.kinv`) and scaled by the row t of
G₀ₖ⁻¹ into the columns of the d blocks. A range may start or end anywhere: in the
fixed effects' (zero) rows, inside a term, across terms. diag(C) takes diag(G⁻¹)
from the rank's own rows; the preconditioner's d × d blocks take diag(Kₖ⁻¹) from the
source (``kinv_diagonal``).
"""
from __future__ import annotations

import time

import numpy as np

import scipy.sparse as sp

from .._errors import OptionError
from .comm import Communicator
from .design import LocalDesign

__all__ = ["DistributedOperator", "ginv_row_nnz", "ginv_row_parts", "ginv_rows", "row_cuts"]


def ginv_row_nnz(design: LocalDesign, sources, G0invs) -> np.ndarray:
    """Nonzeros (or an upper bound) of each row of G⁻¹, without building it."""
    parts = [np.zeros(design.p, dtype=np.int64)]
    for b, src, Gi in zip(design.blocks, sources, G0invs):
        nz = src.row_nnz()
        for t in range(b.d):
            parts.append(nz * int(np.count_nonzero(Gi[t])))
    return np.concatenate(parts)


def row_cuts(row_nnz: np.ndarray, size: int) -> np.ndarray:
    """size + 1 row boundaries: contiguous blocks of about equal nonzeros."""
    ptr = np.zeros(len(row_nnz) + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=ptr[1:])
    cuts = np.searchsorted(ptr, np.linspace(0, ptr[-1], size + 1))
    cuts[0], cuts[-1] = 0, len(row_nnz)
    return np.maximum.accumulate(cuts)


def _scaled_rows(K: sp.csr_matrix, g: np.ndarray, off: int, dim: int) -> sp.csr_matrix:
    """Rows (t, l) of G₀⁻¹ ⊗ K⁻¹ from the rows l of K⁻¹ (K, a fresh matrix, reused) and
    the row t of G₀⁻¹ (g): the blocks g[s]·K⁻¹[l, :] side by side from column ``off``
    (s with g[s] = 0 left out, as ``scipy.sparse.kron`` of G₀⁻¹'s sparse form)."""
    m, L = K.shape
    nz = np.flatnonzero(g)
    big = dim >= np.iinfo(np.int32).max or len(nz) * K.nnz >= np.iinfo(np.int32).max
    itype = np.int64 if big else np.int32
    if len(nz) == 1:               # one block (d = 1, or G₀⁻¹ diagonal): scale in place
        s = int(nz[0])
        K.data *= g[s]
        H, shift = K, off + s * L
    else:
        H = sp.hstack([K * float(g[s]) if g[s] != 0 else sp.csr_matrix((m, L))
                       for s in range(len(g))], format="csr")
        shift = off
    del K
    indices = H.indices.astype(itype, copy=False)
    if indices is H.indices:
        indices += shift            # H is this function's own: shift in place
    else:
        indices = indices + shift
    return sp.csr_matrix((H.data, indices, H.indptr.astype(itype, copy=False)), shape=(m, dim))


def ginv_row_parts(design: LocalDesign, sources, G0invs, a: int, b: int) -> list:
    """Rows a … b−1 of G⁻¹ = blockdiag(0ₚ, G₀ₖ⁻¹ ⊗ Kₖ⁻¹) as parts (r0, k, P): P (CSR,
    m × dim) holds rows r0 … r0+m−1, all in block k and one column t of it; made from
    the rows of Kₖ⁻¹ they need only. The fixed effects' rows (zero) have no part."""
    dim = design.dim
    parts = []
    off = design.p
    for k, (blk, src, Gi) in enumerate(zip(design.blocks, sources, G0invs)):
        L = blk.n_levels
        for t in range(blk.d):
            r0 = off + t * L
            lo, hi = max(a, r0), min(b, r0 + L)
            if lo < hi:
                parts.append((lo, k, _scaled_rows(src.rows(lo - r0, hi - r0),
                                                  np.asarray(Gi[t]), off, dim)))
        off += blk.q
    return parts


def stack_parts(parts: list, a: int, b: int, dim: int) -> sp.csr_matrix:
    """The rows a … b−1 of G⁻¹ as one CSR ((b − a) × dim) from ``ginv_row_parts``."""
    pieces, at = [], a
    for r0, _, P in parts:
        if r0 > at:
            pieces.append(sp.csr_matrix((r0 - at, dim)))
        pieces.append(P)
        at = r0 + P.shape[0]
    if b > at:
        pieces.append(sp.csr_matrix((b - at, dim)))
    if not pieces:
        return sp.csr_matrix((0, dim))
    return pieces[0] if len(pieces) == 1 else sp.vstack(pieces, format="csr")


def ginv_rows(design: LocalDesign, sources, G0invs, a: int, b: int) -> sp.csr_matrix:
    """Rows a … b−1 of G⁻¹ = blockdiag(0ₚ, G₀ₖ⁻¹ ⊗ Kₖ⁻¹), built from the rows of the
    Kₖ⁻¹ they need only ((b − a) × dim, CSR)."""
    return stack_parts(ginv_row_parts(design, sources, G0invs, a, b), a, b, design.dim)


class DistributedOperator:
    """C·V, the right-hand sides and diag(C) of the MME, from a rank's rows.

    Parameters
    ----------
    design : LocalDesign
    G0s : list of d × d arrays, one per random term
    sigma2_e : float
        σ²ₑ of R = σ²ₑI; with a structured residual or weights, R₀ is given as ``R0``.
    comm : Communicator
    R0 : t × t array, optional
        The residual covariance of ``design.residual`` (scalar σ²ₑ with weights, the
        variances of ``by()``/``diag()``, the traits' R₀ of ``us(trait)``).
    """

    def __init__(self, design: LocalDesign, G0s: list, sigma2_e: float, comm: Communicator,
                 ginv: str = "auto", R0: np.ndarray | None = None):
        self.design, self.comm = design, comm
        self.s2e = float(sigma2_e)
        self.p, self.dim = design.p, design.dim
        self.W = design.W
        #: W' as the CSC view of W's arrays (no copy: at 5·10⁶ records a CSR copy held
        #: ~270 MB per rank, with a row pointer over all dim equations; W'u by columns
        #: was as fast or faster: 78 vs 116 ms at 5·10⁶ records and k = 1, 173 vs 234 ms
        #: at 10⁶ records and k = 20)
        self.WT = design.W.T
        #: this rank's block of R⁻¹ (None: R = σ²ₑI, applied as 1/σ²ₑ)
        self.Rinv = None
        if not design.residual.is_scalar:
            with comm.step("R⁻¹ of this rank's records"):
                self.Rinv = design.residual.rinv(
                    np.atleast_2d(self.s2e) if R0 is None else R0, design.n)
        self.G0inv = [np.linalg.inv(G0) for G0 in G0s]
        self.owner = comm.rank == 0
        #: per block, the source of K⁻¹'s rows (None on a rank without it)
        self.sources = design.kinv_sources()
        with comm.step("G⁻¹"):
            have = all(src is not None for src in self.sources)
            if ginv == "auto":
                ginv = "split"
            if ginv not in ("split", "root"):
                raise OptionError(f"ginv must be 'split', 'root' or 'auto', got {ginv!r}")
        every = comm.allgather(have, "which ranks hold K⁻¹")
        if ginv == "split" and not all(every):
            ginv = "root"                  # K⁻¹ on rank 0 only: it applies G⁻¹
        self.ginv = ginv
        self.rows = slice(0, self.dim)     # G⁻¹'s rows this rank multiplies by
        #: those rows as parts (r0, block, CSR), one per term column they meet: the
        #: products go part by part, so the rows are never copied into one matrix
        self.parts = []
        cuts = None
        with comm.step("G⁻¹"):
            if ginv == "root":
                if self.owner:
                    self.parts = ginv_row_parts(design, self.sources, self.G0inv, 0, self.dim)
                else:
                    self.rows = slice(0, 0)
            else:
                cuts = row_cuts(ginv_row_nnz(design, self.sources, self.G0inv), comm.size)
        if cuts is not None:
            comm.check_same("the rows of G⁻¹ per rank (from the relationship matrices)",
                            cuts=[int(c) for c in cuts])
            with comm.step("G⁻¹ (this rank's rows)"):
                a, b = int(cuts[comm.rank]), int(cuts[comm.rank + 1])
                self.rows = slice(a, b)
                self.parts = ginv_row_parts(design, self.sources, self.G0inv, a, b)
        with comm.step("diag(C)"):
            if self.Rinv is None:      # no scaled copy of W (memory at 10⁷ records)
                local = np.asarray(self.W.multiply(self.W).sum(axis=0)).ravel() / self.s2e
            else:
                local = np.asarray(self.W.multiply(self.Rinv @ self.W).sum(axis=0)).ravel()
            for r0, _, P in self.parts:
                local[r0:r0 + P.shape[0]] += P.diagonal(k=r0)
        self.diag = comm.allreduce(local, "diag(C)")
        self.n_products = 0
        self.seconds_local = 0.0      # this rank's W'W V and G⁻¹V
        self.seconds_reduce = 0.0     # the Allreduce (with waiting for the slowest rank)

    def kinv_diagonal(self, k: int) -> np.ndarray:
        """diag(K⁻¹) of block k (from its source; ones for K = I)."""
        src = self.sources[k]
        if src is None:
            raise OptionError(f"rank {self.comm.rank} holds no K⁻¹ of "
                              f"{self.design.blocks[k].group!r}")
        return src.diagonal()

    def ginv_quadratic(self, k: int, X: np.ndarray) -> np.ndarray:
        """This rank's part of Xₖ'(G₀ₖ⁻¹ ⊗ Kₖ⁻¹)Xₖ per column of X (dim × c), Xₖ the
        rows of block k: the sum over ranks (one Allreduce) is the whole form."""
        X = np.asarray(X)
        X2 = X if X.ndim == 2 else X[:, None]
        out = np.zeros(X2.shape[1])
        for r0, kk, P in self.parts:
            if kk == k:
                out += np.einsum("ij,ij->j", X2[r0:r0 + P.shape[0]], P @ X2)
        return out

    @property
    def Ginv(self):
        """This rank's rows of G⁻¹ as one CSR (len(rows) × dim; None on a rank without
        any): a copy for inspection, the products use ``parts``."""
        if self.rows.stop <= self.rows.start:
            return None
        return stack_parts(self.parts, self.rows.start, self.rows.stop, self.dim)

    def rinv(self, A):
        """R_r⁻¹ A for this rank's rows A (dense, or sparse: then sparse)."""
        if self.Rinv is None:
            return A * (1.0 / self.s2e)
        return self.Rinv @ A

    def local_product(self, V: np.ndarray) -> np.ndarray:
        """This rank's part of C V (V: dim or dim × k)."""
        if self.Rinv is None:
            out = self.WT @ (self.W @ V)
            out *= 1.0 / self.s2e
        else:
            out = self.WT @ (self.Rinv @ (self.W @ V))
        for r0, _, P in self.parts:
            out[r0:r0 + P.shape[0]] += P @ V
        return out

    def matvec(self, V: np.ndarray, what: str = "C·V") -> np.ndarray:
        """C V on every rank (one Allreduce; a rank's failure is shared, not hung on)."""
        failed, local = None, None
        t0 = time.perf_counter()
        try:
            local = self.local_product(V)
        except Exception as exc:        # noqa: BLE001 — shared with the other ranks
            failed = exc
            local = np.zeros(V.shape)
        t1 = time.perf_counter()
        out = self.comm.allreduce(local, what, failed=failed)
        self.n_products += 1
        self.seconds_local += t1 - t0
        self.seconds_reduce += time.perf_counter() - t1
        return out

    def rhs(self, Y: np.ndarray, what: str = "right-hand sides") -> np.ndarray:
        """Σ_r W_r' R_r⁻¹ Y_r for this rank's rows Y_r (n_r or n_r × k)."""
        failed, local = None, None
        shape = (self.dim,) + np.shape(Y)[1:]
        try:
            if self.Rinv is None:      # scale the dim × k result, not the n_r × k Y
                local = np.asarray(self.WT @ Y, dtype=float).reshape(shape) / self.s2e
            else:
                local = np.asarray(self.WT @ (self.Rinv @ np.asarray(Y, dtype=float)),
                                   dtype=float).reshape(shape)
        except Exception as exc:        # noqa: BLE001
            failed, local = exc, np.zeros(shape)
        return self.comm.allreduce(local, what, failed=failed)

    def residuals(self, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """This rank's Y_r − W_r X (records × k)."""
        return Y - self.W @ X

    @property
    def nnz_local(self) -> int:
        """Nonzeros this rank multiplies by per product (W, W' and its rows of G⁻¹)."""
        return int(2 * self.W.nnz + sum(P.nnz for _, _, P in self.parts)
                   + (self.Rinv.nnz if self.Rinv is not None else 0))
