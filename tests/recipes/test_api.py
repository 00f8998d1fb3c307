"""``nanoxtal.recipes.predict`` and ``suggest`` on their own, and the CLI built on them."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from nanoxtal import recipes
from nanoxtal.cli import main
from nanoxtal.models import ModelError
from nanoxtal.recipes.api import RecipeWarning, recipe_model, validate_recipes
from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.design import RecipeForest, RecipeInputError, validate_recipe

SHAPES = ["Irregular shape", "cube", "sphere"]
PUBLISHED = "results/recipes/models/forest.pkl"
GOOD = {
    "product": "PbSe",
    "injection_temperature_c": 150,
    "reaction_temperature_c": 140,
    "time_min": 5,
    "reagents": "PbO; OA; ODE; Se; TOP",
    "amounts_mmol": "2; 6; 30; 2; 4",
}
BAD = {**GOOD, "amounts_mmol": "2; -6; 30; 2; 4"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="module")
def table(registry) -> pd.DataFrame:
    """Tidy PbSe recipes: size grows with the temperature (2-12 nm), oleylamine makes cubes."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        temperature = rng.uniform(100, 200)
        cube = i % 2 == 0
        record = {**GOOD, "reaction_temperature_c": temperature}
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


@pytest.fixture(scope="module")
def model(table, registry) -> RecipeForest:
    return RecipeForest.fit(table, registry, SHAPES, vocabulary=10, trees=10)


@pytest.fixture
def model_file(tmp_path, model):
    path = tmp_path / "forest.pkl"
    model.save(path)
    return path


def new_recipes() -> pd.DataFrame:
    """Three recipes as a notebook would hold them: lists in cells, ids of one's own."""
    oleic, oleylamine = ["PbO", "OA", "ODE", "Se", "TOP"], ["PbO", "OLA", "ODE", "Se", "TOP"]
    return pd.DataFrame(
        {
            "recipe_id": [11, 12, 13],
            "product": ["PbSe"] * 3,
            "reaction_temperature_c": [110.0, 150.0, 190.0],
            "injection_temperature_c": [150.0, np.nan, 150.0],
            "time_min": [5.0, 5.0, 5.0],
            "reagents": [oleic, oleylamine, oleic],
            "amounts_mmol": [[2.0, 6.0, 30.0, 2.0, 4.0]] * 3,
        }
    )


def as_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """The same recipes as a CSV file holds them: lists ';'-separated."""
    return frame.assign(
        **{
            column: ["; ".join(map(str, cell)) for cell in frame[column]]
            for column in ("reagents", "amounts_mmol")
        }
    )


def test_predict_on_a_dataframe_writes_what_the_cli_writes(tmp_path, model_file, capsys):
    frame = new_recipes()
    as_csv(frame).to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "p.csv"
    args = ["recipes", "predict", str(tmp_path / "new.csv"), "--out", str(out)]
    assert main([*args, "--model", str(model_file)]) == 0
    assert f"model: {model_file}" in capsys.readouterr().out
    predicted = recipes.predict(frame, model=model_file)
    assert predicted.to_csv(index=False) == out.read_text()
    assert list(predicted["recipe_id"]) == [11, 12, 13]
    cold, _, hot = predicted["predicted_size_nm"]
    assert cold < 5 < 8 < hot  # the table's sizes follow the temperature
    assert predicted["predicted_shape"].iloc[1] == "cube"  # oleylamine


def test_predict_takes_dicts_and_files_and_labels_them(tmp_path, model):
    (tmp_path / "r.yaml").write_text(
        "- product: PbSe\n  reaction_temperature_c: 150\n  time_min: 5\n"
        "  reagents: [PbO, OA, ODE, Se, TOP]\n  amounts_mmol: [2, 6, 30, 2, 4]\n"
        "- not a recipe\n"
    )
    checked = validate_recipes([GOOD, BAD, tmp_path / "r.yaml", tmp_path / "none.csv"])
    assert list(checked.table["recipe_id"]) == ["recipes[0]", f"{tmp_path / 'r.yaml'} recipe 1"]
    messages = [str(error) for error in checked.errors]
    assert messages[0].startswith("recipes[1], field 'amounts_mmol'")
    assert messages[1] == f"{tmp_path / 'r.yaml'} recipe 2: not a recipe (fields expected)"
    assert messages[2].startswith(f"{tmp_path / 'none.csv'}: cannot read recipes")
    single = recipes.predict(GOOD, model=model)
    assert len(single) == 1 and single["recipe_id"].iloc[0] == "recipe"
    with pytest.raises(TypeError, match=r"recipes\[0\] is 3: give"):
        validate_recipes([3])


def test_predict_warns_about_bad_recipes_and_predicts_the_others(model):
    frame = pd.concat([as_csv(new_recipes()), pd.DataFrame([BAD])], ignore_index=True)
    with pytest.warns(RecipeWarning, match="row 3, field 'amounts_mmol': amount -6.0") as caught:
        predicted = recipes.predict(frame, model=model, errors="warn")
    assert len([w for w in caught if w.category is RecipeWarning]) == 1
    assert list(predicted["recipe_id"]) == [11, 12, 13]
    with pytest.raises(RecipeInputError, match=r"^row 3, field 'amounts_mmol'"):
        recipes.predict(frame, model=model)
    with pytest.raises(RecipeInputError, match="and 1 more invalid"):
        recipes.predict([BAD, BAD], model=model)
    with warnings.catch_warnings(), pytest.raises(RecipeInputError, match="no valid recipe"):
        warnings.simplefilter("ignore", RecipeWarning)
        recipes.predict([BAD], model=model, errors="warn")
    with pytest.raises(ValueError, match="errors must be one of"):
        recipes.predict(frame, model=model, errors="ignore")


def test_no_published_model_is_an_error_naming_the_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=f"none published at {PUBLISHED}.*snakemake --cores 2"):
        recipes.predict(GOOD)
    with pytest.raises(ModelError, match=PUBLISHED):
        recipes.suggest("PbSe", 8.0)
    pd.DataFrame([GOOD]).to_csv("new.csv", index=False)
    assert main(["recipes", "predict", "new.csv", "--out", "p.csv"]) == 1
    error = capsys.readouterr().err
    assert f"snakemake --cores 2 {PUBLISHED}" in error and "--model" in error
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(ModelError, match="no such model file"):
        recipe_model(tmp_path / "missing.pkl")


def test_the_published_model_is_used_by_default(tmp_path, monkeypatch, capsys, table, registry):
    monkeypatch.chdir(tmp_path)
    published = RecipeForest.fit(table, registry, SHAPES, vocabulary=10, trees=10, seed=7)
    published.save(tmp_path / PUBLISHED)
    frame = new_recipes()
    expected = published.predict(validate_recipes(frame).table, registry)
    pd.testing.assert_frame_equal(recipes.predict(frame), expected)
    assert recipe_model().describe == f"{PUBLISHED} (published by the workflow)"
    as_csv(frame).to_csv("new.csv", index=False)
    assert main(["recipes", "predict", "new.csv", "--out", "p.csv"]) == 0
    assert f"model: {PUBLISHED} (published by the workflow)" in capsys.readouterr().out
    assert (tmp_path / "p.csv").read_text() == expected.to_csv(index=False)


def test_suggest_aims_at_the_target_for_the_product_asked(model, table):
    best = recipes.suggest("PbSe", 8.0, model=model, recipes=table, candidates=200, top=5)
    assert list(best["rank"]) == [1, 2, 3, 4, 5] and (best["product"] == "PbSe").all()
    assert best["score"].is_monotonic_increasing
    miss = (best["predicted_size_nm"] - 8.0).abs()
    # score = relative miss + relative spread + (1 - probability of the shape)
    parts = miss / 8.0 + best["predicted_size_std_nm"] / 8.0 + 1 - best["target_shape_probability"]
    np.testing.assert_allclose(best["score"], parts)
    assert miss.iloc[0] < 1.5
    small = recipes.suggest("PbSe", 3.0, model=model, recipes=table, candidates=200, top=1)
    large = recipes.suggest("PbSe", 11.0, model=model, recipes=table, candidates=200, top=1)
    assert small["predicted_size_nm"].iloc[0] < 6 < large["predicted_size_nm"].iloc[0]
    cubes = recipes.suggest("PbSe", 8.0, "cube", model, table, fix="OLA", candidates=50, top=3)
    assert cubes["reagents"].str.contains("OLA").all()
    assert (cubes["predicted_shape"] == "cube").all()
    with pytest.raises(ValueError, match="no recipe of 'CdSe'"):
        recipes.suggest("CdSe", 5.0, model=model, recipes=table, candidates=10)
    with pytest.raises(ValueError, match="must be > 0 nm"):
        recipes.suggest("PbSe", 0.0, model=model, recipes=table)


def test_suggest_reads_the_workflows_recipes_and_the_cli_writes_the_same(
    tmp_path, monkeypatch, capsys, model, table
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"results/recipes/recipes\.parquet.*snakemake"):
        recipes.suggest("PbSe", 8.0, model=model)
    with pytest.raises(FileNotFoundError, match=r"no tidy recipes at other\.parquet"):
        recipes.suggest("PbSe", 8.0, model=model, recipes="other.parquet")
    (tmp_path / "results/recipes/models").mkdir(parents=True)
    table.to_parquet("results/recipes/recipes.parquet", index=False)
    model.save(PUBLISHED)
    expected = recipes.suggest("PbSe", 8.0, model=model, recipes=table, candidates=50, top=3)
    pd.testing.assert_frame_equal(recipes.suggest("PbSe", 8.0, candidates=50, top=3), expected)
    args = ["recipes", "suggest", "--product", "PbSe", "--size", "8", "--candidates", "50"]
    assert main([*args, "--top", "3", "--out", "s.csv"]) == 0
    assert f"model: {PUBLISHED} (published by the workflow)" in capsys.readouterr().out
    assert (tmp_path / "s.csv").read_text() == expected.to_csv(index=False)
    assert main([*args, "--product", "Xx", "--out", "x.csv"]) == 1
    assert "no recipe of 'Xx'" in capsys.readouterr().err
