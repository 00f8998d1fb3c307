"""Particle measurements from instance labels: sizes, Feret diameters, shape descriptors, class.

Everything is computed for all particles of an image at once with numpy (no loop over
particles), so a megapixel micrograph with thousands of particles is measured in a fraction of
a second:

* Areas, centroids and central moments come from ``np.bincount`` over the pixels.
* The perimeter is skimage's ``perimeter`` estimate (boundary pixels weighted by their
  neighbourhood: 1 for straight, √2 for diagonal, (1 + √2)/2 for corner runs), evaluated for all
  labels in one pass over the image.
* The convex hull is that of the pixels as unit squares (their corners), as ImageJ measures:
  a w × h px rectangle has Feret diameters h and √(w² + h²). Its vertices are found as the
  support points of ``HULL_DIRECTIONS`` directions (the points farthest along each), taken from
  the corners of the ends of each particle's horizontal pixel runs. Hull vertices whose
  exterior angle is below 360°/``HULL_DIRECTIONS`` can be skipped, which changes hull area and
  Feret diameters by far less than a pixel.

Particles that touch the image edge are measured and flagged (``touches_border``) but left out
of the image and sample statistics (``summarise_image``, ``summarise_sample``): their true
size is unknown.

Shapes are classified into the 11 classes of the recipe data (``simulate.SHAPE_CLASSES``) by a
Gaussian mixture discriminant on rotation- and scale-invariant descriptors (Feret aspect ratio,
circularity, solidity, convexity, moment axis ratio, harmonics of the hull's support function,
Hu's first invariant, and the size), fitted once per process (10–15 s) on two sources of
outlines, one Gaussian per class each: particles drawn with the simulator's own outlines
(``simulate.shape_mask``) and degraded as a segmentation outlines them (``segmentation_like``:
rounded corners, rough edges), and the outlines the classical baseline finds in simulated
micrographs (``segmented_shapes``: e.g. rods cut in pieces). Every particle gets a probability
per class (``p_<class>``); an image's or sample's dominant shape pools them over its particles
(``dominant_shape``). Accuracy through the whole chain (simulate, segment, classify) per class
and particle size, per particle and per sample: ``benchmarks/tem_shapes.py``; per particle for
a trained network too: ``nanoxtal.tem.evaluate.evaluate_synthetic_shapes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from nanoxtal.files import atomic_write
from nanoxtal.tem.instances import border_flags, fill_holes
from nanoxtal.tem.simulate import SHAPE_CLASSES, MicrographSettings, shape_mask, text_bitmap

# Directions (over 360°) whose support points make up the convex hull.
HULL_DIRECTIONS = 64
# Harmonics of the hull's support function used as shape descriptors (2: elongation, 3:
# triangles, 4: squares and rhombi, 6: hexagons).
HARMONICS = (2, 3, 4, 5, 6)
# skimage.measure.perimeter's weights for the neighbourhood codes of boundary pixels.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2

# Columns of the particle table (nm columns only when a pixel size is known).
PX_COLUMNS = {
    "particle_id": "int64",
    "area_px": "int64",
    "diameter_px": "float64",
    "feret_max_px": "float64",
    "feret_min_px": "float64",
    "aspect_ratio": "float64",
    "circularity": "float64",
    "solidity": "float64",
    "centroid_row": "float64",
    "centroid_col": "float64",
    "touches_border": "bool",
    "shape": "object",
}
NM_COLUMNS = {
    "area_nm2": "float64",
    "diameter_nm": "float64",
    "feret_max_nm": "float64",
    "feret_min_nm": "float64",
}
# The shape classifier's probability of each class, last in the particle table.
PROBABILITY_COLUMNS = {f"p_{name}": "float64" for name in SHAPE_CLASSES}
# A sample's dominant shape pools its particles' class probabilities (``dominant_shape``), each
# floored here so that one odd particle (a speck, two merged) cannot veto a class.
SHAPE_EVIDENCE_FLOOR = 0.01
# A particle supports a shape when the classifier does not rule it out: it gives the shape at
# least this fraction of the probability of the particle's likeliest class (``shape_support``).
# Chosen with the lab loop's least support (recipes.lab.LabelSettings, 0.6) on the development
# seed of benchmarks/tem_shapes.py: one-class samples at 40 and 80 px kept 97 % (classical
# outlines; rods 67 %), half-and-half mixtures 21 %; a ratio of 0.5 kept 93 % (rods 25 %) and
# 18 %.
SHAPE_SUPPORT_RATIO = 0.05
FEATURES = (
    "log_aspect",
    "circularity",
    "solidity",
    "convexity",
    "axis_ratio",
    *(f"harmonic_{m}" for m in HARMONICS),
    "hu1",
    "inverse_size",
)


# ---------------------------------------------------------------------------------------------
# Geometry of all labels at once.


def _ids_and_areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    return ids, counts


def _perimeters(labels: np.ndarray, size: int) -> np.ndarray:
    """Perimeter of every label (px) as skimage estimates it, indexed by label id."""
    padded = np.pad(labels, 1)
    inner = padded[1:-1, 1:-1]
    up, down = padded[:-2, 1:-1], padded[2:, 1:-1]
    left, right = padded[1:-1, :-2], padded[1:-1, 2:]
    # Boundary pixels: a 4-neighbour outside the label (another label, background or beyond
    # the image edge; skimage erodes with border value 0).
    border = (inner > 0) & ((up != inner) | (down != inner) | (left != inner) | (right != inner))
    marked = np.pad(np.where(border, inner, 0), 1)
    rows, cols = np.nonzero(border)
    rows, cols = rows + 1, cols + 1
    own = marked[rows, cols]
    code = np.ones(rows.size, dtype=np.int64)
    for dr, dc, weight in (
        (-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2),
        (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10),
    ):  # fmt: skip
        code += weight * (marked[rows + dr, cols + dc] == own)
    return np.bincount(own, weights=_PERIMETER_WEIGHTS[code], minlength=size)


def _chain(
    owner: np.ndarray, row: np.ndarray, x: np.ndarray, outward: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hull candidates of one side of every label.

    These are the pixel-edge corners of a label's outermost run end in each row, less the
    corners that the adjacent row's end covers.

    Args:
        owner: Labels of the run ends, sorted (raster order within a label).
        row: Their rows.
        x: Their edge x (px).
        outward: −1 for left ends (smaller x is outward), +1 for right ends.
    """
    key = owner * (int(row.max(initial=0)) + 2) + row
    # The outermost end of each (label, row): the first left end or the last right end.
    change = np.flatnonzero(np.diff(key)) + 1
    pick = np.concatenate([[0], change]) if outward < 0 else np.append(change - 1, len(key) - 1)
    owner, row, x, key = owner[pick], row[pick], x[pick] * outward, key[pick]
    # A corner shared with the adjacent row's end is kept only for the farther-out of the two.
    previous = np.concatenate([[False], (key[1:] == key[:-1] + 1) & (x[:-1] >= x[1:])])
    following = np.append((key[1:] == key[:-1] + 1) & (x[1:] > x[:-1]), False)
    top, bottom = ~previous, ~following
    return (
        np.concatenate([owner[top], owner[bottom]]),
        np.concatenate([x[top], x[bottom]]) * outward,
        np.concatenate([row[top] - 0.5, row[bottom] + 0.5]),
    )


def _run_corners(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hull candidates of every label: (label, x, y) sorted by label, px.

    Pixel centres are at integers. The convex hull of a label's pixels (as unit squares) is
    the hull of these points.
    """
    padded = np.pad(labels, ((0, 0), (1, 1)))
    rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])
    # A change between padded columns c and c + 1 is the edge x = c − 0.5 of the image.
    before, after = padded[rows, cols], padded[rows, cols + 1]
    edge = cols.astype(np.float64) - 0.5
    parts = []
    for owner, outward in ((after, -1), (before, 1)):
        inside = owner > 0
        order = np.argsort(owner[inside], kind="stable")  # raster order within each label
        parts.append(
            _chain(owner[inside][order], rows[inside][order], edge[inside][order], outward)
        )
    owner = np.concatenate([parts[0][0], parts[1][0]])
    order = np.argsort(owner, kind="stable")
    x = np.concatenate([parts[0][1], parts[1][1]])
    y = np.concatenate([parts[0][2], parts[1][2]])
    return owner[order], x[order], y[order]


def _hulls(labels: np.ndarray, ids: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Convex-hull support points of every label, in angular order.

    Returns:
        (n, HULL_DIRECTIONS, 2) as (x, y), px, relative to ``centre`` ((n, 2) as (x, y)).
    """
    owner, x, y = _run_corners(labels)
    index = np.searchsorted(ids, owner)
    points = np.column_stack([x, y]) - centre[index]
    starts = np.searchsorted(owner, ids)
    angles = 2 * np.pi * np.arange(HULL_DIRECTIONS) / HULL_DIRECTIONS
    # (directions, points) in float32: reductions along the last axis are much faster.
    x32, y32 = points[:, 0].astype(np.float32), points[:, 1].astype(np.float32)
    projection = np.cos(angles).astype(np.float32)[:, None] * x32[None]
    projection += np.sin(angles).astype(np.float32)[:, None] * y32[None]
    best = np.maximum.reduceat(projection, starts, axis=1)
    counts = np.diff(np.append(starts, len(points)))
    at_best = projection >= np.repeat(best, counts, axis=1)
    rank = np.where(at_best, np.arange(len(points), dtype=np.int32), np.int32(len(points)))
    first = np.minimum.reduceat(rank, starts, axis=1).T  # (labels, directions)
    return points[first]


def _hull_geometry(support: np.ndarray) -> dict[str, np.ndarray]:
    """Area, perimeter, Feret diameters (px) and support harmonics of hulls (n, k, 2)."""
    following = np.roll(support, -1, axis=1)
    cross = support[..., 0] * following[..., 1] - support[..., 1] * following[..., 0]
    area = 0.5 * np.abs(cross.sum(axis=1))
    edges = following - support
    lengths = np.hypot(edges[..., 0], edges[..., 1])
    # Feret diameters from antipodal vertices: the support point of the direction opposite to
    # k (± a few directions, for vertices between sampled directions).
    half = support.shape[1] // 2
    feret_max = np.zeros(len(support))
    heights = np.zeros(support.shape[:2])
    for shift in range(-2, 3):
        opposite = np.roll(support, -(half + shift), axis=1)
        gap = opposite - support
        feret_max = np.maximum(feret_max, np.hypot(gap[..., 0], gap[..., 1]).max(axis=1))
        # Distance of that vertex from the line through edge k.
        heights = np.maximum(
            heights, np.abs(edges[..., 0] * gap[..., 1] - edges[..., 1] * gap[..., 0])
        )
    # A hull's smallest width lies along one of its edges.
    with np.errstate(invalid="ignore", divide="ignore"):
        widths = np.where(lengths > 1e-9, heights / lengths, np.inf)
    feret_min = widths.min(axis=1)
    angles = 2 * np.pi * np.arange(support.shape[1]) / support.shape[1]
    reach = support[..., 0] * np.cos(angles) + support[..., 1] * np.sin(angles)
    spectrum = np.abs(np.fft.rfft(reach, axis=1))
    harmonics = spectrum[:, list(HARMONICS)] / np.maximum(spectrum[:, :1], 1e-9)
    return {
        "area": area,
        "perimeter": lengths.sum(axis=1),
        "feret_max": feret_max,
        "feret_min": feret_min,
        "harmonics": harmonics,
    }


def _moments(
    labels: np.ndarray, ids: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Centroids (row, col) and second central moments (px) of every label in ``ids``."""
    rows, cols = np.nonzero(labels)
    owner = labels[rows, cols]
    size = counts.size
    area = counts.astype(np.float64)
    safe = np.maximum(area, 1)
    mean_row = np.bincount(owner, weights=rows, minlength=size) / safe
    mean_col = np.bincount(owner, weights=cols, minlength=size) / safe
    dr, dc = rows - mean_row[owner], cols - mean_col[owner]
    central = {
        "mu20": np.bincount(owner, weights=dc * dc, minlength=size)[ids],
        "mu02": np.bincount(owner, weights=dr * dr, minlength=size)[ids],
        "mu11": np.bincount(owner, weights=dc * dr, minlength=size)[ids],
    }
    return mean_row[ids], mean_col[ids], central


def _geometry(labels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label ids and their measurements in px (area, perimeter, Ferets, descriptors ...)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"instance labels must be 2-D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance labels must be ≥ 0")
    labels = labels.astype(np.int64, copy=False)
    ids, counts = _ids_and_areas(labels)
    if ids.size == 0:
        return ids, {}
    area = counts[ids].astype(np.float64)
    row, col, central = _moments(labels, ids, counts)
    perimeter = _perimeters(labels, counts.size)[ids]
    hull = _hull_geometry(_hulls(labels, ids, np.column_stack([col, row])))
    edge = border_flags(labels, counts.size)
    # Pixel moments plus the 1/12 px² of each unit square, so tiny particles stay finite.
    mu20 = central["mu20"] / area + 1 / 12
    mu02 = central["mu02"] / area + 1 / 12
    mu11 = central["mu11"] / area
    spread = np.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    major, minor = (mu20 + mu02) / 2 + spread, (mu20 + mu02) / 2 - spread
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.minimum(4 * np.pi * area / perimeter**2, 1.0)
    circularity = np.where(perimeter > 0, circularity, 1.0)
    return ids, {
        "area": area,
        "perimeter": perimeter,
        "centroid_row": row,
        "centroid_col": col,
        "feret_max": hull["feret_max"],
        "feret_min": hull["feret_min"],
        "hull_area": hull["area"],
        "hull_perimeter": hull["perimeter"],
        "harmonics": hull["harmonics"],
        "circularity": circularity,
        "solidity": np.minimum(area / np.maximum(hull["area"], 1e-9), 1.0),
        "axis_ratio": np.sqrt(np.maximum(minor, 0) / major),
        "hu1": (mu20 + mu02) / area,
        "touches_border": edge[ids],
    }


def _features(geometry: dict[str, np.ndarray]) -> np.ndarray:
    """Rotation- and scale-invariant descriptors (n, len(FEATURES)) for the shape classifier."""
    return np.column_stack(
        [
            np.log(geometry["feret_max"] / np.maximum(geometry["feret_min"], 1e-9)),
            geometry["circularity"],
            geometry["solidity"],
            np.minimum(geometry["hull_perimeter"] / np.maximum(geometry["perimeter"], 1e-9), 1.5),
            geometry["axis_ratio"],
            geometry["harmonics"],
            geometry["hu1"],
            1 / np.sqrt(geometry["area"]),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Shape classifier.


def _pack(masks: list[np.ndarray], width: int = 2048) -> np.ndarray:
    """Labels 1..n of the masks laid out in rows (shelf packing) with a 1-px gap between."""
    placed, row, col, shelf = [], 0, 0, 0
    for mask in masks:
        height, wide = mask.shape
        if col + wide > width:
            row, col, shelf = row + shelf + 1, 0, 0
        placed.append((row, col))
        col += wide + 1
        shelf = max(shelf, height)
    labels = np.zeros((row + shelf + 1, width), dtype=np.int32)
    for number, (mask, (r, c)) in enumerate(zip(masks, placed, strict=True), start=1):
        window = labels[r : r + mask.shape[0], c : c + mask.shape[1]]
        window[mask] = number
    return labels


# How the training outlines of the shape classifier are drawn and degraded (``synthetic_shapes``).
# Chemists call near-round particles spheres: their aspect ratio is drawn as exp(|N(0, σ)|)
# (median 1.07, 95 % below 1.22).
SPHERE_ASPECT_SIGMA = 0.1
# Segmentations round corners by up to this share of the particle's size (σ of a Gaussian)...
CORNER_ROUNDING = 0.08
# ...and roughen outlines: smooth noise of up to this amplitude (in units of the mask, before
# thresholding) and a correlation length within this range (px).
ROUGHNESS = 0.3
ROUGHNESS_LENGTH_PX = (0.7, 2.5)


def segmentation_like(mask: np.ndarray, size_px: float, rng: np.random.Generator) -> np.ndarray:
    """A particle mask as a segmentation of a micrograph would outline it.

    The mask is blurred (σ = hypot(U(0, 1.2) px, U(0, ``CORNER_ROUNDING``) · size): optics
    and the network's rounding of corners), a smooth random field (amplitude
    U(0, ``ROUGHNESS``), correlation length within ``ROUGHNESS_LENGTH_PX``) is added, and the
    sum is thresholded at U(0.35, 0.65), holes filled and the largest piece kept. A
    classifier fitted on exact polygon outlines called nearly every rough real or simulated
    sphere "irregular": on simulated micrographs (``evaluate_synthetic_shapes``, seed 2025,
    3 per class) it classified 27 % of the exact particles, 9 % of those the network
    outlined and 17 % of the baseline's right; fitted on these outlines, 91 / 37 / 50 %.

    Args:
        mask: Boolean particle mask with an empty margin.
        size_px: The particle's circumscribed diameter (px).
        rng: Random generator.

    Returns:
        The degraded mask, 3 px wider on every side (blur and noise can grow the particle);
        the input when the degradation leaves nothing.
    """
    padded = np.pad(mask, 3).astype(np.float32)
    sigma = math.hypot(rng.uniform(0, 1.2), rng.uniform(0, CORNER_ROUNDING) * size_px)
    field = ndimage.gaussian_filter(padded, sigma)
    noise = ndimage.gaussian_filter(
        rng.normal(size=padded.shape), rng.uniform(*ROUGHNESS_LENGTH_PX)
    )
    field += noise * (rng.uniform(0, ROUGHNESS) / max(float(noise.std()), 1e-9))
    degraded = fill_holes(field > rng.uniform(0.35, 0.65))
    pieces, count = ndimage.label(degraded)
    if count == 0:
        return mask
    if count > 1:
        # Thin star points can break off: keep the particle's body.
        degraded = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    return degraded


def synthetic_shapes(
    per_class: int, seed: int, size_px: tuple[float, float] = (8.0, 200.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated particle outlines of every class, measured like segmented particles.

    Each particle is drawn with ``simulate.shape_mask`` (random rotation, log-uniform
    circumscribed diameter within ``size_px``, the simulator's aspect-ratio distributions;
    spheres slightly elliptical, ``SPHERE_ASPECT_SIGMA``) and degraded by
    ``segmentation_like``.

    Args:
        per_class: Particles per class.
        seed: Random seed.
        size_px: Range of circumscribed diameters (px).

    Returns:
        Descriptors (n × len(FEATURES)) and the class index of each row (into SHAPE_CLASSES).
    """
    rng = np.random.default_rng(seed)
    defaults = MicrographSettings()
    aspects = {
        "rod": defaults.rod_aspect,
        "rectangle": defaults.rectangle_aspect,
        "rhombus": defaults.rhombus_aspect,
    }
    spread = math.sqrt(math.log1p((1.5 * defaults.aspect_spread) ** 2))
    masks, classes = [], []
    for index, shape in enumerate(SHAPE_CLASSES):
        for _ in range(per_class):
            size = math.exp(rng.uniform(math.log(size_px[0]), math.log(size_px[1])))
            aspect = 1.0
            if shape in aspects:
                aspect = max(1.05, aspects[shape] * math.exp(rng.normal(0, spread)))
            elif shape == "sphere":
                aspect = math.exp(abs(rng.normal(0, SPHERE_ASPECT_SIGMA)))
            mask = shape_mask(shape, size, aspect, rng.uniform(0, 360), rng)
            masks.append(segmentation_like(mask, size, rng))
            classes.append(index)
    _, geometry = _geometry(_pack(masks))
    return _features(geometry), np.array(classes)


# Training outlines as the classical baseline segments simulated micrographs
# (``segmented_shapes``): particle sizes (equivalent diameter, px) and coverage; the side of the
# micrographs in particle diameters, within bounds (px); the least share of a segmented
# particle's pixels that must lie in one simulated particle for it to count as (a piece of)
# that particle; and how many micrographs the shape classifier is fitted on (about 800
# outlines, 5 s).
SEGMENTED_SIZES_PX = (10.0, 100.0)
SEGMENTED_COVERAGE = (0.15, 0.45)
SEGMENTED_SIDE = 8.0
SEGMENTED_SIDE_PX = (160, 512)
SEGMENTED_OWN_SHARE = 0.8
SEGMENTED_IMAGES = 60


def segmented_shapes(
    images: int, seed: int, size_px: tuple[float, float] = SEGMENTED_SIZES_PX
) -> tuple[np.ndarray, np.ndarray]:
    """Particle outlines of simulated micrographs as the classical baseline segments them.

    Each micrograph (``image_rng(seed, k)``) has particles of all classes, equivalent diameter
    log-uniform within ``size_px`` (one per image), coverage uniform within
    ``SEGMENTED_COVERAGE``, the simulator's default contrast, touching and noise, in a square
    ``SEGMENTED_SIDE`` diameters wide (within ``SEGMENTED_SIDE_PX``). It is segmented by the
    classical baseline (``segment_image`` without a model), and every segmented particle not
    touching the image edge with at least ``SEGMENTED_OWN_SHARE`` of its pixels in one
    simulated particle is taken with that particle's class. These are the outlines a segmenter
    gives: pieces of rods the watershed cut across, film grain stuck to the rim, rounded
    corners; merged particles and specks of film are left out.

    Args:
        images: Micrographs to simulate.
        seed: Their seed.
        size_px: Range of the particles' equivalent diameters (px).

    Returns:
        Descriptors (n × len(FEATURES)) and the class index of each row (into SHAPE_CLASSES).
    """
    from nanoxtal.tem.segmentation import segment_image
    from nanoxtal.tem.simulate import image_rng, simulate_micrograph

    features, classes = [np.zeros((0, len(FEATURES)))], [np.zeros(0, dtype=np.int64)]
    for k in range(images):
        rng = image_rng(seed, k)
        diameter = math.exp(rng.uniform(math.log(size_px[0]), math.log(size_px[1])))
        side = int(np.clip(round(SEGMENTED_SIDE * diameter), *SEGMENTED_SIDE_PX))
        settings = MicrographSettings(
            width_px=side,
            height_px=side,
            nm_per_px=0.5,
            diameter_nm=0.5 * diameter,
            coverage=float(rng.uniform(*SEGMENTED_COVERAGE)),
            scale_bar=False,
        )
        micrograph = simulate_micrograph(settings, rng)
        labels = segment_image(micrograph.image.astype(np.float32) / 255, None).astype(np.int64)
        truth = micrograph.instances.astype(np.int64)
        # Each segmented particle's largest overlap with one simulated particle.
        both = (labels > 0) & (truth > 0)
        stride = int(truth.max()) + 1
        pairs, overlap = np.unique(labels[both] * stride + truth[both], return_counts=True)
        size = int(labels.max()) + 1
        best = np.zeros(size, dtype=np.int64)
        owner = np.zeros(size, dtype=np.int64)
        order = np.argsort(overlap, kind="stable")  # the largest overlap is written last
        best[pairs[order] // stride] = overlap[order]
        owner[pairs[order] // stride] = pairs[order] % stride
        ids, geometry = _geometry(labels)
        if ids.size == 0:
            continue
        keep = (best[ids] >= SEGMENTED_OWN_SHARE * geometry["area"]) & ~geometry["touches_border"]
        shape_of = dict(zip(micrograph.particles["id"], micrograph.particles["shape"], strict=True))
        names = [shape_of[identity] for identity in owner[ids][keep]]
        features.append(_features(geometry)[keep])
        classes.append(np.array([SHAPE_CLASSES.index(name) for name in names], dtype=np.int64))
    return np.concatenate(features), np.concatenate(classes)


class ShapeClassifier:
    """Gaussian mixture discriminant over shape descriptors, equal class priors (numpy only).

    Each class is a mixture of Gaussians, one per source of training outlines (``fit``'s
    ``sources``, equal weights), each with its own covariance shrunk towards its diagonal
    (``shrinkage``) and with a floor on the variances, so it stays well conditioned. With one
    source this is a quadratic discriminant. Outlines drawn and degraded
    (``segmentation_like``) and outlines a segmenter gave (``segmented_shapes``) differ, e.g.
    a rod the watershed cut in three: one Gaussian for both would fit neither.
    """

    def __init__(self, shrinkage: float = 0.1) -> None:
        self.shrinkage = shrinkage
        self.means: np.ndarray | None = None
        self.precisions: np.ndarray | None = None
        self.log_dets: np.ndarray | None = None
        self.classes: np.ndarray | None = None
        self.log_weights: np.ndarray | None = None

    def fit(
        self, features: np.ndarray, classes: np.ndarray, sources: np.ndarray | None = None
    ) -> ShapeClassifier:
        """Fit one Gaussian per class and source (class indices 0..len(SHAPE_CLASSES) − 1).

        Args:
            features: Descriptors (n × len(FEATURES)).
            classes: Class index of each row.
            sources: Source of each row (any integers); None: one source. A class and
                source with fewer rows than descriptors get no Gaussian.

        Raises:
            ValueError: A class without a Gaussian.
        """
        features = np.asarray(features, dtype=np.float64)
        sources = np.zeros(len(features), dtype=np.int64) if sources is None else sources
        self.centre = features.mean(axis=0)
        self.scale = features.std(axis=0) + 1e-9
        z = (features - self.centre) / self.scale
        means, precisions, log_dets, owners = [], [], [], []
        for index in range(len(SHAPE_CLASSES)):
            for source in np.unique(sources):
                own = z[(classes == index) & (sources == source)]
                if len(own) <= z.shape[1]:
                    continue
                covariance = np.cov(own, rowvar=False)
                diagonal = np.diag(np.maximum(np.diag(covariance), 1e-3))
                covariance = (1 - self.shrinkage) * covariance + self.shrinkage * diagonal
                covariance += 1e-3 * np.eye(len(covariance))
                means.append(own.mean(axis=0))
                precisions.append(np.linalg.inv(covariance))
                log_dets.append(np.linalg.slogdet(covariance)[1])
                owners.append(index)
        owners = np.array(owners, dtype=np.int64)
        counts = np.bincount(owners, minlength=len(SHAPE_CLASSES))
        if np.any(counts == 0):
            missing = [SHAPE_CLASSES[i] for i in np.flatnonzero(counts == 0)]
            raise ValueError(f"too few training outlines of {', '.join(missing)}")
        self.means = np.array(means)
        self.precisions = np.array(precisions)
        self.log_dets = np.array(log_dets)
        self.classes = owners
        self.log_weights = -np.log(counts[owners])
        return self

    def log_likelihood(self, features: np.ndarray) -> np.ndarray:
        """Class log-likelihoods (n × classes), up to a constant."""
        if self.means is None:
            raise RuntimeError("the shape classifier is not fitted")
        z = (np.asarray(features, dtype=np.float64) - self.centre) / self.scale
        offsets = z[:, None, :] - self.means[None]
        distance = np.einsum("nki,kij,nkj->nk", offsets, self.precisions, offsets)
        parts = -0.5 * (distance + self.log_dets[None]) + self.log_weights[None]
        parts = np.where(np.isfinite(parts), parts, -np.inf)
        scores = np.full((len(z), len(SHAPE_CLASSES)), -np.inf)
        for index in range(len(SHAPE_CLASSES)):
            own = parts[:, self.classes == index]
            top = own.max(axis=1)
            safe = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):  # log 0 = −inf: no Gaussian explains the row
                scores[:, index] = safe + np.log(np.exp(own - safe[:, None]).sum(axis=1))
        return scores

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities of descriptor rows (n × classes; equal priors), rows sum to 1.

        A row no class explains at all (non-finite descriptors) gets equal probabilities.
        """
        if len(features) == 0:
            return np.zeros((0, len(SHAPE_CLASSES)))
        scores = self.log_likelihood(features)
        top = scores.max(axis=1, keepdims=True)
        weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
        total = weights.sum(axis=1, keepdims=True)
        return np.where(total > 0, weights / np.maximum(total, 1e-300), 1 / len(SHAPE_CLASSES))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class indices (into SHAPE_CLASSES) of descriptor rows."""
        if len(features) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.log_likelihood(features).argmax(axis=1)


# Sources of the shape classifier's training outlines (``shape_classifier``).
DRAWN, SEGMENTED = 0, 1


@cache
def shape_classifier(
    per_class: int = 150,
    seed: int = 20240531,
    segmented_images: int = SEGMENTED_IMAGES,
    segmented_seed: int = 20240601,
) -> ShapeClassifier:
    """The shape classifier fitted on simulated outlines (once per process and arguments).

    Two sources, one Gaussian each per class: ``per_class`` outlines per class drawn and
    degraded like a segmentation's (``synthetic_shapes``), and the outlines the classical
    baseline finds in ``segmented_images`` simulated micrographs (``segmented_shapes``;
    0: none).
    """
    drawn, drawn_classes = synthetic_shapes(per_class, seed)
    if segmented_images <= 0:
        return ShapeClassifier().fit(drawn, drawn_classes)
    found, found_classes = segmented_shapes(segmented_images, segmented_seed)
    sources = np.repeat([DRAWN, SEGMENTED], [len(drawn), len(found)])
    return ShapeClassifier().fit(
        np.vstack([drawn, found]), np.concatenate([drawn_classes, found_classes]), sources
    )


def classify_shapes(instances: np.ndarray) -> np.ndarray:
    """Shape class names of every instance, in increasing id order."""
    ids, geometry = _geometry(instances)
    if ids.size == 0:
        return np.array([], dtype=object)
    return np.array(SHAPE_CLASSES, dtype=object)[shape_classifier().predict(_features(geometry))]


# ---------------------------------------------------------------------------------------------
# Public measurements.


def measure_particles(
    instances: np.ndarray, nm_per_px: float | None, image: np.ndarray | None = None
) -> pd.DataFrame:
    """Measure every particle of an instance label image.

    Args:
        instances: Integer labels (height × width), 0 = background; ids need not be
            consecutive.
        nm_per_px: Pixel size (nm/px); None: sizes in px only.
        image: The micrograph (height × width); when given, its mean intensity per particle
            goes into ``mean_intensity``.

    Returns:
        One row per particle, in increasing id order: ``particle_id``, ``area_px`` (px²),
        ``diameter_px`` (equivalent-circle diameter, px), ``feret_max_px``/``feret_min_px``
        (largest and smallest caliper width of the pixels as squares, px), ``aspect_ratio``
        (max/min Feret), ``circularity`` (4πA/P², at most 1), ``solidity`` (area / convex-hull
        area), ``centroid_row``/``centroid_col`` (px), ``touches_border`` (a pixel on the image
        edge), ``shape`` (one of ``SHAPE_CLASSES``: the most probable); with a pixel size also
        ``area_nm2``, ``diameter_nm``, ``feret_max_nm`` and ``feret_min_nm``; with an image
        ``mean_intensity``; last ``p_<class>`` for every class of ``SHAPE_CLASSES``: the shape
        classifier's probability of that class (equal priors; they sum to 1), the evidence a
        sample's dominant shape pools (``dominant_shape``).

    Raises:
        ValueError: Labels that are not a 2-D non-negative integer image, an image of another
            shape, or a pixel size that is not positive.
    """
    if nm_per_px is not None and not (math.isfinite(nm_per_px) and nm_per_px > 0):
        raise ValueError(f"nm_per_px must be a positive number, got {nm_per_px}")
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instance labels must be integers, got {instances.dtype}")
    if image is not None and np.shape(image) != instances.shape:
        raise ValueError(f"image shape {np.shape(image)} differs from labels {instances.shape}")
    ids, geometry = _geometry(instances)
    columns = dict(PX_COLUMNS) | (NM_COLUMNS if nm_per_px is not None else {})
    if image is not None:
        columns["mean_intensity"] = "float64"
    columns |= PROBABILITY_COLUMNS
    if ids.size == 0:
        return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in columns.items()})
    probabilities = shape_classifier().probabilities(_features(geometry))
    shapes = probabilities.argmax(axis=1)
    table = pd.DataFrame(
        {
            "particle_id": ids,
            "area_px": geometry["area"].astype(np.int64),
            "diameter_px": np.sqrt(4 * geometry["area"] / np.pi),
            "feret_max_px": geometry["feret_max"],
            "feret_min_px": geometry["feret_min"],
            "aspect_ratio": geometry["feret_max"] / geometry["feret_min"],
            "circularity": geometry["circularity"],
            "solidity": geometry["solidity"],
            "centroid_row": geometry["centroid_row"],
            "centroid_col": geometry["centroid_col"],
            "touches_border": geometry["touches_border"],
            "shape": np.array(SHAPE_CLASSES, dtype=object)[shapes],
        }
    )
    if nm_per_px is not None:
        table["area_nm2"] = table["area_px"] * nm_per_px**2
        for name in ("diameter", "feret_max", "feret_min"):
            table[f"{name}_nm"] = table[f"{name}_px"] * nm_per_px
    if image is not None:
        labels = instances.astype(np.int64, copy=False).ravel()
        sums = np.bincount(labels, weights=np.asarray(image, dtype=np.float64).ravel())
        table["mean_intensity"] = sums[ids] / geometry["area"]
    for name, column in zip(PROBABILITY_COLUMNS, probabilities.T, strict=True):
        table[name] = column
    return table.astype(columns)


def dominant_shape(particles: pd.DataFrame) -> tuple[str | None, float]:
    """The shape class of a set of particles (an image's, a sample's) and its share.

    The class is the one that explains all measured particles (not touching the edge) best
    together: the largest Σᵢ log max(pᵢ(class), ``SHAPE_EVIDENCE_FLOOR``) over their class
    probabilities (``p_<class>`` of ``measure_particles``), a naive-Bayes pooling of the
    evidence with a floor. Unlike a majority of the particles' own classes it weighs how sure
    each particle is: a rod whose pieces are split between "rod" and "rectangle" with "rod"
    always a close second is a rod sample. On the samples of ``benchmarks/tem_shapes.py``
    (development seed 2025, 20 per class at 40 and 80 px, outlines by the classical baseline)
    cut down to 5 random particles each, it was right for 97.3 % of them, the majority for
    95.8 % (3 particles: 95.3 vs 92.4 %; floors of 0.001–0.2 gave 94.0–95.5 %). A table
    without the probability columns (or with gaps in them) falls back to the majority.

    Returns:
        The class (None without measured particles) and the share of the measured particles
        whose own class (``shape``) it is (NaN without any): how clear the shape is. A class
        that wins on pooled evidence can hold less than half of the particles.
    """
    measured = particles[~particles["touches_border"].astype(bool)]
    if len(measured) == 0:
        return None, math.nan
    names = list(PROBABILITY_COLUMNS)
    evidence = (
        measured[names].to_numpy(dtype=np.float64)
        if set(names) <= set(measured.columns)
        else np.full((len(measured), len(names)), np.nan)
    )
    if np.isfinite(evidence).all():
        score = np.log(np.maximum(evidence, SHAPE_EVIDENCE_FLOOR)).sum(axis=0)
        dominant = SHAPE_CLASSES[int(score.argmax())]
    else:
        dominant = str(measured["shape"].value_counts().index[0])
    return dominant, float((measured["shape"] == dominant).mean())


def shape_support(particles: pd.DataFrame, shape: str | None) -> float:
    """The share of the measured particles (not touching the edge) that support ``shape``.

    A particle supports a shape when its probability of it is at least
    ``SHAPE_SUPPORT_RATIO`` times that of its likeliest class: the classifier does not rule
    the shape out for it. This tells a sample of one shape whose outlines
    are ambiguous (rods a segmentation cut in pieces: "rectangle" by a hair, "rod" a close
    second, so "rod" holds under half of the particles' own classes) from a mixture of two
    shapes (each particle sure of its own). Without the probability columns it is the share
    of particles whose own class (``shape``) it is.

    Returns:
        The share in [0, 1]; NaN without measured particles or without a shape.
    """
    measured = particles[~particles["touches_border"].astype(bool)]
    if len(measured) == 0 or shape is None:
        return math.nan
    names = list(PROBABILITY_COLUMNS)
    if not set(names) <= set(measured.columns):
        return float((measured["shape"] == shape).mean())
    evidence = measured[names].to_numpy(dtype=np.float64)
    own = evidence[:, SHAPE_CLASSES.index(shape)]
    return float(np.mean(own >= SHAPE_SUPPORT_RATIO * evidence.max(axis=1)))


def summarise_image(particles: pd.DataFrame) -> dict[str, object]:
    """Image statistics of a particle table from ``measure_particles``.

    Particles touching the image edge are counted but not measured.

    Returns:
        ``count`` (all particles), ``count_measured`` (not touching the edge),
        ``mean_diameter`` and ``std_diameter`` (equivalent-circle diameter, sample standard
        deviation; in nm when the table has ``diameter_nm``, else px; NaN without measured
        particles, std NaN below two), ``size_distribution_pct`` (std/mean × 100, as the
        recipe data state it), ``dominant_shape`` (the class that explains the measured
        particles best together, ``dominant_shape``; None without any),
        ``dominant_shape_share`` (the share of measured particles whose own class it is: how
        clear the image's shape is; NaN without any), ``dominant_shape_support`` (the share
        of measured particles for which the classifier does not rule it out,
        ``shape_support``: tells a one-shape sample with ambiguous outlines from a mixture) and
        ``diameter_unit`` ("nm" or "px").
    """
    unit = "nm" if "diameter_nm" in particles.columns else "px"
    measured = particles[~particles["touches_border"].astype(bool)]
    diameters = measured[f"diameter_{unit}"].to_numpy(dtype=np.float64)
    mean = float(diameters.mean()) if diameters.size else math.nan
    std = float(diameters.std(ddof=1)) if diameters.size > 1 else math.nan
    dominant, share = dominant_shape(particles)
    return {
        "count": len(particles),
        "count_measured": len(measured),
        "mean_diameter": mean,
        "std_diameter": std,
        "size_distribution_pct": 100 * std / mean if mean > 0 else math.nan,
        "dominant_shape": dominant,
        "dominant_shape_share": share,
        "dominant_shape_support": shape_support(particles, dominant),
        "diameter_unit": unit,
    }


def summarise_sample(particles: Sequence[pd.DataFrame]) -> dict[str, object]:
    """Statistics of one sample (one product, imaged in several micrographs).

    The particle tables of the sample's images are pooled and summarised as one image
    (``summarise_image``): the sample's size and size distribution are those of all its
    measured particles together, as the recipe data report them, so an image with 3 particles
    does not weigh as much as one with 300.

    Args:
        particles: One ``measure_particles`` table per measured image of the sample.

    Returns:
        ``summarise_image``'s statistics of the pooled particles; sizes in nm when every
        image has a pixel size, in px when none has (then only meaningful for images taken at
        one magnification).

    Raises:
        ValueError: No table, or images with and without a pixel size (nm and px cannot be
            pooled).
    """
    if not particles:
        raise ValueError("no measured image")
    with_nm = ["diameter_nm" in table.columns for table in particles]
    if any(with_nm) and not all(with_nm):
        raise ValueError(
            f"{with_nm.count(False)} of {len(with_nm)} images have no pixel size, so their px"
            " sizes cannot be pooled with the others' nm (give --nm-per-px or measure them apart)"
        )
    return summarise_image(pd.concat(particles, ignore_index=True))


# ---------------------------------------------------------------------------------------------
# Figures.

MEASURED_RGB = (0, 220, 255)
BORDER_RGB = (255, 60, 60)
TEXT_RGB = (255, 230, 0)


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    data = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
    scaled = np.clip((data - low) / max(high - low, 1e-12), 0, 1)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def overlay(image: np.ndarray, instances: np.ndarray, particles: pd.DataFrame) -> np.ndarray:
    """The micrograph with particle outlines and ids drawn in.

    Args:
        image: Grey micrograph (height × width), any range (shown between its 0.5 and 99.5
            percentiles).
        instances: Instance labels of the same shape.
        particles: Their table from ``measure_particles`` (ids, centroids, border flags).

    Returns:
        RGB uint8 image (height × width × 3): outlines cyan for measured particles, red for
        those touching the edge, ids in yellow at the centroids (built-in 5×7 font).
    """
    rgb = _grey_rgb(image)
    labels = np.asarray(instances).astype(np.int64, copy=False)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"image shape {rgb.shape[:2]} differs from labels {labels.shape}")
    padded = np.pad(labels, 1, mode="edge")
    inner = padded[1:-1, 1:-1]
    outline = (inner > 0) & (
        (padded[:-2, 1:-1] != inner)
        | (padded[2:, 1:-1] != inner)
        | (padded[1:-1, :-2] != inner)
        | (padded[1:-1, 2:] != inner)
    )
    border_ids = particles.loc[particles["touches_border"].astype(bool), "particle_id"]
    at_border = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    at_border[border_ids.to_numpy(dtype=np.int64)] = True
    rgb[outline & ~at_border[inner]] = MEASURED_RGB
    rgb[outline & at_border[inner]] = BORDER_RGB
    scale = max(1, round(min(labels.shape) / 1000))
    height, width = labels.shape
    for pid, row, col in particles[["particle_id", "centroid_row", "centroid_col"]].itertuples(
        index=False
    ):
        glyphs = text_bitmap(str(int(pid)), scale)
        r0 = round(row) - glyphs.shape[0] // 2
        c0 = round(col) - glyphs.shape[1] // 2
        r1, c1 = min(r0 + glyphs.shape[0], height), min(c0 + glyphs.shape[1], width)
        gr0, gc0 = max(0, -r0), max(0, -c0)
        r0, c0 = max(r0, 0), max(c0, 0)
        if r0 >= r1 or c0 >= c1:
            continue
        patch = glyphs[gr0 : gr0 + r1 - r0, gc0 : gc0 + c1 - c0]
        rgb[r0:r1, c0:c1][patch] = TEXT_RGB
    return rgb


def size_histogram(particles: pd.DataFrame, path: Path | str, title: str) -> Path:
    """Save a histogram of the equivalent-circle diameters of the measured particles.

    Particles touching the image edge are left out. Diameters are in nm when the table has
    them, else px.

    Args:
        particles: Table from ``measure_particles``.
        path: Output image (.png, .pdf, .svg), written atomically.
        title: Figure title.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    summary = summarise_image(particles)
    unit = summary["diameter_unit"]
    measured = particles[~particles["touches_border"].astype(bool)]
    diameters = measured[f"diameter_{unit}"].to_numpy(dtype=np.float64)
    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    if diameters.size:
        axes.hist(diameters, bins=max(5, min(50, int(math.sqrt(diameters.size)) + 1)))
        axes.axvline(summary["mean_diameter"], color="k", linestyle="--", linewidth=1)
        std = summary["std_diameter"]
        text = f"n = {diameters.size}\nmean {summary['mean_diameter']:.1f} {unit}"
        if math.isfinite(std):
            text += f"\nσ {std:.1f} {unit} ({summary['size_distribution_pct']:.0f} %)"
        axes.text(0.98, 0.95, text, transform=axes.transAxes, ha="right", va="top", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no measured particles", transform=axes.transAxes, ha="center")
    axes.set_xlabel(f"equivalent-circle diameter ({unit})")
    axes.set_ylabel("particles")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_write(path) as partial:
        figure.savefig(partial, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path


def write_png(path: Path | str, array: np.ndarray) -> Path:
    """Write an 8- or 16-bit grey or RGB PNG atomically."""
    import os

    from skimage import io

    path = Path(path)
    with atomic_write(path) as partial:
        # scikit-image picks the format by suffix: write under a .png name, then move it.
        staged = partial.with_name(partial.name + ".png")
        try:
            io.imsave(staged, array, check_contrast=False)
            os.replace(staged, partial)
        finally:
            staged.unlink(missing_ok=True)
    return path
