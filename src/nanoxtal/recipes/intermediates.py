"""Reaction-intermediate augmentation: chemically equivalent rewrites of a recipe.

In a hot-injection or heat-up synthesis the weighed-in reagents first react to molecular
intermediates, and it is those that nucleate the crystals (PbO + 2 oleic acid → lead oleate + water
is done on purpose before injection; Se dissolved in trioctylphosphine is TOP=Se). Gu et al.
(arXiv 2412.10838) add such intermediates as inputs and multiply their training data about ten
times. Here each intermediate comes from an RDKit reaction template applied to a concrete pair of
reagents, so the product structure, its formula and the amounts consumed can be checked:

- ``carboxylate``: metal oxide, hydroxide, carbonate, acetate or acetylacetonate + carboxylic acid
  → metal carboxylate M(RCOO)z (z acids per metal ion of charge z; water, CO2, acetic acid or
  acetylacetone leave);
- ``thiolate``: metal salt + thiol → metal thiolate M(SR)z;
- ``amine_complex``: metal halide or nitrate + primary amine → L2MXz complex (dative N→M bonds);
- ``phosphine_chalcogenide``: S, Se or Te + tertiary phosphine → R3P=E (1:1).

An augmented recipe replaces a subset of the applicable reactions' reagents by their product, at
full or partial conversion, with amounts kept stoichiometric (the limiting reagent decides). The
size and shape labels stay those of the source recipe, and ``source_id`` ties each augmented row
to it: augmented rows are training data only, inside their source's fold.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Element
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem, rdMolDescriptors

from nanoxtal.recipes.chemicals import Chemical, Registry

TEMPLATES = ("carboxylate", "thiolate", "amine_complex", "phosphine_chalcogenide")
# Partner reagents, as SMARTS on the organic molecule.
CARBOXYLIC_ACID = "[CX3](=O)[OX2H1]"
THIOL = "[#6][SX2H1]"
PRIMARY_AMINE = "[NX3;H2;!$(NC=[O,S,N])][CX4]"
TERTIARY_PHOSPHINE = "[PX3;!$(P=*);!$(P[#7,#8,#14])]([#6])([#6])[#6]"
CHALCOGENS = ("S", "Se", "Te")
# Which metal sources each template accepts (``anion_class``).
SOURCES = {
    "carboxylate": ("oxide", "hydroxide", "carbonate", "acetate", "acetylacetonate"),
    "thiolate": ("oxide", "acetate", "acetylacetonate", "halide", "nitrate"),
    "amine_complex": ("halide", "nitrate"),
}
AMINES_PER_METAL = 2  # L2MXz: the common stoichiometry of amine adducts of metal halides
# Non-metal parts of an inorganic metal source, by element set.
_ANION_ELEMENTS = {
    frozenset({"O"}): "oxide",
    frozenset({"O", "H"}): "hydroxide",
    frozenset({"C", "O"}): "carbonate",
    frozenset({"N", "O"}): "nitrate",
}
_HALOGENS = frozenset({"F", "Cl", "Br", "I"})
_ACETATE = Chem.MolFromSmarts("[CH3][CX3](=O)[O-]")
_ACAC = Chem.MolFromSmarts("[CH3][CX3](=O)[CH]=[CX3]([CH3])[O-]")
EPSILON_MMOL = 1e-9


class IntermediateError(ValueError):
    """A template cannot be applied to the reagents given; the message says why."""


@dataclass(frozen=True)
class MetalSource:
    """The metal ion of a salt, oxide or complex used as a precursor.

    Attributes:
        metal: Element symbol.
        charge: Oxidation state of the metal (> 0).
        per_unit: Metal ions per formula unit of the source (Cs2CO3: 2).
        anion: ``anion_class`` of the rest.
        ions_smiles: The source as ions (e.g. ``[Cu+].[Cl-]``), kept in amine complexes.
    """

    metal: str
    charge: int
    per_unit: int
    anion: str
    ions_smiles: str


@dataclass(frozen=True)
class Reaction:
    """One applicable template on two reagents of a recipe (positions in its reagent list)."""

    template: str
    source: int
    partner: int


@cache
def _pattern(smarts: str) -> Chem.Mol:
    return Chem.MolFromSmarts(smarts)


def _molecule(chemical: Chemical | None) -> Chem.Mol | None:
    if chemical is None or not chemical.smiles or chemical.kind != "molecule":
        return None
    return _parse(chemical.smiles)


@cache
def _parse(smiles: str) -> Chem.Mol | None:
    RDLogger.DisableLog("rdApp.*")
    return Chem.MolFromSmiles(smiles)


def _matches(chemical: Chemical | None, smarts: str) -> bool:
    molecule = _molecule(chemical)
    # Salts (several fragments) are not free acids, thiols, amines or phosphines.
    return (
        molecule is not None
        and len(Chem.GetMolFrags(molecule)) == 1
        and molecule.HasSubstructMatch(_pattern(smarts))
    )


@cache
def metal_source(chemical: Chemical | None) -> MetalSource | None:
    """The metal ion of a single-metal precursor, or ``None`` when it is not one.

    Inorganic formulas get their oxidation states from pymatgen's ``oxi_state_guesses``;
    molecular salts (acetates, acetylacetonates, as ion SMILES) from the cations' formal charges.
    """
    if chemical is None:
        return None
    if chemical.kind == "inorganic" and chemical.formula:
        return _inorganic_source(chemical.formula)
    molecule = _molecule(chemical)
    if molecule is None:
        return None
    cations = [
        a
        for a in molecule.GetAtoms()
        if Element(a.GetSymbol()).is_metal and a.GetFormalCharge() > 0
    ]
    if not cations or len({a.GetSymbol() for a in cations}) != 1:
        return None
    if molecule.HasSubstructMatch(_ACAC):
        anion = "acetylacetonate"
    elif molecule.HasSubstructMatch(_ACETATE):
        anion = "acetate"
    else:
        return None
    return MetalSource(
        cations[0].GetSymbol(), cations[0].GetFormalCharge(), len(cations), anion, chemical.smiles
    )


@cache
def _inorganic_source(formula: str) -> MetalSource | None:
    try:
        composition = Composition(formula)
        guesses = composition.oxi_state_guesses()
    except (ValueError, KeyError):
        return None
    metals = [e.symbol for e in composition.elements if e.is_metal]
    if len(metals) != 1 or not guesses:
        return None
    metal = metals[0]
    charge = round(guesses[0][metal])
    # Acids such as HAuCl4 count as halides: their protons leave as HCl.
    rest = frozenset(e.symbol for e in composition.elements) - {metal, "H"}
    halide = len(rest) == 1 and rest <= _HALOGENS
    anion = "halide" if halide else _ANION_ELEMENTS.get(rest | ({"H"} & set(map(str, composition))))
    per_unit = composition[metal]
    if anion is None or charge <= 0 or per_unit != int(per_unit):
        return None
    ions = [f"[{metal}+{charge}]"] * int(per_unit)
    # Charge balance decides the anions kept with the metal (Cl- x 3 for HAuCl4).
    if anion == "halide":
        ions += [f"[{next(iter(rest))}-]"] * (charge * int(per_unit))
    elif anion == "nitrate":
        ions += ["[O-][N+](=O)[O-]"] * (charge * int(per_unit))
    return MetalSource(metal, charge, int(per_unit), anion, ".".join(ions))


def _chalcogen(chemical: Chemical | None) -> str | None:
    if chemical is not None and chemical.kind == "element" and chemical.formula in CHALCOGENS:
        return chemical.formula
    return None


def applicable(template: str, source: Chemical | None, partner: Chemical | None) -> bool:
    """Whether ``template`` turns the pair (``source``, ``partner``) into an intermediate."""
    if template == "phosphine_chalcogenide":
        return _chalcogen(source) is not None and _matches(partner, TERTIARY_PHOSPHINE)
    metal = metal_source(source)
    if metal is None or metal.anion not in SOURCES[template]:
        return False
    partner_pattern = {
        "carboxylate": CARBOXYLIC_ACID,
        "thiolate": THIOL,
        "amine_complex": PRIMARY_AMINE,
    }[template]
    return _matches(partner, partner_pattern)


def partners_per_unit(template: str, source: Chemical) -> float:
    """Partner molecules consumed per product unit (one metal ion or one chalcogen atom)."""
    if template == "phosphine_chalcogenide":
        return 1.0
    if template == "amine_complex":
        return float(AMINES_PER_METAL)
    return float(metal_source(source).charge)


def _deprotonate(partner: Chem.Mol, template: str) -> Chem.Mol:
    """Carboxylate or thiolate anion of an acid or thiol (RDKit reaction)."""
    smarts = {
        "carboxylate": "[C:1](=[O:2])[OX2H1:3]>>[C:1](=[O:2])[O-:3]",
        "thiolate": "[#6:1][SX2H1:2]>>[#6:1][S-:2]",
    }[template]
    products = AllChem.ReactionFromSmarts(smarts).RunReactants((partner,))
    product = products[0][0]
    Chem.SanitizeMol(product)
    return product


@cache
def product_smiles(template: str, source: Chemical, partner: Chemical) -> str:
    """SMILES of the intermediate ``template`` forms from one unit of ``source``.

    Raises:
        IntermediateError: The template does not apply to the pair.
    """
    if not applicable(template, source, partner):
        raise IntermediateError(
            f"template {template!r} does not apply to {source.key!r} + {partner.key!r}"
        )
    molecule = _molecule(partner)
    if template == "phosphine_chalcogenide":
        element = _chalcogen(source)
        reaction = AllChem.ReactionFromSmarts(f"[PX3:1]>>[P:1]=[{element}]")
        product = reaction.RunReactants((molecule,))[0][0]
        Chem.SanitizeMol(product)
        return Chem.MolToSmiles(product)
    metal = metal_source(source)
    if template == "amine_complex":
        return _amine_complex(metal, molecule)
    ligand = Chem.MolToSmiles(_deprotonate(molecule, template))
    return Chem.MolToSmiles(
        Chem.MolFromSmiles(".".join([f"[{metal.metal}+{metal.charge}]"] + [ligand] * metal.charge))
    )


def _amine_complex(metal: MetalSource, amine: Chem.Mol) -> str:
    """L2MXz: one metal ion of the source with its anions and two amines bound N→M."""
    cation = f"[{metal.metal}+{metal.charge}]"
    anions = [s for s in metal.ions_smiles.split(".") if s != cation]
    # One metal ion per unit: a source with several (rare for halides) keeps its share of anions.
    anions = anions[: len(anions) // metal.per_unit]
    complex_ = Chem.RWMol(Chem.MolFromSmiles(".".join([cation, *anions])))
    nitrogen = amine.GetSubstructMatch(_pattern(PRIMARY_AMINE))[0]
    for _ in range(AMINES_PER_METAL):
        offset = complex_.GetNumAtoms()
        complex_.InsertMol(amine)
        complex_.AddBond(offset + nitrogen, 0, Chem.BondType.DATIVE)
    product = complex_.GetMol()
    try:
        Chem.SanitizeMol(product)
    except Chem.rdchem.MolSanitizeException as error:  # e.g. Al3+ takes no dative bond in RDKit
        raise IntermediateError(
            f"no amine complex of {metal.metal}{metal.charge}+: {error}"
        ) from error
    return Chem.MolToSmiles(product)


@cache
def intermediate(template: str, source: Chemical, partner: Chemical) -> Chemical:
    """The intermediate as a registry ``Chemical`` (named e.g. ``Pb(OA)2``, ``TOP=Se``).

    Its role is the source's: a metal intermediate is a cation precursor, a phosphine
    chalcogenide an anion precursor.
    """
    smiles = product_smiles(template, source, partner)
    formula = rdMolDescriptors.CalcMolFormula(Chem.MolFromSmiles(smiles))
    if template == "phosphine_chalcogenide":
        key, role = f"{partner.key}={source.formula}", "anion_precursor"
    else:
        metal = metal_source(source)
        count = AMINES_PER_METAL if template == "amine_complex" else metal.charge
        suffix = "" if count == 1 else str(count)
        # Thiolates are marked: one partner (cysteine) can bind as carboxylate or thiolate.
        ligand = f"{partner.key}-S" if template == "thiolate" else partner.key
        key = f"{metal.metal}({ligand}){suffix}"
        if template == "amine_complex":  # the halide or nitrate stays on the complex
            anion = "NO3" if metal.anion == "nitrate" else metal.ions_smiles.split(".")[-1][1:-2]
            key = f"{key}{anion}" if metal.charge == 1 else f"{key}({anion}){metal.charge}"
        role = "cation_precursor"
    return Chemical(
        key=key,
        name=f"{template} from {source.key} and {partner.key}",
        kind="molecule",
        smiles=smiles,
        formula=formula,
        role_hint=role,
    )


def find_reactions(reagents: Sequence[str], registry: Registry) -> list[Reaction]:
    """Every (template, source, partner) pair among a recipe's reagents that forms a product."""
    chemicals = [registry.resolve(name) for name in reagents]
    found = []
    for template in TEMPLATES:
        for s, source in enumerate(chemicals):
            for p, partner in enumerate(chemicals):
                if s != p and _forms(template, source, partner):
                    found.append(Reaction(template, s, p))
    return found


@cache
def _forms(template: str, source: Chemical | None, partner: Chemical | None) -> bool:
    if not applicable(template, source, partner):
        return False
    try:
        product_smiles(template, source, partner)
    except IntermediateError:
        return False
    return True


def react(
    reagents: Sequence[str],
    amounts: Sequence[float],
    roles: Sequence[str],
    reactions: Sequence[Reaction],
    registry: Registry,
    conversion: float = 1.0,
) -> tuple[list[str], list[float], list[str]]:
    """Apply reactions in order with stoichiometric bookkeeping.

    Each reaction makes ``conversion`` × the limiting amount of product: for a source of
    ``a_s`` mmol with ``m`` metal ions per unit and a partner of ``a_p`` mmol needing ``ν`` per
    ion, product = conversion × min(m·a_s, a_p/ν) mmol; the source loses product/m and the partner
    product·ν. Reagents used up disappear; a reaction with nothing left to react is skipped.
    Intermediates are registered in ``registry`` so features can describe them.

    Returns:
        The new reagent names, amounts (mmol) and roles.
    """
    names, mmol, role_of = list(reagents), [float(a) for a in amounts], list(roles)
    used_up: set[int] = set()
    for reaction in reactions:
        source = registry.resolve(names[reaction.source])
        partner = registry.resolve(names[reaction.partner])
        per_unit = (
            1.0 if reaction.template == "phosphine_chalcogenide" else metal_source(source).per_unit
        )
        need = partners_per_unit(reaction.template, source)
        made = conversion * min(per_unit * mmol[reaction.source], mmol[reaction.partner] / need)
        if not made > EPSILON_MMOL:
            continue
        product = intermediate(reaction.template, source, partner)
        registry.register(product)
        mmol[reaction.source] -= made / per_unit
        mmol[reaction.partner] -= made * need
        used_up.update(i for i in (reaction.source, reaction.partner) if mmol[i] <= EPSILON_MMOL)
        names.append(product.key)
        mmol.append(made)
        role_of.append(
            role_of[reaction.source]
            if reaction.template != "phosphine_chalcogenide"
            else product.role_hint
        )
    # Positions stay valid during the loop, so used-up reagents leave only at the end (a reagent
    # the data lists without an amount was never used up and stays).
    kept = [i for i in range(len(names)) if i not in used_up]
    return [names[i] for i in kept], [mmol[i] for i in kept], [role_of[i] for i in kept]


def augment(
    table: pd.DataFrame,
    registry: Registry,
    conversions: Sequence[float] = (1.0, 0.5),
    max_variants: int = 10,
    seed: int = 42,
) -> pd.DataFrame:
    """Augmented recipes: every subset of a recipe's reactions at every conversion.

    Args:
        table: Tidy recipes (``clean_recipes``).
        registry: Chemical registry; the intermediates are registered in it.
        conversions: Fractions of the limiting reagent converted (1 = complete).
        max_variants: At most this many augmented rows per recipe (a seeded sample).
        seed: Seed of that sample.

    Returns:
        Augmented rows with the tidy columns plus ``source_id`` (the source's ``recipe_id``) and
        ``reactions`` (templates applied); their ``recipe_id`` is ``<source>~aug<k>``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _, row in table.iterrows():
        reactions = find_reactions(row["reagents"], registry)
        variants, seen = [], {_signature(row["reagents"], row["amounts_mmol"])}
        for size in range(1, len(reactions) + 1):
            for subset in itertools.combinations(reactions, size):
                for conversion in conversions:
                    names, mmol, roles = react(
                        row["reagents"],
                        row["amounts_mmol"],
                        row["roles"],
                        subset,
                        registry,
                        conversion,
                    )
                    signature = _signature(names, mmol)
                    if signature not in seen:
                        seen.add(signature)
                        variants.append((names, mmol, roles, subset))
        if len(variants) > max_variants:
            chosen = rng.choice(len(variants), size=max_variants, replace=False)
            variants = [variants[i] for i in sorted(chosen)]
        for k, (names, mmol, roles, subset) in enumerate(variants):
            new = row.to_dict()
            new |= {
                "recipe_id": f"{row['recipe_id']}~aug{k}",
                "reagents": names,
                "amounts_mmol": mmol,
                "roles": roles,
                "source_id": row["recipe_id"],
                "reactions": [r.template for r in subset],
            }
            rows.append(new)
    columns = [*table.columns, "source_id", "reactions"]
    return pd.DataFrame(rows, columns=columns)


def _signature(names: Sequence[str], amounts: Sequence[float]) -> tuple:
    return tuple(sorted(zip(names, np.round(np.asarray(amounts, dtype=float), 9), strict=True)))


def summary(table: pd.DataFrame, augmented: pd.DataFrame) -> dict[str, object]:
    """Expansion factor and template counts of an augmentation."""
    templates = Counter(t for applied in augmented["reactions"] for t in applied)
    return {
        "recipes": len(table),
        "augmented_rows": len(augmented),
        "recipes_with_intermediates": int(augmented["source_id"].nunique()),
        "expansion_factor": (len(table) + len(augmented)) / max(1, len(table)),
        "template_uses": dict(templates),
    }
