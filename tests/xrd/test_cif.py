from __future__ import annotations

import warnings

import gemmi
import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Lattice, Structure

from nanoxtal.xrd import cif as cif_module
from nanoxtal.xrd.cif import (
    CifError,
    _first_close,
    element_of,
    lattice_from_parameters,
    read_cif,
    read_cif_sites,
)
from nanoxtal.xrd.diffraction import compare_sticks, stick_pattern
from nanoxtal.xrd.structures import StructureError, parse_cif

# Agreement tolerances of tests/xrd/test_diffraction.py (degrees; intensity of 100).
POSITION_TOL = 0.01
INTENSITY_TOL = 1.0


def cif(
    sites: str,
    *,
    cell: tuple[float, ...] = (5.64, 5.64, 5.64, 90, 90, 90),
    symbol: str | None = "F m -3 m",
    operators: list[str] | None = None,
    extra: str = "",
    columns: tuple[str, ...] = ("label", "fract_x", "fract_y", "fract_z", "occupancy"),
) -> str:
    """A small CIF: cell, optional symbol and operators, one atom-site loop."""
    tags = ["_cell_length_a", "_cell_length_b", "_cell_length_c"]
    tags += ["_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma"]
    lines = ["data_test", extra]
    lines += [f"{tag} {value}" for tag, value in zip(tags, cell, strict=True)]
    if symbol is not None:
        lines.append(f"_symmetry_space_group_name_H-M '{symbol}'")
    if operators is not None:
        lines += ["loop_", "_space_group_symop_operation_xyz"]
        lines += [f"  '{op}'" for op in operators]
    lines += ["loop_", *(f"_atom_site_{c}" for c in columns), sites]
    return "\n".join(lines) + "\n"


def operators_of(symbol: str) -> list[str]:
    return [op.triplet() for op in gemmi.find_spacegroup_by_name(symbol).operations()]


def pymatgen_pattern(text: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(text, fmt="cif")
        return XRDCalculator("CuKa").get_pattern(structure, two_theta_range=(5, 90))


def occupancy_of(read, element: str) -> np.ndarray:
    return read.sites.occupancy[:, read.sites.elements.index(element)]


# --- labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "element"),
    [
        ("Fe3+M1", "Fe"),
        ("Fe3+", "Fe"),
        ("O2-", "O"),
        ("NaM2", "Na"),
        ("MgT", "Mg"),
        ("Oc", "O"),
        ("SiZ", "Si"),
        ("OII", "O"),
        ("OI", "O"),
        ("Ti4+1", "Ti"),
        ("Ca*", "Ca"),
        ("O(1)", "O"),
        ("Mn-layer", "Mn"),
        ("Co1", "Co"),
        ("CO3", "C"),
        ("Hw", "H"),
        ("H-OH", "H"),
        ("AsSb", "As"),
        ("Dy2", "Dy"),
    ],
)
def test_labels_are_read_as_the_element_they_start_with(label, element):
    assert element_of(label) == (element, None)


@pytest.mark.parametrize(
    ("label", "formula", "element"),
    [
        ("Fl", {"Mg", "Al", "F"}, "F"),  # AMCSD 0020047, MgAlF5: not flerovium
        ("Po1", {"P", "O", "Ca"}, "P"),
        ("Cm", {"C", "O", "Ca"}, "C"),
        ("Os2", {"Si", "O"}, "O"),
        ("CO", {"Co", "O"}, "Co"),  # upper-case second letter, but no C in the formula
        ("SI", {"Si", "O"}, "Si"),
    ],
)
def test_the_formula_settles_one_against_two_letter_readings(label, element, formula):
    read, note = element_of(label, frozenset(formula))
    assert read == element
    assert f"read as {element}" in note and "_chemical_formula_sum" in note


@pytest.mark.parametrize(
    ("label", "formula", "element"),
    [
        ("Po1", {"Po", "O"}, "Po"),  # real polonium stays
        ("Co1", {"Co", "C", "O"}, "Co"),  # both present: as written
        ("CO3", {"Co", "C", "O"}, "C"),
    ],
)
def test_the_written_reading_stands_when_the_formula_has_it(label, formula, element):
    assert element_of(label, frozenset(formula)) == (element, None)


def test_a_reading_the_formula_lacks_is_kept_with_a_note():
    element, note = element_of("Fe", frozenset({"Ag", "Cu"}))  # AMCSD 0018575
    assert element == "Fe" and "lacks" in note


@pytest.mark.parametrize(
    ("label", "element", "group"),
    [
        ("Wat", "O", "water"),
        ("Wat(1)", "O", "water"),
        ("WatM3", "O", "water"),
        ("Watd", "O", "water"),
        ("Ow", "O", "water"),
        ("OW4", "O", "water"),
        ("ODw1", "O", "water"),
        ("H2OA", "O", "water"),
        ("OH", "O", "hydroxyl"),
        ("O-H3", "O", "hydroxyl"),
        ("O-h", "O", "hydroxyl"),
        ("O(H)", "O", "hydroxyl"),
        ("H3O", "O", "hydronium"),
        ("H3OA2", "O", "hydronium"),  # AMCSD 0012381: not an H atom
        ("NH4(1)", "N", "ammonium"),
        ("NH3", "N", "ammonia"),
        ("CH4-5", "C", "methane"),
    ],
)
def test_water_hydroxyl_and_ammonium_labels_are_their_heavy_atom(label, element, group):
    read, note = element_of(label)
    assert read == element
    assert group in note and repr(label) in note


@pytest.mark.parametrize("label", ["D", "D1", "D12"])
def test_deuterium_is_read_as_hydrogen(label):
    element, note = element_of(label)
    assert element == "H" and "deuterium" in note


def test_water_note_says_whether_hydrogen_is_listed():
    without_h = read_cif(cif("Wat1 0 0 0 1", symbol="P 1"))
    assert "not located" in " ".join(without_h.notes)
    with_h = read_cif(cif("Wat1 0 0 0 1\nH1 0.1 0 0 1", symbol="P 1"))
    assert "only where listed" in " ".join(with_h.notes)
    assert with_h.sites.elements == ("O", "H")


def test_type_symbols_win_over_labels():
    text = cif(
        "X1 Fe3+ 0 0 0\nX2 O2- 0.5 0.5 0.5",
        columns=("label", "type_symbol", "fract_x", "fract_y", "fract_z"),
    )
    read = read_cif(text)
    assert read.sites.elements == ("Fe", "O")
    assert read.formula == "FeO"


def test_unknown_type_symbols_fall_back_to_the_label_and_notes_name_the_source():
    text = cif(
        "Fe1 ? 0 0 0\nX2 D 0.5 0.5 0.5",
        symbol="P 1",
        operators=["x,y,z"],
        columns=("label", "type_symbol", "fract_x", "fract_y", "fract_z"),
    )
    read = read_cif(text)
    assert read.sites.elements == ("Fe", "H")
    assert read.notes == ("type symbol 'D' read as H (deuterium: the X-ray scattering of H)",)


def test_labels_are_disambiguated_by_the_formula_in_a_whole_cif():
    text = cif(
        "Fl 0 0 0 1\nMg 0.5 0.5 0.5 1",
        extra="_chemical_formula_sum 'Mg F'",
    )
    read = read_cif(text)
    assert read.sites.elements == ("F", "Mg")
    assert any("not Fl" in note for note in read.notes)


# --- symmetry and merging --------------------------------------------------------------------


def test_rock_salt_expands_from_two_sites_to_eight_atoms():
    read = read_cif(cif("Na 0 0 0 1\nCl 0.5 0.5 0.5 1", operators=operators_of("Fm-3m")))
    # 192 operators per site: 48 images coincide on each of the 4 atoms of every site.
    assert len(read.sites.frac_coords) == 8
    assert read.sites.elements == ("Na", "Cl")
    assert np.array_equal(read.sites.occupancy.sum(axis=0), [4.0, 4.0])
    assert read.space_group == 225 and read.formula == "NaCl"
    assert read.notes == ()


@pytest.mark.parametrize(
    "text",
    [
        cif("Na 0 0 0 1\nCl 0.5 0.5 0.5 1", operators=operators_of("Fm-3m")),
        cif("Fe3+M1 0.1 0.2 0.3 0.6\nMgM1 0.1 0.2 0.3 0.4\nO1 0.3 0.1 0.7 1", symbol="P 21/c"),
        cif("Cu 0.0001 0 0 0.5\nAu 0.9999 0 0 0.5", cell=(10, 10, 10, 90, 90, 90), symbol="P 1"),
    ],
)
def test_sites_alone_are_the_sites_of_the_full_reading(text):
    sites, full = read_cif_sites(text), read_cif(text).sites
    assert sites.elements == full.elements
    for name in ("lattice", "frac_coords", "occupancy"):
        np.testing.assert_array_equal(getattr(sites, name), getattr(full, name))


def test_sites_alone_refuse_what_the_full_reading_refuses():
    with pytest.raises(CifError, match="coordinates are not numbers"):
        read_cif_sites(cif("Na x 0 0 1"))


def test_images_differing_in_one_coordinate_are_distinct():
    # Inversion through the origin: (0, 0, 1/4) and (0, 0, 3/4) share x and y.
    read = read_cif(cif("Cu 0 0 0.25 1", symbol="P -1"))
    assert sorted(read.sites.frac_coords[:, 2]) == [0.25, 0.75]


def test_coordinates_are_wrapped_into_the_cell():
    read = read_cif(cif("Cu -0.00000000000000001 -0.25 1.25 1\nAu 0.5 0.5 0.5 1", symbol="P -1"))
    assert ((read.sites.frac_coords >= 0) & (read.sites.frac_coords < 1)).all()
    assert len(read.sites.frac_coords) == 3  # Cu on no special position, Au on one


def test_operators_are_generated_from_the_symbol_when_absent():
    read = read_cif(cif("Na 0 0 0 1\nCl 0.5 0.5 0.5 1"))
    assert len(read.sites.frac_coords) == 8
    assert any("generated from" in note for note in read.notes)


@pytest.mark.parametrize("tag", ["_space_group_name_Hall '-F 4 2 3'", "_space_group_IT_number 225"])
def test_hall_symbol_and_number_also_give_the_operators(tag):
    read = read_cif(cif("Na 0 0 0 1\nCl 0.5 0.5 0.5 1", symbol=None, extra=tag))
    assert len(read.sites.frac_coords) == 8 and read.space_group == 225
    assert any(tag.split()[0] in note for note in read.notes)


def test_without_any_symmetry_the_cif_is_read_as_p1():
    read = read_cif(cif("Na 0 0 0 1\nCl 0.5 0.5 0.5 1", symbol=None))
    assert len(read.sites.frac_coords) == 2 and read.space_group is None
    assert any("P1" in note for note in read.notes)


def test_space_group_from_operators_when_the_symbol_is_unknown():
    # A full symbol gemmi does not parse (AMCSD writes R -3 2/c for R-3c).
    text = cif(
        "Na 0 0 0 1\nCl 0.5 0.5 0.5 1", symbol="F 4/m -3 2/m", operators=operators_of("Fm-3m")
    )
    read = read_cif(text)
    assert read.space_group == 225
    assert any("from the symmetry operators" in note for note in read.notes)


def test_operators_naming_another_group_than_the_symbol_are_applied_and_noted():
    text = cif("Na 0 0 0 1\nCl 0.5 0.5 0.5 1", symbol="F m -3 m", operators=operators_of("Pm-3m"))
    read = read_cif(text)
    assert read.space_group == 225  # the symbol's number
    assert len(read.sites.frac_coords) == 2  # the operators' expansion
    assert any("operators are applied" in note for note in read.notes)


def test_images_near_a_special_position_are_one_atom():
    # 1/3, 2/3 written to 4 decimals: P6₃/mmc images differ by ~5e-4 Å, one atom each (2b).
    hexagonal = (3.0, 3.0, 5.0, 90, 90, 120)
    read = read_cif(cif("Zn 0.3333 0.6667 0.25 1", cell=hexagonal, symbol="P 63/m m c"))
    assert len(read.sites.frac_coords) == 2
    assert np.array_equal(read.sites.occupancy, [[1.0], [1.0]])


def test_one_atom_generated_twice_keeps_its_occupancy():
    # 0.004 Å off the inversion centre: both images are the same half-occupied atom.
    read = read_cif(cif("Cu 0.0002 0 0 0.5", cell=(20, 5, 5, 90, 90, 90), symbol="P -1"))
    assert len(read.sites.frac_coords) == 1
    assert read.sites.occupancy[0, 0] == pytest.approx(0.5)


def test_a_split_site_beside_a_mirror_keeps_both_halves():
    # 0.3 Å off the mirror z = 0: two half-occupied positions 0.3 Å apart, not one atom (gemmi's
    # SmallStructure.get_all_unit_cell_sites merges such images, within 0.4 Å).
    read = read_cif(cif("Cu1 0.1 0.2 0.03 0.5", cell=(5, 5, 5, 90, 90, 90), symbol="P 1 1 2/m"))
    assert len(read.sites.frac_coords) == 4
    assert np.allclose(read.sites.occupancy, 0.5)


def test_a_coordinate_rounded_off_a_special_position_is_still_one_atom():
    # AMCSD 0009475 (gallium, R-3m): Ga5 at (0.101, 0.201, z) lies on (x, 2x, z) to 0.009 Å.
    text = cif("Ga5 0.101 0.201 0.577 1", cell=(9.087, 9.087, 17.02, 90, 90, 120), symbol="R -3 m")
    read = read_cif(text)
    assert len(read.sites.frac_coords) == 18  # Wyckoff 18h
    assert read.sites.occupancy.max() == 1.0
    # pymatgen merges within 1e-4 (fractional) only and keeps each atom twice, 0.009 Å apart.
    assert len(parse_cif(text)) == 36


@pytest.mark.parametrize("all_pairs_max", [0, 10_000])  # the window search; every pair
def test_close_points_are_found_as_by_brute_force(monkeypatch, all_pairs_max):
    monkeypatch.setattr(cif_module, "ALL_PAIRS_MAX", all_pairs_max)
    rng = np.random.default_rng(3)
    lattice = lattice_from_parameters(7.0, 8.0, 9.0, 80, 95, 110)
    points = rng.random((90, 3))
    points[10] = points[3] + [0.0005, 0, 0]  # 0.0035 Å: close to 3
    points[20] = points[10] + [0.0012, 0, 0]  # close to 10, not to 3: a chain onto 3
    points[30] = [0.9999, 0.5, 0.5]
    points[40] = [0.0001, 0.5, 0.5]  # across the cell edge from 30
    points[50] = points[60] + [0, 0, 0.01]  # 0.09 Å: apart
    first = _first_close(points % 1.0, lattice, 0.01)
    expected = np.arange(90)
    expected[[10, 20, 40]] = [3, 3, 30]
    np.testing.assert_array_equal(first, expected)
    assert _first_close(points[[0, 1, 2, 50, 60]], lattice, 0.01) is None


def test_merging_is_periodic_and_within_the_tolerance_only():
    cell = (10, 10, 10, 90, 90, 90)
    across_the_edge = read_cif(cif("Cu 0.0001 0 0 0.5\nAu 0.9999 0 0 0.5", cell=cell, symbol="P 1"))
    assert len(across_the_edge.sites.frac_coords) == 1  # 0.002 Å apart
    assert across_the_edge.sites.occupancy.tolist() == [[0.5, 0.5]]
    apart = read_cif(cif("Cu 0.001 0 0 0.5\nAu 0.9990 0 0 0.5", cell=cell, symbol="P 1"))
    assert len(apart.sites.frac_coords) == 2  # 0.02 Å apart
    tighter = read_cif(
        cif("Cu 0.0001 0 0 0.5\nAu 0.9999 0 0 0.5", cell=cell, symbol="P 1"), merge_tolerance=1e-3
    )
    assert len(tighter.sites.frac_coords) == 2


def test_merging_finds_every_close_pair_in_a_large_triclinic_cell():
    # 150 atoms, 30 of them doubled within 0.006 Å (some across the cell edges) in a skewed
    # cell: the x-window screening must find exactly the pairs an all-pairs check finds.
    rng = np.random.default_rng(0)
    parameters = (7.0, 9.0, 11.0, 70.0, 110.0, 95.0)
    lattice = lattice_from_parameters(*parameters)
    frac = rng.random((120, 3))
    frac[:10, 0] = rng.choice([0.0002, 0.9998], 10)  # next to x = 0 and 1
    shift = rng.normal(size=(30, 3))
    shift *= 0.006 / np.linalg.norm(shift, axis=1, keepdims=True)
    twins = (frac[:30] + shift @ np.linalg.inv(lattice)) % 1.0
    frac = np.concatenate([frac, twins])
    lines = [f"Cu{i} {x:.10f} {y:.10f} {z:.10f} 0.5" for i, (x, y, z) in enumerate(frac)]
    read = read_cif(cif("\n".join(lines), cell=parameters, symbol="P 1"))
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.rint(delta)
    distance = np.linalg.norm(delta @ lattice, axis=2)
    pairs = int((np.triu(distance < 0.01, 1)).sum())
    assert pairs == 30
    assert len(read.sites.frac_coords) == 150 - pairs
    assert sorted(read.sites.occupancy[:, 0]) == [0.5] * 90 + [1.0] * 30


MIXED = """\
Fe3+M1 0 0 0 0.3
MgM1 0 0 0 0.7
O 0.5 0.5 0.5 0.9
"""


def test_mixed_site_holds_both_elements_and_partial_occupancy_is_kept():
    read = read_cif(cif(MIXED, cell=(4.25,) * 3 + (90,) * 3))
    assert len(read.sites.frac_coords) == 8
    metal = read.sites.occupancy.sum(axis=1) > 0.95
    assert metal.sum() == 4
    assert np.allclose(occupancy_of(read, "Fe")[metal], 0.3)
    assert np.allclose(occupancy_of(read, "Mg")[metal], 0.7)
    assert np.allclose(occupancy_of(read, "O")[~metal], 0.9)
    # pymatgen reduces only integer amounts: the cell's 4 (Mg0.7Fe0.3)O0.9 stay as they are.
    assert read.formula == "Mg2.8Fe1.2O3.6"
    assert any("combined per element" in note for note in read.notes)


def test_mixed_and_partially_occupied_site_simulates_as_pymatgen():
    text = cif(MIXED, cell=(4.25,) * 3 + (90,) * 3)
    ref = pymatgen_pattern(text)
    ours = stick_pattern(read_cif(text).sites, "CuKa", (5, 90))
    agreement = compare_sticks((np.array(ref.x), np.array(ref.y)), (ours.two_theta, ours.intensity))
    assert agreement.compared == len(ref.x)
    assert agreement.max_position_error < 1e-9
    assert agreement.max_intensity_error < 1e-6
    # And the occupancy matters: a fully ordered MgO gives other intensities.
    ordered = read_cif(cif("Mg 0 0 0 1\nO 0.5 0.5 0.5 1", cell=(4.25,) * 3 + (90,) * 3))
    plain = stick_pattern(ordered.sites, "CuKa", (5, 90))
    differs = compare_sticks((np.array(ref.x), np.array(ref.y)), (plain.two_theta, plain.intensity))
    assert differs.max_intensity_error > 5


def test_labels_of_one_element_on_one_position_add_up():
    text = cif("Fe2+M1 0 0 0 0.2\nFe3+M1 0 0 0 0.3\nMgM1 0 0 0 0.5", symbol="P 1")
    read = read_cif(text)
    assert read.sites.occupancy.tolist() == [[0.5, 0.5]]


def test_overfull_position_is_an_error():
    with pytest.raises(CifError, match=r"sum to 2\.000 > 1\.05.*'O3', 'O4'"):
        read_cif(cif("O3 0.1 0.2 0.3 1\nO4 0.1 0.2 0.3 1", symbol="P 1"))
    # Rounded published occupancies just above 1 are accepted.
    assert len(read_cif(cif("Fe 0 0 0 0.52\nMg 0 0 0 0.51", symbol="P 1")).sites.frac_coords) == 1


def test_occupancies_parse_uncertainties_unknowns_and_zeros():
    text = cif("Fe 0 0 0 0.512(3)\nMg 0.5 0.5 0.5 ?\nNi 0.25 0.25 0.25 0", symbol="P 1")
    read = read_cif(text)
    assert read.sites.elements == ("Fe", "Mg")
    assert read.sites.occupancy.tolist() == [[0.512, 0.0], [0.0, 1.0]]
    assert any("occupancy 0 dropped" in note for note in read.notes)
    no_column = read_cif(
        cif("Fe 0 0 0", symbol="P 1", columns=("label", "fract_x", "fract_y", "fract_z"))
    )
    assert no_column.sites.occupancy.tolist() == [[1.0]]


# --- cell and block --------------------------------------------------------------------------


def test_lattice_is_oriented_as_pymatgen_orients_it():
    parameters = (4.1, 5.3, 7.7, 81.0, 97.5, 103.2)
    expected = Lattice.from_parameters(*parameters).matrix
    assert np.allclose(lattice_from_parameters(*parameters), expected, atol=1e-12)


def test_decimal_commas_in_the_cell_are_read():
    text = cif("Na 0 0 0 1", cell=("5,64", "5.64,", 5.64, 90, 90, 90), symbol="P 1")
    read = read_cif(text)
    assert np.allclose(np.diag(read.sites.lattice), 5.64)
    assert sum("comma" in note for note in read.notes) == 2


def test_mineral_name_and_quoted_values():
    text = cif(
        "'Na 1' 0 0 0 '1.0'",
        symbol="P 1",
        extra="_chemical_name_mineral 'Halite (synthetic)'",
    )
    read = read_cif(text)
    assert read.mineral == "Halite (synthetic)"
    assert read.sites.elements == ("Na",) and read.sites.occupancy.tolist() == [[1.0]]
    assert read_cif(cif("Na 0 0 0 1", symbol="P 1")).mineral is None


def test_the_first_block_with_atom_sites_is_read():
    text = "data_global\n_journal_name_full 'Am. Mineral.'\n\n" + cif("Na 0 0 0 1", symbol="P 1")
    assert read_cif(text).sites.elements == ("Na",)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello world", "not CIF"),
        ("", "no data block"),
        ("data_x\n_cell_length_a 5\n", "no atom sites"),
        (cif("Na 0 0 0 1").replace("_cell_length_b 5.64\n", ""), r"no cell: _cell_length_b"),
        (cif("Na 0 0 0 1").replace("_cell_angle_gamma 90", "_cell_angle_gamma ?"), "not a number"),
        (cif("Na 0 0 0 1", cell=(5, 5, 5, 90, 90, 180)), "impossible cell angles"),
        (cif("Na 0 0 0 1", cell=(0, 5, 5, 90, 90, 90)), "positive"),
        (cif("Og1 0 0 0 1"), r"no X-ray scattering factors for element 'Og' \(site 'Og1'\)"),
        (cif("Xx1 0 0 0 1"), "no element symbol"),
        (cif("1 0 0 0 1"), "no element symbol"),
        (cif("Na 0 abc 0 1"), r"site 'Na': coordinates are not numbers"),
        (cif("Na 0 0 0 -0.5"), "occupancy '-0.5'"),
        (cif("Na 0 0 0 1", operators=["x,y,z", "x,x,z"]), "invalid symmetry operator 'x,x,z'"),
        (cif("Na 0 0 0 1", operators=["x,y"]), "invalid symmetry operator"),
        (
            "data_x\n_cell_length_a 5\nloop_\n_atom_site_label\n_atom_site_Cartn_x\nNa 0\n",
            "Cartesian",
        ),
        (
            cif("Na 0 0", columns=("label", "fract_x", "fract_y")),
            r"lack fractional coordinates \(_atom_site_fract_z\)",
        ),
    ],
)
def test_unreadable_cifs_raise_a_clear_error(text, message):
    with pytest.raises(CifError, match=message):
        read_cif(text)


def test_cif_error_is_a_value_error():
    assert issubclass(CifError, ValueError)


# --- real data -------------------------------------------------------------------------------


def assert_same_pattern(text: str, name: str) -> None:
    """read_cif + stick_pattern against parse_cif + stick_pattern on one CIF."""
    read = read_cif(text)
    structure = parse_cif(text)
    ref = stick_pattern(structure, "CuKa", (5, 90))
    ours = stick_pattern(read.sites, "CuKa", (5, 90))
    agreement = compare_sticks((ref.two_theta, ref.intensity), (ours.two_theta, ours.intensity))
    assert agreement.compared > 0, name
    assert agreement.max_position_error < POSITION_TOL, name
    assert agreement.max_intensity_error < INTENSITY_TOL, name
    assert read.formula == structure.composition.reduced_formula, name


def test_agrees_with_pymatgen_on_materials_project_cifs(shared_data):
    table = pd.read_csv(shared_data / "xrd" / "mp_structures.csv.gz")
    sample = table.sample(30, random_state=7)
    for material, text in zip(sample.material_id, sample.cif, strict=True):
        read = read_cif(text)
        assert read.space_group == 1 and read.notes == (), material  # MP writes P1
        assert len(read.sites.frac_coords) == len(parse_cif(text)), material
        assert_same_pattern(text, material)


def _pymatgen_reads_the_same_elements(text: str) -> bool:
    """Whether pymatgen reads the CIF at all and to the elements read_cif reads.

    pymatgen misreads some AMCSD labels (``NH4`` as nihonium, ``Fl`` as flerovium, ``BI`` as
    Bi) and has D where read_cif has H (same scattering).
    """
    try:
        structure = parse_cif(text)
    except StructureError:
        return False
    theirs = {"H" if e.symbol == "D" else e.symbol for e in structure.composition}
    return theirs == set(read_cif(text).sites.elements)


def _disordered(text: str) -> bool:
    """Partial occupancy or several elements on one site, as read_cif reads the CIF."""
    try:
        occupancy = read_cif(text).sites.occupancy
    except CifError:
        return False
    return bool(((occupancy > 0).sum(axis=1) > 1).any() or (occupancy.sum(axis=1) < 0.999).any())


def test_agrees_with_pymatgen_on_amcsd_cifs_including_disordered_ones(shared_data):
    table = pd.read_csv(shared_data / "xrd" / "amcsd_structures.csv.gz", dtype={"amcsd_id": str})
    shuffled = table.sample(frac=1.0, random_state=3)
    disordered = [_disordered(text) for text in shuffled.cif.iloc[:200]]
    sample = pd.concat(
        [
            shuffled.iloc[:200][disordered].head(15),
            shuffled.iloc[:200][[not d for d in disordered]].head(15),
        ]
    )
    assert len(sample) == 30
    compared = 0
    for entry, text in zip(sample.amcsd_id, sample.cif, strict=True):
        if not _pymatgen_reads_the_same_elements(text):
            continue
        assert len(read_cif(text).sites.frac_coords) == len(parse_cif(text)), entry
        assert_same_pattern(text, entry)
        compared += 1
    # Skips are only CIFs pymatgen cannot read (about 1.5 % of AMCSD): nearly all are compared.
    assert compared >= 27


def test_amcsd_near_duplicates_merge_where_pymatgen_doubles_atoms(shared_data):
    table = pd.read_csv(shared_data / "xrd" / "amcsd_structures.csv.gz", dtype={"amcsd_id": str})
    gallium = table.set_index("amcsd_id").loc["0009475", "cif"]
    read = read_cif(gallium)
    assert len(read.sites.frac_coords) == 66 and len(parse_cif(gallium)) == 84
    assert read.formula == "Ga" and read.space_group == 166
