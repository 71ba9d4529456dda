"""Shared fixtures: the lme4 reference cases, each fitted once per session."""
import json
import pathlib

import pandas as pd
import pytest

DATA = pathlib.Path(__file__).parent / "data"
LME4 = DATA / "lme4"


def load_case(name):
    """(reference dict, DataFrame) with R's factors as ordered-like-R categoricals."""
    ref = json.loads((LME4 / f"{name}.json").read_text())
    df = pd.read_csv(LME4 / f"{name}.csv")
    factors = ref["factors"]
    factors = [factors] if isinstance(factors, str) else factors
    for c in factors:
        df[c] = pd.Categorical(df[c], categories=sorted(df[c].unique()))
    # jsonlite's auto_unbox writes one-element vectors as scalars
    for key, val in ref["fixef"].items():
        if not isinstance(val, list):
            ref["fixef"][key] = [val]
    return ref, df


_FITS = {}


@pytest.fixture(scope="session")
def lme4_fit():
    """fit(name) → (reference, mme.Fit), cached for the session."""
    import mme

    def get(name):
        if name not in _FITS:
            ref, df = load_case(name)
            _FITS[name] = (ref, mme.fit(ref["formula"], df, method=ref["method"]))
        return _FITS[name]
    return get
