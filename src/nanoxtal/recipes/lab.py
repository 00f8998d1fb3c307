"""A lab's own syntheses: its recipes and micrographs become labelled recipes, and a check.

A lab dataset is a folder::

    <root>/recipes.csv           one row per synthesis: ``sample`` + the tidy recipe columns
                                 (or recipes.xlsx); optional ``size_nm``,
                                 ``size_distribution_pct``, ``shape``: the lab's own labels
    <root>/micrographs/<sample>/ the sample's micrographs (any format ``tem measure`` reads)
    <root>/pixel_sizes.csv       optional: ``sample, nm_per_px`` for micrographs without a
                                 readable scale bar or metadata

``read_lab`` checks all of it before anything runs (every problem named by file, row and
column). After ``nanoxtal tem measure`` has measured each sample's folder, ``label_samples``
turns the measurements into labels the way Gu et al. (arXiv 2412.10838) built their dataset:
per sample the mean equivalent-circle diameter, the size distribution (std/mean %) and the
dominant shape of the pooled particles. A sample that cannot be labelled honestly keeps no
label and gets a reason. ``check_lab`` puts a model's predictions beside the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.design import RecipeInputError, validate_recipe

# The recipe columns of a lab sheet (``design.validate_recipe``'s fields).
RECIPE_COLUMNS = (
    "product",
    "reaction_temperature_c",
    "time_min",
    "reagents",
    "amounts_mmol",
)
OPTIONAL_RECIPE_COLUMNS = (
    "recipe_id",
    "phase",
    "injection_temperature_c",
    "heating_rate_c_per_min",
    "roles",
    "doi",
    "notes",
)
# The lab's own measurements, compared with what its micrographs give.
GIVEN_COLUMNS = ("size_nm", "size_distribution_pct", "shape")
SHEET_NAMES = ("recipes.csv", "recipes.xlsx")
PIXEL_SIZES = "pixel_sizes.csv"
MICROGRAPHS = "micrographs"
# Columns of label_rejects.csv.
REJECT_COLUMNS = ("lab", "sample", "reason", "detail")


class LabError(ValueError):
    """A lab dataset that cannot be used; ``problems`` lists each (file, row, column named)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Lab:
    """A lab dataset, checked (``read_lab``).

    Attributes:
        name: Its name (the folder's, unless given).
        root: Its folder.
        recipes: One tidy row per sample (``design.validate_recipe``'s columns), with
            ``sample`` and the lab's own ``size_nm``, ``size_distribution_pct``, ``shape``
            where given (NaN/None elsewhere).
        micrographs: Per sample, its micrograph files (sorted).
        nm_per_px: Per sample, the pixel size ``pixel_sizes.csv`` gives (nm/px).
    """

    name: str
    root: Path
    recipes: pd.DataFrame
    micrographs: dict[str, list[Path]]
    nm_per_px: dict[str, float] = field(default_factory=dict)


def _sheet(root: Path) -> Path:
    for name in SHEET_NAMES:
        if (root / name).is_file():
            return root / name
    raise LabError([f"{root}: no {' or '.join(SHEET_NAMES)} (one row per synthesis)"])


def _read_sheet(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".xlsx":
            table = pd.read_excel(path, dtype=object)
        else:
            table = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LabError([f"{path}: not a readable table ({error})"]) from error
    table.columns = [str(column).strip() for column in table.columns]
    return table


def _micrograph_folders(root: Path) -> dict[str, list[Path]]:
    from nanoxtal.tem.calibration import GATAN_SUFFIXES
    from nanoxtal.tem.io import IMAGE_SUFFIXES

    suffixes = IMAGE_SUFFIXES | GATAN_SUFFIXES
    folder = root / MICROGRAPHS
    if not folder.is_dir():
        return {}
    return {
        sample.name: sorted(
            path
            for path in sample.iterdir()
            if path.is_file()
            and path.suffix.lower() in suffixes
            and not path.stem.endswith("_instances")
        )
        for sample in sorted(folder.iterdir())
        if sample.is_dir()
    }


def _pixel_sizes(root: Path, samples: set[str]) -> tuple[dict[str, float], list[str]]:
    path = root / PIXEL_SIZES
    if not path.is_file():
        return {}, []
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        return {}, [f"{path}: not a readable CSV ({error})"]
    missing = {"sample", "nm_per_px"} - set(table.columns)
    if missing:
        return {}, [f"{path}: needs columns sample and nm_per_px, missing {sorted(missing)}"]
    found, problems = {}, []
    for row, (sample, text) in enumerate(zip(table["sample"], table["nm_per_px"], strict=True)):
        where = f"{path}, row {row + 2}"
        try:
            value = float(text)
        except ValueError:
            problems.append(f"{where}, column 'nm_per_px': not a number: {text!r}")
            continue
        if not (math.isfinite(value) and value > 0):
            problems.append(f"{where}, column 'nm_per_px': must be > 0 nm/px, got {value}")
        elif sample.strip() not in samples:
            problems.append(f"{where}, column 'sample': {sample!r} is not a sample of the sheet")
        else:
            found[sample.strip()] = value
    return found, problems


def read_lab(root: Path | str, name: str | None = None, registry: Registry | None = None) -> Lab:
    """Read and check a lab dataset (layout in this module's docstring).

    Args:
        root: The lab's folder.
        name: Its name (default: the folder's).
        registry: Chemical registry (default: the package's).

    Raises:
        LabError: Every problem found, each naming the file, row and column: an unknown
            column, a missing or repeated sample, an unknown chemical, a bad number, a sample
            without micrographs, a micrograph folder without a sample, a bad pixel size.
    """
    root = Path(root)
    registry = registry or Registry()
    sheet = _sheet(root)
    table = _read_sheet(sheet)
    known = {"sample", *RECIPE_COLUMNS, *OPTIONAL_RECIPE_COLUMNS, *GIVEN_COLUMNS}
    problems = [
        f"{sheet}, column {column!r}: unknown column (known: {', '.join(sorted(known))})"
        for column in table.columns
        if column not in known
    ]
    if "sample" not in table.columns:
        raise LabError([*problems, f"{sheet}: no 'sample' column (one name per synthesis)"])
    folders = _micrograph_folders(root)
    rows, seen = [], set()
    for index, record in enumerate(table.to_dict("records")):
        where = f"{sheet}, row {index + 2}"
        sample = "" if pd.isna(record["sample"]) else str(record["sample"]).strip()
        if not sample:
            problems.append(f"{where}, column 'sample': empty")
            continue
        if sample in seen:
            problems.append(f"{where}, column 'sample': {sample!r} appears twice")
            continue
        seen.add(sample)
        if not folders.get(sample):
            problems.append(
                f"{where}, column 'sample': no micrographs in {root / MICROGRAPHS / sample}"
            )
        try:
            row = validate_recipe(record, where, registry)
        except RecipeInputError as error:
            problems.append(str(error).replace(", field ", ", column "))
            continue
        given = _given(record, where, problems)
        rows.append({"sample": sample, **row, **given})
    for folder in sorted(set(folders) - seen):
        problems.append(f"{root / MICROGRAPHS / folder}: micrographs of no sample in {sheet}")
    nm_per_px, found = _pixel_sizes(root, seen)
    problems += found
    if problems:
        raise LabError(problems)
    recipes = pd.DataFrame(rows)
    return Lab(name or root.name, root, recipes, {s: folders[s] for s in seen}, nm_per_px)


def _given(record: Mapping, where: str, problems: list[str]) -> dict[str, object]:
    """The lab's own size and shape of a sample (NaN/None where not given)."""
    from nanoxtal.tem.simulate import SHAPE_CLASSES

    given: dict[str, object] = {}
    for column in ("size_nm", "size_distribution_pct"):
        value = record.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            given[column] = math.nan
            continue
        try:
            given[column] = float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}, column {column!r}: not a number: {value!r}")
            continue
        if not given[column] > 0:
            problems.append(f"{where}, column {column!r}: must be > 0, got {value}")
    shape = record.get("shape")
    shape = None if shape is None or (isinstance(shape, float) and math.isnan(shape)) else shape
    if shape is not None and str(shape).strip() not in SHAPE_CLASSES:
        problems.append(
            f"{where}, column 'shape': {shape!r} is not a shape class ({', '.join(SHAPE_CLASSES)})"
        )
    given["shape"] = None if shape is None else str(shape).strip()
    return {f"given_{key}": value for key, value in given.items()}


@dataclass(frozen=True)
class LabelSettings:
    """When a measured sample is trusted as a label.

    Attributes:
        min_particles: Least measured (not edge-touching) particles; the reference measured
            about 100 per sample.
        min_shape_support: Least share of the measured particles that support the dominant
            shape (``dominant_shape_support``: the classifier does not rule it out for them,
            ``nanoxtal.tem.measure.shape_support``); below it the sample has no clear shape
            (e.g. a mixture of two).
    """

    min_particles: int = 100
    min_shape_support: float = 0.6


def _reject(lab: str, sample: str, reason: str, detail: str) -> dict[str, str]:
    return {"lab": lab, "sample": sample, "reason": reason, "detail": detail}


def _reasons(row: pd.Series, sources: set[str], settings: LabelSettings) -> list[tuple]:
    """Why a measured sample cannot be a label: (reason, detail) pairs, none if it can."""
    reasons = []
    if row["images_failed"] > 0:
        reasons.append(("failed images", f"{row['images_failed']} of {row['images']} failed"))
    if isinstance(row["error"], str) and row["error"]:
        reasons.append(("no measurement", row["error"]))
    elif row["diameter_unit"] != "nm":
        reasons.append(("no pixel size", f"pixel size sources: {', '.join(sorted(sources))}"))
    measured = 0 if pd.isna(row["count_measured"]) else int(row["count_measured"])
    if measured < settings.min_particles:
        reasons.append(
            ("too few particles", f"{measured} measured < {settings.min_particles} required")
        )
    support = row["dominant_shape_support"]
    if measured and not (support >= settings.min_shape_support):
        reasons.append(
            (
                "no clear dominant shape",
                f"{support:.0%} of the particles support {row['dominant_shape']}"
                f" < {settings.min_shape_support:.0%}",
            )
        )
    return reasons


def label_samples(
    lab: Lab,
    samples: pd.DataFrame,
    summary: pd.DataFrame,
    shape_names: Sequence[str],
    settings: LabelSettings | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled recipes from a lab's measured samples, and the samples left without a label.

    Args:
        lab: The lab (``read_lab``).
        samples: The measured samples' ``samples.csv`` rows (``nanoxtal tem measure``: one
            per sample, its images' particles pooled), all samples of the lab together.
        summary: Their images' ``summary.csv`` rows, for each image's pixel-size source.
        shape_names: Shape class names by class index (``shape_classes.txt``).
        settings: When a sample is trusted (``LabelSettings``).

    Returns:
        The labelled recipes (the tidy recipe columns, ``size_nm`` = pooled mean diameter,
        ``size_distribution_pct``, ``shape`` and ``shape_class``, ``particle_count``, with
        provenance: ``lab``, ``sample``, ``dominant_shape_share``,
        ``dominant_shape_support``, ``images``,
        ``pixel_size_source``, the lab's ``given_*`` values and ``measured_minus_given_nm``;
        ``doi`` is ``lab:<name>``, ``recipe_id`` negative so it never meets a published one),
        and one reject row per reason a sample has no label (``REJECT_COLUMNS``).
    """
    settings = settings or LabelSettings()
    measured = samples.set_index("sample")
    labelled, rejects = [], []
    for number, recipe in enumerate(lab.recipes.to_dict("records")):
        sample = recipe["sample"]
        if sample not in measured.index:
            rejects.append(_reject(lab.name, sample, "not measured", "no samples.csv row"))
            continue
        row = measured.loc[sample]
        images = summary[summary["sample"] == sample]
        sources = set(images["pixel_size_source"].dropna().astype(str))
        reasons = _reasons(row, sources, settings)
        rejects += [_reject(lab.name, sample, *reason) for reason in reasons]
        if reasons:
            continue
        shape = str(row["dominant_shape"])
        given = recipe["given_size_nm"]
        labelled.append(
            {
                **{k: v for k, v in recipe.items() if k != "recipe_id"},
                "recipe_id": -(number + 1),
                "size_nm": float(row["mean_diameter"]),
                "size_distribution_pct": float(row["size_distribution_pct"]),
                "shape": shape,
                "shape_class": list(shape_names).index(shape),
                "particle_count": int(row["count_measured"]),
                "doi": f"lab:{lab.name}",
                "segmentation": True,
                "lab": lab.name,
                "dominant_shape_share": float(row["dominant_shape_share"]),
                "dominant_shape_support": float(row["dominant_shape_support"]),
                "images": int(row["images"]),
                "pixel_size_source": ", ".join(sorted(sources)),
                "measured_minus_given_nm": float(row["mean_diameter"]) - given,
            }
        )
    labelled_table = pd.DataFrame(labelled)
    if len(labelled_table):
        labelled_table = labelled_table.astype({"particle_count": "Int64"})
    return labelled_table, pd.DataFrame(rejects, columns=list(REJECT_COLUMNS))


def read_measured(folders: Sequence[Path | str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``samples.csv`` and ``summary.csv`` of ``tem measure`` output folders, stacked.

    Raises:
        LabError: A folder without them (named).
    """
    samples, summaries = [], []
    for folder in map(Path, folders):
        try:
            samples.append(pd.read_csv(folder / "samples.csv", dtype={"sample": str}))
            summaries.append(pd.read_csv(folder / "summary.csv", dtype={"sample": str}))
        except (OSError, ValueError) as error:
            raise LabError([f"{folder}: not a tem measure output ({error})"]) from error
    return pd.concat(samples, ignore_index=True), pd.concat(summaries, ignore_index=True)


def check_lab(predictions: pd.DataFrame, labelled: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """A model's predictions beside each measured sample, and how close they came.

    Args:
        predictions: ``RecipeForest.predict`` of the labelled recipes, same order.
        labelled: ``label_samples``' labelled recipes.

    Returns:
        One row per sample (measured size, predicted size ± the trees' spread, whether the
        measurement lies within ±2 spreads, measured and predicted shape with the predicted
        probability of the measured one), and the metrics: samples, size MAE (nm), share
        within ±2 spreads, shape accuracy.
    """
    measured_shape = labelled["shape"].to_numpy()
    p_measured = [
        float(predictions[f"p_{shape}"].iloc[i]) if f"p_{shape}" in predictions else 0.0
        for i, shape in enumerate(measured_shape)
    ]
    size, predicted = labelled["size_nm"].to_numpy(float), predictions["predicted_size_nm"]
    spread = predictions["predicted_size_std_nm"].to_numpy(float)
    within = np.abs(size - predicted.to_numpy(float)) <= 2 * spread
    check = pd.DataFrame(
        {
            "lab": labelled["lab"].to_numpy(),
            "sample": labelled["sample"].to_numpy(),
            "product": labelled["product"].to_numpy(),
            "measured_size_nm": size,
            "predicted_size_nm": predicted.to_numpy(float),
            "predicted_size_std_nm": spread,
            "within_2std": within,
            "measured_shape": measured_shape,
            "predicted_shape": predictions["predicted_shape"].to_numpy(),
            "p_measured_shape": p_measured,
        }
    )
    metrics = {
        "samples": len(check),
        "size_mae_nm": float(np.mean(np.abs(size - check["predicted_size_nm"]))),
        "size_within_2std": float(within.mean()),
        "shape_accuracy": float((check["measured_shape"] == check["predicted_shape"]).mean()),
    }
    return check, metrics


# The example lab: products of the published table in the shapes they are made in, each imaged
# at its own magnification (particles 25 px across). ``count`` None: as many as fit.
EXAMPLE_SAMPLES = (
    {
        "sample": "cspbbr3-cubes",
        "recipe": {
            "product": "CsPbBr3",
            "injection_temperature_c": 150,
            "reaction_temperature_c": 150,
            "time_min": 5,
            "reagents": "Cs2CO3; PbBr2; ODE; OLA; OA",
            "amounts_mmol": "0.01; 0.035; 31.25; 0.76; 3.94",
            "size_nm": 10.5,
        },
        "shape": "cube",
        "diameter_nm": 10.0,
        "nm_per_px": 0.4,
        "images": 2,
        "count": None,
    },
    {
        "sample": "inp-triangles",
        "recipe": {
            "product": "InP",
            "reaction_temperature_c": 220,
            "time_min": 0.5,
            "reagents": "InCl3; ZnCl2; (NMe2)3P; OLA; TOA",
            "amounts_mmol": "0.3; 0.3; 1.2; 4.3; 8.2",
        },
        "shape": "triangle",
        "diameter_nm": 8.0,
        "nm_per_px": 0.32,
        "images": 2,
        "count": None,
    },
    {
        "sample": "cu2s-hexagons",
        "recipe": {
            "product": "Cu2S",
            "injection_temperature_c": 160,
            "reaction_temperature_c": 190,
            "time_min": 210,
            "reagents": "CuAc; DT; ODE; TOPO",
            "amounts_mmol": "0.4; 4.18; 93.75; 2.59",
        },
        "shape": "hexagon",
        "diameter_nm": 13.0,
        "nm_per_px": 0.52,
        "images": 2,
        "count": None,
    },
    {
        "sample": "pbse-few",
        "recipe": {
            "product": "PbSe",
            "reaction_temperature_c": 140,
            "time_min": 5,
            "reagents": "PbO; Se; ODE; OLA; TOP; OA",
            "amounts_mmol": "5; 5; 46.9; 5.0; 5.6; 22.2",
        },
        "shape": "sphere",
        "diameter_nm": 6.0,
        "nm_per_px": 0.25,
        "images": 1,
        "count": 15,
    },
)


def write_example_lab(out: Path | str, seed: int = 7, size_px: int = 640) -> pd.DataFrame:
    """Write a small example lab: recipes of published products and simulated micrographs.

    Each sample's micrographs come from ``nanoxtal.tem.simulate`` at a known size, shape and
    pixel size, with a scale bar burned in (its label is what gives the pixel size: no
    sidecar is written). Particles are separated and imaged with good contrast, so the
    measurement, not the imaging, is what the example shows; ``pbse-few`` holds too few
    particles to be labelled.

    Args:
        out: The lab's folder (created; an existing ``recipes.csv`` there is refused).
        seed: Seed of the micrographs.
        size_px: Side of the square micrographs (px).

    Returns:
        The truth per sample (``truth.csv``, also written): shape, pixel size, the mean
        equivalent-circle diameter of the particles placed (nm) and their number.

    Raises:
        FileExistsError: ``out`` already holds a lab.
    """
    from nanoxtal.files import atomic_write
    from nanoxtal.tem.simulate import (
        MicrographSettings,
        simulate_batch,
        write_micrograph,
    )

    out = Path(out)
    if any((out / name).exists() for name in SHEET_NAMES):
        raise FileExistsError(f"{out} already holds a lab ({SHEET_NAMES[0]}); choose another")
    truth, rows = [], []
    for index, example in enumerate(EXAMPLE_SAMPLES):
        settings = MicrographSettings(
            width_px=size_px,
            height_px=size_px,
            nm_per_px=example["nm_per_px"],
            diameter_nm=example["diameter_nm"],
            count=example["count"],
            coverage=0.12,
            shape_weights={example["shape"]: 1.0},
            touching_probability=0.0,
            overlap_probability=0.0,
            diffraction_contrast=0.0,
            dose_e_per_px=1000.0,
            film_texture=0.03,
            film_undulation=0.0,
            illumination_gradient=0.0,
        )
        folder = out / MICROGRAPHS / example["sample"]
        diameters = []
        batch = simulate_batch(settings, example["images"], seed + 100 * index)
        for number, micrograph in enumerate(batch):
            written = write_micrograph(micrograph, folder, f"{example['sample']}_{number + 1}")
            # A lab's micrograph carries its scale bar, not the simulator's truth files.
            for role in ("instances", "particles", "metadata"):
                written[role].unlink()
            diameters += micrograph.particles["diameter_nm"].tolist()
        rows.append({"sample": example["sample"], **example["recipe"]})
        truth.append(
            {
                "sample": example["sample"],
                "shape": example["shape"],
                "nm_per_px": example["nm_per_px"],
                "mean_diameter_nm": float(np.mean(diameters)),
                "particles": len(diameters),
            }
        )
    with atomic_write(out / SHEET_NAMES[0]) as partial:
        pd.DataFrame(rows).to_csv(partial, index=False)
    table = pd.DataFrame(truth)
    with atomic_write(out / "truth.csv") as partial:
        table.to_csv(partial, index=False)
    return table
