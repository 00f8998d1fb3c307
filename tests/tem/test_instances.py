from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nanoxtal.tem.evaluate import average_precision, match_instances
from nanoxtal.tem.instances import (
    SMOOTHING_SHARE,
    ClassicalSettings,
    classical_instances,
    drop_small,
    fill_holes,
    guess_bright_particles,
    opening_background,
    watershed_instances,
)
from nanoxtal.tem.simulate import MicrographSettings, simulate_micrograph

# Two discs of radius 12 px pressed together (centres 22 px apart): one blob with a ~10 px
# neck, cut along the line halfway between the centres.
SHAPE = (64, 96)
CENTRES = ((32, 34), (32, 56))
RADIUS = 12


def discs(shape=SHAPE, centres=CENTRES, radius=RADIUS) -> np.ndarray:
    rows, cols = np.indices(shape)
    squared = np.stack([(rows - row) ** 2 + (cols - col) ** 2 for row, col in centres])
    nearest = squared.argmin(axis=0)
    inside = squared.min(axis=0) < radius**2
    return np.where(inside, nearest + 1, 0).astype(np.int32)


def micrograph_of(labels: np.ndarray, bright: bool = False, seed: int = 0) -> np.ndarray:
    """Dark (or bright) particles on a film, blurred a little, with noise."""
    rng = np.random.default_rng(seed)
    particle = 0.85 if bright else 0.3
    film = 0.2 if bright else 0.7
    image = np.where(labels > 0, particle, film).astype(np.float32)
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 0.04, labels.shape)
    return image.clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def spheres():
    settings = MicrographSettings(
        width_px=256,
        height_px=256,
        shape_weights={"sphere": 1.0},
        touching_probability=0.0,
        overlap_probability=0.0,
        min_gap_nm=3.0,
        scale_bar=False,
    )
    return simulate_micrograph(settings, 1)


def test_classical_on_separated_spheres(spheres):
    image = spheres.image.astype(np.float32) / 255
    predicted = classical_instances(image)
    assert predicted.dtype == np.int32
    ap = average_precision(spheres.instances, predicted)
    assert ap["ap50"] > 0.8


@pytest.mark.parametrize("bright", [False, True])
def test_classical_separates_touching_discs(bright):
    truth = discs()
    predicted = classical_instances(micrograph_of(truth, bright), ClassicalSettings(invert=bright))
    matching = match_instances(truth, predicted)
    assert matching.n_pred == 2
    assert matching.matched_iou.min() > 0.8


def test_classical_with_known_radius_and_background():
    truth = discs()
    rows = np.arange(SHAPE[0], dtype=np.float32)[:, None]
    ramp = 0.2 * rows / SHAPE[0]  # uneven illumination
    image = micrograph_of(truth) - ramp
    settings = ClassicalSettings(radius_px=RADIUS, background_width_px=4 * RADIUS)
    assert match_instances(truth, classical_instances(image, settings)).n_pred == 2


def test_classical_on_a_blank_image_finds_nothing():
    assert not classical_instances(np.full((32, 32), 0.5, dtype=np.float32)).any()


def test_classical_settings_are_checked():
    with pytest.raises(ValueError, match="radius_px"):
        ClassicalSettings(radius_px=0)
    with pytest.raises(ValueError, match="smooth_sigma_px"):
        ClassicalSettings(smooth_sigma_px=-1)


def test_guess_bright_particles(spheres):
    image = spheres.image.astype(np.float32) / 255
    assert not guess_bright_particles(image)
    assert guess_bright_particles(1 - image)


def test_opening_background_keeps_particles_and_removes_the_support():
    # HAADF-like: a small bright particle (radius 4 px) on a wide bright support (radius 60
    # px) beside dark vacuum.
    rows, cols = np.mgrid[:256, :256]
    support = 0.5 * ((rows - 128) ** 2 + (cols - 100) ** 2 < 60**2)
    particle = 0.4 * ((rows - 128) ** 2 + (cols - 100) ** 2 < 4**2)
    image = (0.1 + support + particle).astype(np.float32)
    flat = image - opening_background(image, 24)
    assert flat[128, 100] > 0.3  # the particle keeps most of its contrast
    assert np.abs(flat[128, 60:90]).max() < 0.05  # the support is gone
    # Next to the support, vacuum stays near zero: a Gaussian blur subtracted instead pulls
    # it far below, which the inverted image shows as dark particle-like rims.
    rim = (slice(124, 132), slice(164, 169))  # vacuum 4-8 px outside the support
    assert flat[rim].min() > -0.01
    gaussian = image - ndimage.gaussian_filter(image, 8, mode="nearest")
    assert gaussian[rim].min() < -0.1


def test_opening_background_on_a_decimated_grid_matches_the_direct_one():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((256, 256)), 2).astype(np.float32)
    image += np.linspace(0, 1, 256, dtype=np.float32)[None, :]
    fast = opening_background(image, 64)  # decimated by 4
    direct = ndimage.uniform_filter(
        ndimage.grey_opening(image, size=(65, 65), mode="nearest"),
        round(65 * SMOOTHING_SHARE),
        mode="nearest",
    )
    assert np.abs(fast - direct)[32:-32, 32:-32].max() < 0.05


def test_drop_small_renumbers():
    labels = np.array([[0, 4, 4, 4], [7, 0, 9, 9]])
    np.testing.assert_array_equal(drop_small(labels, 2), [[0, 1, 1, 1], [0, 0, 2, 2]])


def test_drop_small_keeps_edge_fragments_down_to_their_own_limit():
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[0, 2:4] = 1  # a 2-px fragment on the edge
    labels[4, 3:5] = 2  # a 2-px speck inside
    labels[3:6, 6:8] = 3  # a 6-px particle on the edge
    kept = drop_small(labels, 4, edge_min_area_px=2)
    assert kept[0, 2] == 1 and kept[4, 3] == 0 and kept[3, 6] == 2
    assert not drop_small(labels, 4)[0, 2]  # without the edge limit the fragment goes too


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """Distance to the background divided by each instance's largest distance (1 at centres)."""
    distance = np.zeros(labels.shape)
    for label in range(1, labels.max() + 1):
        inside = ndimage.distance_transform_edt(labels == label)
        distance = np.maximum(distance, inside / inside.max())
    return distance


def test_watershed_instances_from_distance_maps():
    truth = discs()
    foreground = (truth > 0).astype(np.float32)
    distance = normalised_distance(truth)
    predicted = watershed_instances(foreground, distance)
    assert match_instances(truth, predicted).matched_iou.min() > 0.9
    # Distance maps in px: maxima at least 8 px apart as markers.
    in_px = ndimage.distance_transform_edt(truth > 0)
    by_peaks = watershed_instances(foreground, in_px, min_distance_px=8)
    assert match_instances(truth, by_peaks).n_pred == 2
    # A given mask replaces the thresholded probability: here only the first disc.
    first = watershed_instances(foreground, distance, foreground=truth == 1)
    assert first.max() == 1 and np.array_equal(first > 0, truth == 1)


def test_watershed_instances_from_boundary_maps():
    truth = discs()
    boundary = (ndimage.morphological_gradient(truth, size=3) > 0).astype(np.float32)
    predicted = watershed_instances((truth > 0).astype(np.float32), boundary, kind="boundary")
    matching = match_instances(truth, predicted)
    assert matching.n_pred == 2 and matching.matched_iou.min() > 0.8


def test_watershed_instances_keeps_unmarked_blobs_and_drops_specks():
    labels = discs(centres=((20, 20),), radius=8)
    foreground = (labels > 0).astype(np.float32)
    foreground[50, 80] = 1.0  # a one-pixel speck
    no_markers = np.zeros(SHAPE, dtype=np.float32)
    predicted = watershed_instances(foreground, no_markers, min_area_px=4)
    assert predicted.max() == 1 and (predicted > 0).sum() == (labels > 0).sum()


def test_watershed_instances_checks_arguments():
    maps = np.zeros((8, 8))
    with pytest.raises(ValueError, match="shape"):
        watershed_instances(maps, maps[:4])
    with pytest.raises(ValueError, match="kind"):
        watershed_instances(maps, maps, kind="contours")
    with pytest.raises(ValueError, match="min_distance_px"):
        watershed_instances(maps, maps, kind="boundary", min_distance_px=3)
    with pytest.raises(ValueError, match="boundary has shape"):
        watershed_instances(maps, maps, boundary=maps[:4])
    with pytest.raises(ValueError, match="foreground has shape"):
        watershed_instances(maps, maps, foreground=maps[:4] > 0)


def test_watershed_instances_boundary_cuts_a_bridging_core():
    truth = discs()
    foreground = (truth > 0).astype(np.float32)
    # A blurry distance prediction whose core spans both particles ...
    blurry = ndimage.distance_transform_edt(truth > 0) / RADIUS
    assert watershed_instances(foreground, blurry, marker_threshold=0.05).max() == 1
    # ... is split by the predicted boundary between them.
    boundary = np.zeros(SHAPE, dtype=np.float32)
    boundary[:, 44:46] = 1.0
    split = watershed_instances(foreground, blurry, marker_threshold=0.05, boundary=boundary)
    assert match_instances(truth, split).n_pred == 2


def test_fill_holes_equals_scipy():
    rng = np.random.default_rng(4)
    masks = [rng.random((40, 57)) < share for share in (0.3, 0.5, 0.7)]
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    ring[3, 3] = False  # a second hole, diagonal to the first: 4-connected it is separate
    open_ring = ring.copy()
    open_ring[4, 2:5] = False  # a channel to the border: no longer a hole
    masks += [ring, open_ring, np.ones((5, 4), bool), np.zeros((5, 4), bool), ring[:1]]
    for mask in masks:
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    assert fill_holes(ring)[4, 4] and fill_holes(ring)[3, 3] and not fill_holes(open_ring)[4, 3]
    with pytest.raises(ValueError, match="2-D"):
        fill_holes(np.ones((2, 2, 2), bool))
