from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal.tem.batch import (
    STATISTICS_COLUMNS,
    ImageResult,
    MeasurementFolder,
    assemble,
    distinct_names,
    file_stem,
    sample_rule,
)
from nanoxtal.tem.measure import measure_particles, summarise_image


def test_table_columns_hold_every_statistic_of_summarise_image():
    empty = measure_particles(np.zeros((4, 4), dtype=np.int32), None)
    assert list(summarise_image(empty)) == list(STATISTICS_COLUMNS)


def test_names_are_distinct_and_file_safe():
    assert distinct_names(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]
    assert file_stem("Au NPs / 20 nm?") == "Au_NPs_20_nm"
    assert file_stem("..") == "_"


def test_sample_rule_reads_keywords_mappings_and_csv(tmp_path):
    assert sample_rule(None) == "folder" and sample_rule("image") == "image"
    assert sample_rule({"a.png": 1}) == {"a.png": "1"}
    sheet = tmp_path / "map.csv"
    sheet.write_text("image,sample\na.png,s1\nb.png,s1\n")
    assert sample_rule(sheet) == {"a.png": "s1", "b.png": "s1"}
    sheet.write_text("image,sample\na.png,s1\na.png,s2\n")
    with pytest.raises(ValueError, match=r"map.csv, line 3: a.png listed for s1 and s2"):
        sample_rule(str(sheet))


def _result(name: str, sample: str, labels: np.ndarray | None) -> ImageResult:
    row = {"image": f"{name}.png", "sample": sample, "segmenter": "test"}
    if labels is None:
        return ImageResult(name, sample, row | {"error": f"{name}.png: unreadable"})
    particles = measure_particles(labels, 2.0)
    row |= summarise_image(particles) | {"nm_per_px": 2.0, "error": None}
    image = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    return ImageResult(name, sample, row, particles, image, labels)


def test_assemble_pools_a_samples_images_and_keeps_failures(draw_discs):
    one = draw_discs((64, 64), [(20, 20), (40, 44)], 6)
    two = draw_discs((64, 64), [(30, 30)], 8)
    results = [_result("a", "s", one), _result("b", "s", two), _result("c", "t", None)]
    measured = assemble(results, "test", ["empty/: no images"], masks=True)
    assert measured.summary["image"].tolist() == ["a.png", "b.png", "c.png"]
    assert measured.failed == 2  # one image, one input naming none
    assert set(measured.masks) == {"a", "b"}
    assert measured.particles["image"].value_counts().to_dict() == {"a.png": 2, "b.png": 1}
    samples = measured.samples.set_index("sample")
    assert samples.loc["s", "count"] == 3 and samples.loc["s", "images"] == 2
    # Pooled particles: the sample's mean diameter is the mean over all three (nm).
    assert samples.loc["s", "mean_diameter"] == pytest.approx(
        measured.particles["diameter_nm"].mean()
    )
    assert (
        samples.loc["t", "images_failed"] == 1 and "no measured image" in samples.loc["t", "error"]
    )


def test_folder_writes_figures_tables_and_refuses_a_second_batch(tmp_path, draw_discs):
    out = tmp_path / "out"
    results = [_result("a", "s", draw_discs((64, 64), [(20, 20)], 6))]
    folder = MeasurementFolder(out)
    for result in results:
        folder.write_image(result)
    assert folder.finish(assemble(results, "test", [], masks=False)) == []
    for path in ("masks/a.png", "overlays/a.png", "histograms/a.png", "samples/s.png"):
        assert (out / path).is_file(), path
    assert pd.read_csv(out / "summary.csv")["image"].tolist() == ["a.png"]
    with pytest.raises(ValueError, match="already holds a measurement"):
        MeasurementFolder(out)
    # Replacing it with another image removes the first one's figures.
    results = [_result("b", "s", draw_discs((64, 64), [(30, 30)], 6))]
    folder = MeasurementFolder(out, overwrite=True)
    folder.write_image(results[0])
    stale = folder.finish(assemble(results, "test", [], masks=False))
    assert sorted(path.name for path in stale) == ["a.png"] * 3
    assert not (out / "masks" / "a.png").exists() and (out / "masks" / "b.png").is_file()
