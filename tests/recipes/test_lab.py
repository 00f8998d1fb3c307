from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nanoxtal import tem
from nanoxtal.recipes.lab import (
    Lab,
    LabelSettings,
    LabError,
    check_lab,
    label_samples,
    read_lab,
    write_example_lab,
)
from nanoxtal.tem.simulate import SHAPE_CLASSES

RECIPE = {
    "product": "PbSe",
    "reaction_temperature_c": 140,
    "time_min": 5,
    "reagents": "PbO; Se; ODE; OLA; TOP; OA",
    "amounts_mmol": "5; 5; 46.9; 5.0; 5.6; 22.2",
}


def write_lab(root, rows, folders=None, pixel_sizes=None):
    """A lab folder: recipes.csv from ``rows``, one dummy micrograph per folder."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "recipes.csv", index=False)
    for folder in folders if folders is not None else [row["sample"] for row in rows]:
        (root / "micrographs" / folder).mkdir(parents=True, exist_ok=True)
        (root / "micrographs" / folder / "a.png").write_bytes(b"")
    if pixel_sizes is not None:
        (root / "pixel_sizes.csv").write_text(pixel_sizes)
    return root


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example lab, measured with the classical baseline (no trained network needed)."""
    root = tmp_path_factory.mktemp("lab") / "example"
    truth = write_example_lab(root)
    lab = read_lab(root)
    measured = [tem.measure_images(files, model="classical") for files in lab.micrographs.values()]
    samples = pd.concat([m.samples for m in measured], ignore_index=True)
    summary = pd.concat([m.summary for m in measured], ignore_index=True)
    return lab, truth.set_index("sample"), samples, summary


def test_example_lab_labels_are_within_5_percent_of_the_truth(example):
    lab, truth, samples, summary = example
    labelled, rejects = label_samples(lab, samples, summary, SHAPE_CLASSES)
    assert set(labelled["sample"]) == {"cspbbr3-cubes", "inp-triangles", "cu2s-hexagons"}
    for row in labelled.itertuples():
        true = truth.loc[row.sample]
        assert row.size_nm == pytest.approx(true["mean_diameter_nm"], rel=0.05), row.sample
        assert row.shape == true["shape"] and row.particle_count >= 100
        assert row.pixel_size_source == "scale_bar" and row.doi == "lab:example"
        assert SHAPE_CLASSES[row.shape_class] == row.shape and row.recipe_id < 0
    cubes = labelled.set_index("sample").loc["cspbbr3-cubes"]
    assert cubes["measured_minus_given_nm"] == pytest.approx(cubes["size_nm"] - 10.5)
    assert rejects[["sample", "reason"]].values.tolist() == [["pbse-few", "too few particles"]]


def test_example_lab_refuses_to_overwrite(example):
    lab = example[0]
    with pytest.raises(FileExistsError, match="already holds a lab"):
        write_example_lab(lab.root)


def _lab(samples: list[str]) -> Lab:
    rows = [{"sample": s, "recipe_id": s, **RECIPE, "given_size_nm": math.nan} for s in samples]
    return Lab("demo", None, pd.DataFrame(rows), {s: [] for s in samples})  # type: ignore[arg-type]


def _measured(sample, count=150, share=0.9, support=0.95, unit="nm", failed=0, error=None) -> dict:
    return {
        "sample": sample,
        "images": 2,
        "images_failed": failed,
        "count": count,
        "count_measured": count,
        "mean_diameter": 8.0,
        "std_diameter": 0.8,
        "size_distribution_pct": 10.0,
        "dominant_shape": "cube",
        "dominant_shape_share": share,
        "dominant_shape_support": support,
        "diameter_unit": unit,
        "error": error,
    }


def test_each_reason_a_sample_keeps_no_label():
    names = ["good", "cut", "few", "nopixel", "failed", "mixed", "unmeasured"]
    samples = pd.DataFrame(
        [
            _measured("good"),
            # Under half of the particles' own classes, but supported by most (rods cut in
            # pieces): a clear shape.
            _measured("cut", share=0.4, support=0.9),
            _measured("few", count=40),
            _measured("nopixel", unit="px"),
            _measured("failed", failed=1),
            _measured("mixed", share=0.5, support=0.45),
        ]
    )
    summary = pd.DataFrame(
        {"sample": names[:6], "pixel_size_source": ["scale_bar", "user", "user", "none", "x", "y"]}
    )
    settings = LabelSettings(min_particles=100, min_shape_support=0.5)
    labelled, rejects = label_samples(_lab(names), samples, summary, SHAPE_CLASSES, settings)
    assert labelled["sample"].tolist() == ["good", "cut"]
    assert labelled["shape"].tolist() == ["cube"] * 2 and labelled["size_nm"].tolist() == [8.0] * 2
    assert labelled["dominant_shape_support"].tolist() == [0.95, 0.9]
    reasons = dict(zip(rejects["sample"], rejects["reason"], strict=True))
    assert reasons == {
        "few": "too few particles",
        "nopixel": "no pixel size",
        "failed": "failed images",
        "mixed": "no clear dominant shape",
        "unmeasured": "not measured",
    }
    details = rejects.set_index("sample")["detail"]
    assert "40 measured < 100" in details["few"]
    assert details["mixed"] == "45% of the particles support cube < 50%"


def test_malformed_sheets_name_file_row_and_column(tmp_path):
    good = {"sample": "s1", **RECIPE}
    cases = {
        "column 'colour': unknown column": [{**good, "colour": "red"}],
        "row 2, column 'reagents': unknown chemical": [{**good, "reagents": "PbO; Unobtanium"}],
        "row 2, column 'time_min': not a number": [{**good, "time_min": "five"}],
        "row 3, column 'sample': 's1' appears twice": [good, good],
        "row 2, column 'size_nm': not a number": [{**good, "size_nm": "big"}],
        "row 2, column 'shape': 'blob' is not a shape class": [{**good, "shape": "blob"}],
    }
    for number, (message, rows) in enumerate(cases.items()):
        root = write_lab(tmp_path / f"lab{number}", rows)
        with pytest.raises(LabError, match=message.replace("(", r"\(")) as caught:
            read_lab(root)
        assert str(root / "recipes.csv") in str(caught.value), message
    # A sample without micrographs, and micrographs of no sample, both named.
    root = write_lab(tmp_path / "folders", [good], folders=["other"])
    with pytest.raises(LabError) as caught:
        read_lab(root)
    assert "row 2, column 'sample': no micrographs in" in str(caught.value)
    assert f"{root / 'micrographs' / 'other'}: micrographs of no sample" in str(caught.value)
    assert len(caught.value.problems) == 2  # every problem at once
    root = write_lab(tmp_path / "pixels", [good], pixel_sizes="sample,nm_per_px\ns1,-1\ns9,0.5\n")
    with pytest.raises(LabError) as caught:
        read_lab(root)
    assert "pixel_sizes.csv, row 2, column 'nm_per_px': must be > 0" in str(caught.value)
    assert "row 3, column 'sample': 's9' is not a sample" in str(caught.value)
    with pytest.raises(LabError, match=r"no recipes\.csv or recipes\.xlsx"):
        read_lab(tmp_path / "empty")


def test_a_valid_sheet_reads_with_pixel_sizes(tmp_path):
    rows = [{"sample": "s1", **RECIPE, "size_nm": 6.5}, {"sample": "s2", **RECIPE}]
    lab = read_lab(write_lab(tmp_path / "ok", rows, pixel_sizes="sample,nm_per_px\ns2,0.25\n"))
    assert lab.name == "ok" and lab.nm_per_px == {"s2": 0.25}
    assert lab.recipes["sample"].tolist() == ["s1", "s2"]
    assert lab.recipes["given_size_nm"].tolist()[0] == 6.5
    assert np.isnan(lab.recipes["given_size_nm"].tolist()[1])
    assert lab.recipes["reagents"].iloc[0] == ["PbO", "Se", "ODE", "OLA", "TOP", "OA"]


def test_check_puts_predictions_beside_measurements():
    labelled = pd.DataFrame(
        {
            "lab": ["demo"] * 3,
            "sample": ["a", "b", "c"],
            "product": ["PbSe"] * 3,
            "size_nm": [8.0, 8.0, 4.0],
            "shape": ["cube", "sphere", "cube"],
        }
    )
    predictions = pd.DataFrame(
        {
            "predicted_size_nm": [8.5, 12.0, 4.0],
            "predicted_size_std_nm": [0.5, 1.0, 0.1],
            "predicted_shape": ["cube", "cube", "cube"],
            "p_cube": [0.8, 0.7, 0.6],
            "p_sphere": [0.2, 0.3, 0.4],
        }
    )
    check, metrics = check_lab(predictions, labelled)
    assert check["within_2std"].tolist() == [True, False, True]
    assert check["p_measured_shape"].tolist() == [0.8, 0.3, 0.6]
    assert metrics == {
        "samples": 3,
        "size_mae_nm": pytest.approx(1.5),
        "size_within_2std": pytest.approx(2 / 3),
        "shape_accuracy": pytest.approx(2 / 3),
    }
