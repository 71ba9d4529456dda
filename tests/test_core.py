"""The compiled selected inverse against numpy.linalg.inv (dense reference)."""
import functools

import numpy as np
import pytest
import scipy.sparse as sp
from sksparse.cholmod import analyze

from mme import _core

#: Takahashi's recurrences vs a dense inverse on well-conditioned SPD matrices (entries of
#: the inverse <= 0.5); tests/README.md: ~10-30x what is achieved
ATOL_SELINV = 3e-14          # was 1e-10; achieved 1.8e-15, margin 16x


def _spd(n, density, seed):
    A = sp.random(n, n, density=density, random_state=seed)
    return (A @ A.T + sp.identity(n) * 2.0).tocsc()


@functools.lru_cache(maxsize=None)
def _dense_inverse(n, density, seed):
    """numpy.linalg.inv of _spd(n, density, seed), computed once for all the orderings,
    modes and block sizes that use the same matrix."""
    return np.linalg.inv(_spd(n, density, seed).toarray())


@pytest.mark.parametrize("ordering", ["natural", "amd", "metis"])
@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("n,density,seed", [(7, 0.3, 0), (120, 0.03, 1), (600, 0.006, 2)])
def test_selected_inverse_matches_dense(n, density, seed, ordering, mode):
    A = _spd(n, density, seed)
    f = analyze(sp.tril(A).tocsc(), mode=mode, ordering_method=ordering)
    f.cholesky_inplace(sp.tril(A).tocsc())
    L = f.L()
    L.sort_indices()
    Zx = np.empty_like(L.data)
    _core.selected_inverse(L.indptr, L.indices, L.data, Zx)
    P = f.P()
    dense = _dense_inverse(n, density, seed)[np.ix_(P, P)]
    coo = sp.csc_matrix((Zx, L.indices, L.indptr), shape=L.shape).tocoo()
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], atol=ATOL_SELINV, rtol=0)
    # every entry of A's own pattern is covered (what the REML traces need)
    Ap = sp.tril(A[np.ix_(P, P)]).tocoo()
    pos = np.empty(Ap.nnz, dtype=np.int64)
    _core.csc_positions(L.indptr, L.indices, Ap.row.astype(np.int64), Ap.col.astype(np.int64), pos)
    assert (pos >= 0).all()


def test_selected_inverse_rejects_a_broken_pattern():
    # column 0 claims rows 1 and 2 but column 1 lacks row 2: not a Cholesky pattern
    indptr = np.array([0, 3, 4, 5], dtype=np.int32)
    indices = np.array([0, 1, 2, 1, 2], dtype=np.int32)
    Lx = np.array([2.0, 0.5, 0.5, 1.0, 1.0])
    with pytest.raises(_core.PatternError):
        _core.selected_inverse(indptr, indices, Lx, np.empty(5))


def test_csc_positions_reports_absent_entries():
    M = sp.csc_matrix(np.array([[1.0, 0], [2.0, 3.0]]))
    pos = np.empty(3, dtype=np.int64)
    _core.csc_positions(M.indptr, M.indices, np.array([0, 1, 0]), np.array([0, 0, 1]), pos)
    assert pos.tolist() == [0, 1, -1]


@pytest.mark.parametrize("ordering", ["natural", "amd", "metis"])
@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("n,density,seed", [(7, 0.3, 0), (120, 0.03, 1), (900, 0.004, 3)])
@pytest.mark.parametrize("max_width,panel,blas_min", [
    (1, 256, 4096.0),      # one column per block: the scalar recurrences in block form
    (3, 5, 0.0),           # narrow blocks, panels crossing ancestor groups, BLAS always
    (1024, 7, 1e300),      # wide blocks, plain loops always
    (1024, 256, 4096.0),   # what MME.selected_inverse uses
])
def test_supernodal_selected_inverse_matches_dense(n, density, seed, ordering, mode,
                                                   max_width, panel, blas_min):
    A = _spd(n, density, seed)
    f = analyze(sp.tril(A).tocsc(), mode=mode, ordering_method=ordering)
    f.cholesky_inplace(sp.tril(A).tocsc())
    L = f.L()
    L.sort_indices()
    sn = _core.supernodes(L.indptr, L.indices, -1, max_width)
    assert sn[0] == 0 and sn[-1] == n and (np.diff(sn) >= 1).all() and (np.diff(sn) <= max_width).all()
    Zx = np.full_like(L.data, np.nan)
    _core.selected_inverse_supernodal(L.indptr, L.indices, L.data, Zx, sn, panel, blas_min)
    P = f.P()
    dense = _dense_inverse(n, density, seed)[np.ix_(P, P)]
    coo = sp.csc_matrix((Zx, L.indices, L.indptr), shape=L.shape).tocoo()
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], atol=ATOL_SELINV, rtol=0)


def test_supernodal_with_lapack_dense_tail_matches_dense():
    """The dense trailing triangle of L as one block (LAPACK dtrtri + dlauum)."""
    from mme.engine.system import dense_tail_start, supernode_partition
    A = _spd(800, 0.01, 1)
    f = analyze(sp.tril(A).tocsc(), mode="supernodal")
    f.cholesky_inplace(sp.tril(A).tocsc())
    L = f.L()
    L.sort_indices()
    Zx = np.full_like(L.data, np.nan)
    t = dense_tail_start(L)
    assert t < 800 - 64
    sn = supernode_partition(L)
    assert sn[-2] == t and sn[-1] == 800
    _core.selected_inverse_supernodal(L.indptr, L.indices, L.data, Zx, sn)
    P = f.P()
    dense = np.linalg.inv(A.toarray())[np.ix_(P, P)]
    coo = sp.csc_matrix((Zx, L.indices, L.indptr), shape=L.shape).tocoo()
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], atol=ATOL_SELINV, rtol=0)


def test_supernodal_rejects_a_broken_pattern():
    # column 0's rows {1, 2}; column 1 holds only row 1 and column 2 is its own block:
    # row 2 is not found in column 1's structure
    indptr = np.array([0, 3, 4, 5], dtype=np.int32)
    indices = np.array([0, 1, 2, 1, 2], dtype=np.int32)
    Lx = np.array([2.0, 0.5, 0.5, 1.0, 1.0])
    sn = _core.supernodes(indptr, indices, -1, 1024)
    with pytest.raises(_core.PatternError):
        _core.selected_inverse_supernodal(indptr, indices, Lx, np.empty(5), sn)


def test_all_cores_for_large_restores_the_bundled_blas_threads():
    """The selected inverse's thread switch (``_threads.all_cores_for_large``) is scoped."""
    import threadpoolctl  # a core dependency
    from mme import _threads
    pools = _threads._pools()
    if not pools or not pools[0]:
        pytest.skip("no wheel-bundled OpenBLAS in this environment")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        before = [c.num_threads for c in pools[0]]
        with _threads.all_cores_for_large(True):
            inside = [c.num_threads for c in _threads._pools()[0]]
        after = [c.num_threads for c in _threads._pools()[0]]
        with _threads.all_cores_for_large(False):
            small = [c.num_threads for c in _threads._pools()[0]]
    assert before == after == small == [1] * len(before)
    assert inside == [_threads.available_cores()] * len(before)


def test_thread_policy_tells_cholmods_vendored_blas_from_numpy_and_scipys():
    """In mme's wheel CHOLMOD's OpenBLAS is ``mme.libs/libscipy_openblas-<hash>.so``: a name
    like SciPy's bundled copy, so only the folder says it is the second (CHOLMOD's) pool.
    The paths are those threadpoolctl reported from the wheel installed by .ci/wheel_check."""
    from mme import _threads
    site = "/venv/lib/python3.11/site-packages/"
    assert _threads._is_bundled(site + "numpy.libs/libscipy_openblas64_-32a4b2a6.so")
    assert _threads._is_bundled(site + "scipy.libs/libscipy_openblas-6cdc3b4a.so")
    assert not _threads._is_bundled(site + "mme.libs/libscipy_openblas-b396d74f.so")
    assert not _threads._is_bundled("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so")
