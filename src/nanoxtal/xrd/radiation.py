"""X-ray wavelengths: named emission lines and checked numbers.

Kept free of pymatgen so rendering, reading and training (the GPU path) import none of it.
"""

from __future__ import annotations

# X-ray emission lines in Å (the values pymatgen's XRDCalculator uses; Kα is the 2:1 weighted
# mean of Kα1 and Kα2). Bearden, Rev. Mod. Phys. 39, 78 (1967).
WAVELENGTHS: dict[str, float] = {
    "CuKa": 1.54184,
    "CuKa1": 1.54056,
    "CuKa2": 1.54439,
    "MoKa": 0.71073,
    "MoKa1": 0.70930,
    "MoKa2": 0.71359,
    "CoKa": 1.79026,
    "CoKa1": 1.78896,
    "CrKa": 2.29100,
    "FeKa": 1.93735,
    "AgKa": 0.560885,
}


def wavelength_of(radiation: str | float) -> float:
    """Wavelength in Å of a named line (e.g. ``"CuKa"``, ``"MoKa1"``) or a number in Å.

    A string holding a number (``"0.7093"``, ``".7093"``) counts as a wavelength in Å.
    """
    if isinstance(radiation, str):
        try:
            radiation = float(radiation)
        except ValueError:
            if radiation not in WAVELENGTHS:
                raise ValueError(
                    f"unknown radiation {radiation!r}; use a wavelength in Å or one of "
                    f"{sorted(WAVELENGTHS)}"
                ) from None
            return WAVELENGTHS[radiation]
    if not 0.05 <= float(radiation) <= 5.0:
        raise ValueError(f"wavelength {radiation} Å is outside 0.05-5 Å")
    return float(radiation)
