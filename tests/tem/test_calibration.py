from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tifffile

from nanoxtal.tem import calibration
from nanoxtal.tem.calibration import (
    CalibrationError,
    PixelSize,
    drop_scale_bar,
    from_metadata,
    from_sidecar,
    parse_label,
    resolve_pixel_size,
    scale_bar,
    scale_bar_mask,
)
from nanoxtal.tem.simulate import MicrographSettings, simulate_micrograph, write_micrograph

IMAGE = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)


def test_imagej_tiff_micron(tmp_path):
    path = tmp_path / "imagej.tif"
    # 400 px per µm = 2.5 nm/px.
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(400, 400), metadata={"unit": "um"})
    found = from_metadata(path)
    assert (found.nm_per_px, found.source) == (pytest.approx(2.5), "metadata")
    assert "ImageJ" in found.detail


def test_imagej_escaped_micro_sign(tmp_path):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(50, 50), metadata={"unit": "\\u00B5m"})
    assert from_metadata(path).nm_per_px == pytest.approx(20.0)


def test_tiff_resolution_per_cm(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, IMAGE, resolution=(1.25e7, 1.25e7), resolutionunit="CENTIMETER")
    assert from_metadata(path).nm_per_px == pytest.approx(0.8)


def test_implausible_or_missing_metadata(tmp_path):
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, IMAGE, resolution=(72, 72), resolutionunit="INCH")
    assert from_metadata(dpi) is None  # 353 µm/px: a screen default, not a calibration
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, IMAGE)
    assert from_metadata(plain) is None
    assert from_metadata(tmp_path / "image.png") is None


@pytest.mark.parametrize("version", [3, 4])
def test_gatan_image_and_calibration(tmp_path, gatan_file, version):
    data = (np.arange(40 * 56).reshape(40, 56) % 977).astype(np.uint16)
    path = gatan_file(tmp_path / f"scan.dm{version}", data, 0.02, "µm", version)
    image = calibration.read_micrograph(path)
    assert image.shape == (40, 56) and image.dtype == np.float32
    assert image == pytest.approx((data - data.min()) / float(data.max() - data.min()))
    pixel = from_metadata(path)
    assert pixel.nm_per_px == pytest.approx(20.0) and pixel.source == "metadata"
    assert "µm" in pixel.detail
    assert resolve_pixel_size(path, image).nm_per_px == pytest.approx(20.0)


def test_gatan_without_a_usable_calibration_or_image(tmp_path, gatan_file):
    data = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert from_metadata(gatan_file(tmp_path / "pixels.dm3", data, 1.0, "")) is None
    assert from_metadata(gatan_file(tmp_path / "far.dm3", data, 5.0, "m")) is None  # 5 m/px
    with pytest.raises(calibration.TemImageError, match=r"flat\.dm4: constant image"):
        calibration.read_micrograph(
            gatan_file(tmp_path / "flat.dm4", np.ones((8, 8), np.float32), 1.0, "nm", 4)
        )
    broken = tmp_path / "broken.dm3"
    broken.write_bytes(b"\x00\x00\x00\x03 not a DM file")
    with pytest.raises(CalibrationError, match=r"broken\.dm3: not a readable Gatan file"):
        from_metadata(broken)
    with pytest.raises(calibration.TemImageError, match=r"broken\.dm3"):
        calibration.read_micrograph(broken)


def test_gatan_needs_rosettasciio(tmp_path, gatan_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)  # import fails
    path = gatan_file(tmp_path / "scan.dm4", np.eye(8, dtype=np.float32), 1.0, "nm", 4)
    with pytest.raises(CalibrationError, match=r"scan\.dm4.*RosettaSciIO"):
        from_metadata(path)
    with pytest.raises(calibration.TemImageError, match="RosettaSciIO"):
        calibration.read_micrograph(path)


def test_units():
    assert calibration.unit_nm("micron") == 1000
    assert calibration.unit_nm("Å") == pytest.approx(0.1)
    assert calibration.unit_nm("parsec") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200 nm", ("200 nm", 200.0)),
        ("50nm", ("50 nm", 50.0)),
        ("1 µm", ("1 µm", 1000.0)),
        ("0.5 um", ("0.5 µm", 500.0)),
        ("2,5 μm", ("2.5 µm", 2500.0)),
        ("scale", None),
    ],
)
def test_parse_label(text, expected):
    assert parse_label(text) == expected


# Simulated micrographs: (nm/px, side px, dark bar, seed). Bars on all four corners, both
# colours, labels from "20 nm" to "200 nm" in 1× to 4× font scales.
SIMULATED = [
    (0.5, 256, True, 1),
    (2.0, 512, False, 2),
    (2.0, 512, True, 3),
    (1.0, 256, True, 5),
    (2.0, 256, True, 7),
    (2.0, 1024, False, 0),
]


@pytest.mark.parametrize(("nm_per_px", "side", "dark", "seed"), SIMULATED)
def test_scale_bar_on_simulated_micrographs(nm_per_px, side, dark, seed):
    settings = MicrographSettings(
        nm_per_px=nm_per_px, width_px=side, height_px=side, scale_bar_dark=dark
    )
    micrograph = simulate_micrograph(settings, seed)
    truth = micrograph.scale_bar
    bar = scale_bar(micrograph.image)
    assert bar is not None and bar.dark == dark
    assert bar.length_px == pytest.approx(truth.length_px, abs=1)
    assert bar.label == truth.label
    assert bar.nm_per_px == pytest.approx(nm_per_px, rel=0.02)
    # The label box covers the truth's text box.
    r0, c0, r1, c1 = bar.label_box
    t0, u0, t1, u1 = truth.text
    assert r0 <= t0 + 1 and c0 <= u0 + 1 and r1 >= t1 - 1 and c1 >= u1 - 1


def test_no_scale_bar():
    micrograph = simulate_micrograph(
        MicrographSettings(width_px=256, height_px=256, scale_bar=False), 4
    )
    assert scale_bar(micrograph.image) is None
    assert scale_bar(np.zeros((64, 64))) is None


def test_sophon_scale_bar(shared_data):
    from nanoxtal.tem.io import read_image

    image = read_image(shared_data / "tem" / "sophon_example" / "1-0001_16.png")
    bar = scale_bar(image)
    # A black bar with a white outline, rows 619–624, columns 42–275: 234 px for "200 nm".
    assert bar is not None and bar.dark
    assert bar.bar == (619, 42, 625, 276)
    assert bar.length_px == pytest.approx(234, abs=1)
    # The "2" touches a particle, so the template reader may not read the label; it must not
    # read a wrong one, and the text is still marked for masking.
    assert bar.length_nm in (None, 200.0)
    assert bar.label_box is not None


def test_scale_bar_mask_drops_overlapping_instances():
    micrograph = simulate_micrograph(MicrographSettings(width_px=256, height_px=256), 5)
    bar = scale_bar(micrograph.image)
    mask = scale_bar_mask(micrograph.image.shape, bar)
    r0, c0, r1, c1 = micrograph.scale_bar.bar
    assert mask[r0:r1, c0:c1].all()
    instances = np.zeros(micrograph.image.shape, dtype=np.int32)
    instances[r0:r1, c0 : c0 + 5] = 1  # the bar taken for a particle
    instances[128:132, 128:132] = 2
    kept = drop_scale_bar(instances, bar)
    assert set(np.unique(kept)) == {0, 2}


def test_sidecar_and_resolution_order(tmp_path):
    micrograph = simulate_micrograph(
        MicrographSettings(nm_per_px=0.7, width_px=256, height_px=256), 8
    )
    paths = write_micrograph(micrograph, tmp_path, "sim")
    image = micrograph.image.astype(np.float32) / 255
    assert from_sidecar(paths["image"]) == PixelSize(0.7, "sidecar", "sim.json")
    assert resolve_pixel_size(paths["image"], image).source == "sidecar"
    user = resolve_pixel_size(paths["image"], image, nm_per_px=0.3)
    assert (user.nm_per_px, user.source) == (0.3, "user")
    assert user.scale_bar is not None  # found for masking whatever the source
    # The file's own value, where it differs from the user's, is kept and named.
    assert user.overridden == PixelSize(0.7, "sidecar", "sim.json")
    assert user.detail == "given; the sidecar says 0.7 nm/px (sim.json)"
    close = resolve_pixel_size(paths["image"], image, nm_per_px=0.72)
    assert close.overridden is None and close.detail == "given"
    # A sidecar naming another image is not this image's.
    record = json.loads(paths["metadata"].read_text())
    paths["metadata"].write_text(json.dumps(record | {"image": "other.png"}))
    assert from_sidecar(paths["image"]) is None
    by_bar = resolve_pixel_size(paths["image"], image)
    assert by_bar.source == "scale_bar"
    assert by_bar.nm_per_px == pytest.approx(0.7, rel=0.02)
    # Metadata beats the sidecar.
    tiff = tmp_path / "sim2.tif"
    tifffile.imwrite(tiff, micrograph.image, resolution=(1e7 / 0.9,) * 2, resolutionunit=3)
    (tmp_path / "sim2.json").write_text(json.dumps({"nm_per_px": 0.7}))
    assert resolve_pixel_size(tiff, image).source == "metadata"
    assert resolve_pixel_size(tiff, image).nm_per_px == pytest.approx(0.9)
    nothing = resolve_pixel_size(None, None)
    assert (nothing.nm_per_px, nothing.source) == (None, "none")


def test_pixel_size_validation():
    with pytest.raises(ValueError, match="source"):
        PixelSize(1.0, "guess")
    with pytest.raises(ValueError, match="positive"):
        PixelSize(0.0, "user")
