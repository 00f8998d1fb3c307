"""One entry point from a micrograph to particle instances: the trained network or the baseline.

``segment_image`` is what ``nanoxtal tem measure``, the evaluation and the benchmarks call, so
every consumer segments the same way. With a model, the network's foreground, distance and
boundary maps go through marker-controlled watershed (``watershed_instances``); without one,
the classical threshold + distance-transform watershed (``classical_instances``) runs.

The network is trained on bright-field images (dark particles on a bright film). Images with
bright particles (HAADF STEM, dark field) are background-flattened and inverted first when
``polarity`` says so or, with ``"auto"``, when ``guess_bright_particles`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import ndimage
from skimage.transform import rescale, resize

from nanoxtal.arguments import settings_from
from nanoxtal.tem.instances import (
    ClassicalSettings,
    classical_instances,
    drop_small,
    estimate_radius,
    fill_holes,
    guess_bright_particles,
    opening_background,
    watershed_instances,
)

if TYPE_CHECKING:
    from nanoxtal.tem.module import Segmenter

Polarity = Literal["dark", "bright", "auto"]


@dataclass(frozen=True)
class SegmentSettings:
    """How maps become instances (the ``tem.segment`` config block).

    Attributes:
        polarity: ``"dark"`` particles on a bright film (bright-field TEM), ``"bright"``
            particles (HAADF STEM, dark field), or ``"auto"`` (guessed per image).
        foreground_threshold: Foreground probability above which a pixel is particle.
            Checked by a 2-fold cross-validation of the whole training chain on the
            training halves (every image scored by a teacher and student that never saw
            it; session 11): lowering it to 0.45 / 0.4 / 0.35 moved au_monolayer AP75
            0.49 → 0.54 / 0.58 / 0.60 but its AP50 0.93 → 0.93 / 0.92 / 0.91 and msa_em's
            sample diameter error 2.0 → 3.6 / 4.4 / 6.1 %: no net gain, so 0.5 stays.
        marker_threshold: Normalised distance (0 at the edge, 1 at a particle's centre) at or
            above which a foreground pixel seeds an instance.
        boundary_threshold: Boundary probability at or above which a pixel seeds nothing.
        min_area_px: Least instance area kept (px²).
        min_area_factor: Instances smaller than this fraction of the typical particle area
            π·r² are dropped too (r: ``estimate_radius`` of the predicted foreground), as in
            the classical baseline: slivers and specks, not particles. On the training half
            of msa_em, 0.1 raised AP50 from 0.70 to 0.81. In the cross-validation above,
            0.05 lowered msa_em's AP50 0.895 → 0.871 (count error 0.071 → 0.051).
        edge_area_share: Instances touching the image edge are kept down to this share of
            the least area above (never below ``min_area_px``): the edge cuts particles into
            fragments of any size, and the truth counts them. On the training half of
            msa_em (~15 particles of 60 px per image, half cut by the edge) 0.3 raised AP50
            from 0.84 to 0.87 and cut the count error from 0.14 to 0.09, AP75 0.68 → 0.66
            (0.6: 0.86, 0.12, 0.67; any size: 0.82, 0.06, 0.62); au_monolayer unchanged,
            stem_boxes' count error 0.91 → 0.92. Measurements leave edge particles out.
        distance_smooth_px: Least Gaussian smoothing of the predicted distance map (px)
            before markers are sought (``watershed_instances``).
        distance_smooth_factor: Smoothing relative to the typical particle radius r:
            σ = max(``distance_smooth_px``, factor · r). Lattice fringes and thickness
            contrast inside large particles make ripples in the distance map that split
            them; a fixed σ cannot suit 6-px and 60-px particles alike. Both are chosen on
            the training halves of msa_em and au_monolayer, never on test images: factor
            0.2 raised msa_em's AP50 there from 0.78 to 0.81 (0.1: 0.80, 0.3: 0.81 with
            lower AP75) and left au_monolayer's unchanged.
        foreground_smooth_factor: Gaussian smoothing of the foreground probability before
            it is thresholded, relative to the typical particle radius r: σ = factor · r
            (0: none). The network's probability is ragged at particle rims on textured
            carbon film, so thresholded outlines were jagged (measured sizes, shapes and
            the IoU with the truth suffer) and ragged rims seeded fragments. Chosen on the
            training halves (maps of the committed network, session 10): msa_em AP50 / AP75 /
            count error 0.867 / 0.658 / 0.092 without, 0.896 / 0.745 / 0.078 at 0.05,
            **0.900 / 0.770 / 0.083 at 0.07**, 0.898 / 0.778 / 0.085 at 0.1, 0.831 / 0.712 /
            0.116 at 0.2; au_monolayer unchanged up to 0.1 (0.954 / 0.742); shape accuracy on
            development micrographs (seed 11) 0.372 → 0.375.
        tile_px: Largest inference tile (px).
        test_time_augment: Average the network's maps over the 8 flips and rotations
            (``augmented_maps``) at 8× the cost. On the training halves: msa_em AP50
            0.81 → 0.83, AP75 0.67 → 0.72, but count error 0.10 → 0.14; au_monolayer AP75
            0.72 → 0.77. Cross-validated with the film-bank student (seed 42, session 16,
            paired over images): msa_em AP50 +0.041 [0.010, 0.075] but AP75 −0.045
            [−0.087, −0.006], au_monolayer AP75 +0.017, stem_boxes count error +0.17
            [−0.02, +0.54]. Off by default (the 1-s-per-megapixel budget, and no clear gain).
        background_fraction: For images with bright particles: the support is flattened
            by subtracting its ``opening_background`` with a footprint this fraction of the
            image side wide, for the baseline and the network alike. On the training half
            of stem_boxes (never trained on), count error mean / median of the network:
            1.52 / 0.88 with the previous flattening (a Gaussian blur of 0.03 of the side
            subtracted), 0.91 / 0.47 at 0.09; the baseline's 0.82 / 0.72 → 0.62 / 0.63.
            The width was chosen with the opening fully box-smoothed (network 0.06: 1.05 /
            0.79; 0.09: 0.88 / 0.47; 0.12: 0.81 / 0.59, a worse median).
        scales: Image scales at which the network is run; its maps, brought back to full
            size, are averaged (``multiscale_maps``). ``(1.0,)``: the image as it is. Lattice
            fringes of high-resolution images and the grain of supports split one particle
            into fragments at full size; halved, the fringes average out while a particle
            keeps its outline. Cross-validated (session 17, 3-seed soups, pooled folds of
            the training halves): stem_boxes count error 1.64 → 0.69 at ``(1, 0.5)``, 0.59 at
            ``(1, 0.5, 0.25)`` (baseline 0.62), but msa_em AP50 0.902 → 0.869 and count error
            0.077 → 0.110; so the default stays ``(1.0,)`` and the workflow gives stem_boxes
            its own scales (``tem.evaluate.segment``).
        min_scaled_radius_px: A scale below 1 is skipped for an image whose typical particle
            radius (px, ``estimate_radius`` of the full-size foreground) would shrink below
            this: particles of a few pixels vanish when the image is halved.
    """

    polarity: Polarity = "dark"
    foreground_threshold: float = 0.5
    marker_threshold: float = 0.5
    boundary_threshold: float = 0.5
    min_area_px: int = 8
    min_area_factor: float = 0.1
    edge_area_share: float = 0.3
    distance_smooth_px: float = 2.0
    distance_smooth_factor: float = 0.2
    foreground_smooth_factor: float = 0.07
    tile_px: int = 1024
    test_time_augment: bool = False
    background_fraction: float = 0.09
    scales: tuple[float, ...] = (1.0,)
    min_scaled_radius_px: float = 6.0

    def __post_init__(self) -> None:
        if self.polarity not in ("dark", "bright", "auto"):
            raise ValueError(f"polarity must be 'dark', 'bright' or 'auto', got {self.polarity!r}")
        for name in ("foreground_threshold", "marker_threshold", "boundary_threshold"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be within (0, 1), got {value}")
        if self.foreground_smooth_factor < 0:
            raise ValueError(
                f"foreground_smooth_factor must be ≥ 0, got {self.foreground_smooth_factor}"
            )
        try:
            scales = tuple(float(scale) for scale in self.scales)
        except (TypeError, ValueError):
            raise ValueError(
                f"scales must be a list of numbers within (0, 1] including 1, got {self.scales!r}"
            ) from None
        if 1.0 not in scales or not all(0.0 < scale <= 1.0 for scale in scales):
            raise ValueError(f"scales must lie within (0, 1] and include 1, got {scales}")
        object.__setattr__(self, "scales", scales)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SegmentSettings:
        """Settings from a mapping; unknown keys raise ValueError naming the known ones."""
        return settings_from(cls, values, "TEM segmentation")


def particles_are_bright(image: np.ndarray, polarity: Polarity) -> bool:
    """Whether the particles of ``image`` are brighter than its background."""
    if polarity == "auto":
        return guess_bright_particles(image)
    return polarity == "bright"


def segment_image(
    image: np.ndarray,
    model: Segmenter | None = None,
    settings: SegmentSettings | None = None,
    classical: ClassicalSettings | None = None,
) -> np.ndarray:
    """Particle instances of one grey micrograph.

    Args:
        image: Grey micrograph (height × width), e.g. from ``nanoxtal.tem.io.read_image``.
        model: A trained segmenter (``nanoxtal.tem.module.load_segmenter``); None: the
            classical baseline.
        settings: Post-processing and polarity.
        classical: Baseline settings (only without a model); its ``invert`` and
            ``background_width_px`` are set from the polarity for bright-particle images.

    Returns:
        int32 instance labels 1..n (height × width), 0 = background.
    """
    settings = settings or SegmentSettings()
    bright = particles_are_bright(image, settings.polarity)
    if model is None:
        chosen = classical or ClassicalSettings()
        if bright:
            chosen = replace(
                chosen,
                invert=True,
                background_width_px=settings.background_fraction * max(np.shape(image)),
            )
        return classical_instances(image, chosen)
    data = np.asarray(image, dtype=np.float32)
    if bright:
        # normalise_image rescales per image, so a negation is a full contrast inversion.
        # The support under bright particles (HAADF of supported catalysts) is bright and
        # uneven; inverted it would be dark blobs like particles, so it is flattened first.
        width = settings.background_fraction * max(data.shape)
        data = -(data - opening_background(data, width))
    return instances_from_maps(multiscale_maps(model, data, settings), settings)


def foreground_radius(probability: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """The hole-filled foreground of a probability map and its typical particle radius (px).

    Returns:
        (foreground mask, radius); the radius is NaN when no pixel passes ``threshold``.
    """
    foreground = fill_holes(probability > threshold)
    if not foreground.any():
        return foreground, math.nan
    return foreground, estimate_radius(ndimage.distance_transform_edt(foreground), foreground)


def multiscale_maps(
    model: Segmenter, image: np.ndarray, settings: SegmentSettings
) -> dict[str, np.ndarray]:
    """The model's maps of ``image`` averaged over ``settings.scales``.

    The full-size maps come first; their foreground gives the typical particle radius, and a
    smaller scale is used only when it keeps that radius at or above
    ``settings.min_scaled_radius_px``. Each scaled image is anti-alias downsampled, predicted
    and its maps resized back (bilinear). The distance map is normalised per particle (0 at
    the edge, 1 at the centre), so it averages across scales like the probabilities do.
    """
    maps = augmented_maps(model, image, settings.test_time_augment, settings.tile_px)
    smaller = [scale for scale in settings.scales if scale < 1.0]
    if not smaller:
        return maps
    _, radius = foreground_radius(maps["foreground"], settings.foreground_threshold)
    views = [maps]
    for scale in smaller:
        if not scale * radius >= settings.min_scaled_radius_px:  # also skips a NaN radius
            continue
        shrunk = rescale(image, scale, anti_aliasing=True, preserve_range=True)
        scaled = augmented_maps(
            model, shrunk.astype(np.float32), settings.test_time_augment, settings.tile_px
        )
        views.append(
            {
                name: resize(values, image.shape, order=1, preserve_range=True)
                for name, values in scaled.items()
            }
        )
    if len(views) == 1:
        return maps
    return {
        name: np.mean([view[name] for view in views], axis=0).astype(np.float32) for name in maps
    }


def augmented_maps(
    model: Segmenter, image: np.ndarray, augment: bool, tile: int = 1024
) -> dict[str, np.ndarray]:
    """The model's maps of ``image``, averaged over the square's 8 symmetries when asked.

    Test-time augmentation: each flipped or rotated view is predicted and mapped back, so
    the network's orientation-dependent errors average out, at 8× the cost.
    """
    if not augment:
        return model.predict_maps(image, tile=tile)
    total: dict[str, np.ndarray] = {}
    for turns in range(4):
        for flip in (False, True):
            view = np.rot90(image[:, ::-1] if flip else image, turns)
            for name, values in model.predict_maps(np.ascontiguousarray(view), tile=tile).items():
                back = np.rot90(values, -turns)
                back = back[:, ::-1] if flip else back
                total[name] = total.get(name, 0.0) + back / 8.0
    return total


def instances_from_maps(maps: Mapping[str, np.ndarray], settings: SegmentSettings) -> np.ndarray:
    """Particle instances from a network's ``foreground``, ``distance`` and ``boundary`` maps.

    Returns:
        int32 instance labels 1..n, 0 = background.
    """
    probability = maps["foreground"]
    foreground, radius = foreground_radius(probability, settings.foreground_threshold)
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.int32)
    if settings.foreground_smooth_factor > 0:
        # The radius of the unsmoothed foreground serves below too: smoothing over a few % of
        # it barely moves it, and a second estimate would cost ~0.09 s per megapixel.
        probability = ndimage.gaussian_filter(
            probability, settings.foreground_smooth_factor * radius
        )
        foreground = fill_holes(probability > settings.foreground_threshold)
        if not foreground.any():
            return np.zeros(foreground.shape, dtype=np.int32)
    labels = watershed_instances(
        probability,
        maps["distance"],
        kind="distance",
        foreground_threshold=settings.foreground_threshold,
        marker_threshold=settings.marker_threshold,
        boundary=maps["boundary"],
        boundary_threshold=settings.boundary_threshold,
        min_area_px=settings.min_area_px,
        smooth_sigma_px=max(settings.distance_smooth_px, settings.distance_smooth_factor * radius),
        foreground=foreground,
    )
    if settings.min_area_factor <= 0:
        return labels
    least = max(settings.min_area_px, settings.min_area_factor * math.pi * radius**2)
    return drop_small(labels, least, max(settings.min_area_px, settings.edge_area_share * least))
