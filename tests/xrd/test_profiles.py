from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from nanoxtal.xrd.diffraction import stick_pattern
from nanoxtal.xrd.profiles import (
    Augmentation,
    Grid,
    Renderer,
    make_batch,
    peak_fwhm,
    pseudo_voigt,
)
from nanoxtal.xrd.radiation import WAVELENGTHS

CLEAN = Augmentation.clean()
GRID = Grid()


def only(**changes) -> Augmentation:
    """The clean instrument with some effects switched on."""
    return Augmentation(**{**CLEAN.__dict__, **changes})


def single_peak(d: float, hkl=(1, 0, 0), lattice=None, system: int = 6, intensity: float = 100.0):
    lattice = np.eye(3) * d if lattice is None else lattice
    return make_batch(
        [(np.array([d]), np.array([intensity]), np.array([hkl]))], [lattice], [system]
    )


def bragg(d: float, wavelength: float = WAVELENGTHS["CuKa"]) -> float:
    return math.degrees(2 * math.asin(wavelength / (2 * d)))


def centroid(pattern: torch.Tensor, lo: float, hi: float) -> float:
    """Position of the highest point in (lo, hi), refined by a parabola through its neighbours."""
    x = GRID.values().double()
    inside = torch.nonzero((x > lo) & (x < hi)).flatten()
    i = int(inside[pattern[inside].argmax()])
    y0, y1, y2 = (float(v) for v in pattern[i - 1 : i + 2].double())
    return float(x[i]) + 0.5 * GRID.step * (y0 - y2) / (y0 - 2 * y1 + y2)


def measured_fwhm(pattern: torch.Tensor) -> float:
    y = pattern.double().numpy()
    above = np.flatnonzero(y >= y.max() / 2)
    return (above[-1] - above[0] + 1) * GRID.step


def test_grid_is_the_rruff_grid():
    values = GRID.values()
    assert len(values) == 8500
    assert float(values[0]) == pytest.approx(5.0) and float(values[-1]) == pytest.approx(89.99)


def test_pseudo_voigt_has_unit_area_and_the_requested_fwhm():
    x = torch.linspace(-50, 50, 200001, dtype=torch.float64)
    for eta in (0.0, 0.5, 1.0):
        y = pseudo_voigt(x, torch.tensor(0.2, dtype=torch.float64), torch.tensor(eta))
        assert float(torch.trapezoid(y, x)) == pytest.approx(1.0, abs=2e-3)
        half = x[y >= y.max() / 2]
        assert float(half[-1] - half[0]) == pytest.approx(0.2, abs=1e-3)


def test_clean_render_puts_peaks_at_bragg_positions():
    d = 2.82
    pattern = Renderer()(single_peak(d))[0]
    assert float(pattern.max()) == pytest.approx(1.0)
    assert centroid(pattern, bragg(d) - 1, bragg(d) + 1) == pytest.approx(bragg(d), abs=0.005)


def test_smaller_crystallites_broaden_peaks_as_scherrer_says():
    d = 1.5
    widths = []
    for size in (200.0, 10.0):
        pattern = Renderer()(single_peak(d), only(crystallite_nm=(size, size), eta=(0.0, 0.0)))[0]
        widths.append(measured_fwhm(pattern))
    theta = torch.tensor([[math.radians(bragg(d) / 2)]], dtype=torch.float64)
    expected = peak_fwhm(
        theta,
        WAVELENGTHS["CuKa"],
        *(torch.tensor([v]) for v in (0.004, -0.002, 0.004)),
        torch.tensor([10.0]),
    )
    assert widths[1] > 2 * widths[0]
    assert widths[1] == pytest.approx(float(expected), abs=0.02)


def test_cubic_strain_moves_every_peak_as_the_cell_grows():
    structure = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    sticks = stick_pattern(structure)
    batch = make_batch([(sticks.d, sticks.intensity, sticks.hkl)], [structure.lattice.matrix], [6])
    strained = Renderer()(batch, only(lattice_strain=(0.01, 0.01)))[0]
    d200 = 5.64 / 2
    assert centroid(strained, bragg(d200) - 0.5, bragg(d200) + 0.3) == pytest.approx(
        bragg(d200 * 1.01), abs=0.005
    )


def test_tetragonal_strain_moves_00l_and_h00_independently():
    lattice = np.diag([4.0, 4.0, 6.0])
    d = np.array([4.0, 3.0])  # (100) and (002)
    batch = make_batch(
        [(d, np.array([100.0, 100.0]), np.array([[1, 0, 0], [0, 0, 2]]))], [lattice], [3]
    )
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    pattern = Renderer()(batch, only(lattice_strain=(-0.02, 0.02)), generator)[0]
    e = torch.rand(1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e_a = float(-0.02 + 0.04 * e)
    assert centroid(pattern, bragg(4.0) - 1, bragg(4.0) + 1) == pytest.approx(
        bragg(4.0 * (1 + e_a)), abs=0.005
    )
    moved_c = centroid(pattern, bragg(3.0) - 1, bragg(3.0) + 1)
    assert moved_c != pytest.approx(bragg(3.0 * (1 + e_a)), abs=0.005)


def test_march_dollase_platelets_enhance_00l():
    lattice = np.diag([4.0, 4.0, 6.0])
    batch = make_batch(
        [(np.array([4.0, 3.0]), np.array([100.0, 100.0]), np.array([[1, 0, 0], [0, 0, 2]]))],
        [lattice],
        [3],
    )
    pattern = Renderer()(batch, only(march_dollase_r=(0.7, 0.7)))[0]
    i100 = float(pattern[(GRID.values() - bragg(4.0)).abs().argmin()])
    i002 = float(pattern[(GRID.values() - bragg(3.0)).abs().argmin()])
    # r < 1: (00l) along the axis gains r^-3, (h00) normal to it gains r^1.5.
    ratio_expected = (0.7**-3) / (0.7**1.5)
    fwhm = peak_fwhm(
        torch.tensor(
            [[math.radians(bragg(3.0) / 2), math.radians(bragg(4.0) / 2)]], dtype=torch.float64
        ),
        WAVELENGTHS["CuKa"],
        *(torch.tensor([v]) for v in (0.004, -0.002, 0.004)),
    )[0]
    width_ratio = float(fwhm[1] / fwhm[0])  # peak heights scale as area / width
    assert i002 / i100 == pytest.approx(ratio_expected * width_ratio, rel=0.03)


def _tetragonal_two_peaks(n: int = 1):
    """(100) at d = 4 Å and (002) at d = 3 Å of a 4 × 4 × 6 Å cell, equal sticks."""
    lattice = np.diag([4.0, 4.0, 6.0])
    peak = (np.array([4.0, 3.0]), np.array([100.0, 100.0]), np.array([[1, 0, 0], [0, 0, 2]]))
    return make_batch([peak] * n, [lattice] * n, [3] * n)


def _heights(pattern: torch.Tensor) -> tuple[float, float]:
    """Heights at the (100) and (002) peaks of ``_tetragonal_two_peaks``."""
    x = GRID.values()
    return (
        float(pattern[(x - bragg(4.0)).abs().argmin()]),
        float(pattern[(x - bragg(3.0)).abs().argmin()]),
    )


def test_texture_axis_decides_which_reflections_grow():
    along_c = Renderer()(_tetragonal_two_peaks(), only(march_dollase_r=(0.5, 0.5)))[0]
    along_a = Renderer()(
        _tetragonal_two_peaks(), only(march_dollase_r=(0.5, 0.5), texture_axes=((1, 0, 0),))
    )[0]
    i100_c, i002_c = _heights(along_c)
    i100_a, i002_a = _heights(along_a)
    # r < 1 favours the reflection along the axis: (002) for [001], (100) for [100].
    assert i002_c > 3 * i100_c
    assert i100_a > 3 * i002_a


def test_films_take_their_r_from_film_r_for_their_share_of_the_batch():
    batch = _tetragonal_two_peaks(400)
    films = Renderer()(
        batch,
        only(march_dollase_r=(1.0, 1.0), film_probability=0.3, film_r=(0.2, 0.2)),
        torch.Generator().manual_seed(3),
    )
    i002_over_i100 = np.array([b / a for a, b in map(_heights, films)])
    powders = np.isclose(i002_over_i100, i002_over_i100.min(), rtol=0.01)
    # r = 0.2 makes (002) (r^-3 = 125) over (100) (r^1.5 = 0.089) ≈ 1,400× stronger in area.
    assert i002_over_i100.max() > 100 * i002_over_i100.min()
    assert 0.22 < np.mean(~powders) < 0.38  # 0.3 ± 3.5 binomial σ (n = 400)


def test_a_window_keeps_part_of_the_range_scaled_as_a_partial_scan_is_read():
    batch = _tetragonal_two_peaks(200)
    augmentation = only(
        background=(0.1, 0.1),
        window_probability=0.5,
        window_start=(15.0, 20.0),
        window_end=(25.0, 28.0),
    )
    out = Renderer()(batch, augmentation, torch.Generator().manual_seed(2))
    x = GRID.values()
    outside = (x < 15.0) | (x > 28.0)
    windowed = (out[:, outside] == 0).all(dim=1)
    assert 0.4 < float(windowed.float().mean()) < 0.6
    # Inside the window, min-max 0-1 (as nanoxtal.xrd.io.to_grid reads a partial scan):
    # the background offset is gone and (100) at 22.2° is the maximum; (002) at 29.7° is cut.
    cut = out[windowed]
    assert torch.allclose(cut.amax(dim=1), torch.ones(len(cut)))
    assert float(cut[:, (x >= 20.0) & (x <= 25.0)].amin()) < 0.02
    assert float(cut[:, (x - bragg(3.0)).abs() < 0.5].max()) == 0.0
    # The rest keep the whole grid, max-normalised with their background.
    whole = out[~windowed]
    assert float(whole[:, x < 15.0].mean()) > 0.05


@pytest.mark.parametrize(
    "changes",
    [
        {"film_probability": 1.5},
        {"window_probability": -0.1},
        {"texture_axes": ((0, 0, 0),)},
        {"window_start": (30.0, 50.0), "window_end": (45.0, 90.0)},
    ],
)
def test_bad_texture_or_window_settings_are_refused(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        Augmentation(**changes)


def test_zero_shift_and_displacement_move_peaks():
    d = 2.0
    shifted = Renderer()(single_peak(d), only(zero_shift=(0.1, 0.1)))[0]
    assert centroid(shifted, bragg(d) - 1, bragg(d) + 1) == pytest.approx(bragg(d) + 0.1, abs=0.005)
    displaced = Renderer()(single_peak(d), only(displacement_mm=(0.2, 0.2)))[0]
    theta = math.radians(bragg(d) / 2)
    expected = bragg(d) + math.degrees(-2 * 0.2 * math.cos(theta) / 240.0)
    assert centroid(displaced, bragg(d) - 1, bragg(d) + 1) == pytest.approx(expected, abs=0.005)


def test_ka2_adds_a_half_intensity_peak_at_its_own_bragg_angle():
    d = 1.2  # high angle: the doublet is resolved
    pattern = Renderer()(single_peak(d), only(ka2_ratio=0.5))[0]
    x = GRID.values()
    p1 = float(pattern[(x - bragg(d, WAVELENGTHS["CuKa1"])).abs().argmin()])
    p2 = float(pattern[(x - bragg(d, WAVELENGTHS["CuKa2"])).abs().argmin()])
    assert p1 == pytest.approx(1.0, abs=0.02)
    assert p2 == pytest.approx(0.5, abs=0.08)


def test_background_noise_and_impurities_are_seeded_and_visible():
    batch = make_batch(
        [
            (np.array([2.0]), np.array([100.0]), np.array([[1, 0, 0]])),
            (np.array([3.0]), np.array([100.0]), np.array([[1, 0, 0]])),
        ],
        [np.eye(3) * 2.0, np.eye(3) * 3.0],
        [6, 6],
    )
    augmentation = only(
        background=(0.2, 0.2),
        peak_counts=(1e3, 1e3),
        impurity_fraction=(0.3, 0.3),
        impurity_probability=1.0,
    )
    a = Renderer()(batch, augmentation, torch.Generator().manual_seed(5))
    b = Renderer()(batch, augmentation, torch.Generator().manual_seed(5))
    c = Renderer()(batch, augmentation, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = GRID.values()
    far = (x - bragg(2.0)).abs() > 2
    far &= (x - bragg(3.0)).abs() > 2
    assert float(a[0][far].mean()) > 0.05  # background lifts the baseline
    # Pattern 0 carries pattern 1's peak as an impurity.
    assert float(a[0][(x - bragg(3.0)).abs() < 0.05].max()) > 0.1
    # Poisson noise: neighbouring background points differ.
    assert float(a[0][far].diff().abs().mean()) > 0


def test_default_augmentation_renders_a_batch_of_real_patterns():
    structure = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    sticks = stick_pattern(structure)
    batch = make_batch(
        [(sticks.d, sticks.intensity, sticks.hkl)] * 4, [structure.lattice.matrix] * 4, [6] * 4
    )
    out = Renderer()(batch, Augmentation(), torch.Generator().manual_seed(0))
    assert out.shape == (4, 8500)
    assert torch.all(out >= 0) and torch.allclose(out.amax(dim=1), torch.ones(4))
    assert not torch.allclose(out[0], out[1])


def _copies(n: int):
    """A batch of ``n`` one-peak patterns (d = 2 Å)."""
    peak = (np.array([2.0]), np.array([100.0]), np.array([[1, 0, 0]]))
    return make_batch([peak] * n, [np.eye(3) * 2.0] * n, [6] * n)


def _implied_counts(patterns: torch.Tensor, far: torch.Tensor) -> np.ndarray:
    """Counts at the maximum that Poisson noise of the flat background implies, per pattern."""
    flat = patterns[:, far].double()
    variance = flat.diff(dim=1).var(dim=1) / 2  # differences cancel the slow background shape
    return (flat.mean(dim=1) / variance).numpy()


def test_counting_noise_follows_the_counts_and_is_drawn_log_uniformly():
    batch = _copies(256)
    x = GRID.values()
    far = (x - bragg(2.0)).abs() > 3
    generator = torch.Generator().manual_seed(0)
    fixed = Renderer()(batch, only(background=(0.1, 0.1), peak_counts=(300.0, 300.0)), generator)
    assert np.median(_implied_counts(fixed, far)) == pytest.approx(300, rel=0.15)
    spread = Renderer()(batch, only(background=(0.1, 0.1), peak_counts=(10.0, 1e4)), generator)
    implied = _implied_counts(spread, far)
    # Log-uniform: the median draw is near the geometric mean (316), far below a uniform
    # draw's 5,000; and a quarter of the patterns lie in each decade's quarter of the log range.
    assert 200 < np.median(implied) < 500
    assert 0.15 < np.mean(implied < 10 ** (1 + 0.75)) < 0.35


def test_default_counting_noise_is_as_noisy_as_measured_rruff():
    batch = _copies(128)
    x = GRID.values()
    far = (x - bragg(2.0)).abs() > 3
    patterns = Renderer()(
        batch,
        only(background=(0.05, 0.05), peak_counts=Augmentation().peak_counts),
        torch.Generator().manual_seed(1),
    )
    implied = _implied_counts(patterns, far)
    # The RRUFF fine-tune part's 10th / 50th / 90th percentiles: 51 / 241 / 682 counts.
    assert np.percentile(implied, 10) < 80
    assert 150 < np.median(implied) < 400
    assert np.percentile(implied, 90) < 2000


# Scherrer widths computed by hand (not by ``peak_fwhm``), β = K λ / (L cos θ) in rad of 2θ,
# K = 0.9, Cu Kα1 λ = 1.5406 Å, so K λ = 1.38654 Å; L in nm is ×10 Å:
#   2θ = 40°, L = 10 nm: θ = 20°, cos θ = 0.9396926, L cos θ = 93.96926 Å,
#       β = 1.38654 / 93.96926 = 0.01475525 rad × (180/π) = 0.845414° 2θ
#   2θ = 80°, L = 10 nm: θ = 40°, cos θ = 0.7660444, L cos θ = 76.60444 Å,
#       β = 0.01809999 rad = 1.037053° 2θ (1/cos θ: 0.9396926 / 0.7660444 = 1.226682 × 40°'s)
#   2θ = 40°, L = 20 nm: L cos θ = 187.9385 Å, β = 0.00737763 rad = 0.422707° 2θ (1/L: half)
# A wrong unit shows: λ taken as nm (×10), L as Å (×10), θ for 2θ in cos (cos 40° for cos 20°:
# ×1.227), the width in θ instead of 2θ (×1/2), or the result left in radians (×1/57.3).
SCHERRER_WAVELENGTH = 1.5406  # Å, Cu Kα1
SCHERRER_FWHM = {  # (2θ degrees, L nm): FWHM degrees 2θ
    (40.0, 10.0): 0.845414,
    (80.0, 10.0): 1.037053,
    (40.0, 20.0): 0.422707,
}
NO_INSTRUMENT = {"caglioti_u": (0.0, 0.0), "caglioti_v": (0.0, 0.0), "caglioti_w": (0.0, 0.0)}


def scherrer_fwhm(two_theta: float, size_nm: float, u=0.0, v=0.0, w=0.0, strain=None) -> float:
    """``peak_fwhm`` at one angle (degrees 2θ) for one crystallite size (nm)."""
    theta = torch.tensor([[math.radians(two_theta / 2)]], dtype=torch.float64)
    u, v, w = (torch.tensor([x], dtype=torch.float64) for x in (u, v, w))
    size = torch.tensor([size_nm], dtype=torch.float64)
    strain = None if strain is None else torch.tensor([strain], dtype=torch.float64)
    return float(peak_fwhm(theta, SCHERRER_WAVELENGTH, u, v, w, size, strain))


def half_max_width(pattern: torch.Tensor, lo: float, hi: float) -> float:
    """FWHM (degrees) of the highest peak in (lo, hi): half-maximum crossings interpolated."""
    x = GRID.values().double().numpy()
    y = pattern.double().numpy()
    inside = np.flatnonzero((x > lo) & (x < hi))
    top = int(inside[y[inside].argmax()])
    half = y[top] / 2
    left = top
    while y[left] >= half:
        left -= 1
    right = top
    while y[right] >= half:
        right += 1
    # Linear interpolation between the last point above and the first below, on each side.
    x_left = x[left] + (half - y[left]) / (y[left + 1] - y[left]) * GRID.step
    x_right = x[right - 1] + (y[right - 1] - half) / (y[right - 1] - y[right]) * GRID.step
    return float(x_right - x_left)


def test_peak_fwhm_matches_the_hand_computed_scherrer_width():
    # Instrument off: U = V = W = 0, so H² = 0 is clamped to 1e-8 deg², which adds
    # √(0.845414² + 1e-8) − 0.845414 = 6e-9° (far below the 1e-5 relative tolerance).
    for (two_theta, size), expected in SCHERRER_FWHM.items():
        assert scherrer_fwhm(two_theta, size) == pytest.approx(expected, rel=1e-5)
    # 1/cos θ between 2θ = 40° and 80°, and 1/L between 10 and 20 nm (not exactly 2: the
    # 1e-8 deg² floor weighs 4× more against the narrower peak, 2 × (1 − 2e-8)).
    assert scherrer_fwhm(80.0, 10.0) / scherrer_fwhm(40.0, 10.0) == pytest.approx(
        1.226682, rel=1e-5
    )
    assert scherrer_fwhm(40.0, 10.0) / scherrer_fwhm(40.0, 20.0) == pytest.approx(2.0, rel=1e-6)


def test_peak_fwhm_adds_instrument_size_and_strain_in_quadrature_by_hand():
    # 2θ = 40°, L = 10 nm, the clean instrument U = 0.004, V = -0.002, W = 0.004 deg², ε = 1e-3:
    #   tan 20° = 0.3639702, tan² 20° = 0.1324743
    #   Caglioti H² = 0.004 × 0.1324743 − 0.002 × 0.3639702 + 0.004 = 0.00380196 deg²
    #   strain 4 ε tan θ = 0.00145588 rad = 0.0834158°, squared 0.00695820 deg²
    #   size 0.845414°, squared 0.714724 deg²
    #   FWHM = √(0.714724 + 0.00380196 + 0.00695820) = √0.725484 = 0.851754°
    fwhm = scherrer_fwhm(40.0, 10.0, u=0.004, v=-0.002, w=0.004, strain=1e-3)
    assert fwhm == pytest.approx(0.851754, rel=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_rendered_peaks_have_the_hand_computed_scherrer_width(eta):
    # One peak per pattern at 2θ = 40° (d = λ / (2 sin 20°) = 2.252207 Å) and one at 80°
    # (d = 1.198374 Å), rendered with the Kα1 wavelength the widths above were computed for.
    renderer = Renderer(wavelength=SCHERRER_WAVELENGTH)
    d40, d80 = (SCHERRER_WAVELENGTH / (2 * math.sin(math.radians(t / 2))) for t in (40, 80))
    batch = make_batch(
        [(np.array([d]), np.array([100.0]), np.array([[1, 0, 0]])) for d in (d40, d80)],
        [np.eye(3) * d40, np.eye(3) * d80],
        [6, 6],
    )
    widths = {}
    for size in (10.0, 20.0):
        augmentation = only(**NO_INSTRUMENT, eta=(eta, eta), crystallite_nm=(size, size))
        at40, at80 = renderer(batch, augmentation)
        widths[40.0, size] = half_max_width(at40, 35.0, 45.0)
        widths[80.0, size] = half_max_width(at80, 75.0, 85.0)
    # Within two grid steps: the renderer blends the two kernel-bank widths around each local
    # FWHM, which draws a peak up to ~1 % narrower than asked (0.008° at 0.85°).
    for key, expected in SCHERRER_FWHM.items():
        assert widths[key] == pytest.approx(expected, abs=2 * GRID.step), key
    assert widths[80.0, 10.0] / widths[40.0, 10.0] == pytest.approx(1.226682, rel=0.01)
    assert widths[40.0, 10.0] / widths[40.0, 20.0] == pytest.approx(2.0, rel=0.01)
