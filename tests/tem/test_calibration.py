from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import matplotlib
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
from nanoxtal.tem.simulate import (
    MicrographSettings,
    burn_scale_bar,
    simulate_micrograph,
    write_micrograph,
)

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
        ("200.nm", ("200 nm", 200.0)),  # a stray mark OCR reads between number and unit
        ("0.5-μm", ("0.5 µm", 500.0)),
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
    # The italic, outlined label, its "2" touching a particle (the glyph templates this
    # reader replaced left it unread).
    assert (bar.label, bar.length_nm, bar.reader) == ("200 nm", 200.0, "rapidocr")
    r0, c0, r1, c1 = bar.label_box
    assert r0 <= 575 and c0 <= 45 and r1 >= 605 and c1 >= 145  # "200 nm" lies within


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("1-0001.png", "50 nm"),
        ("1-0007_7.png", "0.2 µm"),
        ("1-0021_9_v2.png", "100 nm"),
        ("2-0018_32.png", "50 nm"),
    ],
)
def test_real_scale_bar_labels(shared_data, name, label):
    from nanoxtal.tem.io import read_image

    bar = scale_bar(read_image(shared_data / "tem" / "nanocrystals_unlabeled" / name))
    assert (bar.label, bar.reader) == (label, "rapidocr")


# Fonts matplotlib ships (so every machine has them), drawn by FreeType with anti-aliasing:
# not the templates' glyphs. Computer Modern (cm*) is no template font at all.
MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_label_micrograph(font, digit_px, dark, outline, length_nm, unit, seed, side=512):
    """A simulated micrograph with a scale bar whose label is in a real font."""
    settings = MicrographSettings(
        width_px=side, height_px=side, nm_per_px=1.0, coverage=0.2, scale_bar=False
    )
    image = simulate_micrograph(settings, seed).image
    nm_per_px = length_nm / (0.18 * side)
    truth = burn_scale_bar(
        image,
        nm_per_px,
        dark=dark,
        corner=(seed % 2 == 0, seed % 3 == 0),
        length_nm=length_nm,
        unit=unit,
        font=MPL_FONTS / font,
        digit_px=digit_px,
        outline=outline,
    )
    return image, truth, nm_per_px


def test_font_labels_are_drawn_at_the_digit_height():
    from nanoxtal.tem.simulate import font_bitmap

    coverage = font_bitmap("200 nm", MPL_FONTS / "DejaVuSans-Oblique.ttf", 20)
    assert coverage.dtype == np.float32 and coverage.min() >= 0 and coverage.max() <= 1
    assert abs(int((coverage >= 0.5).any(axis=1).sum()) - 20) <= 1  # digits set the height
    with pytest.raises(ValueError, match="no glyphs"):
        font_bitmap("200 \ue000m", MPL_FONTS / "DejaVuSans.ttf", 20)  # a private-use code
    with pytest.raises(ValueError, match="unit"):
        burn_scale_bar(np.zeros((64, 64), np.uint8), 1.0, unit="mm")


# (font file, digit height px, dark, outline px, bar length nm, unit, seed)
REAL_FONT_LABELS = [
    ("DejaVuSans-Oblique.ttf", 20, True, 2, 200, "nm", 1),  # the Sophon label's look
    ("DejaVuSans-Oblique.ttf", 12, False, 0, 50, "nm", 2),
    ("DejaVuSerif-Italic.ttf", 16, False, 0, 500, "µm", 3),
    ("DejaVuSans-BoldOblique.ttf", 14, True, 0, 1000, "µm", 4),
    ("DejaVuSerif-Bold.ttf", 24, True, 0, 20, "nm", 5),
    ("cmti10.ttf", 22, True, 0, 100, "nm", 6),
    ("cmss10.ttf", 18, False, 0, 50, "nm", 7),
    ("cmr10.ttf", 26, True, 2, 500, "nm", 8),
]


@pytest.mark.parametrize(
    ("font", "digit_px", "dark", "outline", "length_nm", "unit", "seed"), REAL_FONT_LABELS
)
def test_engine_reads_labels_in_real_fonts(font, digit_px, dark, outline, length_nm, unit, seed):
    image, truth, nm_per_px = font_label_micrograph(
        font, digit_px, dark, outline, length_nm, unit, seed
    )
    bar = scale_bar(image)
    assert bar is not None and bar.dark == dark
    assert (bar.label, bar.reader) == (truth.label, "rapidocr")
    assert bar.nm_per_px == pytest.approx(nm_per_px, rel=0.02)
    # The label box overlaps the label.
    r0, c0, r1, c1 = bar.label_box
    t0, u0, t1, u1 = truth.text
    assert r0 < t1 and t0 < r1 and c0 < u1 and u0 < c1


def test_reading_order_and_implausible_readings(monkeypatch):
    micrograph = simulate_micrograph(
        MicrographSettings(nm_per_px=2.0, width_px=512, height_px=512), 3
    )
    image, truth = micrograph.image, micrograph.scale_bar
    recognised, detected = [], []
    recognise, detect = calibration._recognise, calibration._detect
    monkeypatch.setattr(calibration, "_recognise", lambda p: recognised.append(p) or recognise(p))
    monkeypatch.setattr(calibration, "_detect", lambda p: detected.append(p) or detect(p))
    # First the recogniser reads the words nearest the bar; the detector is not needed.
    bar = scale_bar(image)
    assert (bar.label, bar.reader) == (truth.label, "rapidocr")
    assert recognised and not detected
    # What the recogniser leaves unread, the detector finds in the window around the bar.
    monkeypatch.setattr(calibration, "_recognise", lambda picture: None)
    bar = scale_bar(image)
    assert (bar.label, bar.reader) == (truth.label, "rapidocr") and detected
    r0, c0, r1, c1 = bar.label_box
    t0, u0, t1, u1 = truth.text
    assert r0 < t1 and t0 < r1 and c0 < u1 and u0 < c1
    # A reading that makes no micrograph's pixel size ("200 mm" for "200 nm") is none...
    monkeypatch.setattr(calibration, "_recognise", lambda picture: "200 mm")
    monkeypatch.setattr(calibration, "_detect", lambda picture: [("200 mm", (0, 0, 9, 40))])
    bar = scale_bar(image)
    # ...so the label is unread, its box still marked for masking.
    assert (bar.label, bar.length_nm, bar.reader) == (None, None, None)
    assert bar.label_box is not None and bar.length_px == pytest.approx(truth.length_px, abs=1)


@pytest.fixture
def without_rapidocr(monkeypatch):
    """RapidOCR not installed: its import fails."""
    monkeypatch.setitem(sys.modules, "rapidocr", None)
    calibration._rapidocr_loaded.cache_clear()
    calibration._warn_engine_missing.cache_clear()
    yield
    calibration._rapidocr_loaded.cache_clear()
    calibration._warn_engine_missing.cache_clear()


def test_without_the_engine_labels_stay_unread_with_a_warning(without_rapidocr, tmp_path):
    micrograph = simulate_micrograph(
        MicrographSettings(nm_per_px=2.0, width_px=512, height_px=512), 3
    )
    assert not calibration.ocr_available()
    with pytest.warns(RuntimeWarning, match=r"RapidOCR is not installed.*nanoxtal\[tem\]"):
        bar = scale_bar(micrograph.image)
    # The bar and its label's box are still found (and masked); the label is unread.
    assert bar.length_px == pytest.approx(micrograph.scale_bar.length_px, abs=1)
    assert (bar.label, bar.reader) == (None, None) and bar.label_box is not None
    paths = write_micrograph(micrograph, tmp_path, "sim")
    paths["metadata"].unlink()  # no sidecar: the scale bar is the only source
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        pixel = resolve_pixel_size(paths["image"], micrograph.image)
    assert (pixel.nm_per_px, pixel.source) == (None, "none")
    assert pixel.detail == (
        "scale bar found, label unread (no OCR engine: pip install 'nanoxtal[tem]')"
    )


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
