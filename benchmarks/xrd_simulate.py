"""Benchmark: nanoxtal's stick-pattern simulator against pymatgen's XRDCalculator, one run.

Same structures (a seeded sample of Materials Project entries, parsed once, not timed), same
settings (Cu Kα 1.54184 Å, 2θ 5-90°), one process. Reports throughput of both, their ratio,
and agreement (peak clusters above 1 of 100: position and normalised intensity differences).

    python benchmarks/xrd_simulate.py --root ../shared/data --n 500 \\
        --out results/benchmarks/xrd_simulate.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pymatgen
from pymatgen.analysis.diffraction.xrd import XRDCalculator

from nanoxtal.xrd.simulate import compare_sticks, stick_pattern
from nanoxtal.xrd.structures import parse_cif

RANGE = (5.0, 90.0)


def timed(function, items) -> tuple[list, np.ndarray]:
    results, seconds = [], []
    for item in items:
        start = time.perf_counter()
        results.append(function(item))
        seconds.append(time.perf_counter() - start)
    return results, np.array(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=500, help="structures in the sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/xrd_simulate.json"))
    args = parser.parse_args()

    table = pd.read_csv(args.root / "xrd" / "mp_structures.csv.gz")
    sample = table.sample(args.n, random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [parse_cif(cif) for cif in sample.cif]

    calculator = XRDCalculator("CuKa")
    # Warm both up (imports, caches) outside the timed loops.
    calculator.get_pattern(structures[0], two_theta_range=RANGE)
    stick_pattern(structures[0], "CuKa", RANGE)
    references, t_ref = timed(
        lambda s: calculator.get_pattern(s, two_theta_range=RANGE), structures
    )
    ours, t_ours = timed(lambda s: stick_pattern(s, "CuKa", RANGE), structures)

    position_errors, intensity_errors, failures = [], [], []
    for material, ref, mine in zip(sample.material_id, references, ours, strict=True):
        agreement = compare_sticks(
            (np.array(ref.x), np.array(ref.y)), (mine.two_theta, mine.intensity)
        )
        position_errors.append(agreement.max_position_error)
        intensity_errors.append(agreement.max_intensity_error)
        if agreement.max_position_error >= 0.01 or agreement.max_intensity_error >= 1.0:
            failures.append(material)

    report = {
        "structures": args.n,
        "seed": args.seed,
        "two_theta_range": RANGE,
        "wavelength": "CuKa 1.54184 A",
        "pymatgen_version": pymatgen.__version__ if hasattr(pymatgen, "__version__") else None,
        "pymatgen_ms_mean": 1e3 * t_ref.mean(),
        "pymatgen_ms_median": 1e3 * float(np.median(t_ref)),
        "nanoxtal_ms_mean": 1e3 * t_ours.mean(),
        "nanoxtal_ms_median": 1e3 * float(np.median(t_ours)),
        "throughput_ratio": float(t_ref.sum() / t_ours.sum()),
        "nanoxtal_structures_per_s": args.n / float(t_ours.sum()),
        "max_position_error_deg": float(np.max(position_errors)),
        "max_intensity_error": float(np.max(intensity_errors)),
        "structures_outside_tolerance": failures,
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
