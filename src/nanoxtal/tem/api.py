"""Measure nanocrystals in micrographs from Python: segment, pixel size, batch measurement.

Each function takes files or arrays and returns numpy arrays, small dataclasses or pandas
tables, as ``nanoxtal tem measure`` writes them::

    from nanoxtal import tem

    result = tem.measure_images(["micrographs/"], nm_per_px=0.5)
    result.summary[["image", "count", "mean_diameter", "dominant_shape"]]

Without a ``model``, the segmentation network the workflow published
(``results/tem/models/best.ckpt``, under the current folder) is used when it exists, else the
classical baseline; ``model="classical"`` asks for the baseline.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nanoxtal.models import RESULTS, choose_model
from nanoxtal.tem.batch import ImageResult, Measurement, assemble, distinct_names, sample_of

if TYPE_CHECKING:
    from nanoxtal.tem.calibration import PixelSize
    from nanoxtal.tem.module import Segmenter
    from nanoxtal.tem.segmentation import SegmentSettings

CLASSICAL = "classical baseline (threshold + distance watershed)"


def resolve_segmenter(
    model: Segmenter | Path | str | None = None, results: Path | str = RESULTS
) -> tuple[Segmenter | None, str]:
    """The segmenter a job uses and its description (``summary.csv``'s ``segmenter``).

    Args:
        model: A loaded ``Segmenter``; a checkpoint or results folder; ``"classical"`` for the
            classical baseline; None for the network the workflow published under
            ``results`` when it exists, else the baseline.
        results: The workflow's results folder.

    Returns:
        tuple: The network, or None for the baseline, and its description, e.g.
        ``network results/tem/models/best.ckpt``.

    Raises:
        nanoxtal.models.ModelError: A path with no segmenter (the message names it).
    """
    chosen = choose_model("tem", model, results)
    if chosen.model is None:
        return None, CLASSICAL
    source = chosen.path or getattr(chosen.model, "source_checkpoint", None)
    described = f"network {source}" if source else "network (given)"
    return chosen.model, described  # type: ignore[return-value]


def _settings(settings: SegmentSettings | Mapping[str, Any] | None) -> SegmentSettings:
    from nanoxtal.tem.segmentation import SegmentSettings

    if isinstance(settings, SegmentSettings):
        return settings
    return SegmentSettings.from_mapping(settings or {})


def _grey(image: np.ndarray | Path | str) -> tuple[np.ndarray, Path | None]:
    """The grey micrograph (float32 in [0, 1]) and its file, from a file or an array."""
    from nanoxtal.tem.calibration import read_micrograph
    from nanoxtal.tem.io import grey_image

    if isinstance(image, str | Path):
        return read_micrograph(image), Path(image)
    return grey_image(image, "array"), None


def pixel_size(image: np.ndarray | Path | str, nm_per_px: float | None = None) -> PixelSize:
    """The pixel size of a micrograph and where it came from.

    Sources, first found wins: ``nm_per_px`` if given, the file's metadata (TIFF tags, Gatan
    calibration), a sidecar JSON (``<image>.json`` with ``nm_per_px``), the burned-in scale bar
    (bar length in px and its label, e.g. "50 nm"); else none.

    Args:
        image: A micrograph file (PNG, TIFF, JPEG, DM3/DM4) or its pixels (scale bar only).
        nm_per_px: The user's value, nm per pixel; where the file's own differs by more than
            5 %, the result keeps it in ``overridden``.

    Returns:
        ``nanoxtal.tem.calibration.PixelSize``: ``nm_per_px`` (None when unknown), ``source``
        (``user``, ``metadata``, ``sidecar``, ``scale_bar`` or ``none``), ``detail`` and the
        scale bar found (masked out of measurements).

    Raises:
        nanoxtal.tem.io.TemImageError: An unreadable micrograph (the message names it).
    """
    from nanoxtal.tem.calibration import resolve_pixel_size

    grey, path = _grey(image)
    return resolve_pixel_size(path, grey, nm_per_px)


def segment(
    image: np.ndarray | Path | str,
    model: Segmenter | Path | str | None = None,
    settings: SegmentSettings | Mapping[str, Any] | None = None,
    drop_scale_bar: bool = True,
) -> np.ndarray:
    """Particle instances of one micrograph.

    Args:
        image: A micrograph file or its pixels (grey or RGB; any bit depth).
        model: A ``Segmenter``, a checkpoint or results folder, ``"classical"`` for the
            classical baseline (threshold + distance watershed), or None for the workflow's
            published network when it exists (``results/tem/models/best.ckpt``), else the
            baseline.
        settings: ``nanoxtal.tem.segmentation.SegmentSettings`` or a mapping of its fields
            (polarity ``dark``/``bright``/``auto``, thresholds, ``scales``), as the
            ``tem.segment`` config block.
        drop_scale_bar: Remove particles found on a burned-in scale bar and its label.

    Returns:
        int32 instance labels (height × width): 0 background, 1..n particles.

    Raises:
        nanoxtal.tem.io.TemImageError: An unreadable micrograph (the message names it).
    """
    from nanoxtal.tem.calibration import drop_scale_bar as dropped
    from nanoxtal.tem.calibration import scale_bar
    from nanoxtal.tem.segmentation import segment_image

    grey, _ = _grey(image)
    network, _ = resolve_segmenter(model)
    instances = segment_image(grey, network, _settings(settings))
    return dropped(instances, scale_bar(grey)) if drop_scale_bar else instances


def _inputs(
    images: np.ndarray | Path | str | Iterable[np.ndarray | Path | str],
) -> tuple[list[tuple[Path | np.ndarray, str]], list[str]]:
    """A batch's files (folders searched) and arrays with their names, and inputs naming none.

    A file's name is its path as given; an array's is ``array<k>``, k its place among the
    inputs.
    """
    from nanoxtal.tem.calibration import GATAN_SUFFIXES
    from nanoxtal.tem.io import IMAGE_SUFFIXES, image_files

    if isinstance(images, np.ndarray | str | Path):
        images = [images]
    items: list[tuple[Path | np.ndarray, str]] = []
    problems: list[str] = []
    for index, item in enumerate(images):
        if isinstance(item, np.ndarray):
            items.append((item, f"array{index}"))
            continue
        files, found = image_files([item], IMAGE_SUFFIXES | GATAN_SUFFIXES)
        items += [(path, str(path)) for path in files]
        problems += found
    return items, problems


def _measure_one(
    item: Path | np.ndarray,
    result: ImageResult,
    network: Segmenter | None,
    settings: SegmentSettings,
    nm_per_px: float | None,
) -> None:
    """Measure one micrograph into ``result`` (its row's ``error`` when it fails)."""
    from nanoxtal.tem.calibration import (
        CalibrationError,
        drop_scale_bar,
        read_micrograph,
        resolve_pixel_size,
    )
    from nanoxtal.tem.io import TemImageError, grey_image
    from nanoxtal.tem.measure import measure_particles, summarise_image
    from nanoxtal.tem.segmentation import segment_image

    path = item if isinstance(item, Path) else None
    try:
        image = read_micrograph(path) if path else grey_image(item, result.row["image"])
        pixel = resolve_pixel_size(path, image, nm_per_px)
        if pixel.overridden is not None:
            result.overridden = pixel.detail
        instances = drop_scale_bar(segment_image(image, network, settings), pixel.scale_bar)
        if instances.max(initial=0) > np.iinfo(np.uint16).max:
            raise TemImageError(f"{result.row['image']}: too many particles for a 16-bit mask")
        particles = measure_particles(instances, pixel.nm_per_px)
    except (TemImageError, CalibrationError) as error:
        result.row["error"] = str(error)
        return
    result.image, result.instances, result.particles = image, instances, particles
    result.row |= summarise_image(particles) | {
        "nm_per_px": pixel.nm_per_px,
        "pixel_size_source": pixel.source,
        "pixel_size_detail": pixel.detail,
        "error": None,
    }


def _sample(item: Path | np.ndarray, label: str, name: str, rule: str | dict[str, str]) -> str:
    """The sample of a batch's image by the batch's rule (``nanoxtal.tem.batch.sample_rule``)."""
    if rule == "image":
        return name
    mapping = rule if isinstance(rule, dict) else {}
    if isinstance(item, np.ndarray):
        return mapping.get(label, label)
    return sample_of(item, mapping)


def measure_images(
    images: np.ndarray | Path | str | Iterable[np.ndarray | Path | str],
    model: Segmenter | Path | str | None = None,
    nm_per_px: float | None = None,
    samples: str | Path | Mapping[str, str] | None = None,
    settings: SegmentSettings | Mapping[str, Any] | None = None,
    masks: bool = False,
    progress: bool = False,
    on_image: Callable[[ImageResult], None] | None = None,
) -> Measurement:
    """Segment micrographs and measure their particles: sizes, shapes, per image and sample.

    Every image is measured even when others fail; a failed image keeps its row in
    ``summary`` with the reason in ``error``. Each image's pixel size comes from
    ``nm_per_px``, else its file (metadata, sidecar JSON, scale bar; see ``pixel_size``);
    without one, sizes are in px.

    Args:
        images: Micrograph files (PNG, TIFF, JPEG, DM3/DM4), folders of them (not searched
            recursively), arrays of pixels (named ``array<k>``, k their place in the list), or
            a list mixing them.
        model: The segmenter (see ``segment``): None uses the workflow's published network
            when it exists, else the classical baseline; ``"classical"`` the baseline.
        nm_per_px: Pixel size for every image, nm per pixel (wins over the files' own).
        samples: Which images show one sample (one product), pooled in ``samples``: None or
            ``"folder"`` (an image's folder; an array is its own sample), ``"image"`` (each
            image alone), a mapping of image (path as given, or file name) to sample, or a
            CSV file with columns ``image`` and ``sample``.
        settings: Segmentation settings (``SegmentSettings`` or a mapping of its fields).
        masks: Keep each measured image's instance labels in ``Measurement.masks``.
        progress: Show a progress bar.
        on_image: Called with each image's result as soon as it is measured (or failed),
            e.g. to write its figures (``MeasurementFolder.write_image``) before the next one
            is read.

    Returns:
        ``nanoxtal.tem.batch.Measurement``: ``particles`` (one row per particle),
        ``summary`` (one per image), ``samples`` (one per sample), the segmenter used, the
        inputs that named no image, and the masks when asked for.

    Raises:
        ValueError: ``nm_per_px`` not a positive number; an unusable sample CSV.
        nanoxtal.models.ModelError: A model path with no segmenter.
    """
    from tqdm.auto import tqdm

    from nanoxtal.tem.batch import sample_rule

    if nm_per_px is not None and not nm_per_px > 0:
        raise ValueError(f"--nm-per-px must be > 0, got {nm_per_px}")
    rule = sample_rule(samples)
    chosen = _settings(settings)
    network, segmenter = resolve_segmenter(model)
    items, problems = _inputs(images)
    stems = [Path(label).stem for _, label in items]
    results = []
    for (item, label), name in tqdm(
        list(zip(items, distinct_names(stems), strict=True)),
        desc="measure",
        unit="image",
        disable=not progress,
    ):
        sample = _sample(item, label, name, rule)
        row = {"image": label, "sample": sample, "segmenter": segmenter}
        result = ImageResult(name, sample, row)
        _measure_one(item, result, network, chosen, nm_per_px)
        if on_image is not None:
            on_image(result)
        elif result.overridden:
            warnings.warn(f"{label}: nm_per_px {result.overridden}", stacklevel=2)
        result.image = None  # the batch is not held in memory
        if not masks:
            result.instances = None
        results.append(result)
    return assemble(results, segmenter, problems, masks)
