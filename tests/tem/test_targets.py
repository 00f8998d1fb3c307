from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nanoxtal.tem.targets import instance_distance, normalise_image, training_targets


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


@pytest.fixture
def touching() -> np.ndarray:
    """Two discs of radius 10 whose centres are 18 px apart: they share a straight contact."""
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[disc(labels.shape, (20, 20), 10)] = 1
    labels[disc(labels.shape, (20, 38), 10) & (labels == 0)] = 2
    labels[:, 29:] = np.where(labels[:, 29:] == 1, 2, labels[:, 29:])  # cut along column 29
    return labels


def test_touching_discs_keep_two_distance_peaks(touching):
    targets = training_targets(touching)
    distance = targets["distance"]
    assert set(targets) == {"foreground", "distance", "boundary"}
    assert all(t.dtype == np.float32 and t.shape == touching.shape for t in targets.values())
    for label in (1, 2):
        assert distance[touching == label].max() == pytest.approx(1.0)
    # One local maximum region per particle: the union's distance transform would give one.
    peaks, count = ndimage.label(distance > 0.9)
    assert count == 2
    assert {int(np.unique(touching[peaks == i])[0]) for i in (1, 2)} == {1, 2}
    # The contact line is the particles' border: distance there is low on both sides.
    contact = (touching[:, 28] == 1) & (touching[:, 29] == 2)
    assert contact.sum() > 5
    assert distance[contact, 28].max() < 0.2 and distance[contact, 29].max() < 0.2


def test_foreground_is_the_union_and_background_is_zero(touching):
    targets = training_targets(touching)
    np.testing.assert_array_equal(targets["foreground"], (touching > 0).astype(np.float32))
    assert not targets["distance"][touching == 0].any()
    assert not targets["boundary"][touching == 0].any()


def test_boundary_marks_the_contact_from_both_sides_and_the_rim(touching):
    boundary = training_targets(touching)["boundary"].astype(bool)
    contact = (touching[:, 28] == 1) & (touching[:, 29] == 2)
    assert boundary[contact, 28].all() and boundary[contact, 29].all()
    # 1 px rim against the film: the particles' centres and second ring are not boundary.
    assert not boundary[20, 20] and not boundary[20, 38]
    rim = touching.astype(bool) & ~ndimage.binary_erosion(touching > 0)
    assert boundary[rim].all()
    assert boundary.sum() < 0.35 * (touching > 0).sum()


def test_distance_is_normalised_per_instance():
    labels = np.zeros((80, 80), dtype=np.int32)
    labels[disc(labels.shape, (20, 20), 4)] = 1
    labels[disc(labels.shape, (50, 50), 20)] = 7  # ids need not be consecutive
    distance = instance_distance(labels)
    assert distance[labels == 1].max() == pytest.approx(1.0)
    assert distance[labels == 7].max() == pytest.approx(1.0)
    # Edge pixels: distance 1 px before normalisation, so 1/peak after.
    assert distance[20, 16] == pytest.approx(1 / ndimage.distance_transform_edt(labels == 1).max())
    assert distance[50, 50] == pytest.approx(1.0)
    assert 0.45 < distance[50, 60] < 0.55  # halfway out of the large disc


def test_the_frame_is_a_border_and_empty_images_work():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[:, :6] = 1  # a particle cut by the left edge
    distance = instance_distance(labels)
    assert distance[10, 0] < distance[10, 2]
    assert not training_targets(np.zeros((8, 8), dtype=np.int32))["foreground"].any()


def test_normalise_image_is_robust_and_bounded():
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 50, (64, 64)).astype(np.uint16)
    image[:2, :2] = 0  # a few dead pixels do not set the scale
    scaled = normalise_image(image)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert 0.4 < float(np.median(scaled)) < 0.6
    np.testing.assert_allclose(normalise_image(image.astype(np.float64) / 7), scaled, atol=1e-5)
    assert not normalise_image(np.full((4, 4), 9, dtype=np.uint8)).any()
