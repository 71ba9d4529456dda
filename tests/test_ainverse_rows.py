"""Rows of A⁻¹ without the whole matrix, and the distributed operator built from them.

* ``Pedigree.ainverse_rows(lo, hi)`` (kernel ``_core.ainverse_rows``) equals
  ``ainverse()[lo:hi]`` exactly on Mrode's Example 3.1 (every range), an inbred
  simulated pedigree and pedigrees with sires of many offspring (random ranges,
  empty ones, ranges cutting anywhere); both agree with the route before them
  (``_core.ainverse_triplets`` summed by scipy) and with the inverse of the tabular A.
* ``ainverse_row_nnz`` bounds the rows' nonzeros and counts the entries exactly;
  ``ainverse_diagonal`` is the diagonal exactly.
* ``Pedigree.from_parents``: the same A⁻¹ and inbreeding as the constructor, typed
  errors naming the animals.
* The distributed operator's rows of G⁻¹ (``ginv_rows``, cut for 1–5 ranks by a
  stand-in communicator) stack to the G⁻¹ of the route before them (whole A⁻¹, whole
  G⁻¹ = ``ginv_matrix``, then sliced), for single- and multi-trait models with and
  without a pedigree, and give the same products and diag(C).
* A relmat ``(RangeIndex(n), Pedigree.from_parents(...))`` with level positions in the
  data solves bit for bit as the pedigree with ids.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mme
from mme import _core
from mme._errors import KernelArgumentError, OptionError, PedigreeError
from mme.breeding.pedigree import Pedigree
from mme.distributed import build_local_design, world
from mme.distributed.comm import Communicator, SerialComm, _DoneRequest
from mme.distributed.operator import DistributedOperator, ginv_rows
from mme.model.covariance import ginv_matrix

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
from simulate_animal import simulate_animal  # noqa: E402
from test_pedigree import simulate, tabular_A  # noqa: E402

#: ainverse() (new kernel: a row's duplicates summed in the order of the animals) vs the
#: route before it (ainverse_triplets, duplicates summed by scipy after an unstable
#: sort), max |Δ| / max |A⁻¹|: achieved 2.8e-16 (simulated inbred), 2.5e-16 (sires of
#: hundreds of offspring): one rounding, summation order; margin 11x
RTOL_OLD_ROUTE = 3e-15
#: ainverse_rows against inv(tabular A) (dense, double precision), max |Δ| / max(1, |A⁻¹|):
#: achieved 2.4e-16 (simulated inbred), 3.7e-16 (many offspring); margin 27x
TOL_AINV_DENSE = 1e-14
#: G⁻¹ from the rows vs the whole G⁻¹ of the old route (then sliced), entries and products,
#: max |Δ| / max: achieved 0 (given K⁻¹) to 4.0e-16 (multi-trait: A⁻¹'s rounding, above);
#: the brief asks 1e-14
RTOL_PRODUCTS = 1e-14


def old_ainverse(ped: Pedigree) -> sp.csc_matrix:
    """A⁻¹ by the route before the rows: 9n COO triplets, summed by scipy."""
    n = ped.n
    d = ped.mendelian_variances.to_numpy()
    rows = np.empty(9 * n, dtype=np.int64)
    cols = np.empty(9 * n, dtype=np.int64)
    vals = np.empty(9 * n)
    k = _core.ainverse_triplets(ped.sire, ped.dam, d, rows, cols, vals)
    A = sp.csc_matrix((vals[:k], (rows[:k], cols[:k])), shape=(n, n))
    A.sum_duplicates()
    A.sort_indices()
    return A, k


def assert_same_csr(A: sp.csr_matrix, B: sp.csr_matrix) -> None:
    """Bit for bit: shape, row pointers, columns, values."""
    A, B = sp.csr_matrix(A), sp.csr_matrix(B)
    assert A.shape == B.shape
    B.sort_indices()
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    assert np.array_equal(A.data, B.data)      # exact, zeros and signs included


def many_offspring(n_sires=4, n_dams=60, n_off=900, seed=3) -> Pedigree:
    """Founders, then offspring of a few sires (rows of hundreds of entries, the merge
    sort's path), some by their own daughters (inbred), 5% unknown parents."""
    rng = np.random.default_rng(seed)
    f = n_sires + n_dams
    sire = np.full(f + n_off, -1)
    dam = np.full(f + n_off, -1)
    for i in range(f, f + n_off):
        sire[i] = rng.integers(0, n_sires)
        daughters = [j for j in range(f, i) if sire[j] == sire[i] and j % 2 == 0]
        if daughters and rng.random() < 0.2:
            dam[i] = daughters[rng.integers(len(daughters))]
        else:
            dam[i] = n_sires + rng.integers(0, n_dams)
        if rng.random() < 0.05:
            sire[i] = -1
        if rng.random() < 0.05:
            dam[i] = -1
    # daughters used as dams are never sires: sires are 0 … n_sires − 1 only
    return Pedigree.from_parents(sire, dam)


@pytest.fixture(scope="module")
def mrode():
    with open(os.path.join(HERE, "data", "mrode_3_1.json")) as fh:
        data = json.load(fh)
    return Pedigree.from_frame(pd.DataFrame(data["pedigree"])), data


@pytest.fixture(scope="module")
def inbred():
    df, counts = simulate()
    assert counts["full-sib"] > 0 and counts["parent-offspring"] > 0
    return Pedigree.from_frame(df)


@pytest.fixture(scope="module")
def big_rows():
    return many_offspring()


# ------------------------------------------------------------------ the kernel, exact
def test_mrode_every_range_equals_ainverse(mrode):
    ped, data = mrode
    full = ped.ainverse()
    np.testing.assert_allclose(full.toarray(), np.array(data["expected"]["A_inverse"]),
                               rtol=0, atol=1e-14)
    full_r = full.tocsr()
    for lo in range(ped.n + 1):
        for hi in range(lo, ped.n + 1):
            R = ped.ainverse_rows(lo, hi)
            assert isinstance(R, sp.csr_matrix) and R.shape == (hi - lo, ped.n)
            assert_same_csr(R, full_r[lo:hi])


@pytest.mark.parametrize("which", ["inbred", "big_rows"])
def test_random_ranges_equal_ainverse(which, request):
    ped = request.getfixturevalue(which)
    n = ped.n
    full = ped.ainverse().tocsr()
    rng = np.random.default_rng(7)
    ranges = [(0, n), (0, 0), (n, n), (n - 1, n), (0, 1), (5, 5)]
    ranges += [tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(40)]
    for lo, hi in ranges:
        assert_same_csr(ped.ainverse_rows(int(lo), int(hi)), full[lo:hi])
    # a partition into uneven blocks stacks back to the whole
    cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n, 6)]))
    parts = [ped.ainverse_rows(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
    assert_same_csr(sp.vstack(parts, format="csr"), full)


@pytest.mark.parametrize("which", ["inbred", "big_rows"])
def test_ainverse_matches_old_route_and_dense_inverse(which, request):
    ped = request.getfixturevalue(which)
    new = ped.ainverse()
    old, _ = old_ainverse(ped)
    assert new.nnz == old.nnz
    np.testing.assert_array_equal(new.indptr, old.indptr)
    np.testing.assert_array_equal(new.indices, old.indices)
    scale = abs(old).max()
    assert abs(new - old).max() <= RTOL_OLD_ROUTE * scale
    Ainv_dense = np.linalg.inv(tabular_A(ped.sire, ped.dam))
    np.testing.assert_allclose(ped.ainverse_rows(0, ped.n).toarray(), Ainv_dense, rtol=0,
                               atol=TOL_AINV_DENSE * max(1.0, abs(Ainv_dense).max()))


def test_big_rows_take_the_merge_path(big_rows):
    """The fixture must have rows longer than the insertion-sort runs (16) and several
    merge levels, or the merge sort is not tested."""
    assert big_rows.ainverse_row_nnz().max() > 8 * 16
    assert big_rows.inbreeding.max() > 0


@pytest.mark.parametrize("which", ["mrode", "inbred", "big_rows"])
def test_row_nnz_bounds_rows_and_counts_entries(which, request):
    ped = request.getfixturevalue(which)
    ped = ped[0] if isinstance(ped, tuple) else ped
    counts = ped.ainverse_row_nnz()
    nnz = np.diff(ped.ainverse().tocsr().indptr)
    assert counts.dtype == np.int64 and counts.shape == (ped.n,)
    assert np.all(counts >= nnz) and np.all(nnz >= 1)
    _, k = old_ainverse(ped)
    assert counts.sum() == k       # the entries Henderson's rules write, exactly


@pytest.mark.parametrize("which", ["mrode", "inbred", "big_rows"])
def test_diagonal_exact(which, request):
    ped = request.getfixturevalue(which)
    ped = ped[0] if isinstance(ped, tuple) else ped
    assert np.array_equal(ped.ainverse_diagonal(), ped.ainverse().diagonal())


def test_bad_ranges_are_typed_errors(mrode):
    ped, _ = mrode
    for lo, hi in [(-1, 3), (4, 3), (0, ped.n + 1), (0.0, 3), ("0", 3), (True, 3)]:
        with pytest.raises(OptionError, match="ainverse_rows"):
            ped.ainverse_rows(lo, hi)


def test_kernel_refuses_too_little_room(mrode):
    ped, _ = mrode
    d = ped.mendelian_variances.to_numpy()
    indptr = np.arange(ped.n + 1, dtype=np.int64)          # one entry per row: too few
    with pytest.raises(KernelArgumentError, match="less room"):
        _core.ainverse_rows(ped.sire, ped.dam, d, 0, ped.n, indptr,
                            np.empty(ped.n, np.int32), np.empty(ped.n))
    with pytest.raises(KernelArgumentError, match="within"):
        _core.ainverse_row_counts(ped.sire, ped.dam, 3, 2, np.empty(0, np.int64))


# ------------------------------------------------------------------------ from_parents
def test_from_parents_equals_constructor(inbred):
    ped = Pedigree.from_parents(inbred.sire.copy(), inbred.dam.copy())
    assert ped.n == inbred.n and ped._ids is None          # no id strings made yet
    assert_same_csr(ped.ainverse().tocsr(), inbred.ainverse().tocsr())
    assert np.array_equal(ped.inbreeding.to_numpy(), inbred.inbreeding.to_numpy())
    assert ped.logdet_a() == inbred.logdet_a()
    assert list(ped.ids[:3]) == ["0", "1", "2"] and ped.index_of(5) == 5


def test_from_parents_refuses_bad_pedigrees():
    with pytest.raises(PedigreeError, match="animal 1 with sire 1"):
        Pedigree.from_parents([-1, 1], [-1, -1])           # its own parent
    with pytest.raises(PedigreeError, match="animal 1 with sire 2"):
        Pedigree.from_parents([-1, 2, -1], [-1, -1, -1])   # parent after offspring
    with pytest.raises(PedigreeError, match="both as a sire and as a dam"):
        Pedigree.from_parents([-1, -1, 0, 1], [-1, -1, 1, 0])
    with pytest.raises(PedigreeError, match="integer positions"):
        Pedigree.from_parents([-1.0, 0.0], [-1, -1])
    with pytest.raises(PedigreeError, match="same length"):
        Pedigree.from_parents([-1, 0], [-1])


# ------------------------------------------------------------- the operator from rows
class _PretendRank(SerialComm):
    """Rank r of K for one process: collectives see only this rank's part (the sums
    over ranks are taken by the test)."""

    def __init__(self, rank: int, size: int):
        self.r, self.k = rank, size

    def Get_rank(self) -> int:
        return self.r

    def Get_size(self) -> int:
        return self.k

    def Iallgather(self, sendbuf, recvbuf):
        np.asarray(recvbuf).reshape(self.k, -1)[:] = np.asarray(sendbuf).reshape(1, -1)
        return _DoneRequest()

    def Iallgatherv(self, sendbuf, recvspec):
        recv, sizes, offsets = recvspec[:3]
        for o, s in zip(offsets, sizes):
            recv[o:o + s] = sendbuf
        return _DoneRequest()


def _designs():
    ped, phen, _ = simulate_animal(1500, seed=5)
    phen = phen.copy()
    ped = mme.Pedigree.from_frame(ped.astype(str))
    rng = np.random.default_rng(5)
    phen["y2"] = 0.4 * phen["y"] + rng.normal(size=len(phen))
    phen.loc[rng.random(len(phen)) < 0.2, "y2"] = np.nan
    phen["x"] = rng.normal(size=len(phen))
    levels = list(ped.ids)
    K = ped.ainverse() + sp.identity(ped.n, format="csc") * 0.01     # a given K⁻¹
    comm = world()
    return [
        ("pedigree", build_local_design("y ~ sex + (1|herd) + (1|id)", phen, comm,
                                        {"id": ped}),
         [np.array([[0.2]]), np.array([[0.4]])]),
        ("slopes", build_local_design("y ~ sex + (1 + x|herd) + (1|id)", phen, comm,
                                      {"id": ped}),
         [np.array([[0.2, 0.05], [0.05, 0.1]]), np.array([[0.4]])]),
        ("multi-trait", build_local_design(
            "cbind(y, y2) ~ 0 + trait + (0 + trait|herd) + (0 + trait|id)", phen, comm,
            {"id": ped}),
         [np.array([[0.2, 0.0], [0.0, 0.3]]), np.array([[0.4, 0.1], [0.1, 0.5]])]),
        ("given K⁻¹", build_local_design("y ~ sex + (1|herd) + (1|id)", phen, comm,
                                         {"id": (levels, K, 0.0)}),
         [np.array([[0.2]]), np.array([[0.4]])]),
    ], ped


@pytest.fixture(scope="module")
def designs():
    return _designs()


def _old_ginv(design, G0s, ped) -> sp.csr_matrix:
    """G⁻¹ by the route before the rows: the whole A⁻¹ (old kernel), the whole G⁻¹."""
    A, _ = old_ainverse(ped)
    blocks = [b if b.Kinv is not None else dataclasses.replace(b, Kinv=A)
              for b in design.blocks]
    return ginv_matrix(blocks, G0s, p=design.p)


def test_pedigree_design_keeps_no_ainverse(designs):
    cases, _ = designs
    design = cases[0][1]
    b = design.blocks[1]
    assert b.group == "id" and b.Kinv is None
    assert type(design.kinv[1]).__name__ == "PedigreeKinv"


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_ginv_rows_any_range_equal_old_route(designs, case):
    cases, ped = designs
    name, design, G0s = cases[case]
    G_old = _old_ginv(design, G0s, ped).tocsr()
    sources = design.kinv_sources()
    G0inv = [np.linalg.inv(G) for G in G0s]
    dim = design.dim
    rng = np.random.default_rng(case)
    bounds = [design.p + sum(b.q for b in design.blocks[:k]) for k in
              range(len(design.blocks) + 1)]
    ranges = [(0, dim), (0, 0), (dim, dim), (0, design.p), (design.p - 1, design.p + 2)]
    ranges += [(c - 3, c + 3) for c in bounds[1:-1]]              # across terms
    L = design.blocks[-1].n_levels
    ranges += [(bounds[-2] + L - 2, bounds[-2] + L + 2)]           # across the traits
    ranges += [tuple(sorted(rng.integers(0, dim + 1, 2))) for _ in range(20)]
    V = rng.normal(size=(dim, 3))
    scale = abs(G_old @ V).max()
    for a, b in ranges:
        a, b = int(max(a, 0)), int(min(b, dim))
        R = ginv_rows(design, sources, G0inv, a, b)
        assert R.shape == (b - a, dim), name
        old = G_old[a:b]
        if b > a:
            assert abs(R - old).max() <= RTOL_PRODUCTS * abs(G_old).max(), (name, a, b)
            assert abs(R @ V - old @ V).max() <= RTOL_PRODUCTS * scale, (name, a, b)


@pytest.mark.parametrize("case", [0, 2, 3])
@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_operator_rows_over_ranks_equal_old_route(designs, case, ranks):
    """Each pretended rank's operator: its rows stack to the old G⁻¹; Σ its G⁻¹ products
    = G⁻¹V; diag(C) and the local products as the old formula."""
    pytest.importorskip("mpi4py")     # Communicator's gather path for more than one rank
    cases, ped = designs
    name, design, G0s = cases[case]
    G_old = _old_ginv(design, G0s, ped).tocsr()
    V = np.random.default_rng(1).normal(size=(design.dim, 2))
    s2e = 0.6 if not design.multi_response else None
    R0 = np.array([[0.6, 0.1], [0.1, 0.7]]) if design.multi_response else None
    rows, total, cover = [], np.zeros_like(V), 0
    for r in range(ranks):
        comm = Communicator(_PretendRank(r, ranks), timeout=5)
        op = DistributedOperator(design, G0s, s2e if s2e else R0[0, 0], comm, ginv="split",
                                 R0=R0)
        assert op.ginv == "split" and op.rows.start == cover
        cover = op.rows.stop
        G = op.Ginv if op.Ginv is not None else sp.csr_matrix((0, design.dim))
        assert G.shape == (op.rows.stop - op.rows.start, design.dim)
        rows.append(G)
        total[op.rows] += G @ V
        # the whole data term on every pretended rank; its G⁻¹ part is its rows only
        WW = op.local_product(V)
        WW[op.rows] -= G @ V
        WR = design.W.T @ op.rinv(design.W @ V)
        assert abs(WW - WR).max() <= RTOL_PRODUCTS * abs(WR).max()
        if op.Rinv is None:
            local_diag = np.asarray(design.W.multiply(design.W).sum(axis=0)).ravel() / op.s2e
        else:
            local_diag = np.asarray(design.W.multiply(op.Rinv @ design.W).sum(axis=0)).ravel()
        local_diag[op.rows] += G_old.diagonal()[op.rows]
        np.testing.assert_allclose(op.diag, local_diag, rtol=RTOL_PRODUCTS, atol=0)
    assert cover == design.dim
    assert abs(sp.vstack(rows) - G_old).max() <= RTOL_PRODUCTS * abs(G_old).max()
    ref = G_old @ V
    assert abs(total - ref).max() <= RTOL_PRODUCTS * abs(ref).max(), name


def test_root_operator_holds_all_rows(designs):
    cases, ped = designs
    name, design, G0s = cases[0]
    op = DistributedOperator(design, G0s, 0.6, world(), ginv="root")
    G_old = _old_ginv(design, G0s, ped)
    assert op.rows == slice(0, design.dim)
    V = np.random.default_rng(2).normal(size=design.dim)
    assert abs(op.Ginv @ V - G_old @ V).max() <= RTOL_PRODUCTS * abs(G_old @ V).max()


def test_kinv_diagonal_and_quadratic(designs):
    cases, ped = designs
    name, design, G0s = cases[0]
    op = DistributedOperator(design, G0s, 0.6, world())
    assert np.array_equal(op.kinv_diagonal(1), ped.ainverse().diagonal())
    X = np.random.default_rng(3).normal(size=(design.dim, 2))
    off = design.p + design.blocks[0].q
    U = X[off:off + design.blocks[1].q]
    A, _ = old_ainverse(ped)
    ref = np.einsum("ij,ij->j", U, A @ U) / 0.4
    np.testing.assert_allclose(op.ginv_quadratic(1, X), ref, rtol=RTOL_PRODUCTS)


def test_integer_coded_pedigree_relmat_equals_pedigree_relmat():
    """relmat (RangeIndex(n), Pedigree.from_parents) with level positions in the data:
    the same solutions as the pedigree with ids (the same A⁻¹ rows, same operator)."""
    from mme.distributed import DistributedError, blup_distributed
    ped_df, phen, _ = simulate_animal(800, seed=9)
    ped = mme.Pedigree.from_frame(ped_df.astype(str))
    pos = Pedigree.from_parents(ped.sire.copy(), ped.dam.copy())
    phen = phen.copy()
    phen["id"] = phen["id"].astype(str)
    phen["pos"] = ped.index_of(phen["id"].to_numpy())
    v = {"herd": 0.2, "id": 0.4, "Residual": 0.6}
    a = blup_distributed("y ~ sex + (1|herd) + (1|id)", phen, v, relmat={"id": ped},
                         tol=1e-12)
    b = blup_distributed("y ~ sex + (1|herd) + (1|id)", phen.assign(id=phen["pos"]), v,
                         relmat={"id": (pd.RangeIndex(pos.n), pos)}, tol=1e-12)
    assert a.n_iter == b.n_iter
    assert np.array_equal(a.solution, b.solution)          # the same operations
    with pytest.raises(DistributedError, match="the pedigree has 800"):
        blup_distributed("y ~ sex + (1|herd) + (1|id)", phen.assign(id=phen["pos"]), v,
                         relmat={"id": (pd.RangeIndex(pos.n + 1), pos)})
