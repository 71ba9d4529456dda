"""The CHOLMOD binding of ``mme._core`` (``engine/cholesky.py``) against scikit-sparse,
an independent wrapper of the same library (the ``test`` extra): the same permutation
for the same ordering, the same factor (and L L' = P A P'), solves and
log-determinant, on random SPD systems of several sizes in both of CHOLMOD's modes
and on the MME of reference models; the selected inverse on the factor's own layout
against a dense inverse; typed errors; memory released."""
import resource

import numpy as np
import pytest
import scipy.sparse as sp

import mme
from mme import _core
from mme._errors import NotPositiveDefiniteError, OptionError
from mme.engine.cholesky import Cholesky
from mme.examples.rcbd import load_kfert
from sksparse import cholmod

from conftest import _mrode

#: L vs scikit-sparse's L (same library, same ordering), relative to max|L|: achieved
#: 0 (supernodal) to 4e-16 (simplicial: LDL' converted to LL' in another order)
RTOL_FACTOR = 1e-13
#: ‖L L' − P A P'‖max / ‖A‖max: achieved ~2e-16
RTOL_RECONSTRUCT = 1e-13
#: solves vs scikit-sparse, relative to max|x|: achieved 0 to ~1e-15
RTOL_SOLVE = 1e-12
#: log det vs scikit-sparse (absolute, |log det| up to ~1e4): achieved ≤ 7e-12
ATOL_LOGDET = 1e-9
#: selected inverse vs the dense inverse, relative to max|A⁻¹|: achieved ~1e-15
RTOL_SELINV = 1e-11

SIZES = [(40, 0.08), (300, 0.01), (2000, 0.003)]
ORDERINGS = ["amd", "metis", "nesdis", "natural", "default", "colamd", "best"]
#: every ordering in every mode at n = 300; the orderings mme uses at the other sizes
CASES = ([(300, 0.01, o, m) for o in ORDERINGS for m in ("simplicial", "supernodal", "auto")]
         + [(40, 0.08, o, m) for o in ("amd", "metis", "default")
            for m in ("simplicial", "supernodal")]
         + [(2000, 0.003, o, "supernodal") for o in ("amd", "metis", "default")]
         + [(2000, 0.003, "amd", "simplicial")])


def _spd(n, density, seed):
    rng = np.random.default_rng(seed)
    M = sp.random(n, n, density=density, random_state=rng, format="csc")
    A = (M @ M.T + sp.identity(n) * (1.0 + n * density)).tocsc()
    lower = sp.tril(A).tocsc()
    lower.sort_indices()
    return A, lower


def _both(lower, ordering, mode):
    ours = Cholesky(lower, ordering, mode)
    ours.factorize(lower)
    theirs = cholmod.analyze(lower, mode=mode, ordering_method=ordering)
    theirs.cholesky_inplace(lower)
    return ours, theirs


@pytest.mark.parametrize("n,density,ordering,mode", CASES)
def test_random_spd_against_scikit_sparse(n, density, ordering, mode):
    A, lower = _spd(n, density, seed=n)
    ours, theirs = _both(lower, ordering, mode)
    np.testing.assert_array_equal(ours.perm, theirs.P())
    if mode != "auto":
        assert ours.is_supernodal == (mode == "supernodal")
    L = ours.L()
    Lref = theirs.L()
    scale = abs(Lref).max()
    assert abs(L - Lref).max() <= RTOL_FACTOR * scale
    p = ours.perm
    PAP = A[p][:, p]
    assert abs(L @ L.T - PAP).max() <= RTOL_RECONSTRUCT * abs(A).max()
    assert abs(ours.logdet() - theirs.logdet()) <= ATOL_LOGDET
    rng = np.random.default_rng(1)
    b = rng.standard_normal((n, 3))
    for system, ref in (("A", theirs.solve_A(b)), ("L", theirs.solve_L(b, False)),
                        ("Lt", theirs.solve_Lt(b, False)), ("P", theirs.apply_P(b)),
                        ("Pt", theirs.apply_Pt(b))):
        x = ours.solve(b, system)
        assert np.abs(x - ref).max() <= RTOL_SOLVE * max(np.abs(ref).max(), 1.0), system
    x1 = ours.solve(b[:, 0])
    assert x1.shape == (n,) and np.abs(x1 - theirs.solve_A(b[:, 0])).max() <= (
        RTOL_SOLVE * np.abs(x1).max())


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("n,density", SIZES)
def test_selected_inverse_on_the_factor_layout(n, density, mode):
    A, lower = _spd(n, density, seed=n + 1)
    f = Cholesky(lower, "amd", mode)
    f.factorize(lower)
    Z = f.selected_inverse()
    assert Z.shape == (f.value_count,)
    Ainv = np.linalg.inv(A.toarray())
    r, c = lower.nonzero()
    got = Z[f.slots(r, c)]
    assert np.abs(got - Ainv[r, c]).max() <= RTOL_SELINV * np.abs(Ainv).max()
    # either triangle addresses the same slot
    np.testing.assert_array_equal(f.slots(r, c), f.slots(c, r))


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
def test_selected_inverse_buffer_is_refilled_after_refactorization(mode):
    """The output buffer is reused from call to call (no fresh pages each REML round):
    after a refactorization at other values it holds the new inverse, not the old."""
    A, lower = _spd(400, 0.01, seed=11)
    f = Cholesky(lower, "amd", mode)
    r, c = lower.nonzero()
    f.factorize(lower)
    first = f.selected_inverse()
    z1 = first[f.slots(r, c)].copy()
    f.factorize(lower, beta=3.0)
    second = f.selected_inverse()
    assert second is first
    Binv = np.linalg.inv(A.toarray() + 3.0 * np.eye(400))
    got = second[f.slots(r, c)]
    assert np.abs(got - Binv[r, c]).max() <= RTOL_SELINV * np.abs(Binv).max()
    assert np.abs(z1 - got).max() > 1e3 * RTOL_SELINV * np.abs(Binv).max()


def test_beta_shift_and_refactorization():
    A, lower = _spd(300, 0.01, seed=5)
    f = Cholesky(lower, "amd")
    g = cholmod.analyze(lower, ordering_method="amd")
    for beta in (0.0, 2.5, 0.0):
        f.factorize(lower, beta=beta)
        g.cholesky_inplace(lower, beta=beta)
        assert abs(f.logdet() - g.logdet()) <= ATOL_LOGDET
    shifted = sp.tril(A + 2.5 * sp.identity(300)).tocsc()
    f2 = Cholesky(shifted, "amd")
    f2.factorize(shifted)
    f.factorize(lower, beta=2.5)
    assert abs(f.logdet() - f2.logdet()) <= ATOL_LOGDET


@pytest.mark.parametrize("case", ["rcbd", "mrode_3_1"])
@pytest.mark.parametrize("ordering", ["amd", "metis", "default", "natural"])
def test_reference_mme_against_scikit_sparse(case, ordering):
    if case == "rcbd":
        system = mme.build_mme(mme.build_design("yield ~ K2O_lbac + (1|rep)", load_kfert()),
                               ordering=ordering)
        theta = np.array([0.3, 0.2])
    else:
        ex, ped, data, _ = _mrode()
        system = mme.build_mme(mme.build_design("wwg ~ 0 + sex + (1|id)", data,
                                                relmat={"id": ped}), ordering=ordering)
        theta = np.array([ex["variances"]["id"], ex["variances"]["Residual"]])
    system.ensure(theta)
    C = system.C
    theirs = cholmod.analyze(C, ordering_method=ordering)
    theirs.cholesky_inplace(C)
    np.testing.assert_array_equal(system.factor.perm, theirs.P())
    assert abs(system.logdet() - theirs.logdet()) <= ATOL_LOGDET
    b = np.arange(1.0, system.dim + 1.0)
    ref = theirs.solve_A(b)
    assert np.abs(system.solve(b) - ref).max() <= RTOL_SOLVE * np.abs(ref).max()
    full = (C + C.T - sp.diags(C.diagonal())).toarray()
    Cinv = np.linalg.inv(full)
    on_C, _ = system.cinv_on_pattern()
    r, c = system.pattern_rows, system.pattern_cols
    assert np.abs(on_C - Cinv[r, c]).max() <= RTOL_SELINV * np.abs(Cinv).max()


def test_not_positive_definite_names_the_column():
    A = sp.csc_matrix(np.array([[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]))
    lower = sp.tril(A).tocsc()
    f = Cholesky(lower, "natural")
    with pytest.raises(NotPositiveDefiniteError, match="column 1 of the permuted matrix: "
                                                       "row/column 1 of the matrix"):
        f.factorize(lower)
    with pytest.raises(mme.MMEError):          # no values: a typed error, not a crash
        f.logdet()
    good = sp.tril(A + sp.identity(3)).tocsc()
    f.factorize(good)                          # the same factor recovers
    assert abs(f.logdet() - np.linalg.slogdet((A + sp.identity(3)).toarray())[1]) < 1e-12


def test_bad_options_are_typed_errors():
    _, lower = _spd(40, 0.08, seed=1)
    with pytest.raises(OptionError, match="ordering 'amdx'"):
        Cholesky(lower, "amdx")
    with pytest.raises(OptionError, match="mode 'fast'"):
        Cholesky(lower, "amd", "fast")
    f = Cholesky(lower, "amd")
    f.factorize(lower)
    with pytest.raises(OptionError, match="system 'D'"):
        f.solve(np.ones(40), "D")
    with pytest.raises(mme.MMEError):
        f.factorize(lower.data[:-1])


def test_free_is_deterministic_and_200_factorizations_do_not_leak():
    _, lower = _spd(600, 0.01, seed=3)
    n = lower.shape[0]

    def cycle():
        f = Cholesky(lower, "amd", "supernodal")
        f.factorize(lower)
        f.selected_inverse()
        f.solve(np.ones(n))
        values = f.value_count
        f.free()
        with pytest.raises(mme.MMEError, match="freed"):
            f.logdet()
        return values

    per_cycle = 8 * cycle()                  # bytes of the factor's values alone
    for _ in range(20):
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(200):
        cycle()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # leaking the values of one factor per cycle would raise the peak by 200 * per_cycle
    assert (after - before) * 1024 < 0.1 * 200 * per_cycle


def test_versions_from_header_and_library():
    header, library = _core.cholmod_versions()
    assert header[0][0] >= 5 and library[0][0] >= 5
    assert header[1][0] == library[1][0]        # same CHOLMOD major as compiled against
    from mme.methods import suitesparse_version
    assert suitesparse_version() == (f"SuiteSparse {'.'.join(map(str, library[0]))} "
                                     f"(CHOLMOD {'.'.join(map(str, library[1]))})")


def test_release_frees_the_factor():
    ex, ped, data, _ = _mrode()
    fit = mme.fit("wwg ~ 0 + sex + (1|id)", data, relmat={"id": ped},
                  variances=ex["variances"])
    system = fit.internals.mme
    f = system.factor
    fit.release()
    with pytest.raises(mme.MMEError, match="freed"):
        f.logdet()
