"""Trained models by stage: where the workflow publishes them, and one loader for all.

The workflow publishes one model per stage (``shared/ARCHITECTURE.md`` §3: ``best.ckpt`` is the
one the command line uses by default): the API and the CLI both fall back to it when no model
is named, and say which one they used.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from nanoxtal.recipes.design import RecipeForest
    from nanoxtal.tem.module import Segmenter
    from nanoxtal.xrd.module import XrdClassifier

Stage = Literal["tem", "xrd", "recipes"]
STAGES: tuple[Stage, ...] = ("tem", "xrd", "recipes")
# Where the workflow publishes each stage's model, under its results folder.
PUBLISHED: dict[Stage, Path] = {
    "tem": Path("tem/models/best.ckpt"),
    "xrd": Path("xrd/models/best.ckpt"),
    "recipes": Path("recipes/models/forest.pkl"),
}
# The labelled measured patterns the XRD model is published with (``xrd_publish``).
PUBLISHED_LIBRARY = Path("xrd/models/library.npz")
# The reference phases named beside XRD predictions (``xrd_references``).
PUBLISHED_REFERENCES = Path("xrd/references.npz")
# The workflow's results folder, relative to where it runs (the repository root).
RESULTS = Path("results")


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message names the path and what is missing."""


def published_model(stage: Stage, results: Path | str = RESULTS) -> Path | None:
    """The model the workflow published for ``stage`` under ``results``, if it exists."""
    path = Path(results) / PUBLISHED[_stage(stage)]
    return path if path.is_file() else None


def published_file(relative: Path, results: Path | str = RESULTS) -> Path | None:
    """A file the workflow published (``PUBLISHED_LIBRARY``...) under ``results``, if it exists."""
    path = Path(results) / relative
    return path if path.is_file() else None


def _stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise ModelError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    return stage  # type: ignore[return-value]


def checkpoint_stage(path: Path | str) -> Stage:
    """Which stage a model file belongs to: a Lightning checkpoint (TEM, XRD) or a recipe model.

    Raises:
        ModelError: Not a file, or a file that is no nanoxtal model (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.suffix == ".pkl":
        return "recipes"
    import torch  # only for checkpoints: recipe models load without it

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        arch = str(state["hyper_parameters"]["arch"]["name"])
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
        raise ModelError(
            f"{path}: not a nanoxtal checkpoint (no hyper_parameters/arch: {error})"
        ) from error
    from nanoxtal.tem.nets import ARCHITECTURES as TEM_NETS
    from nanoxtal.xrd.nets import ARCHITECTURES as XRD_NETS

    if arch in TEM_NETS:
        return "tem"
    if arch in XRD_NETS:
        return "xrd"
    raise ModelError(f"{path}: network {arch!r} belongs to no nanoxtal stage")


def model_file(path: Path | str, stage: Stage | None = None) -> Path:
    """The model file a path names: the file itself, or the published model in a folder.

    A folder may be a results folder (``results``), a stage's (``results/xrd``) or a models
    folder (``results/xrd/models``).

    Raises:
        ModelError: No model there, or a folder holding several models and no ``stage`` to
            choose (the message lists what was looked for).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelError(f"{path}: no such model file or results folder")
    stages = [_stage(stage)] if stage is not None else list(STAGES)
    # results/<stage>/models/<file>, given as results, results/<stage> or .../models.
    looked = [path.joinpath(*PUBLISHED[name].parts[skip:]) for name in stages for skip in range(3)]
    found = sorted({file for file in looked if file.is_file()})
    if stage is not None:
        found = [file for file in found if checkpoint_stage(file) == stage]
    if len(found) == 1:
        return found[0]
    if not found:
        listed = ", ".join(dict.fromkeys(str(file) for file in looked))
        raise ModelError(f"{path}: no trained model found (looked for {listed})")
    raise ModelError(
        f"{path}: holds several models ({', '.join(map(str, found))}); name the stage or the file"
    )


def load_model(
    path: Path | str, stage: Stage | None = None
) -> Segmenter | XrdClassifier | RecipeForest:
    """Load a trained model from a checkpoint, a recipe model file or a results folder.

    Args:
        path: A checkpoint (``.ckpt``: TEM segmenter or XRD classifier), a recipe model
            (``.pkl``), or a folder holding the workflow's published model (``results``,
            ``results/tem``, ``results/tem/models``).
        stage: ``tem``, ``xrd`` or ``recipes``, to choose in a results folder holding several,
            or to check that a file is of the stage expected.

    Returns:
        The model in evaluation mode: ``nanoxtal.tem.module.Segmenter``,
        ``nanoxtal.xrd.module.XrdClassifier`` or ``nanoxtal.recipes.design.RecipeForest``.

    Raises:
        ModelError: Nothing to load, an ambiguous folder, or a model of another stage.
    """
    file = model_file(path, stage)
    found = checkpoint_stage(file)
    if stage is not None and found != stage:
        raise ModelError(f"{file}: a {found} model, not a {stage} one")
    if found == "tem":
        from nanoxtal.tem.module import load_segmenter

        return load_segmenter(file)
    if found == "xrd":
        from nanoxtal.xrd.module import load_classifier

        return load_classifier(file)
    from nanoxtal.recipes.design import RecipeForest

    try:
        return RecipeForest.load(file)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as error:
        raise ModelError(f"{file}: not a nanoxtal recipe model ({error})") from error


@dataclass(frozen=True)
class Chosen:
    """A model chosen for a job and how to say so (``describe`` is printed by the CLI).

    Attributes:
        model: The loaded model, or None for a job's model-free baseline.
        path: Its file, or None.
        describe: One line naming it, e.g. ``network results/tem/models/best.ckpt (published
            by the workflow)``.
    """

    model: object | None
    path: Path | None
    describe: str


def choose_model(
    stage: Stage,
    model: object | Path | str | None,
    results: Path | str = RESULTS,
) -> Chosen:
    """The model a job uses: the one given, else the workflow's published one, else none.

    Args:
        stage: The job's stage.
        model: A loaded model (used as it is), a path (``load_model``), ``"classical"`` for the
            stage's model-free baseline (TEM), or None for the published model when it exists.
        results: The workflow's results folder searched when ``model`` is None.

    Returns:
        Chosen: The model, or None when there is none (the caller then uses its baseline or
        refuses), its file and its description.
    """
    if isinstance(model, str) and model == "classical":
        return Chosen(None, None, "classical baseline")
    if model is None:
        found = published_model(stage, results)
        if found is None:
            where = Path(results) / PUBLISHED[stage]
            return Chosen(None, None, f"no trained model (none published at {where})")
        return Chosen(load_model(found, stage), found, f"{found} (published by the workflow)")
    if isinstance(model, str | Path):
        file = model_file(model, stage)
        return Chosen(load_model(file, stage), file, str(file))
    return Chosen(model, None, f"{type(model).__name__} given")
