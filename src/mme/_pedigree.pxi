# Pedigree kernels (inbreeding by Meuwissen & Luo 1992, A^-1 by Henderson's rules
# with Quaas' correction), included into _core.pyx. Array-only, nogil loops.
#
# Conventions shared by every kernel below: animals are numbered 0..n-1,
# ``sire[i]`` and ``dam[i]`` are the internal indices of the parents of animal
# i, -1 when unknown. Except for ``topological_generations`` (which sorts), the
# kernels require parents to be numbered before their offspring
# (sire[i] < i and dam[i] < i); this is checked, O(n), before the loops run.

from libc.math cimport log


cdef Py_ssize_t _first_unordered(const int64_t[::1] sire,
                                 const int64_t[::1] dam) noexcept nogil:
    """First animal whose parent is not numbered before it (or out of range); -1 if none."""
    cdef Py_ssize_t i, n = sire.shape[0]
    for i in range(n):
        if sire[i] >= i or dam[i] >= i or sire[i] < -1 or dam[i] < -1:
            return i
    return -1


cdef int _check_pedigree(const int64_t[::1] sire, const int64_t[::1] dam) except -1:
    cdef Py_ssize_t bad
    if dam.shape[0] != sire.shape[0]:
        raise KernelArgumentError("sire and dam must have the same length")
    with nogil:
        bad = _first_unordered(sire, dam)
    if bad >= 0:
        raise KernelArgumentError(
            f"animal {bad}: parents ({sire[bad]}, {dam[bad]}) are not numbered before it "
            "(the kernels need parents before offspring, -1 for unknown)")
    return 0


def inbreeding(const int64_t[::1] sire, const int64_t[::1] dam, double[::1] F_out):
    """Inbreeding coefficients by Meuwissen & Luo (1992).

    Parameters
    ----------
    sire, dam : (n,) int64, parents before offspring, -1 unknown.
    F_out : (n,) output, F_out[i] = inbreeding coefficient of animal i.

    Notes
    -----
    For each animal i the row i of T in A = T D T' is traced through the
    ancestors of i, each ancestor after all its descendants among them, with
    L[i] = 1 and L[s] += L[j]/2, L[d] += L[j]/2 when ancestor j is processed,
    and 1 + F_i = sum_j L[j]^2 d_j, where d_j = 1/2 - (F_s + F_d)/4 is the
    Mendelian-sampling variance factor (F of an unknown parent taken as -1, so
    3/4 - F/4 with one known parent and 1 for founders). An animal with an
    unknown parent has F = 0; consecutive full sibs share F (ML92).

    ML92 processes the ancestors in decreasing order of their number; any
    order that puts descendants first is as good, so the ancestor list here
    is bucketed by generation number (0 for founders, 1 + the larger
    generation of the parents; an ancestor's generation is smaller than its
    descendants'), an O(1) push and pop instead of a sorted list or a heap.
    Work is O(sum over animals of #ancestors + #generations), memory O(n).
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if F_out.shape[0] != n:
        raise KernelArgumentError("F_out must have length n")
    L_arr = np.zeros(n, dtype=np.float64)
    D_arr = np.empty(n, dtype=np.float64)
    G_arr = np.empty(n, dtype=np.int64)
    N_arr = np.empty(n, dtype=np.int64)
    cdef double[::1] L = L_arr
    cdef double[::1] D = D_arr
    cdef int64_t[::1] gen = G_arr
    cdef int64_t[::1] nxt = N_arr
    cdef Py_ssize_t i, size
    cdef int64_t s, d, j, ks, kd, g, cur, maxgen = 0
    cdef double fs, fd, fi, lj
    with nogil:
        for i in range(n):
            g = 0
            s = sire[i]
            d = dam[i]
            if s >= 0 and gen[s] + 1 > g:
                g = gen[s] + 1
            if d >= 0 and gen[d] + 1 > g:
                g = gen[d] + 1
            gen[i] = g
            if g > maxgen:
                maxgen = g
    H_arr = np.full(maxgen + 1, -1, dtype=np.int64)
    cdef int64_t[::1] head = H_arr
    with nogil:
        for i in range(n):
            s = sire[i]
            d = dam[i]
            fs = F_out[s] if s >= 0 else -1.0
            fd = F_out[d] if d >= 0 else -1.0
            D[i] = 0.5 - 0.25 * (fs + fd)
            if s < 0 or d < 0:
                F_out[i] = 0.0
                continue
            if i > 0 and s == sire[i - 1] and d == dam[i - 1]:
                F_out[i] = F_out[i - 1]
                continue
            fi = -1.0
            L[i] = 1.0
            j = i
            cur = gen[i] - 1
            size = 0
            while True:
                lj = L[j]
                ks = sire[j]
                kd = dam[j]
                if ks >= 0:
                    if L[ks] == 0.0:
                        nxt[ks] = head[gen[ks]]
                        head[gen[ks]] = ks
                        size = size + 1
                    L[ks] += 0.5 * lj
                if kd >= 0:
                    if L[kd] == 0.0:
                        nxt[kd] = head[gen[kd]]
                        head[gen[kd]] = kd
                        size = size + 1
                    L[kd] += 0.5 * lj
                fi += lj * lj * D[j]
                L[j] = 0.0
                if size == 0:
                    break
                while head[cur] < 0:
                    cur = cur - 1
                j = head[cur]
                head[cur] = nxt[j]
                size = size - 1
            F_out[i] = fi


def mendelian_variances(const int64_t[::1] sire, const int64_t[::1] dam,
                        const double[::1] F, double[::1] d_out):
    """Mendelian-sampling variance factors d_i and log|A| = sum_i log d_i.

    d_i = 1/2 - (F_s + F_d)/4 with both parents known, 3/4 - F_p/4 with one,
    1 for a founder; A = T D T' with D = diag(d) and T unit lower triangular,
    so log|A| = sum log d_i. Returns log|A|.
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if F.shape[0] != n or d_out.shape[0] != n:
        raise KernelArgumentError("F and d_out must have length n")
    cdef Py_ssize_t i
    cdef int64_t s, d
    cdef double fs, fd, di
    cdef double logdet = 0.0
    cdef Py_ssize_t bad = -1
    with nogil:
        for i in range(n):
            s = sire[i]
            d = dam[i]
            fs = F[s] if s >= 0 else -1.0
            fd = F[d] if d >= 0 else -1.0
            di = 0.5 - 0.25 * (fs + fd)
            if not di > 0.0:
                bad = i
                break
            d_out[i] = di
            logdet += log(di)
    if bad >= 0:
        raise KernelArgumentError(f"animal {bad}: Mendelian-sampling variance is not positive "
                         "(inbreeding of its parents >= 1?)")
    return logdet


def ainverse_triplets(const int64_t[::1] sire, const int64_t[::1] dam,
                      const double[::1] dvar, idx_t[::1] rows_out, idx_t[::1] cols_out,
                      double[::1] vals_out):
    """COO triplets of A^-1 by Henderson's rules with Quaas' (1976) correction.

    Parameters
    ----------
    sire, dam : (n,) int64, parents before offspring, -1 unknown.
    dvar : (n,) Mendelian-sampling variance factors (``mendelian_variances``).
    rows_out, cols_out, vals_out : outputs of length >= 9 n.

    Returns
    -------
    int
        Number of triplets written. Both triangles are written; duplicates
        must be summed (e.g. scipy's COO -> CSC conversion).

    Notes
    -----
    With b_i = 1/d_i, animal i adds b_i at (i,i), -b_i/2 at (i,p) and (p,i)
    for each known parent p, and b_i/4 at (p,q) for each pair of known
    parents p, q (including p = q).
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if dvar.shape[0] != n:
        raise KernelArgumentError("dvar must have length n")
    if rows_out.shape[0] < 9 * n or cols_out.shape[0] < 9 * n or vals_out.shape[0] < 9 * n:
        raise KernelArgumentError("rows_out, cols_out and vals_out need length >= 9 n")
    cdef Py_ssize_t i, k = 0
    cdef int64_t s, d
    cdef double b, h, q
    with nogil:
        for i in range(n):
            s = sire[i]
            d = dam[i]
            b = 1.0 / dvar[i]
            h = -0.5 * b
            q = 0.25 * b
            rows_out[k] = <idx_t>i
            cols_out[k] = <idx_t>i
            vals_out[k] = b
            k = k + 1
            if s >= 0:
                rows_out[k] = <idx_t>i
                cols_out[k] = <idx_t>s
                vals_out[k] = h
                rows_out[k + 1] = <idx_t>s
                cols_out[k + 1] = <idx_t>i
                vals_out[k + 1] = h
                rows_out[k + 2] = <idx_t>s
                cols_out[k + 2] = <idx_t>s
                vals_out[k + 2] = q
                k = k + 3
            if d >= 0:
                rows_out[k] = <idx_t>i
                cols_out[k] = <idx_t>d
                vals_out[k] = h
                rows_out[k + 1] = <idx_t>d
                cols_out[k + 1] = <idx_t>i
                vals_out[k + 1] = h
                rows_out[k + 2] = <idx_t>d
                cols_out[k + 2] = <idx_t>d
                vals_out[k + 2] = q
                k = k + 3
            if s >= 0 and d >= 0:
                rows_out[k] = <idx_t>s
                cols_out[k] = <idx_t>d
                vals_out[k] = q
                rows_out[k + 1] = <idx_t>d
                cols_out[k + 1] = <idx_t>s
                vals_out[k + 1] = q
                k = k + 2
    return k


def ainverse_row_counts(const int64_t[::1] sire, const int64_t[::1] dam, int64_t lo,
                        int64_t hi, int64_t[::1] counts_out):
    """Entries Henderson's rules write in each row lo..hi-1 of A^-1; O(n - lo).

    Parameters
    ----------
    sire, dam : (n,) int64, parents before offspring, -1 unknown.
    lo, hi : the rows, 0 <= lo <= hi <= n.
    counts_out : (hi - lo,) output: counts_out[r - lo] = entries written to row r
        before duplicates are summed (an upper bound on its nonzeros, and the
        room ``ainverse_rows`` needs for it).

    Notes
    -----
    Row r gets 1 + (its known parents) from animal r itself and, from each
    offspring, 2 + (1 if the offspring's other parent is known): (r, i), (r, r)
    and (r, mate). Parents are numbered before offspring, so only animals
    i >= lo write to rows >= lo: the scan starts at lo.
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if not (0 <= lo <= hi <= n):
        raise KernelArgumentError(f"rows [{lo}, {hi}) are not within 0..{n}")
    if counts_out.shape[0] != hi - lo:
        raise KernelArgumentError("counts_out must have length hi - lo")
    cdef Py_ssize_t i
    cdef int64_t s, d
    with nogil:
        for i in range(hi - lo):
            counts_out[i] = 0
        for i in range(lo, n):
            s = sire[i]
            d = dam[i]
            if i < hi:
                counts_out[i - lo] += 1 + (s >= 0) + (d >= 0)
            if s >= lo and s < hi:
                counts_out[s - lo] += 2 + (d >= 0)
            if d >= lo and d < hi:
                counts_out[d - lo] += 2 + (s >= 0)
    return 0


def ainverse_diagonal(const int64_t[::1] sire, const int64_t[::1] dam,
                      const double[::1] dvar, double[::1] diag_out):
    """diag(A^-1): b_i + sum over offspring c of b_c / 4 (b = 1/d); O(n).

    The terms are added in the order ``ainverse_rows`` sums them (the animal's
    own b_i, then its offspring in order), so the values equal the diagonal of
    ``ainverse_rows`` exactly.
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if dvar.shape[0] != n or diag_out.shape[0] != n:
        raise KernelArgumentError("dvar and diag_out must have length n")
    cdef Py_ssize_t i
    cdef int64_t s, d
    cdef double b, q
    with nogil:
        for i in range(n):
            b = 1.0 / dvar[i]
            q = 0.25 * b
            diag_out[i] = b
            s = sire[i]
            d = dam[i]
            if s >= 0:
                diag_out[s] += q
            if d >= 0:
                diag_out[d] += q
    return 0


cdef inline void _put(int64_t r, int64_t c, double v, int64_t lo, int64_t hi,
                      int64_t* pos, idx_t* cols, double* vals) noexcept nogil:
    if r >= lo and r < hi:
        cols[pos[r - lo]] = <idx_t>c
        vals[pos[r - lo]] = v
        pos[r - lo] += 1


cdef void _sort_row(idx_t* col, double* val, Py_ssize_t m, idx_t* tc,
                    double* tv) noexcept nogil:
    """Stable sort of (col, val) by col: insertion sort of runs of 16, then
    bottom-up merges through (tc, tv) (room for m entries)."""
    cdef Py_ssize_t RUN = 16
    cdef Py_ssize_t start, end, i, j, width, left, mid, right, a, b, k
    cdef idx_t c
    cdef double v
    cdef idx_t* sc = col
    cdef double* sv = val
    cdef idx_t* dc = tc
    cdef double* dv = tv
    cdef idx_t* xc
    cdef double* xv
    start = 0
    while start < m:
        end = start + RUN
        if end > m:
            end = m
        for i in range(start + 1, end):
            c = col[i]
            v = val[i]
            j = i - 1
            while j >= start and col[j] > c:
                col[j + 1] = col[j]
                val[j + 1] = val[j]
                j = j - 1
            col[j + 1] = c
            val[j + 1] = v
        start = end
    width = RUN
    while width < m:
        left = 0
        while left < m:
            mid = left + width
            if mid > m:
                mid = m
            right = left + 2 * width
            if right > m:
                right = m
            a = left
            b = mid
            k = left
            while a < mid and b < right:
                if sc[b] < sc[a]:       # ties take the left run: stable
                    dc[k] = sc[b]
                    dv[k] = sv[b]
                    b = b + 1
                else:
                    dc[k] = sc[a]
                    dv[k] = sv[a]
                    a = a + 1
                k = k + 1
            while a < mid:
                dc[k] = sc[a]
                dv[k] = sv[a]
                a = a + 1
                k = k + 1
            while b < right:
                dc[k] = sc[b]
                dv[k] = sv[b]
                b = b + 1
                k = k + 1
            left = right
        xc = sc
        sc = dc
        dc = xc
        xv = sv
        sv = dv
        dv = xv
        width = 2 * width
    if sc != col:
        for i in range(m):
            col[i] = sc[i]
            val[i] = sv[i]


def ainverse_rows(const int64_t[::1] sire, const int64_t[::1] dam, const double[::1] dvar,
                  int64_t lo, int64_t hi, int64_t[::1] indptr_inout, idx_t[::1] indices_out,
                  double[::1] vals_out):
    """Rows lo..hi-1 of A^-1 as CSR, by Henderson's rules with Quaas' correction,
    without the other rows.

    Parameters
    ----------
    sire, dam : (n,) int64, parents before offspring, -1 unknown.
    dvar : (n,) Mendelian-sampling variance factors (``mendelian_variances``).
    lo, hi : the rows, 0 <= lo <= hi <= n.
    indptr_inout : (hi - lo + 1,) int64. On entry the room of each row:
        indptr[0] = 0, indptr[r + 1] - indptr[r] = ``ainverse_row_counts`` of row
        lo + r. On exit the CSR row pointers of the result.
    indices_out, vals_out : outputs of length >= indptr_inout[hi - lo] on entry.

    Returns
    -------
    int
        nnz: the first nnz entries of indices_out/vals_out hold the rows, columns
        sorted, duplicates summed (an entry that sums to zero is kept).

    Notes
    -----
    Every animal i >= lo is scanned and its contributions (those of
    ``ainverse_triplets``, in the same order) that land in a row of the range are
    stored; each row is then sorted stably by column and its duplicates summed in
    the order of the animals. A row's values therefore do not depend on the range
    it is built in: ``ainverse_rows`` over [0, n) and over any [lo, hi) agree
    exactly on the rows they share. Work O(n - lo + entries · log(row length)),
    memory the entries of the range plus one row.
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if dvar.shape[0] != n:
        raise KernelArgumentError("dvar must have length n")
    if not (0 <= lo <= hi <= n):
        raise KernelArgumentError(f"rows [{lo}, {hi}) are not within 0..{n}")
    cdef Py_ssize_t m = hi - lo
    if indptr_inout.shape[0] != m + 1:
        raise KernelArgumentError("indptr_inout must have length hi - lo + 1")
    cdef Py_ssize_t r, i, longest = 0
    if indptr_inout[0] != 0:
        raise KernelArgumentError("indptr_inout[0] must be 0")
    for r in range(m):
        if indptr_inout[r + 1] < indptr_inout[r]:
            raise KernelArgumentError("indptr_inout must be non-decreasing")
        if indptr_inout[r + 1] - indptr_inout[r] > longest:
            longest = indptr_inout[r + 1] - indptr_inout[r]
    if indices_out.shape[0] < indptr_inout[m] or vals_out.shape[0] < indptr_inout[m]:
        raise KernelArgumentError("indices_out and vals_out need length >= indptr_inout[-1]")
    pos_arr = np.array(indptr_inout[:m], dtype=np.int64)
    cdef int64_t[::1] pos = pos_arr
    tmp_c = np.empty(max(longest, 1), dtype=np.asarray(indices_out).dtype)
    tmp_v = np.empty(max(longest, 1), dtype=np.float64)
    cdef idx_t[::1] tc = tmp_c
    cdef double[::1] tv = tmp_v
    cdef int64_t s, d, w, a, b, k
    cdef idx_t c
    cdef double bi, h, q, v
    cdef Py_ssize_t over = -1
    cdef int64_t* P = &pos[0] if m > 0 else NULL
    cdef idx_t* C = &indices_out[0] if indices_out.shape[0] > 0 else NULL
    cdef double* V = &vals_out[0] if vals_out.shape[0] > 0 else NULL
    if m == 0:
        return 0
    with nogil:
        for i in range(lo, n):
            s = sire[i]
            d = dam[i]
            # the room of each row touched by animal i (a wrong indptr must not
            # write past a row's end)
            if i < hi and P[i - lo] + 1 + (s >= 0) + (d >= 0) > indptr_inout[i - lo + 1]:
                over = i
                break
            if s >= lo and s < hi and P[s - lo] + 2 + (d >= 0) > indptr_inout[s - lo + 1]:
                over = s
                break
            if d >= lo and d < hi and P[d - lo] + 2 + (s >= 0) > indptr_inout[d - lo + 1]:
                over = d
                break
            bi = 1.0 / dvar[i]
            h = -0.5 * bi
            q = 0.25 * bi
            _put(i, i, bi, lo, hi, P, C, V)
            if s >= 0:
                _put(i, s, h, lo, hi, P, C, V)
                _put(s, i, h, lo, hi, P, C, V)
                _put(s, s, q, lo, hi, P, C, V)
            if d >= 0:
                _put(i, d, h, lo, hi, P, C, V)
                _put(d, i, h, lo, hi, P, C, V)
                _put(d, d, q, lo, hi, P, C, V)
            if s >= 0 and d >= 0:
                _put(s, d, q, lo, hi, P, C, V)
                _put(d, s, q, lo, hi, P, C, V)
    if over >= 0:
        raise KernelArgumentError(f"indptr_inout gives row {over} less room than its entries "
                                  "(use ainverse_row_counts)")
    with nogil:
        w = 0
        for r in range(m):
            a = indptr_inout[r]
            b = P[r]                    # the entries written (the room may be larger)
            _sort_row(C + a, V + a, b - a, &tc[0], &tv[0])
            indptr_inout[r] = w
            k = a
            while k < b:
                c = C[k]
                v = V[k]
                k = k + 1
                while k < b and C[k] == c:
                    v = v + V[k]
                    k = k + 1
                C[w] = c
                V[w] = v
                w = w + 1
        indptr_inout[m] = w
    return w


def topological_generations(const int64_t[::1] sire, const int64_t[::1] dam,
                            int64_t[::1] gen_out):
    """Generation numbers by Kahn's algorithm, parents in any order; O(n).

    Parameters
    ----------
    sire, dam : (n,) int64 parent indices in [0, n) or -1, in any order.
    gen_out : (n,) output: 0 for founders, 1 + max(generation of parents)
        otherwise; -1 for animals that are on a cycle or descend from one.

    Returns
    -------
    int
        Number of animals that were ordered (n when the pedigree is acyclic).
    """
    cdef Py_ssize_t n = sire.shape[0]
    if dam.shape[0] != n or gen_out.shape[0] != n:
        raise KernelArgumentError("sire, dam and gen_out must have the same length")
    ptr_arr = np.zeros(n + 1, dtype=np.int64)
    child_arr = np.empty(max(2 * n, 1), dtype=np.int64)
    indeg_arr = np.zeros(n, dtype=np.int64)
    queue_arr = np.empty(max(n, 1), dtype=np.int64)
    cdef int64_t[::1] ptr = ptr_arr
    cdef int64_t[::1] child = child_arr
    cdef int64_t[::1] indeg = indeg_arr
    cdef int64_t[::1] queue = queue_arr
    cdef Py_ssize_t i, head = 0, tail = 0
    cdef int64_t s, d, v, c, p, g
    cdef int bad = 0
    with nogil:
        for i in range(n):
            s = sire[i]
            d = dam[i]
            if s < -1 or s >= n or d < -1 or d >= n:
                bad = 1
                break
            if s >= 0:
                ptr[s + 1] += 1
                indeg[i] += 1
            if d >= 0:
                ptr[d + 1] += 1
                indeg[i] += 1
        if not bad:
            for i in range(n):
                ptr[i + 1] += ptr[i]
            # fill children; indeg is reused below, so use queue as a cursor
            for i in range(n):
                queue[i] = ptr[i]
            for i in range(n):
                s = sire[i]
                d = dam[i]
                if s >= 0:
                    child[queue[s]] = i
                    queue[s] += 1
                if d >= 0:
                    child[queue[d]] = i
                    queue[d] += 1
            for i in range(n):
                gen_out[i] = 0
                if indeg[i] == 0:
                    queue[tail] = i
                    tail = tail + 1
            while head < tail:
                v = queue[head]
                head = head + 1
                g = gen_out[v] + 1
                for p in range(ptr[v], ptr[v + 1]):
                    c = child[p]
                    if gen_out[c] < g:
                        gen_out[c] = g
                    indeg[c] -= 1
                    if indeg[c] == 0:
                        queue[tail] = c
                        tail = tail + 1
            for i in range(n):
                if indeg[i] > 0:
                    gen_out[i] = -1
    if bad:
        raise KernelArgumentError("parent index out of range")
    return tail


def mark_ancestors(const int64_t[::1] sire, const int64_t[::1] dam,
                   unsigned char[::1] mask_inout):
    """Extend a 0/1 mask of animals with all their ancestors, in place; O(n).

    Parents must be numbered before offspring. Returns the number marked.
    """
    cdef Py_ssize_t n = sire.shape[0]
    _check_pedigree(sire, dam)
    if mask_inout.shape[0] != n:
        raise KernelArgumentError("mask_inout must have length n")
    cdef Py_ssize_t i, count = 0
    with nogil:
        for i in range(n - 1, -1, -1):
            if mask_inout[i]:
                count = count + 1
                if sire[i] >= 0:
                    mask_inout[sire[i]] = 1
                if dam[i] >= 0:
                    mask_inout[dam[i]] = 1
    return count


def a_multiply(const int64_t[::1] sire, const int64_t[::1] dam, const double[::1] dvar,
               const double[:, ::1] X, double[:, ::1] Y_out):
    """Y = A X without forming A (Colleau 2002): A = T D T', T^-1 = I - P.

    Parameters
    ----------
    sire, dam : (n,) int64, parents before offspring, -1 unknown.
    dvar : (n,) Mendelian-sampling variance factors.
    X : (n, k) C-contiguous. Y_out : (n, k) output (may not alias X).

    Notes
    -----
    W = T' X by a backward pass (W_p += W_i / 2 for each parent p of i),
    W <- D W, then Y = T W by a forward pass (Y_i = W_i + (Y_s + Y_d) / 2).
    O(n k) time, no extra memory.
    """
    cdef Py_ssize_t n = sire.shape[0]
    cdef Py_ssize_t k = X.shape[1]
    _check_pedigree(sire, dam)
    if dvar.shape[0] != n or X.shape[0] != n or Y_out.shape[0] != n or Y_out.shape[1] != k:
        raise KernelArgumentError("dvar, X and Y_out must have n rows and X, Y_out the same shape")
    cdef Py_ssize_t i, c
    cdef int64_t s, d
    cdef double di
    with nogil:
        for i in range(n):
            for c in range(k):
                Y_out[i, c] = X[i, c]
        for i in range(n - 1, -1, -1):
            s = sire[i]
            d = dam[i]
            if s >= 0:
                for c in range(k):
                    Y_out[s, c] += 0.5 * Y_out[i, c]
            if d >= 0:
                for c in range(k):
                    Y_out[d, c] += 0.5 * Y_out[i, c]
        for i in range(n):
            s = sire[i]
            d = dam[i]
            di = dvar[i]
            for c in range(k):
                Y_out[i, c] *= di
            if s >= 0:
                for c in range(k):
                    Y_out[i, c] += 0.5 * Y_out[s, c]
            if d >= 0:
                for c in range(k):
                    Y_out[i, c] += 0.5 * Y_out[d, c]
