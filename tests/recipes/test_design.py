from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal.cli import main
from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.design import (
    RecipeForest,
    RecipeInputError,
    read_recipes,
    suggest,
    validate_recipe,
)

SHAPES = ["Irregular shape", "cube", "sphere"]
GOOD = {
    "product": "PbSe",
    "injection_temperature_c": 150,
    "reaction_temperature_c": 140,
    "time_min": 5,
    "reagents": "PbO; OA; ODE; Se; TOP",
    "amounts_mmol": "2; 6; 30; 2; 4",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def test_validate_fills_roles_from_the_registry(registry):
    row = validate_recipe(GOOD, "r1", registry)
    assert row["roles"] == ["cation_precursor", "ligand", "solvent", "anion_precursor", "ligand"]
    assert row["amounts_mmol"] == [2.0, 6.0, 30.0, 2.0, 4.0]
    heat_up = validate_recipe({**GOOD, "injection_temperature_c": ""}, "r2", registry)
    assert heat_up["injection_temperature_c"] == 140.0


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"reagents": "PbO; OA; ODE; Se; Unobtainium"}, "reagents", "unknown chemical"),
        ({"amounts_mmol": "2; -6; 30; 2; 4"}, "amounts_mmol", "< 0"),
        ({"amounts_mmol": "2; 6; 30"}, "amounts_mmol", "3 amounts for 5 reagents"),
        ({"reaction_temperature_c": 900}, "reaction_temperature_c", "outside"),
        ({"reaction_temperature_c": "hot"}, "reaction_temperature_c", "not a number"),
        ({"time_min": 0}, "time_min", "outside"),
        ({"product": "lead selenide"}, "product", "not a chemical formula"),
        ({"product": "Xq2"}, "product", "unknown"),  # pymatgen alone takes it as a dummy
        ({"roles": "ligand"}, "roles", "per reagent"),
    ],
)
def test_validate_names_the_recipe_and_field(registry, change, field, problem):
    with pytest.raises(RecipeInputError, match=f"row 7, field '{field}': .*{problem}"):
        validate_recipe({**GOOD, **change}, "row 7", registry)


def test_read_recipes_from_csv_and_yaml(tmp_path):
    csv = tmp_path / "r.csv"
    pd.DataFrame([GOOD, GOOD]).to_csv(csv, index=False)
    assert len(read_recipes(csv)) == 2
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("- product: PbSe\n  reagents: [PbO, OA]\n  amounts_mmol: [1, 3]\n")
    assert read_recipes(yaml_file)[0]["reagents"] == ["PbO", "OA"]
    with pytest.raises(RecipeInputError, match="no recipes"):
        (tmp_path / "empty.yaml").write_text("")
        read_recipes(tmp_path / "empty.yaml")


def training_table(registry: Registry, n: int = 80) -> pd.DataFrame:
    """PbSe recipes whose size grows with the temperature and whose shape follows the ligand."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        temperature = rng.uniform(100, 200)
        cube = i % 2 == 0
        record = {**GOOD, "reaction_temperature_c": temperature, "injection_temperature_c": 150}
        if cube:
            record["reagents"] = "PbO; OLA; ODE; Se; TOP"
        row = validate_recipe(record, f"r{i}", registry)
        row |= {
            "recipe_id": i,
            "size_nm": 2 + (temperature - 100) / 10,
            "shape_class": 1 if cube else 2,
            "doi": f"d{i % 5}",
        }
        rows.append(row)
    return pd.DataFrame(rows)


def test_forest_learns_saves_and_predicts(tmp_path, registry):
    table = training_table(registry)
    model = RecipeForest.fit(table, registry, SHAPES, vocabulary=10, trees=30)
    path = tmp_path / "forest.pkl"
    model.save(path)
    loaded = RecipeForest.load(path)
    new = pd.DataFrame(
        [
            validate_recipe({**GOOD, "reaction_temperature_c": t}, f"n{t}", registry)
            for t in (110, 190)
        ]
    )
    predicted = loaded.predict(new, registry)
    cold, hot = predicted["predicted_size_nm"]
    assert cold < 5 < 8 < hot
    assert (predicted["predicted_shape"] == "sphere").all()  # oleic acid, as the spheres
    assert (predicted["predicted_size_std_nm"] >= 0).all()
    assert np.allclose(predicted[["p_cube", "p_sphere"]].sum(axis=1), 1.0)
    forest = RecipeForest.fit(
        table, registry, SHAPES, vocabulary=10, trees=30, model="random_forest"
    )
    assert forest.predict(new, registry)["predicted_size_nm"].iloc[1] > 8
    with pytest.raises(ValueError, match="must be one of"):
        RecipeForest.fit(table, registry, SHAPES, model="gradient_boosting")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04N.")  # pickled None
    with pytest.raises(ValueError, match="not a nanoxtal recipe model"):
        RecipeForest.load(tmp_path / "junk.pkl")


def test_suggest_stays_in_the_data_and_ranks_by_score(registry):
    table = training_table(registry)
    model = RecipeForest.fit(table, registry, SHAPES, vocabulary=10, trees=30)
    best = suggest(model, table, registry, "PbSe", 8.0, "cube", candidates=300, top=5)
    assert list(best["rank"]) == [1, 2, 3, 4, 5]
    assert best["score"].is_monotonic_increasing
    assert (best["predicted_shape"] == "cube").all()
    assert (best["reagents"].str.contains("OLA")).all()
    assert abs(best["predicted_size_nm"].iloc[0] - 8.0) < 1.5
    temperatures = best["reaction_temperature_c"]
    assert temperatures.between(table["reaction_temperature_c"].min() - 0.1, 200).all()
    fixed = suggest(model, table, registry, "PbSe", 8.0, None, ["OA"], candidates=50, top=3)
    assert fixed["reagents"].str.contains("OA").all()
    with pytest.raises(ValueError, match="no recipe of 'CdSe'"):
        suggest(model, table, registry, "CdSe", 5.0, candidates=10)
    with pytest.raises(ValueError, match="unknown shape"):
        suggest(model, table, registry, "PbSe", 5.0, "bowtie", candidates=10)


def test_predict_cli_keeps_going_past_bad_recipes(tmp_path, registry, capsys):
    model = RecipeForest.fit(training_table(registry), registry, SHAPES, vocabulary=10, trees=10)
    model.save(tmp_path / "m.pkl")
    recipes = tmp_path / "new.csv"
    bad = {**GOOD, "amounts_mmol": "2; -1; 30; 2; 4"}
    pd.DataFrame([GOOD, bad, GOOD]).to_csv(recipes, index=False)
    out = tmp_path / "p.csv"
    args = ["recipes", "predict", str(recipes), str(tmp_path / "missing.csv"), "--out", str(out)]
    assert main([*args, "--model", str(tmp_path / "m.pkl")]) == 1
    assert len(pd.read_csv(out)) == 2
    errors = capsys.readouterr().err
    assert "new.csv recipe 2, field 'amounts_mmol'" in errors
    assert "missing.csv: cannot read recipes" in errors
