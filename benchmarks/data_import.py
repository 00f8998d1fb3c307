"""Benchmark: verified dataset import versus the naive copy-then-hash, in one run.

``import_dataset`` hashes bytes while it writes them (one read of the source). The reference is
what a script would do: copy each file, then a sha256 pass over the copies. Run on demand:

    python benchmarks/data_import.py --root ../shared/data --out results/benchmarks/data_import.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from nanoxtal.data import datasets, import_dataset
from nanoxtal.data.registry import Dataset, sha256_file
from nanoxtal.environment import describe


def naive_import(dataset: Dataset, root: Path, dest: Path) -> None:
    """Copy exactly the dataset's files, then hash each copy."""
    for entry in dataset.files:
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.location(root) / entry.path, target)
        sha256_file(target)


def best_of(repeats: int, action) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/data_import.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for dataset in datasets().values():
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            counter = iter(range(10**6))

            def ours(dataset=dataset, scratch=scratch, counter=counter):
                import_dataset(dataset, args.root, scratch / f"o{next(counter)}", progress=False)

            def reference(dataset=dataset, scratch=scratch, counter=counter):
                naive_import(dataset, args.root, scratch / f"r{next(counter)}")

            t_ours, t_ref = best_of(args.repeats, ours), best_of(args.repeats, reference)
        speedup = t_ref / t_ours
        rows.append(
            {
                "dataset": dataset.name,
                "files": len(dataset.files),
                "megabytes": dataset.size / 1e6,
                "nanoxtal_s": t_ours,
                "copy_then_hash_s": t_ref,
                "speedup": speedup,
                "nanoxtal_MB_per_s": dataset.size / 1e6 / t_ours,
            }
        )
        print(f"{dataset.name:<18} {t_ours:7.3f} s  reference {t_ref:7.3f} s  x{speedup:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": describe(), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
