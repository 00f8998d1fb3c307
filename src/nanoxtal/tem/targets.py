"""What the segmentation network sees and learns: the normalised image and per-pixel targets.

The network predicts three maps from which a marker-controlled watershed separates touching
particles:

* foreground: particle or not (the union of all instances);
* distance: each pixel's distance to the border of *its own* particle, divided by that
  particle's largest distance, so every particle peaks at exactly 1 whatever its size. Computed
  per instance, two touching particles keep two separate peaks (on their union the distance
  transform would merge into one ridge), and thresholding it near 1 gives one marker each;
* boundary: the one-pixel inner rim of every particle, which is two pixels wide where two
  particles touch; it tells the watershed where to cut.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

# Percentiles mapped to 0 and 1 by ``normalise_image``: robust to the burned-in scale bar
# (pure black or white) and to hot or dead pixels, unlike min-max scaling.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# Pixels sampled for the percentiles: every n-th row and column (the percentiles of a 1-MP
# image from a quarter of its pixels are indistinguishable, at a quarter of the cost).
PERCENTILE_STRIDE = 2


def normalise_image(image: np.ndarray) -> np.ndarray:
    """Scale a micrograph of any bit depth to float32 in [0, 1].

    The 0.5 and 99.5 percentiles of the image map to 0 and 1 (values beyond are clipped), so
    8- and 16-bit images and differently exposed micrographs look alike to the network.

    Args:
        image: Grey-scale image (height × width), any numeric dtype.

    Returns:
        float32 image of the same shape, values within [0, 1].
    """
    data = np.asarray(image, dtype=np.float32)
    sample = data[::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE]
    low, high = np.percentile(sample, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:  # a flat image: nothing to stretch
        return np.zeros_like(data)
    scaled = (data - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def instance_distance(instances: np.ndarray) -> np.ndarray:
    """Per-instance distance to the instance's own border, normalised to a peak of 1.

    The distance of a pixel is the Euclidean distance (px) from its centre to the nearest pixel
    *not* of its instance (background, another particle, or beyond the image frame), so edge
    pixels have distance 1 before normalisation. Each instance is then divided by its own
    largest distance.

    Args:
        instances: int labels (height × width), 0 for background.

    Returns:
        float32 map (height × width): 0 on background, within (0, 1] inside particles, exactly
        1 at each particle's innermost pixel(s).
    """
    distance = np.zeros(instances.shape, dtype=np.float32)
    for label, window in enumerate(ndimage.find_objects(instances), start=1):
        if window is None:  # an id with no pixels
            continue
        # One pixel of margin on every side, so the window's own edge is never the border.
        padded = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, size))
            for s, size in zip(window, instances.shape, strict=True)
        )
        own = instances[padded] == label
        # Zero padding: the image frame counts as the border of particles it cuts.
        edt = ndimage.distance_transform_edt(np.pad(own, 1))[1:-1, 1:-1]
        peak = edt.max()
        distance[padded][own] = (edt[own] / peak).astype(np.float32)
    return distance


def training_targets(instances: np.ndarray) -> dict[str, np.ndarray]:
    """The three per-pixel targets of the segmentation network.

    Args:
        instances: int labels (height × width), 0 for background, one id per particle.

    Returns:
        float32 maps (height × width) by name: ``foreground`` (0/1), ``distance``
        (``instance_distance``, 0–1) and ``boundary`` (0/1: the inner rim of every particle,
        one pixel wide, two where two particles touch).
    """
    instances = np.asarray(instances)
    return {
        "foreground": (instances > 0).astype(np.float32),
        "distance": instance_distance(instances),
        # "inner": rim pixels lie inside particles, so the rim between two touching particles
        # is one pixel of each; background next to a particle is not marked.
        "boundary": find_boundaries(instances, connectivity=1, mode="inner").astype(np.float32),
    }
