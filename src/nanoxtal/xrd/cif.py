"""Fast CIF reader for powder diffraction: CIF text to the arrays ``stick_pattern`` needs.

gemmi's C++ parser tokenises the CIF; the rest (element reading, symmetry expansion, merging of
coincident atoms) is a few numpy operations, with no per-atom pymatgen object, so a Materials
Project CIF reads in a fraction of a millisecond. Every choice below that is not plain CIF
semantics is recorded in ``CifRead.notes`` when it is applied.

Choices:

* **Data block**: the first data block with atom sites (``_atom_site_fract_x`` or a label).
  Only fractional coordinates are read (a CIF with Cartesian ones only is refused).
* **Element of a site**: from ``_atom_site_type_symbol`` when given, else from
  ``_atom_site_label`` (AMCSD writes no type symbols). Both go through one reading: the leading
  letters name the element and whatever follows is ignored, so charges and site names drop out
  (``Fe3+`` → Fe, ``O2-`` → O, ``Fe3+M1`` → Fe, ``NaM2`` → Na, ``MgT`` → Mg, ``Oc`` → O,
  ``SiZ`` → Si, ``OII`` → O). The two-letter symbol is the reading when its second letter is
  lower case and it is an element (``Co1`` → Co, ``CO3`` → C). When the CIF has
  ``_chemical_formula_sum`` and that reading's element is not in it but the other reading's is,
  the other is taken (``Fl`` in MgAlF5 → F; ``Po1`` without Po but with P → P; ``CO`` with Co but
  no C → Co), with a note; a reading absent from the formula with no alternative is kept, with a
  note. D and H count as one element in that comparison.
* **Deuterium**: ``D`` (label or type symbol) is read as H, whose X-ray scattering factor it
  shares (pymatgen tabulates identical coefficients), with a note.
* **Water, hydroxyl, ammonium pseudo-atoms**: a label naming a group at one position (water
  ``Wat``, ``Watd``, ``WatM3``, ``Ow``, ``OW4``, ``ODw1``, ``H2OA``; hydroxyl ``OH``, ``O-H3``,
  ``O-h``, ``O(H)``; hydronium ``H3O``, ``H3OA2``; ammonium and ammonia ``NH4``, ``NH3``;
  methane ``CH4``) is read as its heavy atom (O, N, C) at that position. Its H atoms are
  simulated only where the CIF lists them as sites of their own; otherwise they are missing (2 of
  water's 10 electrons, 4 of ammonium's 11: small next to the heavy atoms). The note says which.
* **Symmetry**: the CIF's operators (``_space_group_symop_operation_xyz``,
  ``_symmetry_equiv_pos_as_xyz``) are applied, as pymatgen does; without any, they are
  generated from the Hall or Hermann–Mauguin symbol (gemmi's tables), then from the space group
  number (standard setting); with none of these the structure is read as P1. Each fallback is
  noted.
* **Space group number**: from the CIF's own symbol, Hall symbol or number tags, in that order;
  failing those (a symbol gemmi does not know, such as ``R -3 2/c``), from the operators when
  they are a tabulated setting; else ``None``. Where symbol and operators name different groups
  (a few AMCSD entries), the number follows the symbol and the operators are still the ones
  applied, with a note. The number is of the CIF's own setting: Materials Project CIFs are P1.
* **Merging**: images closer than ``merge_tolerance`` (0.01 Å, periodic) are one position.
  Images of one atom (symmetry generating it twice, on a special position) count once: its
  occupancy is kept, not summed. Different atoms on one position (mixed sites such as
  ``Fe3+M1`` 0.3 + ``MgM1`` 0.7, or two labels of one element) form one site holding each
  element's summed occupancy. The first image keeps its coordinates. pymatgen merges only within
  1e-4 in fractional coordinates, so where a published coordinate is rounded off a special position
  (``0.201`` for 2 × ``0.101``) it keeps two atoms a few thousandths of an Å apart, where this
  reader keeps one.
* **Occupancy**: ``_atom_site_occupancy`` (default 1; ``?`` and ``.`` also mean 1; standard
  uncertainties such as ``0.512(3)`` are dropped). Partial occupancy is kept as given (not
  rescaled); atoms of occupancy 0 are dropped with a note; a position whose occupancies sum above
  ``MAX_OCCUPANCY`` (1.05, rounding in published values) is an error.
* **Refused** (``CifError``): text that is not CIF, no atom sites, no or impossible cell,
  non-numeric coordinates, negative occupancy, an element without X-ray scattering factors
  (pymatgen's table), an invalid symmetry operator, and over-full positions.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import gemmi
import numpy as np
from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS
from pymatgen.core import Composition

from nanoxtal.xrd.diffraction import SiteArrays, reciprocal_rows

# Images of atoms closer than this (Å) are one position.
MERGE_TOLERANCE = 0.01
# Largest total occupancy of one position accepted (published occupancies are rounded).
MAX_OCCUPANCY = 1.05

_ELEMENTS = frozenset(gemmi.Element(z).name for z in range(1, 119))
_SYMOP_TAGS = (
    "_space_group_symop_operation_xyz",
    "_symmetry_equiv_pos_as_xyz",
    "_space_group_symop.operation_xyz",
    "_symmetry_equiv.pos_as_xyz",
)
_HM_TAGS = (
    "_space_group_name_H-M_alt",
    "_symmetry_space_group_name_H-M",
    "_space_group.name_H-M_alt",
    "_symmetry.space_group_name_H-M",
)
_HALL_TAGS = (
    "_space_group_name_Hall",
    "_symmetry_space_group_name_Hall",
    "_space_group.name_Hall",
    "_symmetry.space_group_name_Hall",
)
_NUMBER_TAGS = (
    "_space_group_IT_number",
    "_symmetry_Int_Tables_number",
    "_space_group.IT_number",
    "_symmetry.Int_Tables_number",
)
_CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
# Pseudo-atoms: a group at one position, read as its heavy atom (see the module docstring).
# The group name must not run on into lower-case letters ("Ow" yes, "Owl" no).
_PSEUDO_ATOMS = (
    (re.compile(r"[Ww][Aa][Tt]|O[Ww](?![a-z])|OD[Ww](?![a-z])"), "O", "water"),
    (re.compile(r"O(?:H|h|-H|-h|\(H\))(?![a-z])"), "O", "hydroxyl"),
    (re.compile(r"H2O(?![a-z])"), "O", "water"),
    (re.compile(r"H3O(?![a-z])"), "O", "hydronium"),
    (re.compile(r"NH4(?![a-z])"), "N", "ammonium"),
    (re.compile(r"NH3(?![a-z])"), "N", "ammonia"),
    (re.compile(r"CH4(?![a-z])"), "C", "methane"),
)
_IDENTITY = gemmi.Op("x,y,z")
_SITE_FIELDS = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "occupancy")
_LETTERS = re.compile(r"[A-Za-z]+")
_FORMULA_SYMBOL = re.compile(r"[A-Z][a-z]?")


class CifError(ValueError):
    """A CIF cannot be read; the message says why."""


@dataclass(frozen=True)
class CifRead:
    """One structure read from a CIF.

    Attributes:
        sites: Every atom of the unit cell in the CIF's own (published) setting, symmetry
            applied, coincident atoms merged (lattice rows in Å, fractional coordinates,
            per-element occupancies).
        space_group: ITA number (1-230) from the CIF's own symbol, Hall symbol or number tags
            (from its operators when those tags are unknown), ``None`` when there is none.
        mineral: ``_chemical_name_mineral`` when present.
        notes: Every quirk applied in reading, human readable.
    """

    sites: SiteArrays
    space_group: int | None
    mineral: str | None
    notes: tuple[str, ...]

    @functools.cached_property
    def formula(self) -> str:
        """Reduced formula of the cell contents, occupancy-weighted.

        pymatgen's ``Composition.reduced_formula``, computed when first asked: simulating
        needs no formula, and computing it was 15 % of the reading time.
        """
        amounts = self.sites.occupancy.sum(axis=0).tolist()
        with warnings.catch_warnings():
            # pymatgen warns that noble gases have no electronegativity (formula order): noise.
            warnings.simplefilter("ignore")
            return Composition(dict(zip(self.sites.elements, amounts, strict=True))).reduced_formula


@dataclass(frozen=True)
class _Atoms:
    """The asymmetric unit as listed: one entry per atom-site row of occupancy > 0."""

    labels: list[str]
    elements: list[str]
    frac: np.ndarray  # (n, 3)
    occupancy: np.ndarray  # (n,)


def read_cif(text: str, merge_tolerance: float = MERGE_TOLERANCE) -> CifRead:
    """Read the first structure of a CIF text, in the CIF's own setting.

    Args:
        text: CIF text (CIF 1.1 or 2.0 syntax).
        merge_tolerance: Atoms closer than this after applying symmetry are one position, Å.

    Returns:
        The unit cell contents, space group number, formula, mineral name and notes.

    Raises:
        CifError: If the text is not CIF or lacks what a diffraction pattern needs; the message
            says which.
    """
    notes: list[str] = []
    block = _structure_block(text)
    lattice, atoms, operators, listed = _asymmetric_unit(block, notes)
    space_group = _space_group_number(block, operators if listed else None, notes)
    sites = _merged_sites(lattice, atoms, operators, merge_tolerance, notes)
    mineral = _text_value(block, "_chemical_name_mineral")
    return CifRead(sites, space_group, mineral, tuple(dict.fromkeys(notes)))


def read_cif_sites(text: str, merge_tolerance: float = MERGE_TOLERANCE) -> SiteArrays:
    """``read_cif(text).sites`` alone: what a simulation needs.

    The same reading, without the space group's look-up, the mineral name or the notes.

    Raises:
        CifError: As ``read_cif``.
    """
    notes: list[str] = []  # the same reading as read_cif's; nobody reads them here
    lattice, atoms, operators, _ = _asymmetric_unit(_structure_block(text), notes)
    return _merged_sites(lattice, atoms, operators, merge_tolerance, notes)


def _asymmetric_unit(
    block: gemmi.cif.Block, notes: list[str]
) -> tuple[np.ndarray, _Atoms, list[gemmi.Op], bool]:
    """Lattice rows (Å), the atom sites, the operators, and whether the CIF lists them."""
    lattice = _lattice(block, notes)
    atoms = _atoms(block, notes)
    operators, listed = _operators(block, notes)
    return lattice, atoms, operators, listed


# --- CIF access ------------------------------------------------------------------------------


def _structure_block(text: str) -> gemmi.cif.Block:
    """The first data block with atom sites."""
    try:
        document = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as error:
        raise CifError(f"not CIF: {error}") from error
    if len(document) == 0:
        raise CifError("not CIF: no data block (data_...)")
    for block in document:
        if block.find_values("_atom_site_fract_x"):
            return block
        if block.find_values("_atom_site_Cartn_x"):
            raise CifError("only Cartesian atom coordinates (_atom_site_Cartn_x): not supported")
        if block.find_values("_atom_site_label") or block.find_values("_atom_site_type_symbol"):
            return block  # refused later, naming the missing coordinates
    raise CifError("no atom sites (no _atom_site_fract_x or _atom_site_label in any data block)")


def _unquoted(raw: str) -> str:
    """A CIF value without its quotes (gemmi returns values as written)."""
    return gemmi.cif.as_string(raw) if raw[:1] in "'\";" else raw


def _all_unquoted(raw: list[str]) -> list[str]:
    """``_unquoted`` of each value; one scan of the joined text when none is quoted."""
    joined = "".join(raw)
    if "'" in joined or '"' in joined or ";" in joined:
        return [_unquoted(v) for v in raw]
    return raw


def _number(raw: str) -> float:
    """A CIF number, standard uncertainty dropped (``0.512(3)`` → 0.512); NaN if not a number."""
    return gemmi.cif.as_number(_unquoted(raw))


def _numbers(raw: Sequence[str], unknown: float = math.nan) -> np.ndarray:
    """CIF numbers as floats: ``unknown`` for ``?`` and ``.``, NaN where not a number."""
    values = np.fromiter(map(gemmi.cif.as_number, raw), float, len(raw))
    # gemmi reads quoted numbers ('0.5') as NaN: only NaNs take the slower path.
    for i in np.flatnonzero(np.isnan(values)):
        values[i] = unknown if raw[i] in ("?", ".") else _number(raw[i])
    return values


def _text_value(block: gemmi.cif.Block, tag: str) -> str | None:
    """A single text value, ``None`` when absent, unknown (``?``) or inapplicable (``.``)."""
    raw = block.find_value(tag)
    if raw is None or raw in ("?", "."):
        return None
    value = _unquoted(raw).strip()
    return value or None


def _first_value(block: gemmi.cif.Block, tags: Iterable[str]) -> tuple[str, str] | None:
    """(tag, value) of the first of ``tags`` with a value."""
    for tag in tags:
        value = _text_value(block, tag)
        if value is not None:
            return tag, value
    return None


# --- cell ------------------------------------------------------------------------------------


def lattice_from_parameters(
    a: float, b: float, c: float, alpha: float, beta: float, gamma: float
) -> np.ndarray:
    """Lattice vectors as rows (Å) from cell lengths (Å) and angles (degrees).

    The orientation is pymatgen's ``Lattice.from_parameters`` (c along z, a in the xz plane), so
    coordinates and lattice match pymatgen's reading of the same CIF exactly.

    Raises:
        CifError: If the angles cannot form a cell.
    """
    cos_alpha, cos_beta, cos_gamma = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    sin_alpha, sin_beta = math.sin(math.radians(alpha)), math.sin(math.radians(beta))
    # (V / abc)²: positive exactly when the three angles can meet at a corner.
    volume_factor = 1.0 - cos_alpha**2 - cos_beta**2 - cos_gamma**2
    volume_factor += 2.0 * cos_alpha * cos_beta * cos_gamma
    if volume_factor <= 1e-12:
        raise CifError(f"impossible cell angles α={alpha}°, β={beta}°, γ={gamma}° (no volume)")
    val = (cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta)
    gamma_star = math.acos(min(1.0, max(-1.0, val)))
    lattice = np.array(
        [
            [a * sin_beta, 0.0, a * cos_beta],
            [
                -b * sin_alpha * math.cos(gamma_star),
                b * sin_alpha * math.sin(gamma_star),
                b * cos_alpha,
            ],
            [0.0, 0.0, c],
        ]
    )
    return lattice


def _lattice(block: gemmi.cif.Block, notes: list[str]) -> np.ndarray:
    """The cell of a block as lattice rows, Å."""
    values = []
    for tag in _CELL_TAGS:
        raw = block.find_value(tag)
        if raw is None:
            raise CifError(f"no cell: {tag} missing")
        value = _number(raw)
        if not math.isfinite(value):
            value = _comma_number(raw)
            if not math.isfinite(value):
                raise CifError(f"no cell: {tag} is not a number ({raw!r})")
            notes.append(f"{tag} {raw!r} read as {value} (decimal or stray comma)")
        values.append(value)
    if min(values[:3]) <= 0.0:
        raise CifError(f"cell lengths must be positive, got {values[:3]} Å")
    return lattice_from_parameters(*values)


def _comma_number(raw: str) -> float:
    """A number written with a decimal comma (``3,2518``) or a trailing one (``6.4235,``)."""
    text = _unquoted(raw).strip().rstrip(",")
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    return gemmi.cif.as_number(text)


# --- atoms -----------------------------------------------------------------------------------


def _formula_elements(block: gemmi.cif.Block) -> frozenset[str] | None:
    """Element symbols of ``_chemical_formula_sum`` (D counted as H too), ``None`` if absent."""
    formula = _text_value(block, "_chemical_formula_sum")
    if formula is None:
        return None
    symbols = set(_FORMULA_SYMBOL.findall(formula)) & (_ELEMENTS | {"D"})
    if symbols & {"D", "H"}:
        symbols |= {"D", "H"}
    return frozenset(symbols) or None


def _pseudo_atom(symbol: str) -> tuple[str, str] | None:
    """(element, group) when ``symbol`` names a water, hydroxyl or similar group."""
    for pattern, element, group in _PSEUDO_ATOMS:
        if pattern.match(symbol):
            return element, group
    return None


def element_of(
    symbol: str, formula: frozenset[str] | None = None, source: str = "label"
) -> tuple[str, str | None]:
    """The element a type symbol or atom label stands for (module docstring: the rules).

    Args:
        symbol: ``_atom_site_type_symbol`` or ``_atom_site_label`` value (``Fe3+``, ``NaM2``).
        formula: Element symbols of ``_chemical_formula_sum``, to settle one- against
            two-letter readings; ``None`` when the CIF has none.
        source: What ``symbol`` is (``label`` or ``type symbol``), for the note.

    Returns:
        The element symbol, and a note when the reading needed more than the leading letters
        (deuterium, pseudo-atoms, formula correction), else ``None``.

    Raises:
        CifError: If no element can be read.
    """
    pseudo = _pseudo_atom(symbol)
    if pseudo is not None:
        element, group = pseudo
        return element, f"{source} {symbol!r} read as {element} ({group} group at one position)"
    match = _LETTERS.match(symbol)
    if match is None:
        raise CifError(f"no element symbol in atom site {symbol!r}")
    letters = match.group(0)
    one = letters[0].upper()
    two = one + letters[1].lower() if len(letters) > 1 else ""
    one_ok = one in _ELEMENTS or one == "D"
    two_ok = two in _ELEMENTS
    if two_ok and (letters[1].islower() or not one_ok):
        written, other = two, (one if one_ok else None)
    elif one_ok:
        written, other = one, (two if two_ok else None)
    else:
        raise CifError(f"no element symbol in atom site {symbol!r}")
    element, note = written, None
    if formula is not None and written not in formula:
        if other is not None and other in formula:
            element = other
            note = (
                f"{source} {symbol!r} read as {other}, not {written}: _chemical_formula_sum has "
                f"{other} but no {written}"
            )
        else:
            note = f"{source} {symbol!r} read as {written}, which _chemical_formula_sum lacks"
    if element == "D":
        deuterium = f"{source} {symbol!r} read as H (deuterium: the X-ray scattering of H)"
        return "H", deuterium if note is None else f"{note}; {deuterium}"
    return element, note


# Symbols repeat across CIFs (O, Fe, ...): the reading is pure, so it is cached.
_element_of_cached = functools.lru_cache(maxsize=4096)(element_of)


def _site_elements(
    labels: Sequence[str], type_symbols: Sequence[str] | None, block: gemmi.cif.Block
) -> tuple[list[str], list[str]]:
    """Element of each site, and the notes of their readings (one per distinct symbol)."""
    formula = _formula_elements(block)
    symbols = (
        [
            ("type symbol", t) if t not in ("?", ".") else ("label", label)
            for t, label in zip(type_symbols, labels, strict=True)
        ]
        if type_symbols is not None
        else [("label", label) for label in labels]
    )
    read = {key: _element_of_cached(key[1], formula, key[0]) for key in dict.fromkeys(symbols)}
    for key, (element, _) in read.items():  # checked once per distinct symbol
        if element not in ATOMIC_SCATTERING_PARAMS:
            label = labels[symbols.index(key)]
            raise CifError(f"no X-ray scattering factors for element {element!r} (site {label!r})")
    elements = [read[key][0] for key in symbols]
    return elements, [note for _, note in read.values() if note is not None]


def _site_columns(block: gemmi.cif.Block) -> dict[str, list[str]]:
    """The atom-site fields present (``_SITE_FIELDS``), as written (quotes kept).

    Reads the loop's flat value list in one call: per-value access through gemmi's tables
    would dominate the read time of a small structure.
    """
    loop = block.find_loop("_atom_site_fract_x").get_loop()
    if loop is None:  # one atom, written as tag-value pairs
        pairs = {f: block.find_value(f"_atom_site_{f}") for f in _SITE_FIELDS}
        return {f: [v] for f, v in pairs.items() if v is not None}
    width, values = loop.width(), loop.values
    index = {tag.lower(): j for j, tag in enumerate(loop.tags)}
    return {
        f: values[index[f"_atom_site_{f}"] :: width]
        for f in _SITE_FIELDS
        if f"_atom_site_{f}" in index
    }


def _atoms(block: gemmi.cif.Block, notes: list[str]) -> _Atoms:
    """The atom sites of a block, with elements read and zero occupancies dropped."""
    columns = _site_columns(block)
    missing = [f"_atom_site_{f}" for f in ("fract_x", "fract_y", "fract_z") if f not in columns]
    if missing:
        raise CifError(f"atom sites lack fractional coordinates ({', '.join(missing)})")
    n = len(columns["fract_x"])
    if n == 0:
        raise CifError("no atom sites (empty _atom_site_ loop)")
    type_symbols = columns.get("type_symbol")
    if "label" in columns:
        labels = _all_unquoted(columns["label"])
    elif type_symbols is not None:
        labels = [f"{t}#{i + 1}" for i, t in enumerate(_all_unquoted(type_symbols))]
    else:
        raise CifError("atom sites have neither _atom_site_label nor _atom_site_type_symbol")
    if type_symbols is not None:
        type_symbols = _all_unquoted(type_symbols)
    xyz = columns["fract_x"] + columns["fract_y"] + columns["fract_z"]
    frac = _numbers(xyz).reshape(3, n).T
    bad = np.flatnonzero(~np.isfinite(frac).all(axis=1))
    if len(bad):
        i = int(bad[0])
        values = [xyz[i + axis * n] for axis in range(3)]
        raise CifError(f"site {labels[i]!r}: coordinates are not numbers: {values}")
    occupancy = _occupancies(columns.get("occupancy"), labels)
    elements, element_notes = _site_elements(labels, type_symbols, block)
    _note_hydrogen_of_groups(element_notes, elements)
    notes.extend(element_notes)
    empty = occupancy == 0.0
    if not empty.any():
        return _Atoms(labels, elements, frac, occupancy)
    notes.append(f"sites of occupancy 0 dropped: {[labels[i] for i in np.flatnonzero(empty)]}")
    keep = np.flatnonzero(~empty)
    if len(keep) == 0:
        raise CifError("no atom sites with occupancy above 0")
    return _Atoms(
        labels=[labels[i] for i in keep],
        elements=[elements[i] for i in keep],
        frac=frac[keep],
        occupancy=occupancy[keep],
    )


def _occupancies(raw: list[str] | None, labels: Sequence[str]) -> np.ndarray:
    """Occupancy of each site: 1 where absent, unknown (``?``) or inapplicable (``.``)."""
    if raw is None:
        return np.ones(len(labels))
    occupancy = _numbers(raw, unknown=1.0)
    bad = np.flatnonzero(~np.isfinite(occupancy) | (occupancy < 0.0))
    if len(bad):
        i = int(bad[0])
        raise CifError(f"site {labels[i]!r}: occupancy {raw[i]!r} is not a number ≥ 0")
    return occupancy


def _note_hydrogen_of_groups(notes: list[str], elements: Sequence[str]) -> None:
    """Complete pseudo-atom notes with whether the CIF lists H sites (in place)."""
    where = (
        "its H atoms are simulated only where listed as sites of their own"
        if "H" in elements
        else "its H atoms are not located in this CIF and not simulated"
    )
    for i, note in enumerate(notes):
        if note.endswith("group at one position)"):
            notes[i] = note[:-1] + f"; {where})"


# --- symmetry --------------------------------------------------------------------------------


def _operators(block: gemmi.cif.Block, notes: list[str]) -> tuple[list[gemmi.Op], bool]:
    """The symmetry operators to apply, and whether the CIF lists them itself.

    The CIF's own operators, else those of its symbols, else the identity (P1).
    """
    for tag in _SYMOP_TAGS:
        triplets = [_unquoted(v) for v in block.find_values(tag)]
        if triplets:
            return [_operator(t) for t in triplets], True
    group = _group_from_tags(block)
    if group is not None:
        tag, value, space_group = group
        notes.append(f"no symmetry operators: generated from {tag} {value!r} ({space_group.xhm()})")
        return list(space_group.operations()), False
    notes.append("no symmetry operators or space group: read as P1")
    return [_IDENTITY], False


def _operator(triplet: str) -> gemmi.Op:
    """One symmetry operator from its xyz form, checked to be a rotation or rotoinversion."""
    try:
        op = gemmi.Op(triplet)
    except (RuntimeError, ValueError) as error:
        raise CifError(f"invalid symmetry operator {triplet!r}: {error}") from error
    if abs(op.det_rot()) != gemmi.Op.DEN**3:
        raise CifError(f"invalid symmetry operator {triplet!r}: not a symmetry operation")
    return op


def _group_from_tags(block: gemmi.cif.Block) -> tuple[str, str, gemmi.SpaceGroup] | None:
    """(tag, value, group) from the first H-M, Hall or number tag gemmi recognises."""
    for tags, lookup in (
        (_HM_TAGS, gemmi.find_spacegroup_by_name),
        (_HALL_TAGS, _group_by_hall),
        (_NUMBER_TAGS, _group_by_number),
    ):
        for tag in tags:
            value = _text_value(block, tag)
            if value is None:
                continue
            group = lookup(value)
            if group is not None:
                return tag, value, group
    return None


def _group_by_hall(hall: str) -> gemmi.SpaceGroup | None:
    """The group of a Hall symbol, ``None`` if gemmi cannot parse it or has no such setting."""
    try:
        return gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(hall))
    except (RuntimeError, ValueError):
        return None


def _group_by_number(number: str) -> gemmi.SpaceGroup | None:
    """The standard setting of an ITA number, ``None`` if it is not one (1-230)."""
    try:
        value = gemmi.cif.as_int(number, 0)
    except (RuntimeError, ValueError):
        return None
    return gemmi.find_spacegroup_by_number(value) if 1 <= value <= 230 else None


def _space_group_number(
    block: gemmi.cif.Block, operators: Sequence[gemmi.Op] | None, notes: list[str]
) -> int | None:
    """ITA number from the symbol, Hall or number tags, else from the CIF's own operators.

    Args:
        block: The CIF block.
        operators: The operators the CIF lists, ``None`` when it lists none.
        notes: Notes, appended to.
    """
    group = _group_from_tags(block)
    by_operators = _group_by_operators(operators) if operators is not None else None
    if group is None:
        if by_operators is None:
            return None
        symbol = _first_value(block, _HM_TAGS)
        unknown = f" (symbol {symbol[1]!r} unknown)" if symbol is not None else ""
        notes.append(f"space group {by_operators.number} from the symmetry operators{unknown}")
        return by_operators.number
    tag, value, space_group = group
    if by_operators is not None and by_operators.number != space_group.number:
        notes.append(
            f"{tag} {value!r} is space group {space_group.number} but the CIF's "
            f"{len(operators)} symmetry operators form group {by_operators.number} "
            f"({by_operators.xhm()}); the operators are applied"
        )
    return space_group.number


def _group_by_operators(operators: Sequence[gemmi.Op]) -> gemmi.SpaceGroup | None:
    """The tabulated space group (any setting gemmi knows) the operators form, if any."""
    if len(operators) == 1:
        return gemmi.find_spacegroup_by_number(1) if _is_identity(operators[0]) else None
    try:
        return gemmi.find_spacegroup_by_ops(gemmi.GroupOps(list(operators)))
    except (RuntimeError, ValueError):
        return None


def _is_identity(op: gemmi.Op) -> bool:
    """Whether an operator is x,y,z up to a lattice translation."""
    return op.wrap().seitz() == _IDENTITY.seitz()


# --- expansion and merging -------------------------------------------------------------------


def _images(frac: np.ndarray, operators: Sequence[gemmi.Op]) -> np.ndarray:
    """Every operator applied to every atom, (n_atoms, n_operators, 3), wrapped into [0, 1)."""
    if len(operators) == 1 and _is_identity(operators[0]):  # P1: no product to form
        images = frac[:, None, :].copy()
    else:
        rotations = np.array([op.rot for op in operators], dtype=float) / gemmi.Op.DEN
        translations = np.array([op.tran for op in operators], dtype=float) / gemmi.Op.DEN
        images = np.einsum("kij,nj->nki", rotations, frac) + translations[None, :, :]
    images -= np.floor(images)
    images[images >= 1.0] = 0.0  # -1e-17 wraps to 1 - 1e-17, which rounds to 1.0
    return images


def _distinct_images(images: np.ndarray) -> np.ndarray:
    """Mask (n_atoms, n_operators) of each atom's images that do not repeat an earlier image.

    An atom on a special position is generated several times by its site-symmetry operators.
    Exact repeats (coordinates equal to 1e-6) are found here by sorting, in O(k log k) per
    atom; near repeats (rounded published coordinates, or a repeat split by a rounding edge)
    are left to the merge within the tolerance, which also counts them as one atom.
    """
    n_atoms, n_operators, _ = images.shape
    if n_operators == 1:
        return np.ones((n_atoms, 1), dtype=bool)
    grid = 1_000_000
    q = np.rint(images * grid).astype(np.int64) % grid  # 1.0 and 0.0 share a key
    key = (q[..., 0] * grid + q[..., 1]) * grid + q[..., 2]  # < 10¹⁸: fits int64
    order = np.argsort(key, axis=1, kind="stable")  # stable: the first operator's image stays
    ordered = np.take_along_axis(key, order, axis=1)
    repeat = np.zeros_like(ordered, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    distinct = np.empty_like(repeat)
    np.put_along_axis(distinct, order, ~repeat, axis=1)
    return distinct


def _first_close(points: np.ndarray, lattice: np.ndarray, tolerance: float) -> np.ndarray | None:
    """For each point, the index of the first point within tolerance (itself if none earlier).

    Args:
        points: Fractional coordinates in [0, 1), (n, 3).
        lattice: Lattice vectors as rows, Å.
        tolerance: Distance, Å.

    Returns:
        The indices, or ``None`` when no two points are within tolerance (the usual case).
    """
    find = _all_close_pairs if len(points) <= ALL_PAIRS_MAX else _window_close_pairs
    pairs = find(points, lattice, tolerance)
    if pairs is None:
        return None
    i, j = pairs
    first = np.arange(len(points))
    np.minimum.at(first, np.maximum(i, j), np.minimum(i, j))
    # Chains (a ~ b ~ c with a !~ c) collapse onto the earliest point.
    while True:
        root = first[first]
        if np.array_equal(root, first):
            return first
        first = root


# Up to this many points every pair is measured at once: fewer numpy calls than the window
# search, for the few dozen atoms of a typical cell.
ALL_PAIRS_MAX = 48


def _all_close_pairs(
    points: np.ndarray, lattice: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pairs (i, j) of distinct points within tolerance, measuring all n² pairs."""
    close = _squared_distance(points[:, None, :] - points[None, :, :], lattice) < tolerance**2
    if np.count_nonzero(close) == len(points):  # each point close to itself only
        return None
    i, j = np.nonzero(np.triu(close, 1))
    return i, j


def _squared_distance(delta: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Squared length (Å²) of fractional differences (..., 3), each to its nearest image.

    The nearest lattice translation (rounding each component) gives the shortest image at
    the merge tolerance's distances, far below any cell edge.
    """
    cartesian = (delta - np.rint(delta)) @ lattice
    return np.einsum("...k,...k->...", cartesian, cartesian)


def _window_close_pairs(
    points: np.ndarray, lattice: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pairs (i, j) of distinct points within tolerance, searching a window of x.

    Two points within the tolerance differ in fractional x by at most tolerance·|a*|, so only
    pairs within that window of x (sorted, periodic) are candidates; they are then checked in
    Å. Near-linear in the number of points, where all pairs would be quadratic.
    """
    n = len(points)
    window = tolerance * math.hypot(*reciprocal_rows(lattice)[0])
    order = np.argsort(points[:, 0], kind="stable")
    x = points[order, 0]
    # Periodic: the sorted points follow again one cell on, so windows reach across x = 1.
    ends = np.searchsorted(np.concatenate([x, x + 1.0]), x + window, side="right")
    counts = np.minimum(ends - np.arange(n) - 1, n - 1)  # candidates following each point
    total = int(counts.sum())
    if total == 0:
        return None
    left = np.repeat(np.arange(n), counts)
    right = left + 1 + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    i, j = order[left], order[right % n]
    close = (_squared_distance(points[i] - points[j], lattice) < tolerance**2) & (i != j)
    if not close.any():
        return None
    return i[close], j[close]


def _merged_sites(
    lattice: np.ndarray,
    atoms: _Atoms,
    operators: Sequence[gemmi.Op],
    tolerance: float,
    notes: list[str],
) -> SiteArrays:
    """Apply the operators, merge coincident atoms, and build the kernel's site arrays."""
    images = _images(atoms.frac, operators)
    keep = _distinct_images(images)
    atom_of_image = np.nonzero(keep)[0]
    points = images[keep]  # atom-major, operator order within an atom (as pymatgen lists them)
    first = _first_close(points, lattice, tolerance)
    elements = tuple(dict.fromkeys(atoms.elements))
    column = np.array([elements.index(e) for e in atoms.elements])
    if first is None:  # nothing coincides (the usual P1 case): one atom per site
        n_sites, frac_coords = len(points), points
        site, atom = np.arange(n_sites), atom_of_image
    else:
        # first[i] <= i, and a site's first image is its own first: sites in order of appearance.
        is_site = first == np.arange(len(first))
        site_of_image = (np.cumsum(is_site) - 1)[first]
        n_sites, frac_coords = int(is_site.sum()), points[is_site]
        # One contribution per (site, atom): the same atom reaching a site twice counts once.
        n_atoms = len(atoms.labels)
        site, atom = np.divmod(np.unique(site_of_image * n_atoms + atom_of_image), n_atoms)
        # Without a shared position only repeats of single atoms merged: nothing to note.
        shared = int((np.bincount(site, minlength=n_sites) > 1).sum())
        if shared:
            notes.append(
                f"{shared} positions hold several atom sites (mixed or coincident labels): "
                "their occupancies are combined per element"
            )
    occupancy = np.bincount(
        site * len(elements) + column[atom],
        weights=atoms.occupancy[atom],
        minlength=n_sites * len(elements),
    ).reshape(n_sites, len(elements))
    _check_occupancy(occupancy, site, atom, atoms, frac_coords)
    return SiteArrays(
        lattice=lattice, frac_coords=frac_coords, elements=elements, occupancy=occupancy
    )


def _check_occupancy(
    occupancy: np.ndarray, site: np.ndarray, atom: np.ndarray, atoms: _Atoms, frac: np.ndarray
) -> None:
    """Refuse positions whose total occupancy exceeds ``MAX_OCCUPANCY``."""
    totals = occupancy.sum(axis=1)
    over = np.flatnonzero(totals > MAX_OCCUPANCY)
    if len(over) == 0:
        return
    worst = int(over[np.argmax(totals[over])])
    labels = [atoms.labels[a] for a in atom[site == worst]]
    position = ", ".join(f"{x:.4f}" for x in frac[worst])
    raise CifError(
        f"occupancies sum to {totals[worst]:.3f} > {MAX_OCCUPANCY} on one position "
        f"({position}: sites {labels}); {len(over)} such positions"
    )
