"""Use a trained recipe model: validate new recipes, predict them, and suggest recipes for a target.

The model is a pair of random forests (size, shape) on the ``Featurizer`` columns, trained on
every tidy recipe up to the evaluated size limit; the spread of the size forest's trees is the
size uncertainty (a quantity the trees disagree on is one the data does not pin down).

Inverse design (``suggest``) searches recipes of the requested product: it starts from that
product's recipes in the data, redraws amounts (log-uniformly within each reagent's range for
that product), temperatures and times (within the product's ranges), predicts every candidate
and ranks them by the distance of the predicted size from the target, its uncertainty and the
probability of the requested shape. It never leaves the ranges the data covers.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from nanoxtal.recipes.chemicals import ChemicalError, Registry, product_formula
from nanoxtal.recipes.clean import (
    ROLES,
    TEMPERATURE_RANGE_C,
    TIME_RANGE_MIN,
    normalise_name,
)
from nanoxtal.recipes.evaluate import baseline, size_spread
from nanoxtal.recipes.featurize import Featurizer, featurize_evaluated

LIST_SEPARATOR = ";"
REQUIRED_FIELDS = ("product", "reaction_temperature_c", "time_min", "reagents", "amounts_mmol")
MODEL_FORMAT = 2  # 2: log-size forests (TransformedTargetRegressor)
FORESTS = ("random_forest", "extra_trees")


class RecipeInputError(ValueError):
    """A recipe to predict is invalid; the message names the recipe, the field and the problem."""


def read_recipes(path: Path | str) -> list[dict[str, Any]]:
    """Recipes from a CSV (one row per recipe, lists separated by ';') or YAML (a list).

    Raises:
        RecipeInputError: The file cannot be read or holds no recipes.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            records = yaml.safe_load(path.read_text())
        else:
            records = pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict("records")
    except (OSError, yaml.YAMLError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise RecipeInputError(f"{path}: cannot read recipes: {error}") from error
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise RecipeInputError(f"{path}: no recipes found (expected a table or a YAML list)")
    return records


def _list(value: object) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [part.strip() for part in str(value).split(LIST_SEPARATOR) if part.strip()]


def _field_error(label: str, field: str, problem: str) -> RecipeInputError:
    return RecipeInputError(f"{label}, field {field!r}: {problem}")


def _number(record: Mapping, field: str, label: str, required: bool) -> float:
    value = record.get(field)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        if required:
            raise _field_error(label, field, "missing")
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _field_error(label, field, f"not a number: {value!r}") from None


def validate_recipe(record: Mapping, label: str, registry: Registry) -> dict[str, Any]:
    """A recipe as a tidy row, after checking every field.

    Args:
        record: Fields of ``REQUIRED_FIELDS``, optionally ``recipe_id``, ``phase``,
            ``injection_temperature_c``, ``heating_rate_c_per_min`` and ``roles`` (else each
            reagent's registry role).
        label: How messages name the recipe (e.g. ``"recipes.csv row 3"``).
        registry: Chemical registry.

    Raises:
        RecipeInputError: Unknown chemical or product, negative or missing amount, temperature
            or time outside what a colloidal synthesis can be, mismatched lists.
    """
    product = str(record.get("product") or "").strip()
    if not product:
        raise _field_error(label, "product", "missing")
    try:
        product_formula(product)
    except ChemicalError as error:
        raise _field_error(label, "product", str(error)) from None
    temperatures = {}
    for field, required in (
        ("reaction_temperature_c", True),
        ("injection_temperature_c", False),
    ):
        value = _number(record, field, label, required)
        low, high = TEMPERATURE_RANGE_C
        if not np.isnan(value) and not low <= value <= high:
            raise _field_error(label, field, f"{value} °C is outside {low}-{high} °C")
        temperatures[field] = value
    if np.isnan(temperatures["injection_temperature_c"]):
        # Heat-up syntheses: the sheet records the reaction temperature as both.
        temperatures["injection_temperature_c"] = temperatures["reaction_temperature_c"]
    time = _number(record, "time_min", label, True)
    if not TIME_RANGE_MIN[0] < time <= TIME_RANGE_MIN[1]:
        raise _field_error(label, "time_min", f"{time} min is outside (0, {TIME_RANGE_MIN[1]}]")
    heating = _number(record, "heating_rate_c_per_min", label, False)
    if heating < 0:
        raise _field_error(label, "heating_rate_c_per_min", f"negative rate {heating}")
    names = [normalise_name(n) for n in _list(record.get("reagents"))]
    if not names:
        raise _field_error(label, "reagents", "no reagents")
    amounts = []
    for name, value in zip(names, _list(record.get("amounts_mmol")), strict=False):
        try:
            amount = float(value)
        except (TypeError, ValueError):
            raise _field_error(
                label, "amounts_mmol", f"{value!r} for {name!r} is not a number"
            ) from None
        if not np.isfinite(amount) or amount < 0:
            raise _field_error(label, "amounts_mmol", f"amount {amount} mmol of {name!r} < 0")
        amounts.append(amount)
    if len(amounts) != len(names):
        raise _field_error(
            label, "amounts_mmol", f"{len(amounts)} amounts for {len(names)} reagents"
        )
    unknown = [name for name in names if registry.resolve(name) is None]
    if unknown:
        raise _field_error(
            label,
            "reagents",
            f"unknown chemical(s) {unknown}: use a name or abbreviation of the registry "
            "(nanoxtal recipes chemicals lists them) or add it there",
        )
    roles = [normalise_name(r) for r in _list(record.get("roles"))] or [
        registry.role_hint(name) for name in names
    ]
    bad = [r for r in roles if r not in ROLES]
    if len(roles) != len(names) or bad:
        raise _field_error(label, "roles", f"expected one of {ROLES} per reagent, got {roles}")
    phase = _number(record, "phase", label, False)
    return {
        "recipe_id": record.get("recipe_id", label),
        "product": product,
        "phase": 0 if np.isnan(phase) else int(phase),
        **temperatures,
        "heating_rate_c_per_min": heating,
        "time_min": time,
        "reagents": names,
        "amounts_mmol": amounts,
        "roles": roles,
    }


@dataclass
class RecipeForest:
    """Size and shape forests with the featurizer they were trained with.

    Attributes:
        vocabulary: Reagents with their own amount column (``Featurizer``).
        size: Fitted size forest on log size (``evaluate.baseline``).
        shape: Fitted shape forest.
        shape_names: Shape class names, by class index.
        recipes: Recipes trained on.
        max_size_nm: Size limit of the training recipes.
    """

    vocabulary: list[str]
    size: Any
    shape: Any
    shape_names: list[str]
    recipes: int
    max_size_nm: float

    @classmethod
    def fit(
        cls,
        table: pd.DataFrame,
        registry: Registry,
        shape_names: Sequence[str],
        vocabulary: int = 60,
        trees: int = 300,
        seed: int = 42,
        threads: int = 1,
        max_size_nm: float = 20.0,
        model: str = "extra_trees",
    ) -> RecipeForest:
        """Train on every recipe up to ``max_size_nm``.

        Args:
            table: Tidy recipes (``clean_recipes``).
            registry: Chemical registry.
            shape_names: Shape class names, by class index.
            vocabulary: Most used reagents given their own amount column.
            trees: Trees per forest.
            seed: Random state.
            threads: Worker threads.
            max_size_nm: Recipes above this size are left out (the reference's 20 nm).
            model: ``random_forest`` or ``extra_trees`` (forests: the trees' spread is the
                size uncertainty).
        """
        if model not in FORESTS:
            raise ValueError(f"recipe model must be one of {FORESTS}, not {model!r}")
        table, featurizer, features = featurize_evaluated(table, registry, max_size_nm, vocabulary)
        x = features.to_numpy(dtype=float)
        size = baseline(model, "size", seed, threads, trees)
        shape = baseline(model, "shape", seed, threads, trees)
        size.fit(x, table["size_nm"].to_numpy(dtype=float))
        shape.fit(x, table["shape_class"].to_numpy())
        return cls(featurizer.vocabulary, size, shape, list(shape_names), len(table), max_size_nm)

    def save(self, path: Path | str) -> None:
        """Pickle the model (trusted use only: pickles can run code when loaded)."""
        from nanoxtal.files import atomic_write

        with atomic_write(path) as partial:
            partial.write_bytes(pickle.dumps({"format": MODEL_FORMAT, "model": self}))

    @classmethod
    def load(cls, path: Path | str) -> RecipeForest:
        """Load a model written by ``save``."""
        content = pickle.loads(Path(path).read_bytes())
        if not isinstance(content, dict) or content.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} is not a nanoxtal recipe model (format {MODEL_FORMAT})")
        return content["model"]

    def predict(self, table: pd.DataFrame, registry: Registry) -> pd.DataFrame:
        """Size (nm) with the trees' spread and shape probabilities of tidy recipes."""
        x = Featurizer(registry, self.vocabulary).transform(table).to_numpy(dtype=float)
        probabilities = self.shape.predict_proba(x)
        names = [self.shape_names[int(c)] for c in self.shape.classes_]
        result = pd.DataFrame(
            {
                "recipe_id": table["recipe_id"].to_numpy(),
                "product": table["product"].to_numpy(),
                "predicted_size_nm": self.size.predict(x),
                "predicted_size_std_nm": size_spread(self.size, x),
                "predicted_shape": [names[i] for i in probabilities.argmax(axis=1)],
                "shape_probability": probabilities.max(axis=1),
            }
        )
        shapes = pd.DataFrame(probabilities, columns=[f"p_{name}" for name in names])
        return pd.concat([result, shapes], axis=1)


def suggest(
    model: RecipeForest,
    recipes: pd.DataFrame,
    registry: Registry,
    product: str,
    size_nm: float,
    shape: str | None = None,
    required: Sequence[str] = (),
    candidates: int = 2000,
    top: int = 10,
    seed: int = 42,
) -> pd.DataFrame:
    """Candidate recipes predicted to give ``product`` at ``size_nm`` (and ``shape``).

    Args:
        model: Trained model.
        recipes: Tidy recipes of the data (the search starts from those of ``product``).
        registry: Chemical registry.
        product: Product formula as in the data (e.g. ``PbSe``).
        size_nm: Target mean size.
        shape: Target shape class name, or ``None`` for any.
        required: Reagents every suggestion must use (templates lacking one are skipped).
        candidates: Candidates drawn.
        top: Suggestions returned.
        seed: Seed of the search.

    Returns:
        The ``top`` candidates, best first: ``score`` (lower is better: relative size miss +
        relative uncertainty + (1 - probability of the shape)), predictions, the recipe and the
        data recipe it was derived from (``template_id``, ``template_doi``).

    Raises:
        ValueError: No recipe of ``product`` (with the required reagents), or unknown shape.
    """
    if shape is not None and shape not in model.shape_names:
        raise ValueError(f"unknown shape {shape!r}; known: {model.shape_names}")
    own = recipes[recipes["product"] == product].reset_index(drop=True)
    keys = [_keys(names, registry) for names in own["reagents"]]
    wanted = {_key(normalise_name(n), registry) for n in required}
    usable = [i for i, k in enumerate(keys) if wanted <= set(k)]
    if not usable:
        raise ValueError(
            f"no recipe of {product!r} in the data uses all of {sorted(wanted)}: "
            "suggestions start from known recipes of the product"
        )
    rng = np.random.default_rng(seed)
    ranges = _amount_ranges(own, keys)
    rows = []
    for n in range(candidates):
        template = own.iloc[(i := int(rng.choice(usable)))]
        amounts = [
            _draw_log(rng, *ranges[key]) if ranges[key][0] > 0 else amount
            for key, amount in zip(keys[i], template["amounts_mmol"], strict=True)
        ]
        reaction = rng.uniform(*_span(own["reaction_temperature_c"]))
        hot_injection = template["injection_temperature_c"] != template["reaction_temperature_c"]
        rows.append(
            {
                **template.to_dict(),
                "recipe_id": f"candidate{n}",
                "amounts_mmol": amounts,
                "reaction_temperature_c": reaction,
                "injection_temperature_c": (
                    rng.uniform(*_span(own["injection_temperature_c"]))
                    if hot_injection
                    else reaction
                ),
                "time_min": _draw_log(rng, *_span(own["time_min"])),
                "template_id": template["recipe_id"],
                "template_doi": template.get("doi"),
            }
        )
    drawn = pd.DataFrame(rows)
    predicted = model.predict(drawn, registry)
    shape_probability = (
        predicted[f"p_{shape}"] if shape is not None else predicted["shape_probability"]
    ).to_numpy()
    score = (
        np.abs(predicted["predicted_size_nm"].to_numpy() - size_nm) / size_nm
        + predicted["predicted_size_std_nm"].to_numpy() / size_nm
        + (1.0 - shape_probability)
    )
    result = pd.DataFrame(
        {
            "score": score,
            "predicted_size_nm": predicted["predicted_size_nm"],
            "predicted_size_std_nm": predicted["predicted_size_std_nm"],
            "predicted_shape": predicted["predicted_shape"],
            "target_shape_probability": shape_probability,
            "reagents": [LIST_SEPARATOR.join(r) for r in drawn["reagents"]],
            "amounts_mmol": [
                LIST_SEPARATOR.join(f"{a:.4g}" for a in amounts)
                for amounts in drawn["amounts_mmol"]
            ],
            "roles": [LIST_SEPARATOR.join(r) for r in drawn["roles"]],
            "injection_temperature_c": drawn["injection_temperature_c"].round(1),
            "reaction_temperature_c": drawn["reaction_temperature_c"].round(1),
            "time_min": drawn["time_min"].round(2),
            "template_id": drawn["template_id"],
            "template_doi": drawn["template_doi"],
        }
    )
    best = result.sort_values("score", ignore_index=True).head(top)
    best.insert(0, "rank", np.arange(1, len(best) + 1))
    best.insert(1, "product", product)
    return best


def _key(name: str, registry: Registry) -> str:
    chemical = registry.resolve(name)
    return chemical.key if chemical is not None else name


def _keys(names: Sequence[str], registry: Registry) -> list[str]:
    return [_key(n, registry) for n in names]


def _amount_ranges(
    recipes: pd.DataFrame, keys: Sequence[Sequence[str]]
) -> dict[str, tuple[float, float]]:
    """Smallest and largest positive amount (mmol) of each reagent in ``recipes``."""
    seen: dict[str, list[float]] = {}
    for names, amounts in zip(keys, recipes["amounts_mmol"], strict=True):
        for key, amount in zip(names, amounts, strict=True):
            if amount > 0:
                seen.setdefault(key, []).append(float(amount))
    return {
        key: (min(seen.get(key, [0.0])), max(seen.get(key, [0.0])))
        for names in keys
        for key in names
    }


def _span(values: pd.Series) -> tuple[float, float]:
    finite = values.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.min()), float(finite.max())


def _draw_log(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform in [low, high] (amounts and times span decades); uniform from zero."""
    if high <= low:
        return low
    if low <= 0:
        return float(rng.uniform(low, high))
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))
