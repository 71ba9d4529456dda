"""Genomic relationships (VanRaden 2008) and the single-step H^-1."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mme.breeding.genomic import (DataError, NotPositiveDefiniteError, genomic_relationship,
                         single_step_inverse)
from mme.breeding.pedigree import Pedigree, PedigreeError

from test_pedigree import simulate, tabular_A

#: Tolerances at ~10-30x what is achieved (tests/README.md); "was" is the value before 2026-12.
#: G against the element-by-element formula (double precision).
TOL_G = 2e-15                # was 1e-12; achieved 1.1e-16, margin 18x
#: H^-1 against the inverse of the dense H (a few hundred animals), and its symmetry.
TOL_HINV = 1e-13             # was 1e-9; achieved 8.0e-15, margin 12x
#: Means after tuning.
TOL_TUNE = 1e-15             # was 1e-12; achieved 0


def hand_G(M, p):
    """G_ij = sum_k (M_ik - 2 p_k)(M_jk - 2 p_k) / (2 sum_k p_k (1 - p_k)), by loops."""
    n, m = M.shape
    den = 2.0 * sum(p[k] * (1.0 - p[k]) for k in range(m))
    G = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            G[i, j] = sum((M[i, k] - 2 * p[k]) * (M[j, k] - 2 * p[k]) for k in range(m)) / den
    return G


M_SMALL = np.array([[0, 1, 2, 1, 0, 2],
                    [1, 1, 0, 2, 1, 2],
                    [2, 0, 1, 1, 1, 0],
                    [1, 2, 1, 0, 2, 1]], dtype=float)


def test_vanraden1_matches_hand_formula():
    p = M_SMALL.mean(axis=0) / 2
    G = genomic_relationship(M_SMALL)
    assert isinstance(G, np.ndarray)
    np.testing.assert_allclose(G, hand_G(M_SMALL, p), rtol=0, atol=TOL_G)
    # with given (base-population) frequencies
    p0 = np.array([0.3, 0.5, 0.4, 0.45, 0.2, 0.6])
    np.testing.assert_allclose(genomic_relationship(M_SMALL, allele_freq=p0),
                               hand_G(M_SMALL, p0), rtol=0, atol=TOL_G)


def test_dataframe_ids_and_frequency_alignment():
    cols = [f"snp{k}" for k in range(6)]
    df = pd.DataFrame(M_SMALL, index=[10, 11, "a", 13], columns=cols)
    p0 = pd.Series([0.3, 0.5, 0.4, 0.45, 0.2, 0.6], index=cols)
    G = genomic_relationship(df, allele_freq=p0.iloc[::-1])  # aligned by marker name
    assert list(G.index) == ["10", "11", "a", "13"] and list(G.columns) == list(G.index)
    np.testing.assert_allclose(G.to_numpy(), hand_G(M_SMALL, p0.to_numpy()), rtol=0, atol=TOL_G)


def test_blending_and_tuning():
    p = M_SMALL.mean(axis=0) / 2
    G0 = hand_G(M_SMALL, p)
    w = 0.1
    np.testing.assert_allclose(genomic_relationship(M_SMALL, blend=w),
                               (1 - w) * G0 + w * np.eye(4), rtol=0, atol=TOL_G)
    A22 = np.array([[1.0, 0.25, 0.0, 0.125], [0.25, 1.0, 0.0, 0.25],
                    [0.0, 0.0, 1.0, 0.5], [0.125, 0.25, 0.5, 1.125]])
    np.testing.assert_allclose(genomic_relationship(M_SMALL, blend=w, A22=A22),
                               (1 - w) * G0 + w * A22, rtol=0, atol=TOL_G)
    Gt = genomic_relationship(M_SMALL, A22=A22, tune="diag-offdiag")
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose([np.diag(Gt).mean(), Gt[off].mean()],
                               [np.diag(A22).mean(), A22[off].mean()], rtol=0, atol=TOL_TUNE)
    Gm = genomic_relationship(M_SMALL, A22=A22, tune="mean")
    np.testing.assert_allclose(Gm.mean(), A22.mean(), rtol=0, atol=TOL_TUNE)
    np.testing.assert_allclose(Gm - G0, Gm[0, 0] - G0[0, 0], rtol=0, atol=TOL_G)
    with pytest.raises(DataError, match="needs A22"):
        genomic_relationship(M_SMALL, tune="mean")


def test_bad_genotypes():
    bad = M_SMALL.copy()
    bad[2, 3] = 3
    with pytest.raises(DataError, match="row 2, marker column 3"):
        genomic_relationship(bad)
    bad[2, 3] = np.nan
    with pytest.raises(DataError, match="impute"):
        genomic_relationship(bad)
    with pytest.raises(DataError, match="monomorphic"):
        genomic_relationship(np.full((3, 4), 2.0))
    with pytest.raises(DataError, match="method"):
        genomic_relationship(M_SMALL, method="yang")


# ------------------------------------------------------------------------ single step
@pytest.fixture(scope="module")
def small_ss():
    df, _ = simulate(n_gen=3, per_gen=60, n_founders=40, seed=5)
    ped = Pedigree.from_frame(df)
    A = tabular_A(ped.sire, ped.dam)
    rng = np.random.default_rng(2)
    gi = np.sort(rng.choice(np.arange(40, ped.n), size=30, replace=False))
    ids = ped.ids[gi]
    M = pd.DataFrame(rng.integers(0, 3, size=(30, 400)).astype(float), index=ids)
    return ped, A, gi, M


def test_single_step_inverse_equals_dense(small_ss):
    ped, A, gi, M = small_ss
    G = genomic_relationship(M, blend=0.05, A22=ped)
    Gm = G.to_numpy()
    # dense H (Legarra et al. 2009), genotyped animals in block 2
    n = ped.n
    ng = np.setdiff1d(np.arange(n), gi)
    A11, A12 = A[np.ix_(ng, ng)], A[np.ix_(ng, gi)]
    A22 = A[np.ix_(gi, gi)]
    np.testing.assert_allclose(genomic_relationship(M, blend=0.05, A22=A22).to_numpy(), Gm,
                               rtol=0, atol=TOL_G)  # A22 from the Pedigree is right
    A22i = np.linalg.inv(A22)
    D = Gm - A22
    H = np.empty((n, n))
    H[np.ix_(ng, ng)] = A11 + A12 @ A22i @ D @ A22i @ A12.T
    H[np.ix_(ng, gi)] = A12 + A12 @ A22i @ D
    H[np.ix_(gi, ng)] = (A12 + A12 @ A22i @ D).T
    H[np.ix_(gi, gi)] = Gm
    Hinv = single_step_inverse(ped, G)
    assert sp.isspmatrix_csc(Hinv) and Hinv.shape == (n, n)
    np.testing.assert_allclose(Hinv.toarray(), Hinv.T.toarray(), rtol=0, atol=TOL_HINV)
    np.testing.assert_allclose(Hinv.toarray(), np.linalg.inv(H), rtol=0, atol=TOL_HINV)
    # shuffled G with explicit ids gives the same H^-1
    perm = np.random.default_rng(0).permutation(len(gi))
    Gs = G.iloc[perm, perm]
    np.testing.assert_allclose(single_step_inverse(ped, Gs.to_numpy(), Gs.index).toarray(),
                               Hinv.toarray(), rtol=0, atol=TOL_HINV)


def test_not_positive_definite_G_raises(small_ss):
    ped, _, _, M = small_ss
    G = genomic_relationship(M)  # centred on its own frequencies: singular
    with pytest.raises(NotPositiveDefiniteError, match="blend"):
        single_step_inverse(ped, G)


def test_genotyped_not_in_pedigree(small_ss):
    ped, _, _, M = small_ss
    G = genomic_relationship(M, blend=0.05)
    G.index = G.columns = ["nobody"] + list(G.index[1:])
    with pytest.raises(PedigreeError, match="'nobody'"):
        single_step_inverse(ped, G)
