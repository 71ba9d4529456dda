# Supernodal selected inversion (included in _core.pyx).
#
# The same recurrences as ``selected_inverse``, taken a supernode at a time so
# that the work runs in BLAS-3 (Lin, Yang, Meza, Lu, Ying & E 2011, "SelInv";
# Amestoy et al. for the multifrontal view). A supernode J is a run of
# consecutive columns s..e-1 of L whose structures are nested
# (struct(c+1) = struct(c) minus c): a dense lower triangle L_DD (w x w) over
# a dense block L_RD (m x w) on the rows R below it. With Z = C^-1:
#
#     Lh   = L_RD L_DD^-1                    (dtrsm)
#     Z_RD = - Z_RR Lh                       (dsymm/dgemm on panels of Z_RR)
#     Z_DD = (L_DD L_DD')^-1 - Lh' Z_RD      (dtrtri + dlauum, dgemm)
#
# Z_RR lies on the pattern of L in the columns of ancestor supernodes, already
# computed; it is gathered a panel of columns at a time (memory m x nb), with
# positions found by arithmetic inside each ancestor supernode and a binary
# search of its row list once per (J, ancestor) pair.
from scipy.linalg.cython_blas cimport dgemm, dsymm, dtrsm
from scipy.linalg.cython_lapack cimport dtrtri, dlauum
from libc.stdlib cimport malloc, free


cdef inline void _gemm(char ta, int m, int n, int k, double alpha, double* A, int lda,
                       double* B, int ldb, double* C, int ldc, double blas_min) noexcept nogil:
    """C += alpha op(A) B, op = identity ('N') or transpose ('T')."""
    cdef char tb = b'N'
    cdef double one = 1.0
    cdef int i, j, l
    cdef double s
    if m == 0 or n == 0 or k == 0:
        return
    if <double>m * n * k >= blas_min:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, A, &lda, B, &ldb, &one, C, &ldc)
        return
    if ta == b'N':
        for j in range(n):
            for l in range(k):
                s = alpha * B[l + j * ldb]
                if s != 0.0:
                    for i in range(m):
                        C[i + j * ldc] += A[i + l * lda] * s
    else:
        for j in range(n):
            for i in range(m):
                s = 0.0
                for l in range(k):
                    s += A[l + i * lda] * B[l + j * ldb]
                C[i + j * ldc] += alpha * s


cdef inline void _symm_lower(int m, int n, double alpha, double* A, int lda, double* B, int ldb,
                             double* C, int ldc, double blas_min) noexcept nogil:
    """C += alpha A B, A symmetric (m x m) with its lower triangle stored."""
    cdef char side = b'L'
    cdef char uplo = b'L'
    cdef double one = 1.0
    cdef int i, j, l
    cdef double a, s
    if m == 0 or n == 0:
        return
    if <double>m * m * n >= blas_min:
        dsymm(&side, &uplo, &m, &n, &alpha, A, &lda, B, &ldb, &one, C, &ldc)
        return
    for j in range(n):
        for l in range(m):
            s = alpha * B[l + j * ldb]
            C[l + j * ldc] += A[l + l * lda] * s
            for i in range(l + 1, m):
                a = alpha * A[i + l * lda]
                C[i + j * ldc] += a * B[l + j * ldb]
                C[l + j * ldc] += a * B[i + j * ldb]


cdef inline void _trsm_right_lower(int m, int w, double* L, double* B, double blas_min) noexcept nogil:
    """B := B L^-1, L lower triangular (w x w, ld w), B (m x w, ld m)."""
    cdef char side = b'R'
    cdef char uplo = b'L'
    cdef char tr = b'N'
    cdef char dg = b'N'
    cdef double one = 1.0
    cdef int i, t, u
    cdef double lut, d
    if m == 0:
        return
    if <double>m * w * w >= blas_min:
        dtrsm(&side, &uplo, &tr, &dg, &m, &w, &one, L, &w, B, &m)
        return
    for t in range(w - 1, -1, -1):
        for u in range(t + 1, w):
            lut = L[u + t * w]
            if lut != 0.0:
                for i in range(m):
                    B[i + t * m] -= B[i + u * m] * lut
        d = 1.0 / L[t + t * w]
        for i in range(m):
            B[i + t * m] *= d


cdef inline int _inv_llt_lower(int w, double* L, double blas_min) noexcept nogil:
    """Overwrite the lower triangle of L (w x w) with that of (L L')^-1."""
    cdef char uplo = b'L'
    cdef char dg = b'N'
    cdef int info = 0
    cdef int i, j, k
    cdef double s
    if <double>w * w * w >= blas_min:
        dtrtri(&uplo, &dg, &w, L, &w, &info)
        if info != 0:
            return info
        dlauum(&uplo, &w, L, &w, &info)
        return info
    # L^-1 in place, column by column (forward substitution; the diagonal of a
    # column i > j is still L's own when column j is computed) ...
    for j in range(w):
        if L[j + j * w] <= 0.0:
            return j + 1
    for j in range(w):
        L[j + j * w] = 1.0 / L[j + j * w]
        for i in range(j + 1, w):
            s = 0.0
            for k in range(j, i):
                s += L[i + k * w] * L[k + j * w]
            L[i + j * w] = -s / L[i + i * w]
    # ... then (L^-1)' L^-1, lower triangle, in place (column j needs columns >= j).
    for j in range(w):
        for i in range(j, w):
            s = 0.0
            for k in range(i, w):
                s += L[k + i * w] * L[k + j * w]
            L[i + j * w] = s
    return 0


def supernodes(idx_t[::1] indptr, idx_t[::1] indices, Py_ssize_t stop, Py_ssize_t max_width):
    """First column of each supernode of L's columns 0..stop-1, plus ``stop``.

    Column c+1 joins c's supernode when its structure is c's minus c (checked
    entry by entry), up to ``max_width`` columns.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t c, k, p0, p1, start = 0, ns = 0
    cdef bint same
    if stop < 0 or stop > n:
        stop = n
    out = np.empty(stop + 1, dtype=np.int64)
    cdef int64_t[::1] o = out
    if stop == 0:
        o[0] = 0
        return out[:1]
    with nogil:
        o[0] = 0
        ns = 1
        for c in range(stop - 1):
            p0 = indptr[c]
            p1 = indptr[c + 1]
            same = (c + 1 - start < max_width and p1 - p0 >= 2 and indices[p0 + 1] == c + 1
                    and indptr[c + 2] - p1 == p1 - p0 - 1)
            if same:
                for k in range(p1 - p0 - 1):
                    if indices[p0 + 1 + k] != indices[p1 + k]:
                        same = False
                        break
            if not same:
                start = c + 1
                o[ns] = start
                ns += 1
        o[ns] = stop
    return out[:ns + 1]


def selected_inverse_supernodal(idx_t[::1] indptr, idx_t[::1] indices, const double[::1] Lx,
                                double[::1] Zx_out, const int64_t[::1] snode_start,
                                Py_ssize_t panel=256, double blas_min=4096.0):
    """Entries of C^-1 on the pattern of L (as ``selected_inverse``), by supernodes.

    Parameters
    ----------
    indptr, indices, Lx : L in CSC, rows sorted, diagonal first.
    Zx_out : (nnz,) output. Columns ``snode_start[-1] ... n-1`` must hold their
        values already (a dense trailing block inverted by LAPACK) and must be
        dense lower triangular; the rest is computed here.
    snode_start : from ``supernodes``.
    panel : columns of Z_RR gathered at a time (memory ``m x panel`` doubles).
    blas_min : products with fewer multiply-adds run as plain loops, larger
        ones call BLAS (call overhead dominates tiny supernodes).
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t nsn = snode_start.shape[0] - 1
    cdef Py_ssize_t stop = snode_start[nsn]
    cdef Py_ssize_t J, s, e, c, t, a, b, r, q, lo, hi, mid, pc, K, sK, eK, pK, mK
    cdef Py_ssize_t max_w = 0, max_m = 0, max_mw = 0, g0, g1, b0, b1, nb, ld
    cdef int w, m, iw, im, info = 0
    cdef int bad = 0
    cdef Py_ssize_t bad_col = -1
    if Lx.shape[0] != indices.shape[0] or Zx_out.shape[0] != indices.shape[0]:
        raise KernelArgumentError("Lx, indices and Zx_out must have the same length")
    if panel < 1:
        raise KernelArgumentError("panel must be positive")
    for J in range(nsn):
        s = snode_start[J]
        e = snode_start[J + 1]
        w = <int>(e - s)
        m = <int>(indptr[s + 1] - indptr[s] - w)
        if w > max_w:
            max_w = w
        if m > max_m:
            max_m = m
        if <Py_ssize_t>m * w > max_mw:
            max_mw = <Py_ssize_t>m * w
    # supernode of each column; the dense tail [stop, n) is one more supernode
    sn_of_np = np.empty(n, dtype=np.int64)
    sn_lo_np = np.empty(nsn + 1, dtype=np.int64)
    sn_hi_np = np.empty(nsn + 1, dtype=np.int64)
    cdef int64_t[::1] sn_of = sn_of_np
    cdef int64_t[::1] sn_lo = sn_lo_np
    cdef int64_t[::1] sn_hi = sn_hi_np
    for J in range(nsn):
        sn_lo[J] = snode_start[J]
        sn_hi[J] = snode_start[J + 1]
        for c in range(snode_start[J], snode_start[J + 1]):
            sn_of[c] = J
    sn_lo[nsn] = stop
    sn_hi[nsn] = n
    for c in range(stop, n):
        sn_of[c] = nsn
    cdef Py_ssize_t pbuf = panel if panel < max_m else max_m
    cdef double* Ldd = <double*>malloc((max_w * max_w + 1) * sizeof(double))
    cdef double* Lh = <double*>malloc((max_mw + 1) * sizeof(double))
    cdef double* Zrd = <double*>malloc((max_mw + 1) * sizeof(double))
    cdef double* P = <double*>malloc((max_m * pbuf + 1) * sizeof(double))
    cdef Py_ssize_t* relpos = <Py_ssize_t*>malloc((max_m + 1) * sizeof(Py_ssize_t))
    if Ldd == NULL or Lh == NULL or Zrd == NULL or P == NULL or relpos == NULL:
        free(Ldd); free(Lh); free(Zrd); free(P); free(relpos)
        raise OutOfMemoryError("selected inverse: work buffers")
    try:
        with nogil:
            for J in range(nsn - 1, -1, -1):
                s = snode_start[J]
                e = snode_start[J + 1]
                w = <int>(e - s)
                m = <int>(indptr[s + 1] - indptr[s] - w)
                # gather L_DD (lower) and L_RD
                for t in range(w):
                    pc = indptr[s + t]
                    if indices[pc] != s + t or Lx[pc] <= 0.0:
                        bad = 1
                        bad_col = s + t
                        break
                    for a in range(t, w):
                        Ldd[a + t * w] = Lx[pc + a - t]
                    for a in range(m):
                        Lh[a + t * m] = Lx[pc + w - t + a]
                if bad:
                    break
                _trsm_right_lower(m, w, Ldd, Lh, blas_min)          # Lh = L_RD L_DD^-1
                info = _inv_llt_lower(w, Ldd, blas_min)             # Ldd = (L_DD L_DD')^-1
                if info != 0:
                    bad = 3
                    bad_col = s
                    break
                if m > 0:
                    for a in range(<Py_ssize_t>m * w):
                        Zrd[a] = 0.0
                    q = indptr[s] + w               # R = indices[q : q + m]
                    g1 = 0                          # end of the current ancestor group
                    K = -1
                    b0 = 0
                    while b0 < m:
                        b1 = b0 + pbuf
                        if b1 > m:
                            b1 = m
                        nb = b1 - b0
                        ld = m - b0
                        for b in range(b0, b1):
                            c = indices[q + b]
                            if b >= g1:
                                # a new ancestor supernode K holds rows R[b:g1]
                                K = sn_of[c]
                                sK = sn_lo[K]
                                eK = sn_hi[K]
                                pK = indptr[sK] + (eK - sK)
                                mK = indptr[sK + 1] - pK
                                g1 = b
                                while g1 < m and indices[q + g1] < eK:
                                    g1 += 1
                                lo = 0
                                for a in range(g1, m):
                                    r = indices[q + a]
                                    hi = mK
                                    while lo < hi:
                                        mid = (lo + hi) // 2
                                        if indices[pK + mid] < r:
                                            lo = mid + 1
                                        else:
                                            hi = mid
                                    if lo >= mK or indices[pK + lo] != r:
                                        bad = 2
                                        bad_col = s
                                        break
                                    relpos[a] = lo
                                if bad:
                                    break
                            pc = indptr[c]
                            for a in range(b, g1):
                                P[(a - b0) + (b - b0) * ld] = Zx_out[pc + indices[q + a] - c]
                            pc = pc + (eK - c)
                            for a in range(g1, m):
                                P[(a - b0) + (b - b0) * ld] = Zx_out[pc + relpos[a]]
                        if bad:
                            break
                        im = <int>nb
                        # Z_RD[B] -= Z_BB Lh[B];  Z_RD[below] -= Z_QB Lh[B];  Z_RD[B] -= Z_QB' Lh[below]
                        _symm_lower(im, w, -1.0, P, <int>ld, Lh + b0, m, Zrd + b0, m, blas_min)
                        if b1 < m:
                            _gemm(b'N', <int>(m - b1), w, im, -1.0, P + nb, <int>ld,
                                  Lh + b0, m, Zrd + b1, m, blas_min)
                            _gemm(b'T', im, w, <int>(m - b1), -1.0, P + nb, <int>ld,
                                  Lh + b1, m, Zrd + b0, m, blas_min)
                        b0 = b1
                    if bad:
                        break
                    # Z_DD = (L_DD L_DD')^-1 - Lh' Z_RD  (lower triangle used)
                    _gemm(b'T', w, w, m, -1.0, Lh, m, Zrd, m, Ldd, w, blas_min)
                # scatter
                for t in range(w):
                    pc = indptr[s + t]
                    for a in range(t, w):
                        Zx_out[pc + a - t] = Ldd[a + t * w]
                    for a in range(m):
                        Zx_out[pc + w - t + a] = Zrd[a + t * m]
    finally:
        free(Ldd); free(Lh); free(Zrd); free(P); free(relpos)
    if bad == 1:
        raise PatternError(f"column {bad_col} of L has no positive diagonal entry first")
    if bad == 2:
        raise PatternError(f"supernode at column {bad_col}: pattern not closed under elimination")
    if bad == 3:
        raise PatternError(f"supernode at column {bad_col}: singular diagonal block")
