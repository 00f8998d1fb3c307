from __future__ import annotations

import numpy as np
import pandas as pd

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.clean import clean_recipes, read_shape_classes, read_sheet
from nanoxtal.recipes.featurize import Featurizer
from nanoxtal.recipes.importance import (
    ROLE_GROUPS,
    chemical_groups,
    column_groups,
    permutation_importance,
    recipe_importance,
    role_ranking,
    write_importance_figures,
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


def test_recipe_importance_ranks_roles_and_chemicals(tmp_path, workbook):
    path, shapes = workbook
    recipes, _, _ = clean_recipes(
        read_sheet(path), read_shape_classes(shapes), Registry().role_hint
    )
    many = pd.concat([recipes] * 8, ignore_index=True)
    many["recipe_id"] = range(len(many))
    many["reaction_temperature_c"] = 100 + 5 * many.index
    many["size_nm"] = 2 + 0.2 * many.index  # size follows the temperature only
    report = recipe_importance(many, Registry(), k=2, repeats=1, trees=20)
    importances, summary = report.importances, report.summary
    roles = importances[importances["kind"] == "role"]
    chemicals = importances[importances["kind"] == "chemical"]
    assert set(roles["group"]) <= set(ROLE_GROUPS) and len(chemicals) > 0
    assert importances["size_mae_increase_nm"].is_monotonic_decreasing
    assert summary["recipes"] == 40
    assert summary["protocol"] == "random 2-fold, permutation repeats 1"
    assert summary["size_ranking"][0] == "process"
    assert sorted(summary["shape_ranking"]) == sorted(roles["group"])
    assert summary["top_chemicals_size"] == chemicals["group"].head(10).tolist()
    written = write_importance_figures(importances, tmp_path / "importance.png")
    assert written == [tmp_path / "importance.png", tmp_path / "importance_shape.png"]
    assert all(p.is_file() for p in written)
