"""Benchmark: the scale-bar label reader (RapidOCR) on labels in real fonts and real micrographs.

``nanoxtal.tem.calibration.scale_bar`` reads:

* simulated micrographs whose bar label is drawn from real font files (DejaVu, Liberation,
  Computer Modern; upright, italic and bold; digits 9–34 px tall on 768 px images; black bars,
  white bars and black labels with a white outline) by ``simulate.burn_scale_bar``: FreeType's
  anti-aliased rendering on film, noise and particles; and the simulator's own 5×7 labels;
* the real micrographs with a scale bar in ``shared/data/tem`` (labels read by eye), and those
  without one, where any label read is a false reading.

Per case: read correctly, misread (a wrong length) or unread, and the time per label
(``scale_bar`` less the same call with the engine switched off: the bar search is shared).
Run on demand (about 2 minutes on 2 cores; Debian's fonts-liberation adds the Liberation fonts,
else they are left out):

    python benchmarks/scale_bar_ocr.py --root ../shared/data \\
        --out results/benchmarks/scale_bar_ocr.json

When the reader was chosen (this file, with the readers calibration.py then had, on 2 shared
cores; seeds 0 and 1: 432 simulated labels, tesseract on seed 0's 216 only):

========================  ==============  =======  ======  ==============  ====
reader                    correct         misread  unread  median s/label  real
========================  ==============  =======  ======  ==============  ====
RapidOCR 3.10 (ONNX)      405/432 (94 %)  3        24      0.026           5/5
tesseract 5.3 (Debian)    72/216 (33 %)   7        137     0.37            4/5
glyph templates           140/432 (32 %)  6        286     0.005           4/5
========================  ==============  =======  ======  ==============  ====

Tesseract read no label RapidOCR missed; the templates read 2 of 432 (none real) and misread
6 on their own, so both were dropped. No reader read a label on the 63 real micrographs
without a scale bar.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import numpy as np

from nanoxtal.tem import calibration
from nanoxtal.tem.io import read_image
from nanoxtal.tem.simulate import MicrographSettings, burn_scale_bar, simulate_micrograph

# (family, style, file name): looked for in the system's font folders and matplotlib's.
FONTS = [
    ("DejaVu Sans", "regular", "DejaVuSans.ttf"),
    ("DejaVu Sans", "italic", "DejaVuSans-Oblique.ttf"),
    ("DejaVu Sans", "bold", "DejaVuSans-Bold.ttf"),
    ("DejaVu Sans", "bold italic", "DejaVuSans-BoldOblique.ttf"),
    ("DejaVu Serif", "regular", "DejaVuSerif.ttf"),
    ("DejaVu Serif", "italic", "DejaVuSerif-Italic.ttf"),
    ("DejaVu Serif", "bold", "DejaVuSerif-Bold.ttf"),
    ("Liberation Sans", "regular", "LiberationSans-Regular.ttf"),
    ("Liberation Sans", "italic", "LiberationSans-Italic.ttf"),
    ("Liberation Sans", "bold", "LiberationSans-Bold.ttf"),
    ("Liberation Sans", "bold italic", "LiberationSans-BoldItalic.ttf"),
    ("Liberation Serif", "regular", "LiberationSerif-Regular.ttf"),
    ("Liberation Serif", "italic", "LiberationSerif-Italic.ttf"),
    ("Liberation Serif", "bold", "LiberationSerif-Bold.ttf"),
    ("Computer Modern Sans", "regular", "cmss10.ttf"),
    ("Computer Modern", "regular", "cmr10.ttf"),
    ("Computer Modern", "italic", "cmti10.ttf"),
]
# Fonts in TeX's encoding: their "µ" code point holds another glyph, so they get nm labels.
NO_MICRO = {"cmss10.ttf", "cmr10.ttf", "cmti10.ttf"}
FONT_FOLDERS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts"]
# Digit heights (px) on a 768 px micrograph: 1.2–4.4 % of its height.
DIGIT_PX = (9, 14, 22, 34)
# Bar colour and label style: black, white, black label with a 2 px white outline.
LOOKS = {"dark": (True, 0), "bright": (False, 0), "dark outlined": (True, 2)}
LABELS = [(20, "nm"), (50, "nm"), (100, "nm"), (200, "nm"), (500, "nm"), (1000, "µm")]
SIDE = 768
# The real micrographs with a scale bar: their labels as read by eye.
REAL = {
    "tem/sophon_example/1-0001_16.png": "200 nm",
    "tem/nanocrystals_unlabeled/1-0001.png": "50 nm",
    "tem/nanocrystals_unlabeled/1-0007_7.png": "0.2 µm",
    "tem/nanocrystals_unlabeled/1-0021_9_v2.png": "100 nm",
    "tem/nanocrystals_unlabeled/2-0018_32.png": "50 nm",
}
# Real micrographs without a scale bar (cropped by their publishers).
WITHOUT_BAR = ("tem/stem_boxes/images", "tem/msa_em/images", "tem/au_monolayer/images")


def font_files() -> list[tuple[str, str, Path]]:
    """The fonts of ``FONTS`` found here."""
    from matplotlib import font_manager

    folders = [*FONT_FOLDERS, Path(font_manager.findfont("DejaVu Sans")).parent]
    found = []
    for family, style, name in FONTS:
        for folder in folders:
            hits = sorted(folder.rglob(name)) if folder.is_dir() else []
            if hits:
                found.append((family, style, hits[0]))
                break
    return found


def cases(seed: int) -> list[dict]:
    """Simulated micrographs with labels in real fonts and the simulator's own."""
    rng = np.random.default_rng(seed)
    backgrounds = [
        simulate_micrograph(
            MicrographSettings(
                width_px=SIDE, height_px=SIDE, nm_per_px=1.0, scale_bar=False, coverage=0.2
            ),
            seed + index,
        ).image
        for index in range(6)
    ]
    fonts = [*font_files(), ("builtin 5x7", "regular", None)]
    made = []
    for family, style, path in fonts:
        for digit_px in DIGIT_PX:
            for look, (dark, outline) in LOOKS.items():
                length_nm, unit = LABELS[rng.integers(len(LABELS))]
                if unit != "nm" and (path is None or path.name in NO_MICRO):
                    length_nm, unit = 200, "nm"  # the 5×7 font has no µ
                # The bar spans 12–25 % of the width: the pixel size follows.
                nm_per_px = length_nm / (SIDE * rng.uniform(0.12, 0.25))
                image = backgrounds[len(made) % len(backgrounds)].copy()
                truth = burn_scale_bar(
                    image,
                    nm_per_px,
                    dark=dark,
                    corner=(bool(rng.random() < 0.5), bool(rng.random() < 0.5)),
                    length_nm=length_nm,
                    unit=unit,
                    font=path,
                    digit_px=digit_px,
                    outline=outline,
                )
                made.append(
                    {
                        "font": family,
                        "style": style,
                        "digit_px": digit_px,
                        "look": look,
                        "truth": truth.label,
                        "image": image,
                    }
                )
    return made


def outcome(bar: calibration.ScaleBar | None, truth: str | None) -> str:
    if truth is None:
        return "false read" if bar is not None and bar.label is not None else "nothing read"
    if bar is None:
        return "bar missed"
    if bar.label is None:
        return "unread"
    return "correct" if calibration.parse_label(truth)[1] == bar.length_nm else "misread"


def timed(image: np.ndarray, engine: bool) -> tuple[calibration.ScaleBar | None, float]:
    """``scale_bar`` of an image and its time, with the OCR engine on or switched off."""
    loaded = calibration._rapidocr_engine
    start = time.perf_counter()
    if engine:
        bar = calibration.scale_bar(image)
    else:
        calibration._rapidocr_engine = lambda: None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                bar = calibration.scale_bar(image)
        finally:
            calibration._rapidocr_engine = loaded
    return bar, time.perf_counter() - start


def read(image: np.ndarray) -> dict[str, object]:
    _, bare = timed(image, engine=False)
    bar, took = timed(image, engine=True)
    return {"bar": bar, "read": bar.label if bar else None, "read_s": max(took - bare, 0.0)}


def counts(rows: list[dict]) -> dict[str, object]:
    tally = defaultdict(int)
    for row in rows:
        tally[row["outcome"]] += 1
    seconds = [row["read_s"] for row in rows if row["outcome"] != "bar missed"]
    return {
        "n": len(rows),
        "correct": tally["correct"],
        "misread": tally["misread"],
        "unread": tally["unread"],
        "bar_missed": tally["bar missed"],
        "accuracy": round(tally["correct"] / len(rows), 3) if rows else None,
        "median_s_per_label": round(float(np.median(seconds)), 4) if seconds else None,
        "mean_s_per_label": round(float(np.mean(seconds)), 4) if seconds else None,
        "max_s_per_label": round(float(np.max(seconds)), 4) if seconds else None,
    }


def versions() -> dict[str, str | None]:
    found = {}
    for name in ("rapidocr", "onnxruntime", "opencv-python-headless", "numpy", "matplotlib"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/scale_bar_ocr.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="every fourth simulated case")
    args = parser.parse_args()

    start = time.perf_counter()
    if not calibration.ocr_available():
        parser.error("RapidOCR is not installed (pip install 'nanoxtal[tem]')")
    load_s = round(time.perf_counter() - start, 3)

    simulated = cases(args.seed)
    if args.quick:
        simulated = simulated[::4]
    rows = []
    for index, case in enumerate(simulated):
        found = read(case["image"])
        rows.append(
            {
                **{key: case[key] for key in ("font", "style", "digit_px", "look", "truth")},
                "read": found["read"],
                "outcome": outcome(found["bar"], case["truth"]),
                "read_s": found["read_s"],
            }
        )
        if index % 40 == 0:
            print(f"simulated {index + 1}/{len(simulated)}", flush=True)

    real = [(args.root / name, truth) for name, truth in REAL.items()]
    for folder in WITHOUT_BAR:
        real += [(path, None) for path in sorted((args.root / folder).glob("*.*"))]
    real_rows = []
    for path, truth in real:
        if not path.is_file():
            continue
        found = read(read_image(path))
        real_rows.append(
            {
                "image": str(path.relative_to(args.root)),
                "truth": truth,
                "read": found["read"],
                "outcome": outcome(found["bar"], truth),
                "read_s": found["read_s"],
            }
        )

    summary: dict[str, object] = {"simulated": counts(rows)}
    for key in ("font", "style", "digit_px", "look"):
        values = sorted({row[key] for row in rows}, key=str)
        summary[f"by_{key}"] = {
            str(value): counts([row for row in rows if row[key] == value]) for value in values
        }
    labelled = [row for row in real_rows if row["truth"] is not None]
    bare = [row for row in real_rows if row["truth"] is None]
    summary["real"] = {row["image"]: row["read"] for row in labelled}
    summary["real_correct"] = sum(row["outcome"] == "correct" for row in labelled)
    summary["real_n"] = len(labelled)
    summary["real_s_per_label"] = [round(row["read_s"], 4) for row in labelled]
    summary["real_without_bar_false_reads"] = sum(row["outcome"] == "false read" for row in bare)
    summary["real_without_bar_n"] = len(bare)
    report = {
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": versions(),
            "engine_load_s": load_s,
            "seed": args.seed,
        },
        "summary": summary,
        "simulated": rows,
        "real": real_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    sim = summary["simulated"]
    print(
        f"simulated: {sim['correct']}/{sim['n']} correct, {sim['misread']} misread, "
        f"{sim['unread']} unread, median {sim['median_s_per_label']} s per label; real: "
        f"{summary['real_correct']}/{summary['real_n']} correct, "
        f"{summary['real_without_bar_false_reads']}/{summary['real_without_bar_n']} false reads"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
