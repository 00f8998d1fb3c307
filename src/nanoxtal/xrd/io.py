"""Read measured powder patterns and put them on the model's grid.

Formats: two-column text (``.xy``, ``.xye``, ``.csv``, ``.txt``, ``.dat``; header, comment and
RRUFF ``##`` lines are skipped, a third column such as an error is ignored), PANalytical
``.xrdml``, and ``.npz`` archives with ``intensity`` (N × M) and ``two_theta`` (M) arrays, like
``rruff_dev.npz``. A pattern measured at another wavelength is moved onto the model's through
its d-spacings (Bragg: d = λ / (2 sin θ)).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nanoxtal.xrd.profiles import Grid
from nanoxtal.xrd.radiation import WAVELENGTHS

TEXT_SUFFIXES = (".xy", ".xye", ".csv", ".txt", ".dat")
MIN_POINTS = 10
_NUMBER_SPLIT = re.compile(r"[\s,;]+")


class PatternReadError(ValueError):
    """A file cannot be read as a powder pattern; the message names the file and why."""


@dataclass(frozen=True)
class Measured:
    """One measured pattern.

    Attributes:
        source: The file it came from.
        index: Its position in that file (0 for single-pattern files).
        two_theta: 2θ, degrees, increasing.
        intensity: Intensities (counts or any scale).
        wavelength: Wavelength of the measurement, Å, when the file says; else ``None``.
        labels: Labels stored with the pattern (e.g. ``space_group`` in ``.npz`` archives).
    """

    source: str
    index: int
    two_theta: np.ndarray
    intensity: np.ndarray
    wavelength: float | None = None
    labels: dict[str, int] = field(default_factory=dict)


def _checked(path: Path, two_theta: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort by 2θ, drop repeats and non-finite points, and check what is left is a pattern."""
    finite = np.isfinite(two_theta) & np.isfinite(intensity)
    two_theta, intensity = two_theta[finite], intensity[finite]
    order = np.argsort(two_theta, kind="stable")
    two_theta, intensity = two_theta[order], intensity[order]
    keep = np.concatenate([[True], np.diff(two_theta) > 0])
    two_theta, intensity = two_theta[keep], intensity[keep]
    if len(two_theta) < MIN_POINTS:
        raise PatternReadError(f"{path}: only {len(two_theta)} data points (need {MIN_POINTS})")
    if two_theta[0] < 0 or two_theta[-1] > 180:
        raise PatternReadError(f"{path}: 2θ values {two_theta[0]}-{two_theta[-1]} are not degrees")
    return two_theta, intensity


def read_text(path: Path) -> Measured:
    """Two (or more) numeric columns: 2θ (degrees) and intensity; other lines are skipped."""
    rows = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        raise PatternReadError(f"{path}: cannot be read ({error})") from error
    for line in lines:
        parts = [p for p in _NUMBER_SPLIT.split(line.strip()) if p]
        if len(parts) < 2:
            continue
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except ValueError:
            continue  # header, comment, RRUFF "##KEY=value" line
    if not rows:
        raise PatternReadError(f"{path}: no lines with two numeric columns (2θ, intensity)")
    data = np.asarray(rows, dtype=float)
    two_theta, intensity = _checked(path, data[:, 0], data[:, 1])
    return Measured(str(path), 0, two_theta, intensity)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    return next((e for e in element.iter() if _local(e.tag) == name), None)


def read_xrdml(path: Path) -> Measured:
    """PANalytical XRDML: the first scan's 2θ axis and counts (or intensities), and wavelength.

    The wavelength is the Kα1/Kα2 mean weighted by the file's ratio (the doublet is not
    resolved in the peak positions a classifier sees), else Kα1.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise PatternReadError(f"{path}: not a readable XRDML file ({error})") from error
    points = _find(root, "dataPoints")
    if points is None:
        raise PatternReadError(f"{path}: no <dataPoints> in the XRDML file")
    values = next(
        (e for e in points.iter() if _local(e.tag) in ("counts", "intensities") and e.text), None
    )
    axis = next(
        (e for e in points if _local(e.tag) == "positions" and e.get("axis") == "2Theta"), None
    )
    if values is None or axis is None:
        raise PatternReadError(f"{path}: XRDML scan lacks counts or a 2Theta axis")
    intensity = np.array(values.text.split(), dtype=float)
    listed = _find(axis, "listPositions")
    if listed is not None and listed.text:
        two_theta = np.array(listed.text.split(), dtype=float)
    else:
        start, end = _find(axis, "startPosition"), _find(axis, "endPosition")
        if start is None or end is None:
            raise PatternReadError(f"{path}: XRDML 2Theta axis has no start/end positions")
        two_theta = np.linspace(float(start.text), float(end.text), len(intensity))
    if len(two_theta) != len(intensity):
        raise PatternReadError(f"{path}: {len(two_theta)} 2θ values for {len(intensity)} counts")
    wavelength = None
    alpha1, alpha2 = _find(root, "kAlpha1"), _find(root, "kAlpha2")
    ratio = _find(root, "ratioKAlpha2KAlpha1")
    if alpha1 is not None:
        wavelength = float(alpha1.text)
        if alpha2 is not None and ratio is not None and float(ratio.text) > 0:
            r = float(ratio.text)
            wavelength = (wavelength + r * float(alpha2.text)) / (1.0 + r)
    two_theta, intensity = _checked(path, two_theta, intensity)
    return Measured(str(path), 0, two_theta, intensity, wavelength)


def read_npz(path: Path) -> list[Measured]:
    """Archives like ``rruff_dev.npz``: ``intensity`` (N × M), ``two_theta`` (M), any labels."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise PatternReadError(f"{path}: not a readable .npz archive ({error})") from error
    missing = {"intensity", "two_theta"} - set(archive.files)
    if missing:
        raise PatternReadError(f"{path}: .npz lacks array(s) {sorted(missing)}")
    intensity = np.atleast_2d(archive["intensity"]).astype(float)
    two_theta = archive["two_theta"].astype(float)
    if intensity.shape[1] != len(two_theta):
        raise PatternReadError(
            f"{path}: intensity has {intensity.shape[1]} columns for {len(two_theta)} 2θ values"
        )
    label_names = [k for k in ("crystal_system", "space_group") if k in archive.files]
    patterns = []
    for i, row in enumerate(intensity):
        x, y = _checked(path, two_theta, row)
        labels = {k: int(archive[k][i]) for k in label_names}
        patterns.append(Measured(str(path), i, x, y, None, labels))
    return patterns


def read_patterns(path: Path | str) -> list[Measured]:
    """All patterns in one file, by its suffix.

    Raises:
        PatternReadError: Unknown format, unreadable file or no usable data; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PatternReadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [read_text(path)]
    if suffix == ".xrdml":
        return [read_xrdml(path)]
    if suffix == ".npz":
        return read_npz(path)
    raise PatternReadError(
        f"{path}: unknown pattern format {suffix!r} (use {', '.join(TEXT_SUFFIXES)}, .xrdml, .npz)"
    )


def read_files(paths: Iterable[Path | str]) -> tuple[list[Measured], list[PatternReadError]]:
    """All patterns of many files, in order; a file that cannot be read does not stop the rest.

    Returns:
        The patterns of the readable files, and the error of each other file (naming it).
    """
    patterns: list[Measured] = []
    errors: list[PatternReadError] = []
    for path in paths:
        try:
            patterns.extend(read_patterns(path))
        except PatternReadError as error:
            errors.append(error)
    return patterns, errors


def convert_two_theta(two_theta: np.ndarray, source: float, target: float) -> np.ndarray:
    """2θ (degrees) measured at wavelength ``source`` → 2θ of the same d at ``target`` (Å).

    Points whose d cannot diffract at ``target`` (sin θ > 1) become NaN.
    """
    sin_theta = np.sin(np.radians(two_theta) / 2.0) * target / source
    with np.errstate(invalid="ignore"):
        return np.degrees(2.0 * np.arcsin(np.where(sin_theta <= 1.0, sin_theta, np.nan)))


def to_grid(
    pattern: Measured,
    grid: Grid | None = None,
    wavelength: float = WAVELENGTHS["CuKa"],
    assumed_wavelength: float | None = None,
) -> tuple[np.ndarray, float]:
    """Resample a measured pattern onto the model grid, min-max scaled to 0-1.

    Args:
        pattern: The measurement.
        grid: Model grid (default 5-89.99° in 0.01°).
        wavelength: The model's wavelength, Å.
        assumed_wavelength: Wavelength to assume when the file does not say (default: the
            model's).

    Returns:
        The resampled pattern (grid points,) and the fraction of the grid the measurement
        covers (points outside it are 0).
    """
    grid = grid or Grid()
    x = grid.values().double().numpy()
    source = pattern.wavelength or assumed_wavelength or wavelength
    two_theta = pattern.two_theta
    if not math.isclose(source, wavelength, rel_tol=1e-6):
        two_theta = convert_two_theta(two_theta, source, wavelength)
    valid = np.isfinite(two_theta)
    two_theta, intensity = two_theta[valid], pattern.intensity[valid]
    covered = (x >= two_theta[0]) & (x <= two_theta[-1])
    values = np.where(covered, np.interp(x, two_theta, intensity), 0.0)
    inside = values[covered]
    if inside.size == 0:
        return np.zeros_like(x, dtype=np.float32), 0.0
    lo, hi = inside.min(), inside.max()
    scaled = np.where(covered, (values - lo) / max(hi - lo, 1e-12), 0.0)
    return scaled.astype(np.float32), float(covered.mean())
