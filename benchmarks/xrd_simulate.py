"""Benchmark: nanoxtal's stick-pattern simulator against pymatgen's XRDCalculator, one run.

Same structures (a seeded sample of Materials Project entries, parsed once, not timed), same
settings (Cu Kα 1.54184 Å, 2θ 5-90°), one process. Reports throughput of both, their ratio,
and agreement (peak clusters above 1 of 100: position and normalised intensity differences);
then full 8,500-point patterns rendered per second from those sticks (batched torch), clean and
with the default augmentations.

    python benchmarks/xrd_simulate.py --root ../shared/data --n 500 \\
        --out results/benchmarks/xrd_simulate.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.analysis.diffraction.xrd import XRDCalculator

from nanoxtal.environment import describe
from nanoxtal.xrd.diffraction import compare_sticks, stick_pattern
from nanoxtal.xrd.profiles import Augmentation, Renderer, make_batch
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
    parser.add_argument("--batch", type=int, default=64, help="patterns per render batch")
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

    rendered_per_s = {}
    renderer = Renderer()
    batches = [
        make_batch(
            [(p.d, p.intensity, p.hkl) for p in ours[i : i + args.batch]],
            [s.lattice.matrix for s in structures[i : i + args.batch]],
            [0] * len(ours[i : i + args.batch]),
        )
        for i in range(0, len(ours), args.batch)
    ]
    for name, augmentation in (("clean", Augmentation.clean()), ("augmented", Augmentation())):
        generator = torch.Generator().manual_seed(0)
        renderer(batches[0], augmentation, generator)  # warm-up
        start = time.perf_counter()
        for batch in batches:
            renderer(batch, augmentation, generator)
        rendered_per_s[name] = len(ours) / (time.perf_counter() - start)

    report = {
        "structures": args.n,
        "seed": args.seed,
        "two_theta_range": RANGE,
        "wavelength": "CuKa 1.54184 A",
        "pymatgen_ms_mean": 1e3 * t_ref.mean(),
        "pymatgen_ms_median": 1e3 * float(np.median(t_ref)),
        "nanoxtal_ms_mean": 1e3 * t_ours.mean(),
        "nanoxtal_ms_median": 1e3 * float(np.median(t_ours)),
        "throughput_ratio": float(t_ref.sum() / t_ours.sum()),
        "nanoxtal_structures_per_s": args.n / float(t_ours.sum()),
        "rendered_8500_point_patterns_per_s": rendered_per_s,
        "render_batch": args.batch,
        "max_position_error_deg": float(np.max(position_errors)),
        "max_intensity_error": float(np.max(intensity_errors)),
        "structures_outside_tolerance": failures,
        "environment": describe(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
