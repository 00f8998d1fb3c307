"""Benchmark: segment + measure a 1024 × 1024 simulated micrograph, one process.

Times, per image, the classical baseline segmentation (``segment_image`` without a model), the
scale-bar search and pixel-size reading (``scale_bar``), and the particle measurement
(``measure_particles``: sizes, Feret diameters, shape class), on images of two densities: the
simulator's defaults (15 nm particles at 0.5 nm/px, 15 % coverage: ~250 particles) and a dense
one (8 nm particles, 35 % coverage: ~1,800–2,200 particles). With ``--model CKPT`` the network
segmenter is timed too (CPU, ``torch.set_num_threads(2)``), as it is by default and with its
maps averaged over the scales the workflow uses for STEM images (``network_scales``). The shape
classifier is fitted once before timing (it is cached per process) and its held-out accuracy on
simulated outlines is reported.

    python benchmarks/tem_measure.py --out results/benchmarks/tem_measure.json [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nanoxtal.environment import describe
from nanoxtal.tem.calibration import drop_scale_bar, scale_bar
from nanoxtal.tem.measure import measure_particles, shape_classifier, synthetic_shapes
from nanoxtal.tem.segmentation import SegmentSettings, segment_image
from nanoxtal.tem.simulate import MicrographSettings, image_rng, simulate_micrograph

SCENES = {
    "default": {},
    "dense": {"diameter_nm": 8.0, "coverage": 0.35},
}


STEM_SCALES = SegmentSettings(scales=(1.0, 0.5, 0.25))


def time_image(
    image: np.ndarray, model, repeats: int, settings: SegmentSettings | None = None
) -> dict[str, float]:
    """Median seconds of each step over ``repeats`` runs, and the particle count."""
    steps: dict[str, list[float]] = {"segment": [], "scale_bar": [], "measure": []}
    count = 0
    for _ in range(repeats):
        start = time.perf_counter()
        instances = segment_image(image, model, settings)
        segmented = time.perf_counter()
        bar = scale_bar(image)
        instances = drop_scale_bar(instances, bar)
        found = time.perf_counter()
        particles = measure_particles(instances, bar.nm_per_px if bar else None)
        measured = time.perf_counter()
        steps["segment"].append(segmented - start)
        steps["scale_bar"].append(found - segmented)
        steps["measure"].append(measured - found)
        count = len(particles)
    medians = {f"{name}_s": float(np.median(values)) for name, values in steps.items()}
    medians["total_s"] = sum(medians.values())
    return medians | {"particles": count, "scale_bar_nm_per_px": bar.nm_per_px if bar else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="segmenter checkpoint to time as well")
    parser.add_argument("--repeats", type=int, default=3, help="runs per image (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/tem_measure.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    classifier = shape_classifier()
    fit_seconds = time.perf_counter() - start
    features, truth = synthetic_shapes(per_class=100, seed=args.seed + 999)
    accuracy = float((classifier.predict(features) == truth).mean())

    segmenters: dict[str, tuple[object, SegmentSettings | None]] = {"classical": (None, None)}
    if args.model is not None:
        import torch

        from nanoxtal.tem.module import load_segmenter

        torch.set_num_threads(2)
        network = load_segmenter(args.model)
        segmenters["network"] = (network, None)
        segmenters["network_scales"] = (network, STEM_SCALES)

    results = {}
    for scene, overrides in SCENES.items():
        micrograph = simulate_micrograph(MicrographSettings(**overrides), image_rng(args.seed, 0))
        image = micrograph.image.astype(np.float32) / 255
        for name, (model, settings) in segmenters.items():
            timings = time_image(image, model, args.repeats, settings)
            results[f"{scene}/{name}"] = timings | {
                "true_particles": len(micrograph.particles),
                "true_nm_per_px": micrograph.nm_per_px,
            }

    report = {
        "size_px": 1024,
        "seed": args.seed,
        "repeats": args.repeats,
        "model": None if args.model is None else str(args.model),
        "shape_classifier_fit_s": fit_seconds,
        "shape_classifier_held_out_accuracy": accuracy,
        "shape_classifier_held_out_per_class": 100,
        "results": results,
        "environment": describe(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
