"""The recipe stage's main jobs for notebooks and scripts: predict recipes, suggest recipes.

Both use the size/shape model the workflow publishes (``results/recipes/models/forest.pkl``,
``nanoxtal.models``) unless given another, and return pandas tables::

    from nanoxtal import recipes

    predictions = recipes.predict("new.csv")  # or a DataFrame, or a list of dicts
    best = recipes.suggest("PbSe", 8.0, shape="sphere", fix=["OA"])

The command line (``nanoxtal recipes predict``, ``suggest``) calls these same functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from nanoxtal.models import PUBLISHED, RESULTS, Chosen, ModelError, choose_model
from nanoxtal.recipes import design
from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.design import RecipeForest, RecipeInputError, read_recipes, validate_recipe

__all__ = [
    "DEFAULT_RECIPES",
    "RecipeWarning",
    "ValidatedRecipes",
    "predict",
    "recipe_model",
    "suggest",
    "validate_recipes",
]

#: The tidy recipes the workflow writes (rule ``recipes_clean``); suggestions start from them.
DEFAULT_RECIPES = Path(RESULTS) / "recipes" / "recipes.parquet"
ERRORS = ("raise", "warn")

Recipes = pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]] | str | Path
RecipeFiles = Sequence[str | Path]


class RecipeWarning(UserWarning):
    """A recipe left out of a prediction (``predict(..., errors="warn")``); names the recipe."""


@dataclass(frozen=True)
class ValidatedRecipes:
    """Recipes checked field by field (``validate_recipes``).

    Attributes:
        table: The valid recipes as tidy rows (``design.validate_recipe``), in input order.
        errors: One error per invalid recipe or unreadable file, naming it, in input order.
    """

    table: pd.DataFrame
    errors: list[RecipeInputError]


def _registry(registry: Registry | Path | str | None) -> Registry:
    return registry if isinstance(registry, Registry) else Registry(registry)


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    # Tables read from parquet hold lists as numpy arrays and gaps as pd.NA; the validator
    # takes lists, ';'-separated strings, None and NaN.
    return {
        key: value.tolist() if isinstance(value, np.ndarray) else None if value is pd.NA else value
        for key, value in record.items()
    }


def _labelled(
    recipes: Recipes | RecipeFiles,
) -> Iterator[tuple[str, Mapping[str, Any] | RecipeInputError]]:
    """(label, record) per recipe given, or (file, error) for a file that cannot be read."""
    if isinstance(recipes, pd.DataFrame):
        for index, record in zip(recipes.index, recipes.to_dict("records"), strict=True):
            yield f"row {index}", _plain(record)
        return
    if isinstance(recipes, Mapping):
        yield "recipe", _plain(recipes)
        return
    items = [recipes] if isinstance(recipes, str | Path) else list(recipes)
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            yield f"recipes[{i}]", _plain(item)
            continue
        if not isinstance(item, str | Path):
            raise TypeError(
                f"recipes[{i}] is {item!r}: give a DataFrame, recipe dicts or paths of "
                ".csv/.yaml recipe files"
            )
        path = Path(item)
        try:
            records = read_recipes(path)
        except RecipeInputError as error:
            yield str(path), error
            continue
        for number, record in enumerate(records, start=1):
            yield f"{path} recipe {number}", record


def validate_recipes(
    recipes: Recipes | RecipeFiles, registry: Registry | Path | str | None = None
) -> ValidatedRecipes:
    """Check every recipe, keeping the valid ones and an error for each of the others.

    Args:
        recipes: A DataFrame (one row per recipe, columns as ``design.validate_recipe`` takes;
            lists as lists, arrays or ';'-separated strings), one recipe dict or a list of them,
            or the path(s) of ``.csv``/``.yaml`` recipe files (``design.read_recipes``).
        registry: Chemical registry, its YAML file, or None for the package's.

    Returns:
        The valid recipes as tidy rows and the errors, labelled ``row <index>`` (DataFrame),
        ``recipes[<i>]`` (list), or ``<file> recipe <n>`` (from 1, files).

    Raises:
        TypeError: ``recipes`` is none of the above.
    """
    registry = _registry(registry)
    rows, errors = [], []
    for label, record in _labelled(recipes):
        if isinstance(record, RecipeInputError):
            errors.append(record)
        elif not isinstance(record, Mapping):
            errors.append(RecipeInputError(f"{label}: not a recipe (fields expected)"))
        else:
            try:
                rows.append(validate_recipe(record, label, registry))
            except RecipeInputError as error:
                errors.append(error)
    return ValidatedRecipes(pd.DataFrame(rows), errors)


def recipe_model(model: RecipeForest | Path | str | None = None) -> Chosen:
    """The recipe model a job uses, and how to name it.

    Args:
        model: A trained ``RecipeForest``, its file (or a results folder holding it), or None
            for the model the workflow published (``results/recipes/models/forest.pkl``).

    Returns:
        The loaded model (``Chosen.model``) and a line naming it (``Chosen.describe``).

    Raises:
        ModelError: No model given and none published (the message names the path and the
            command that trains it), or a file that is no recipe model.
    """
    chosen = choose_model("recipes", model)
    if chosen.model is None:
        where = Path(RESULTS) / PUBLISHED["recipes"]
        reason = f"none published at {where}" if model is None else chosen.describe
        raise ModelError(
            f"no trained recipe model ({reason}): run `snakemake --cores 2 {where}` to train "
            "it, or give one (--model on the command line, model= in Python)"
        )
    if not isinstance(chosen.model, RecipeForest):
        raise ModelError(f"{chosen.describe}: not a recipe model (a RecipeForest)")
    return chosen


def predict(
    recipes: Recipes | RecipeFiles,
    model: RecipeForest | Path | str | None = None,
    registry: Registry | Path | str | None = None,
    errors: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """Predicted size (nm, with the trees' spread) and shape probabilities of recipes.

    Args:
        recipes: See ``validate_recipes``: a DataFrame, recipe dict(s) or recipe file path(s).
        model: See ``recipe_model``; None: the workflow's published model.
        registry: Chemical registry, its YAML file, or None for the package's.
        errors: ``raise``: the first invalid recipe raises; ``warn``: a ``RecipeWarning`` per
            invalid recipe (or unreadable file) and the others are predicted.

    Returns:
        One row per valid recipe, in input order: ``recipe_id`` (the given one, else the
        label), ``product``, ``predicted_size_nm``, ``predicted_size_std_nm``,
        ``predicted_shape``, ``shape_probability`` and ``p_<shape>`` per shape class
        (``RecipeForest.predict``).

    Raises:
        RecipeInputError: An invalid recipe (``errors="raise"``; the message names it, the
            field and the problem), or no valid recipe at all.
        ModelError: No model (see ``recipe_model``).
    """
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, not {errors!r}")
    chosen = recipe_model(model)
    registry = _registry(registry)
    checked = validate_recipes(recipes, registry)
    if checked.errors and errors == "raise":
        first, more = checked.errors[0], len(checked.errors) - 1
        suffix = f" (and {more} more invalid recipes or files)" if more else ""
        raise RecipeInputError(f"{first}{suffix}") from first
    for error in checked.errors:
        warnings.warn(str(error), RecipeWarning, stacklevel=2)
    if checked.table.empty:
        raise RecipeInputError(
            f"no valid recipe to predict ({len(checked.errors)} invalid recipes or files)"
        )
    return chosen.model.predict(checked.table, registry)


def _tidy_recipes(recipes: pd.DataFrame | Path | str | None) -> pd.DataFrame:
    if isinstance(recipes, pd.DataFrame):
        return recipes
    path = DEFAULT_RECIPES if recipes is None else Path(recipes)
    if not path.is_file():
        how = (
            f"build them with `snakemake --cores 2 {DEFAULT_RECIPES}`, or give a table "
            "(--recipes on the command line, recipes= in Python)"
            if recipes is None
            else "expected the .parquet that `nanoxtal recipes clean` writes"
        )
        raise FileNotFoundError(f"no tidy recipes at {path}: {how}")
    return pd.read_parquet(path)


def suggest(
    product: str,
    size_nm: float,
    shape: str | None = None,
    model: RecipeForest | Path | str | None = None,
    recipes: pd.DataFrame | Path | str | None = None,
    registry: Registry | Path | str | None = None,
    fix: Sequence[str] = (),
    candidates: int = 2000,
    top: int = 10,
    seed: int = 42,
) -> pd.DataFrame:
    """Recipes predicted to give ``product`` at ``size_nm`` (and ``shape``), best first.

    The search redraws amounts, temperatures and times of the product's known recipes within
    the ranges the data covers (``design.suggest``).

    Args:
        product: Product formula as in the data, e.g. ``PbSe``.
        size_nm: Target mean size (nm).
        shape: Target shape class name (e.g. ``sphere``), or None for any.
        model: See ``recipe_model``; None: the workflow's published model.
        recipes: Tidy recipes (a DataFrame or the ``.parquet`` of ``nanoxtal recipes clean``);
            None: ``results/recipes/recipes.parquet``.
        registry: Chemical registry, its YAML file, or None for the package's.
        fix: Reagents every suggestion uses.
        candidates: Candidate recipes drawn.
        top: Suggestions returned.
        seed: Seed of the search.

    Returns:
        ``top`` rows: ``rank``, ``product``, ``score`` (lower is better: relative size miss +
        relative uncertainty + (1 - probability of the shape)), the predictions, the recipe
        (lists ';'-separated, amounts in mmol, temperatures in °C, time in min) and the data
        recipe it was derived from (``template_id``, ``template_doi``).

    Raises:
        ModelError: No model (see ``recipe_model``).
        FileNotFoundError: No tidy recipes (the message says how to build them).
        ValueError: No recipe of ``product`` using every reagent of ``fix``, an unknown
            shape, or a size that is not positive.
    """
    if not size_nm > 0:
        raise ValueError(f"target size must be > 0 nm, not {size_nm}")
    chosen = recipe_model(model)
    table = _tidy_recipes(recipes)
    required = [fix] if isinstance(fix, str) else list(fix)
    return design.suggest(
        chosen.model,
        table,
        _registry(registry),
        product,
        size_nm,
        shape,
        required,
        candidates,
        top,
        seed,
    )
