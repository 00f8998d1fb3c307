from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Lattice, Structure

from nanoxtal.xrd.diffraction import (
    SimulationError,
    compare_sticks,
    peak_table,
    reciprocal_rows,
    reflections,
    run_starts,
    site_sums,
    stick_pattern,
)
from nanoxtal.xrd.radiation import WAVELENGTHS


def rock_salt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def bragg_two_theta(d: float, wavelength: float) -> float:
    return math.degrees(2 * math.asin(wavelength / (2 * d)))


def test_rock_salt_positions_extinctions_and_multiplicities():
    a = 5.64
    pattern = stick_pattern(rock_salt(a), "CuKa", (10, 90))
    families = {tuple(sorted(np.abs(hkl))): i for i, hkl in enumerate(pattern.hkl)}
    # Face-centred: h, k, l all even or all odd; nothing else may appear.
    for h, k, l in families:
        assert len({h % 2, k % 2, l % 2}) == 1
    assert (0, 0, 1) not in families and (0, 1, 1) not in families
    for (h, k, l), i in families.items():
        d = a / math.sqrt(h * h + k * k + l * l)
        assert pattern.d[i] == pytest.approx(d, rel=1e-9)
        assert pattern.two_theta[i] == pytest.approx(
            bragg_two_theta(d, WAVELENGTHS["CuKa"]), abs=1e-9
        )
    # Multiplicities of the cubic forms {111}, {200}, {220}; (200) is the strongest line.
    assert [pattern.multiplicity[families[f]] for f in [(1, 1, 1), (0, 0, 2), (0, 2, 2)]] == [
        8,
        6,
        12,
    ]
    assert pattern.intensity[families[(0, 0, 2)]] == pytest.approx(100)
    assert np.all(np.diff(pattern.two_theta) > 0)


def test_d_spacings_do_not_depend_on_the_wavelength():
    cu = stick_pattern(rock_salt(), "CuKa", (5, 90))
    mo = stick_pattern(rock_salt(), "MoKa", (5, 90))
    assert len(mo) > len(cu)  # shorter wavelength reaches more reflections in the same range
    common = np.intersect1d(np.round(cu.d, 8), np.round(mo.d, 8))
    assert len(common) == len(cu)
    for d, two_theta in zip(mo.d, mo.two_theta, strict=True):
        assert two_theta == pytest.approx(bragg_two_theta(d, WAVELENGTHS["MoKa"]), abs=1e-9)


def test_debye_waller_damps_high_angles_as_pymatgen():
    structure = rock_salt()
    # One B for all atoms scales every peak by exp(-2 B s²): relative to the strongest (low
    # angle) line, every line above it loses intensity, and more so at higher angle.
    damped, plain = stick_pattern(structure, debye_waller=1.0), stick_pattern(structure)
    ratio = damped.intensity / plain.intensity
    above = damped.two_theta > damped.two_theta[np.argmax(damped.intensity)]
    assert np.all(ratio[above] < 1) and np.all(np.diff(ratio[above]) < 0)
    # Element-specific B (Na-Cl difference reflections may even gain): as pymatgen has it.
    ours = stick_pattern(structure, debye_waller={"Na": 1.5, "Cl": 1.0})
    ref = XRDCalculator(debye_waller_factors={"Na": 1.5, "Cl": 1.0}).get_pattern(
        structure, two_theta_range=(5, 90)
    )
    agreement = compare_sticks((np.array(ref.x), np.array(ref.y)), (ours.two_theta, ours.intensity))
    assert agreement.max_intensity_error < 1e-6 and agreement.max_position_error < 1e-9


def test_partial_occupancy_matches_pymatgen():
    alloy = Structure(Lattice.cubic(3.75), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    alloy = alloy.get_primitive_structure()
    ours = stick_pattern(alloy)
    ref = XRDCalculator().get_pattern(alloy, two_theta_range=(5, 90))
    agreement = compare_sticks((np.array(ref.x), np.array(ref.y)), (ours.two_theta, ours.intensity))
    assert agreement.compared == len(ref.x)
    assert agreement.max_intensity_error < 1e-6


def test_agrees_with_pymatgen_on_materials_project_structures(shared_data):
    table = pd.read_csv(shared_data / "xrd" / "mp_structures.csv.gz")
    sample = table.sample(40, random_state=1)
    calculator = XRDCalculator("CuKa")
    for material, cif in zip(sample.material_id, sample.cif, strict=True):
        structure = Structure.from_str(cif, fmt="cif")
        ref = calculator.get_pattern(structure, two_theta_range=(5, 90))
        ours = stick_pattern(structure, "CuKa", (5, 90))
        agreement = compare_sticks(
            (np.array(ref.x), np.array(ref.y)), (ours.two_theta, ours.intensity)
        )
        assert agreement.max_position_error < 0.01, material
        assert agreement.max_intensity_error < 1.0, material


def oblique_lattices() -> list[np.ndarray]:
    """Triclinic cells, one of them left-handed (a negative triple product)."""
    rng = np.random.default_rng(4)
    cells = [Lattice.from_parameters(4.1, 5.3, 7.9, 81.0, 97.0, 112.0).matrix]
    cells += [np.diag([3.0, 4.0, 5.0]) + rng.normal(0, 0.6, (3, 3)) for _ in range(3)]
    cells.append(cells[0][[1, 0, 2]])  # rows swapped: left-handed
    return cells


@pytest.mark.parametrize("lattice", oblique_lattices())
def test_reciprocal_rows_and_reflections_match_a_plain_enumeration(lattice):
    np.testing.assert_allclose(reciprocal_rows(lattice), np.linalg.inv(lattice).T, atol=1e-12)
    g_min, g_max = 0.1, 0.9
    found = reflections(lattice, g_min, g_max)
    # Every (h, k, l) of one Friedel half-space in range, by brute force over a wide box.
    metric = np.linalg.inv(lattice).T @ np.linalg.inv(lattice)
    box = np.arange(-12, 13)
    hkl = np.stack(np.meshgrid(box, box, box, indexing="ij"), -1).reshape(-1, 3)
    g = np.sqrt(np.einsum("ni,ij,nj->n", hkl, metric, hkl))
    h, k, l = hkl.T
    half = (h > 0) | ((h == 0) & (k > 0)) | ((h == 0) & (k == 0) & (l > 0))
    expected = hkl[half & (g >= g_min) & (g <= g_max)]
    assert {tuple(r) for r in found.hkl} == {tuple(r) for r in expected}
    np.testing.assert_allclose(
        found.g, np.sqrt(np.einsum("ni,ij,nj->n", found.hkl, metric, found.hkl))
    )


def test_site_sums_equal_the_direct_sum_over_sites():
    lattice = oblique_lattices()[0]
    refl = reflections(lattice, 0.1, 1.2)
    rng = np.random.default_rng(1)
    frac = rng.random((7, 3))
    occupancy = rng.random((7, 2))
    phases = np.exp(2j * np.pi * refl.hkl @ frac.T)  # (m, sites), every sine and cosine
    np.testing.assert_allclose(site_sums(refl, frac, occupancy), phases @ occupancy, atol=1e-11)


def test_peak_table_has_one_row_per_peak_of_each_structure():
    patterns = [
        ("NaCl", stick_pattern(rock_salt())),
        ("none", stick_pattern(rock_salt(), two_theta_range=(1.0, 1.1))),
        ("KCl", stick_pattern(rock_salt(6.29))),
    ]
    table = peak_table(patterns)
    assert table["id"].tolist() == ["NaCl"] * len(patterns[0][1]) + ["KCl"] * len(patterns[2][1])
    kcl = table[table["id"] == "KCl"]
    np.testing.assert_array_equal(kcl["two_theta"], patterns[2][1].two_theta)
    np.testing.assert_array_equal(kcl[["h", "k", "l"]].to_numpy(), patterns[2][1].hkl)
    assert peak_table([]).empty


def test_runs_keep_equivalent_reflections_together_across_a_bin_edge():
    # 2θ values straddling a 1e-5° rounding edge (pymatgen-style binning would split them).
    edge = 30.000005
    two_theta = np.array([edge - 1e-12, edge + 1e-12, 30.00002, 31.0])
    assert run_starts(two_theta, 1e-5).tolist() == [True, False, True, True]
    # A gap per step (relative tolerances): the same values, one step allowed to be wide.
    assert run_starts(two_theta, np.array([1e-5, 1e-4, 1e-5])).tolist() == [
        True,
        False,
        False,
        True,
    ]


def test_unknown_element_is_a_clear_error():
    weird = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    with pytest.raises(SimulationError, match="'Og'"):
        stick_pattern(weird)


def test_wavelength_strings_may_hold_numbers():
    mo = stick_pattern(rock_salt(), ".7093", (5, 60))
    assert mo.wavelength == pytest.approx(0.7093)
    assert len(mo) == len(stick_pattern(rock_salt(), 0.7093, (5, 60)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown radiation"):
        stick_pattern(rock_salt(), "CuKz")
    with pytest.raises(ValueError, match="range"):
        stick_pattern(rock_salt(), two_theta_range=(90, 10))


def test_nothing_in_range_gives_an_empty_pattern():
    assert len(stick_pattern(rock_salt(), two_theta_range=(0.1, 1.0))) == 0


def test_compare_sticks_flags_missing_and_shifted_peaks():
    x, y = np.array([10.0, 20.0]), np.array([100.0, 50.0])
    assert compare_sticks((x, y), (x, y)).max_intensity_error == 0
    shifted = compare_sticks((x, y), (x + np.array([0.0, 0.0005]), y))
    assert shifted.max_position_error == pytest.approx(0.0005)
    missing = compare_sticks((x, y), (x[:1], y[:1]))
    assert math.isinf(missing.max_position_error)
