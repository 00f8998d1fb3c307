"""Benchmark: CIF text to powder stick pattern, pymatgen against nanoxtal's readers, one core.

Same CIF texts (a seeded sample of Materials Project entries), same settings (Cu Kα, 2θ 5-90°),
one process pinned to one CPU with single-threaded BLAS. Three paths, each timed per structure
from CIF text to stick pattern, parse and simulation separately:

(a) pymatgen: ``Structure.from_str(text, fmt="cif")`` + ``XRDCalculator.get_pattern``;
(b) ``structures.parse_cif`` (pymatgen's CifParser) + nanoxtal ``stick_pattern``;
(c) ``cif.read_cif_sites`` (gemmi; ``read_cif`` without the space group look-up) + nanoxtal
    ``stick_pattern``.

Each structure is run ``--repeats`` times and its fastest run counts (load from other processes
only ever adds time). Reports median and mean times, throughput, ratios against (a), how many
structures each path read, and peak agreement of (c) with (a). With ``--amcsd``: (d) the share
of the AMCSD mineral CIFs read by ``read_cif`` and by ``parse_cif`` with the reasons for
failures, and agreement of the two where both read (a few minutes: pymatgen is the slow part).

    python benchmarks/xrd_cif.py --root ../shared/data --n 300 --amcsd \\
        --out results/benchmarks/xrd_cif.json
"""

# ruff: noqa: E402 (the thread limits must be set before numpy is first imported)

from __future__ import annotations

import os

# One core: single-threaded BLAS, set before numpy is first imported.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import math
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser

from nanoxtal.environment import describe
from nanoxtal.xrd.cif import read_cif_sites
from nanoxtal.xrd.diffraction import SimulationError, compare_sticks, stick_pattern
from nanoxtal.xrd.structures import parse_cif

RANGE = (5.0, 90.0)
# Agreement tolerances of tests/xrd/test_diffraction.py (degrees; intensity of 100).
POSITION_TOL, INTENSITY_TOL = 0.01, 1.0


def pin_to_one_cpu() -> int | None:
    """Run on one CPU (Linux); the CPU used, or None where affinity cannot be set."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def pymatgen_parse(text: str) -> Structure:
    return Structure.from_str(text, fmt="cif")


def run_path(
    texts: Sequence[str], parse: Callable, simulate: Callable, repeats: int
) -> tuple[list, np.ndarray, np.ndarray, Counter]:
    """Parse and simulate each text ``repeats`` times.

    Returns:
        The patterns (None on failure), the per-structure minimum over the repeats of the
        parse and simulation times (s; structures read only), and the failure reasons.
    """
    patterns, t_parse, t_simulate, failures = [], [], [], Counter()
    for text in texts:
        best_parse = best_simulate = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                parsed = parse(text)
                middle = time.perf_counter()
                pattern = simulate(parsed)
            # Any failure of a path is counted, not fatal (pymatgen raises more than it declares).
            except Exception as error:
                pattern = None
                failures[reason(error)] += 1
                break
            end = time.perf_counter()
            best_parse = min(best_parse, middle - start)
            best_simulate = min(best_simulate, end - middle)
        patterns.append(pattern)
        if pattern is not None:
            t_parse.append(best_parse)
            t_simulate.append(best_simulate)
    return patterns, np.array(t_parse), np.array(t_simulate), failures


def reason(error: Exception) -> str:
    """A failure message with its specifics (numbers, quoted names) blanked, for counting."""
    text = f"{type(error).__name__}: {error}"
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    return re.sub(r"\d+(\.\d+)?", "#", text)[:160]


def pymatgen_reason(text: str) -> str | None:
    """Why pymatgen reads no structure: parse_cif only says "no structures" (pymatgen warns the
    cause), so the parse is repeated raising it. Not timed."""
    try:
        CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
    except Exception as error:  # the cause, of whatever type pymatgen raises
        return reason(error).splitlines()[-1]  # the last line is the cause
    return None


def timing_summary(t_parse: np.ndarray, t_simulate: np.ndarray) -> dict[str, float]:
    total = t_parse + t_simulate
    return {
        "read": len(total),
        "parse_ms_median": 1e3 * float(np.median(t_parse)),
        "parse_ms_mean": 1e3 * float(np.mean(t_parse)),
        "simulate_ms_median": 1e3 * float(np.median(t_simulate)),
        "simulate_ms_mean": 1e3 * float(np.mean(t_simulate)),
        "total_ms_median": 1e3 * float(np.median(total)),
        "total_ms_mean": 1e3 * float(np.mean(total)),
        "structures_per_s": len(total) / float(total.sum()),
    }


def agreement(references: list, candidates: list, ids: Sequence[str]) -> dict[str, object]:
    """compare_sticks of candidate against reference patterns where both exist."""
    positions, intensities, outside = [], [], []
    for name, ref, mine in zip(ids, references, candidates, strict=True):
        if ref is None or mine is None:
            continue
        result = compare_sticks(ref, mine)
        positions.append(result.max_position_error)
        intensities.append(result.max_intensity_error)
        if result.max_position_error >= POSITION_TOL or result.max_intensity_error >= INTENSITY_TOL:
            outside.append(name)
    return {
        "compared": len(positions),
        "max_position_error_deg": float(np.max(positions)) if positions else None,
        "max_intensity_error": float(np.max(intensities)) if intensities else None,
        "median_intensity_error": float(np.median(intensities)) if intensities else None,
        "outside_tolerance": len(outside),
        "outside_tolerance_ids": outside,
    }


def sticks(pattern) -> tuple[np.ndarray, np.ndarray]:
    """(2θ, intensity) of a pymatgen or nanoxtal pattern."""
    if hasattr(pattern, "two_theta"):
        return pattern.two_theta, pattern.intensity
    return np.asarray(pattern.x), np.asarray(pattern.y)


def materials_project(root: Path, n: int, seed: int, repeats: int) -> dict[str, object]:
    """Paths (a), (b), (c) on a seeded sample of Materials Project CIFs."""
    table = pd.read_csv(root / "xrd" / "mp_structures.csv.gz")
    sample = table.sample(n, random_state=seed)
    texts, ids = list(sample.cif), list(sample.material_id)
    calculator = XRDCalculator("CuKa")

    def nanoxtal(s):
        return sticks(stick_pattern(s, "CuKa", RANGE))

    paths = {
        "a_pymatgen": (
            pymatgen_parse,
            lambda s: sticks(calculator.get_pattern(s, two_theta_range=RANGE)),
        ),
        "b_parse_cif_stick_pattern": (parse_cif, nanoxtal),
        "c_read_cif_stick_pattern": (read_cif_sites, nanoxtal),
    }
    for parse, simulate in paths.values():  # warm-up: imports, caches
        simulate(parse(texts[0]))
    report: dict[str, object] = {"structures": n, "seed": seed, "repeats": repeats}
    patterns = {}
    for name, (parse, simulate) in paths.items():
        patterns[name], t_parse, t_simulate, failures = run_path(texts, parse, simulate, repeats)
        report[name] = timing_summary(t_parse, t_simulate) | {"failures": dict(failures)}
    reference = report["a_pymatgen"]
    for name in list(paths)[1:]:
        report[name]["throughput_ratio_vs_a"] = (
            report[name]["structures_per_s"] / reference["structures_per_s"]
        )
        report[name]["median_ratio_vs_a"] = (
            reference["total_ms_median"] / report[name]["total_ms_median"]
        )
        report[name]["parse_median_ratio_vs_a"] = (
            reference["parse_ms_median"] / report[name]["parse_ms_median"]
        )
    report["agreement_c_vs_a"] = agreement(
        patterns["a_pymatgen"], patterns["c_read_cif_stick_pattern"], ids
    )
    return report


def amcsd(root: Path) -> dict[str, object]:
    """(d): which AMCSD CIFs each reader reads, why the others fail, agreement where both do."""
    table = pd.read_csv(root / "xrd" / "amcsd_structures.csv.gz", dtype={"amcsd_id": str})
    counts = {"read_cif": Counter(), "parse_cif": Counter()}
    seconds = {"read_cif": 0.0, "parse_cif": 0.0}
    read_both, not_simulable, positions, intensities, outside = 0, Counter(), [], [], []
    for entry, text in zip(table.amcsd_id, table.cif, strict=True):
        outcomes = {}
        for name, parse in (("read_cif", read_cif_sites), ("parse_cif", parse_cif)):
            start = time.perf_counter()
            try:
                outcomes[name] = parse(text)
                counts[name]["read"] += 1
            # CifError, StructureError, and whatever else pymatgen raises: counted by reason.
            except Exception as error:
                why = pymatgen_reason(text) if name == "parse_cif" else None
                counts[name][why or reason(error)] += 1
            seconds[name] += time.perf_counter() - start
        if len(outcomes) < 2:
            continue
        read_both += 1
        try:
            ours = sticks(stick_pattern(outcomes["read_cif"], "CuKa", RANGE))
        except SimulationError as error:
            not_simulable[f"read_cif: {reason(error)}"] += 1
            continue
        try:
            theirs = sticks(stick_pattern(outcomes["parse_cif"], "CuKa", RANGE))
        except SimulationError as error:
            not_simulable[f"parse_cif: {reason(error)}"] += 1
            continue
        result = compare_sticks(theirs, ours)
        positions.append(result.max_position_error)
        intensities.append(result.max_intensity_error)
        if result.max_position_error >= POSITION_TOL or result.max_intensity_error >= INTENSITY_TOL:
            outside.append(entry)
    total = len(table)
    return {
        "cifs": total,
        "read_share": {name: c["read"] / total for name, c in counts.items()},
        "failures": {
            name: dict(sorted(((k, v) for k, v in c.items() if k != "read"), key=lambda x: -x[1]))
            for name, c in counts.items()
        },
        "seconds": seconds,
        "read_by_both": read_both,
        "read_by_both_but_not_simulable": dict(not_simulable),
        "agreement_read_cif_vs_parse_cif": {
            "compared": len(positions),
            "within_tolerance": len(positions) - len(outside),
            "median_intensity_error": float(np.median(intensities)) if intensities else None,
            "outside_tolerance_ids": outside,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=300, help="Materials Project CIFs timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timings per structure; the minimum counts (others' load on the CPU only adds)",
    )
    parser.add_argument("--amcsd", action="store_true", help="also read all AMCSD CIFs (slow)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/xrd_cif.json"))
    args = parser.parse_args()

    cpu = pin_to_one_cpu()
    with warnings.catch_warnings():
        # pymatgen warns on rounded coordinates and unusual labels: noise here.
        warnings.simplefilter("ignore")
        report = {
            "two_theta_range": RANGE,
            "wavelength": "CuKa",
            "pinned_cpu": cpu,
            "materials_project": materials_project(args.root, args.n, args.seed, args.repeats),
        }
        if args.amcsd:
            report["amcsd"] = amcsd(args.root)
    report["environment"] = describe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
