from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.clean import clean_recipes, read_shape_classes, read_sheet
from nanoxtal.recipes.cli import BASELINE_NAMES, FOREST_NAMES
from nanoxtal.recipes.design import FORESTS
from nanoxtal.recipes.evaluate import (
    BASELINES,
    baseline,
    classification_metrics,
    cross_validate,
    evaluate_models,
    folds,
    leaky_reference,
    summarise,
    uncertainty_metrics,
    write_evaluation_figures,
)


def table(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "recipe_id": np.arange(n) + 2,
            "doi": [f"doi{i % 7}" for i in range(n)],
            "product": [("PbSe", "Au", "Ni")[i % 3] for i in range(n)],
            "size_nm": rng.uniform(2, 18, n),
            "shape_class": rng.integers(0, 3, n),
        }
    )


def test_random_folds_cover_every_recipe_once_and_depend_on_the_seed():
    recipes = table()
    tests = np.concatenate([f.test for f in folds(recipes, "random", 5, seed=1)])
    assert sorted(tests) == list(range(len(recipes)))
    other = np.concatenate([f.test for f in folds(recipes, "random", 5, seed=2)])
    assert not np.array_equal(tests, other)


def test_doi_folds_never_split_a_paper():
    recipes = table()
    for fold in folds(recipes, "doi", 3, seed=1):
        train_dois = set(recipes["doi"].iloc[fold.train])
        assert not train_dois & set(recipes["doi"].iloc[fold.test])


def test_product_folds_hold_out_one_product_entirely():
    recipes = table()
    (fold,) = folds(recipes, "product", products=["Ni"])
    assert set(recipes["product"].iloc[fold.test]) == {"Ni"}
    assert "Ni" not in set(recipes["product"].iloc[fold.train])
    with pytest.raises(ValueError, match="'Xx' has no recipes"):
        list(folds(recipes, "product", products=["Xx"]))


def test_shape_metrics_count_the_recipes():
    shape = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert shape["accuracy"] == 0.75 and shape["count"] == 4
    assert shape["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


@pytest.mark.parametrize("model", BASELINES)
def test_baselines_learn_a_size_that_a_feature_decides(model):
    recipes = table(200)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (200, 3))
    recipes["size_nm"] = 2 + 15 * x[:, 0]
    recipes["shape_class"] = (x[:, 1] > 0.5).astype(int)
    features = pd.DataFrame(x, columns=["a", "b", "c"])
    features["empty"] = np.nan  # a column with no values must not break any model
    predictions = cross_validate(recipes, features, "random", model, k=4, seed=0, trees=50)
    scores = summarise(predictions)
    assert scores["size_mae_nm"] < 1.0 and scores["shape_accuracy"] > 0.9
    assert sorted(predictions["recipe_id"]) == sorted(recipes["recipe_id"])
    spread = predictions["predicted_size_std_nm"]
    if model == "gradient_boosting":  # one model, no spread
        assert spread.isna().all() and "size_within_2std" not in scores
    else:  # trees disagree a little about a size one feature decides
        assert (spread > 0).all() and spread.mean() < 2.0
        assert 0 < scores["size_within_2std"] <= 1


def test_cli_offers_exactly_the_baselines_and_forests():
    assert BASELINE_NAMES == BASELINES
    assert FOREST_NAMES == FORESTS and set(FORESTS) <= set(BASELINES)


@pytest.mark.parametrize("model", BASELINES)
def test_size_baselines_average_log_sizes(model):
    # Inputs that cannot tell recipes apart: the best constant in log space is the geometric
    # mean (10 nm here, give or take bootstrap draws); a model fitted on sizes in nm would answer
    # the arithmetic mean (50.5).
    x = np.zeros((40, 1))
    size = np.tile([1.0, 100.0], 20)
    predicted = baseline(model, "size", seed=0, trees=20).fit(x, size).predict(x)
    assert np.all((predicted > 7) & (predicted < 14))


def test_leaky_reference_recalls_what_the_honest_protocol_cannot():
    # Pure-noise features: nothing is learnable, but augmented copies (the same inputs and
    # labels as their source) in the training part let unbootstrapped, fully grown trees recall
    # a test recipe's size.
    recipes = table(120)
    rng = np.random.default_rng(3)
    features = pd.DataFrame(rng.normal(size=(120, 4)), columns=list("abcd"))
    copies = recipes.assign(
        source_id=recipes["recipe_id"], recipe_id=[f"{i}~aug0" for i in recipes["recipe_id"]]
    )
    leaky = leaky_reference(recipes, features, copies, features, "extra_trees", trees=50)
    assert leaky["original"].sum() == 120 and len(leaky) == 240
    honest = cross_validate(
        recipes,
        features,
        "random",
        "extra_trees",
        trees=50,
        augmented=copies,
        augmented_features=features,
    )
    leaky_mae = summarise(leaky[leaky["original"]])["size_mae_nm"]
    honest_mae = summarise(honest)["size_mae_nm"]
    # A copy shares its source's test fold one time in k (5), so about 80 % are recalled.
    assert leaky_mae < 0.4 * honest_mae and honest_mae > 2.5  # uniform 2-18 nm: MAE ~4 nm


def test_uncertainty_metrics_on_a_hand_computed_case():
    predictions = pd.DataFrame(
        {
            "size_nm": [5.0, 5.0, 5.0, 5.0],
            "predicted_size_nm": [5.5, 6.0, 8.0, 5.1],
            "predicted_size_std_nm": [0.5, 1.0, 1.0, 0.1],
        }
    )
    metrics = uncertainty_metrics(predictions)
    assert metrics["std_mean_nm"] == pytest.approx(0.65)
    assert metrics["within_2std"] == 0.75  # the 3 nm miss lies outside 2 x 1 nm
    # Larger spreads go with larger errors here (ties aside): a clearly positive rank correlation.
    assert metrics["std_error_spearman"] > 0.7
    assert "size_within_2std" in summarise(
        predictions.assign(shape_class=0, predicted_shape_class=0)
    )


def test_evaluate_models_scores_every_protocol_and_draws_the_k_fold_ones(tmp_path, workbook):
    path, shapes = workbook
    recipes, _, _ = clean_recipes(
        read_sheet(path), read_shape_classes(shapes), Registry().role_hint
    )
    many = pd.concat([recipes] * 8, ignore_index=True)  # the CLI test's table, 40 recipes
    many["recipe_id"] = range(len(many))
    many["doi"] = [f"d{i % 4}" for i in range(len(many))]
    many["reaction_temperature_c"] = 100 + 5 * many.index
    many["size_nm"] = 2 + 0.2 * many.index
    lines: list[str] = []
    result = evaluate_models(
        many,
        Registry(),
        k=2,
        products=["CdSe"],
        augment="on",
        max_variants=2,
        trees=5,
        progress=lines.append,
    )
    metrics, predictions = result.metrics, result.predictions
    # The order metrics.json has always had: settings first, then the scores.
    assert list(metrics)[:8] == [
        "recipes",
        "max_size_nm",
        "folds",
        "seed",
        "features",
        "held_out_products",
        "environment",
        "augmentation",
    ]
    assert metrics["recipes"] == 40 and metrics["held_out_products"] == ["CdSe"]
    assert metrics["augmentation"]["augmented_rows"] == len(result.augmented) > 0
    assert set(predictions["model"]) == {"random_forest+intermediates"}  # "on": no plain run
    by_protocol = predictions.groupby("protocol")["recipe_id"]
    assert sorted(by_protocol.get_group("random")) == list(range(40))  # each recipe tested once
    assert sorted(by_protocol.get_group("doi")) == list(range(40))
    assert set(many.loc[by_protocol.get_group("product"), "product"]) == {"CdSe"}
    assert "product/random_forest+intermediates/CdSe/size_mae_nm" in metrics
    assert metrics["leaky/random_forest/all/size_count"] == 40 + len(result.augmented)
    assert lines[0].startswith("intermediates: ") and len(lines) == 5  # + 3 protocols + leaky
    written = write_evaluation_figures(predictions, read_shape_classes(shapes), tmp_path)
    assert sorted(p.name for p in written) == [
        f"{kind}_random_forest+intermediates_{protocol}.png"
        for kind in ("parity", "shape_confusion")
        for protocol in ("doi", "random")
    ]
    assert all(p.is_file() for p in written)
    with pytest.raises(ValueError, match="unknown augmentation"):
        evaluate_models(many, Registry(), augment="both")
    with pytest.raises(ValueError, match="needs its settings"):
        evaluate_models(many, Registry(), models=["transformer"])
