# cython: language_level=3
"""Compiled kernels of mme. Private and array-only.

Every function here takes plain NumPy arrays (CSC triplets ``indptr, indices,
data``), writes into caller-allocated ``*_out`` arrays where it produces arrays,
and runs its loops without the GIL. No pandas, SciPy or CHOLMOD objects enter
this module; the Python layer owns state and control flow.

Kernels
-------
selected_inverse
    Takahashi's recurrences: the entries of C^-1 on the pattern of its
    Cholesky factor L (Takahashi, Fagan & Chen 1973; Erisman & Tinney 1975),
    column by column (the reference implementation).
supernodes, selected_inverse_supernodal
    The same recurrences a supernode at a time in BLAS-3 (``_selinv.pxi``);
    what ``MME.selected_inverse`` uses.
csc_positions
    For (row, col) pairs, the slot of each in a CSC matrix's ``data`` (assembly
    of the MME: the map from variance parameters to the slots of C they touch).
The pedigree kernels (inbreeding, A^-1) are in ``_pedigree.pxi``.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

cnp.import_array()

ctypedef fused idx_t:
    int32_t
    int64_t


from ._errors import KernelArgumentError, OutOfMemoryError, PatternError


def selected_inverse(idx_t[::1] indptr, idx_t[::1] indices, const double[::1] Lx,
                     double[::1] Zx_out, Py_ssize_t stop=-1):
    """Entries of C^-1 on the pattern of L, where C = L L'.

    Parameters
    ----------
    indptr, indices : CSC pattern of the lower-triangular factor L (n x n),
        row indices sorted within each column, the diagonal first.
    Lx : (nnz,) values of L.
    Zx_out : (nnz,) output; ``Zx_out[k]`` = (C^-1)[indices[k], col(k)].
    stop : columns ``stop ... n-1`` are taken as already computed in Zx_out
        (e.g. a dense trailing block inverted with BLAS-3); -1 means none.

    Notes
    -----
    With L = L~ D^(1/2) (L~ unit lower, D = diag(L)^2) and Z = C^-1, for
    j = n-1 ... 0 and i in struct(L[:, j]):

        Z[i, j] = - sum_{k in struct(j)} Z[i, k] L~[k, j]
        Z[j, j] = 1 / D[j] - sum_{k in struct(j)} L~[k, j] Z[k, j]

    All Z[i, k] needed lie on the pattern of L (struct(j) is a clique of the
    filled graph), so the cost is of the order of the factorization.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t j, a, b, m, p0, p1, q, qend, k, i
    cdef Py_ssize_t first = n - 1 if stop < 0 else stop - 1
    cdef double d, lk, zik, s
    cdef int bad = 0
    cdef Py_ssize_t bad_col = -1
    if Lx.shape[0] != indices.shape[0] or Zx_out.shape[0] != indices.shape[0]:
        raise KernelArgumentError("Lx, indices and Zx_out must have the same length")
    with nogil:
        for j in range(first, -1, -1):
            p0 = indptr[j]
            p1 = indptr[j + 1]
            if p1 <= p0 or indices[p0] != j or Lx[p0] <= 0.0:
                bad = 1
                bad_col = j
                break
            d = Lx[p0]
            m = p1 - p0 - 1
            for a in range(m):
                Zx_out[p0 + 1 + a] = 0.0
            for a in range(m):
                k = indices[p0 + 1 + a]
                lk = Lx[p0 + 1 + a] / d
                q = indptr[k]
                Zx_out[p0 + 1 + a] -= Zx_out[q] * lk
                q = q + 1
                qend = indptr[k + 1]
                for b in range(a + 1, m):
                    i = indices[p0 + 1 + b]
                    while q < qend and indices[q] < i:
                        q = q + 1
                    if q == qend or indices[q] != i:
                        bad = 2
                        bad_col = j
                        break
                    zik = Zx_out[q]
                    Zx_out[p0 + 1 + b] -= zik * lk
                    Zx_out[p0 + 1 + a] -= zik * (Lx[p0 + 1 + b] / d)
                if bad:
                    break
            if bad:
                break
            s = 1.0 / (d * d)
            for a in range(m):
                s -= (Lx[p0 + 1 + a] / d) * Zx_out[p0 + 1 + a]
            Zx_out[p0] = s
    if bad == 1:
        raise PatternError(f"column {bad_col} of L has no positive diagonal entry first")
    if bad == 2:
        raise PatternError(f"column {bad_col} of L: pattern not closed under elimination")


def csc_positions(idx_t[::1] indptr, idx_t[::1] indices, const int64_t[::1] rows,
                  const int64_t[::1] cols, int64_t[::1] pos_out):
    """Slot in ``data`` of each (rows[t], cols[t]) of a CSC matrix; -1 if absent.

    Row indices must be sorted within columns (binary search per query).
    """
    cdef Py_ssize_t t, nq = rows.shape[0]
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef int64_t lo, hi, mid, r, c
    cdef int bad = 0
    if cols.shape[0] != nq or pos_out.shape[0] != nq:
        raise KernelArgumentError("rows, cols and pos_out must have the same length")
    with nogil:
        for t in range(nq):
            c = cols[t]
            r = rows[t]
            if c < 0 or c >= n:
                bad = 1
                break
            lo = indptr[c]
            hi = indptr[c + 1]
            while lo < hi:
                mid = (lo + hi) // 2
                if indices[mid] < r:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < indptr[c + 1] and indices[lo] == r:
                pos_out[t] = lo
            else:
                pos_out[t] = -1
    if bad:
        raise KernelArgumentError("column index out of range")


include "_selinv.pxi"
include "_pedigree.pxi"
include "_cholmod.pxi"
