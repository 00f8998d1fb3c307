"""Render stick patterns into measured-looking powder patterns, batched, with augmentations.

Each effect is a physical model of something a diffractometer or a sample does:

- Instrument profile: pseudo-Voigt with the Caglioti FWHM, H² = U tan²θ + V tanθ + W (deg²)
  (Caglioti, Paoletti & Ricci, Nucl. Instrum. 3, 223 (1958)).
- Crystallite size: Scherrer broadening β = K λ / (L cos θ) (rad), K = 0.9; microstrain:
  β = 4 ε tan θ (Stokes & Wilson); combined with the instrument in quadrature (Gaussian
  convolution approximation).
- Lattice strain / alloying (Vegard-like): cell edges scaled by (1 + e_a, 1 + e_b, 1 + e_c),
  tied as the crystal system requires (cubic: one e; tetragonal, trigonal, hexagonal: e_a = e_b),
  which keeps the symmetry; each peak moves with its hkl through 1/d² = h' G* h', h' = h/(1+e).
- Preferred orientation: March–Dollase, P = (r² cos²α + sin²α / r)^(-3/2), α the angle between
  the peak's (representative) scattering vector and the texture axis (Dollase, J. Appl.
  Cryst. 19, 267 (1986)). The axis is drawn per pattern from low-index directions; a share
  of patterns are textured films, with r far below 1 (strongly oriented platelets or
  columns: films grown on a substrate show mostly one family of reflections).
- Partial 2θ range: a share of patterns are measured over a window only (films are often
  scanned 10-60°); outside it the pattern is 0 and inside it is min-max scaled, exactly as a
  partial measured scan is read (``nanoxtal.xrd.io``).
- Zero shift Δ2θ = z, and sample displacement Δ2θ = -2 s cos θ / R (rad) for a Bragg–Brentano
  goniometer of radius R (Klug & Alexander, *X-ray Diffraction Procedures*, 1974).
- Kα2: each peak again at 2θ from λ(Kα2) with the Kα2/Kα1 intensity ratio (0.5 for Cu).
- Background: a broad amorphous hump (Gaussian in 2θ) plus a low-order polynomial.
- Counting noise: Poisson at a random peak count, plus Gaussian read-out noise.
- Impurity phases: a scaled fraction of another pattern of the batch added in.
- Intensity scaling: per-peak log-normal jitter (counting statistics, texture residues).

Output is on the model grid (default 5.00-89.99° in 0.01° steps, 8,500 points, the RRUFF grid of
Salgado et al. 2023), max-normalised to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from nanoxtal.xrd.radiation import WAVELENGTHS


@dataclass(frozen=True)
class Grid:
    """The 2θ grid patterns are rendered on, degrees."""

    start: float = 5.0
    step: float = 0.01
    points: int = 8500

    def values(self) -> torch.Tensor:
        """The grid's 2θ values, degrees (float64 positions, float32 out)."""
        return (self.start + self.step * torch.arange(self.points, dtype=torch.float64)).float()


@dataclass(frozen=True)
class PeakBatch:
    """Stick patterns of a batch, padded to the longest.

    Attributes:
        d: Interplanar spacings, Å, (B, P); padding has ``mask`` False.
        intensity: Peak intensities (any scale), (B, P).
        hkl: Representative Miller indices in the conventional cell, (B, P, 3).
        metric: Reciprocal metric tensor G* of each structure, Å⁻², (B, 3, 3).
        crystal_system: 0 triclinic ... 6 cubic, (B,).
        mask: Which entries are real peaks, (B, P).
    """

    d: torch.Tensor
    intensity: torch.Tensor
    hkl: torch.Tensor
    metric: torch.Tensor
    crystal_system: torch.Tensor
    mask: torch.Tensor


def reciprocal_metric(lattice: np.ndarray) -> np.ndarray:
    """G* = (A A^T)^-1 for lattice vectors A as rows, Å⁻²."""
    reciprocal = np.linalg.inv(np.asarray(lattice, dtype=float).reshape(3, 3)).T
    return reciprocal @ reciprocal.T


def make_batch(
    patterns: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    lattices: list[np.ndarray],
    crystal_systems: list[int],
) -> PeakBatch:
    """Pad stick patterns into a ``PeakBatch``.

    Args:
        patterns: Per structure: d (P,), intensity (P,), hkl (P, 3).
        lattices: Per structure: lattice vectors as rows (3, 3) or flat (9,), Å.
        crystal_systems: Per structure: crystal system index.
    """
    size = max(1, max(len(d) for d, _, _ in patterns))
    n = len(patterns)
    d = torch.ones(n, size, dtype=torch.float64)
    intensity = torch.zeros(n, size)
    hkl = torch.zeros(n, size, 3)
    mask = torch.zeros(n, size, dtype=torch.bool)
    for i, (dd, ii, hh) in enumerate(patterns):
        m = len(dd)
        d[i, :m] = torch.as_tensor(dd, dtype=torch.float64)
        intensity[i, :m] = torch.as_tensor(ii, dtype=torch.float32)
        hkl[i, :m] = torch.as_tensor(np.asarray(hh, dtype=np.float32).reshape(-1, 3))
        mask[i, :m] = True
    metric = torch.as_tensor(np.stack([reciprocal_metric(lat) for lat in lattices]))
    return PeakBatch(
        d=d,
        intensity=intensity,
        hkl=hkl,
        metric=metric,
        crystal_system=torch.as_tensor(crystal_systems, dtype=torch.long),
        mask=mask,
    )


Range = tuple[float, float]


# The low-index directions films and platelets are commonly oriented along (reciprocal-lattice
# indices): the texture axes a film render draws from.
LOW_INDEX_AXES: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0),
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 1.0, 1.0),
)


@dataclass(frozen=True)
class Augmentation:
    """Ranges the random effects are drawn from, uniformly per pattern (``None``: effect off).

    Widths in degrees 2θ; set both ends of a range equal for a fixed value. ``peak_counts``
    (counts at the strongest point, which set the Poisson noise) is drawn log-uniformly: it
    spans orders of magnitude. Its default matches the measured RRUFF fine-tune part, whose
    noise (robust σ of neighbouring differences against the median level, read as Poisson)
    implies 51 / 241 / 682 counts at the 10th / 50th / 90th percentile; 30-2,000
    log-uniformly gives 46 / 245 / 1,300. The earlier 10³-10⁵ (uniform) left synthetic
    patterns 3× (median) to 10× (90th percentile) less noisy than the measured ones.

    Texture and range (off by default, so renders for evaluation stay comparable; the
    training config turns them on): ``texture_axes`` are the candidate preferred-orientation
    axes (reciprocal-lattice indices, one drawn per pattern); ``film_probability`` of the
    patterns take their March–Dollase r from ``film_r`` instead of ``march_dollase_r``;
    ``window_probability`` of the patterns keep only 2θ from ``window_start`` to
    ``window_end`` (degrees, each drawn uniformly).
    """

    caglioti_u: Range = (0.0, 0.02)
    caglioti_v: Range = (-0.01, 0.0)
    caglioti_w: Range = (0.001, 0.01)
    eta: Range = (0.2, 0.8)
    crystallite_nm: Range | None = (20.0, 200.0)
    microstrain: Range | None = (0.0, 1e-3)
    lattice_strain: Range | None = (-0.01, 0.01)
    march_dollase_r: Range | None = (0.8, 1.2)
    zero_shift: Range | None = (-0.05, 0.05)
    displacement_mm: Range | None = (-0.1, 0.1)
    goniometer_radius_mm: float = 240.0
    ka2_ratio: float | None = 0.5
    background: Range | None = (0.0, 0.1)
    hump_center: Range = (15.0, 35.0)
    hump_width: Range = (5.0, 15.0)
    peak_counts: Range | None = (30.0, 2000.0)
    read_noise: Range | None = (0.0, 0.003)
    impurity_fraction: Range | None = (0.0, 0.1)
    impurity_probability: float = 0.3
    intensity_jitter: float | None = 0.1
    texture_axes: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 1.0),)
    film_probability: float = 0.0
    film_r: Range = (0.1, 0.5)
    window_probability: float = 0.0
    window_start: Range = (5.0, 20.0)
    window_end: Range = (45.0, 90.0)

    def __post_init__(self) -> None:
        for name in ("film_probability", "window_probability", "impurity_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.window_start[1] >= self.window_end[0]:
            raise ValueError(
                f"window_start {self.window_start} must end below window_end {self.window_end}:"
                " a window could otherwise be empty"
            )
        if not self.texture_axes or any(
            len(axis) != 3 or not any(axis) for axis in self.texture_axes
        ):
            raise ValueError(
                f"texture_axes must be non-zero (h, k, l) triples, got {self.texture_axes}"
            )
        # A config file gives lists; the dataclass is frozen and hashable with tuples.
        object.__setattr__(
            self, "texture_axes", tuple(tuple(float(v) for v in a) for a in self.texture_axes)
        )

    @classmethod
    def clean(cls) -> Augmentation:
        """A fixed, noise-free instrument: for validation, tests and reference renders."""
        return cls(
            caglioti_u=(0.004, 0.004),
            caglioti_v=(-0.002, -0.002),
            caglioti_w=(0.004, 0.004),
            eta=(0.5, 0.5),
            crystallite_nm=None,
            microstrain=None,
            lattice_strain=None,
            march_dollase_r=None,
            zero_shift=None,
            displacement_mm=None,
            ka2_ratio=None,
            background=None,
            peak_counts=None,
            read_noise=None,
            impurity_fraction=None,
            intensity_jitter=None,
        )


@dataclass(frozen=True)
class Renderer:
    """Renders ``PeakBatch``es onto a grid with random (or fixed) effects.

    Attributes:
        grid: Output grid.
        wavelength: Wavelength without a Kα2 line (Cu Kα, the 2:1 mean of the doublet), Å.
        ka1_wavelength: Kα1 wavelength, Å (with a Kα2 line: ``ka2_ratio`` set).
        ka2_wavelength: Kα2 wavelength, Å.
        tail_fwhm: How far a peak's tails are drawn, in units of the broadest FWHM of the
            batch (capped at ``max_tail_points``); a Lorentzian truncated at 30 FWHM keeps 99 %
            of its area.
        max_tail_points: Cap of that distance, grid points.
        width_ratio: Ratio of neighbouring widths in the kernel bank (see ``_draw``).
    """

    grid: Grid = field(default_factory=Grid)
    wavelength: float = WAVELENGTHS["CuKa"]
    ka1_wavelength: float = WAVELENGTHS["CuKa1"]
    ka2_wavelength: float = WAVELENGTHS["CuKa2"]
    tail_fwhm: float = 30.0
    max_tail_points: int = 3000
    width_ratio: float = 1.2

    def __call__(
        self,
        batch: PeakBatch,
        augmentation: Augmentation | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Render a batch: (B, grid points), each pattern max-normalised to 1."""
        aug = augmentation or Augmentation.clean()
        n = batch.d.shape[0]
        device = batch.d.device

        def draw(r: Range | None, default: float = 0.0) -> torch.Tensor:
            if r is None:
                return torch.full((n,), default, dtype=torch.float64, device=device)
            u = torch.rand(n, generator=generator, dtype=torch.float64).to(device)
            return r[0] + (r[1] - r[0]) * u

        def draw_log(r: Range) -> torch.Tensor:
            return torch.exp(draw((math.log(r[0]), math.log(r[1]))))

        def chosen(probability: float) -> torch.Tensor:
            return draw((0.0, 1.0), 1.0) < probability

        d = strained_d(
            batch, draw(aug.lattice_strain), draw(aug.lattice_strain), draw(aug.lattice_strain)
        )
        intensity = batch.intensity * batch.mask
        if aug.march_dollase_r is not None or aug.film_probability > 0:
            r = draw(aug.march_dollase_r, 1.0)
            if aug.film_probability > 0:
                r = torch.where(chosen(aug.film_probability), draw(aug.film_r), r)
            axes = torch.tensor(aug.texture_axes, dtype=torch.float64)
            if len(axes) > 1:  # one axis draws nothing: the default renders stay as they were
                axes = axes[torch.randint(len(axes), (n,), generator=generator)]
            intensity = intensity * march_dollase(batch, r, axes.to(device))
        if aug.intensity_jitter:
            noise = torch.randn(intensity.shape, generator=generator).to(device)
            intensity = intensity * torch.exp(aug.intensity_jitter * noise)

        lines = [(self.wavelength, 1.0)]
        if aug.ka2_ratio:
            lines = [(self.ka1_wavelength, 1.0), (self.ka2_wavelength, aug.ka2_ratio)]
        profile = (draw(aug.caglioti_u), draw(aug.caglioti_v), draw(aug.caglioti_w), draw(aug.eta))
        size = draw(aug.crystallite_nm, math.inf) if aug.crystallite_nm else None
        strain = draw(aug.microstrain) if aug.microstrain else None
        shift = draw(aug.zero_shift)
        displacement = draw(aug.displacement_mm)
        positions, areas = [], []
        for wavelength, weight in lines:
            ratio = torch.clamp(wavelength / (2.0 * d), max=1.0)
            theta = torch.asin(ratio)  # rad, float64
            two_theta = torch.rad2deg(2 * theta) + shift[:, None]
            two_theta = two_theta + torch.rad2deg(
                -2.0 * displacement[:, None] * torch.cos(theta) / aug.goniometer_radius_mm
            )
            positions.append(two_theta)
            areas.append(weight * intensity * (batch.mask & (ratio < 1.0)))
        grid_theta = torch.deg2rad(self.grid.values().double().to(device) / 2.0)[None, :]
        fwhm = peak_fwhm(grid_theta.expand(n, -1), self.wavelength, *profile[:3], size, strain)
        pattern = self._draw(torch.cat(positions, 1), torch.cat(areas, 1), fwhm, profile[3])

        if aug.impurity_fraction is not None and n > 1:
            pattern = add_impurities(
                pattern, draw(aug.impurity_fraction), aug.impurity_probability, generator
            )
        pattern = pattern / pattern.amax(dim=1, keepdim=True).clamp_min(1e-12)
        if aug.background is not None:
            pattern = pattern + background(
                self.grid,
                draw(aug.background),
                draw(aug.hump_center),
                draw(aug.hump_width),
                generator,
            ).to(device)
        if aug.peak_counts is not None:
            counts = draw_log(aug.peak_counts)[:, None].float()
            pattern = torch.poisson(pattern * counts, generator=generator) / counts
        if aug.read_noise is not None:
            noise = torch.randn(pattern.shape, generator=generator).to(device)
            pattern = pattern + draw(aug.read_noise)[:, None].float() * noise
        pattern = pattern.clamp_min(0.0)
        full = pattern / pattern.amax(dim=1, keepdim=True).clamp_min(1e-12)
        if aug.window_probability <= 0:
            return full
        windowed = chosen(aug.window_probability)
        cut = partial_range(pattern, self.grid, draw(aug.window_start), draw(aug.window_end))
        return torch.where(windowed[:, None], cut, full)

    def _draw(
        self, two_theta: torch.Tensor, area: torch.Tensor, fwhm: torch.Tensor, eta: torch.Tensor
    ) -> torch.Tensor:
        """Pseudo-Voigt peaks of total area ``area`` at ``two_theta``, with local widths ``fwhm``.

        The sticks are spread onto the grid (each split between its two neighbouring points,
        which keeps area and centroid), then convolved by FFT with a bank of Gaussian and
        Lorentzian kernels whose widths grow geometrically by ``width_ratio``; every grid point
        takes the two bank widths around its local FWHM, blended linearly in log-width. The
        cost does not depend on the number of peaks or on how broad they are.

        Args:
            two_theta: Peak positions, degrees, (B, P).
            area: Peak areas, (B, P); zero for padding.
            fwhm: FWHM at every grid point, degrees, (B, grid points).
            eta: Lorentzian share of each pattern, (B,).
        """
        n, points, step = two_theta.shape[0], self.grid.points, self.grid.step
        device = two_theta.device
        w_min, w_max = float(fwhm.min()), float(fwhm.max())
        tail = min(self.max_tail_points, math.ceil(self.tail_fwhm * w_max / step))
        # Sticks on the grid extended by the tail length on both sides (tails of peaks just
        # outside the range still reach into it).
        u = (two_theta - self.grid.start) / step + tail
        lower = torch.floor(u)
        upper_share = (u - lower).float()
        lower = lower.long()
        length = points + 2 * tail
        inside = (lower >= 0) & (lower + 1 < length) & (area > 0)
        rows = torch.arange(n, device=device)[:, None].expand_as(lower)[inside] * length
        sticks = torch.zeros(n * length, device=device)
        sticks.index_add_(0, rows + lower[inside], (area * (1 - upper_share))[inside])
        sticks.index_add_(0, rows + lower[inside] + 1, (area * upper_share)[inside])
        sticks = sticks.view(n, length)

        count = max(
            1, math.ceil(math.log(max(w_max / w_min, 1.0)) / math.log(self.width_ratio)) + 1
        )
        widths = w_min * self.width_ratio ** torch.arange(count, dtype=torch.float64)
        offsets = step * torch.arange(-tail, tail + 1, dtype=torch.float64)
        kernels = (
            torch.cat(
                [
                    pseudo_voigt(offsets[None, :], widths[:, None], torch.tensor(0.0)),
                    pseudo_voigt(offsets[None, :], widths[:, None], torch.tensor(1.0)),
                ]
            )
            .float()
            .to(device)
            * step
        )  # (2K, 2 tail + 1): Gaussians, then Lorentzians
        size = 1 << math.ceil(math.log2(length + 2 * tail + 1))
        spectrum = torch.fft.rfft(sticks, size)[None] * torch.fft.rfft(kernels, size)[:, None]
        bank = torch.fft.irfft(spectrum, size)[..., 2 * tail : 2 * tail + points]  # (2K, n, pts)

        position = (torch.log(fwhm / w_min) / math.log(self.width_ratio)).clamp(0, count - 1)
        below = position.floor().long().clamp(max=max(count - 2, 0))
        weight = (position - below).float()
        above = (below + 1).clamp(max=count - 1)

        def blend(part: torch.Tensor) -> torch.Tensor:
            stacked = part.permute(1, 2, 0)  # (n, points, K)
            low = torch.gather(stacked, 2, below[..., None]).squeeze(2)
            high = torch.gather(stacked, 2, above[..., None]).squeeze(2)
            return (1 - weight) * low + weight * high

        gauss, lorentz = blend(bank[:count]), blend(bank[count:])
        return eta.float()[:, None] * lorentz + (1 - eta.float()[:, None]) * gauss


def pseudo_voigt(x: torch.Tensor, fwhm: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Area-normalised pseudo-Voigt at offsets ``x`` (deg) for FWHM (deg) and Lorentz share η."""
    gauss = (
        (2.0 / fwhm)
        * math.sqrt(math.log(2.0) / math.pi)
        * torch.exp(-4.0 * math.log(2.0) * (x / fwhm) ** 2)
    )
    lorentz = (2.0 / (math.pi * fwhm)) / (1.0 + 4.0 * (x / fwhm) ** 2)
    return eta * lorentz + (1.0 - eta) * gauss


def peak_fwhm(
    theta: torch.Tensor,
    wavelength: float,
    u: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    crystallite_nm: torch.Tensor | None = None,
    microstrain: torch.Tensor | None = None,
) -> torch.Tensor:
    """FWHM in degrees 2θ: Caglioti instrument, Scherrer size and microstrain in quadrature.

    Args:
        theta: Bragg angles, rad, (B, P).
        wavelength: Å.
        u: Caglioti U, deg², (B,).
        v: Caglioti V, deg², (B,).
        w: Caglioti W, deg², (B,).
        crystallite_nm: Crystallite size, nm, (B,) (``inf``: no size broadening).
        microstrain: Root-mean-square strain ε, (B,).
    """
    tan = torch.tan(theta)
    fwhm2 = (u[:, None] * tan**2 + v[:, None] * tan + w[:, None]).clamp_min(1e-8)
    if crystallite_nm is not None:
        scherrer = 0.9 * wavelength / (10.0 * crystallite_nm[:, None] * torch.cos(theta))
        fwhm2 = fwhm2 + torch.rad2deg(scherrer) ** 2
    if microstrain is not None:
        fwhm2 = fwhm2 + torch.rad2deg(4.0 * microstrain[:, None] * tan) ** 2
    return torch.sqrt(fwhm2)


def strained_d(
    batch: PeakBatch, e_a: torch.Tensor, e_b: torch.Tensor, e_c: torch.Tensor
) -> torch.Tensor:
    """d-spacings after scaling the cell edges by (1+e_a, 1+e_b, 1+e_c), symmetry kept.

    The crystal system ties the factors: cubic uses e_a for all three; tetragonal, trigonal and
    hexagonal (conventional cells) use e_a for a and b.
    """
    system = batch.crystal_system
    e_b = torch.where(system >= 3, e_a, e_b)
    e_c = torch.where(system == 6, e_a, e_c)
    scale = 1.0 + torch.stack([e_a, e_b, e_c], dim=1)  # (B, 3)
    if torch.all(scale == 1.0):
        return batch.d
    h = batch.hkl.double() / scale[:, None, :]
    g2 = torch.einsum("bpi,bij,bpj->bp", h, batch.metric.double(), h)
    d = 1.0 / torch.sqrt(g2.clamp_min(1e-12))
    return torch.where(batch.mask, d, batch.d)


def march_dollase(
    batch: PeakBatch, r: torch.Tensor, axes: torch.Tensor | tuple[float, float, float]
) -> torch.Tensor:
    """March–Dollase intensity factor of each peak for texture along reciprocal ``axes``.

    Args:
        batch: The stick patterns.
        r: March–Dollase parameter of each pattern, (B,); 1 is a random powder.
        axes: Texture axis of each pattern as reciprocal-lattice indices, (B, 3), or one
            (h, k, l) for all.
    """
    metric = batch.metric.double()
    h = batch.hkl.double()
    a = torch.as_tensor(axes, dtype=torch.float64, device=h.device)
    a = a.reshape(-1, 3).expand(h.shape[0], 3)
    dot = torch.einsum("bpi,bij,bj->bp", h, metric, a)
    norm_h = torch.sqrt(torch.einsum("bpi,bij,bpj->bp", h, metric, h).clamp_min(1e-12))
    norm_a = torch.sqrt(torch.einsum("bi,bij,bj->b", a, metric, a))[:, None]
    cos2 = (dot / (norm_h * norm_a)) ** 2
    rr = r[:, None]
    return ((rr**2 * cos2 + (1.0 - cos2) / rr) ** -1.5).float()


def partial_range(
    pattern: torch.Tensor, grid: Grid, start: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """Keep each pattern between ``start`` and ``end`` (degrees 2θ), as a partial scan is read.

    Inside the window the pattern is min-max scaled to 0-1, outside it is 0: the same
    reading ``nanoxtal.xrd.io.to_grid`` gives a measurement that covers only part of the
    grid, so the model sees training windows exactly as it will see such scans.

    Args:
        pattern: Rendered patterns, (B, grid points).
        grid: Their grid.
        start: First 2θ kept per pattern, (B,).
        end: Last 2θ kept per pattern, (B,).
    """
    x = grid.values().to(pattern.device)[None, :]
    inside = (x >= start[:, None].to(pattern.dtype)) & (x <= end[:, None].to(pattern.dtype))
    low = torch.where(inside, pattern, math.inf).amin(dim=1, keepdim=True)
    high = torch.where(inside, pattern, -math.inf).amax(dim=1, keepdim=True)
    scaled = (pattern - low) / (high - low).clamp_min(1e-12)
    return torch.where(inside, scaled, 0.0)


def background(
    grid: Grid,
    amplitude: torch.Tensor,
    hump_center: torch.Tensor,
    hump_width: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Amorphous hump plus a decaying polynomial, peak height ``amplitude`` (fraction of max)."""
    x = grid.values().double()[None, :]
    hump = torch.exp(-0.5 * ((x - hump_center[:, None]) / hump_width[:, None]) ** 2)
    t = (x - x.min()) / (x.max() - x.min())
    coefficients = torch.rand(len(amplitude), 3, generator=generator, dtype=torch.float64)
    polynomial = (
        coefficients[:, :1] * (1 - t) ** 2 + coefficients[:, 1:2] * (1 - t) + coefficients[:, 2:]
    )
    shape = hump + 0.5 * polynomial
    shape = shape / shape.amax(dim=1, keepdim=True)
    return (amplitude[:, None] * shape).float()


def add_impurities(
    patterns: torch.Tensor,
    fraction: torch.Tensor,
    probability: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add ``fraction`` × (another pattern of the batch) to a random share of the patterns."""
    n = patterns.shape[0]
    partner = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    chosen = torch.rand(n, generator=generator) < probability
    scale = (fraction.float() * chosen.to(fraction.device))[:, None]
    normalised = patterns / patterns.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return normalised + scale * normalised[partner.to(patterns.device)]
