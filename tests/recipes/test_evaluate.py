from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal.recipes.evaluate import (
    classification_metrics,
    cross_validate,
    folds,
    summarise,
    uncertainty_metrics,
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


@pytest.mark.parametrize("model", ["random_forest", "gradient_boosting"])
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
