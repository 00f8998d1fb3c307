"""Benchmark: the classical TEM baseline (threshold + distance-transform watershed) on real data.

Runs ``classical_instances`` on the labelled sets under the TEM data root and scores it:
AP50/AP75/AP90 (TP / (TP + FP + FN)), precision and recall, foreground, semantic and matched
IoU, count and mean-diameter errors against the instance truth of ``sophon_example``,
``msa_em`` and ``au_monolayer`` (connected components of the masks), and the count error
against the boxes of ``stem_boxes``. Each set is split with
``fixed_split(seed=42, test_share=0.5)``; the numbers are given for the test part (what a
trained model will be compared on: never train on those images) and for all images. The
baseline is not trained; its settings are fixed beforehand per imaging mode and recorded in
the JSON, with the split's image names. ``sophon_example``, ``msa_em`` and ``au_monolayer`` are
bright-field TEM (dark particles). ``stem_boxes`` mixes HAADF STEM (bright particles) and
bright-field images of particles on uneven supports: the polarity is guessed per image
(``guess_bright_particles``) and the background flattened.

    python benchmarks/tem_baseline.py --out results/benchmarks/tem_baseline.json

``--root`` defaults to ``../shared/data/tem`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from nanoxtal.tem.evaluate import evaluate_set, summarise
from nanoxtal.tem.instances import ClassicalSettings, classical_instances, guess_bright_particles
from nanoxtal.tem.io import LABELLED_SETS, fixed_split, read_labelled_set

REPO = Path(__file__).resolve().parents[1]
SEED = 42
TEST_SHARE = 0.5
# Settings fixed per imaging mode, not tuned on these images.
SETTINGS = {
    "sophon_example": ClassicalSettings(),
    "msa_em": ClassicalSettings(),
    "au_monolayer": ClassicalSettings(),
    "stem_boxes": ClassicalSettings(),  # polarity and background set per image, below
}
# STEM supports vary on a scale of many particles; flatten them with a Gaussian of this fraction
# of the image side (px), so 640- and 2048-px images get the same relative background scale.
STEM_BACKGROUND_FRACTION = 0.03


def predictor_for(name: str) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """The baseline as a function of the image, and its settings for the report."""
    settings = SETTINGS[name]
    if name != "stem_boxes":
        return (lambda image: classical_instances(image, settings)), asdict(settings)

    def stem(image: np.ndarray) -> np.ndarray:
        # The set mixes HAADF STEM (bright particles) and bright-field TEM images.
        chosen = replace(
            settings,
            invert=guess_bright_particles(image),
            background_sigma_px=STEM_BACKGROUND_FRACTION * max(image.shape),
        )
        return classical_instances(image, chosen)

    described = asdict(settings) | {
        "invert": "guess_bright_particles(image)",
        "background_sigma_px": f"{STEM_BACKGROUND_FRACTION} × image side",
    }
    return stem, described


def clean(value: object) -> object:
    """JSON-safe values: NaN and infinity become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def headline(summary: dict) -> dict:
    keys = ["evaluated", "n_true", "n_pred", "ap50", "ap75", "ap90", "ap50_pooled"]
    keys += ["semantic_miou", "foreground_iou", "matched_iou", "count_error", "count_error_median"]
    keys += ["diameter_error", "images_per_s"]
    return {key: summary[key] for key in keys if key in summary}


def run_set(root: Path, name: str, max_images: int | None) -> dict:
    start = time.perf_counter()
    items = read_labelled_set(root, name)
    read_seconds = time.perf_counter() - start
    split = fixed_split([item.name for item in items], SEED, TEST_SHARE)
    test = set(split["test"])
    # With a cap, test images come first so the test numbers are complete as long as possible.
    items = sorted(items, key=lambda item: item.name not in test)[:max_images]
    predictor, settings = predictor_for(name)
    table, every = evaluate_set(items, predictor)
    on_test = summarise(table[table["name"].isin(test)])
    print(f"{name}: test {json.dumps(clean(headline(on_test)))}", flush=True)
    print(f"{name}: all  {json.dumps(clean(headline(every)))}", flush=True)
    return {
        "labels": "boxes" if name == "stem_boxes" else "instances",
        "settings": settings,
        "split": {"seed": SEED, "test_share": TEST_SHARE, **split},
        "evaluated_images": len(items),
        "read_s": read_seconds,
        "test": on_test,
        "all": every,
        "per_image": table.assign(test=table["name"].isin(test)).to_dict("records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "tem")
    parser.add_argument("--sets", nargs="+", default=list(LABELLED_SETS), choices=LABELLED_SETS)
    parser.add_argument(
        "--max-images", type=int, help="evaluate at most this many images per set (test first)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/tem_baseline.json"))
    args = parser.parse_args()

    sets = {name: run_set(args.root, name, args.max_images) for name in args.sets}
    report = {
        "method": "classical threshold + distance-transform watershed (nanoxtal.tem.instances)",
        "ap_definition": "TP / (TP + FP + FN) per image at IoU ≥ t, greedy one-to-one matching",
        "root": str(args.root),
        "summary": {
            name: {"test": headline(result["test"]), "all": headline(result["all"])}
            for name, result in sets.items()
        },
        "sets": sets,
        "versions": {name: version(name) for name in ("numpy", "scipy", "scikit-image", "pandas")},
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "processor": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean(report), indent=2, default=str) + "\n")
    rows = {
        f"{name} ({part})": numbers
        for name, parts in report["summary"].items()
        for part, numbers in parts.items()
    }
    print(pd.DataFrame(rows).T.to_string(float_format="{:.3f}".format))


if __name__ == "__main__":
    main()
