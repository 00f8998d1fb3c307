"""Crystal structures for XRD: read, symmetrize, label, split by formula.

Symmetry comes from spglib (through pymatgen's ``SpacegroupAnalyzer``) at a given tolerance;
each structure is kept as its conventional standard cell, labelled with its space group (ITA
number 1-230) and crystal system (0 triclinic ... 6 cubic). Structures that cannot be used are
returned as rejects with the reason, never dropped silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pyxtal import pyxtal as PyXtal
from pyxtal.msg import Comp_CompatibilityError
from pyxtal.symmetry import Group
from tqdm.auto import tqdm

from nanoxtal.xrd.diffraction import SimulationError, SiteArrays

CRYSTAL_SYSTEMS = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)
# First space group number of each crystal system (International Tables Vol. A).
_FIRST_SPACE_GROUP = np.array([1, 3, 16, 75, 143, 168, 195])
SPLITS = ("train", "val", "test")
TABLE_COLUMNS = (
    "id",
    "formula",
    "space_group",
    "crystal_system",
    "split",
    "n_sites",
    "lattice",
    "species",
    "frac_coords",
)


class StructureError(ValueError):
    """A structure cannot be used; the message says why."""


def crystal_system(space_group: int) -> int:
    """Crystal system index (0 triclinic ... 6 cubic) of a space group number (1-230)."""
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group number must be 1-230, got {space_group}")
    return int(np.searchsorted(_FIRST_SPACE_GROUP, space_group, side="right") - 1)


@dataclass(frozen=True)
class Source:
    """One structure as read, before symmetry analysis.

    Attributes:
        id: Identifier (a Materials Project id, or file name and block).
        cif: CIF text, or ``None`` when ``error`` says why it could not be read.
        error: Why the entry could not be read, else ``None``.
    """

    id: str
    cif: str | None
    error: str | None = None


def _sources_from_csv(path: Path) -> Iterator[Source]:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        yield Source(str(path), None, f"unreadable table: {error}")
        return
    if "cif" not in table.columns:
        yield Source(str(path), None, f"no 'cif' column (columns: {list(table.columns)})")
        return
    yield from sources_from_table(table, [f"{path.name}:{i}" for i in range(len(table))])


def sources_from_table(table: pd.DataFrame, default_ids: Sequence[str]) -> Iterator[Source]:
    """Structures of a table with a ``cif`` column, named by its ``material_id`` or ``id``.

    Args:
        table: One structure per row; a ``cif`` column of CIF texts.
        default_ids: The names of the rows when the table has neither id column.
    """
    ids = next((table[c] for c in ("material_id", "id") if c in table.columns), None)
    ids = ids.astype(str) if ids is not None else default_ids
    for entry_id, cif in zip(ids, table["cif"], strict=True):
        if isinstance(cif, str) and cif.strip():
            yield Source(entry_id, cif)
        else:
            yield Source(entry_id, None, "empty CIF")


def _sources_from_cif(path: Path) -> Iterator[Source]:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        yield Source(str(path), None, f"unreadable file: {error}")
        return
    yield Source(path.stem, text)


def read_sources(paths: Iterable[Path | str]) -> Iterator[Source]:
    """Structures from CIF files, folders of CIF files, and CSV(.gz) tables with a ``cif`` column.

    Unreadable inputs are yielded as sources with an ``error``; the rest go on.
    """
    for path in map(Path, paths):
        if not path.exists():
            yield Source(str(path), None, "no such file or folder")
        elif path.is_dir():
            for cif in sorted(path.rglob("*.cif")):
                yield from _sources_from_cif(cif)
        elif path.name.endswith((".csv", ".csv.gz")):
            yield from _sources_from_csv(path)
        elif path.suffix.lower() == ".cif":
            yield from _sources_from_cif(path)
        else:
            yield Source(str(path), None, "not a CIF file, folder of CIFs or CSV with a cif column")


def parse_cif(text: str) -> Structure:
    """The first structure of a CIF text, as written (no reduction).

    Raises:
        StructureError: If pymatgen cannot build a structure from it.
    """
    with warnings.catch_warnings():
        # pymatgen warns about rounding coordinates to ideal values: harmless, and noisy.
        warnings.simplefilter("ignore")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise StructureError(f"invalid CIF: {error}") from error
    if not structures:
        raise StructureError("invalid CIF: no structure in it")
    return structures[0]


# What ``simulation_inputs`` reads: structures, paths, or a table of either kind.
StructureInput = Structure | Path | str | pd.DataFrame
StructureInputs = StructureInput | Sequence[StructureInput] | Mapping[str, Structure]
# A structure ready for ``stick_pattern``, or the reason there is none.
Simulable = Structure | SiteArrays | str
SITE_COLUMNS = ("id", "lattice", "species", "frac_coords")


def simulation_inputs(structures: StructureInputs) -> Iterator[tuple[str, Simulable]]:
    """Every structure of the inputs, ready to simulate, or the reason it cannot be.

    Args:
        structures: A pymatgen ``Structure``; a path (CIF file, folder of CIFs, CSV(.gz) with
            a ``cif`` column, or a structure table ``.parquet``); a DataFrame with a ``cif``
            column or with the structure table's ``id, lattice, species, frac_coords``; a
            dict of id -> ``Structure``; or a list of structures and paths.

    Yields:
        (id, item): ``item`` is a ``Structure``, a ``SiteArrays`` (structure tables: no
        pymatgen object is built) or, for an input that cannot be used, the reason as a
        string. A ``Structure`` given as such is named by its reduced formula, repeats by a
        ``_2``, ``_3``... suffix in order; CSV rows without an id column by ``<file>:<row>``,
        DataFrame rows by their index.

    Raises:
        OSError: A structure table ``.parquet`` that cannot be read.
    """
    if isinstance(structures, Mapping):
        yield from ((str(key), value) for key, value in structures.items())
        return
    items = (
        [structures]
        if isinstance(structures, Structure | Path | str | pd.DataFrame)
        else list(structures)
    )
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, Structure):
            formula = item.composition.reduced_formula
            seen[formula] = seen.get(formula, 0) + 1
            yield (formula if seen[formula] == 1 else f"{formula}_{seen[formula]}"), item
        elif isinstance(item, pd.DataFrame):
            yield from _table_inputs(item)
        elif Path(item).suffix == ".parquet":
            yield from _table_inputs(pd.read_parquet(item, columns=list(SITE_COLUMNS)))
        else:
            yield from _parsed(read_sources([item]))


def _table_inputs(table: pd.DataFrame) -> Iterator[tuple[str, Simulable]]:
    """A structure table's rows as ``SiteArrays``, or a table of CIFs' rows parsed."""
    if "cif" in table.columns:
        yield from _parsed(sources_from_table(table, [str(i) for i in table.index]))
        return
    missing = [c for c in SITE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"a structure table needs a 'cif' column or {list(SITE_COLUMNS)}; lacks {missing}"
        )
    for row in table.itertuples(index=False):
        try:
            yield row.id, SiteArrays.from_ordered(row.lattice, row.species, row.frac_coords)
        except SimulationError as error:
            yield row.id, str(error)


def _parsed(sources: Iterable[Source]) -> Iterator[tuple[str, Simulable]]:
    """Each source's structure, or why it has none."""
    for source in sources:
        if source.error is not None:
            yield source.id, source.error
            continue
        try:
            yield source.id, parse_cif(source.cif)
        except StructureError as error:
            yield source.id, str(error)


@dataclass(frozen=True)
class Labelled:
    """A structure in its conventional standard cell with its symmetry labels."""

    id: str
    formula: str
    space_group: int
    crystal_system: int
    structure: Structure


def symmetrize(
    structure_id: str, structure: Structure, symprec: float = 0.01, angle_tolerance: float = 5.0
) -> Labelled:
    """Detect the symmetry of a structure and return its conventional standard cell.

    Args:
        structure_id: Identifier carried along.
        structure: The structure (any setting, e.g. P1 as written by Materials Project).
        symprec: Distance tolerance of spglib, Å.
        angle_tolerance: Angle tolerance of spglib, degrees.

    Raises:
        StructureError: Disordered (partial occupancies), elements without X-ray scattering
            factors, or symmetry detection failed.
    """
    if not structure.is_ordered:
        raise StructureError("disordered: partial occupancies")
    missing = sorted({e.symbol for e in structure.composition} - set(ATOMIC_SCATTERING_PARAMS))
    if missing:
        raise StructureError(f"no X-ray scattering factors for {', '.join(missing)}")
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
        number = analyzer.get_space_group_number()
        conventional = analyzer.get_conventional_standard_structure()
    except (ValueError, TypeError) as error:
        raise StructureError(f"symmetry detection failed: {error}") from error
    return Labelled(
        id=structure_id,
        formula=structure.composition.reduced_formula,
        space_group=number,
        crystal_system=crystal_system(number),
        structure=conventional,
    )


def split_by_formula(
    formulas: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42
) -> list[str]:
    """Assign each entry to train/val/test so that no reduced formula is in two splits.

    Args:
        formulas: Reduced formula of each entry.
        fractions: Shares of the distinct formulas for train, val and test (sum 1).
        seed: Seed of the shuffle of the formulas.

    Returns:
        The split of each entry, in input order.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three shares summing to 1, got {fractions}")
    distinct = np.array(sorted(set(formulas)))
    shuffled = distinct[np.random.default_rng(seed).permutation(len(distinct))]
    cuts = np.round(np.cumsum(fractions)[:2] * len(distinct)).astype(int)
    split_of = {
        f: SPLITS[int(np.searchsorted(cuts, i, side="right"))] for i, f in enumerate(shuffled)
    }
    return [split_of[f] for f in formulas]


def _label_one(source: Source, symprec: float, angle_tolerance: float) -> dict:
    """A table row (``TABLE_COLUMNS`` less split) or a reject ``{"id", "reason"}``."""
    if source.error is not None:
        return {"id": source.id, "reason": source.error}
    try:
        labelled = symmetrize(source.id, parse_cif(source.cif), symprec, angle_tolerance)
    except StructureError as error:
        return {"id": source.id, "reason": str(error)}
    return _row(labelled)


def _row(labelled: Labelled) -> dict:
    """The table row (``TABLE_COLUMNS`` less split) of a labelled structure."""
    structure = labelled.structure
    return {
        "id": labelled.id,
        "formula": labelled.formula,
        "space_group": labelled.space_group,
        "crystal_system": labelled.crystal_system,
        "n_sites": len(structure),
        "lattice": structure.lattice.matrix.reshape(-1).tolist(),
        "species": [site.specie.symbol for site in structure],
        "frac_coords": structure.frac_coords.reshape(-1).tolist(),
    }


def _label_chunk(chunk: list[Source], symprec: float, angle_tolerance: float) -> list[dict]:
    return [_label_one(s, symprec, angle_tolerance) for s in chunk]


def build_table(
    sources: Iterable[Source],
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    workers: int = 1,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Symmetrize and label structures, split them by formula.

    Args:
        sources: Structures as read (``read_sources``).
        symprec: spglib distance tolerance, Å.
        angle_tolerance: spglib angle tolerance, degrees.
        fractions: Train/val/test shares of the distinct reduced formulas.
        seed: Seed of the split.
        workers: Processes for the symmetry analysis (1: in this process).
        progress: Show a progress bar.

    Returns:
        The structure table (``TABLE_COLUMNS``, conventional cells) and the rejects
        (``id``, ``reason``).
    """
    sources = list(sources)
    chunks = [sources[i : i + 64] for i in range(0, len(sources), 64)]
    rows: list[dict] = []
    with tqdm(total=len(sources), desc="symmetry", unit="structure", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(
                    _label_chunk, chunks, [symprec] * len(chunks), [angle_tolerance] * len(chunks)
                )
                for result in results:
                    rows.extend(result)
                    bar.update(len(result))
        else:
            for chunk in chunks:
                rows.extend(_label_chunk(chunk, symprec, angle_tolerance))
                bar.update(len(chunk))
    good = [r for r in rows if "reason" not in r]
    rejects = pd.DataFrame([r for r in rows if "reason" in r], columns=["id", "reason"])
    table = pd.DataFrame(good, columns=[c for c in TABLE_COLUMNS if c != "split"])
    table.insert(4, "split", split_by_formula(list(table["formula"]), fractions, seed))
    return table, rejects


T = TypeVar("T")


def random_subset(items: Sequence[T], size: int | None, seed: int) -> list[T]:
    """A seeded random subset of ``size`` items, in their order.

    All items when ``size`` is None or not smaller than their number.
    """
    items = list(items)
    if size is None or len(items) <= size:
        return items
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size, replace=False))
    return [items[i] for i in chosen]


def table_summary(
    structures_read: int,
    table: pd.DataFrame,
    rejects: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    symprec: float,
    angle_tolerance: float,
) -> dict[str, Any]:
    """What ``build_table`` kept and why it rejected the rest, with its settings.

    Args:
        structures_read: Structures given to ``build_table``.
        table: Its structure table.
        rejects: Its rejects.
        fractions: Its train/val/test shares.
        seed: Its seed.
        symprec: Its spglib distance tolerance, Å.
        angle_tolerance: Its spglib angle tolerance, degrees.

    Returns:
        Counts (kept, rejected, reasons by their first word, per split, per crystal system,
        distinct space groups) and the settings, as JSON-ready values.
    """
    return {
        "structures_read": structures_read,
        "kept": len(table),
        "rejected": len(rejects),
        "reject_reasons": rejects["reason"].str.split(":").str[0].value_counts().to_dict(),
        "seed": seed,
        "split_fractions": list(fractions),
        "split_by": "reduced formula",
        "symprec": symprec,
        "angle_tolerance": angle_tolerance,
        "per_split": table["split"].value_counts().to_dict(),
        "space_groups_present": int(table["space_group"].nunique()),
        "per_crystal_system": {
            CRYSTAL_SYSTEMS[k]: int(v)
            for k, v in table["crystal_system"].value_counts().sort_index().items()
        },
    }


@dataclass(frozen=True)
class RandomCrystalSettings:
    """How random symmetric crystals are drawn (``xrd.random`` config block).

    Attributes:
        per_group: Each space group is filled up to this many training structures.
        max_species: Most distinct elements per crystal.
        max_atoms: Most atoms in the conventional cell.
        attempts: Draws per crystal before the space group is reported as not filled.
    """

    per_group: int = 20
    max_species: int = 3
    max_atoms: int = 120
    attempts: int = 30


def random_crystal(
    structure_id: str,
    space_group: int,
    elements: Sequence[str],
    weights: Sequence[float],
    rng: np.random.Generator,
    settings: RandomCrystalSettings,
) -> Labelled:
    """One random crystal of a space group, drawn with PyXtal.

    PyXtal: Fredericks et al., Comput. Phys. Commun. 261, 107810 (2021). Each element occupies
    the sites of one Wyckoff position of the group (the first element the general position when
    the cell stays small enough, the others a position drawn uniformly), so the composition is
    always compatible with the symmetry; PyXtal places the atoms with sensible interatomic
    distances and a volume from atomic radii. A draw is kept only when spglib finds exactly the
    intended group: atoms can land on special positions of a higher symmetry.

    Args:
        structure_id: Identifier of the crystal.
        space_group: ITA number, 1-230.
        elements: Element symbols to draw from.
        weights: Relative frequency of each element (e.g. its frequency in the database).
        rng: Random generator (the only source of randomness).
        settings: Composition and size limits.

    Returns:
        The crystal in its conventional standard cell, labelled.

    Raises:
        StructureError: No valid crystal in ``settings.attempts`` draws.
    """
    multiplicities = [w.multiplicity for w in Group(space_group).Wyckoff_positions]
    probabilities = np.asarray(weights, dtype=float) / np.sum(weights)
    last_error = "no attempt"
    for _ in range(settings.attempts):
        count = int(rng.integers(1, min(settings.max_species, len(elements)) + 1))
        # PyXtal looks radii up by exact type: numpy strings must become str.
        species = [str(e) for e in rng.choice(elements, count, replace=False, p=probabilities)]
        # The first element takes the general position when it fits: atoms only on special
        # positions often have a higher symmetry than the group drawn.
        atoms = [int(rng.choice(multiplicities)) for _ in species]
        if multiplicities[0] <= settings.max_atoms - sum(atoms[1:]):
            atoms[0] = multiplicities[0]
        if sum(atoms) > settings.max_atoms:
            last_error = f"more than {settings.max_atoms} atoms"
            continue
        crystal = PyXtal()
        try:
            crystal.from_random(
                3, space_group, species, atoms, random_state=int(rng.integers(2**31))
            )
        except (Comp_CompatibilityError, RuntimeError, ValueError) as error:
            last_error = f"PyXtal: {error}"
            continue
        if not crystal.valid:
            last_error = "PyXtal found no valid placement"
            continue
        labelled = symmetrize(structure_id, crystal.to_pymatgen())
        if labelled.space_group == space_group:
            return labelled
        last_error = f"drawn crystals had a higher symmetry (e.g. {labelled.space_group})"
    raise StructureError(f"space group {space_group}: {last_error}")


def _fill_group(
    space_group: int,
    count: int,
    elements: Sequence[str],
    weights: Sequence[float],
    excluded_formulas: frozenset[str],
    seed: int,
    settings: RandomCrystalSettings,
) -> list[dict]:
    """``count`` rows of random crystals of ``space_group`` (``random_crystal``).

    A crystal whose formula is in ``excluded_formulas`` is drawn again. Unfilled places become
    rejects with the reason.
    """
    rng = np.random.default_rng([seed, space_group])
    rows: list[dict] = []
    for index in range(count):
        structure_id = f"pyxtal-{space_group}-{index}"
        reason = "no attempt"
        for _ in range(settings.attempts):
            try:
                labelled = random_crystal(
                    structure_id, space_group, elements, weights, rng, settings
                )
            except StructureError as error:
                reason = str(error)
                continue
            if labelled.formula not in excluded_formulas:
                rows.append(_row(labelled))
                break
            reason = f"formula {labelled.formula} is in the validation or test split"
        else:
            rows.append({"id": structure_id, "reason": reason})
    return rows


def fill_space_groups(
    table: pd.DataFrame,
    settings: RandomCrystalSettings,
    seed: int = 42,
    workers: int = 1,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random crystals that fill every space group up to ``settings.per_group`` training structures.

    Elements are drawn with their frequency in the training split, so the chemistry resembles
    the database. The crystals join the training split; their formulas avoid the validation and
    test splits, so no formula is in two splits. Each space group has its own seeded stream:
    the result does not depend on ``workers``.

    Args:
        table: Structure table (``build_table``).
        settings: How many crystals and of what size.
        seed: Seed of the draws.
        workers: Processes.
        progress: Show a progress bar.

    Returns:
        The random crystals (``TABLE_COLUMNS``, split ``train``) and the places that could not
        be filled (``id``, ``reason``).
    """
    train = table[table["split"] == "train"]
    counts = train["space_group"].value_counts()
    wanted = {
        sg: settings.per_group - int(counts.get(sg, 0))
        for sg in range(1, 231)
        if counts.get(sg, 0) < settings.per_group
    }
    symbols = pd.Series(np.concatenate(train["species"].to_numpy())) if len(train) else None
    if symbols is None or symbols.empty:
        frequency = pd.Series(1.0, index=sorted(ATOMIC_SCATTERING_PARAMS))
    else:
        frequency = symbols.value_counts()
    frequency = frequency[frequency.index.isin(list(ATOMIC_SCATTERING_PARAMS))]
    elements, weights = list(frequency.index), frequency.to_numpy(dtype=float)
    excluded = frozenset(table.loc[table["split"] != "train", "formula"])
    jobs = [(sg, n, elements, weights, excluded, seed, settings) for sg, n in wanted.items()]
    rows: list[dict] = []
    total = sum(wanted.values())
    with tqdm(total=total, desc="random crystals", unit="crystal", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_fill_group, *zip(*jobs, strict=True)):
                    rows.extend(result)
                    bar.update(len(result))
        else:
            for job in jobs:
                result = _fill_group(*job)
                rows.extend(result)
                bar.update(len(result))
    good = [r for r in rows if "reason" not in r]
    rejects = pd.DataFrame([r for r in rows if "reason" in r], columns=["id", "reason"])
    crystals = pd.DataFrame(good, columns=[c for c in TABLE_COLUMNS if c != "split"])
    crystals.insert(4, "split", "train")
    return crystals, rejects


def random_summary(
    table: pd.DataFrame,
    crystals: pd.DataFrame,
    unfilled: pd.DataFrame,
    settings: RandomCrystalSettings,
    seed: int,
) -> dict[str, Any]:
    """What ``fill_space_groups`` added to a structure table, with its settings.

    Args:
        table: The structure table it filled.
        crystals: Its random crystals.
        unfilled: Its places not filled.
        settings: Its settings.
        seed: Its seed.

    Returns:
        Counts of crystals, unfilled places and space groups filled, and how many space
        groups the training split covers before and after (of 230), as JSON-ready values.
    """
    train_groups = set(table.loc[table["split"] == "train", "space_group"])
    return {
        "seed": seed,
        "per_group": settings.per_group,
        "max_species": settings.max_species,
        "max_atoms": settings.max_atoms,
        "crystals": len(crystals),
        "unfilled": len(unfilled),
        "space_groups_filled": int(crystals["space_group"].nunique()),
        "space_groups_in_train_before": len(train_groups),
        "space_groups_in_train_after": len(train_groups | set(crystals["space_group"])),
    }
