from __future__ import annotations

import numpy as np
import pandas as pd

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.featurize import Featurizer
from nanoxtal.recipes.importance import (
    chemical_groups,
    column_groups,
    permutation_importance,
    role_ranking,
)


def test_columns_are_grouped_by_role_and_chemical():
    registry = Registry()
    columns = Featurizer(registry, ["OLA", "ODE", "PbO"]).columns
    groups = column_groups(columns, registry)
    named = {name: {columns[i] for i in members} for name, members in groups.items()}
    assert "reaction_temperature_c" in named["process"]
    assert "product_mean_electronegativity" in named["composition"]
    assert {"mmol_OLA", "ligand_log_mmol", "ratio_ligand_to_cation_precursor"} <= named["ligand"]
    assert {"mmol_ODE"} <= named["solvent"] and {"mmol_PbO"} <= named["cation_precursor"]
    # Every column in exactly one group.
    assert sorted(i for members in groups.values() for i in members) == list(range(len(columns)))
    assert chemical_groups(columns) == {
        name: [columns.index(f"mmol_{name}")] for name in ("OLA", "ODE", "PbO")
    }


def test_permutation_importance_finds_the_informative_group():
    rng = np.random.default_rng(0)
    n = 120
    features = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    table = pd.DataFrame(
        {
            "recipe_id": np.arange(n),
            "size_nm": 10 + 3 * features["a"] + rng.normal(scale=0.1, size=n),
            "shape_class": (features["c"] > 0).astype(int),
        }
    )
    groups = {"composition": [0], "process": [1], "ligand": [2], "solvent": [3]}
    result = permutation_importance(table, features, groups, k=3, repeats=2, trees=40)
    by_group = result.set_index("group")
    assert result["group"].iloc[0] == "composition"  # sorted by size importance
    assert by_group.loc["composition", "size_mae_increase_nm"] > 1.0
    assert abs(by_group.loc["solvent", "size_mae_increase_nm"]) < 0.3
    assert role_ranking(result, "shape_accuracy_drop")[0] == "ligand"
    assert by_group.loc["ligand", "shape_accuracy_drop"] > 0.2
