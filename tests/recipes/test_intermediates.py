from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.evaluate import cross_validate, summarise
from nanoxtal.recipes.intermediates import (
    IntermediateError,
    Reaction,
    augment,
    find_reactions,
    intermediate,
    metal_source,
    react,
    summary,
)


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.mark.parametrize(
    ("template", "source", "partner", "formula"),
    [
        ("carboxylate", "PbO", "OA", "C36H66O4Pb"),  # lead oleate
        ("carboxylate", "Cs2CO3", "OA", "C18H33CsO2"),  # caesium oleate, per Cs
        ("carboxylate", "ZnAc2", "OA", "C36H66O4Zn"),  # acetate exchanged for oleate
        ("carboxylate", "Cu(acac)2", "OA", "C36H66CuO4"),
        ("thiolate", "CuCl", "DT", "C12H25CuS"),  # copper(I) dodecanethiolate
        ("amine_complex", "CdCl2", "OLA", "C36H74CdCl2N2"),  # (OLA)2CdCl2
        ("amine_complex", "HAuCl4", "OLA", "C36H74AuCl3N2"),  # the proton leaves as HCl
        ("phosphine_chalcogenide", "Se", "TOP", "C24H51PSe"),  # TOP=Se
        ("phosphine_chalcogenide", "S", "TBP", "C12H27PS"),
    ],
)
def test_templates_give_the_known_intermediates(registry, template, source, partner, formula):
    product = intermediate(template, registry.resolve(source), registry.resolve(partner))
    molecule = Chem.MolFromSmiles(product.smiles)
    assert molecule is not None
    assert rdMolDescriptors.CalcMolFormula(molecule) == product.formula
    # Neutral overall: the counter-ions balance the metal's charge.
    assert Chem.GetFormalCharge(molecule) == 0
    assert product.formula == formula


def test_intermediates_are_named_and_given_the_source_role(registry):
    lead = intermediate("carboxylate", registry.resolve("PbO"), registry.resolve("OA"))
    selenide = intermediate(
        "phosphine_chalcogenide", registry.resolve("Se"), registry.resolve("TOP")
    )
    assert (lead.key, lead.role_hint) == ("Pb(OA)2", "cation_precursor")
    assert (selenide.key, selenide.role_hint) == ("TOP=Se", "anion_precursor")


@pytest.mark.parametrize(
    ("template", "source", "partner"),
    [
        ("carboxylate", "Se", "OA"),  # no metal
        ("carboxylate", "PbO", "TOP"),  # no acid
        ("carboxylate", "PbCl2", "OA"),  # halides need an amine or thiol, not an acid
        ("amine_complex", "PbO", "OLA"),  # oxides are not halide salts
        ("amine_complex", "CdCl2", "TOA"),  # tertiary amine: not a primary amine
        ("phosphine_chalcogenide", "Se", "TOPO"),  # phosphine oxide holds no lone pair for Se
        ("thiolate", "CuCl", "OLA"),
    ],
)
def test_templates_refuse_pairs_that_do_not_react(registry, template, source, partner):
    with pytest.raises(IntermediateError, match="does not apply"):
        intermediate(template, registry.resolve(source), registry.resolve(partner))


def test_metal_sources_carry_charge_and_stoichiometry(registry):
    caesium = metal_source(registry.resolve("Cs2CO3"))
    assert (caesium.metal, caesium.charge, caesium.per_unit, caesium.anion) == (
        "Cs",
        1,
        2,
        "carbonate",
    )
    indium = metal_source(registry.resolve("InAc3"))
    assert (indium.charge, indium.anion) == (3, "acetate")
    assert metal_source(registry.resolve("OA")) is None
    assert metal_source(registry.resolve("Na2PdCl4")) is None  # two metals: ambiguous


def test_react_keeps_amounts_stoichiometric(registry):
    reagents, amounts = ["PbO", "OA", "ODE"], [2.0, 6.0, 30.0]
    roles = ["cation_precursor", "ligand", "solvent"]
    (reaction,) = find_reactions(reagents, registry)
    assert reaction == Reaction("carboxylate", 0, 1)
    names, mmol, new_roles = react(reagents, amounts, roles, [reaction], registry)
    # PbO + 2 OA -> Pb(OA)2: the 2 mmol of PbO limit, 4 mmol of OA are used, 2 are left.
    assert dict(zip(names, mmol, strict=True)) == {"OA": 2.0, "ODE": 30.0, "Pb(OA)2": 2.0}
    assert new_roles[names.index("Pb(OA)2")] == "cation_precursor"
    half = dict(zip(*react(reagents, amounts, roles, [reaction], registry, 0.5)[:2], strict=True))
    assert half == {"PbO": 1.0, "OA": 4.0, "ODE": 30.0, "Pb(OA)2": 1.0}
    # The acid can be the limiting reagent too.
    limited = react(reagents, [2.0, 1.0, 30.0], roles, [reaction], registry)
    assert dict(zip(*limited[:2], strict=True)) == {"PbO": 1.5, "ODE": 30.0, "Pb(OA)2": 0.5}
    # A carbonate holds two caesium ions per unit.
    caesium = react(
        ["Cs2CO3", "OA"],
        [1.0, 10.0],
        ["cation_precursor", "ligand"],
        [Reaction("carboxylate", 0, 1)],
        registry,
    )
    assert dict(zip(*caesium[:2], strict=True)) == {"OA": 8.0, "Cs(OA)": 2.0}


def test_react_registers_intermediates_for_the_features(registry):
    react(
        ["Se", "TOP"],
        [1.0, 2.0],
        ["anion_precursor", "ligand"],
        [Reaction("phosphine_chalcogenide", 0, 1)],
        registry,
    )
    assert registry.resolve("TOP=Se").formula == "C24H51PSe"


def tidy(rows: list[tuple[list[str], list[float], list[str]]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "recipe_id": np.arange(len(rows)) + 2,
            "product": "PbSe",
            "reagents": [r[0] for r in rows],
            "amounts_mmol": [r[1] for r in rows],
            "roles": [r[2] for r in rows],
            "size_nm": np.arange(len(rows)) + 3.0,
            "shape_class": 1,
        }
    )


def test_augment_enumerates_reaction_subsets_and_keeps_labels(registry):
    table = tidy(
        [
            (
                ["PbO", "Se", "OA", "TOP"],
                [2.0, 2.0, 6.0, 4.0],
                ["cation_precursor", "anion_precursor", "ligand", "ligand"],
            ),
            (["Au", "ODE"], [1.0, 10.0], ["cation_precursor", "solvent"]),  # nothing reacts
        ]
    )
    augmented = augment(table, registry, conversions=(1.0, 0.5), max_variants=20)
    # Two reactions: 3 non-empty subsets x 2 conversions, all distinct.
    assert len(augmented) == 6
    assert set(augmented["source_id"]) == {2}
    assert (augmented["size_nm"] == 3.0).all() and augmented["recipe_id"].is_unique
    both = augmented[augmented["reactions"].map(len) == 2]
    assert {"Pb(OA)2", "TOP=Se"} <= set(both["reagents"].iloc[0])
    capped = augment(table, registry, conversions=(1.0, 0.5), max_variants=4, seed=1)
    assert len(capped) == 4
    assert summary(table, augmented)["expansion_factor"] == pytest.approx(8 / 2)


def test_augmented_rows_train_only_the_folds_of_their_source():
    # Pure-noise features and sizes: a model can only predict a recipe well if it saw it.
    rng = np.random.default_rng(0)
    n = 80
    table = pd.DataFrame(
        {
            "recipe_id": np.arange(n),
            "doi": [f"d{i}" for i in range(n)],
            "product": "PbSe",
            "size_nm": rng.uniform(1, 20, n),
            "shape_class": rng.integers(0, 4, n),
        }
    )
    features = pd.DataFrame(rng.normal(size=(n, 5)))
    copies = table.assign(source_id=table["recipe_id"], recipe_id=table["recipe_id"] + 1000)
    plain = summarise(cross_validate(table, features, "random", "random_forest", k=2, trees=30))
    result = cross_validate(
        table,
        features,
        "random",
        "random_forest",
        k=2,
        trees=30,
        augmented=copies,
        augmented_features=features,
    )
    assert sorted(result["recipe_id"]) == list(range(n))  # augmented rows are never tested
    # Had a recipe's own copy been in its training fold, the forest would recall its size.
    assert summarise(result)["size_mae_nm"] > 0.7 * plain["size_mae_nm"]
