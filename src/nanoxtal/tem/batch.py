"""A batch of micrographs measured together: samples, the three tables, the output folder.

``nanoxtal.tem.api.measure_images`` measures a batch into a ``Measurement`` (particles,
per-image summary, per-sample statistics); ``MeasurementFolder`` writes one to disk as
``nanoxtal tem measure`` lays it out (``particles.csv``, ``summary.csv``, ``samples.csv``,
``masks/``, ``overlays/``, ``histograms/``, ``samples/``), refusing to mix two batches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nanoxtal.files import atomic_write

# The statistics of an image or a sample (nanoxtal.tem.measure.summarise_image), in order.
STATISTICS_COLUMNS = (
    "count",
    "count_measured",
    "mean_diameter",
    "std_diameter",
    "size_distribution_pct",
    "dominant_shape",
    "dominant_shape_share",
    "dominant_shape_support",
    "diameter_unit",
)
# Columns of summary.csv (one row per image), in order.
SUMMARY_COLUMNS = (
    "image",
    "sample",
    *STATISTICS_COLUMNS,
    "nm_per_px",
    "pixel_size_source",
    "pixel_size_detail",
    "segmenter",
    "error",
)
# Columns of samples.csv (one row per sample), in order.
SAMPLE_COLUMNS = ("sample", "images", "images_failed", *STATISTICS_COLUMNS, "error")
# How the samples of a batch are formed, besides a mapping or a CSV naming them.
SAMPLE_RULES = ("folder", "image")

MEASURE_TABLES = ("particles.csv", "summary.csv", "samples.csv")
# Per-image figures, one PNG per image in each folder; then the per-sample histograms' folder.
MEASURE_FIGURES = ("masks", "overlays", "histograms")
MEASURE_FOLDERS = (*MEASURE_FIGURES, "samples")


def distinct_names(names: list[str]) -> list[str]:
    """The names, numbered from their second occurrence on (``a``, ``a-2``, ``a-3``)."""
    seen: dict[str, int] = {}
    distinct = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        distinct.append(name if count == 0 else f"{name}-{count + 1}")
    return distinct


def file_stem(name: str) -> str:
    """``name`` as a file name: other characters than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "_"


def read_sample_map(path: Path | str) -> dict[str, str]:
    """The sample of each image listed in a CSV with columns ``image`` and ``sample``.

    ``image`` is a path as given to the batch or a file name.

    Raises:
        ValueError: An unreadable file, missing columns, an empty cell or an image listed
            with two samples (the message names the file and the row).
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable CSV ({error})") from error
    missing = {"image", "sample"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs columns image and sample, missing {sorted(missing)}")
    mapping: dict[str, str] = {}
    for row, (image, sample) in enumerate(zip(table["image"], table["sample"], strict=True), 2):
        image, sample = image.strip(), sample.strip()
        if not image or not sample:
            raise ValueError(f"{path}, line {row}: empty image or sample")
        if mapping.get(image, sample) != sample:
            raise ValueError(
                f"{path}, line {row}: {image} listed for {mapping[image]} and {sample}"
            )
        mapping[image] = sample
    return mapping


def sample_of(path: Path, mapping: Mapping[str, str]) -> str:
    """The sample of an image: ``mapping``'s (by path as given, else file name), else its folder."""
    for key in (str(path), path.name):
        if key in mapping:
            return mapping[key]
    return path.resolve().parent.name


def sample_rule(samples: str | Path | Mapping[str, str] | None) -> str | dict[str, str]:
    """``"folder"``, ``"image"`` or an image → sample mapping, from what a caller gave.

    Args:
        samples: None or ``"folder"`` (an image's folder is its sample), ``"image"`` (each
            image alone), a mapping of image (path as given, or file name) to sample, or a CSV
            file with columns ``image`` and ``sample`` (``read_sample_map``).

    Raises:
        ValueError: A CSV that cannot be used (the message names the file and line).
    """
    if samples is None:
        return "folder"
    if isinstance(samples, Mapping):
        return {str(image): str(sample) for image, sample in samples.items()}
    if isinstance(samples, str) and samples in SAMPLE_RULES:
        return samples
    return read_sample_map(samples)


def sample_table(particles: Mapping[str, list], summary: pd.DataFrame) -> pd.DataFrame:
    """samples.csv: per sample, the pooled statistics of its measured images.

    Args:
        particles: Per sample, the particle tables of its measured images.
        summary: The per-image table (summary.csv), for each image's ``sample`` and ``error``;
            samples come in its order.
    """
    from nanoxtal.tem.measure import summarise_sample

    rows = []
    for sample, images in summary.groupby("sample", sort=False):
        row: dict[str, object] = {
            "sample": sample,
            "images": len(images),
            "images_failed": int(images["error"].notna().sum()),
        }
        try:
            rows.append(row | summarise_sample(particles.get(sample, [])) | {"error": None})
        except ValueError as error:
            rows.append(row | {"error": str(error)})
    table = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    return table.astype({"count": "Int64", "count_measured": "Int64"})


@dataclass
class ImageResult:
    """One micrograph of a batch, measured or failed.

    Attributes:
        name: A name for its files, distinct within the batch (file stem, numbered on repeats).
        sample: The sample it belongs to.
        row: Its summary.csv row (``SUMMARY_COLUMNS``); ``error`` says why it failed.
        particles: ``measure_particles``' table, None when it failed.
        image: The grey micrograph, None when it failed (or once released).
        instances: Instance labels (height × width), None when it failed (or once released).
        overridden: Where a pixel size given differs from the file's own by more than 5 %,
            both values (``PixelSize.detail``); else None.
    """

    name: str
    sample: str
    row: dict[str, object]
    particles: pd.DataFrame | None = None
    image: np.ndarray | None = None
    instances: np.ndarray | None = None
    overridden: str | None = None

    @property
    def error(self) -> str | None:
        """Why the image failed, or None."""
        return self.row.get("error")  # type: ignore[return-value]


@dataclass
class Measurement:
    """A batch of micrographs measured: ``nanoxtal.tem.api.measure_images``' result.

    Attributes:
        particles: One row per particle (``measure_particles``' columns after ``image``); sizes
            in nm where the image has a pixel size (NaN elsewhere), always in px.
        summary: One row per image (``SUMMARY_COLUMNS``): count, mean/std diameter, size
            distribution %, dominant shape and its share, pixel size and its source, the
            segmenter, and the error of an image that failed.
        samples: One row per sample (``SAMPLE_COLUMNS``): the statistics of its images'
            particles pooled.
        segmenter: Which segmenter measured the batch.
        problems: Inputs that named no micrograph (e.g. a folder without images).
        masks: Instance labels by image name (``summary``'s order), when asked for.
    """

    particles: pd.DataFrame
    summary: pd.DataFrame
    samples: pd.DataFrame
    segmenter: str
    problems: list[str] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Images that failed plus inputs that named none."""
        return int(self.summary["error"].notna().sum()) + len(self.problems)


def assemble(
    results: list[ImageResult], segmenter: str, problems: list[str], masks: bool
) -> Measurement:
    """The tables of a measured batch from its images' results (in batch order)."""
    measured = [result for result in results if result.particles is not None]
    tables = [
        result.particles.assign(image=result.row["image"])[["image", *result.particles.columns]]
        for result in measured
    ]
    particles = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if tables:
        # Images without a pixel size have no nm columns; keep them all, NaN where unknown.
        particles = particles[["image", *[c for c in particles.columns if c != "image"]]]
    summary = pd.DataFrame([result.row for result in results], columns=list(SUMMARY_COLUMNS))
    summary = summary.astype({"count": "Int64", "count_measured": "Int64"})
    per_sample: dict[str, list[pd.DataFrame]] = {}
    for result in measured:
        per_sample.setdefault(result.sample, []).append(result.particles)
    kept = {r.name: r.instances for r in measured if masks and r.instances is not None}
    return Measurement(
        particles, summary, sample_table(per_sample, summary), segmenter, problems, kept
    )


def earlier_measurement(out: Path) -> list[Path]:
    """The files of an earlier ``tem measure`` in ``out``: its tables and per-image PNGs."""
    tables = [out / name for name in MEASURE_TABLES if (out / name).is_file()]
    figures = [
        path
        for folder in MEASURE_FOLDERS
        if (out / folder).is_dir()
        for path in sorted((out / folder).glob("*.png"))
    ]
    return tables + figures


class MeasurementFolder:
    """The output folder of one measured batch, written as the batch goes.

    Per-image figures are written as each image is measured (``write_image``, so a batch of
    large micrographs is not held in memory), the tables and per-sample histograms at the end
    (``finish``); every image of the batch must pass through ``write_image``. A folder
    holding an earlier measurement is refused unless ``overwrite``;
    then the earlier files this batch does not remake are removed, so the folder never shows
    images its ``summary.csv`` does not list.

    Args:
        out: The folder.
        overwrite: Replace an earlier measurement in ``out`` (other files stay).

    Raises:
        ValueError: ``out`` holds an earlier measurement and ``overwrite`` is False.
    """

    def __init__(self, out: Path | str, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.earlier = earlier_measurement(self.out)
        if self.earlier and not overwrite:
            # A second batch into the same folder would replace the tables and leave the
            # first batch's masks beside them, matching no row.
            raise ValueError(
                f"{self.out} already holds a measurement ({len(self.earlier)} files, e.g."
                f" {self.earlier[0].name}); choose another --out, or pass --overwrite to"
                " replace it"
            )
        self.written: set[Path] = {self.out / name for name in MEASURE_TABLES}
        # Per sample, its images' particle tables as measured (for the pooled histograms).
        self.pooled: dict[str, list[pd.DataFrame]] = {}

    def write_image(self, result: ImageResult) -> None:
        """Write a measured image's mask (16-bit ids), overlay and size histogram."""
        from nanoxtal.tem.measure import overlay, size_histogram, write_png

        if result.particles is None or result.image is None or result.instances is None:
            return
        figures = {folder: self.out / folder / f"{result.name}.png" for folder in MEASURE_FIGURES}
        write_png(figures["masks"], result.instances.astype(np.uint16))
        write_png(figures["overlays"], overlay(result.image, result.instances, result.particles))
        size_histogram(result.particles, figures["histograms"], Path(str(result.row["image"])).name)
        self.written.update(figures.values())
        self.pooled.setdefault(result.sample, []).append(result.particles)

    def finish(self, measurement: Measurement) -> list[Path]:
        """Write the three tables and the per-sample histograms; remove stale earlier files.

        Returns:
            The earlier measurement's files removed.
        """
        with atomic_write(self.out / "particles.csv") as partial:
            measurement.particles.to_csv(partial, index=False)
        with atomic_write(self.out / "summary.csv") as partial:
            measurement.summary.to_csv(partial, index=False)
        self.written.update(self._write_samples(measurement))
        stale = sorted(set(self.earlier) - self.written)
        for path in stale:
            path.unlink()
        return stale

    def _write_samples(self, measurement: Measurement) -> list[Path]:
        """``samples.csv`` and a pooled size histogram per sample (``samples/<sample>.png``)."""
        from nanoxtal.tem.measure import size_histogram

        table = measurement.samples
        with atomic_write(self.out / "samples.csv") as partial:
            table.to_csv(partial, index=False)
        figures = []
        names = distinct_names([file_stem(sample) for sample in table["sample"]])
        for sample, count, error, name in zip(
            table["sample"], table["images"], table["error"], names, strict=True
        ):
            if pd.isna(error):
                figure = self.out / "samples" / f"{name}.png"
                pooled = pd.concat(self.pooled[sample], ignore_index=True)
                title = f"sample {sample} ({count} images)"
                figures.append(size_histogram(pooled, figure, title))
        return figures
