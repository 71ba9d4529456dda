"""A random term's K⁻¹ as the distributed operator reads it: by rows, never whole.

The operator (:mod:`mme.distributed.operator`) multiplies each rank by its own rows
of G⁻¹ = blockdiag(0ₚ, G₀ₖ⁻¹ ⊗ Kₖ⁻¹); the preconditioner needs diag(Kₖ⁻¹). A
*source* gives those pieces of one term's K⁻¹ (L × L):

* ``rows(lo, hi)`` — rows lo … hi−1 as CSR, (hi − lo) × L;
* ``row_nnz()`` — nonzeros per row, or an upper bound (to cut balanced row blocks
  before anything is built);
* ``diagonal()`` — diag(K⁻¹);
* ``matrix()`` — the whole K⁻¹ (CSC), for what needs it whole (the Cholesky factor
  that draws Monte-Carlo REML's samples, on rank 0).

A pedigree's source builds only the rows asked for (``Pedigree.ainverse_rows``: every
rank scans the pedigree, keeps what lands in its rows), so no rank holds the whole
A⁻¹ for BLUP; a K⁻¹ given as a matrix is sliced; K = I is made on the fly.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["IdentityKinv", "MatrixKinv", "PedigreeKinv", "kinv_source"]


class PedigreeKinv:
    """A⁻¹ of a pedigree (``mme.Pedigree``), built row range by row range."""

    def __init__(self, pedigree):
        self.pedigree = pedigree
        self.n = pedigree.n
        self.is_identity = False

    def rows(self, lo: int, hi: int) -> sp.csr_matrix:
        return self.pedigree.ainverse_rows(lo, hi)

    def row_nnz(self) -> np.ndarray:
        return self.pedigree.ainverse_row_nnz()

    def diagonal(self) -> np.ndarray:
        return self.pedigree.ainverse_diagonal()

    def matrix(self) -> sp.csc_matrix:
        R = self.pedigree.ainverse_rows(0, self.n)      # not cached in the pedigree
        return sp.csc_matrix((R.data, R.indices, R.indptr), shape=R.shape)


class MatrixKinv:
    """A K⁻¹ given as a sparse matrix (the relmat ``(levels, K⁻¹)``)."""

    def __init__(self, Kinv):
        self.K = sp.csc_matrix(Kinv)
        self.n = self.K.shape[0]
        self.is_identity = False

    def rows(self, lo: int, hi: int) -> sp.csr_matrix:
        if lo == 0 and hi == self.n:
            return self.K.tocsr()
        # the columns lo … hi−1 of the CSC matrix, transposed, are exact rows only
        # for an exactly symmetric K⁻¹: take the rows of its CSR form
        return self.K.tocsr()[lo:hi]

    def row_nnz(self) -> np.ndarray:
        return np.diff(self.K.tocsr().indptr).astype(np.int64)

    def diagonal(self) -> np.ndarray:
        return self.K.diagonal()

    def matrix(self) -> sp.csc_matrix:
        return self.K


class IdentityKinv:
    """K = I (a term without a relationship matrix)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.is_identity = True

    def rows(self, lo: int, hi: int) -> sp.csr_matrix:
        m = hi - lo
        return sp.csr_matrix((np.ones(m), np.arange(lo, hi, dtype=np.int64),
                              np.arange(m + 1, dtype=np.int64)), shape=(m, self.n))

    def row_nnz(self) -> np.ndarray:
        return np.ones(self.n, dtype=np.int64)

    def diagonal(self) -> np.ndarray:
        return np.ones(self.n)

    def matrix(self) -> sp.csc_matrix:
        return sp.identity(self.n, format="csc")


def kinv_source(block):
    """The source of a ``RandomBlock`` that holds its K⁻¹ (or K = I); None without."""
    if block.k_is_identity:
        return IdentityKinv(block.n_levels)
    if block.Kinv is None:
        return None
    return MatrixKinv(block.Kinv)
