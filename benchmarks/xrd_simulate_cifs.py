"""Benchmark: ``xrd simulate`` end to end, from a CSV of CIF texts to the peak table.

Issue 27 §4's measure: a CSV with a ``cif`` column (a seeded sample of Materials Project
entries, written once, not timed) goes through what ``nanoxtal xrd simulate`` runs
(``nanoxtal.xrd.simulate``: ``read_and_simulate``, then ``peak_table``), against pymatgen
reading the same CSV (``Structure.from_str`` + ``XRDCalculator.get_pattern`` per row), Cu Kα,
2θ 5-90°.

Throughput is marginal: each path runs on ``--n`` and on a third of it (each ``--repeats``
times, the fastest counting), and the rate is the extra structures over the extra time, so
start-up (imports, a process pool) does not count.

1. One core (the process pinned to one CPU, single-threaded BLAS): nanoxtal with one worker
   against pymatgen, as a ratio measured in the same run.
2. ``--workers`` scaling on every CPU of the machine: 1, 2, ... up to ``--max-workers``
   processes, each against one worker, with the peak tables checked identical.

    python benchmarks/xrd_simulate_cifs.py --root ../shared/data --n 1500 \\
        --out results/benchmarks/xrd_simulate_cifs.json
"""

# ruff: noqa: E402 (the thread limits must be set before numpy is first imported)

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Structure

from nanoxtal.environment import describe
from nanoxtal.xrd.api import simulate

RANGE = (5.0, 90.0)


def nanoxtal_simulate(path: Path, workers: int) -> pd.DataFrame:
    """What ``nanoxtal xrd simulate`` does with a CSV, short of writing the table."""
    return simulate(path, "CuKa", RANGE, errors="warn", workers=workers)


def pymatgen_simulate(path: Path) -> int:
    """pymatgen on the same CSV: every CIF read and simulated; the patterns made."""
    calculator = XRDCalculator("CuKa")
    made = 0
    for text in pd.read_csv(path).cif:
        try:
            calculator.get_pattern(Structure.from_str(text, fmt="cif"), two_theta_range=RANGE)
            made += 1
        # pymatgen raises more than it declares: a structure it cannot do is skipped.
        except Exception:
            continue
    return made


def marginal_rate(
    run: Callable[[Path], object], small: Path, large: Path, sizes: tuple, repeats: int
) -> dict:
    """Structures per second beyond start-up: (n_large - n_small) / (t_large - t_small).

    Each size runs ``repeats`` times and its fastest run counts (others' load on the CPU
    only ever adds time).
    """
    seconds = []
    for path in (small, large):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run(path)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return {
        "seconds_small": seconds[0],
        "seconds_large": seconds[1],
        "structures_per_s": (sizes[1] - sizes[0]) / max(seconds[1] - seconds[0], 1e-9),
    }


def write_sample(root: Path, n: int, seed: int, folder: Path) -> tuple[Path, Path, tuple]:
    """CSVs of ``n`` and ``n // 3`` seeded Materials Project CIFs (id and cif columns)."""
    table = pd.read_csv(root / "xrd" / "mp_structures.csv.gz")
    sample = table.sample(n, random_state=seed)[["material_id", "cif"]]
    small, large = folder / "small.csv", folder / "large.csv"
    sample.iloc[: n // 3].to_csv(small, index=False)
    sample.to_csv(large, index=False)
    return small, large, (n // 3, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=1500, help="CIFs in the large CSV")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the fastest counts")
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/xrd_simulate_cifs.json")
    )
    args = parser.parse_args()

    every_cpu = os.sched_getaffinity(0)
    report: dict[str, object] = {
        "structures": args.n,
        "seed": args.seed,
        "repeats": args.repeats,
        "two_theta_range": RANGE,
    }
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's warnings on rounded coordinates: noise
        small, large, sizes = write_sample(args.root, args.n, args.seed, Path(folder))
        nanoxtal_simulate(small, 1)  # warm-up: imports, caches
        pymatgen_simulate(small)

        os.sched_setaffinity(0, {min(every_cpu)})
        ours = marginal_rate(lambda p: nanoxtal_simulate(p, 1), small, large, sizes, args.repeats)
        theirs = marginal_rate(pymatgen_simulate, small, large, sizes, args.repeats)
        report["one_core"] = {
            "pinned_cpu": min(every_cpu),
            "nanoxtal": ours,
            "pymatgen": theirs,
            "ratio": ours["structures_per_s"] / theirs["structures_per_s"],
        }

        os.sched_setaffinity(0, every_cpu)
        reference = nanoxtal_simulate(large, 1)
        scaling = {}
        for workers in range(1, args.max_workers + 1):
            rate = marginal_rate(
                lambda p, w=workers: nanoxtal_simulate(p, w), small, large, sizes, args.repeats
            )
            rate["identical_table"] = bool(nanoxtal_simulate(large, workers).equals(reference))
            scaling[workers] = rate
        for rate in scaling.values():
            rate["speed_up"] = rate["structures_per_s"] / scaling[1]["structures_per_s"]
        report["workers"] = {"cpus": len(every_cpu), "scaling": scaling}
        report["peaks"] = len(reference)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report | {"environment": describe()}, indent=2) + "\n")
    one_core = report["one_core"]
    speed_ups = ", ".join(f"{w}: {r['speed_up']:.2f}x" for w, r in scaling.items())
    print(
        f"one core: {one_core['nanoxtal']['structures_per_s']:.0f} structures/s, pymatgen "
        f"{one_core['pymatgen']['structures_per_s']:.1f}/s, ratio {one_core['ratio']:.1f}; "
        f"workers {speed_ups}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
