from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Element

from nanoxtal.recipes.chemicals import (
    COMPOSITION_FEATURES,
    Registry,
    chemical_features,
    composition_features,
    molecule_features,
    product_formula,
)
from nanoxtal.recipes.featurize import Featurizer


def recipe(reagents, amounts, roles, product="PbSe", heating=np.nan):
    return {
        "recipe_id": 2,
        "product": product,
        "phase": 0,
        "injection_temperature_c": 150.0,
        "reaction_temperature_c": 140.0,
        "heating_rate_c_per_min": heating,
        "time_min": 10.0,
        "reagents": reagents,
        "amounts_mmol": amounts,
        "roles": roles,
    }


def test_product_descriptors_average_element_properties():
    values = composition_features(product_formula("PbSe"))
    features = dict(zip(COMPOSITION_FEATURES, values, strict=True))
    assert features["mean_electronegativity"] == pytest.approx(
        (Element("Pb").X + Element("Se").X) / 2
    )
    assert features["max_mass"] == pytest.approx(float(Element("Pb").atomic_mass))
    assert features["n_elements"] == 2
    assert product_formula("CdSe-1").reduced_formula == "CdSe"


def test_molecule_descriptors_see_the_chain_length():
    oleylamine = molecule_features("CCCCCCCC/C=C\\CCCCCCCCN")
    octylamine = molecule_features("CCCCCCCCN")
    assert oleylamine[-1] == 18 and octylamine[-1] == 8  # carbon_chain
    assert oleylamine[0] == pytest.approx(267.5, abs=0.1)  # mol_weight


def test_featurizer_sums_roles_and_fills_the_reagent_bag():
    registry = Registry()
    featurizer = Featurizer(registry, ["OA", "PbO", "ODE"])
    table = pd.DataFrame(
        [
            recipe(
                ["PbO", "oleic acid", "Se", "ODE"],
                [2.0, 6.0, 2.0, 30.0],
                ["cation_precursor", "ligand", "anion_precursor", "solvent"],
            )
        ]
    )
    features = featurizer.transform(table).iloc[0]
    assert len(features) == len(featurizer.columns)
    assert features["mmol_OA"] == pytest.approx(np.log1p(6.0))  # the alias counts as OA
    assert features["ligand_count"] == 1 and features["cation_precursor_log_mmol"] == pytest.approx(
        np.log1p(2.0)
    )
    assert features["ratio_ligand_to_cation_precursor"] == pytest.approx(
        np.log1p(6.0) - np.log1p(2.0)
    )
    assert features["heating_rate_unknown"] == 1.0
    assert features["ligand_carbon_chain"] == 18
    assert features["unresolved_reagents"] == 0
    oleic = chemical_features(registry.resolve("OA"))
    assert oleic[0] == 1.0  # is_molecule
