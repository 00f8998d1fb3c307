"""Synthetic bright-field TEM micrographs of colloidal nanocrystals, with exact instance truth.

The generator follows the microscope's own order of events, so each effect can be tuned alone:

1. Particles of the 11 shape classes (lognormal sizes, random rotation) are placed on the
   support film: freely with a small gap, touching a neighbour, overlapping one, or packed in
   dense hexagonal monolayer domains.
2. Each particle adds its projected thickness t(x, y) (nm), taken from a 3D-ish profile: the
   chord length of a sphere or cylinder for round particles, a flat slab for cubes and plates.
3. Mass–thickness contrast: the objective aperture stops electrons scattered to high angles, so
   the transmitted intensity falls as I = I0·exp(−t/λ) with λ the mean free path for scattering
   outside the aperture; Bragg-oriented crystals scatter more, which is why some particles look
   much darker than others of the same size (diffraction contrast).
4. The amorphous carbon film adds a fine speckle and slow thickness undulations; the beam is
   never perfectly even.
5. Defocus blurs the image and adds a bright Fresnel fringe just outside particle edges
   (underfocus).
6. The detector counts electrons: Poisson shot noise at the chosen dose.
7. The image is quantised to 8 or 16 bits and a scale bar with its label is burned in.

Reference: D. B. Williams and C. B. Carter, *Transmission Electron Microscopy*, 2nd ed.
(Springer, 2009): ch. 22 (amplitude and mass–thickness contrast), ch. 23 (Fresnel fringes).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage
from skimage import draw, io

from nanoxtal.arguments import settings_from
from nanoxtal.files import atomic_write

# The shape classes of the recipe data (data/recipes/shape_classes.txt), in that file's order.
SHAPE_CLASSES = (
    "Irregular shape",
    "cube",
    "flower shape",
    "four-pointed star",
    "hexagon",
    "rectangle",
    "rhombus",
    "rod",
    "six-pointed star",
    "sphere",
    "triangle",
)
# Round scale-bar lengths (nm) a microscope's software would choose.
SCALE_BAR_LENGTHS_NM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Placement tries for a free spot before a particle is given up.
FREE_ATTEMPTS = 40

# Inner/outer radius of the stars: a four-pointed star with slender points, and the hexagram
# (two overlaid triangles, inner radius 1/√3 of the outer).
FOUR_STAR_INNER = 0.42
SIX_STAR_INNER = 1 / math.sqrt(3)
# Thickness profile of each class: "round" (sphere or cylinder chord) or "flat" (slab).
ROUND_SHAPES = frozenset({"sphere", "rod", "flower shape", "Irregular shape"})
PLATE_SHAPES = frozenset(
    {"triangle", "hexagon", "rhombus", "four-pointed star", "six-pointed star"}
)


@dataclass(frozen=True)
class MicrographSettings:
    """What to simulate: geometry, particles, contrast and detector.

    The contrast and noise defaults were matched to a real bright-field micrograph of 15 nm
    particles (data/tem/sophon_example, 0.85 nm/px, 8 bit): film at ~68 % of full scale,
    particles ~50 % as bright on average, and a 5-px high-pass noise of ~12 % of the film level.

    Attributes:
        width_px: Image width (px).
        height_px: Image height (px).
        nm_per_px: Pixel size (nm/px).
        count: Particles to place; None: as many as ``coverage`` asks for.
        coverage: Projected area fraction of the image to cover with particles (0–0.9), used
            when ``count`` is None. Particles that find no free place are left out, so dense
            targets are met only approximately.
        diameter_nm: Mean equivalent-circle diameter (nm): the diameter of the disk with the
            particle's projected area.
        size_spread: Relative standard deviation of that diameter (lognormal; 0.1 = 10 %).
        shape_weights: Relative frequency of each shape class (names from ``SHAPE_CLASSES``);
            classes left out are not drawn.
        rod_aspect: Mean length/width of rods.
        rectangle_aspect: Mean long/short side of rectangles.
        rhombus_aspect: Mean long/short diagonal of rhombi.
        aspect_spread: Relative standard deviation of those aspect ratios (lognormal).
        plate_thickness: Thickness of plate-like particles (triangles, hexagons, rhombi, stars)
            relative to their circumscribed diameter.
        touching_probability: Chance that a particle is placed touching one already placed.
        overlap_probability: Chance that it is placed overlapping one (0: no overlaps).
        min_gap_nm: Least gap between freely placed particles (nm), e.g. the ligand shell.
        edge_overhang: How far a particle's centre may lie outside the image, as a fraction
            of its half-size (0: centres inside, so every cut particle shows at least about
            half of itself; 1: down to a sliver). A micrograph is a window on a larger
            specimen, and the image edge cuts particles at any fraction; annotators mark
            the slivers too. Not used by monolayers.
        monolayer: Pack the particles in hexagonal monolayer domains instead; ``count``,
            ``coverage`` and the touching and overlap probabilities are then unused.
        monolayer_fraction: Fraction of the image covered by monolayer domains.
        monolayer_gap_nm: Gap between neighbours in a monolayer (nm).
        monolayer_disorder: Random displacement of lattice sites, relative to their spacing.
        mean_free_path_nm: λ in I = I0·exp(−t/λ) (nm): the mean free path for scattering outside
            the objective aperture; smaller for heavier elements and smaller apertures.
        diffraction_contrast: Mean extra darkening of crystals near a Bragg orientation, as a
            relative increase of their effective thickness (exponentially distributed; 0: none).
        brightness: Background (film) level as a fraction of the full scale.
        film_texture: Relative standard deviation of the carbon film's fine speckle.
        film_grain_nm: Correlation length of that speckle (nm, Gaussian sigma; at least 0.7 px).
        film_undulation: Relative standard deviation of slow film thickness variations.
        support_depth: Mean optical depth (−ln of transmission) of a granular support under
            the particles where it lies (0: none), e.g. carbon black or oxide aggregates of
            supported catalysts.
        support_grain_nm: Size of the support's grains (nm), about the particles' own size in
            such images, hence lumps a segmenter must learn not to count.
        support_coverage: Fraction of the image the support covers.
        defocus_sigma_px: Defocus blur (px, Gaussian sigma).
        fresnel_fringe: Strength of the bright Fresnel fringe outside particle edges (0: none).
        fringe_width_px: Width of that fringe (px, Gaussian sigma).
        dose_e_per_px: Electrons per pixel in the beam through the film (Poisson shot noise);
            None: noiseless.
        illumination_gradient: Peak-to-peak relative variation of the illumination.
        scale_bar: Burn a scale bar and its label (e.g. "50 nm") into a corner.
        scale_bar_dark: Black bar and label (True) or white (False).
        bits: Bit depth of the image, 8 or 16.
    """

    width_px: int = 1024
    height_px: int = 1024
    nm_per_px: float = 0.5
    count: int | None = None
    coverage: float = 0.15
    diameter_nm: float = 15.0
    size_spread: float = 0.1
    shape_weights: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(SHAPE_CLASSES, 1.0)
    )
    rod_aspect: float = 3.5
    rectangle_aspect: float = 1.6
    rhombus_aspect: float = 1.7
    aspect_spread: float = 0.15
    plate_thickness: float = 0.4
    touching_probability: float = 0.3
    overlap_probability: float = 0.05
    min_gap_nm: float = 1.0
    edge_overhang: float = 0.0
    monolayer: bool = False
    monolayer_fraction: float = 0.75
    monolayer_gap_nm: float = 2.0
    monolayer_disorder: float = 0.04
    mean_free_path_nm: float = 20.0
    diffraction_contrast: float = 0.3
    brightness: float = 0.68
    film_texture: float = 0.1
    film_grain_nm: float = 0.8
    film_undulation: float = 0.03
    support_depth: float = 0.0
    support_grain_nm: float = 20.0
    support_coverage: float = 0.6
    defocus_sigma_px: float = 0.8
    fresnel_fringe: float = 0.4
    fringe_width_px: float = 3.0
    dose_e_per_px: float | None = 120.0
    illumination_gradient: float = 0.15
    scale_bar: bool = True
    scale_bar_dark: bool = True
    bits: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape_weights", dict(self.shape_weights))
        problems = _problems(self)
        if problems:
            raise ValueError("invalid micrograph settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> MicrographSettings:
        """Settings from a mapping (e.g. JSON), defaults for what it leaves out.

        Raises:
            ValueError: Unknown keys or invalid values.
        """
        return settings_from(cls, values, "micrograph")


def _problems(settings: MicrographSettings) -> list[str]:
    """Human-readable reasons the settings cannot be simulated (empty when fine)."""
    s = settings
    checks = [
        (s.width_px >= 16 and s.height_px >= 16, "width_px and height_px must be ≥ 16"),
        (s.nm_per_px > 0, "nm_per_px must be > 0"),
        (s.count is None or s.count >= 0, "count must be ≥ 0"),
        (0 <= s.coverage <= 0.9, "coverage must be within 0–0.9"),
        (s.diameter_nm > 0 and s.size_spread >= 0, "diameter_nm > 0 and size_spread ≥ 0"),
        (not set(s.shape_weights) - set(SHAPE_CLASSES), f"shape classes are {SHAPE_CLASSES}"),
        (
            all(w >= 0 for w in s.shape_weights.values()) and sum(s.shape_weights.values()) > 0,
            "shape_weights must be ≥ 0 with a positive sum",
        ),
        (
            min(s.rod_aspect, s.rectangle_aspect, s.rhombus_aspect) >= 1,
            "aspect ratios must be ≥ 1",
        ),
        (s.aspect_spread >= 0 and s.plate_thickness > 0, "aspect_spread ≥ 0, plate_thickness > 0"),
        (0 <= s.edge_overhang <= 1, "edge_overhang must be within 0–1"),
        (
            min(s.touching_probability, s.overlap_probability) >= 0
            and s.touching_probability + s.overlap_probability <= 1,
            "touching and overlap probabilities must be ≥ 0 and add up to ≤ 1",
        ),
        (s.min_gap_nm >= 0 and s.monolayer_gap_nm >= 0, "gaps must be ≥ 0"),
        (0 < s.monolayer_fraction <= 1, "monolayer_fraction must be within (0, 1]"),
        (0 <= s.monolayer_disorder < 0.25, "monolayer_disorder must be within [0, 0.25)"),
        (s.mean_free_path_nm > 0, "mean_free_path_nm must be > 0"),
        (s.diffraction_contrast >= 0, "diffraction_contrast must be ≥ 0"),
        (0 < s.brightness <= 1, "brightness must be within (0, 1]"),
        (
            min(s.film_texture, s.film_undulation, s.film_grain_nm) >= 0,
            "film settings must be ≥ 0",
        ),
        (
            s.support_depth >= 0 and s.support_grain_nm > 0 and 0 <= s.support_coverage <= 1,
            "support_depth ≥ 0, support_grain_nm > 0 and support_coverage within 0–1",
        ),
        (
            min(s.defocus_sigma_px, s.fresnel_fringe, s.fringe_width_px) >= 0,
            "blur and fringe settings must be ≥ 0",
        ),
        (s.dose_e_per_px is None or s.dose_e_per_px > 0, "dose_e_per_px must be > 0 or None"),
        (s.illumination_gradient >= 0, "illumination_gradient must be ≥ 0"),
        (s.bits in (8, 16), "bits must be 8 or 16"),
    ]
    return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class ScaleBar:
    """A burned-in scale bar, the truth for pixel-size calibration.

    Attributes:
        length_nm: The round length the bar stands for (nm).
        length_px: Its length in the image (px): ``round(length_nm / nm_per_px)``.
        label: Its label text, e.g. "50 nm".
        bar: The bar's box (row0, col0, row1, col1), px, ends exclusive.
        text: The label's box (row0, col0, row1, col1), px, ends exclusive.
        dark: Black (True) or white (False).
    """

    length_nm: float
    length_px: int
    label: str
    bar: tuple[int, int, int, int]
    text: tuple[int, int, int, int]
    dark: bool


@dataclass(frozen=True)
class ParticleMask:
    """A particle's whole projected outline, also where it is hidden or outside the frame.

    Attributes:
        row0: Image row of the crop's first row (px; negative beyond the top edge).
        col0: Image column of the crop's first column (px).
        mask: Boolean crop of the outline.
    """

    row0: int
    col0: int
    mask: np.ndarray

    def in_frame(self, shape: tuple[int, int]) -> np.ndarray:
        """The outline as a boolean image of the given (height, width), clipped to it."""
        full = np.zeros(shape, dtype=bool)
        rows = slice(max(self.row0, 0), min(self.row0 + self.mask.shape[0], shape[0]))
        cols = slice(max(self.col0, 0), min(self.col0 + self.mask.shape[1], shape[1]))
        if rows.start < rows.stop and cols.start < cols.stop:
            full[rows, cols] = self.mask[
                rows.start - self.row0 : rows.stop - self.row0,
                cols.start - self.col0 : cols.stop - self.col0,
            ]
        return full


@dataclass
class Micrograph:
    """A simulated micrograph and its truth.

    Attributes:
        image: The micrograph, uint8 or uint16 (height × width); particles are dark.
        instances: int32 labels (height × width): 0 is background (film and scale bar), each
            particle has its own id; where particles overlap the one on top owns the pixels.
        particles: One row per particle: ``id``, ``shape``, centroid ``x_px``/``y_px`` (of the
            whole particle, px), ``diameter_nm`` (equivalent-circle diameter of its full
            projected area), ``size_nm`` (circumscribed diameter), ``aspect``, ``rotation_deg``,
            ``thickness_nm`` (largest projected thickness), ``contrast`` (diffraction
            darkening factor), ``area_px`` (full area, also what is hidden or outside the
            image), ``visible_px`` (pixels it owns in ``instances``), ``touches_border`` (cut
            by the image frame), ``occluded`` (some in-frame pixels hidden by a particle on top
            or the scale bar), ``overlaps`` (shares pixels with another particle) and
            ``placement`` (free, touching, overlapping or monolayer).
        nm_per_px: Pixel size (nm/px).
        scale_bar: The scale bar, or None when there is none.
        settings: The settings it was simulated with.
        masks: Each particle's whole outline (amodal truth), in id order: ``masks[id - 1]``.
    """

    image: np.ndarray
    instances: np.ndarray
    particles: pd.DataFrame
    nm_per_px: float
    scale_bar: ScaleBar | None
    settings: MicrographSettings
    masks: list[ParticleMask] = field(default_factory=list)

    def full_mask(self, particle_id: int) -> np.ndarray:
        """Boolean image of a particle's whole outline within the frame, hidden parts included."""
        return self.masks[particle_id - 1].in_frame(self.image.shape)


# ---------------------------------------------------------------------------------------------
# Shapes: outlines of unit circumscribed diameter (every vertex within radius 0.5), as (x, y).


def _polar(radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])


def _regular(corners: int, start: float = 0.0) -> np.ndarray:
    angles = start + 2 * np.pi * np.arange(corners) / corners
    return _polar(np.full(corners, 0.5), angles)


def _sphere(aspect: float, rng: np.random.Generator) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    return np.column_stack([0.5 * np.cos(angles), 0.5 / aspect * np.sin(angles)])


def _cube(aspect: float, rng: np.random.Generator) -> np.ndarray:
    # A cube seen along <100> projects to a square.
    return _regular(4, np.pi / 4)


def _rectangle(aspect: float, rng: np.random.Generator) -> np.ndarray:
    diagonal = math.hypot(aspect, 1.0)
    half_long, half_short = 0.5 * aspect / diagonal, 0.5 / diagonal
    return np.array(
        [[half_long, half_short], [-half_long, half_short], [-half_long, -half_short],
         [half_long, -half_short]]
    )  # fmt: skip


def _rod(aspect: float, rng: np.random.Generator) -> np.ndarray:
    # A spherocylinder: length 1 tip to tip, width 1/aspect, hemispherical caps.
    radius = 0.5 / aspect
    cap = np.linspace(-np.pi / 2, np.pi / 2, 19)
    shift = np.array([0.5 - radius, 0.0])
    right = _polar(np.full(cap.size, radius), cap) + shift
    left = _polar(np.full(cap.size, radius), cap + np.pi) - shift
    return np.vstack([right, left])


def _rhombus(aspect: float, rng: np.random.Generator) -> np.ndarray:
    return np.array([[0.5, 0.0], [0.0, 0.5 / aspect], [-0.5, 0.0], [0.0, -0.5 / aspect]])


def _triangle(aspect: float, rng: np.random.Generator) -> np.ndarray:
    return _regular(3, np.pi / 2)


def _hexagon(aspect: float, rng: np.random.Generator) -> np.ndarray:
    return _regular(6)


def _star(points: int, inner: float) -> np.ndarray:
    radii = np.tile([0.5, 0.5 * inner], points)
    return _polar(radii, np.pi * np.arange(2 * points) / points + np.pi / 2)


def _four_star(aspect: float, rng: np.random.Generator) -> np.ndarray:
    return _star(4, FOUR_STAR_INNER)


def _six_star(aspect: float, rng: np.random.Generator) -> np.ndarray:
    return _star(6, SIX_STAR_INNER)


def _flower(aspect: float, rng: np.random.Generator) -> np.ndarray:
    """The union of a core disk and round lobes around it, traced from the centre.

    Lobes of radius ρ centred at distance c reach along a ray at angle Δ from their axis to
    c·cos Δ + √(ρ² − c²·sin² Δ); with a core of radius ≥ c − ρ every ray stays inside the union,
    so the outline is exact.
    """
    lobes = int(rng.integers(5, 9))
    lobe = 0.5 * rng.uniform(0.26, 0.34)
    centre = 0.5 - lobe
    core = centre - 0.4 * lobe
    angles = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    offsets = angles[:, None] - (2 * np.pi * np.arange(lobes) / lobes)[None, :]
    across = (lobe**2 - (centre * np.sin(offsets)) ** 2).clip(0)
    reach = np.where(
        (np.cos(offsets) > 0) & (across > 0), centre * np.cos(offsets) + np.sqrt(across), 0.0
    )
    return _polar(np.maximum(core, reach.max(axis=1)), angles)


def _irregular(aspect: float, rng: np.random.Generator) -> np.ndarray:
    """A smoothed random radial function: a few low harmonics around a circle."""
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    orders = np.arange(2, 7)
    amplitudes = rng.normal(0.0, 0.2 / orders)
    phases = rng.uniform(0, 2 * np.pi, orders.size)
    radii = 1 + (amplitudes[None] * np.cos(orders[None] * angles[:, None] + phases[None])).sum(1)
    radii = radii.clip(0.55 * radii.max())
    return _polar(0.5 * radii / radii.max(), angles)


OUTLINES: dict[str, Callable[[float, np.random.Generator], np.ndarray]] = {
    "Irregular shape": _irregular,
    "cube": _cube,
    "flower shape": _flower,
    "four-pointed star": _four_star,
    "hexagon": _hexagon,
    "rectangle": _rectangle,
    "rhombus": _rhombus,
    "rod": _rod,
    "six-pointed star": _six_star,
    "sphere": _sphere,
    "triangle": _triangle,
}


def polygon_area(vertices: np.ndarray) -> float:
    """Area of a simple polygon given as (x, y) vertices (shoelace formula), in their units²."""
    x, y = vertices[:, 0], vertices[:, 1]
    twice = x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]
    return 0.5 * abs(float(twice))


def shape_outline(
    shape: str,
    size_px: float,
    aspect: float = 1.0,
    rotation_deg: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Outline of a particle as (x, y) vertices (px) around its centre.

    Args:
        shape: One of ``SHAPE_CLASSES``.
        size_px: Diameter of the circle circumscribing the particle (px); for rods their
            length, for rectangles their diagonal.
        aspect: Length/width of rods, long/short side of rectangles, long/short diagonal of
            rhombi, axis ratio of (elliptical) spheres; other classes ignore it.
        rotation_deg: Counter-clockwise rotation in the image (degrees).
        rng: Randomness of the flower (lobe count, size) and irregular (harmonics) outlines.

    Raises:
        ValueError: Unknown shape class.
    """
    if shape not in OUTLINES:
        raise ValueError(f"unknown shape class {shape!r}; known: {', '.join(SHAPE_CLASSES)}")
    unit = OUTLINES[shape](max(1.0, aspect), np.random.default_rng(rng))
    return _rotated(unit * size_px, rotation_deg)


def _rotated(vertices: np.ndarray, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return vertices @ rotation.T


def _fill(vertices: np.ndarray, centre: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie inside the outline placed at (row, col)."""
    mask = np.zeros(shape, dtype=bool)
    rows, cols = draw.polygon(vertices[:, 1] + centre[0], vertices[:, 0] + centre[1], shape)
    mask[rows, cols] = True
    return mask


def shape_mask(
    shape: str,
    size_px: float,
    aspect: float = 1.0,
    rotation_deg: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Boolean mask of one particle, centred in a square crop with a 2-px empty margin.

    Args are those of ``shape_outline``; the particle's centre is the crop's central pixel.
    """
    outline = shape_outline(shape, size_px, aspect, rotation_deg, rng)
    half = math.ceil(size_px / 2) + 2
    return _fill(outline, (half, half), (2 * half + 1, 2 * half + 1))


# ---------------------------------------------------------------------------------------------
# Particles: draw their properties, rasterise them, give them a thickness profile.


@dataclass
class _Particle:
    """One particle being placed; crop coordinates are relative to the padded canvas."""

    shape: str
    diameter_nm: float
    size_px: float
    aspect: float
    rotation_deg: float
    contrast: float
    mask: np.ndarray
    gap_px: float
    thickness_nm: np.ndarray
    centre: tuple[float, float]  # (row, col) of the particle's centre within the crop
    row0: int = 0
    col0: int = 0
    placement: str = ""

    @cached_property
    def halo(self) -> np.ndarray:
        """The mask grown by the minimum gap: what must be free for a free placement."""
        if self.gap_px <= 0:
            return self.mask
        return ndimage.distance_transform_edt(~self.mask) <= self.gap_px

    def centred_at(self, row: float, col: float) -> tuple[int, int]:
        """Crop origin that puts the particle's centre nearest to (row, col)."""
        return round(row - self.centre[0]), round(col - self.centre[1])


def _lognormal(rng: np.random.Generator, mean: float, spread: float, size: int) -> np.ndarray:
    """Lognormal values with the given mean and relative standard deviation."""
    sigma = math.sqrt(math.log1p(spread**2))
    return mean * np.exp(rng.normal(-(sigma**2) / 2, sigma, size))


def _diameters(settings: MicrographSettings, rng: np.random.Generator) -> np.ndarray:
    """Equivalent diameters (nm) of the particles to place: ``count`` or enough for coverage."""
    if settings.count is not None:
        return _lognormal(rng, settings.diameter_nm, settings.size_spread, settings.count)
    target = settings.coverage * settings.width_px * settings.height_px * settings.nm_per_px**2
    mean_area = math.pi / 4 * settings.diameter_nm**2 * (1 + settings.size_spread**2)
    draws = _lognormal(
        rng, settings.diameter_nm, settings.size_spread, int(1.3 * target / mean_area) + 8
    )
    if target <= 0:
        return draws[:0]
    needed = np.searchsorted(np.cumsum(math.pi / 4 * draws**2), target) + 1
    return draws[: min(needed, draws.size)]


def _shapes(settings: MicrographSettings, rng: np.random.Generator, count: int) -> np.ndarray:
    names = list(settings.shape_weights)
    weights = np.array([settings.shape_weights[name] for name in names], dtype=float)
    return np.array(names, dtype=object)[rng.choice(len(names), count, p=weights / weights.sum())]


def _aspect(settings: MicrographSettings, shape: str, rng: np.random.Generator) -> float:
    mean = {
        "rod": settings.rod_aspect,
        "rectangle": settings.rectangle_aspect,
        "rhombus": settings.rhombus_aspect,
    }.get(shape)
    if mean is None:
        return 1.0
    return max(1.0, float(_lognormal(rng, mean, settings.aspect_spread, 1)[0]))


def _thickness_px(mask: np.ndarray, shape: str, size_px: float, aspect: float, plate: float):
    """Projected thickness (px) over the mask, from a 3D-ish profile of the shape.

    Round particles (spheres, rods lying flat, flowers, irregular ones) take the chord of a
    sphere or cylinder whose radius is the particle's inscribed radius: t = 2·√(R² − (R − e)²)
    at distance e from the outline, exact for spheres and for rods across their width. Cubes
    (seen along <100>), rectangular bars and plates are slabs of constant thickness with a
    one-pixel bevel, which stands in for the partial pixels at their edges.
    """
    edge = (ndimage.distance_transform_edt(mask) - 0.5).clip(0)
    if shape in ROUND_SHAPES:
        radius = max(float(edge.max()), 0.5)
        return 2 * np.sqrt((radius**2 - (radius - edge.clip(max=radius)) ** 2).clip(0))
    if shape == "cube":
        slab = size_px / math.sqrt(2)  # the edge length
    elif shape == "rectangle":
        slab = size_px / math.hypot(aspect, 1.0)  # a bar as thick as it is wide
    else:
        slab = plate * size_px
    return slab * edge.clip(max=1.0)  # rim pixels (half inside the outline) at half thickness


def _outline(
    settings: MicrographSettings, shape: str, diameter_nm: float, rng: np.random.Generator
) -> tuple[np.ndarray, float, float]:
    """(unit outline, aspect, circumscribed diameter in px) of a particle of this diameter."""
    aspect = _aspect(settings, shape, rng)
    unit = OUTLINES[shape](aspect, rng)
    # Scale the unit outline so that its area is that of a disk of the wanted diameter.
    size_px = diameter_nm / settings.nm_per_px * math.sqrt(math.pi / 4 / polygon_area(unit))
    return unit, aspect, size_px


def _make_particle(
    settings: MicrographSettings,
    shape: str,
    diameter_nm: float,
    rng: np.random.Generator,
    max_size_px: float | None = None,
) -> _Particle:
    """Rasterise one particle of the given equivalent diameter (nm) at a random rotation."""
    unit, aspect, size_px = _outline(settings, shape, diameter_nm, rng)
    if max_size_px is not None and size_px > max_size_px:
        diameter_nm *= max_size_px / size_px
        size_px = max_size_px
    rotation = float(rng.uniform(0, 360))
    outline = _rotated(unit * size_px, rotation)
    gap_px = settings.min_gap_nm / settings.nm_per_px
    half = math.ceil(size_px / 2 + gap_px) + 2
    centre = (half + float(rng.random()), half + float(rng.random()))
    mask = _fill(outline, centre, (2 * half + 2, 2 * half + 2))
    thickness = _thickness_px(mask, shape, size_px, aspect, settings.plate_thickness)
    contrast = 1 + min(float(rng.exponential(settings.diffraction_contrast)), 4.0)
    return _Particle(
        shape=shape,
        diameter_nm=float(diameter_nm),
        size_px=size_px,
        aspect=aspect,
        rotation_deg=rotation,
        contrast=contrast,
        mask=mask,
        gap_px=gap_px,
        thickness_nm=(thickness * settings.nm_per_px).astype(np.float32),
        centre=centre,
    )


# ---------------------------------------------------------------------------------------------
# Placement on a padded canvas, so that particle crops never need clipping at the image edge.


class _Canvas:
    """Padded maps the particles are stamped into, and the placed particles in drawing order."""

    def __init__(self, height: int, width: int, pad: int, overhang: float = 0.0) -> None:
        self.height, self.width, self.pad, self.overhang = height, width, pad, overhang
        shape = (height + 2 * pad, width + 2 * pad)
        self.occupied = np.zeros(shape, dtype=bool)
        self.cover = np.zeros(shape, dtype=np.uint8)
        self.instances = np.zeros(shape, dtype=np.int32)
        self.depth = np.zeros(shape, dtype=np.float32)  # optical depth Σ t/λ
        self.placed: list[_Particle] = []

    def margin(self, particle: _Particle) -> float:
        """How far (px) the particle's centre may lie outside the image (``edge_overhang``)."""
        return self.overhang * particle.size_px / 2

    def inside(self, particle: _Particle, row0: int, col0: int) -> bool:
        """Whether the particle's centre falls within the image, grown by its margin."""
        row, col = row0 + particle.centre[0] - self.pad, col0 + particle.centre[1] - self.pad
        margin = self.margin(particle)
        return -margin <= row < self.height + margin and -margin <= col < self.width + margin

    def free(self, mask: np.ndarray, row0: int, col0: int) -> bool:
        """Whether none of the mask's pixels is taken at this crop origin."""
        window = self.occupied[row0 : row0 + mask.shape[0], col0 : col0 + mask.shape[1]]
        return not window[mask].any()

    def stamp(self, particle: _Particle, row0: int, col0: int, placement: str, mfp: float):
        """Put the particle on top of everything placed so far."""
        particle.row0, particle.col0, particle.placement = row0, col0, placement
        window = np.s_[row0 : row0 + particle.mask.shape[0], col0 : col0 + particle.mask.shape[1]]
        self.occupied[window] |= particle.mask
        self.cover[window] += particle.mask.astype(np.uint8)
        self.instances[window][particle.mask] = len(self.placed) + 1
        self.depth[window] += particle.thickness_nm * np.float32(particle.contrast / mfp)
        self.placed.append(particle)

    def random_origin(self, particle: _Particle, rng: np.random.Generator) -> tuple[int, int]:
        margin = self.margin(particle)
        row = rng.uniform(-margin, self.height + margin)
        col = rng.uniform(-margin, self.width + margin)
        return particle.centred_at(row + self.pad, col + self.pad)


def _place_free(canvas: _Canvas, particle: _Particle, rng: np.random.Generator):
    """Crop origin of a random spot keeping the minimum gap to all others, or None."""
    for _ in range(FREE_ATTEMPTS):
        row0, col0 = canvas.random_origin(particle, rng)
        if canvas.inside(particle, row0, col0) and canvas.free(particle.halo, row0, col0):
            return row0, col0
    return None


def _anchor_centre(canvas: _Canvas, rng: np.random.Generator) -> tuple[_Particle, float, float]:
    anchor = canvas.placed[int(rng.integers(len(canvas.placed)))]
    return anchor, anchor.row0 + anchor.centre[0], anchor.col0 + anchor.centre[1]


def _place_touching(canvas: _Canvas, particle: _Particle, rng: np.random.Generator):
    """Crop origin where the particle just touches a random placed one, or None.

    Walks out from the anchor's centre in a random direction, 1 px at a time, and stops at the
    first free spot after a collision, so the two outlines are at most ~1 px apart.
    """
    anchor, row, col = _anchor_centre(canvas, rng)
    angle = rng.uniform(0, 2 * np.pi)
    collided = False
    for step in range(int((anchor.size_px + 3 * particle.size_px) / 2) + 3):
        row0, col0 = particle.centred_at(row + step * np.sin(angle), col + step * np.cos(angle))
        if not canvas.inside(particle, row0, col0):
            return None
        if not canvas.free(particle.mask, row0, col0):
            collided = True
        elif collided:
            return row0, col0
    return None


def _place_overlapping(canvas: _Canvas, particle: _Particle, rng: np.random.Generator):
    """Crop origin where the particle overlaps a random placed one, or None (centre outside)."""
    anchor, row, col = _anchor_centre(canvas, rng)
    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(0.3, 0.8) * (anchor.size_px + particle.size_px) / 2
    row0, col0 = particle.centred_at(row + distance * np.sin(angle), col + distance * np.cos(angle))
    return (row0, col0) if canvas.inside(particle, row0, col0) else None


def _scatter(settings: MicrographSettings, rng: np.random.Generator) -> _Canvas:
    """Particles placed one by one, largest first: free, touching or overlapping."""
    diameters = np.sort(_diameters(settings, rng))[::-1]
    shapes = _shapes(settings, rng, diameters.size)
    particles = [
        _make_particle(settings, s, d, rng) for s, d in zip(shapes, diameters, strict=True)
    ]
    pad = max((p.mask.shape[0] for p in particles), default=0) + 2
    canvas = _Canvas(settings.height_px, settings.width_px, pad, settings.edge_overhang)
    modes = rng.choice(
        ["free", "touching", "overlapping"],
        size=len(particles),
        p=[
            1 - settings.touching_probability - settings.overlap_probability,
            settings.touching_probability,
            settings.overlap_probability,
        ],
    )
    placers = {"touching": _place_touching, "overlapping": _place_overlapping}
    for particle, mode in zip(particles, modes, strict=True):
        origin = None
        if mode in placers and canvas.placed:
            origin = placers[mode](canvas, particle, rng)
        if origin is None:
            mode, origin = "free", _place_free(canvas, particle, rng)
        if origin is not None:
            canvas.stamp(particle, *origin, mode, settings.mean_free_path_nm)
    return canvas


def _interpolation(fine: int, coarse: int, step: int) -> np.ndarray:
    """(fine × coarse) weights of linear interpolation from grid points every ``step`` px."""
    position = np.arange(fine) / step
    lower = np.floor(position).astype(int)
    weight = (position - lower).astype(np.float32)
    matrix = np.zeros((fine, coarse), dtype=np.float32)
    matrix[np.arange(fine), lower] = 1 - weight
    matrix[np.arange(fine), np.minimum(lower + 1, coarse - 1)] += weight
    return matrix


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~scale_px (px).

    Drawn on a coarse grid and interpolated (two small matrix products), so slow fields cost
    little at any image size.
    """
    step = max(1, int(scale_px / 3))
    coarse_shape = (shape[0] // step + 2, shape[1] // step + 2)
    coarse = ndimage.gaussian_filter(
        rng.standard_normal(coarse_shape, dtype=np.float32), scale_px / step, mode="wrap"
    )
    rows = _interpolation(shape[0], coarse_shape[0], step)
    cols = _interpolation(shape[1], coarse_shape[1], step)
    fine = rows @ coarse @ cols.T
    return (fine - fine.mean()) / (fine.std() + 1e-12)


def _monolayer(settings: MicrographSettings, rng: np.random.Generator) -> _Canvas:
    """Particles on a jittered hexagonal lattice, in domains separated by bare film.

    The lattice spacing fits the 90th percentile of particle sizes plus the gap and the jitter;
    the few larger particles are shrunk to fit, so neighbours never overlap.
    """
    height, width = settings.height_px, settings.width_px
    pilot = [
        _outline(settings, s, d, rng)[2]
        for s, d in zip(
            _shapes(settings, rng, 64),
            _lognormal(rng, settings.diameter_nm, settings.size_spread, 64),
            strict=True,
        )
    ]
    gap_px = settings.monolayer_gap_nm / settings.nm_per_px
    spacing = (np.percentile(pilot, 90) + gap_px) / (1 - 2 * settings.monolayer_disorder)
    jitter = settings.monolayer_disorder * spacing
    max_size = spacing - gap_px - 2 * jitter
    reach = math.hypot(height, width) / spacing + 2
    i, j = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    angle = rng.uniform(0, np.pi / 3)
    u = spacing * (i + 0.5 * j)
    v = spacing * (math.sqrt(3) / 2 * j)
    rows = height / 2 + u * math.sin(angle) + v * math.cos(angle)
    cols = width / 2 + u * math.cos(angle) - v * math.sin(angle)
    keep = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows, cols = rows[keep], cols[keep]
    # Domains: where a smooth random field is above the quantile leaving the wanted fraction.
    domains = _smooth_field(rng, (height, width), max(height, width) / 6)
    level = domains[rows.astype(int), cols.astype(int)]
    inside = level >= (np.quantile(level, 1 - settings.monolayer_fraction) if level.size else 0)
    vacant = rng.random(rows.size) < 0.02
    sites = np.flatnonzero(inside & ~vacant)
    offsets = rng.normal(0, jitter / 2, (sites.size, 2))
    # At most `jitter` from the site, so neighbours keep the gap the spacing was made for.
    offsets *= np.minimum(1, jitter / np.maximum(np.hypot(*offsets.T), 1e-12))[:, None]
    shapes = _shapes(settings, rng, sites.size)
    diameters = _lognormal(rng, settings.diameter_nm, settings.size_spread, sites.size)
    particles = [
        _make_particle(settings, s, d, rng, max_size)
        for s, d in zip(shapes, diameters, strict=True)
    ]
    pad = max((p.mask.shape[0] for p in particles), default=0) + 2
    canvas = _Canvas(height, width, pad)
    for particle, site, offset in zip(particles, sites, offsets, strict=True):
        origin = particle.centred_at(rows[site] + offset[0] + pad, cols[site] + offset[1] + pad)
        if canvas.inside(particle, *origin):
            canvas.stamp(particle, *origin, "monolayer", settings.mean_free_path_nm)
    return canvas


# ---------------------------------------------------------------------------------------------
# Image formation.


def _film_depth(settings: MicrographSettings, rng: np.random.Generator) -> np.ndarray:
    """Optical-depth variations of the carbon film: fine speckle plus slow undulations."""
    shape = (settings.height_px, settings.width_px)
    depth = np.zeros(shape, dtype=np.float32)
    if settings.film_texture > 0:
        grain = max(0.7, settings.film_grain_nm / settings.nm_per_px)
        speckle = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), grain)
        depth += np.float32(settings.film_texture / speckle.std()) * speckle
    if settings.film_undulation > 0:
        depth += np.float32(settings.film_undulation) * _smooth_field(rng, shape, max(shape) / 12)
    if settings.support_depth > 0 and settings.support_coverage > 0:
        depth += _support_depth(settings, rng)
    return depth


def _support_depth(settings: MicrographSettings, rng: np.random.Generator) -> np.ndarray:
    """Optical depth of a granular support: particle-sized lumps over part of the image.

    Supports of catalysts (carbon black, oxides) are aggregates of primary grains about as
    large as the metal particles, so their mass-thickness contrast (Williams & Carter,
    Transmission Electron Microscopy, 2nd ed., ch. 22) makes lumps that look like faint
    particles. Modelled as a thickness 1 + z ≥ 0, z a unit Gaussian field whose correlation
    length is a third of the grain size (thin gaps where z < −1, lumps up to about four times
    the mean), scaled to mean ``support_depth``, inside a region bounded by a slow field that
    covers ``support_coverage`` of the image with soft edges.
    """
    shape = (settings.height_px, settings.width_px)
    grain_px = max(1.0, settings.support_grain_nm / settings.nm_per_px)
    lumps = np.maximum(1 + _smooth_field(rng, shape, grain_px / 3), 0)
    lumps /= lumps.mean() + 1e-12
    region = _smooth_field(rng, shape, max(shape) / 6)
    edge = np.quantile(region, 1 - settings.support_coverage)
    # region is unit-variance: a ramp 0.3 wide gives edges of a few grains, not a cliff
    cover = np.clip((region - edge) / 0.3 + 0.5, 0, 1)
    return (settings.support_depth * cover * lumps).astype(np.float32)


def _illumination(settings: MicrographSettings, rng: np.random.Generator) -> np.ndarray:
    """Relative beam intensity: a linear tilt plus a radial fall-off from an off-centre spot."""
    height, width = settings.height_px, settings.width_px
    y = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    x = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform(-0.5, 0.5, 2)
    field = np.float32(math.cos(angle)) * x + np.float32(math.sin(angle)) * y
    field = field - np.float32(rng.uniform(0.5, 1.5)) * (
        (y - centre[0]) ** 2 + (x - centre[1]) ** 2
    )
    low, high = float(field.min()), float(field.max())
    return 1 + np.float32(settings.illumination_gradient / max(high - low, 1e-9)) * (
        field - np.float32((low + high) / 2)
    )


def _optics(transmitted: np.ndarray, settings: MicrographSettings) -> np.ndarray:
    """Defocus blur, then an unsharp overshoot: the bright Fresnel fringe outside dark edges."""
    if settings.defocus_sigma_px > 0:
        transmitted = ndimage.gaussian_filter(transmitted, settings.defocus_sigma_px)
    if settings.fresnel_fringe > 0 and settings.fringe_width_px > 0:
        surround = ndimage.gaussian_filter(transmitted, settings.fringe_width_px)
        transmitted += np.float32(settings.fresnel_fringe) * (transmitted - surround)
    return transmitted


def _detect(
    intensity: np.ndarray, settings: MicrographSettings, rng: np.random.Generator
) -> np.ndarray:
    """Electron counts with Poisson shot noise, scaled and quantised to the bit depth."""
    if settings.dose_e_per_px is not None:
        counts = rng.poisson(settings.dose_e_per_px * intensity.clip(0))
        intensity = counts.astype(np.float32) / np.float32(settings.dose_e_per_px)
    top = 2**settings.bits - 1
    scaled = (intensity * np.float32(settings.brightness * top)).clip(0, top)
    return np.rint(scaled).astype(np.uint8 if settings.bits == 8 else np.uint16)


# ---------------------------------------------------------------------------------------------
# Scale bar with a built-in 5×7 bitmap font (digits and "nm"; no font files needed).

_GLYPHS = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "n": (".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "m": (".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"),
    " ": (".....",) * 7,
}


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """Boolean bitmap of ``text`` (digits, 'n', 'm', spaces) in the built-in 5×7 font.

    Characters are 5 px wide with 1 px between them, 7 px tall, all times ``scale``.

    Raises:
        ValueError: A character the font lacks.
    """
    missing = sorted(set(text) - set(_GLYPHS))
    if missing:
        raise ValueError(f"the scale-bar font has no glyphs for {missing}")
    columns = []
    for index, char in enumerate(text):
        if index:
            columns.append(np.zeros((7, 1), dtype=bool))
        columns.append(np.array([[c == "#" for c in row] for row in _GLYPHS[char]]))
    bitmap = np.hstack(columns) if columns else np.zeros((7, 0), dtype=bool)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool)).astype(bool)


def scale_bar_length(width_px: int, nm_per_px: float) -> float:
    """The round bar length (nm) closest to 15 % of the width, preferring 10–20 %."""
    fractions = np.array(SCALE_BAR_LENGTHS_NM) / nm_per_px / width_px
    within = (fractions >= 0.1) & (fractions <= 0.2)
    error = np.abs(np.log(fractions / 0.15)) + np.where(within, 0.0, 10.0)
    return float(SCALE_BAR_LENGTHS_NM[int(np.argmin(error))])


def _draw_scale_bar(
    image: np.ndarray, instances: np.ndarray, nm_per_px: float, dark: bool, rng
) -> ScaleBar:
    """Burn the bar and its label (above it) into a random corner; mark them background."""
    top = rng.random() < 0.5
    left = rng.random() < 0.5
    return burn_scale_bar(image, nm_per_px, dark=dark, corner=(top, left), instances=instances)


def font_bitmap(text: str, font: str | Path, digit_px: int) -> np.ndarray:
    """Anti-aliased coverage (0–1) of ``text`` in a font file, its digits ``digit_px`` tall.

    Rendered by FreeType through matplotlib (``matplotlib.ft2font``), cropped to the ink.

    Raises:
        ValueError: A character the font lacks, or ``digit_px`` < 4.
    """
    from matplotlib import ft2font

    if digit_px < 4:
        raise ValueError(f"digit_px must be ≥ 4, got {digit_px}")
    face = ft2font.FT2Font(str(font))
    missing = sorted(c for c in set(text) - {" "} if face.get_char_index(ord(c)) == 0)
    if missing:
        raise ValueError(f"{Path(font).name} has no glyphs for {missing}")

    def render(size: float, what: str) -> np.ndarray:
        face.set_size(size, 72)
        face.set_text(what, 0.0)
        face.draw_glyphs_to_bitmap(antialiased=True)
        return np.asarray(face.get_image(), dtype=np.float32) / 255

    def ink_rows(bitmap: np.ndarray) -> int:
        rows = np.flatnonzero((bitmap >= 0.5).any(axis=1))
        return int(rows[-1] - rows[0] + 1) if rows.size else 0

    # The height of a "0" grows in proportion to the size: one trial render gives the ratio.
    trial = 100.0
    size = trial * digit_px / max(ink_rows(render(trial, "0")), 1)
    coverage = render(size, text)
    rows = np.flatnonzero(coverage.max(axis=1) > 0.02)
    cols = np.flatnonzero(coverage.max(axis=0) > 0.02)
    if not rows.size:
        return np.zeros((digit_px, 0), dtype=np.float32)
    return coverage[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def burn_scale_bar(
    image: np.ndarray,
    nm_per_px: float,
    *,
    dark: bool = True,
    corner: tuple[bool, bool] = (False, True),
    length_nm: float | None = None,
    unit: str = "nm",
    font: str | Path | None = None,
    digit_px: int | None = None,
    outline: int = 0,
    instances: np.ndarray | None = None,
) -> ScaleBar:
    """Burn a scale bar and its label (above the bar) into a corner of ``image``, in place.

    The simulator's own bars use the built-in 5×7 font (``text_bitmap``); ``font`` draws the
    label in a real font file instead, anti-aliased, as microscope software does (for testing
    scale-bar readers on labels they were not built from).

    Args:
        image: uint8 or uint16 micrograph (height × width), changed in place.
        nm_per_px: Pixel size (nm/px).
        dark: Black bar and label (True) or white (False).
        corner: (top, left): which corner.
        length_nm: The bar's length (nm); None: ``scale_bar_length`` of the image width.
        unit: "nm" or "µm" (the label then states ``length_nm / 1000``).
        font: A TrueType/OpenType font file for the label; None: the built-in 5×7 font.
        digit_px: Height of the label's digits (px); None: 3 % of the image height (the
            5×7 font's scale rounded from it).
        outline: Width (px) of a halo of the opposite colour around the label's glyphs, as
            some microscopes draw (0: none).
        instances: Instance labels to mark the bar and label as background (0) in, or None.

    Returns:
        The bar's truth; ``text`` is the label's box.

    Raises:
        ValueError: An unknown unit, or a label character the font lacks.
    """
    if unit not in ("nm", "µm"):
        raise ValueError(f"unit must be 'nm' or 'µm', got {unit!r}")
    height, width = image.shape
    if length_nm is None:
        length_nm = scale_bar_length(width, nm_per_px)
    length_px = round(length_nm / nm_per_px)
    label = f"{length_nm:g} nm" if unit == "nm" else f"{length_nm / 1000:g} µm"
    if font is None:
        scale = max(1, round((digit_px or 0.03 * height) / 7))
        glyphs = text_bitmap(label, scale).astype(np.float32)
    else:
        glyphs = font_bitmap(label, font, digit_px or max(4, round(0.03 * height)))
    if outline > 0:
        glyphs = np.pad(glyphs, outline)
    margin = max(2, round(0.03 * min(height, width)))
    thickness = max(2, round(0.008 * height))
    block_height = glyphs.shape[0] + glyphs.shape[0] // 3 + thickness
    top, left = corner
    row = margin if top else height - margin - block_height
    col = margin if left else width - margin - max(length_px, glyphs.shape[1])
    row, col = max(row, 0), max(col, 0)
    text = (row, col, row + glyphs.shape[0], col + glyphs.shape[1])
    bar_row = row + block_height - thickness
    bar = (bar_row, col, bar_row + thickness, col + length_px)
    top_value = np.iinfo(image.dtype).max
    value = 0 if dark else top_value
    image[bar[0] : bar[2], bar[1] : bar[3]] = value
    if instances is not None:
        instances[bar[0] : bar[2], bar[1] : bar[3]] = 0
    window = image[text[0] : text[2], text[1] : text[3]]
    coverage = glyphs[: window.shape[0], : window.shape[1]]
    if font is None and outline == 0:
        window[coverage > 0] = value
    else:
        pixels = window.astype(np.float32)
        if outline > 0:
            halo = ndimage.grey_dilation(coverage, size=(2 * outline + 1,) * 2)
            pixels += halo * (top_value - value - pixels)
        pixels += coverage * (value - pixels)
        window[...] = np.rint(pixels.clip(0, top_value)).astype(image.dtype)
    if instances is not None:
        instances[text[0] : text[2], text[1] : text[3]][coverage > 0] = 0
    return ScaleBar(
        length_nm=float(length_nm),
        length_px=length_px,
        label=label,
        bar=tuple(int(v) for v in bar),
        text=tuple(int(v) for v in text),
        dark=dark,
    )


# ---------------------------------------------------------------------------------------------
# Truth table and the public entry points.


# Columns of the particle table and their types (also when no particle is in the image).
TRUTH_COLUMNS = {
    "id": "int64",
    "shape": "object",
    "x_px": "float64",
    "y_px": "float64",
    "diameter_nm": "float64",
    "size_nm": "float64",
    "aspect": "float64",
    "rotation_deg": "float64",
    "thickness_nm": "float64",
    "contrast": "float64",
    "area_px": "int64",
    "visible_px": "int64",
    "touches_border": "bool",
    "occluded": "bool",
    "overlaps": "bool",
    "placement": "object",
}


def _truth_table(canvas: _Canvas, instances: np.ndarray, nm_per_px: float) -> pd.DataFrame:
    """One row per placed particle (ids in drawing order, as in the padded instance map)."""
    pad, height, width = canvas.pad, canvas.height, canvas.width
    visible = np.bincount(instances.ravel(), minlength=len(canvas.placed) + 1)
    rows = []
    for index, p in enumerate(canvas.placed, start=1):
        r, c = np.nonzero(p.mask)
        r, c = r + p.row0 - pad, c + p.col0 - pad
        in_frame = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        window = canvas.cover[p.row0 : p.row0 + p.mask.shape[0], p.col0 : p.col0 + p.mask.shape[1]]
        rows.append(
            {
                "id": index,
                "shape": p.shape,
                "x_px": float(c.mean()),
                "y_px": float(r.mean()),
                "diameter_nm": p.diameter_nm,
                "size_nm": p.size_px * nm_per_px,
                "aspect": p.aspect,
                "rotation_deg": p.rotation_deg,
                "thickness_nm": float(p.thickness_nm.max()),
                "contrast": p.contrast,
                "area_px": int(r.size),
                "visible_px": int(visible[index]),
                "touches_border": bool(
                    (r <= 0).any()
                    | (r >= height - 1).any()
                    | (c <= 0).any()
                    | (c >= width - 1).any()
                ),
                "occluded": bool(visible[index] < in_frame.sum()),
                "overlaps": bool((window[p.mask] > 1).any()),
                "placement": p.placement,
            }
        )
    return pd.DataFrame(rows, columns=list(TRUTH_COLUMNS)).astype(TRUTH_COLUMNS)


def _drop_hidden(
    canvas: _Canvas, instances: np.ndarray, table: pd.DataFrame
) -> tuple[np.ndarray, pd.DataFrame, list[ParticleMask]]:
    """Leave out particles with no visible pixel and renumber the rest 1..n in drawing order.

    A particle hidden entirely (under another or the scale bar) still darkens the image, but
    no annotator could mark it, so it is no instance.
    """
    kept = table[table["visible_px"] > 0].reset_index(drop=True)
    lookup = np.zeros(len(table) + 1, dtype=np.int32)
    lookup[kept["id"].to_numpy()] = np.arange(1, len(kept) + 1, dtype=np.int32)
    masks = [
        ParticleMask(p.row0 - canvas.pad, p.col0 - canvas.pad, p.mask)
        for p in (canvas.placed[i - 1] for i in kept["id"])
    ]
    kept["id"] = np.arange(1, len(kept) + 1)
    return lookup[instances], kept, masks


def simulate_micrograph(
    settings: MicrographSettings, rng: np.random.Generator | int | None = None
) -> Micrograph:
    """Simulate one bright-field micrograph with its instance truth.

    Args:
        settings: What to simulate.
        rng: Random generator or seed; the same seed gives the same micrograph.

    Returns:
        The image, its instance labels, the particle table, pixel size and scale bar.
    """
    rng = np.random.default_rng(rng)
    canvas = _monolayer(settings, rng) if settings.monolayer else _scatter(settings, rng)
    frame = np.s_[canvas.pad : canvas.pad + canvas.height, canvas.pad : canvas.pad + canvas.width]
    # Mass–thickness contrast: I = I0·exp(−Σ t/λ), particles and film together.
    transmitted = np.exp(-(canvas.depth[frame] + _film_depth(settings, rng)))
    intensity = _optics(transmitted, settings) * _illumination(settings, rng)
    image = _detect(intensity, settings, rng)
    instances = canvas.instances[frame].copy()
    scale_bar = None
    if settings.scale_bar:
        scale_bar = _draw_scale_bar(
            image, instances, settings.nm_per_px, settings.scale_bar_dark, rng
        )
    table = _truth_table(canvas, instances, settings.nm_per_px)
    instances, table, masks = _drop_hidden(canvas, instances, table)
    return Micrograph(image, instances, table, settings.nm_per_px, scale_bar, settings, masks)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of a batch: depends on (seed, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def simulate_batch(
    settings: MicrographSettings, count: int, seed: int, start: int = 0
) -> Iterator[Micrograph]:
    """Micrographs ``start`` .. ``start + count − 1`` of the batch with this seed.

    Image k is the same whatever ``count`` and ``start`` are, so batches can be split into
    shards and extended.

    Raises:
        ValueError: A negative seed, start or count.
    """
    if min(seed, start, count) < 0:
        raise ValueError("seed, start and count must be ≥ 0")
    for index in range(start, start + count):
        yield simulate_micrograph(settings, image_rng(seed, index))


def _save_image(path: Path, array: np.ndarray) -> None:
    """Write an image atomically; TIFF through tifffile, PNG through scikit-image."""
    with atomic_write(path) as partial:
        if path.suffix == ".tif":
            tifffile.imwrite(partial, array)
            return
        # scikit-image picks the format by suffix: write under a .png name, then move it.
        staged = partial.with_name(partial.name + path.suffix)
        try:
            io.imsave(staged, array, check_contrast=False)
            os.replace(staged, partial)
        finally:
            staged.unlink(missing_ok=True)


def write_micrograph(micrograph: Micrograph, folder: Path | str, name: str) -> dict[str, Path]:
    """Write a micrograph and its truth into ``folder``, each file atomically.

    Files: ``<name>.png`` (8-bit) or ``<name>.tif`` (16-bit), ``<name>_instances.png``
    (16-bit labels), ``<name>_particles.csv`` and ``<name>.json`` (pixel size in nm/px, scale
    bar, settings).

    Returns:
        The written paths by role: image, instances, particles, metadata.

    Raises:
        ValueError: More particles than a 16-bit label image can hold.
    """
    folder = Path(folder)
    if micrograph.instances.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{name}: too many particles for 16-bit instance labels")
    suffix = ".png" if micrograph.image.dtype == np.uint8 else ".tif"
    paths = {
        "image": folder / f"{name}{suffix}",
        "instances": folder / f"{name}_instances.png",
        "particles": folder / f"{name}_particles.csv",
        "metadata": folder / f"{name}.json",
    }
    _save_image(paths["image"], micrograph.image)
    _save_image(paths["instances"], micrograph.instances.astype(np.uint16))
    with atomic_write(paths["particles"]) as partial:
        micrograph.particles.to_csv(partial, index=False)
    height, width = micrograph.image.shape
    metadata = {
        "image": paths["image"].name,
        "instances": paths["instances"].name,
        "particles": paths["particles"].name,
        "nm_per_px": micrograph.nm_per_px,
        "width_px": width,
        "height_px": height,
        "bits": int(micrograph.image.dtype.itemsize * 8),
        "particle_count": len(micrograph.particles),
        "scale_bar": None if micrograph.scale_bar is None else asdict(micrograph.scale_bar),
        "settings": asdict(micrograph.settings),
    }
    with atomic_write(paths["metadata"]) as partial:
        partial.write_text(json.dumps(metadata, indent=2) + "\n")
    return paths


def write_batch(
    settings: MicrographSettings,
    count: int,
    seed: int,
    folder: Path | str,
    start: int = 0,
    prefix: str = "synthetic_",
    progress: bool = False,
) -> dict[str, object]:
    """Simulate micrographs ``start`` .. ``start + count − 1`` into ``folder`` with a summary.

    Each micrograph is written by ``write_micrograph`` as ``<prefix><index:05d>``; the batch's
    summary (seed, range, particle count, settings) goes to
    ``<prefix><first>-<last>.summary.json``.

    Returns:
        The summary, as written.
    """
    from tqdm.auto import tqdm

    batch = simulate_batch(settings, count, seed, start)
    particles = 0
    for index, micrograph in enumerate(
        tqdm(batch, total=count, desc="simulate", unit="image", disable=not progress), start
    ):
        write_micrograph(micrograph, folder, f"{prefix}{index:05d}")
        particles += len(micrograph.particles)
    summary = {
        "seed": seed,
        "start": start,
        "count": count,
        "prefix": prefix,
        "particles": particles,
        "settings": asdict(settings),
    }
    path = Path(folder) / f"{prefix}{start:05d}-{start + count - 1:05d}.summary.json"
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
