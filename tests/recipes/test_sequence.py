from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal.recipes.chemicals import CHEMICAL_FEATURES, Registry
from nanoxtal.recipes.clean import ROLES
from nanoxtal.recipes.sequence import (
    CONTEXT_FEATURES,
    TOKEN_FEATURES,
    RecipeDataModule,
    RecipeSplit,
    RecipeTokenizer,
)

REAGENTS = [
    ("PbO", "cation_precursor"),
    ("Se", "anion_precursor"),
    ("OA", "ligand"),
    ("ODE", "solvent"),
    ("TOP", "ligand"),
]


def recipe(recipe_id, amounts, product="PbSe", heating=np.nan, extra=(), phase=0):
    names = [name for name, _ in REAGENTS][: len(amounts)] + [name for name, _ in extra]
    roles = [role for _, role in REAGENTS][: len(amounts)] + [role for _, role in extra]
    return {
        "recipe_id": recipe_id,
        "product": product,
        "phase": phase,
        "injection_temperature_c": 150.0 + recipe_id,
        "reaction_temperature_c": 140.0,
        "heating_rate_c_per_min": heating,
        "time_min": 5.0 + recipe_id,
        "reagents": names,
        "amounts_mmol": [*amounts, *(1.0 for _ in extra)],
        "roles": roles,
        "size_nm": 4.0 + recipe_id,
        "shape_class": recipe_id % 3,
        "doi": f"10.1000/{recipe_id % 2}",
    }


@pytest.fixture(scope="module")
def registry():
    return Registry()


def train_table():
    return pd.DataFrame(
        [
            recipe(1, [2.0, 2.0, 6.0]),
            recipe(2, [1.0, 3.0, 4.0, 30.0]),
            recipe(3, [2.0, 1.0, 8.0, 20.0, 4.0]),
        ]
    )


def column(name):
    return TOKEN_FEATURES.index(name)


def test_statistics_come_from_the_fit_table_only(registry):
    tokenizer = RecipeTokenizer(registry).fit(train_table())
    before = tokenizer.state()
    other = pd.DataFrame([recipe(9, [200.0, 100.0, 50.0, 900.0, 40.0], product="CdSe")])
    tokenizer.transform(other)
    assert tokenizer.state() == before
    # The statistics are those of the training tokens: they standardise to mean 0, std 1.
    arrays = tokenizer.transform(train_table())
    amounts = arrays.tokens[~arrays.padding][:, column("log1p_mmol")]
    assert amounts.mean() == pytest.approx(0.0, abs=1e-6)
    assert amounts.std() == pytest.approx(1.0, abs=1e-5)
    both = RecipeTokenizer(registry).fit(pd.concat([train_table(), other]))
    assert both.state()["token_mean"] != before["token_mean"]


def test_features_constant_or_missing_in_training_stay_finite(registry):
    # phase and heating_rate_unknown are constant in training, heating rate missing throughout.
    tokenizer = RecipeTokenizer(registry).fit(train_table())
    changed = pd.DataFrame([recipe(4, [2.0, 2.0], heating=5.0, phase=1)])
    context = tokenizer.transform(changed).context[0]
    assert np.isfinite(context).all()
    assert context[CONTEXT_FEATURES.index("phase")] == pytest.approx(1.0)  # (1 - 0) / 1
    assert context[CONTEXT_FEATURES.index("heating_rate_c_per_min")] == pytest.approx(5.0)


def test_unresolved_reagents_and_products_become_zeros_with_a_flag(registry):
    table = pd.DataFrame(
        [
            recipe(1, [2.0, 2.0, 6.0], extra=[("mystery additive", "other")]),
            recipe(2, [1.0, 1.0, 3.0], product="unknown product"),
            recipe(3, [np.nan, 2.0]),  # an amount missing
        ]
    )
    tokenizer = RecipeTokenizer(registry).fit(table)
    arrays = tokenizer.transform(table)
    assert np.isfinite(arrays.tokens).all() and np.isfinite(arrays.context).all()
    mystery = arrays.tokens[0, 3]
    assert np.all(mystery[: len(CHEMICAL_FEATURES)] == 0.0)  # NaN descriptors → the mean
    assert mystery[column("unresolved")] > 0  # the flag tells it apart
    assert arrays.roles[0, 3] == ROLES.index("other")
    product = [CONTEXT_FEATURES.index(f) for f in CONTEXT_FEATURES if f.startswith("product_")]
    assert np.all(arrays.context[1, product] == 0.0)
    with pytest.raises(ValueError, match="unknown reagent role 'catalyst'"):
        tokenizer.transform(pd.DataFrame([recipe(5, [1.0], extra=[("OA", "catalyst")])]))


def test_recipes_are_padded_to_the_longest_and_masked(registry):
    tokenizer = RecipeTokenizer(registry).fit(train_table())
    arrays = tokenizer.transform(train_table())
    assert arrays.tokens.shape == (3, 5, len(TOKEN_FEATURES))
    assert arrays.context.shape == (3, len(CONTEXT_FEATURES))
    assert arrays.tokens.dtype == np.float32 and arrays.roles.dtype == np.int64
    assert arrays.padding.tolist() == [
        [False, False, False, True, True],
        [False, False, False, False, True],
        [False] * 5,
    ]
    assert np.all(arrays.tokens[arrays.padding] == 0) and np.all(arrays.roles[arrays.padding] == 0)
    assert arrays.roles[2].tolist() == [0, 1, 2, 3, 2]
    assert tokenizer.transform(train_table().iloc[:1]).tokens.shape[1] == 3


def test_state_round_trip_and_seeded_shuffle(registry):
    tokenizer = RecipeTokenizer(registry).fit(train_table())
    restored = RecipeTokenizer.from_state(tokenizer.state(), registry)
    np.testing.assert_array_equal(
        restored.transform(train_table()).tokens, tokenizer.transform(train_table()).tokens
    )
    with pytest.raises(RuntimeError, match="before fit"):
        RecipeTokenizer(registry).transform(train_table())

    split = RecipeSplit.from_table(tokenizer, train_table())
    orders = []
    for _ in range(2):
        loader = RecipeDataModule(split, batch_size=3, seed=7).train_dataloader()
        (first,) = list(loader)
        orders.append(first["size_nm"].tolist())
    assert orders[0] == orders[1]
    assert set(first) == {"tokens", "roles", "padding", "context", "size_nm", "shape_class"}
