"""Resolve reagent and product names to structures, and describe them numerically.

The registry (``chemicals.yaml``, built by ``tools/build_chemicals.py`` from the dataset's
abbreviation sheets, OPSIN name-to-structure and hand curation) maps every spelling found in
the data to one canonical chemical: organic molecules to SMILES (RDKit), inorganic compounds and
elements to formulas (pymatgen ``Composition``). Descriptors are computed from those structures,
so a new spelling needs one registry line, not a new feature.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pymatgen.core import Composition, Element
from rdkit import Chem, RDLogger
from rdkit.Chem import Descriptors, rdMolDescriptors

from nanoxtal.recipes.clean import normalise_name

# Element properties averaged over a composition (Magpie-style, Ward et al., npj Comput. Mater.
# 2, 16028 (2016)): Pauling electronegativity, atomic radius (Å), mass (u), group, period.
ELEMENT_PROPERTIES = ("electronegativity", "radius", "mass", "group", "period")
COMPOSITION_FEATURES = (
    *(f"{stat}_{prop}" for prop in ELEMENT_PROPERTIES for stat in ("mean", "min", "max")),
    "n_elements",
)
MOLECULE_FEATURES = (
    "mol_weight",
    "log_p",
    "tpsa",
    "h_donors",
    "h_acceptors",
    "rotatable_bonds",
    "heavy_atoms",
    "carbon_chain",
)
HETERO_ATOMS = ("N", "O", "P", "S", "Se", "Te", "Si", "Cl", "Br", "I", "F")
CHEMICAL_FEATURES = (
    "is_molecule",
    *MOLECULE_FEATURES,
    *COMPOSITION_FEATURES,
    *(f"has_{a}" for a in HETERO_ATOMS),
    "has_metal",
)


class ChemicalError(ValueError):
    """A name or formula cannot be resolved; the message says which."""


@dataclass(frozen=True)
class Chemical:
    """One canonical chemical of the registry.

    Attributes:
        key: Canonical name (the data's most common spelling).
        name: Full name.
        kind: molecule, inorganic, element, polymer or mixture.
        smiles: SMILES (molecules, polymers' repeat units), else ``None``.
        formula: Formula (inorganics, elements; optional for molecules), else ``None``.
        role_hint: Chemical role (``nanoxtal.recipes.clean.ROLES``).
    """

    key: str
    name: str
    kind: str
    smiles: str | None
    formula: str | None
    role_hint: str


class Registry:
    """Name → chemical lookups over the registry file.

    Args:
        path: Registry YAML; default the one shipped with the package.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        source = files("nanoxtal.recipes") / "chemicals.yaml" if path is None else Path(path)
        data = yaml.safe_load(source.read_text())
        self.chemicals = {
            normalise_name(key): Chemical(
                key=normalise_name(key),
                name=entry.get("name") or key,
                kind=entry["kind"],
                smiles=entry.get("smiles"),
                formula=entry.get("formula"),
                role_hint=entry.get("role_hint") or "other",
            )
            for key, entry in data["chemicals"].items()
        }
        self.aliases = {
            normalise_name(alias): normalise_name(key)
            for alias, key in (data.get("aliases") or {}).items()
        }
        self.products = {
            normalise_name(key): entry for key, entry in (data.get("products") or {}).items()
        }

    def resolve(self, name: str) -> Chemical | None:
        """The chemical a (normalised) name stands for, or ``None`` when unknown."""
        name = normalise_name(name)
        key = name if name in self.chemicals else self.aliases.get(name)
        if key is None:
            key = next((k for k in self.chemicals if k.lower() == name.lower()), None)
        return self.chemicals.get(key) if key is not None else None

    def register(self, chemical: Chemical) -> None:
        """Add a chemical made at run time (e.g. a reaction intermediate) under its key.

        Raises:
            ChemicalError: The key names a different chemical already.
        """
        known = self.chemicals.get(chemical.key)
        if known is not None and known.smiles != chemical.smiles:
            raise ChemicalError(
                f"cannot register {chemical.key!r} as {chemical.smiles!r}: "
                f"the registry has it as {known.smiles!r}"
            )
        self.chemicals[chemical.key] = chemical

    def role_hint(self, name: str) -> str | None:
        """The chemical role of a name, ``None`` when unknown (``clean_recipes`` argument)."""
        chemical = self.resolve(name)
        return chemical.role_hint if chemical is not None else None

    def coverage(self, names: Iterable[str]) -> pd.DataFrame:
        """Resolution of every distinct name in ``names`` with its number of occurrences.

        Returns:
            Columns ``name``, ``occurrences``, ``key`` (``None`` when unresolved), ``kind``;
            most frequent first.
        """
        counts = Counter(normalise_name(n) for n in names)
        rows = []
        for name, count in counts.most_common():
            chemical = self.resolve(name)
            rows.append(
                {
                    "name": name,
                    "occurrences": count,
                    "key": chemical.key if chemical else None,
                    "kind": chemical.kind if chemical else None,
                }
            )
        return pd.DataFrame(rows, columns=["name", "occurrences", "key", "kind"])


def product_formula(product: str) -> Composition:
    """The composition of a product name such as 'CsPbBr3', 'Cs2InCl5·H2O' or 'CdSe-1'.

    Raises:
        ChemicalError: Not a chemical formula.
    """
    formula = re.sub(r"-\d+$", "", normalise_name(product)).replace("·", "")
    try:
        composition = Composition(formula)
    except (ValueError, KeyError) as error:
        raise ChemicalError(f"product {product!r} is not a chemical formula: {error}") from error
    if not composition.elements:
        raise ChemicalError(f"product {product!r} has no elements")
    # pymatgen reads unknown symbols such as 'Xq' as dummy species instead of failing.
    unknown = [str(e) for e in composition.elements if not isinstance(e, Element)]
    if unknown:
        raise ChemicalError(f"product {product!r} is not a chemical formula: unknown {unknown}")
    return composition


@dataclass(frozen=True)
class Coverage:
    """How much of a recipe table the registry resolves (``coverage_report``).

    Attributes:
        report: ``distinct_reagents``, ``occurrences``, ``resolved_occurrences``,
            ``resolved_share`` (0-1), occurrences ``by_kind``, the ``unresolved`` names with
            their occurrences, the number of distinct ``products`` and the
            ``unparsable_products`` (``product``, ``formula`` None, ``error``).
        names: One row per distinct reagent name (``Registry.coverage``).
    """

    report: dict[str, object]
    names: pd.DataFrame


def coverage_report(recipes: pd.DataFrame, registry: Registry) -> Coverage:
    """Resolve every reagent and product of a recipe table and count what is left unresolved.

    Args:
        recipes: Tidy recipes (``reagents`` lists and ``product`` names used).
        registry: Chemical registry.

    Returns:
        The summary and the per-name resolution table.
    """
    coverage = registry.coverage(name for names in recipes["reagents"] for name in names)
    unresolved = coverage[coverage["key"].isna()]
    products = []
    for product in sorted(set(recipes["product"])):
        try:
            products.append({"product": product, "formula": product_formula(product).formula})
        except ChemicalError as error:
            products.append({"product": product, "formula": None, "error": str(error)})
    total = int(coverage["occurrences"].sum())
    report = {
        "distinct_reagents": len(coverage),
        "occurrences": total,
        "resolved_occurrences": total - int(unresolved["occurrences"].sum()),
        "resolved_share": 1.0 - float(unresolved["occurrences"].sum()) / max(1, total),
        "by_kind": coverage.groupby("kind")["occurrences"].sum().astype(int).to_dict(),
        "unresolved": unresolved[["name", "occurrences"]].to_dict("records"),
        "products": len(products),
        "unparsable_products": [p for p in products if p["formula"] is None],
    }
    return Coverage(report, coverage)


@cache
def _element_properties(symbol: str) -> np.ndarray:
    element = Element(symbol)
    radius = element.atomic_radius or element.atomic_radius_calculated
    return np.array(
        [
            element.X if np.isfinite(element.X) else np.nan,
            float(radius) if radius is not None else np.nan,
            float(element.atomic_mass),
            float(element.group),
            float(element.row),
        ]
    )


def composition_features(composition: Composition) -> np.ndarray:
    """Fraction-weighted mean, min and max of element properties, and the element count.

    Args:
        composition: Any composition (fractions are taken from it).

    Returns:
        Vector in the order of ``COMPOSITION_FEATURES``.
    """
    fractions = composition.fractional_composition
    symbols = [e.symbol for e in fractions.elements]
    weights = np.array([fractions[s] for s in symbols])
    properties = np.stack([_element_properties(s) for s in symbols])  # (elements, properties)
    mean = np.nansum(properties * weights[:, None], axis=0) / weights.sum()
    low, high = np.nanmin(properties, axis=0), np.nanmax(properties, axis=0)
    stats = np.stack([mean, low, high], axis=1).reshape(-1)  # prop-major, as the names
    return np.append(stats, len(symbols))


def molecule_features(smiles: str) -> np.ndarray:
    """RDKit descriptors of a molecule (``MOLECULE_FEATURES``).

    Chain length matters for ligands (steric bulk, binding to facets): ``carbon_chain`` is the
    longest shortest path, in atoms, between two chain-end carbons of one fragment.

    Raises:
        ChemicalError: SMILES RDKit cannot parse.
    """
    RDLogger.DisableLog("rdApp.*")
    molecule = Chem.MolFromSmiles(smiles)
    if molecule is None:
        raise ChemicalError(f"SMILES {smiles!r} cannot be parsed")
    pairs = _carbon_ends(molecule)
    if pairs:
        chain = max(len(Chem.GetShortestPath(molecule, a, b)) for a, b in pairs)
    else:
        chain = int(any(atom.GetSymbol() == "C" for atom in molecule.GetAtoms()))
    return np.array(
        [
            Descriptors.MolWt(molecule),
            Descriptors.MolLogP(molecule),
            rdMolDescriptors.CalcTPSA(molecule),
            rdMolDescriptors.CalcNumHBD(molecule),
            rdMolDescriptors.CalcNumHBA(molecule),
            rdMolDescriptors.CalcNumRotatableBonds(molecule),
            molecule.GetNumHeavyAtoms(),
            chain,
        ],
        dtype=float,
    )


def _carbon_ends(molecule: Chem.Mol) -> list[tuple[int, int]]:
    """Pairs of terminal carbons (at most one carbon neighbour) within one fragment."""
    ends = [
        atom.GetIdx()
        for atom in molecule.GetAtoms()
        if atom.GetSymbol() == "C" and sum(n.GetSymbol() == "C" for n in atom.GetNeighbors()) <= 1
    ]
    fragments = Chem.GetMolFrags(molecule)
    fragment_of = {i: f for f, atoms in enumerate(fragments) for i in atoms}
    return [
        (a, b)
        for i, a in enumerate(ends)
        for b in ends[i + 1 :]
        if fragment_of[a] == fragment_of[b]
    ]


def _elements_of(chemical: Chemical) -> Composition | None:
    if chemical.formula:
        try:
            return Composition(chemical.formula.replace("·", ""))
        except (ValueError, KeyError):
            return None
    if chemical.smiles:
        molecule = Chem.MolFromSmiles(chemical.smiles)
        if molecule is not None:
            atoms = Counter(a.GetSymbol() for a in Chem.AddHs(molecule).GetAtoms())
            atoms.pop("*", None)  # open valences of a polymer's repeat unit
            return Composition(dict(atoms)) if atoms else None
    return None


def chemical_features(chemical: Chemical) -> np.ndarray:
    """Descriptor vector of a chemical (``CHEMICAL_FEATURES``); NaN where not applicable."""
    is_molecule = chemical.kind in ("molecule", "polymer") and bool(chemical.smiles)
    molecule = molecule_features(chemical.smiles) if is_molecule else np.full(8, np.nan)
    composition = _elements_of(chemical)
    if composition is None:
        return np.concatenate(
            [[float(is_molecule)], molecule, np.full(len(CHEMICAL_FEATURES) - 9, np.nan)]
        )
    symbols = {e.symbol for e in composition.elements}
    flags = [float(a in symbols) for a in HETERO_ATOMS]
    metal = float(any(Element(s).is_metal or Element(s).is_metalloid for s in symbols))
    return np.concatenate(
        [[float(is_molecule)], molecule, composition_features(composition), flags, [metal]]
    )
