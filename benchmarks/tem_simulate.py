"""Benchmark: synthetic TEM micrographs simulated per second, one process.

Times ``simulate_micrograph`` on N images of the default settings (1024 × 1024 px, 0.5 nm/px,
15 nm particles of all 11 shapes at 15 % coverage, scale bar, 8 bit), seeded, after one warm-up
image; then the same images written to disk (PNG, 16-bit label PNG, CSV, JSON) in a temporary
folder. Monolayer packing is timed separately on a few images.

    python benchmarks/tem_simulate.py --n 20 --out results/benchmarks/tem_simulate.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from nanoxtal.environment import describe
from nanoxtal.tem.simulate import (
    MicrographSettings,
    image_rng,
    simulate_micrograph,
    write_micrograph,
)


def timed_images(settings: MicrographSettings, n: int, seed: int) -> tuple[list, np.ndarray]:
    micrographs, seconds = [], []
    for index in range(n):
        rng = image_rng(seed, index)
        start = time.perf_counter()
        micrographs.append(simulate_micrograph(settings, rng))
        seconds.append(time.perf_counter() - start)
    return micrographs, np.array(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="images to time")
    parser.add_argument("--size", type=int, default=1024, help="image side, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/tem_simulate.json"))
    args = parser.parse_args()

    settings = MicrographSettings(width_px=args.size, height_px=args.size)
    simulate_micrograph(settings, image_rng(args.seed, args.n))  # warm-up (imports, caches)
    micrographs, seconds = timed_images(settings, args.n, args.seed)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        for index, micrograph in enumerate(micrographs):
            write_micrograph(micrograph, folder, f"bench_{index:05d}")
        write_seconds = time.perf_counter() - start

    monolayer = replace(settings, monolayer=True, shape_weights={"sphere": 1.0}, diameter_nm=6.0)
    packed, packed_seconds = timed_images(monolayer, max(1, args.n // 4), args.seed)

    particles = np.array([len(m.particles) for m in micrographs])
    report = {
        "images": args.n,
        "seed": args.seed,
        "size_px": args.size,
        "images_per_s": args.n / float(seconds.sum()),
        "ms_mean": 1e3 * float(seconds.mean()),
        "ms_median": 1e3 * float(np.median(seconds)),
        "particles_per_image_mean": float(particles.mean()),
        "images_per_s_with_writing": args.n / float(seconds.sum() + write_seconds),
        "write_ms_mean": 1e3 * write_seconds / args.n,
        "monolayer_images": len(packed),
        "monolayer_particles_per_image_mean": float(np.mean([len(m.particles) for m in packed])),
        "monolayer_images_per_s": len(packed) / float(packed_seconds.sum()),
        "settings": asdict(settings),
        "environment": describe(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
