"""Which parts of a recipe decide size and shape: grouped permutation importance.

Breiman's permutation importance (Mach. Learn. 45, 5 (2001)), on held-out folds: a model is fitted
on each training part, then the columns of one group are shuffled together across the test rows
(one permutation for the whole group, so the group's internal correlations survive and only its
link to the outcome breaks) and the rise in size MAE and drop in shape accuracy is recorded.
Groups are roles (product composition, cation and anion precursors, ligands, solvents, reducing
agents, other, process conditions) and single chemicals (the amount column of each frequent
reagent). The reference ordering to compare with (Gu et al., arXiv 2412.10838): composition >
precursors and ligands > solvent.

``recipe_importance`` scores both groupings of a tidy table (``nanoxtal recipes importance``);
``write_importance_figures`` draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nanoxtal.plots import importance_figure
from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.clean import ROLES
from nanoxtal.recipes.evaluate import baseline, folds
from nanoxtal.recipes.featurize import PROCESS_FEATURES, featurize_evaluated

ROLE_GROUPS = ("composition", *ROLES, "process")
CHEMICAL_PREFIX = "mmol_"
# The reference's ordering of the roles (Gu et al.), reported beside ours.
REFERENCE_RANKING = ("composition", "precursor/ligand", "solvent")
# Chemicals shown in the bar charts and named in the summary, most important first.
TOP_CHEMICALS_FIGURE = 15
TOP_CHEMICALS_SUMMARY = 10


def column_groups(columns: Sequence[str], registry: Registry) -> dict[str, list[int]]:
    """Feature columns (``Featurizer.columns``) by role group.

    A frequent reagent's amount column belongs to the role its registry entry hints at; a ratio
    between two roles belongs to its numerator's role.
    """
    groups: dict[str, list[int]] = {name: [] for name in ROLE_GROUPS}
    for i, column in enumerate(columns):
        groups[_group_of(column, registry)].append(i)
    return {name: members for name, members in groups.items() if members}


def _group_of(column: str, registry: Registry) -> str:
    if column in PROCESS_FEATURES:
        return "process"
    if column.startswith("product_"):
        return "composition"
    if column.startswith(CHEMICAL_PREFIX):
        hint = registry.role_hint(column.removeprefix(CHEMICAL_PREFIX))
        return hint if hint in ROLES else "other"
    if column.startswith("ratio_"):
        column = column.removeprefix("ratio_")
    return next((role for role in ROLES if column.startswith(role)), "other")


def chemical_groups(columns: Sequence[str]) -> dict[str, list[int]]:
    """One group per frequent reagent's amount column."""
    return {
        column.removeprefix(CHEMICAL_PREFIX): [i]
        for i, column in enumerate(columns)
        if column.startswith(CHEMICAL_PREFIX)
    }


def permutation_importance(
    table: pd.DataFrame,
    features: pd.DataFrame,
    groups: dict[str, list[int]],
    model: str = "random_forest",
    k: int = 5,
    repeats: int = 3,
    seed: int = 42,
    threads: int = 1,
    trees: int = 300,
) -> pd.DataFrame:
    """Grouped permutation importance over the ``random`` folds.

    Args:
        table: Tidy recipes (``size_nm``, ``shape_class``, ``recipe_id`` used).
        features: Their feature matrix (same rows).
        groups: Group name → column positions (``column_groups``, ``chemical_groups``).
        model: A name of ``evaluate.BASELINES``.
        k: Folds.
        repeats: Permutations per group and fold.
        seed: Seed of folds, models and permutations.
        threads: Worker threads of the models.
        trees: Trees / boosting iterations.

    Returns:
        One row per group: ``group``, ``columns``, ``size_mae_increase_nm`` (mean over folds and
        repeats) with its standard deviation over folds (``_std``), ``shape_accuracy_drop``
        likewise; most important for size first.
    """
    x = features.to_numpy(dtype=float)
    size = table["size_nm"].to_numpy(dtype=float)
    shape = table["shape_class"].to_numpy()
    rng = np.random.default_rng(seed)
    rises: dict[str, list[float]] = {name: [] for name in groups}
    drops: dict[str, list[float]] = {name: [] for name in groups}
    for fold in folds(table, "random", k, seed):
        train, test = x[fold.train], x[fold.test]
        regressor = baseline(model, "size", seed, threads, trees).fit(train, size[fold.train])
        classifier = baseline(model, "shape", seed, threads, trees).fit(train, shape[fold.train])
        truth_size, truth_shape = size[fold.test], shape[fold.test]
        mae = np.mean(np.abs(regressor.predict(test) - truth_size))
        accuracy = np.mean(classifier.predict(test) == truth_shape)
        for name, columns in groups.items():
            rise, drop = [], []
            for _ in range(repeats):
                shuffled = test.copy()
                shuffled[:, columns] = test[rng.permutation(len(test))][:, columns]
                rise.append(np.mean(np.abs(regressor.predict(shuffled) - truth_size)) - mae)
                drop.append(accuracy - np.mean(classifier.predict(shuffled) == truth_shape))
            rises[name].append(float(np.mean(rise)))
            drops[name].append(float(np.mean(drop)))
    result = pd.DataFrame(
        {
            "group": list(groups),
            "columns": [len(groups[name]) for name in groups],
            "size_mae_increase_nm": [np.mean(rises[name]) for name in groups],
            "size_mae_increase_nm_std": [np.std(rises[name]) for name in groups],
            "shape_accuracy_drop": [np.mean(drops[name]) for name in groups],
            "shape_accuracy_drop_std": [np.std(drops[name]) for name in groups],
        }
    )
    return result.sort_values("size_mae_increase_nm", ascending=False, ignore_index=True)


def role_ranking(importance: pd.DataFrame, metric: str = "size_mae_increase_nm") -> list[str]:
    """Role groups from most to least important by ``metric``."""
    roles = importance[importance["group"].isin(ROLE_GROUPS)]
    return roles.sort_values(metric, ascending=False)["group"].tolist()


@dataclass(frozen=True)
class ImportanceReport:
    """Importance of recipe parts by role and by chemical (``recipe_importance``).

    Attributes:
        importances: ``permutation_importance``'s table over the role and the chemical groups
            together, with ``kind`` (``role`` or ``chemical``); most important for size first.
        summary: ``recipes`` scored, ``protocol``, ``seed``, the role rankings by size
            (``size_ranking``) and shape (``shape_ranking``), the ``reference_ranking`` and the
            ``top_chemicals_size``.
    """

    importances: pd.DataFrame
    summary: dict[str, object]


def recipe_importance(
    table: pd.DataFrame,
    registry: Registry,
    model: str = "extra_trees",
    k: int = 5,
    repeats: int = 3,
    seed: int = 42,
    threads: int = 1,
    trees: int = 300,
    max_size_nm: float = 20.0,
    vocabulary: int = 60,
) -> ImportanceReport:
    """Grouped permutation importance of the roles and the frequent chemicals of recipes.

    Args:
        table: Tidy recipes (``clean_recipes``); those above ``max_size_nm`` are left out.
        registry: Chemical registry.
        model: A name of ``evaluate.BASELINES``.
        k: Folds of the ``random`` protocol.
        repeats: Permutations per group and fold.
        seed: Seed of folds, models and permutations.
        threads: Worker threads of the models.
        trees: Trees / boosting iterations.
        max_size_nm: Largest size (nm) evaluated, as the reference's 20 nm.
        vocabulary: Most used reagents given their own amount column (the chemical groups).

    Returns:
        The importances and their summary.
    """
    table, featurizer, features = featurize_evaluated(table, registry, max_size_nm, vocabulary)
    roles = column_groups(featurizer.columns, registry)
    # One set of forests per fold scores both groupings (no chemical is named like a role).
    result = permutation_importance(
        table,
        features,
        roles | chemical_groups(featurizer.columns),
        model=model,
        k=k,
        repeats=repeats,
        seed=seed,
        threads=threads,
        trees=trees,
    )
    result["kind"] = np.where(result["group"].isin(list(roles)), "role", "chemical")
    by_role = result[result["kind"] == "role"]
    chemicals = result[result["kind"] == "chemical"]
    summary = {
        "recipes": len(table),
        "protocol": f"random {k}-fold, permutation repeats {repeats}",
        "seed": seed,
        "size_ranking": role_ranking(by_role, "size_mae_increase_nm"),
        "shape_ranking": role_ranking(by_role, "shape_accuracy_drop"),
        "reference_ranking": list(REFERENCE_RANKING),
        "top_chemicals_size": chemicals["group"].head(TOP_CHEMICALS_SUMMARY).tolist(),
    }
    return ImportanceReport(result, summary)


def write_importance_figures(importances: pd.DataFrame, path: Path | str) -> list[Path]:
    """Bar charts of ``recipe_importance``'s table: by role and by chemical (top 15).

    Args:
        importances: ``ImportanceReport.importances``.
        path: The size chart (e.g. ``importance.png``); the shape chart goes beside it with
            ``_shape`` added to the name (``importance_shape.png``).

    Returns:
        The size and the shape chart.
    """
    path = Path(path)
    roles = importances[importances["kind"] == "role"]
    chemicals = importances[importances["kind"] == "chemical"]
    written = []
    for metric, label, target in (
        ("size_mae_increase_nm", "size MAE increase (nm)", path),
        (
            "shape_accuracy_drop",
            "shape accuracy drop",
            path.with_name(f"{path.stem}_shape{path.suffix}"),
        ),
    ):
        top = chemicals.sort_values(metric, ascending=False).head(TOP_CHEMICALS_FIGURE)
        panels = [
            ("by role", roles["group"].tolist(), roles[metric], roles[f"{metric}_std"]),
            (
                f"by chemical (top {TOP_CHEMICALS_FIGURE})",
                top["group"].tolist(),
                top[metric],
                top[f"{metric}_std"],
            ),
        ]
        written.append(importance_figure(panels, label, target))
    return written
