"""Powder XRD for notebooks and scripts: read, simulate, render and classify patterns.

Each function is one job of the stage and returns pandas tables (or the readers' dataclasses)::

    from nanoxtal import xrd

    peaks = xrd.simulate(structure)           # stick pattern: hkl, 2θ, d, intensity
    patterns = xrd.render(peaks)              # on the model grid, 5-89.99° 2θ in 0.01°
    table = xrd.predict("sample.xy")          # crystal system and space group

``nanoxtal xrd simulate`` and ``nanoxtal xrd predict`` are these functions plus file writing.
Modules that import PyTorch are imported on first use, so ``simulate`` stays light.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nanoxtal.models import (
    PUBLISHED,
    PUBLISHED_LIBRARY,
    PUBLISHED_REFERENCES,
    RESULTS,
    Chosen,
    ModelError,
    choose_model,
    published_file,
)
from nanoxtal.xrd.diffraction import (
    SimulationError,
    SiteArrays,
    StickPattern,
    peak_table,
    stick_pattern,
)
from nanoxtal.xrd.structures import (
    Simulable,
    StructureInputs,
    simulation_items,
    simulation_sources,
)

if TYPE_CHECKING:
    from nanoxtal.xrd.io import Measured
    from nanoxtal.xrd.library import Library
    from nanoxtal.xrd.module import XrdClassifier
    from nanoxtal.xrd.profiles import Augmentation
    from nanoxtal.xrd.references import References

__all__ = [
    "choose_classifier",
    "choose_library",
    "choose_references",
    "predict",
    "read_pattern",
    "render",
    "simulate",
    "stick_patterns",
]

Errors = Literal["raise", "warn"]
PathLike = Path | str


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn', got {errors!r}")


def read_pattern(path: PathLike) -> list[Measured]:
    """All powder patterns of one file.

    Args:
        path: A two-column text file (``.xy``, ``.xye``, ``.csv``, ``.txt``, ``.dat``: 2θ in
            degrees and intensity; header, comment and RRUFF ``##`` lines are skipped), a
            PANalytical ``.xrdml`` file, or an ``.npz`` archive with ``intensity`` (N × M) and
            ``two_theta`` (M, degrees) arrays like ``rruff_dev.npz``.

    Returns:
        The patterns (one for text and XRDML files), each with its 2θ (degrees, increasing),
        intensities, wavelength (Å, when the file states it) and any labels stored with it.

    Raises:
        PatternReadError: A missing file, an unknown format or no usable data; names the file.
    """
    from nanoxtal.xrd.io import read_patterns

    return read_patterns(path)


def stick_patterns(
    structures: StructureInputs,
    wavelength: str | float = "CuKa",
    two_theta: tuple[float, float] = (5.0, 90.0),
    debye_waller: float | None = None,
    progress: bool = False,
    workers: int = 1,
) -> Iterator[tuple[str, StickPattern | SimulationError]]:
    """Simulate structures one by one: each one's stick pattern, or why it has none.

    Args:
        structures: As ``simulate`` takes them.
        wavelength: As ``simulate``.
        two_theta: As ``simulate``.
        debye_waller: As ``simulate``.
        progress: Show a progress bar (structures simulated).
        workers: As ``simulate``.

    Yields:
        (structure id, stick pattern or the ``SimulationError`` of a structure that cannot be
        read or simulated), in input order.

    Raises:
        ValueError: An unknown wavelength or a 2θ range outside 0-180°: no structure can be
            simulated.
    """
    for structure_id, item, _ in read_and_simulate(
        structures, wavelength, two_theta, debye_waller, progress, workers
    ):
        yield structure_id, item


# How a structure reached the simulator (``read_and_simulate``).
READ_PATHS = ("arrays", "pymatgen", "unread")


def read_and_simulate(
    structures: StructureInputs,
    wavelength: str | float = "CuKa",
    two_theta: tuple[float, float] = (5.0, 90.0),
    debye_waller: float | None = None,
    progress: bool = False,
    workers: int = 1,
) -> Iterator[tuple[str, StickPattern | SimulationError, str]]:
    """``stick_patterns`` saying which path each structure took (``READ_PATHS``).

    ``arrays``: read by the fast CIF reader, or from a structure table, straight into arrays;
    ``pymatgen``: a pymatgen ``Structure`` (given as such, or a CIF the fast reader refused and
    pymatgen read); ``unread``: neither could read it. With ``workers`` > 1, processes read and
    simulate chunks of the inputs; the order and the results are the same.
    """
    settings = (wavelength, two_theta, debye_waller)
    bar = tqdm(desc="simulate", unit="structure", disable=not progress)
    chunks = _chunks(structures, SIMULATION_CHUNK)
    if workers <= 1:
        for chunk in chunks:
            results = _simulate_chunk(chunk, settings)
            bar.update(len(results))
            yield from results
        bar.close()
        return
    # Reading (parsing the CIF) is much of the work: each process reads and simulates its own
    # chunk of sources; results come back in input order.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for results in pool.map(_simulate_chunk, chunks, itertools.repeat(settings)):
            bar.update(len(results))
            yield from results
    bar.close()


# Structures read, then simulated, at once (``read_and_simulate``): one phase after the other
# over a chunk keeps each phase's code and data hot in the CPU caches; alternating them
# structure by structure took 13 % longer (Materials Project CIFs, one core).
SIMULATION_CHUNK = 128


def _simulate_one(
    structure_id: str, item: Simulable, settings: tuple
) -> tuple[str, StickPattern | SimulationError, str]:
    if isinstance(item, str):
        return structure_id, SimulationError(item), "unread"
    path = "arrays" if isinstance(item, SiteArrays) else "pymatgen"
    try:
        return structure_id, stick_pattern(item, *settings), path
    except SimulationError as error:
        return structure_id, error, path


def _chunks(structures: StructureInputs, size: int) -> Iterator[list[tuple[str, object]]]:
    """The inputs in chunks of ``size``, unread: CIF sources as text, the rest as they come."""
    chunk: list[tuple[str, object]] = []
    for entry in simulation_sources(structures):
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _simulate_chunk(chunk: list[tuple[str, object]], settings: tuple) -> list[tuple]:
    items = list(simulation_items(chunk))  # every structure read first: SIMULATION_CHUNK
    return [_simulate_one(i, item, settings) for i, item in items]


def simulate(
    structures: StructureInputs,
    wavelength: str | float = "CuKa",
    two_theta: tuple[float, float] = (5.0, 90.0),
    debye_waller: float | None = None,
    errors: Errors = "raise",
    progress: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Kinematic powder stick patterns of crystal structures.

    Args:
        structures: A pymatgen ``Structure`` (named by its reduced formula; repeats in a list
            get ``_2``, ``_3``...), a list of them, a dict of id -> ``Structure``, a path or a
            list of paths (CIF files, folders of CIFs, CSV(.gz) tables with a ``cif`` column
            and an optional ``material_id`` or ``id`` column, structure tables ``.parquet``
            of ``nanoxtal xrd structures``), or a DataFrame with a ``cif`` column or with
            the structure table's ``id, lattice, species, frac_coords``.
        wavelength: A line name (``"CuKa"``, ``"MoKa1"``, ...) or the wavelength in Å.
        two_theta: The 2θ range, degrees.
        debye_waller: Isotropic Debye–Waller factor B of all atoms, Å² (None: none).
        errors: On a structure that cannot be read or simulated: ``"raise"`` a
            ``SimulationError`` naming it, or ``"warn"`` (one warning each) and go on.
        progress: Show a progress bar.
        workers: Processes reading and simulating chunks of the inputs (same table, same
            order; ``xrd simulate --workers``).

    Returns:
        One row per peak (``nanoxtal.xrd.diffraction.PEAK_COLUMNS``): structure ``id``,
        ``h, k, l``, ``two_theta`` (degrees), ``d`` (Å), ``intensity`` (strongest peak of each
        structure 100) and ``multiplicity``; sorted by structure (input order), then 2θ.

    Raises:
        SimulationError: With ``errors="raise"``, the first structure that fails.
        ValueError: An unknown wavelength, a 2θ range outside 0-180° or an unknown ``errors``.
    """
    _check_errors(errors)
    patterns = []
    for structure_id, result in stick_patterns(
        structures, wavelength, two_theta, debye_waller, progress, workers
    ):
        if isinstance(result, SimulationError):
            if errors == "raise":
                raise SimulationError(f"{structure_id}: {result}") from result
            warnings.warn(f"{structure_id}: {result}", stacklevel=2)
            continue
        patterns.append((structure_id, result))
    return peak_table(patterns)


def _table(source: pd.DataFrame | PathLike | Sequence[PathLike]) -> pd.DataFrame:
    """A DataFrame as it is, or the ``.parquet`` table(s) at a path (or paths) concatenated."""
    if isinstance(source, pd.DataFrame):
        return source
    paths = [source] if isinstance(source, Path | str) else list(source)
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)


def render(
    peaks: pd.DataFrame | PathLike,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    structures: pd.DataFrame | PathLike | Sequence[PathLike] | None = None,
    min_intensity: float = 0.05,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Stick patterns rendered as powder patterns on the model grid (5-89.99° 2θ, 0.01° steps).

    Peaks are drawn from their d-spacings at the model's wavelength (Cu Kα, 1.54184 Å),
    whatever wavelength they were simulated at, with the renderer the models are trained on
    (``nanoxtal.xrd.profiles.Renderer``).

    Args:
        peaks: A peak table (``simulate``, or a ``.parquet`` of ``nanoxtal xrd simulate``).
        augmentation: Experimental effects (peak shapes, size broadening, lattice strain,
            preferred orientation, shifts, background, noise, impurities), drawn per pattern;
            None for the clean, noise-free instrument of ``Augmentation.clean()``.
        seed: Seed of the effects; the same inputs and seed render the same patterns.
        structures: The structure table(s) of the peaks (DataFrame or ``.parquet`` paths of
            ``nanoxtal xrd structures``/``random``): lattices and crystal systems, needed for
            lattice strain and preferred orientation only.
        min_intensity: Peaks weaker than this (of 100) are left out, as in training.
        batch_size: Structures rendered at once.

    Returns:
        One row per structure (index ``id``, in the peak table's order), one column per 2θ
        (float, degrees; the column index is named ``two_theta``), each row max-normalised
        to 1.

    Raises:
        ValueError: Lattice strain or preferred orientation without ``structures``, or a
            structure of the peaks missing from them.
    """
    from nanoxtal.xrd.datamodule import STICK_COLUMNS, join_sticks, render_sticks
    from nanoxtal.xrd.profiles import Augmentation, Renderer

    augmentation = augmentation or Augmentation.clean()
    peaks = _table(peaks)[STICK_COLUMNS]
    ids = pd.unique(peaks["id"])
    if structures is None:
        if augmentation.lattice_strain is not None or augmentation.march_dollase_r is not None:
            raise ValueError(
                "lattice strain and preferred orientation need the structures' lattices: "
                "pass structures= (the structure table) or turn them off"
            )
        # Without lattices, only d-spacings matter: a unit metric and no symmetry ties, which
        # nothing reads when strain and texture are off.
        table = pd.DataFrame(
            {
                "id": ids,
                "space_group": 0,
                "crystal_system": 0,
                "lattice": [np.eye(3).ravel()] * len(ids),
            }
        )
    else:
        known = _table(structures).drop_duplicates("id").set_index("id")
        missing = [i for i in ids if i not in known.index]
        if missing:
            raise ValueError(
                f"{len(missing)} structure(s) of the peaks are not in structures, e.g. "
                f"{missing[0]!r}"
            )
        table = known.loc[ids, ["space_group", "crystal_system", "lattice"]].reset_index()
    renderer = Renderer()
    patterns = render_sticks(
        join_sticks(table, peaks, min_intensity), renderer, augmentation, seed, batch_size
    )
    # The grid's positions before the renderer's float32 cast, so that labels read 5.01 and
    # 89.99 (not 89.98999786); the rounding only clears float64 noise such as 5.07000000001.
    grid = renderer.grid
    two_theta = (grid.start + grid.step * np.arange(grid.points)).round(10)
    return pd.DataFrame(
        patterns,
        index=pd.Index(ids, name="id"),
        columns=pd.Index(two_theta, name="two_theta"),
    )


def choose_classifier(model: XrdClassifier | PathLike | None = None) -> Chosen:
    """The XRD classifier a prediction uses, and how to name it.

    Args:
        model: A loaded ``XrdClassifier``; a checkpoint or a results folder holding one
            (``results``, ``results/xrd``, ``results/xrd/models``); or None for the one the
            workflow published, ``results/xrd/models/best.ckpt`` under the working directory.

    Returns:
        The model (``.model``), its file (``.path``) and a line naming it (``.describe``).

    Raises:
        ModelError: No model there, not an XRD classifier, or none given and none published
            (the message says how to train one).
    """
    chosen = choose_model("xrd", model)
    if chosen.model is not None:
        return chosen
    if model is not None:
        raise ModelError(f"{model!r}: XRD has no model-free baseline; give a checkpoint")
    where = RESULTS / PUBLISHED["xrd"]
    raise ModelError(
        f"no XRD model given and none published at {where}: train and publish one with "
        f"`snakemake --cores 2 {where}`, or name a checkpoint (model= in Python, --model on "
        "the command line)"
    )


def choose_library(
    library: Library | PathLike | Literal[False] | None = None,
) -> tuple[Library | None, str]:
    """The pattern library searched beside the classifier, and how to name it.

    Args:
        library: A ``Library``; a path to one (``library.npz`` of ``nanoxtal xrd finetune``);
            False for none; or None for the one the workflow published,
            ``results/xrd/models/library.npz``, when it exists (else none).

    Returns:
        The library (or None) and a line naming it (``none`` when there is none).

    Raises:
        LibraryError: A path that is no readable library (the message names it).
    """
    from nanoxtal.xrd.library import Library, load_library

    return _choose_published(library, Library, load_library, PUBLISHED_LIBRARY)


def choose_references(
    references: References | PathLike | Literal[False] | None = None,
) -> tuple[References | None, str]:
    """The reference phases named beside each prediction, and how to name them.

    Args:
        references: ``References``; a path to them (``references.npz`` of ``nanoxtal xrd
            references``); False for none; or None for the ones the workflow published,
            ``results/xrd/references.npz``, when they exist (else none).

    Returns:
        The references (or None) and a line naming them (``none`` when there are none).

    Raises:
        ReferencesError: A path that is no readable references file (the message names it).
    """
    from nanoxtal.xrd.references import References, load_references

    return _choose_published(references, References, load_references, PUBLISHED_REFERENCES)


def _choose_published(given, kind: type, load, relative: Path) -> tuple[object | None, str]:
    """``given`` as it is, loaded from its path, none (False), or the published file (None)."""
    if given is False:
        return None, "none"
    if isinstance(given, kind):
        return given, f"{kind.__name__} given"
    if given is None:
        found = published_file(relative)
        if found is None:
            return None, f"none (none published at {RESULTS / relative})"
        return load(found), f"{found} (published by the workflow)"
    return load(given), str(given)


def _measured(
    patterns: PathLike | Measured | np.ndarray | pd.DataFrame | Sequence[PathLike | Measured],
    errors: Errors,
) -> list[Measured]:
    """The patterns of any input ``predict`` takes, unreadable files raised or warned about."""
    from nanoxtal.xrd.io import Measured, read_files
    from nanoxtal.xrd.profiles import Grid
    from nanoxtal.xrd.radiation import WAVELENGTHS

    model_wavelength = WAVELENGTHS["CuKa"]  # of the model grid (``to_grid``'s default)
    if isinstance(patterns, pd.DataFrame):
        two_theta = np.asarray(patterns.columns, dtype=float)
        return [
            Measured(str(name), 0, two_theta, row, model_wavelength)
            for name, row in zip(patterns.index, patterns.to_numpy(dtype=float), strict=True)
        ]
    if isinstance(patterns, np.ndarray):
        grid = Grid()
        array = np.atleast_2d(np.asarray(patterns, dtype=float))
        if array.ndim != 2 or array.shape[1] != grid.points:
            raise ValueError(
                f"patterns of shape {np.shape(patterns)}: an array must hold patterns on the "
                f"model grid, (N, {grid.points}) points from {grid.start}° in {grid.step}° steps"
            )
        two_theta = grid.values().double().numpy()
        return [
            Measured("array", i, two_theta, row, model_wavelength) for i, row in enumerate(array)
        ]
    items = [patterns] if isinstance(patterns, Path | str | Measured) else list(patterns)
    found: list[Measured] = []
    for item in items:
        if isinstance(item, Measured):
            found.append(item)
            continue
        read, failed = read_files([item])
        for error in failed:
            if errors == "raise":
                raise error
            warnings.warn(str(error), stacklevel=3)
        found.extend(read)
    return found


def predict(
    patterns: PathLike | Measured | np.ndarray | pd.DataFrame | Sequence[PathLike | Measured],
    model: XrdClassifier | PathLike | None = None,
    library: Library | PathLike | Literal[False] | None = None,
    wavelength: float | None = None,
    min_confidence: float | None = None,
    errors: Errors = "raise",
    references: References | PathLike | Literal[False] | None = None,
) -> pd.DataFrame:
    """Crystal system and space group of powder patterns.

    Every pattern is resampled onto the model grid (5-89.99° 2θ in 0.01° steps, Cu Kα:
    patterns measured at another wavelength move there through their d-spacings) and scaled
    to 0-1 (``nanoxtal.xrd.io.to_grid``).

    Args:
        patterns: Pattern files (``read_pattern``'s formats) or ``Measured`` patterns, one or
            a list; a 2-D array (N, 8500) of patterns already on the model grid (rows named
            ``array``, 0, 1, ...); or a DataFrame like ``render``'s (one row per pattern, one
            column per 2θ in degrees; rows named by their index).
        model: A loaded ``XrdClassifier``, a checkpoint or results folder, or None for the
            workflow's published ``results/xrd/models/best.ckpt`` (``choose_classifier``).
        library: Labelled measured patterns searched beside the model (a close match shifts
            the probabilities to its labels): a ``Library``, a path, False for none, or None
            for the published ``results/xrd/models/library.npz`` when it exists
            (``choose_library``).
        wavelength: Wavelength, Å, of patterns that do not state theirs (default Cu Kα).
        min_confidence: Predictions whose space-group probability by the model itself
            (before a library or references move it) is lower are marked ``abstained``; None
            for the threshold chosen when the model was fine-tuned so that answers on
            measured patterns it had not seen were right 80 % of the time: with a library,
            references or both (the default), that pipeline's, on its final probability
            (``XrdClassifier.pipeline_abstain_below``); else the model's own
            (``XrdClassifier.abstain_below``; 0 for a model never fine-tuned).
        errors: On a file that cannot be read: ``"raise"`` its ``PatternReadError`` (naming
            it), or ``"warn"`` (one warning each) and predict the rest.
        references: Reference phases whose clean patterns are searched for each pattern's
            three closest matches (with a trust curve, as published, a close match 1 also
            moves the space-group probabilities towards its space group): ``References``,
            a path, False for none, or None for the published ``results/xrd/references.npz``
            when it exists (``choose_references``).

    Returns:
        One row per pattern: ``source``, ``index`` (position in its file), ``crystal_system``
        (name), ``space_group`` (ITA number 1-230), ``p_crystal_system``, ``p_space_group``,
        ``coverage`` (share of the grid measured), ``space_group_1..5`` with
        ``p_space_group_1..5`` (top 5), ``abstained``; with a library also
        ``library_space_group`` and ``library_similarity`` (cosine) of the nearest library
        pattern; with references also ``match_<k>_id, _name, _formula, _space_group,
        _similarity`` for k = 1-3. An empty table when there are no patterns.

    Raises:
        ModelError: No model given and none published, or not an XRD classifier.
        LibraryError: A library path that is no readable library.
        ReferencesError: A references path that is no readable references file.
        PatternReadError: With ``errors="raise"``, the first file that cannot be read.
    """
    from nanoxtal.xrd.evaluate import predict_patterns

    _check_errors(errors)
    # The model and library first: without them, reading the patterns is wasted.
    chosen = choose_classifier(model)
    searched, _ = choose_library(library)
    named, _ = choose_references(references)
    measured = _measured(patterns, errors)
    return predict_patterns(chosen.model, measured, wavelength, min_confidence, searched, named)
