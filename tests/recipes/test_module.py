from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.ensemble import (
    PREDICTION_COLUMNS,
    EnsemblePlan,
    cross_validate_transformer,
    fit_final,
    inner_parts,
    predict_ensemble,
)
from nanoxtal.recipes.evaluate import folds
from nanoxtal.recipes.module import RecipeModel, load_recipe_model, log_size_statistics
from nanoxtal.recipes.nets import build_net
from nanoxtal.recipes.sequence import (
    CONTEXT_FEATURES,
    TOKEN_FEATURES,
    RecipeDataModule,
    RecipeSplit,
    RecipeTokenizer,
)
from nanoxtal.train import TrainerSettings

TINY = {"width": 16, "heads": 2, "layers": 1, "dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only contend (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipes(n: int, seed: int = 0, first_id: int = 2) -> pd.DataFrame:
    """Tidy PbSe/CdSe recipes whose size is set by the amount of oleic acid."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        oleic = float(rng.uniform(1.0, 12.0))
        cadmium = i % 2 == 1
        rows.append(
            {
                "recipe_id": first_id + i,
                "product": "CdSe" if cadmium else "PbSe",
                "phase": 0,
                "injection_temperature_c": 150.0,
                "reaction_temperature_c": float(rng.uniform(120, 200)),
                "heating_rate_c_per_min": np.nan,
                "time_min": 5.0,
                "reagents": ["CdO" if cadmium else "PbO", "Se", "OA", "ODE"],
                "amounts_mmol": [2.0, 2.0, oleic, 30.0],
                "roles": ["cation_precursor", "anion_precursor", "ligand", "solvent"],
                "size_nm": 2.0 + oleic,
                "shape_class": int(oleic > 6.0),
                "doi": f"10.1000/{i % 4}",
            }
        )
    return pd.DataFrame(rows)


def augment(table: pd.DataFrame) -> pd.DataFrame:
    """One rewrite per recipe (reagents listed in reverse), with new ids and ``source_id``."""
    rewrites = table.copy()
    rewrites["source_id"] = table["recipe_id"]
    rewrites["recipe_id"] = table["recipe_id"] + 1000
    for column in ("reagents", "amounts_mmol", "roles"):
        rewrites[column] = [list(reversed(values)) for values in table[column]]
    return rewrites


@pytest.fixture(scope="module")
def registry():
    return Registry()


def cpu() -> TrainerSettings:
    return TrainerSettings(accelerator="cpu", deterministic=True)


def test_training_steps_learn_a_size_set_by_one_amount(registry):
    table = recipes(24)
    tokenizer = RecipeTokenizer(registry).fit(table)
    split = RecipeSplit.from_table(tokenizer, table)
    mean, std = log_size_statistics(split.size_nm)
    torch.manual_seed(0)
    arch = {
        "name": "recipe_transformer",
        "token_features": len(TOKEN_FEATURES),
        "context_features": len(CONTEXT_FEATURES),
        "shape_classes": 2,
        **TINY,
    }
    model = RecipeModel(build_net(arch), arch, lr=3e-3, log_size_mean=mean, log_size_std=std)
    (batch,) = list(RecipeDataModule(split, batch_size=len(table), seed=0).train_dataloader())
    optimiser = model.configure_optimizers()
    with torch.no_grad():
        first = {k: float(v) for k, v in model.losses(batch).items()}
    for _ in range(80):
        optimiser.zero_grad()
        model.losses(batch)["loss"].backward()
        optimiser.step()
    with torch.no_grad():
        last = {k: float(v) for k, v in model.losses(batch).items()}
    assert last["size_loss"] < 0.2 * first["size_loss"]
    assert last["loss"] < first["loss"]
    assert last["size_mae_nm"] < first["size_mae_nm"]
    predicted = model.eval().predict_step(batch)
    assert predicted["size_nm"].shape == (24,) and (predicted["size_nm"] > 0).all()
    torch.testing.assert_close(predicted["shape_probabilities"].sum(1), torch.ones(24))


def test_inner_parts_keep_rewrites_with_their_source_and_out_of_validation():
    table = recipes(12)
    rewrites = augment(table)
    (fold, *_) = folds(table, "random", 2, seed=1)
    train = table.iloc[fold.train]
    test_ids = set(table["recipe_id"].iloc[fold.test])
    for fitted, validation in inner_parts(train, 2, seed=3, augmented=rewrites):
        trained = set(fitted["recipe_id"])
        assert not trained & set(validation["recipe_id"])
        assert not (trained | set(validation["recipe_id"])) & test_ids
        # Exactly the rewrites of this member's training recipes.
        assert {i - 1000 for i in trained if i >= 1000} == {i for i in trained if i < 1000}
        assert (validation["recipe_id"] < 1000).all()
    doi_parts = inner_parts(train, 2, seed=3, groups=train["doi"].to_numpy())
    for fitted, validation in doi_parts:
        assert not set(fitted["doi"]) & set(validation["doi"])


def test_cross_validated_ensemble_predicts_every_recipe_once(tmp_path, registry):
    table = recipes(14)
    rewrites = augment(table)
    predictions = cross_validate_transformer(
        table,
        "random",
        tmp_path / "cv",
        EnsemblePlan(2, members=2, epochs=1, batch_size=8, arch=TINY, trainer=cpu()),
        k=2,
        seed=1,
        registry=registry,
        augmented=rewrites,
    )
    assert list(predictions.columns) == [
        "recipe_id",
        "fold",
        "size_nm",
        "predicted_size_nm",
        "shape_class",
        "predicted_shape_class",
        "predicted_size_std_nm",
        "shape_confidence",
    ]
    assert sorted(predictions["recipe_id"]) == sorted(table["recipe_id"])
    assert not set(predictions["recipe_id"]) & set(rewrites["recipe_id"])
    assert set(predictions["fold"]) == {"fold0", "fold1"}
    assert np.isfinite(predictions["predicted_size_nm"]).all()
    assert (predictions["predicted_size_nm"] > 0).all()
    assert (predictions["predicted_size_std_nm"] >= 0).all()
    assert predictions["shape_confidence"].between(0.5, 1.0).all()  # two classes
    member = tmp_path / "cv" / "random" / "fold0" / "member1" / "models" / "best.ckpt"
    assert member.is_file()


def test_final_ensemble_round_trip(tmp_path, registry):
    table = recipes(10)
    (checkpoint,) = fit_final(
        table,
        tmp_path / "final",
        EnsemblePlan(3, members=1, epochs=1, batch_size=8, arch=TINY, trainer=cpu()),
        registry=registry,
    )
    model = load_recipe_model(checkpoint)
    assert model.hparams.arch["shape_classes"] == 3 and not model.training
    tokenizer = RecipeTokenizer.from_state(model.hparams.tokenizer, registry)
    assert tokenizer.transform(table).tokens.shape == (10, 4, len(TOKEN_FEATURES))
    unlabelled = table.drop(columns=["size_nm", "shape_class"])
    predicted = predict_ensemble([checkpoint, model], unlabelled, registry)
    assert list(predicted.columns) == list(PREDICTION_COLUMNS)
    np.testing.assert_allclose(predicted["predicted_size_std_nm"], 0.0, atol=1e-6)
    assert predicted["predicted_shape_class"].between(0, 2).all()
