"""Mrode's textbook Examples 4.1 (repeatability), 4.2 (common environment) and 9.2
(random regression on Legendre polynomials) at the book's known variances: random
solutions (invariant to the book's constraint on the fixed effects) to its printed
digits. JSONs copied from ../shared/reference/mrode/ (the book's printed answers)."""
import json
import pathlib

import numpy as np
import pandas as pd

import mme

DATA = pathlib.Path(__file__).parent / "data" / "mrode"


def _half_unit(d):
    """One unit of the book's last printed digit. The book rounds values it computed
    from rounded intermediates: the exact solutions differ from its printed digits by
    at most 1.006 half-units in 4.1 (pe of cow 6: −17.2285 vs −17.229) and 1.3 half-units
    in 9.2 (animal 4's intercept: 0.344565 vs 0.3445); every other value within half a
    unit. A unit still catches any error in the equations (the solutions move by
    orders of magnitude more when a term or variance is wrong)."""
    return 10.0 ** -d["printed_digits"]


def _load(name):
    d = json.loads((DATA / f"{name}.json").read_text())
    ped = mme.Pedigree.from_frame(pd.DataFrame({k: d["pedigree"][k] for k in ("id", "sire", "dam")}))
    return d, ped, pd.DataFrame(d["records"])


def _blups(fit, group, term="(Intercept)"):
    re = fit.random_effects
    return re[(re.group == group) & (re.term == term)].set_index("level")["blup"]


def test_mrode_4_1_repeatability():
    d, ped, rec = _load("mrode_4_1_repeatability")
    rec = rec.assign(hys=rec.hys.astype(str), parity=rec.parity.astype(str),
                     pe=rec.animal.astype(str))
    fit = mme.fit("fat ~ 0 + parity + hys + (1|animal) + (1|pe)", rec,
                  relmat={"animal": ped}, variances=d["variances"] | {"pe": d["variances"]["pe"]})
    tol = _half_unit(d)
    a = _blups(fit, "animal")
    for k, v in d["expected"]["animal_blup"].items():
        assert abs(a[k] - v) < tol
    pe = _blups(fit, "pe")
    for k, v in d["expected"]["pe_blup"].items():
        assert abs(pe[k] - v) < tol
    # estimable functions of the fixed effects: the means of the (parity, HYS) cells that
    # have records (HYS is nested in parity; the book's constraint HYS1 = HYS3 = 0)
    par, hys = d["expected"]["parity"], d["expected"]["hys_book_constraint"]
    cells = rec[["parity", "hys"]].drop_duplicates()
    got = fit.predict(cells, include_random=False).to_numpy()
    want = [par[int(p) - 1] + hys[int(h) - 1] for p, h in zip(cells.parity, cells.hys)]
    assert len(want) == 4
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * tol)


def test_mrode_4_2_common_environment():
    d, ped, rec = _load("mrode_4_2_common_environment")
    rec = rec.assign(litter=rec.litter.astype(str))
    fit = mme.fit("ww ~ 0 + sex + (1|animal) + (1|litter)", rec, relmat={"animal": ped},
                  variances=d["variances"])
    tol = _half_unit(d)
    fe = fit.fixed_effects["estimate"]
    for s, v in d["expected"]["sex"].items():
        assert abs(fe[f"sex{s}"] - v) < tol
    a = _blups(fit, "animal")
    for k, v in d["expected"]["animal_blup"].items():
        assert abs(a[k] - v) < tol
    lit = _blups(fit, "litter")
    for k, v in d["expected"]["litter_blup"].items():
        assert abs(lit[k] - v) < tol


def _legendre(dim, order):
    x = -1.0 + 2.0 * (np.asarray(dim, float) - 4.0) / 306.0
    P = [np.ones_like(x), x, 0.5 * (3 * x ** 2 - 1), 0.5 * (5 * x ** 3 - 3 * x),
         (35 * x ** 4 - 30 * x ** 2 + 3) / 8.0]
    return [np.sqrt((2 * k + 1) / 2.0) * P[k] for k in range(order + 1)]


def test_mrode_9_2_random_regression():
    d, ped, rec = _load("mrode_9_2_random_regression")
    phi = _legendre(rec.dim, 4)
    for k in range(5):
        rec[f"p{k}"] = phi[k]
    rec = rec.assign(htd=rec.htd.astype(str), pe=rec.animal.astype(str))
    fit = mme.fit("tdy ~ 0 + htd + p1 + p2 + p3 + p4 + (0 + p0 + p1 + p2 | animal) "
                  "+ (0 + p0 + p1 + p2 | pe)", rec, relmat={"animal": ped},
                  variances={"animal": d["G"], "pe": d["P"], "Residual": d["Residual"]})
    tol = _half_unit(d)
    re = fit.random_effects
    n = 0
    for group, key in (("animal", "animal_coef"), ("pe", "pe_coef")):
        sub = re[re.group == group]
        for level, coefs in d["expected"][key].items():
            got = [sub[(sub.term == f"p{j}") & (sub.level == level)].blup.iloc[0] for j in range(3)]
            np.testing.assert_allclose(got, coefs, rtol=0, atol=tol)
            n += 1
    assert n == 13
