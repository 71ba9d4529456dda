# CHOLMOD bound directly (included in _core.pyx).
#
# ``Factor`` holds one ``cholmod_factor`` and its ``cholmod_common``: the symbolic
# analysis of a fixed lower-triangular pattern (``cholmod_l_analyze``), numeric
# (re)factorizations of values on that pattern (``cholmod_l_factorize_p``, with
# an optional beta: C + beta I), solves (``cholmod_l_solve``), the log-determinant
# and the selected inverse read straight from the factor's own arrays (no copy of
# L to CSC: the supernodal layout is used as CHOLMOD stores it).
#
# The 64-bit API (``cholmod_l_*``, SuiteSparse_long = int64 indices) is used
# throughout: a supernodal factor's value count (``L->xsize``, with the zeros of
# relaxed amalgamation) is an index into ``L->x``; at 1M animals it is already
# about 1.2e9, and the int32 API stops at 2^31 - 1 (CHOLMOD_TOO_LARGE). The cost is
# an int64 copy of C's pattern (once per analysis) and int64 row indices of L
# (``L->s``, small next to ``L->x``). One exception: the AMD ordering itself runs
# through the int32 ``cholmod_amd`` when the pattern fits (with the int64 AMD a
# whole analysis took 1.27-1.39x scikit-sparse's int32 one on the animal benchmark's
# MME); the analysis of that permutation is int64 again. Only functions
# and fields present in SuiteSparse 5.x and 7.x are used.
from libc.stdint cimport int64_t
from libc.string cimport memcpy
from libc.math cimport log, isfinite

cdef extern from "cholmod.h" nogil:
    int CHOLMOD_MAIN_VERSION, CHOLMOD_SUB_VERSION, CHOLMOD_SUBSUB_VERSION
    int SUITESPARSE_MAIN_VERSION, SUITESPARSE_SUB_VERSION, SUITESPARSE_SUBSUB_VERSION
    enum:
        CHOLMOD_LONG
        CHOLMOD_PATTERN
        CHOLMOD_REAL
        CHOLMOD_DOUBLE
        CHOLMOD_AUTO
        CHOLMOD_SIMPLICIAL
        CHOLMOD_SUPERNODAL
        CHOLMOD_OK
        CHOLMOD_NOT_POSDEF
        CHOLMOD_OUT_OF_MEMORY
        CHOLMOD_TOO_LARGE
        CHOLMOD_NOT_INSTALLED
        CHOLMOD_A
        CHOLMOD_L
        CHOLMOD_Lt
        CHOLMOD_P
        CHOLMOD_Pt
        CHOLMOD_NATURAL
        CHOLMOD_AMD
        CHOLMOD_METIS
        CHOLMOD_NESDIS
        CHOLMOD_COLAMD
        CHOLMOD_GIVEN
        CHOLMOD_INT

    ctypedef struct cholmod_method_struct:
        int ordering

    ctypedef struct cholmod_common:
        int supernodal
        int final_ll
        int print
        int nmethods
        int postorder
        int selected
        int status
        int itype
        double lnz
        double fl
        cholmod_method_struct* method
        void (*error_handler)(int, const char*, int, const char*)

    ctypedef struct cholmod_sparse:
        size_t nrow, ncol, nzmax
        void* p
        void* i
        void* nz
        void* x
        void* z
        int stype, itype, xtype, dtype, sorted, packed

    ctypedef struct cholmod_dense:
        size_t nrow, ncol, nzmax, d
        void* x
        void* z
        int xtype, dtype

    ctypedef struct cholmod_factor:
        size_t n, minor, nzmax, nsuper, ssize, xsize, maxcsize, maxesize
        void* Perm
        void* ColCount
        void* p
        void* i
        void* x
        void* nz
        void* super_ "super"
        void* pi
        void* px
        void* s
        int ordering, is_ll, is_super, is_monotonic, itype, xtype, dtype

    int cholmod_l_start(cholmod_common*)
    int cholmod_l_finish(cholmod_common*)
    cholmod_factor* cholmod_l_analyze(cholmod_sparse*, cholmod_common*)
    cholmod_factor* cholmod_l_analyze_p(cholmod_sparse*, int64_t*, int64_t*, size_t,
                                        cholmod_common*)
    # the int32 API, for AMD alone (see Factor.__init__)
    int cholmod_start(cholmod_common*)
    int cholmod_finish(cholmod_common*)
    int cholmod_amd(cholmod_sparse*, int*, size_t, int*, cholmod_common*)
    int cholmod_l_factorize_p(cholmod_sparse*, double*, int64_t*, size_t, cholmod_factor*,
                              cholmod_common*)
    cholmod_dense* cholmod_l_solve(int, cholmod_factor*, cholmod_dense*, cholmod_common*)
    int cholmod_l_free_dense(cholmod_dense**, cholmod_common*)
    int cholmod_l_free_factor(cholmod_factor**, cholmod_common*)
    int cholmod_l_version(int*)
    int SuiteSparse_version(int*)

from ._errors import InternalError, NotPositiveDefiniteError, OptionError

#: ``ordering=`` names as scikit-sparse spelt them (the project's ``ordering=``):
#: (nmethods, method[0].ordering, postorder). "default": CHOLMOD's own strategy
#: (AMD, then METIS when AMD's fill is large; nmethods = 0); "best": all 9 methods.
_ORDERINGS = {
    "natural": (1, CHOLMOD_NATURAL, 0),
    "amd": (1, CHOLMOD_AMD, 1),
    "metis": (1, CHOLMOD_METIS, 1),
    "nesdis": (1, CHOLMOD_NESDIS, 1),
    "colamd": (1, CHOLMOD_COLAMD, 1),
    "default": (0, -1, 1),
    "best": (9, -1, 1),
}
_MODES = {"auto": CHOLMOD_AUTO, "simplicial": CHOLMOD_SIMPLICIAL,
          "supernodal": CHOLMOD_SUPERNODAL}
_SYSTEMS = {"A": CHOLMOD_A, "L": CHOLMOD_L, "Lt": CHOLMOD_Lt, "P": CHOLMOD_P,
            "Pt": CHOLMOD_Pt}


def cholmod_versions():
    """((SuiteSparse, CHOLMOD) versions of the headers compiled against,
    (SuiteSparse, CHOLMOD) versions of the library loaded), each an (x, y, z) tuple."""
    cdef int v[3]
    cdef int w[3]
    SuiteSparse_version(v)
    cholmod_l_version(w)
    header = ((SUITESPARSE_MAIN_VERSION, SUITESPARSE_SUB_VERSION, SUITESPARSE_SUBSUB_VERSION),
              (CHOLMOD_MAIN_VERSION, CHOLMOD_SUB_VERSION, CHOLMOD_SUBSUB_VERSION))
    return header, ((v[0], v[1], v[2]), (w[0], w[1], w[2]))


cdef _raise_status(int status, str what, Py_ssize_t minor=-1, Py_ssize_t original=-1):
    if status == CHOLMOD_NOT_POSDEF:
        raise NotPositiveDefiniteError(
            f"{what}: the matrix is not positive definite (CHOLMOD stopped at column "
            f"{minor} of the permuted matrix: row/column {original} of the matrix)")
    if status == CHOLMOD_OUT_OF_MEMORY:
        raise OutOfMemoryError(f"{what}: CHOLMOD ran out of memory")
    if status == CHOLMOD_TOO_LARGE:
        raise OutOfMemoryError(f"{what}: the problem is too large for CHOLMOD (integer "
                               "overflow in its sizes)")
    raise InternalError(f"{what}: CHOLMOD failed with status {status}")


cdef class Factor:
    """Cholesky factor L L' = P A P' of a symmetric matrix A given by the lower
    triangle of its CSC pattern (``indptr``, ``indices``; rows sorted in columns).

    ``Factor(indptr, indices, ordering, mode)`` runs the symbolic analysis;
    ``factorize(data, beta)`` the numeric factorization of A + beta I, A's values in
    ``data`` (aligned with ``indices``). ``free()`` releases CHOLMOD's memory now
    (otherwise when the object is collected).
    """
    cdef cholmod_common c
    cdef cholmod_factor* L
    cdef cholmod_sparse A
    cdef bint started
    cdef readonly Py_ssize_t n
    cdef readonly Py_ssize_t nnz_A
    cdef readonly bint numeric          # True after a successful factorization
    cdef readonly str ordering
    cdef object _indptr, _indices, _perm, _sn_of

    def __cinit__(self):
        self.L = NULL
        self.started = False
        self.numeric = False

    def __init__(self, indptr, indices, str ordering="default", str mode="auto"):
        if ordering not in _ORDERINGS:
            raise OptionError(f"ordering {ordering!r}: expected one of "
                              + ", ".join(repr(k) for k in _ORDERINGS))
        if mode not in _MODES:
            raise OptionError(f"mode {mode!r}: expected one of "
                              + ", ".join(repr(k) for k in _MODES))
        self._indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self._indices = np.ascontiguousarray(indices, dtype=np.int64)
        cdef Py_ssize_t n = self._indptr.shape[0] - 1
        if n < 0 or self._indptr[n] != self._indices.shape[0]:
            raise KernelArgumentError("indptr and indices do not form a CSC pattern")
        self.n = n
        self.nnz_A = self._indices.shape[0]
        self.ordering = ordering
        cholmod_l_start(&self.c)
        self.started = True
        self.c.print = 0
        self.c.error_handler = NULL
        self.c.final_ll = 1           # simplicial factors kept as L L' (as supernodal ones)
        self.c.supernodal = _MODES[mode]
        nmethods, method, postorder = _ORDERINGS[ordering]
        self.c.nmethods = nmethods
        if method >= 0:
            self.c.method[0].ordering = method
        self.c.postorder = postorder
        cdef int64_t[::1] ip = self._indptr
        cdef int64_t[::1] ii = self._indices
        _lower_pattern(&self.A, n, self.nnz_A, &ip[0], &ii[0] if self.nnz_A else NULL,
                       CHOLMOD_LONG)
        perm_amd = _amd_int32(self._indptr, self._indices) if ordering == "amd" else None
        cdef int64_t[::1] pa
        if perm_amd is not None:
            # AMD's ordering through the int32 API (the int64 AMD made the analysis
            # 1.27-1.39x scikit-sparse's int32 one), then the int64 analysis of that permutation: CHOLMOD's
            # own AMD route does the same two steps (AMD, then etree, postorder, counts,
            # supernodes), so the permutation and the factor are identical
            self.c.nmethods = 1
            self.c.method[0].ordering = CHOLMOD_GIVEN
            pa = perm_amd
            with nogil:
                self.L = cholmod_l_analyze_p(&self.A, &pa[0] if n else NULL, NULL, 0,
                                             &self.c)
        else:
            with nogil:
                self.L = cholmod_l_analyze(&self.A, &self.c)
        if self.L == NULL or self.c.status < CHOLMOD_OK:
            _raise_status(self.c.status, "symbolic analysis")
        self._perm = np.empty(n, dtype=np.int64)
        if n:
            memcpy(<void*>cnp.PyArray_DATA(self._perm), self.L.Perm, n * sizeof(int64_t))
        self._sn_of = None
        if self.L.is_super:
            self._check_supernodal_rows()

    def __dealloc__(self):
        if self.started:
            if self.L != NULL:
                cholmod_l_free_factor(&self.L, &self.c)
            cholmod_l_finish(&self.c)

    def free(self):
        """Release the factor's memory now; the object is unusable afterwards."""
        if self.L != NULL:
            cholmod_l_free_factor(&self.L, &self.c)
        self.numeric = False

    cdef inline void _alive(self) except *:
        if self.L == NULL:
            raise InternalError("the CHOLMOD factor was freed")

    cdef inline void _has_values(self) except *:
        self._alive()
        if not self.numeric:
            raise InternalError("the CHOLMOD factor holds no numeric factorization")

    # -- symbolic ---------------------------------------------------------
    @property
    def perm(self):
        """P as an index vector: row/column k of P A P' is A's ``perm[k]``."""
        return self._perm

    @property
    def is_supernodal(self):
        self._alive()
        return bool(self.L.is_super)

    @property
    def lnz(self):
        """nnz(L) of the analysis (``Common->lnz``: without amalgamation zeros)."""
        return int(self.c.lnz)

    @property
    def flops(self):
        """Flop count of a simplicial L L' (``Common->fl``)."""
        return float(self.c.fl)

    @property
    def method_selected(self):
        """Index of the ordering method CHOLMOD kept (``Common->selected``)."""
        return int(self.c.selected)

    def symbolic(self):
        """Sizes from the analysis: dict with ``supernodal``, ``lnz`` and, when
        supernodal, ``nsuper``, ``xsize`` (values stored), ``ssize`` (row indices),
        ``maxcsize``, ``maxesize``, ``ncols``/``nrows`` per supernode (int64 arrays);
        simplicial: ``colcount`` per column."""
        self._alive()
        out = {"supernodal": bool(self.L.is_super), "lnz": int(self.c.lnz),
               "flops": float(self.c.fl)}
        cdef Py_ssize_t J, ns
        cdef int64_t* sup
        cdef int64_t* pi
        if self.L.is_super:
            ns = self.L.nsuper
            sup = <int64_t*>self.L.super_
            pi = <int64_t*>self.L.pi
            ncols = np.empty(ns, dtype=np.int64)
            nrows = np.empty(ns, dtype=np.int64)
            for J in range(ns):
                ncols[J] = sup[J + 1] - sup[J]
                nrows[J] = pi[J + 1] - pi[J]
            out.update(nsuper=int(ns), xsize=int(self.L.xsize), ssize=int(self.L.ssize),
                       maxcsize=int(self.L.maxcsize), maxesize=int(self.L.maxesize),
                       ncols=ncols, nrows=nrows)
        else:
            cc = np.empty(self.n, dtype=np.int64)
            if self.n:
                memcpy(<void*>cnp.PyArray_DATA(cc), self.L.ColCount, self.n * sizeof(int64_t))
            out["colcount"] = cc
        return out

    cdef void _check_supernodal_rows(self) except *:
        """The selected inverse and ``slots`` binary-search each supernode's rows
        below its diagonal block: check that CHOLMOD stored them sorted."""
        cdef int64_t* sup = <int64_t*>self.L.super_
        cdef int64_t* pi = <int64_t*>self.L.pi
        cdef int64_t* s = <int64_t*>self.L.s
        cdef Py_ssize_t J, a, w, bad = -1
        with nogil:
            for J in range(<Py_ssize_t>self.L.nsuper):
                w = sup[J + 1] - sup[J]
                for a in range(w):
                    if s[pi[J] + a] != sup[J] + a:
                        bad = J
                for a in range(pi[J] + w + 1, pi[J + 1]):
                    if s[a] <= s[a - 1]:
                        bad = J
                if bad >= 0:
                    break
        if bad >= 0:
            raise PatternError(f"supernode {bad} of the CHOLMOD factor: rows not sorted")

    # -- numeric ----------------------------------------------------------
    def factorize(self, const double[::1] data, double beta=0.0):
        """Numeric factorization of A + beta I, A's lower-triangle values in ``data``
        (the pattern analyzed). Raises NotPositiveDefiniteError (naming the column
        of P A P' where it stopped) or OutOfMemoryError."""
        self._alive()
        if data.shape[0] != self.nnz_A:
            raise KernelArgumentError(f"{data.shape[0]} values for a pattern of "
                                      f"{self.nnz_A} entries")
        cdef double b[2]
        cdef int status
        b[0] = beta
        b[1] = 0.0
        self.numeric = False
        self.A.x = <void*>&data[0] if self.nnz_A else NULL
        self.A.xtype = CHOLMOD_REAL
        try:
            with nogil:
                cholmod_l_factorize_p(&self.A, b, NULL, 0, self.L, &self.c)
        finally:
            self.A.x = NULL
            self.A.xtype = CHOLMOD_PATTERN
        status = self.c.status
        if status == CHOLMOD_NOT_POSDEF or (status == CHOLMOD_OK and self.L.minor < self.L.n):
            _raise_status(CHOLMOD_NOT_POSDEF, "Cholesky factorization", self.L.minor,
                          self._perm[self.L.minor] if self.L.minor < self.L.n else -1)
        if status < CHOLMOD_OK:
            _raise_status(status, "Cholesky factorization")
        self.numeric = True

    def logdet(self):
        """log det(A + beta I) = 2 sum log diag(L) (L L'), or sum log D (L D L')."""
        self._has_values()
        cdef double s = 0.0
        cdef Py_ssize_t J, t, j, nsr
        cdef int64_t* sup
        cdef int64_t* pi
        cdef int64_t* px
        cdef int64_t* p
        cdef double* x = <double*>self.L.x
        with nogil:
            if self.L.is_super:
                sup = <int64_t*>self.L.super_
                pi = <int64_t*>self.L.pi
                px = <int64_t*>self.L.px
                for J in range(<Py_ssize_t>self.L.nsuper):
                    nsr = pi[J + 1] - pi[J]
                    for t in range(sup[J + 1] - sup[J]):
                        s += log(x[px[J] + t * (nsr + 1)])
                s *= 2.0
            else:
                p = <int64_t*>self.L.p
                for j in range(<Py_ssize_t>self.L.n):
                    s += log(x[p[j]])
                if self.L.is_ll:
                    s *= 2.0
        return s

    def solve(self, b, str system="A"):
        """x with A x = b (``system`` "A"), L x = b ("L"), L' x = b ("Lt"), x = P b
        ("P") or x = P' b ("Pt"); b of shape (n,) or (n, k)."""
        self._has_values()
        if system not in _SYSTEMS:
            raise OptionError(f"system {system!r}: expected one of "
                              + ", ".join(repr(k) for k in _SYSTEMS))
        if system in ("L", "Lt") and not self.L.is_ll:
            raise InternalError("the factor is L D L' (solves with L need L L')")
        B = np.asarray(b, dtype=np.float64)
        one = B.ndim == 1
        if one:
            B = B[:, None]
        if B.ndim != 2 or B.shape[0] != self.n:
            raise KernelArgumentError(f"right-hand side of shape {np.shape(b)} for a "
                                      f"{self.n} x {self.n} factor")
        B = np.asfortranarray(B)
        out = np.empty((B.shape[0], B.shape[1]), dtype=np.float64, order="F")
        if B.size == 0:
            return out[:, 0] if one else out
        cdef cholmod_dense D
        cdef cholmod_dense* X = NULL
        cdef int sys = _SYSTEMS[system]
        cdef double[::1, :] Bv = B
        D.nrow = B.shape[0]
        D.ncol = B.shape[1]
        D.nzmax = B.shape[0] * B.shape[1]
        D.d = B.shape[0]
        D.x = <void*>&Bv[0, 0]
        D.z = NULL
        D.xtype = CHOLMOD_REAL
        D.dtype = CHOLMOD_DOUBLE
        with nogil:
            X = cholmod_l_solve(sys, self.L, &D, &self.c)
        if X == NULL:
            _raise_status(self.c.status, "solve")
        try:
            if X.d != D.d:
                raise InternalError("CHOLMOD returned a solution with another leading dimension")
            memcpy(<void*>cnp.PyArray_DATA(out), X.x, D.nzmax * sizeof(double))
        finally:
            cholmod_l_free_dense(&X, &self.c)
        return out[:, 0] if one else out

    # -- the factor's arrays ---------------------------------------------------
    def simplicial_csc(self):
        """(indptr, indices, data) views of a simplicial L L' factor (packed, rows
        sorted, diagonal first): L itself, no copy. Valid until the next factorize."""
        self._has_values()
        if self.L.is_super:
            raise InternalError("simplicial_csc of a supernodal factor")
        if not self.L.is_ll or not self.L.is_monotonic:
            raise InternalError("the simplicial factor is not a packed, monotonic L L'")
        cdef Py_ssize_t n = self.n
        cdef int64_t* p = <int64_t*>self.L.p
        cdef int64_t* nz = <int64_t*>self.L.nz
        cdef Py_ssize_t j
        for j in range(n):
            if p[j] + nz[j] != p[j + 1]:
                raise InternalError("the simplicial factor is not packed")
        nnz = p[n]
        indptr = _view_int64(self.L.p, n + 1, self)
        indices = _view_int64(self.L.i, nnz, self)
        data = _view_double(self.L.x, nnz, self)
        return indptr, indices, data

    @property
    def value_count(self):
        """Length of the factor's value array: ``xsize`` (supernodal, with the upper
        triangles of the diagonal blocks) or nnz(L) (simplicial)."""
        self._alive()
        if self.L.is_super:
            return int(self.L.xsize)
        return int((<int64_t*>self.L.p)[self.n]) if self.numeric else int(self.c.lnz)

    def supernodal_values(self):
        """A read-only view of the supernodal factor's values ``L->x`` (xsize)."""
        self._has_values()
        if not self.L.is_super:
            raise InternalError("supernodal_values of a simplicial factor")
        v = _view_double(self.L.x, self.L.xsize, self)
        v.flags.writeable = False
        return v

    def supernodal_arrays(self):
        """Views of the supernodal factor's integer arrays ``(super, pi, px, s)``:
        supernode J has columns super[J]..super[J+1]-1, row indices
        s[pi[J]:pi[J+1]] (its own columns first) and values from px[J] on,
        column-major (nrows x ncols)."""
        self._alive()
        if not self.L.is_super:
            raise InternalError("supernodal_arrays of a simplicial factor")
        ns = self.L.nsuper
        return (_view_int64(self.L.super_, ns + 1, self), _view_int64(self.L.pi, ns + 1, self),
                _view_int64(self.L.px, ns + 1, self), _view_int64(self.L.s, self.L.ssize, self))

    cdef object _supernode_of(self):
        """Supernode of each column (computed once per analysis)."""
        if self._sn_of is None:
            arr = np.empty(self.n, dtype=np.int64)
            self._fill_sn_of(arr)
            self._sn_of = arr
        return self._sn_of

    cdef void _fill_sn_of(self, cnp.ndarray arr) except *:
        cdef int64_t* o = <int64_t*>cnp.PyArray_DATA(arr)
        cdef int64_t* sup = <int64_t*>self.L.super_
        cdef Py_ssize_t J, c
        with nogil:
            for J in range(<Py_ssize_t>self.L.nsuper):
                for c in range(sup[J], sup[J + 1]):
                    o[c] = J

    def supernodal_slots(self, const int64_t[::1] rows, const int64_t[::1] cols,
                         int64_t[::1] pos_out):
        """Position in the supernodal value array of (P A P')'s entry for A's
        (rows[t], cols[t]) (either triangle); -1 where it is not on L's pattern."""
        self._alive()
        if not self.L.is_super:
            raise InternalError("supernodal_slots of a simplicial factor")
        cdef Py_ssize_t nq = rows.shape[0]
        if cols.shape[0] != nq or pos_out.shape[0] != nq:
            raise KernelArgumentError("rows, cols and pos_out must have the same length")
        pinv_np = np.empty(self.n, dtype=np.int64)
        pinv_np[self._perm] = np.arange(self.n, dtype=np.int64)
        cdef int64_t[::1] pinv = pinv_np
        cdef int64_t[::1] sn_of = self._supernode_of()
        cdef int64_t* sup = <int64_t*>self.L.super_
        cdef int64_t* pi = <int64_t*>self.L.pi
        cdef int64_t* px = <int64_t*>self.L.px
        cdef int64_t* s = <int64_t*>self.L.s
        cdef Py_ssize_t t, n = self.n, J, w, nsr
        cdef int64_t r, c, lo, hi, mid, a, b
        cdef int bad = 0
        with nogil:
            for t in range(nq):
                a = rows[t]
                b = cols[t]
                if a < 0 or a >= n or b < 0 or b >= n:
                    bad = 1
                    break
                r = pinv[a]
                c = pinv[b]
                if r < c:
                    r, c = c, r
                J = sn_of[c]
                w = sup[J + 1] - sup[J]
                nsr = pi[J + 1] - pi[J]
                if r < sup[J + 1]:
                    pos_out[t] = px[J] + (r - sup[J]) + (c - sup[J]) * nsr
                    continue
                lo = pi[J] + w
                hi = pi[J + 1]
                while lo < hi:
                    mid = (lo + hi) // 2
                    if s[mid] < r:
                        lo = mid + 1
                    else:
                        hi = mid
                if lo < pi[J + 1] and s[lo] == r:
                    pos_out[t] = px[J] + (lo - pi[J]) + (c - sup[J]) * nsr
                else:
                    pos_out[t] = -1
        if bad:
            raise KernelArgumentError("row or column index out of range")

    def selected_inverse_supernodal(self, double[::1] Zx_out, Py_ssize_t panel=256,
                                    double blas_min=4096.0):
        """C^-1 on the pattern of the supernodal L, in L's own layout: ``Zx_out``
        (xsize) gets, at each slot of ``L->x`` on or below a diagonal, the entry of
        (P C P')^-1 there (the same recurrences as ``selected_inverse_supernodal``
        of a CSC L, a CHOLMOD supernode at a time). Slots above the diagonal of a
        supernode's diagonal block are left as they were."""
        self._has_values()
        if not self.L.is_super:
            raise InternalError("selected_inverse_supernodal of a simplicial factor")
        if Zx_out.shape[0] != <Py_ssize_t>self.L.xsize:
            raise KernelArgumentError("Zx_out must have xsize entries")
        if panel < 1:
            raise KernelArgumentError("panel must be positive")
        cdef int64_t[::1] sn_of = self._supernode_of()
        _selinv_cholmod(<int64_t*>self.L.super_, <int64_t*>self.L.pi,
                        <int64_t*>self.L.px, <int64_t*>self.L.s, <double*>self.L.x,
                        &Zx_out[0], &sn_of[0], self.L.nsuper, panel, blas_min)


cdef void _lower_pattern(cholmod_sparse* A, Py_ssize_t n, Py_ssize_t nnz, void* p, void* i,
                         int itype) noexcept:
    """Fill A as the packed, sorted lower-triangular CSC pattern (p, i) of an n × n
    symmetric matrix (no values), with index type ``itype``."""
    A.nrow = n
    A.ncol = n
    A.nzmax = nnz
    A.p = p
    A.i = i
    A.nz = NULL
    A.x = NULL
    A.z = NULL
    A.stype = -1
    A.itype = itype
    A.xtype = CHOLMOD_PATTERN
    A.dtype = CHOLMOD_DOUBLE
    A.sorted = 1
    A.packed = 1


cdef object _amd_int32(object indptr, object indices):
    """AMD permutation (int64 array) of the symmetric pattern whose lower triangle is
    (indptr, indices), by CHOLMOD's int32 ``cholmod_amd``; None when the pattern does
    not fit int32 indices (the int64 route then orders it) or AMD fails."""
    cdef Py_ssize_t n = indptr.shape[0] - 1
    cdef Py_ssize_t nnz = indices.shape[0]
    if n < 1 or nnz >= 2**31 - 1 or n >= 2**31 - 1:
        return None
    ip32 = np.ascontiguousarray(indptr, dtype=np.int32)
    ii32 = np.ascontiguousarray(indices, dtype=np.int32)
    perm32 = np.empty(n, dtype=np.int32)
    cdef int[::1] ip = ip32
    cdef int[::1] ii = ii32
    cdef int[::1] pv = perm32
    cdef cholmod_common c
    cdef cholmod_sparse A
    cdef int ok
    _lower_pattern(&A, n, nnz, &ip[0], &ii[0] if nnz else NULL, CHOLMOD_INT)
    cholmod_start(&c)
    c.print = 0
    c.error_handler = NULL
    with nogil:
        ok = cholmod_amd(&A, NULL, 0, &pv[0], &c)
    status = c.status
    cholmod_finish(&c)
    if not ok or status < CHOLMOD_OK:
        return None
    return perm32.astype(np.int64)


cdef object _view_int64(void* p, Py_ssize_t n, object owner):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    arr = cnp.PyArray_SimpleNewFromData(1, dims, cnp.NPY_INT64, p)
    cnp.set_array_base(arr, owner)
    return arr


cdef object _view_double(void* p, Py_ssize_t n, object owner):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    arr = cnp.PyArray_SimpleNewFromData(1, dims, cnp.NPY_FLOAT64, p)
    cnp.set_array_base(arr, owner)
    return arr


cdef void _selinv_cholmod(int64_t* sup, int64_t* spi, int64_t* spx, int64_t* ss, double* Lx,
                          double* Zx, int64_t* sn_of, Py_ssize_t nsn, Py_ssize_t panel,
                          double blas_min) except *:
    """Supernodal selected inversion on CHOLMOD's layout: supernode J holds columns
    sup[J]..sup[J+1]-1, rows ss[spi[J]..spi[J+1]) (its own columns first, then R),
    values column-major at Lx[spx[J] + row + col * nsrow]."""
    cdef Py_ssize_t J, s, e, c, t, a, b, r, q, lo, hi, mid, pc, K, sK, eK, pK, mK, nsr, nsrK
    cdef Py_ssize_t max_w = 0, max_m = 0, max_mw = 0, g1, b0, b1, nb, ld, base
    cdef int w, m, im, info = 0
    cdef int bad = 0
    cdef Py_ssize_t bad_col = -1
    for J in range(nsn):
        w = <int>(sup[J + 1] - sup[J])
        m = <int>(spi[J + 1] - spi[J] - w)
        if w > max_w:
            max_w = w
        if m > max_m:
            max_m = m
        if <Py_ssize_t>m * w > max_mw:
            max_mw = <Py_ssize_t>m * w
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
                s = sup[J]
                e = sup[J + 1]
                w = <int>(e - s)
                nsr = spi[J + 1] - spi[J]
                m = <int>(nsr - w)
                base = spx[J]
                # gather L_DD (lower) and L_RD
                for t in range(w):
                    pc = base + t * nsr
                    if Lx[pc + t] <= 0.0:
                        bad = 1
                        bad_col = s + t
                        break
                    for a in range(t, w):
                        Ldd[a + t * w] = Lx[pc + a]
                    for a in range(m):
                        Lh[a + t * m] = Lx[pc + w + a]
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
                    q = spi[J] + w                  # R = ss[q : q + m]
                    g1 = 0                          # end of the current ancestor group
                    K = -1
                    sK = eK = pK = mK = nsrK = 0
                    b0 = 0
                    while b0 < m:
                        b1 = b0 + pbuf
                        if b1 > m:
                            b1 = m
                        nb = b1 - b0
                        ld = m - b0
                        for b in range(b0, b1):
                            c = ss[q + b]
                            if b >= g1:
                                # a new ancestor supernode K holds rows R[b:g1]
                                K = sn_of[c]
                                sK = sup[K]
                                eK = sup[K + 1]
                                nsrK = spi[K + 1] - spi[K]
                                pK = spi[K] + (eK - sK)         # K's rows below its block
                                mK = spi[K + 1] - pK
                                g1 = b
                                while g1 < m and ss[q + g1] < eK:
                                    g1 += 1
                                lo = 0
                                for a in range(g1, m):
                                    r = ss[q + a]
                                    hi = mK
                                    while lo < hi:
                                        mid = (lo + hi) // 2
                                        if ss[pK + mid] < r:
                                            lo = mid + 1
                                        else:
                                            hi = mid
                                    if lo >= mK or ss[pK + lo] != r:
                                        bad = 2
                                        bad_col = s
                                        break
                                    relpos[a] = lo
                                if bad:
                                    break
                            # Z[c, c] of column c inside K's block
                            pc = spx[K] + (c - sK) * (nsrK + 1)
                            for a in range(b, g1):
                                P[(a - b0) + (b - b0) * ld] = Zx[pc + ss[q + a] - c]
                            pc = pc + (eK - c)
                            for a in range(g1, m):
                                P[(a - b0) + (b - b0) * ld] = Zx[pc + relpos[a]]
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
                    pc = base + t * nsr
                    for a in range(t, w):
                        Zx[pc + a] = Ldd[a + t * w]
                    for a in range(m):
                        Zx[pc + w + a] = Zrd[a + t * m]
    finally:
        free(Ldd); free(Lh); free(Zrd); free(P); free(relpos)
    if bad == 1:
        raise PatternError(f"column {bad_col} of L has no positive diagonal entry")
    if bad == 2:
        raise PatternError(f"supernode at column {bad_col}: pattern not closed under elimination")
    if bad == 3:
        raise PatternError(f"supernode at column {bad_col}: singular diagonal block")
