"""Pixel size of a micrograph: from the user, the file's metadata, a sidecar or the scale bar.

``resolve_pixel_size`` takes the first source that gives one, in this order, and says which:

1. ``user``: a value given on the command line.
2. ``metadata``: TIFF resolution tags (also ImageJ's ``unit=`` and FEI/Thermo and OME
   metadata) or a Gatan ``.dm3``/``.dm4`` file's calibration (read with RosettaSciIO when it is
   installed).
3. ``sidecar``: the JSON the simulator writes beside each image (``<name>.json`` with
   ``nm_per_px``).
4. ``scale_bar``: the burned-in scale bar, measured in px and its label ("200 nm", "1 µm") read
   by OCR: the ``tesseract`` program when it is installed, else a built-in template matcher
   (glyphs of the simulator's 5×7 font and of the DejaVu and STIX fonts matplotlib ships,
   upright and oblique).
5. ``none``: sizes stay in px.

The scale bar and its label are image content, not particles: ``scale_bar_mask`` marks them so
measurements can drop instances that overlap them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage import transform

from nanoxtal.tem.io import TemImageError, read_image, stretch_to_unit
from nanoxtal.tem.simulate import text_bitmap

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
# Label units the scale-bar reader knows, as glyph sequences.
LABEL_UNITS = {"nm": "nm", "µm": "µm", "um": "um"}
_GLYPH_GRID = 16
# Least mean glyph score (correlation less aspect and placement penalties) of a label read by
# templates; clean labels score 0.75–1.
MIN_LABEL_SCORE = 0.6
# Scale bars are drawn at round lengths; a reading of another length (e.g. "30" for "50", or a
# speck read as a third digit) loses this much mean glyph score.
ROUND_DIGITS = frozenset({"1", "2", "25", "5"})
UNROUND_PENALTY = 0.15
# A glyph's second or third likeliest character is tried when it scores within this of the best.
NEAR_TIE = 0.12


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
        reader: What read the label: "tesseract", "templates" or None.
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
    vector: np.ndarray
    aspect: float


def _vector(crop: np.ndarray) -> np.ndarray:
    grid = transform.resize(
        crop.astype(np.float64), (_GLYPH_GRID, _GLYPH_GRID), order=1, anti_aliasing=True
    ).ravel()
    grid = grid - grid.mean()
    norm = np.linalg.norm(grid)
    return grid / norm if norm > 0 else grid


def _ink_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(ink)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@dataclass(frozen=True)
class _Template:
    vector: np.ndarray
    aspect: float
    top: float  # relative to the digit "0": 0 at its top, 1 at its bottom
    bottom: float


def _font_files() -> list[Path]:
    from matplotlib import font_manager

    folder = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True)).parent
    names = (
        "DejaVuSans.ttf",
        "DejaVuSans-Oblique.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSans-BoldOblique.ttf",
        "DejaVuSerif.ttf",
        "DejaVuSerif-Italic.ttf",
        "STIXGeneral.ttf",
        "STIXGeneralItalic.ttf",
    )
    return [folder / name for name in names if (folder / name).is_file()]


def _render(path: Path, text: str) -> np.ndarray:
    from matplotlib import ft2font

    font = ft2font.FT2Font(str(path))
    font.set_size(64, 72)
    font.set_text(text, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.asarray(font.get_image()) >= 128


def _template(ink: np.ndarray, zero: tuple[int, int, int, int]) -> _Template:
    r0, c0, r1, c1 = _ink_box(ink)
    digit = zero[2] - zero[0]
    return _Template(
        vector=_vector(ink[r0:r1, c0:c1]),
        aspect=(c1 - c0) / (r1 - r0),
        top=(r0 - zero[0]) / digit,
        bottom=(r1 - zero[0]) / digit,
    )


@cache
def _templates() -> dict[str, dict[str, _Template]]:
    """Glyph templates by font and character."""
    chars = "0123456789.nmuµ"
    fonts: dict[str, dict[str, _Template]] = {}
    builtin = {}
    zero_box = _ink_box(text_bitmap("0"))
    for char in "0123456789nm":
        builtin[char] = _template(text_bitmap(char), zero_box)
    fonts["builtin 5x7"] = builtin
    for path in _font_files():
        glyphs = {}
        zero = _render(path, "0")
        zero_box = _ink_box(zero)
        for char in chars:
            # Render after a "0" so the character sits on the same baseline; then drop the 0.
            pair = _render(path, "0" + char)
            labels, count = ndimage.label(pair, structure=np.ones((3, 3)))
            if count < 2:
                continue
            boxes = ndimage.find_objects(labels)
            first = min(range(count), key=lambda i: boxes[i][1].start)
            ink = (labels > 0) & (labels != first + 1)
            zero_here = _ink_box(labels == first + 1)
            glyphs[char] = _template(ink, zero_here)
        glyphs["0"] = _template(zero, zero_box)
        fonts[path.stem] = glyphs
    return fonts


def _glyph_score(glyph: _Glyph, template: _Template, top: float, bottom: float) -> float:
    shape = float(glyph.vector @ template.vector)
    aspect = abs(math.log(max(glyph.aspect, 1e-3) / max(template.aspect, 1e-3)))
    place = abs(top - template.top) + abs(bottom - template.bottom)
    return shape - 0.5 * aspect - 0.5 * place


def _significant(text: str) -> str:
    """The significant digits of a decimal number's text: "250" and "0.25" give "25"."""
    return text.replace(".", "").strip("0")


def _decode(glyphs: list[_Glyph]) -> tuple[str, float, float] | None:
    """(label text, length in nm, mean glyph score) of a label's glyphs, or None."""
    best: tuple[float, str, float] | None = None
    for unit, unit_glyphs in LABEL_UNITS.items():
        count = len(glyphs) - len(unit_glyphs)
        if count < 1:
            continue
        number = glyphs[:count]
        heights = np.array([g.box[2] - g.box[0] for g in number], dtype=float)
        reference = float(np.median(heights[heights >= 0.5 * heights.max()]))
        tall = heights >= 0.55 * reference
        if heights.max() > 1.35 * reference:  # a glyph merged with something else
            return None
        digit_top = float(np.median([g.box[0] for g, t in zip(number, tall, strict=True) if t]))
        digit_height = float(np.median(heights[tall]))
        tops = np.array([g.box[0] for g in number], dtype=float)[tall]
        if (np.abs(heights[tall] - digit_height) > max(1.0, 0.12 * digit_height)).any() or (
            np.abs(tops - digit_top) > max(1.0, 0.12 * digit_height)
        ).any():
            continue  # digits share one height and top line: something else is among them

        def rel(glyph: _Glyph, top=digit_top, size=digit_height) -> tuple[float, float]:
            return (glyph.box[0] - top) / size, (glyph.box[2] - top) / size

        for templates in _templates().values():
            if any(char not in templates for char in unit_glyphs):
                continue
            # The likeliest characters of each glyph of the number.
            choices = []
            for glyph, is_tall in zip(number, tall, strict=True):
                options = [c for c in ("0123456789" if is_tall else ".") if c in templates]
                scores = {c: _glyph_score(glyph, templates[c], *rel(glyph)) for c in options}
                ranked = sorted(scores.items(), key=lambda item: -item[1])[:3]
                # Only near-ties are alternatives (a "3" and a "5" of a tiny bitmap font).
                choices.append([item for item in ranked if item[1] >= ranked[0][1] - NEAR_TIE])
            if not all(choices):
                continue
            unit_score = sum(
                _glyph_score(glyph, templates[char], *rel(glyph))
                for glyph, char in zip(glyphs[count:], unit_glyphs, strict=True)
            )
            for combination in itertools.product(*choices):
                text = "".join(char for char, _ in combination)
                if not re.fullmatch(r"[1-9]\d*(\.\d+)?|0\.\d+", text):
                    continue
                mean = (sum(score for _, score in combination) + unit_score) / len(glyphs)
                if _significant(text) not in ROUND_DIGITS:
                    mean -= UNROUND_PENALTY
                if best is None or mean > best[0]:
                    best = (mean, f"{text} {unit}", float(text) * UNITS_NM[unit.lower()])
    if best is None:
        return None
    return best[1], best[2], best[0]


def _glyphs(ink: np.ndarray, origin: tuple[int, int], max_height: float) -> list[list[_Glyph]]:
    """Words of glyphs (left to right) in a binary window; boxes in image coordinates.

    A glyph is one 8-connected component. Lines are glyphs whose rows overlap; pieces much
    smaller than a line's tallest glyph are noise unless they sit on its baseline between two
    tall glyphs (a decimal point). Words are split at gaps wider than 1.6 glyph heights.
    """
    labels, _ = ndimage.label(ink, structure=np.ones((3, 3)))
    glyphs = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        height, width = rows.stop - rows.start, cols.stop - cols.start
        if height > max_height or width > 3 * height or height * width < 4:
            continue
        crop = labels[rows, cols] == index
        glyphs.append(
            _Glyph(
                box=(
                    rows.start + origin[0],
                    cols.start + origin[1],
                    rows.stop + origin[0],
                    cols.stop + origin[1],
                ),
                vector=_vector(crop),
                aspect=width / height,
            )
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
            if glyph.box[1] - word[-1].box[3] > 1.6 * tallest:
                words.append(word)
                word = []
            word.append(glyph)
        words.append(word)
    return [word for word in words if len(word) >= 2]


def _thin(ink: np.ndarray, glyph_height: float) -> np.ndarray:
    """``ink`` less its blobs much thicker than a glyph stroke (particles touching the text)."""
    radius = max(2, round(0.22 * glyph_height))
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    return ink & ~ndimage.binary_opening(ink, structure=disk)


def _tesseract(crop: np.ndarray) -> str | None:
    """Text of a label crop (ink True) by the tesseract program, or None without it."""
    program = shutil.which("tesseract")
    if program is None:
        return None
    from skimage import io

    picture = np.where(np.pad(crop, 10), 0, 255).astype(np.uint8)
    scale = max(1, round(40 / max(crop.shape[0], 1)))
    picture = np.kron(picture, np.ones((scale, scale), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "label.png"
        io.imsave(target, picture, check_contrast=False)
        try:
            result = subprocess.run(
                [program, str(target), "stdout", "--psm", "7"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    return result.stdout.strip() or None


def parse_label(text: str) -> tuple[str, float] | None:
    """("200 nm", 200.0) from a scale-bar label such as "200nm", "1 µm" or "0.5 um"."""
    match = re.search(
        r"(\d+(?:[.,]\d+)?)\s*(nm|[µμu]m|micron|Å|A|pm|mm)\b", text.replace("\n", " ")
    )
    if not match:
        return None
    value = float(match.group(1).replace(",", "."))
    factor = unit_nm(match.group(2))
    if factor is None or value <= 0:
        return None
    unit = {"μm": "µm", "um": "µm", "micron": "µm", "A": "Å"}.get(match.group(2), match.group(2))
    return f"{value:g} {unit}", value * factor


def _read_word(
    word: list[_Glyph], ink: np.ndarray, window: tuple[int, ...]
) -> tuple[str, float, tuple[int, int, int, int], str] | None:
    """(label, length in nm, label box, reader) of one word, or None when unreadable."""
    label_box = (
        min(g.box[0] for g in word),
        word[0].box[1],
        max(g.box[2] for g in word),
        word[-1].box[3],
    )
    read = _tesseract(
        ink[
            label_box[0] - window[0] : label_box[2] - window[0],
            label_box[1] - window[1] : label_box[3] - window[1],
        ]
    )
    parsed = parse_label(read) if read else None
    if parsed:
        return parsed[0], parsed[1], label_box, "tesseract"
    decoded = _decode(word)
    if decoded and decoded[2] >= MIN_LABEL_SCORE:
        parsed = parse_label(decoded[0])
        if parsed:
            return parsed[0], parsed[1], label_box, "templates"
    return None


def _read_label(
    data: np.ndarray, box: tuple[int, ...], value: float, background: float
) -> tuple[str | None, float | None, tuple[int, int, int, int], str | None] | None:
    """(label, length in nm, label box, reader) of the text nearest the bar.

    Label, length and reader are None when the nearest text could not be read; None when
    there is no text near the bar.
    """
    height, width = data.shape
    r0, c0, r1, c1 = box
    length = c1 - c0
    text_height = max(12.0, 0.4 * length, 0.06 * height)
    window = (
        max(0, int(r0 - 2.5 * text_height)),
        max(0, int(c0 - 0.75 * length)),
        min(height, int(r1 + 2.5 * text_height)),
        min(width, int(c1 + 0.75 * length)),
    )
    crop = data[window[0] : window[2], window[1] : window[3]]
    threshold = value + 0.4 * (background - value)
    ink = crop <= threshold if value < background else crop >= threshold
    ink[r0 - window[0] : r1 - window[0], c0 - window[1] : c1 - window[1]] = False
    words = _glyphs(ink, window[:2], text_height)

    def distance(word: list[_Glyph]) -> float:
        top = min(g.box[0] for g in word)
        bottom = max(g.box[2] for g in word)
        left, right = word[0].box[1], word[-1].box[3]
        rows = max(0, top - r1, r0 - bottom)
        cols = max(0, left - c1, c0 - right)
        return rows + cols

    for word in sorted(words, key=distance)[:4]:
        found = _read_word(word, ink, window)
        if found is None:
            # Retry without blobs (particles) touching the glyphs, within the word's rows.
            glyph_height = int(np.median([g.box[2] - g.box[0] for g in word]))
            top = max(min(g.box[0] for g in word) - window[0] - glyph_height // 3, 0)
            bottom = max(g.box[2] for g in word) - window[0] + glyph_height // 3
            band = np.zeros_like(ink)
            band[top:bottom] = _thin(ink[top:bottom], glyph_height)
            for retry in sorted(_glyphs(band, window[:2], 1.3 * glyph_height), key=distance):
                found = _read_word(retry, band, window)
                if found:
                    break
        if found:
            return found
    if words:
        # Unread: still mark the text nearest the bar, so it is not taken for particles.
        word = min(words, key=distance)
        box = (
            min(g.box[0] for g in word),
            word[0].box[1],
            max(g.box[2] for g in word),
            word[-1].box[3],
        )
        return None, None, box, None
    return None


def scale_bar(image: np.ndarray) -> ScaleBar | None:
    """Find a burned-in scale bar and read its label.

    The bar is the longest thin, uniform horizontal rectangle at the image's darkest or
    brightest level (preferring the top and bottom of the image) that stands apart from what
    is above and below it. Its label is the nearest line of text at the same level.

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
    label = _read_label(data, box, value, background)
    if label is None:
        return ScaleBar(length_px=length, bar=tuple(int(v) for v in box), dark=dark)
    text, length_nm, label_box, reader = label
    label_box = tuple(int(v) for v in label_box)
    return ScaleBar(
        length_px=length,
        bar=tuple(int(v) for v in box),
        dark=dark,
        label=text,
        length_nm=length_nm,
        label_box=label_box,
        reader=reader,
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
    detail = "scale bar found, label unread" if bar is not None else ""
    return PixelSize(None, "none", detail, bar)
