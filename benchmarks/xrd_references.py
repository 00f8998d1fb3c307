"""Benchmark: naming the reference phases of measured patterns, one core.

Searches measured patterns (``rruff_dev.npz``, on the model grid) against every phase of the
published references (``results/xrd/references.npz``) on one CPU with single-threaded BLAS,
and reports the time per pattern (target ≤ 50 ms) one pattern at a time (as a user's single
file) and in batches of 256 (as a folder), each the fastest of ``--repeats`` runs. The same run
times the search on the full 8,500-point grid without pooling (the plain cosine search of a
pattern library) for the ratio.

    python benchmarks/xrd_references.py --references results/xrd/references.npz \\
        --measured ../shared/data/xrd/rruff_dev.npz --out results/benchmarks/xrd_references.json
"""

# ruff: noqa: E402 (the thread limits must be set before numpy is first imported)

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

# The sibling benchmark's CPU pinning (run as a script, this folder is on sys.path).
from xrd_cif import pin_to_one_cpu

from nanoxtal.environment import describe
from nanoxtal.xrd.references import References, load_references
from nanoxtal.xrd.training import measured_set


def fastest(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs, seconds (load from other processes only adds time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def per_pattern_ms(references: References, queries: np.ndarray, batch: int, repeats: int) -> float:
    """Milliseconds per pattern searching ``queries`` ``batch`` at a time."""

    def run() -> None:
        for start in range(0, len(queries), batch):
            references.match(queries[start : start + batch], chunk=batch)

    return 1000 * fastest(run, repeats) / len(queries)


def unpooled(references: References, measured: np.ndarray) -> References:
    """The same phases on the full grid: the plain search the pooled one is compared with."""
    rng = np.random.default_rng(0)
    # Timing only: any patterns of the full width cost the same to search.
    full = rng.random((len(references), references.grid_points), dtype=np.float32)
    return replace(references, patterns=full, pooled_points=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=Path, default=Path("results/xrd/references.npz"))
    parser.add_argument("--measured", type=Path, required=True, help="rruff_dev.npz")
    parser.add_argument("--n", type=int, default=64, help="patterns searched one at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args()
    cpu = pin_to_one_cpu()

    references = load_references(args.references)
    patterns = measured_set(args.measured).patterns
    single = patterns[: args.n]
    record = {
        "references": str(args.references),
        "phases": len(references),
        "points_per_phase": int(references.patterns.shape[1]),
        "measured": str(args.measured),
        "patterns_single": len(single),
        "patterns_batched": len(patterns),
        "cpu": cpu,
        "ms_per_pattern_single": per_pattern_ms(references, single, 1, args.repeats),
        "ms_per_pattern_batch_256": per_pattern_ms(references, patterns, 256, args.repeats),
        "target_ms_per_pattern": 50.0,
        "environment": describe(),
    }
    full = unpooled(references, patterns)
    record["unpooled_ms_per_pattern_single"] = per_pattern_ms(full, single, 1, args.repeats)
    record["speedup_single_vs_unpooled"] = (
        record["unpooled_ms_per_pattern_single"] / record["ms_per_pattern_single"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
