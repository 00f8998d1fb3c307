"""Pixel size of a micrograph: from the user, the file's metadata, a sidecar or the scale bar.

``resolve_pixel_size`` takes the first source that gives one, in this order, and says which:

1. ``user``: a value given on the command line.
2. ``metadata``: TIFF resolution tags (also ImageJ's ``unit=`` and FEI/Thermo and OME
   metadata) or a Gatan ``.dm3``/``.dm4`` file's calibration (read with RosettaSciIO when it is
   installed).
3. ``sidecar``: the JSON the simulator writes beside each image (``<name>.json`` with
   ``nm_per_px``).
4. ``scale_bar``: the burned-in scale bar, measured in px and its label ("200 nm", "1 µm") read
   by OCR: RapidOCR (PaddleOCR's PP-OCR text detector and recogniser as ONNX models, shipped
   inside its wheel and run on the CPU by onnxruntime; a dependency of the ``tem`` extra).
   ``benchmarks/scale_bar_ocr.py`` measures it on labels in real fonts and real micrographs.
5. ``none``: sizes stay in px.

The scale bar and its label are image content, not particles: ``scale_bar_mask`` marks them so
measurements can drop instances that overlap them.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from nanoxtal.tem.io import TemImageError, read_image, stretch_to_unit

SOURCES = ("user", "metadata", "sidecar", "scale_bar", "none")
# Relative difference between a user's pixel size and the file's own above which both are
# reported: more than a value typed to two digits is off by.
OVERRIDE_TOLERANCE = 0.05
GATAN_SUFFIXES = frozenset({".dm3", ".dm4"})
# Length units (lower case) in nm.
UNITS_NM = {
    "pm": 1e-3,
    "å": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "µm": 1e3,
    "μm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "inch": 2.54e7,
    "in": 2.54e7,
}
# Pixel sizes outside this range (nm/px) are not electron micrographs: e.g. a 72 dpi default.
PLAUSIBLE_NM_PER_PX = (1e-3, 1e4)
# The scale-bar OCR engine (``ScaleBar.reader``): RapidOCR, PaddleOCR's PP-OCR text detector
# and recogniser as ONNX models inside its wheel, run by onnxruntime on the CPU.
# benchmarks/scale_bar_ocr.py chose it over tesseract and glyph templates.
ENGINE = "rapidocr"
# Least confidence of a RapidOCR reading. Clean labels score above 0.9; in the benchmark a
# least of 0.5 let 4 of 216 labels be misread (e.g. "2 nm" for a 9 px "20 nm"), 0.8 one, and
# 0.9 none but left twice as many unread.
MIN_OCR_SCORE = 0.8
# RapidOCR sees the label with grey levels stretched so that this fraction of the way from the
# label's ink to the background is already white (film and most particles vanish), then as
# it is (thin strokes of small labels survive).
OCR_STRETCHES = (0.5, 1.0)


class CalibrationError(ValueError):
    """A pixel size that cannot be read (the message names the file)."""


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar found in an image.

    Attributes:
        length_px: The bar's length (px), edge to edge.
        bar: Its box (row0, col0, row1, col1), px, ends exclusive.
        dark: Darker (True) or brighter (False) than the image around it.
        label: Its label as read, normalised (e.g. "200 nm"); None when it could not be read.
        length_nm: The length the label states (nm); None when unread.
        label_box: The label's box (row0, col0, row1, col1); None when no label was found.
        reader: What read the label: "rapidocr" (the OCR engine), or None when unread.
    """

    length_px: float
    bar: tuple[int, int, int, int]
    dark: bool
    label: str | None = None
    length_nm: float | None = None
    label_box: tuple[int, int, int, int] | None = None
    reader: str | None = None

    @property
    def nm_per_px(self) -> float | None:
        """Pixel size the bar gives (nm/px), or None when its label is unread."""
        if self.length_nm is None or self.length_px <= 0:
            return None
        return self.length_nm / self.length_px


@dataclass(frozen=True)
class PixelSize:
    """A pixel size and where it came from.

    Attributes:
        nm_per_px: Pixel size (nm/px); None when unknown.
        source: "user", "metadata", "sidecar", "scale_bar" or "none".
        detail: How it was found (tag, unit, label), for the record.
        scale_bar: The scale bar found in the image (whatever the source), for masking.
        overridden: For a user value: the pixel size the file itself gives when it differs by
            more than ``OVERRIDE_TOLERANCE`` (a mistyped value, or a misread scale bar); else
            None.
    """

    nm_per_px: float | None
    source: str
    detail: str = ""
    scale_bar: ScaleBar | None = field(default=None, compare=False)
    overridden: PixelSize | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"pixel size source must be one of {SOURCES}, got {self.source!r}")
        if self.nm_per_px is not None and not (
            math.isfinite(self.nm_per_px) and self.nm_per_px > 0
        ):
            raise ValueError(f"pixel size must be a positive number, got {self.nm_per_px}")


# ---------------------------------------------------------------------------------------------
# Metadata.


def unit_nm(unit: str) -> float | None:
    """Length of one ``unit`` (e.g. "nm", "micron", "µm", "Å") in nm; None if unknown.

    ImageJ's escaped micro sign (a backslash, "u00b5") is understood too.
    """
    name = unit.strip().lower().replace("\\u00b5", "µ").replace("\\u00c5", "å")
    return UNITS_NM.get(name)


def _plausible(nm_per_px: float) -> bool:
    low, high = PLAUSIBLE_NM_PER_PX
    return math.isfinite(nm_per_px) and low <= nm_per_px <= high


def _resolution(page: tifffile.TiffPage) -> float | None:
    """Pixels per resolution unit from the XResolution tag, or None."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    value = tag.value
    pixels = value[0] / value[1] if isinstance(value, tuple) and value[1] else float(value)
    return pixels if pixels > 0 else None


def _tiff_pixel_size(path: Path) -> tuple[float, str] | None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        fei = tif.fei_metadata
        if fei and "Scan" in fei and fei["Scan"].get("PixelWidth"):
            return float(fei["Scan"]["PixelWidth"]) * 1e9, "FEI Scan/PixelWidth"
        ome = tif.ome_metadata
        if ome:
            size = re.search(r'PhysicalSizeX="([^"]+)"', ome)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
            factor = unit_nm(unit.group(1) if unit else "µm")
            if size and factor:
                return float(size.group(1)) * factor, "OME PhysicalSizeX"
        pixels = _resolution(page)
        imagej = tif.imagej_metadata or {}
        if pixels and imagej.get("unit"):
            factor = unit_nm(str(imagej["unit"]))
            if factor:
                return factor / pixels, f"ImageJ unit={imagej['unit']}"
        unit_tag = page.tags.get("ResolutionUnit")
        unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
        if pixels and unit in (2, 3):
            name = "inch" if unit == 2 else "cm"
            return UNITS_NM[name] / pixels, f"XResolution per {name}"
    return None


def _rsciio_reader(path: Path):
    try:
        # Imported on first use: it pulls in dask, which PNG/TIFF users never need.
        from rsciio.digitalmicrograph import file_reader
    except ImportError as error:
        raise CalibrationError(
            f"{path}: reading Gatan {path.suffix} files needs RosettaSciIO "
            "(pip install rosettasciio)"
        ) from error
    return file_reader


def _gatan_signal(path: Path, lazy: bool = False) -> dict:
    """The first 2-D image of a Gatan file, as RosettaSciIO gives it.

    Args:
        path: The ``.dm3``/``.dm4`` file.
        lazy: Leave the pixels on disk (a dask array): enough for the calibration.
    """
    try:
        signals = _rsciio_reader(path)(str(path), lazy=lazy)
    except CalibrationError:
        raise
    except Exception as error:
        raise CalibrationError(f"{path}: not a readable Gatan file ({error})") from error
    for signal in signals:
        if np.ndim(signal.get("data")) == 2:
            return signal
    raise CalibrationError(f"{path}: no 2-D image in the file")


def read_gatan(path: Path | str) -> tuple[np.ndarray, PixelSize | None]:
    """Read a Gatan ``.dm3``/``.dm4`` image (needs RosettaSciIO) and its calibration.

    Returns:
        The image as float32 scaled to [0, 1] by its own minimum and maximum (DM files store
        counts or floats without a fixed full scale), and its pixel size from the signal axes
        (None when uncalibrated).

    Raises:
        CalibrationError: RosettaSciIO missing, an unreadable file or no 2-D image.
        TemImageError: A constant or non-finite image.
    """
    path = Path(path)
    signal = _gatan_signal(path)
    return stretch_to_unit(signal["data"], path), _gatan_pixel_size(signal)


def _gatan_pixel_size(signal: dict) -> PixelSize | None:
    axes = [axis for axis in signal.get("axes", []) if not axis.get("navigate", False)]
    if not axes:
        return None
    axis = axes[-1]  # the last (x) axis
    factor = unit_nm(str(axis.get("units", "")))
    scale = float(axis.get("scale", 0) or 0)
    if factor is None or scale <= 0 or not _plausible(scale * factor):
        return None
    return PixelSize(scale * factor, "metadata", f"Gatan axis scale {scale:g} {axis['units']}")


def from_metadata(path: Path | str) -> PixelSize | None:
    """The pixel size stored in an image file, or None when the file has none.

    TIFF: FEI/Thermo ``PixelWidth``, OME ``PhysicalSizeX``, ImageJ's ``unit=`` with the
    XResolution tag, or XResolution per inch or cm (ResolutionUnit); values outside
    ``PLAUSIBLE_NM_PER_PX`` (e.g. a 72 dpi default) are ignored. Gatan ``.dm3``/``.dm4``: the
    image axes' scale and units (RosettaSciIO). Other formats carry none.

    Raises:
        CalibrationError: A Gatan file without RosettaSciIO installed, or an unreadable one.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in GATAN_SUFFIXES:
        return _gatan_pixel_size(_gatan_signal(path, lazy=True))
    if suffix not in (".tif", ".tiff"):
        return None
    try:
        found = _tiff_pixel_size(path)
    except Exception:  # corrupt tags: the image reader reports unreadable files
        return None
    if found is None or not _plausible(found[0]):
        return None
    return PixelSize(found[0], "metadata", found[1])


def from_sidecar(path: Path | str) -> PixelSize | None:
    """The pixel size in the simulator's JSON sidecar (``<name>.json`` beside the image).

    The sidecar must name this image (``"image"``) when it names one.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("image", path.name) != path.name:
        return None
    value = record.get("nm_per_px")
    if not isinstance(value, int | float) or not _plausible(float(value)):
        return None
    return PixelSize(float(value), "sidecar", sidecar.name)


# ---------------------------------------------------------------------------------------------
# Scale bar: the bar.


def _horizontal_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Pixels of ``mask`` that belong to a horizontal run of at least ``length`` px."""
    steps = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    start_rows, starts = np.nonzero(steps == 1)
    _, stops = np.nonzero(steps == -1)  # same rows, same order: one stop per start
    long = stops - starts >= length
    marks = np.zeros((mask.shape[0], mask.shape[1] + 1), dtype=np.int32)
    np.add.at(marks, (start_rows[long], starts[long]), 1)
    np.add.at(marks, (start_rows[long], stops[long]), -1)
    return np.cumsum(marks, axis=1)[:, :-1] > 0


def _bar_candidates(data: np.ndarray, dark: bool) -> list[tuple[float, tuple[int, ...], float]]:
    """(score, box, value) of bar-like components at one intensity extreme."""
    height, width = data.shape
    low, high = float(data.min()), float(data.max())
    span = high - low
    extreme = low if dark else high
    mask = np.abs(data - extreme) <= 0.12 * span
    shortest = max(12, round(0.03 * width))
    runs = _horizontal_runs(mask, shortest)
    labels, _ = ndimage.label(runs)
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = box
        bar_height, bar_width = rows.stop - rows.start, cols.stop - cols.start
        if bar_height < 2 or bar_width > 0.9 * width or bar_height > max(3, bar_width / 4):
            continue
        own = labels[box] == index
        if own.mean() < 0.85:
            continue
        values = data[box][own]
        if values.std() > 0.05 * span:
            continue
        # A bar stands apart: the rows just above and below are mostly not at its level.
        above = mask[max(rows.start - 1, 0), cols].mean() if rows.start > 0 else 0.0
        below = mask[min(rows.stop, height - 1), cols].mean() if rows.stop < height else 0.0
        if min(above, below) > 0.5:
            continue
        centre = (rows.start + rows.stop) / 2
        edge = min(centre, height - centre) / height  # 0 at the top or bottom edge
        score = bar_width * (1.5 - edge)
        found.append((score, (rows.start, cols.start, rows.stop, cols.stop), float(values.mean())))
    return found


def _bar_length(data: np.ndarray, box: tuple[int, ...], value: float, background: float) -> float:
    """Edge-to-edge length (px), with partly covered end columns counted by their coverage."""
    r0, c0, r1, c1 = box
    profile = data[r0:r1].mean(axis=0)
    contrast = background - value
    if abs(contrast) < 1e-9:
        return float(c1 - c0)
    coverage = np.clip((background - profile) / contrast, 0, 1)
    length = float(c1 - c0)
    for column in (c0 - 1, c1):
        if 0 <= column < data.shape[1]:
            length += float(coverage[column])
    return length


# ---------------------------------------------------------------------------------------------
# Scale bar: the label.


@dataclass(frozen=True)
class _Glyph:
    box: tuple[int, int, int, int]
    aspect: float


def _glyphs(ink: np.ndarray, origin: tuple[int, int], max_height: float) -> list[list[_Glyph]]:
    """Words of glyphs (left to right) in a binary window; boxes in image coordinates.

    A glyph is one 8-connected component. Lines are glyphs whose rows overlap; pieces much
    smaller than a line's tallest glyph are noise unless they sit on its baseline between two
    tall glyphs (a decimal point). Words are split at gaps wider than 1.6 glyph heights.
    """
    labels, _ = ndimage.label(ink, structure=np.ones((3, 3)))
    glyphs = []
    for rows, cols in ndimage.find_objects(labels):
        height, width = rows.stop - rows.start, cols.stop - cols.start
        if height > max_height or width > 3 * height or height * width < 4:
            continue
        box = (rows.start + origin[0], cols.start + origin[1])
        glyphs.append(
            _Glyph(box=(*box, rows.stop + origin[0], cols.stop + origin[1]), aspect=width / height)
        )
    lines: list[list[_Glyph]] = []
    for glyph in sorted(glyphs, key=lambda g: g.box[2] - g.box[0], reverse=True):
        for line in lines:
            anchor = line[0].box
            overlap = min(glyph.box[2], anchor[2]) - max(glyph.box[0], anchor[0])
            if overlap >= 0.4 * (glyph.box[2] - glyph.box[0]):
                line.append(glyph)
                break
        else:
            lines.append([glyph])
    words = []
    for line in lines:
        line.sort(key=lambda g: g.box[1])
        heights = np.array([g.box[2] - g.box[0] for g in line])
        # A reference height not thrown by one glyph merged with a particle.
        tallest = float(np.median(heights[heights >= 0.5 * heights.max()]))
        tall = [g.box[2] - g.box[0] >= 0.5 * tallest for g in line]
        if sum(tall) < 2 or tallest < 5:
            continue
        baseline = float(np.median([g.box[2] for g, t in zip(line, tall, strict=True) if t]))
        kept = []
        for index, (glyph, is_tall) in enumerate(zip(line, tall, strict=True)):
            height = glyph.box[2] - glyph.box[0]
            point = (
                not is_tall
                and height <= 0.35 * tallest
                and 0.5 <= glyph.aspect <= 2.0
                and abs(glyph.box[2] - baseline) <= max(1.5, 0.12 * tallest)
                and any(tall[:index])
                and any(tall[index + 1 :])
            )
            if is_tall or point:
                kept.append(glyph)
        word = [kept[0]]
        for glyph in kept[1:]:
            if glyph.box[1] - max(g.box[3] for g in word) > 1.6 * tallest:
                words.append(word)
                word = []
            word.append(glyph)
        words.append(word)
    return [word for word in words if len(word) >= 2]


def _word_box(word: list[_Glyph]) -> tuple[int, int, int, int]:
    return (
        min(g.box[0] for g in word),
        min(g.box[1] for g in word),
        max(g.box[2] for g in word),
        max(g.box[3] for g in word),
    )


def _thin(ink: np.ndarray, glyph_height: float) -> np.ndarray:
    """``ink`` less its blobs much thicker than a glyph stroke (particles touching the text)."""
    radius = max(2, round(0.22 * glyph_height))
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    return ink & ~ndimage.binary_opening(ink, structure=disk)


def _rapidocr_engine():
    """The RapidOCR engine (loaded once), or None when it is not installed."""
    try:
        return _rapidocr_loaded()
    except ImportError:
        return None


@cache
def _rapidocr_loaded():
    # Imported on first use: onnxruntime and OpenCV take about a second to load.
    from rapidocr import RapidOCR

    # The models ship inside the wheel: nothing is downloaded. Text detection sees the area
    # around the bar enlarged to at least 736 px a side, so that small labels are of a size
    # the detector knows. One thread: the segmenter's workers run side by side.
    return RapidOCR(
        params={
            "Global.log_level": "error",
            "Global.use_cls": False,
            "Det.limit_type": "min",
            "Det.limit_side_len": 736,
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )


def ocr_available() -> bool:
    """Whether the scale-bar OCR engine (RapidOCR, in the ``tem`` extra) is installed."""
    return _rapidocr_engine() is not None


@cache
def _warn_engine_missing() -> None:
    warnings.warn(
        "the scale-bar OCR engine RapidOCR is not installed (pip install 'nanoxtal[tem]'): "
        "scale bars are found and masked, but their labels are left unread",
        RuntimeWarning,
        stacklevel=3,
    )


def _engine_picture(picture: np.ndarray) -> np.ndarray:
    grey = np.rint(255 * np.clip(picture, 0.0, 1.0)).astype(np.uint8)
    return np.dstack([grey] * 3)


def _recognise(picture: np.ndarray) -> str | None:
    """Text of one line of text (grey, dark ink on white) by RapidOCR's recogniser, or None."""
    engine = _rapidocr_engine()
    if engine is None:
        return None
    result = engine(_engine_picture(picture), use_det=False, use_cls=False, use_rec=True)
    texts, scores = result.txts or (), result.scores or ()
    kept = [text for text, score in zip(texts, scores, strict=False) if score >= MIN_OCR_SCORE]
    return " ".join(kept).strip() or None


def _detect(picture: np.ndarray) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Lines of text RapidOCR's detector and recogniser find: (text, (row0, col0, row1, col1)).

    The detector's boxes are joined into lines (rows overlapping by half the smaller box),
    left to right; boxes read with less than ``MIN_OCR_SCORE`` are dropped.
    """
    engine = _rapidocr_engine()
    if engine is None:
        return []
    result = engine(_engine_picture(picture), use_det=True, use_cls=False, use_rec=True)
    if result.boxes is None or not result.txts:
        return []
    pieces = []
    for corners, text, score in zip(result.boxes, result.txts, result.scores, strict=False):
        if score < MIN_OCR_SCORE or not text.strip():
            continue
        corners = np.asarray(corners, dtype=float)  # (x, y) of four corners
        box = (
            int(np.floor(corners[:, 1].min())),
            int(np.floor(corners[:, 0].min())),
            int(np.ceil(corners[:, 1].max())),
            int(np.ceil(corners[:, 0].max())),
        )
        pieces.append((box, text.strip()))
    lines: list[list[tuple[tuple[int, int, int, int], str]]] = []
    for box, text in sorted(pieces, key=lambda piece: piece[0][1]):
        for line in lines:
            other = line[-1][0]
            overlap = min(box[2], other[2]) - max(box[0], other[0])
            if overlap >= 0.5 * min(box[2] - box[0], other[2] - other[0]):
                line.append((box, text))
                break
        else:
            lines.append([(box, text)])
    return [
        (
            " ".join(text for _, text in line),
            (
                min(b[0] for b, _ in line),
                min(b[1] for b, _ in line),
                max(b[2] for b, _ in line),
                max(b[3] for b, _ in line),
            ),
        )
        for line in lines
    ]


def parse_label(text: str) -> tuple[str, float] | None:
    """("200 nm", 200.0) from a scale-bar label such as "200nm", "1 µm" or "0.5 um"."""
    # One stray mark between number and unit is an OCR artefact ("200.nm", "500-nm").
    match = re.search(
        r"(\d+(?:[.,]\d+)?)\s*[.,·:;_'°\-–]?\s*(nm|[µμu]m|micron|Å|A|pm|mm)\b",
        text.replace("\n", " "),
    )
    if not match:
        return None
    value = float(match.group(1).replace(",", "."))
    factor = unit_nm(match.group(2))
    if factor is None or value <= 0:
        return None
    unit = {"μm": "µm", "um": "µm", "micron": "µm", "A": "Å"}.get(match.group(2), match.group(2))
    return f"{value:g} {unit}", value * factor


def _reading(text: str | None, length_px: float) -> tuple[str, float] | None:
    """The label in an OCR text, unless it makes no micrograph's pixel size ("500 mm")."""
    parsed = parse_label(text) if text else None
    return parsed if parsed and _plausible(parsed[1] / length_px) else None


def _read_word(
    word: list[_Glyph], paper: np.ndarray, window: tuple[int, ...], length_px: float
) -> tuple[str, float, tuple[int, int, int, int]] | None:
    """(label, length in nm, label box) of one word read by the recogniser, or None.

    Args:
        word: The word's glyphs (image coordinates).
        paper: The window's grey levels, ink 0 and background 1 (bar blanked).
        window: The window's box in the image.
        length_px: The bar's length (px), to reject implausible readings.
    """
    label_box = _word_box(word)
    r0, c0 = label_box[0] - window[0], label_box[1] - window[1]
    r1, c1 = label_box[2] - window[0], label_box[3] - window[1]
    # The word's box and a margin of background, as a page of text would have.
    pad = max(2, round(0.25 * (r1 - r0)))
    picture = np.pad(
        paper[max(r0 - pad, 0) : r1 + pad, max(c0 - pad, 0) : c1 + pad], pad, constant_values=1.0
    )
    for stretch in OCR_STRETCHES:
        parsed = _reading(_recognise(np.clip(picture / stretch, 0.0, 1.0)), length_px)
        if parsed:
            return parsed[0], parsed[1], label_box
    return None


def _read_detected(
    paper: np.ndarray, window: tuple[int, ...], bar: tuple[int, ...], length_px: float
) -> tuple[str, float, tuple[int, int, int, int]] | None:
    """(label, length in nm, label box) of the label RapidOCR's detector finds nearest the bar.

    For labels whose glyphs do not come apart as components (touching italics, small bold
    text, particles touching): the engine's own text detector searches the whole window.
    """
    found = []
    for stretch in OCR_STRETCHES:
        for text, (r0, c0, r1, c1) in _detect(np.clip(paper / stretch, 0.0, 1.0)):
            parsed = _reading(text, length_px)
            if parsed is None:
                continue
            box = (
                max(r0, 0) + window[0],
                max(c0, 0) + window[1],
                min(r1, paper.shape[0]) + window[0],
                min(c1, paper.shape[1]) + window[1],
            )
            rows = max(0, box[0] - bar[2], bar[0] - box[2])
            cols = max(0, box[1] - bar[3], bar[1] - box[3])
            found.append((rows + cols, parsed, box))
        if found:
            break
    if not found:
        return None
    _, parsed, box = min(found, key=lambda item: item[0])
    return parsed[0], parsed[1], box


def _read_label(
    data: np.ndarray, box: tuple[int, ...], value: float, background: float, length_px: float
) -> tuple[str | None, float | None, tuple[int, int, int, int]] | None:
    """(label, length in nm, label box) of the text nearest the bar.

    In order, until one gives a label: RapidOCR's recogniser reads each of the four words
    (glyphs as connected components at the bar's level) nearest the bar, then each again
    without blobs touching it (particles); then RapidOCR's detector searches the window
    around the bar. Label and length are None when nothing read a label (then the box is the
    nearest word's, still masked); None when there is no text near the bar.
    """
    height, width = data.shape
    r0, c0, r1, c1 = box
    length = c1 - c0
    text_height = max(12.0, 0.4 * length, 0.06 * height)
    # A label may be wider than a short bar: the window reaches 3 text heights past its ends.
    reach = max(0.75 * length, 3 * text_height)
    window = (
        max(0, int(r0 - 2.5 * text_height)),
        max(0, int(c0 - reach)),
        min(height, int(r1 + 2.5 * text_height)),
        min(width, int(c1 + reach)),
    )
    crop = data[window[0] : window[2], window[1] : window[3]]
    threshold = value + 0.4 * (background - value)
    ink = crop <= threshold if value < background else crop >= threshold
    bar_window = np.s_[r0 - window[0] : r1 - window[0], c0 - window[1] : c1 - window[1]]
    ink[bar_window] = False
    # Grey levels with the label's ink at 0 and the background at 1, whichever is darker.
    paper = np.clip((crop - value) / (background - value), 0.0, 1.0)
    paper[bar_window] = 1.0
    words = _glyphs(ink, window[:2], text_height)

    def distance(word: list[_Glyph]) -> float:
        top, left, bottom, right = _word_box(word)
        rows = max(0, top - r1, r0 - bottom)
        cols = max(0, left - c1, c0 - right)
        return rows + cols

    if ocr_available():
        for word in sorted(words, key=distance)[:4]:
            found = _read_word(word, paper, window, length_px)
            if found is None:
                # Again without blobs (particles) touching the glyphs, within the word's rows.
                glyph_height = int(np.median([g.box[2] - g.box[0] for g in word]))
                top = max(min(g.box[0] for g in word) - window[0] - glyph_height // 3, 0)
                bottom = max(g.box[2] for g in word) - window[0] + glyph_height // 3
                band = np.zeros_like(ink)
                band[top:bottom] = _thin(ink[top:bottom], glyph_height)
                for retry in sorted(_glyphs(band, window[:2], 1.3 * glyph_height), key=distance):
                    found = _read_word(retry, paper, window, length_px)
                    if found:
                        break
            if found:
                return found
        found = _read_detected(paper, window, box, length_px)
        if found:
            return found
    if words:
        # Unread: still mark the text nearest the bar, so it is not taken for particles.
        return None, None, _word_box(min(words, key=distance))
    return None


def scale_bar(image: np.ndarray) -> ScaleBar | None:
    """Find a burned-in scale bar and read its label.

    The bar is the longest thin, uniform horizontal rectangle at the image's darkest or
    brightest level (preferring the top and bottom of the image) that stands apart from what
    is above and below it. Its label is the nearest line of text at the same level, read by
    RapidOCR (``ScaleBar.reader`` is "rapidocr"). Without RapidOCR installed the bar and its
    label's box are still found (for masking), the label is left unread, and a
    ``RuntimeWarning`` says so, once.

    Args:
        image: Grey micrograph (height × width), any range.

    Returns:
        The bar (``label``/``length_nm`` None when the label could not be read), or None when
        the image has no bar.
    """
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 2 or min(data.shape) < 16 or data.max() == data.min():
        return None
    candidates = []
    for dark in (True, False):
        candidates += [
            (score, box, value, dark) for score, box, value in _bar_candidates(data, dark)
        ]
    if not candidates:
        return None
    if not ocr_available():
        _warn_engine_missing()
    _, box, value, dark = max(candidates, key=lambda item: item[0])
    r0, c0, r1, c1 = box
    # Trim end columns not at the bar's own level (a bright fringe or dark particle touching).
    span = float(data.max() - data.min())
    profile = np.abs(data[r0:r1, c0:c1].mean(axis=0) - value) <= 0.04 * span
    inside = np.flatnonzero(profile)
    if inside.size:
        c0, c1 = c0 + int(inside[0]), c0 + int(inside[-1]) + 1
    box = (r0, c0, r1, c1)
    margin = max(10, 2 * (r1 - r0))
    around = data[max(0, r0 - margin) : r1 + margin, max(0, c0 - margin) : c1 + margin]
    background = float(np.median(around))
    length = _bar_length(data, box, value, background)
    label = _read_label(data, box, value, background, length)
    if label is None:
        return ScaleBar(length_px=length, bar=tuple(int(v) for v in box), dark=dark)
    text, length_nm, label_box = label
    return ScaleBar(
        length_px=length,
        bar=tuple(int(v) for v in box),
        dark=dark,
        label=text,
        length_nm=length_nm,
        label_box=tuple(int(v) for v in label_box),
        reader=ENGINE if text is not None else None,
    )


def scale_bar_mask(shape: tuple[int, int], bar: ScaleBar | None, margin: int = 3) -> np.ndarray:
    """Boolean image of the scale bar and its label (grown by ``margin`` px)."""
    mask = np.zeros(shape, dtype=bool)
    if bar is None:
        return mask
    for box in (bar.bar, bar.label_box):
        if box is not None:
            r0, c0, r1, c1 = box
            mask[max(0, r0 - margin) : r1 + margin, max(0, c0 - margin) : c1 + margin] = True
    return mask


def drop_scale_bar(instances: np.ndarray, bar: ScaleBar | None) -> np.ndarray:
    """Instance labels without the instances that overlap the scale bar or its label."""
    if bar is None:
        return instances
    mask = scale_bar_mask(instances.shape, bar)
    hit = np.unique(instances[mask])
    hit = hit[hit > 0]
    if hit.size == 0:
        return instances
    return np.where(np.isin(instances, hit), 0, instances).astype(instances.dtype)


# ---------------------------------------------------------------------------------------------
# All together.


def read_micrograph(path: Path | str) -> np.ndarray:
    """Read a micrograph: PNG, TIFF, JPEG (``io.read_image``) or Gatan DM3/DM4 (RosettaSciIO).

    Raises:
        TemImageError: An unreadable or unusable image (the message names the file).
    """
    path = Path(path)
    if path.suffix.lower() in GATAN_SUFFIXES:
        try:
            return read_gatan(path)[0]
        except CalibrationError as error:
            raise TemImageError(str(error)) from error
    return read_image(path)


def resolve_pixel_size(
    path: Path | str | None, image: np.ndarray | None, nm_per_px: float | None = None
) -> PixelSize:
    """The pixel size of a micrograph: user value > metadata > sidecar > scale bar > none.

    The scale bar is looked for whatever the source (it is attached for masking).

    Args:
        path: The image file (for metadata and sidecar); None: neither.
        image: The grey image (for the scale bar); None: no scale bar search.
        nm_per_px: The user's value (nm/px), which wins when given (a misread scale bar can
            be corrected); where the file's own value differs, it is kept in ``overridden``.

    Returns:
        The pixel size and its source.

    Raises:
        ValueError: A user value that is not a positive number.
    """
    bar = scale_bar(image) if image is not None else None
    found = _from_file(path, bar)
    if nm_per_px is None:
        return found
    given = PixelSize(float(nm_per_px), "user", "given", bar)
    if found.nm_per_px is None or abs(given.nm_per_px / found.nm_per_px - 1) <= OVERRIDE_TOLERANCE:
        return given
    detail = f"given; the {found.source} says {found.nm_per_px:.4g} nm/px ({found.detail})"
    return replace(given, detail=detail, overridden=found)


def _from_file(path: Path | str | None, bar: ScaleBar | None) -> PixelSize:
    """The pixel size the file gives: metadata > sidecar > scale bar > none."""
    if path is not None:
        try:
            found = from_metadata(path)
        except CalibrationError:
            found = None
        found = found or from_sidecar(path)
        if found is not None:
            return PixelSize(found.nm_per_px, found.source, found.detail, bar)
    if bar is not None and bar.nm_per_px is not None:
        detail = f"{bar.label} = {bar.length_px:.1f} px ({bar.reader})"
        return PixelSize(bar.nm_per_px, "scale_bar", detail, bar)
    detail = ""
    if bar is not None:
        detail = "scale bar found, label unread"
        if not ocr_available():
            detail += " (no OCR engine: pip install 'nanoxtal[tem]')"
    return PixelSize(None, "none", detail, bar)
