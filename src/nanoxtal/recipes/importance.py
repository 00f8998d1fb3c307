"""Which parts of a recipe decide size and shape: grouped permutation importance.

Breiman's permutation importance (Mach. Learn. 45, 5 (2001)), on held-out folds: a model is fitted
on each training part, then the columns of one group are shuffled together across the test rows
(one permutation for the whole group, so the group's internal correlations survive and only its
link to the outcome breaks) and the rise in size MAE and drop in shape accuracy is recorded.
Groups are roles (product composition, cation and anion precursors, ligands, solvents, reducing
agents, other, process conditions) and single chemicals (the amount column of each frequent
reagent). The reference ordering to compare with (Gu et al., arXiv 2412.10838): composition >
precursors and ligands > solvent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.clean import ROLES
from nanoxtal.recipes.evaluate import baseline, folds
from nanoxtal.recipes.featurize import PROCESS_FEATURES

ROLE_GROUPS = ("composition", *ROLES, "process")
CHEMICAL_PREFIX = "mmol_"


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
