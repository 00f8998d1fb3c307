"""Fixed-length recipe features for tree models (and as context for the sequence model).

Per recipe: process conditions; product composition descriptors; per reagent role (cation and
anion precursor, ligand, solvent, reducing agent, other) the number of reagents, the total
amount and the amount-weighted mean of the reagents' descriptors; amount ratios between roles;
and the amount of each of the most frequent reagents ("bag of reagents"). Missing values stay
NaN with an indicator column, so models that cannot take NaN impute inside their own training
folds (no statistics from evaluation folds leak into features).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from nanoxtal.recipes.chemicals import (
    CHEMICAL_FEATURES,
    COMPOSITION_FEATURES,
    ChemicalError,
    Registry,
    chemical_features,
    composition_features,
    product_formula,
)
from nanoxtal.recipes.clean import ROLES

PROCESS_FEATURES = (
    "injection_temperature_c",
    "reaction_temperature_c",
    "heating_rate_c_per_min",
    "heating_rate_unknown",
    "log10_time_min",
    "phase",
)
# Descriptors averaged per role: a compact subset keeps the tree models' inputs few.
ROLE_DESCRIPTORS = (
    "is_molecule",
    "mol_weight",
    "log_p",
    "tpsa",
    "carbon_chain",
    "mean_electronegativity",
    "max_electronegativity",
    "mean_radius",
    "mean_mass",
    "has_N",
    "has_P",
    "has_S",
    "has_metal",
)
RATIOS = (
    ("ligand", "cation_precursor"),
    ("anion_precursor", "cation_precursor"),
    ("solvent", "cation_precursor"),
    ("reducing_agent", "cation_precursor"),
)


def frequent_reagents(table: pd.DataFrame, registry: Registry, top: int) -> list[str]:
    """The ``top`` most used canonical reagents (unresolved names count under their own name)."""
    counts = Counter(_canonical(name, registry) for names in table["reagents"] for name in names)
    return [name for name, _ in counts.most_common(top)]


def _canonical(name: str, registry: Registry) -> str:
    chemical = registry.resolve(name)
    return chemical.key if chemical is not None else name


def process_features(row: pd.Series) -> np.ndarray:
    """Process conditions of one tidy recipe, in the order of ``PROCESS_FEATURES``.

    An unknown heating rate becomes 0 with the ``heating_rate_unknown`` flag set, so models
    that cannot take NaN still see it; time enters as log10 (minutes to days).
    """
    heating = row["heating_rate_c_per_min"]
    return np.array(
        [
            row["injection_temperature_c"],
            row["reaction_temperature_c"],
            0.0 if pd.isna(heating) else heating,
            float(pd.isna(heating)),
            np.log10(row["time_min"]),
            row["phase"],
        ],
        dtype=float,
    )


def product_features(row: pd.Series) -> np.ndarray:
    """Composition descriptors of a recipe's product (``COMPOSITION_FEATURES``).

    NaN when the product name is not a chemical formula (``ChemicalError``).
    """
    try:
        return composition_features(product_formula(row["product"]))
    except ChemicalError:
        return np.full(len(COMPOSITION_FEATURES), np.nan)


class Featurizer:
    """Turns tidy recipes into a numeric matrix with named columns.

    Args:
        registry: Chemical registry.
        vocabulary: Canonical reagents given their own amount column (``frequent_reagents``).
    """

    def __init__(self, registry: Registry, vocabulary: list[str]) -> None:
        self.registry = registry
        self.vocabulary = list(vocabulary)
        self._descriptor_index = [CHEMICAL_FEATURES.index(d) for d in ROLE_DESCRIPTORS]
        self._cache: dict[str, np.ndarray] = {}

    @property
    def columns(self) -> list[str]:
        """Feature names, in matrix order."""
        names = list(PROCESS_FEATURES)
        names += [f"product_{f}" for f in COMPOSITION_FEATURES]
        for role in ROLES:
            names += [f"{role}_count", f"{role}_log_mmol"]
            names += [f"{role}_{d}" for d in ROLE_DESCRIPTORS]
        names += [f"ratio_{a}_to_{b}" for a, b in RATIOS]
        names += [f"mmol_{name}" for name in self.vocabulary]
        names += ["unresolved_reagents"]
        return names

    def descriptors(self, name: str) -> np.ndarray:
        """Role descriptors of a reagent name (NaN when the registry does not know it)."""
        if name not in self._cache:
            chemical = self.registry.resolve(name)
            if chemical is None:
                self._cache[name] = np.full(len(ROLE_DESCRIPTORS), np.nan)
            else:
                self._cache[name] = chemical_features(chemical)[self._descriptor_index]
        return self._cache[name]

    def recipe(self, row: pd.Series) -> np.ndarray:
        """Feature vector of one tidy recipe (a row of ``clean_recipes``' table)."""
        process = process_features(row)
        product = product_features(row)
        amounts = np.asarray(row["amounts_mmol"], dtype=float)
        roles = np.asarray(row["roles"])
        per_role, totals = [], {}
        for role in ROLES:
            members = np.flatnonzero(roles == role)
            total = amounts[members].sum()
            totals[role] = total
            described = [self.descriptors(row["reagents"][i]) for i in members]
            weights = amounts[members] + 1e-6  # a reagent listed with 0 mmol still counts
            mean = (
                _weighted_nanmean(np.stack(described), weights)
                if described
                else np.full(len(ROLE_DESCRIPTORS), np.nan)
            )
            per_role += [len(members), np.log1p(total), *mean]
        ratios = [
            np.log1p(totals[a]) - np.log1p(totals[b]) for a, b in RATIOS
        ]  # log-ratios: amounts span five decades
        bag = dict.fromkeys(self.vocabulary, 0.0)
        unresolved = 0
        for name, amount in zip(row["reagents"], amounts, strict=True):
            chemical = self.registry.resolve(name)
            unresolved += chemical is None
            key = chemical.key if chemical is not None else name
            if key in bag:
                bag[key] += np.log1p(amount)
        return np.concatenate(
            [process, product, per_role, ratios, list(bag.values()), [unresolved]]
        ).astype(float)

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        """The feature matrix of a tidy table, indexed by ``recipe_id``."""
        matrix = np.stack([self.recipe(row) for _, row in table.iterrows()])
        return pd.DataFrame(matrix, columns=self.columns, index=table["recipe_id"].to_numpy())


def _weighted_nanmean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Column means of ``values`` (items, features) weighted by ``weights``, ignoring NaN."""
    present = ~np.isnan(values)
    total = (present * weights[:, None]).sum(axis=0)
    summed = np.nansum(values * weights[:, None], axis=0)
    return np.divide(summed, total, out=np.full(values.shape[1], np.nan), where=total > 0)


def featurize_evaluated(
    table: pd.DataFrame, registry: Registry, max_size_nm: float, vocabulary: int
) -> tuple[pd.DataFrame, Featurizer, pd.DataFrame]:
    """The evaluated recipes, a featurizer for them and their feature matrix.

    Recipes are kept up to ``max_size_nm`` (the reference evaluates 0-20 nm); the featurizer
    gives the ``vocabulary`` most used of their reagents an amount column each.

    Returns:
        (recipes, featurizer, features), recipes re-indexed from 0.
    """
    table = table[table["size_nm"] <= max_size_nm].reset_index(drop=True)
    featurizer = Featurizer(registry, frequent_reagents(table, registry, vocabulary))
    return table, featurizer, featurizer.transform(table)
