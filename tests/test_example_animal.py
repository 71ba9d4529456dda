"""The breeders' example (``python -m mme.examples.animal``) end to end."""
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from mme.examples import animal, simulate_animal_data as sim


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("animal")
    fit = animal.main(["--out", str(out)])
    return fit, out / "ebv.csv"


def test_ebv_csv(run):
    fit, path = run
    assert path.exists()
    ebv = pd.read_csv(path, dtype={"id": str, "sire": str, "dam": str})
    ped = pd.read_csv(resources.files("mme").joinpath("data/animal_pedigree.csv"), dtype=str)
    assert list(ebv.columns) == animal.EBV_COLUMNS
    assert len(ebv) == len(ped)  # one row per pedigree animal, ancestors included
    assert set(ebv["id"]) == set(ped["id"])
    assert ebv["id"].is_unique
    for col in ("ebv", "pev", "reliability", "accuracy", "inbreeding"):
        assert ebv[col].notna().all(), col
    assert ((ebv["reliability"] >= 0) & (ebv["reliability"] <= 1)).all()
    np.testing.assert_allclose(ebv["accuracy"], np.sqrt(ebv["reliability"]), rtol=1e-5, atol=1e-6)
    records = pd.read_csv(resources.files("mme").joinpath("data/animal_records.csv"))
    assert ebv["n_records"].sum() == len(records)


def test_heritability_recovered(run):
    fit, _ = run
    h2 = fit.heritability("id")
    assert 0 < h2["std_error"] < 0.2
    assert abs(h2["estimate"] - sim.TRUE_H2) < 3 * h2["std_error"]


def test_ebvs_track_true_breeding_values(run):
    _, path = run
    ebv = pd.read_csv(path)
    _, _, truth = sim.simulate()
    merged = ebv.merge(truth, on="id")
    assert len(merged) == len(ebv)
    assert np.corrcoef(merged["ebv"], merged["tbv"])[0, 1] > 0.5
    np.testing.assert_allclose(merged["inbreeding_x"], merged["inbreeding_y"], atol=1e-5)


def test_shipped_data_regenerate(tmp_path):
    p_ped, p_rec = sim.write(tmp_path)
    data = resources.files("mme").joinpath("data")
    assert p_ped.read_text() == data.joinpath("animal_pedigree.csv").read_text()
    assert p_rec.read_text() == data.joinpath("animal_records.csv").read_text()
