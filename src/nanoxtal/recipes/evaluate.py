"""Cross-validated size and shape models on fixed, seeded splits.

Protocols (folds are recorded with the predictions):
- ``random``: k-fold over recipes, the reference's protocol (Gu et al.: 5-fold, sizes 0-20 nm).
- ``doi``: k-fold grouped by DOI, so no paper has recipes on both sides: the honest measure for a
  recipe from a new lab.
- ``product``: leave-one-product-out for chosen products (never seen in training).

``leaky_reference`` reproduces, as a diagnostic only, a protocol in which reaction-intermediate
copies are made before the split, so copies of a test recipe sit in the training part.

``evaluate_models`` runs every model and protocol that ``nanoxtal recipes evaluate`` reports
(``results/recipes/metrics.json``); ``write_evaluation_figures`` draws its parity plots and
shape confusion matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.model_selection import GroupKFold, KFold

from nanoxtal.environment import describe
from nanoxtal.metrics import accuracy, confusion, macro_f1, regression_metrics
from nanoxtal.plots import confusion_figure, parity_figure
from nanoxtal.recipes import intermediates
from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.featurize import featurize_evaluated

if TYPE_CHECKING:
    from nanoxtal.recipes.ensemble import EnsemblePlan

PROTOCOLS = ("random", "doi", "product")
BASELINES = ("random_forest", "extra_trees", "gradient_boosting")
AUGMENT = ("none", "on", "compare")
TRANSFORMER = "transformer"


@dataclass(frozen=True)
class Fold:
    """One train/test split of a protocol (row positions into the table)."""

    protocol: str
    name: str
    train: np.ndarray
    test: np.ndarray


def folds(
    table: pd.DataFrame,
    protocol: str,
    k: int = 5,
    seed: int = 42,
    products: Sequence[str] = (),
) -> Iterator[Fold]:
    """The folds of a protocol over a tidy table.

    Args:
        table: Tidy recipes (``recipe_id``, ``doi``, ``product`` columns used).
        protocol: ``random``, ``doi`` or ``product``.
        k: Folds for ``random`` and ``doi``.
        seed: Seed of the ``random`` shuffle and of the DOI group order.
        products: Products held out one at a time (``product`` protocol).
    """
    rows = np.arange(len(table))
    if protocol == "random":
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        for i, (train, test) in enumerate(splitter.split(rows)):
            yield Fold(protocol, f"fold{i}", train, test)
    elif protocol == "doi":
        # GroupKFold balances sizes deterministically; shuffling the group labels first makes
        # the assignment depend on the seed rather than on the DOIs' spelling.
        dois = table["doi"].to_numpy()
        codes = {
            d: i for i, d in enumerate(np.random.default_rng(seed).permutation(np.unique(dois)))
        }
        groups = np.array([codes[d] for d in dois])
        for i, (train, test) in enumerate(GroupKFold(n_splits=k).split(rows, groups=groups)):
            yield Fold(protocol, f"fold{i}", train, test)
    elif protocol == "product":
        for product in products:
            test = np.flatnonzero(table["product"].to_numpy() == product)
            if len(test) == 0:
                raise ValueError(f"product {product!r} has no recipes in the evaluated set")
            yield Fold(protocol, product, np.setdiff1d(rows, test), test)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def classification_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of shape classes, with the number of recipes scored."""
    return {
        "accuracy": accuracy(truth, predicted),
        "macro_f1": macro_f1(truth, predicted),
        "count": len(truth),
    }


def baseline(name: str, task: str, seed: int, threads: int = 1, trees: int = 300):
    """A scikit-learn baseline for ``task`` (``size`` or ``shape``); all take NaN inputs.

    Size models learn log size and predict its back-transform (the geometric mean of the trees
    for forests): sizes span 1-20 nm and their errors grow with size, so a log target keeps the
    large sizes from dominating the fit. On development folds (inner 5-fold inside the first
    outer training part, never an evaluation fold) it lowered the size MAE of the random forest
    from 2.12 to 2.10 nm and of extremely randomised trees from 2.03 to 2.00 nm.

    Args:
        name: ``random_forest``, ``extra_trees`` or ``gradient_boosting``.
        task: ``size`` (regression) or ``shape`` (classification).
        seed: Random state.
        threads: Worker threads (forests).
        trees: Trees of the forest, boosting iterations.
    """
    if name == "random_forest":
        regressor, classifier = RandomForestRegressor, RandomForestClassifier
        options = {"n_estimators": trees, "n_jobs": threads, "random_state": seed}
    elif name == "extra_trees":
        regressor, classifier = ExtraTreesRegressor, ExtraTreesClassifier
        options = {"n_estimators": trees, "n_jobs": threads, "random_state": seed}
    elif name == "gradient_boosting":
        regressor, classifier = HistGradientBoostingRegressor, HistGradientBoostingClassifier
        options = {"max_iter": trees, "learning_rate": 0.05, "random_state": seed}
    else:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    if task == "shape":
        return classifier(**options)
    return TransformedTargetRegressor(regressor(**options), func=np.log, inverse_func=np.exp)


def size_spread(regressor, x: np.ndarray) -> np.ndarray:
    """Spread (standard deviation, nm) of a fitted size forest's trees; NaN for boosting.

    The forests of ``baseline`` learn log size, so each tree's answer is taken back to nm
    before the spread is computed.
    """
    trees = getattr(regressor.regressor_, "estimators_", None)
    if trees is None:
        return np.full(len(x), np.nan)
    return np.exp(np.stack([tree.predict(x) for tree in trees])).std(axis=0)


def cross_validate(
    table: pd.DataFrame,
    features: pd.DataFrame,
    protocol: str,
    model: str,
    k: int = 5,
    seed: int = 42,
    products: Sequence[str] = (),
    threads: int = 1,
    trees: int = 300,
    augmented: pd.DataFrame | None = None,
    augmented_features: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Out-of-fold size and shape predictions of a baseline under one protocol.

    Args:
        table: Tidy recipes.
        features: Their feature matrix (same row order).
        protocol: See ``folds``.
        model: A name of ``BASELINES``.
        k: Folds.
        seed: Seed of folds and models.
        products: Held-out products (``product`` protocol).
        threads: Worker threads of the models.
        trees: Trees / boosting iterations of the models.
        augmented: Augmented recipes (``intermediates.augment``, with ``source_id``); each is
            added to the training part of the folds that train on its source, never tested.
        augmented_features: Their feature matrix (same row order).

    Returns:
        One row per test prediction: ``recipe_id``, ``fold``, ``size_nm``,
        ``predicted_size_nm``, ``predicted_size_std_nm`` (``size_spread``), ``shape_class``,
        ``predicted_shape_class``.
    """
    x = features.to_numpy(dtype=float)
    size = table["size_nm"].to_numpy(dtype=float)
    shape = table["shape_class"].to_numpy()
    ids = table["recipe_id"].to_numpy()
    parts = []
    for fold in folds(table, protocol, k, seed, products):
        train, train_size, train_shape = x[fold.train], size[fold.train], shape[fold.train]
        if augmented is not None:
            extra = augmented["source_id"].isin(ids[fold.train]).to_numpy()
            train = np.concatenate([train, augmented_features.to_numpy(dtype=float)[extra]])
            train_size = np.concatenate([train_size, augmented["size_nm"].to_numpy()[extra]])
            train_shape = np.concatenate([train_shape, augmented["shape_class"].to_numpy()[extra]])
        # Columns empty in the training part carry nothing (and break histogram binning).
        usable = ~np.all(np.isnan(train), axis=0)
        train, test = train[:, usable], x[fold.test][:, usable]
        regressor = baseline(model, "size", seed, threads, trees).fit(train, train_size)
        classifier = baseline(model, "shape", seed, threads, trees).fit(train, train_shape)
        parts.append(
            pd.DataFrame(
                {
                    "recipe_id": ids[fold.test],
                    "fold": fold.name,
                    "size_nm": size[fold.test],
                    "predicted_size_nm": regressor.predict(test),
                    "predicted_size_std_nm": size_spread(regressor, test),
                    "shape_class": shape[fold.test],
                    "predicted_shape_class": classifier.predict(test),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def leaky_reference(
    table: pd.DataFrame,
    features: pd.DataFrame,
    augmented: pd.DataFrame,
    augmented_features: pd.DataFrame,
    model: str,
    k: int = 5,
    seed: int = 42,
    threads: int = 1,
    trees: int = 300,
) -> pd.DataFrame:
    """Random k-fold over recipes *and* their augmented copies pooled: a leaky diagnostic.

    If reaction-intermediate rows are made before the data are split, copies of a test recipe
    (same labels, nearly the same inputs) are trained on, and the model recalls rather than
    predicts. This reproduces that protocol so its numbers can be set beside the reference's;
    it is never a measure of our models (``cross_validate`` keeps copies with their source).

    Returns:
        ``cross_validate``'s columns plus ``original`` (False for augmented rows).
    """
    pooled = pd.concat([table, augmented[table.columns]], ignore_index=True)
    pooled_features = pd.concat([features, augmented_features], ignore_index=True)
    result = cross_validate(
        pooled, pooled_features, "random", model, k, seed, threads=threads, trees=trees
    )
    result["original"] = ~result["recipe_id"].isin(augmented["recipe_id"])
    return result


def summarise(predictions: pd.DataFrame, by_fold: bool = False) -> dict[str, float]:
    """Size and shape metrics of out-of-fold predictions (optionally per fold)."""
    groups = predictions.groupby("fold") if by_fold else [("all", predictions)]
    result = {}
    for name, part in groups:
        prefix = "" if name == "all" else f"{name}/"
        for key, value in regression_metrics(
            part["size_nm"].to_numpy(), part["predicted_size_nm"].to_numpy()
        ).items():
            result[f"{prefix}size_{key}"] = value
        for key, value in classification_metrics(
            part["shape_class"].to_numpy(), part["predicted_shape_class"].to_numpy()
        ).items():
            result[f"{prefix}shape_{key}"] = value
        if "predicted_size_std_nm" in part and part["predicted_size_std_nm"].notna().any():
            result |= {
                f"{prefix}size_{key}": value for key, value in uncertainty_metrics(part).items()
            }
    return result


def uncertainty_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    """How well a predicted size spread (``predicted_size_std_nm``) covers the errors.

    Returns:
        Mean spread (nm), share of true sizes within ±2 spreads of the prediction (0.95 for a
        calibrated Gaussian), and the Spearman correlation between spread and absolute error.
    """
    std = predictions["predicted_size_std_nm"].to_numpy(dtype=float)
    error = np.abs(predictions["predicted_size_nm"] - predictions["size_nm"]).to_numpy()
    ranks = pd.DataFrame({"std": std, "error": error}).rank()
    return {
        "std_mean_nm": float(np.mean(std)),
        "within_2std": float(np.mean(error <= 2 * std)),
        "std_error_spearman": float(ranks["std"].corr(ranks["error"])),
    }


@dataclass(frozen=True)
class Evaluation:
    """Cross-validated scores of recipe models (``evaluate_models``).

    Attributes:
        metrics: Flat JSON-ready scores: the settings (``recipes``, ``max_size_nm``, ``folds``,
            ``seed``, ``features``, ``held_out_products``, ``environment``), the
            ``augmentation`` summary when intermediates are made, then
            ``<protocol>/<model>/<score>`` (per fold for ``product``) and, for forests trained
            with intermediates, ``leaky/<model>/{original,all}/<score>``.
        predictions: Out-of-fold predictions of every model and protocol (``cross_validate``'s
            columns after ``model`` and ``protocol``).
        augmented: The augmented recipes (``intermediates.augment``; none when ``augment`` is
            ``none``).
    """

    metrics: dict[str, object]
    predictions: pd.DataFrame
    augmented: pd.DataFrame


def evaluate_models(
    table: pd.DataFrame,
    registry: Registry,
    models: Sequence[str] = ("random_forest",),
    k: int = 5,
    seed: int = 42,
    products: Sequence[str] = (),
    augment: str = "compare",
    conversions: Sequence[float] = (1.0, 0.5),
    max_variants: int = 10,
    threads: int = 1,
    trees: int = 300,
    max_size_nm: float = 20.0,
    vocabulary: int = 60,
    plan: EnsemblePlan | None = None,
    work_dir: Path | str = Path("results/recipes/transformer"),
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Cross-validate size and shape models under every protocol, with and without intermediates.

    Args:
        table: Tidy recipes (``clean_recipes``); those above ``max_size_nm`` are left out.
        registry: Chemical registry.
        models: Names of ``BASELINES`` and/or ``transformer``.
        k: Folds of the ``random`` and ``doi`` protocols.
        seed: Seed of folds, models and augmentation.
        products: Products held out one at a time (``product`` protocol).
        augment: Reaction-intermediate augmentation of the training folds: ``none``, ``on``
            or ``compare`` (each model with and without, labelled ``<model>+intermediates``).
        conversions: Fractions (0-1) of the limiting reagent turned into the intermediate.
        max_variants: Augmented rows per recipe, at most.
        threads: Worker threads of the models.
        trees: Trees / boosting iterations of the baselines.
        max_size_nm: Largest size (nm) evaluated, as the reference's 20 nm.
        vocabulary: Most used reagents given their own amount column.
        plan: Transformer ensemble settings (``ensemble.EnsemblePlan``); needed for
            ``transformer``.
        work_dir: Folder of the transformer runs (``<model>/<protocol>/<fold>/member<m>``).
        progress: Called with one line per model and protocol scored (e.g. ``print``).

    Returns:
        Metrics, out-of-fold predictions and the augmented recipes.

    Raises:
        ValueError: Unknown augmentation, a transformer without a plan, or a held-out product
            without recipes.
    """
    if augment not in AUGMENT:
        raise ValueError(f"unknown augmentation {augment!r}; expected one of {AUGMENT}")
    if TRANSFORMER in models and plan is None:
        raise ValueError("evaluating the transformer needs its settings (plan)")
    report = progress if progress is not None else (lambda line: None)
    table, featurizer, features = featurize_evaluated(table, registry, max_size_nm, vocabulary)
    metrics: dict[str, object] = {
        "recipes": len(table),
        "max_size_nm": max_size_nm,
        "folds": k,
        "seed": seed,
        "features": len(featurizer.columns),
        "held_out_products": list(products),
        "environment": describe(),
    }
    # (label suffix, augmented rows, their features) per training-data variant compared.
    variants: list[tuple[str, pd.DataFrame | None, pd.DataFrame | None]] = []
    if augment in ("none", "compare"):
        variants.append(("", None, None))
    if augment in ("on", "compare"):
        augmented = intermediates.augment(table, registry, conversions, max_variants, seed)
        summary = intermediates.summary(table, augmented)
        metrics["augmentation"] = summary | {
            "conversions": list(conversions),
            "max_variants": max_variants,
        }
        report(
            f"intermediates: {len(augmented)} augmented rows from "
            f"{augmented['source_id'].nunique()} recipes "
            f"(expansion {summary['expansion_factor']:.2f}x)"
        )
        variants.append(("+intermediates", augmented, featurizer.transform(augmented)))
    else:
        augmented = table.iloc[:0].assign(source_id=[], reactions=[])  # none: an empty table
    predictions = []
    for model in models:
        for suffix, extra, extra_features in variants:
            label = f"{model}{suffix}"
            for protocol in PROTOCOLS:
                if model == TRANSFORMER:
                    from nanoxtal.recipes.ensemble import cross_validate_transformer

                    result = cross_validate_transformer(
                        table,
                        protocol,
                        Path(work_dir) / label,
                        plan,
                        k,
                        seed,
                        products,
                        registry,
                        extra,
                        threads,
                    )
                else:
                    result = cross_validate(
                        table,
                        features,
                        protocol,
                        model,
                        k,
                        seed,
                        products,
                        threads,
                        trees,
                        extra,
                        extra_features,
                    )
                result.insert(0, "model", label)
                result.insert(1, "protocol", protocol)
                predictions.append(result)
                scores = summarise(result, by_fold=protocol == "product")
                if protocol != "product":
                    scores |= summarise(result)
                metrics |= {f"{protocol}/{label}/{key}": value for key, value in scores.items()}
                report(
                    f"{label} {protocol}: "
                    + ", ".join(
                        f"{key} {value:.3f}"
                        for key, value in scores.items()
                        if key.endswith(("mae_nm", "accuracy"))
                    )
                )
            if extra is not None and model != TRANSFORMER:
                # The reference's figures are reproduced by this leaky protocol, not by ours.
                pooled = leaky_reference(
                    table, features, extra, extra_features, model, k, seed, threads, trees
                )
                for rows, scores in (
                    ("original", summarise(pooled[pooled["original"]])),
                    ("all", summarise(pooled)),
                ):
                    metrics |= {f"leaky/{model}/{rows}/{key}": v for key, v in scores.items()}
                report(
                    f"{model} leaky (augmented before the split, diagnostic): "
                    + ", ".join(
                        f"{key} {metrics[f'leaky/{model}/original/{key}']:.3f}"
                        for key in ("size_mae_nm", "shape_accuracy")
                    )
                )
    return Evaluation(metrics, pd.concat(predictions, ignore_index=True), augmented)


def write_evaluation_figures(
    predictions: pd.DataFrame, shape_names: Sequence[str], folder: Path | str
) -> list[Path]:
    """Parity plot of the sizes and shape confusion matrix of each model's k-fold protocols.

    Args:
        predictions: ``Evaluation.predictions`` (the ``product`` protocol is not drawn: one
            product per fold).
        shape_names: Shape class names, by class index.
        folder: Where ``parity_<model>_<protocol>.png`` and
            ``shape_confusion_<model>_<protocol>.png`` go.

    Returns:
        The figures written.
    """
    folder = Path(folder)
    written = []
    for (label, protocol), result in predictions.groupby(["model", "protocol"], sort=False):
        if protocol == "product":
            continue
        count = result["fold"].nunique()
        written.append(
            parity_figure(
                result["size_nm"],
                result["predicted_size_nm"],
                f"{label}, {protocol} {count}-fold",
                folder / f"parity_{label}_{protocol}.png",
            )
        )
        matrix = confusion(
            result["shape_class"].to_numpy(dtype=int),
            result["predicted_shape_class"].to_numpy(dtype=int),
            len(shape_names),
        )
        written.append(
            confusion_figure(
                matrix,
                shape_names,
                f"shape, {label}, {protocol} {count}-fold",
                folder / f"shape_confusion_{label}_{protocol}.png",
            )
        )
    return written
