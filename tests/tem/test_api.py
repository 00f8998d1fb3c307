from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nanoxtal import tem
from nanoxtal.cli import main
from nanoxtal.models import ModelError
from nanoxtal.tem.api import CLASSICAL, resolve_segmenter
from nanoxtal.tem.module import Segmenter
from nanoxtal.tem.nets import UNet
from nanoxtal.tem.simulate import MicrographSettings, simulate_micrograph, write_micrograph

pytestmark = pytest.mark.usefixtures("outside_repository")


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory):
    """Two simulated micrographs (14 nm particles, 1 nm/px, sidecar and scale bar)."""
    folder = tmp_path_factory.mktemp("micrographs")
    settings = MicrographSettings(width_px=256, height_px=256, nm_per_px=1.0, diameter_nm=14)
    written = [
        write_micrograph(simulate_micrograph(settings, seed), folder, f"m{seed}") for seed in (1, 2)
    ]
    return folder, [paths["image"] for paths in written]


@pytest.fixture
def tiny_checkpoint(save_checkpoint):
    """Save an untrained U-Net as a checkpoint ``load_segmenter`` reads."""

    def save(path):
        torch.manual_seed(0)
        arch = {"width": 8, "depth": 3, "stem": 1}
        return save_checkpoint(Segmenter(UNet(**arch), {"name": "unet", **arch}), path)

    return save


def test_measure_images_gives_the_tables_the_cli_writes(micrographs, tmp_path):
    folder, _ = micrographs
    result = tem.measure_images(folder)
    assert result.segmenter == CLASSICAL and result.failed == 0
    assert (
        main(["tem", "measure", str(folder), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    )
    for table, name in ((result.summary, "summary.csv"), (result.particles, "particles.csv")):
        assert table.to_csv(index=False) == (tmp_path / "cli" / name).read_text(), name
    assert result.samples.to_csv(index=False) == (tmp_path / "cli" / "samples.csv").read_text()
    # 14 nm particles at 1 nm/px (sidecar).
    assert result.summary["mean_diameter"].to_numpy() == pytest.approx([14, 14], rel=0.25)
    assert (result.summary["pixel_size_source"] == "sidecar").all()


def test_arrays_are_measured_like_their_files(micrographs):
    _, paths = micrographs
    from skimage import io

    pixels = io.imread(paths[0])
    from_array = tem.measure_images([pixels], nm_per_px=1.0, masks=True)
    from_file = tem.measure_images(paths[0], nm_per_px=1.0)
    assert from_array.summary["image"].tolist() == ["array0"]
    assert from_array.summary["sample"].tolist() == ["array0"]
    columns = [c for c in from_file.particles.columns if c != "image"]
    pd.testing.assert_frame_equal(from_array.particles[columns], from_file.particles[columns])
    mask = from_array.masks["array0"]
    assert mask.shape == pixels.shape
    assert np.count_nonzero(np.unique(mask)) == from_file.summary["count"].iloc[0]


def test_a_bad_image_fails_alone(micrographs, tmp_path):
    _, paths = micrographs
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = tem.measure_images([paths[0], bad, empty, np.zeros((8, 8))], samples="image")
    assert result.failed == 3  # the broken file, the empty folder, the constant array
    errors = result.summary.set_index("image")["error"]
    assert "not a readable PNG" in errors[str(bad)] and "constant image" in errors["array3"]
    assert pd.isna(errors[str(paths[0])]) and result.problems == [
        f"{empty}: no images (.dm3, .dm4, .jpeg, .jpg, .png, .tif, .tiff) in folder"
    ]
    assert result.samples["sample"].tolist() == ["m1", "broken", "array3"]


def test_nm_per_px_must_be_positive(micrographs):
    with pytest.raises(ValueError, match="nm-per-px must be > 0"):
        tem.measure_images(micrographs[1], nm_per_px=0)


def test_pixel_size_and_segment(micrographs):
    _, paths = micrographs
    found = tem.pixel_size(paths[0])
    assert (found.nm_per_px, found.source) == (1.0, "sidecar")
    from skimage import io

    pixels = io.imread(paths[0])
    bar = tem.pixel_size(pixels)  # no file: the burned-in scale bar alone
    assert bar.source == "scale_bar" and bar.nm_per_px == pytest.approx(1.0, rel=0.05)
    assert tem.pixel_size(pixels, nm_per_px=2.0).source == "user"
    with_bar = tem.segment(paths[0], drop_scale_bar=False)
    without = tem.segment(paths[0])

    def count(labels: np.ndarray) -> int:
        return np.count_nonzero(np.unique(labels))

    assert with_bar.dtype == np.int32 and count(with_bar) > count(without) > 5
    # What was dropped lies on the scale bar.
    row0, col0, row1, col1 = bar.scale_bar.bar
    assert (with_bar[row0:row1, col0:col1] > 0).any()
    assert not (without[row0:row1, col0:col1] > 0).any()


def test_the_published_segmenter_is_the_default(micrographs, tmp_path, capsys, tiny_checkpoint):
    _, paths = micrographs
    assert resolve_segmenter() == (None, CLASSICAL)  # none published here
    published = tiny_checkpoint(tmp_path / "results" / "tem" / "models" / "best.ckpt")
    network, described = resolve_segmenter()
    assert isinstance(network, Segmenter) and described == "network results/tem/models/best.ckpt"
    result = tem.measure_images(paths[0])
    assert result.segmenter == described and (result.summary["segmenter"] == described).all()
    assert tem.measure_images(paths[0], model="classical").segmenter == CLASSICAL
    # Loaded elsewhere, a network still names its file.
    assert tem.measure_images(paths[0], model=network).segmenter == described
    assert main(["tem", "measure", str(paths[0]), "--out", "a", "--no-progress"]) == 0
    assert (
        f"segmenter: network {published.relative_to(tmp_path)} (published by the workflow)"
        in capsys.readouterr().out
    )
    assert (
        main(["tem", "measure", str(paths[0]), "--out", "b", "--no-progress", "--classical"]) == 0
    )
    assert pd.read_csv("b/summary.csv")["segmenter"].tolist() == [CLASSICAL]
    with pytest.raises(SystemExit):  # one or the other
        main(["tem", "measure", str(paths[0]), "--out", "c", "--classical", "--model", "x.ckpt"])


def test_a_missing_model_is_named(micrographs, tmp_path):
    with pytest.raises(ModelError, match=r"none\.ckpt: no such model file"):
        tem.measure_images(micrographs[1], model=tmp_path / "none.ckpt")
