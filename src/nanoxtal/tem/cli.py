"""``nanoxtal tem ...``: synthetic micrographs and the segmentation network.

Heavy imports happen inside the commands, so ``nanoxtal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from nanoxtal.arguments import json_object, settings_from
from nanoxtal.environment import describe
from nanoxtal.files import atomic_write

if TYPE_CHECKING:
    import pandas as pd

    from nanoxtal.tem.io import Split

EXIT_OK = 0


def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from nanoxtal.tem.simulate import MicrographSettings, simulate_batch, write_micrograph

    overrides = dict(args.settings)
    if args.size is not None:
        overrides |= {"width_px": args.size, "height_px": args.size}
    if args.bits is not None:
        overrides["bits"] = args.bits
    settings = MicrographSettings.from_mapping(overrides)
    particles = 0
    for index, micrograph in enumerate(
        tqdm(
            simulate_batch(settings, args.count, args.seed, args.start),
            total=args.count,
            desc="simulate",
            unit="image",
            disable=args.no_progress,
        ),
        start=args.start,
    ):
        write_micrograph(micrograph, args.out, f"{args.prefix}{index:05d}")
        particles += len(micrograph.particles)
    summary = {
        "seed": args.seed,
        "start": args.start,
        "count": args.count,
        "prefix": args.prefix,
        "particles": particles,
        "settings": asdict(settings),
    }
    name = f"{args.prefix}{args.start:05d}-{args.start + args.count - 1:05d}.summary.json"
    with atomic_write(args.out / name) as partial:
        partial.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.count} micrographs ({particles} particles) written to {args.out}")
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from nanoxtal.tem.training import TrainSettings, train_segmenter
    from nanoxtal.train import TrainerSettings

    published = train_segmenter(
        args.out_dir,
        TrainSettings.from_mapping(args.settings),
        TrainerSettings.from_mapping(args.trainer, {"seed": args.seed}),
        banks=args.bank,
        init_from=args.init,
    )
    print(f"trained segmenter: {published}")
    return EXIT_OK


def _soup(args: argparse.Namespace) -> int:
    from nanoxtal.tem.module import average_segmenters

    try:
        out = average_segmenters(args.checkpoints, args.out)
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"weight average of {len(args.checkpoints)} segmenters written to {out}")
    return EXIT_OK


def _bank(args: argparse.Namespace) -> int:
    from nanoxtal.tem.bank import labelled_bank, save_bank

    split = _split_from(args)
    if args.film_margin is not None and args.film_margin < 0:
        raise SystemExit(f"error: --film-margin must be >= 0 px, got {args.film_margin}")
    bank, splits = labelled_bank(dict(args.set), split, args.film_margin)
    save_bank(bank, args.out)
    record = {
        "sets": {name: str(folder) for name, folder in args.set},
        "film_margin_px": args.film_margin,
        **split.record(),
        "images": list(bank.names),
        "pixels": bank.pixels,
        "splits": splits,
    }
    if args.summary:
        with atomic_write(args.summary) as partial:
            partial.write_text(json.dumps(record, indent=2) + "\n")
    kind = "labelled" if args.film_margin is None else "film-only"
    trusted = sum(int(mask.sum()) for mask in bank.valid) / max(bank.pixels, 1)
    print(
        f"{len(bank)} {kind} training images ({bank.pixels} px, {trusted:.1%} trusted)"
        f" written to {args.out}"
    )
    return EXIT_OK


def _pseudo(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    from tqdm.auto import tqdm

    from nanoxtal.tem.bank import PseudoSettings, pseudo_bank, save_bank
    from nanoxtal.tem.io import TemImageError, image_files, read_image
    from nanoxtal.tem.module import load_segmenter
    from nanoxtal.tem.segmentation import SegmentSettings

    settings = settings_from(PseudoSettings, args.settings, "pseudo-label")
    segment = SegmentSettings.from_mapping(args.segment)
    model = load_segmenter(args.model)
    files, failed = image_files(args.images)
    for message in failed:
        print(f"skipped: {message}", file=sys.stderr)
    images, names = [], []
    for path in files:
        try:
            images.append(read_image(path))
            names.append(path.stem)
        except TemImageError as error:
            failed.append(str(error))
            print(f"skipped: {error}", file=sys.stderr)
    if not images:
        raise SystemExit(f"no readable image among {len(files)} files: nothing to pseudo-label")
    bank = pseudo_bank(
        model,
        tqdm(images, desc="pseudo-label", disable=args.no_progress),
        names,
        settings,
        segment,
    )
    save_bank(bank, args.out)
    kept = sum(int(np.count_nonzero(np.unique(labels))) for labels in bank.instances)
    trusted = sum(int(mask.sum()) for mask in bank.valid) / bank.pixels
    print(
        f"{len(bank)} pseudo-labelled images ({kept} particles, {trusted:.1%} of pixels trusted)"
        f" written to {args.out}"
    )
    return EXIT_OK if not failed else 1


def labelled_folder(text: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` of a labelled set (argparse type)."""
    from nanoxtal.tem.io import LABELLED_SETS

    name, sep, folder = text.partition("=")
    if not sep or name not in LABELLED_SETS or not folder:
        raise argparse.ArgumentTypeError(
            f"expected NAME=FOLDER with NAME one of {', '.join(LABELLED_SETS)}, got {text!r}"
        )
    return name, Path(folder)


def _segment_argument(parser: argparse.ArgumentParser) -> None:
    """``--segment``: how the network's maps become instances, the same for every verb."""
    parser.add_argument(
        "--segment",
        type=json_object,
        default={},
        help="JSON object of SegmentSettings fields (nanoxtal.tem.segmentation), e.g. the"
        " tem.segment config block",
    )


def _set_segment(text: str) -> tuple[str, dict]:
    """``NAME=JSON``: one labelled set's segment settings, over the common ``--segment``."""
    name, separator, settings = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    return name, json_object(settings)


def _split_arguments(parser: argparse.ArgumentParser) -> None:
    """The labelled sets and their fixed train/test split (shared by bank and evaluate)."""
    parser.add_argument(
        "--set",
        type=labelled_folder,
        action="append",
        required=True,
        metavar="NAME=FOLDER",
        help="a labelled set and its folder, e.g. msa_em=data/tem/msa_em; repeatable",
    )
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the fixed split")
    parser.add_argument(
        "--test-share", type=float, default=0.5, help="share of each set kept for evaluation"
    )
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=0,
        metavar="K",
        help="cross-validation inside the training part: K folds (0: none, use the test part)",
    )
    parser.add_argument(
        "--cv-fold",
        type=int,
        default=0,
        metavar="I",
        help="the fold left out of the bank and scored by evaluate, 0..K-1",
    )


def _split_from(args: argparse.Namespace) -> Split:
    """The ``Split`` the split arguments name (argparse error for an impossible one)."""
    from nanoxtal.tem.io import Split

    try:
        return Split(args.split_seed, args.test_share, args.cv_folds, args.cv_fold)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error


def _evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.tem.evaluate import (
        evaluate_synthetic_shapes,
        evaluate_test_parts,
        evaluation_figure,
        shape_figure,
    )
    from nanoxtal.tem.module import load_segmenter
    from nanoxtal.tem.segmentation import SegmentSettings, segment_image

    split = _split_from(args)
    per_set = dict(args.set_segment)
    unknown = sorted(set(per_set) - {name for name, _ in args.set})
    if unknown:
        raise ValueError(f"--set-segment names sets not given with --set: {', '.join(unknown)}")
    # Every set's settings are checked before the first image is segmented.
    chosen_for = {
        name: SegmentSettings.from_mapping({**args.segment, **per_set.get(name, {})})
        for name in [name for name, _ in args.set] + ["shapes"]
    }
    model = load_segmenter(args.model) if args.model else None

    def predictors(name: str) -> dict:
        chosen = chosen_for[name]
        methods = {"baseline": lambda image: segment_image(image, None, chosen)}
        if model is not None:
            methods["model"] = lambda image: segment_image(image, model, chosen)
        return methods

    metrics: dict[str, object] = {
        "model": str(args.model) if args.model else None,
        "environment": describe(),
    }
    tables = []
    for name, folder in args.set:
        found, table = evaluate_test_parts(
            {name: folder}, predictors(name), split, progress=not args.no_progress
        )
        metrics |= found
        tables.append(table)
    if args.shapes_per_class > 0:
        found, matrices = evaluate_synthetic_shapes(
            predictors("shapes"), args.shapes_per_class, args.shapes_seed
        )
        metrics |= found
        if args.shapes_figure:
            shape_figure(matrices, args.shapes_figure)  # written atomically
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(metrics, indent=2, default=_json_number) + "\n")
    if args.per_image:
        per_image = pd.concat(tables, ignore_index=True)
        with atomic_write(args.per_image) as partial:
            per_image.to_csv(partial, index=False)
    if args.figure:
        with atomic_write(args.figure) as partial:
            evaluation_figure(metrics, partial)
    _print_headline(metrics)
    return EXIT_OK


def _print_headline(metrics: dict[str, object]) -> None:
    """The numbers people look at first, one per line."""
    headline = (
        "/ap50",
        "/semantic_miou",
        "/count_error",
        "/diameter_error",
        "/sample_diameter_error",
        "/dominant_accuracy",
        "/common_accuracy",
    )
    for key, value in metrics.items():
        if key.endswith(headline) and isinstance(value, float):
            print(f"{key}: {value:.3f}")


def _pool(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.tem.evaluate import evaluation_figure, pool_folds

    fold_metrics, fold_tables = [], []
    for folder in args.folds:
        metrics_file, table_file = folder / "metrics.json", folder / "per_image.csv"
        try:
            fold_metrics.append(json.loads(metrics_file.read_text()))
            fold_tables.append(pd.read_csv(table_file, dtype={"name": str, "error": object}))
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {folder}: not a scored fold ({error})") from error
    try:
        metrics, table = pool_folds(fold_metrics, fold_tables)
    except ValueError as error:
        raise SystemExit(f"error: {', '.join(map(str, args.folds))}: {error}") from error
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(metrics, indent=2, default=_json_number) + "\n")
    if args.per_image:
        with atomic_write(args.per_image) as partial:
            table.to_csv(partial, index=False)
    if args.figure:
        with atomic_write(args.figure) as partial:
            evaluation_figure(metrics, partial)
    _print_headline(metrics)
    return EXIT_OK


def _json_number(value: object) -> object:
    """Plain numbers for numpy scalars; null for NaN and infinity."""
    import math

    number = float(value)
    return number if math.isfinite(number) else None


# The statistics of an image or a sample (nanoxtal.tem.measure.summarise_image), in order.
STATISTICS_COLUMNS = (
    "count",
    "count_measured",
    "mean_diameter",
    "std_diameter",
    "size_distribution_pct",
    "dominant_shape",
    "dominant_shape_share",
    "diameter_unit",
)
# Columns of summary.csv, in order.
SUMMARY_COLUMNS = (
    "image",
    "sample",
    *STATISTICS_COLUMNS,
    "nm_per_px",
    "pixel_size_source",
    "pixel_size_detail",
    "segmenter",
    "error",
)


def distinct_names(names: list[str]) -> list[str]:
    """The names, numbered from their second occurrence on (``a``, ``a-2``, ``a-3``)."""
    seen: dict[str, int] = {}
    distinct = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        distinct.append(name if count == 0 else f"{name}-{count + 1}")
    return distinct


def file_stem(name: str) -> str:
    """``name`` as a file name: other characters than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "_"


# Columns of samples.csv, in order.
SAMPLE_COLUMNS = ("sample", "images", "images_failed", *STATISTICS_COLUMNS, "error")


def read_sample_map(path: Path) -> dict[str, str]:
    """The sample of each image listed in a CSV with columns ``image`` and ``sample``.

    ``image`` is a path as given on the command line or a file name.

    Raises:
        ValueError: An unreadable file, missing columns, an empty cell or an image listed
            with two samples (the message names the file and the row).
    """
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable CSV ({error})") from error
    missing = {"image", "sample"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs columns image and sample, missing {sorted(missing)}")
    mapping: dict[str, str] = {}
    for row, (image, sample) in enumerate(zip(table["image"], table["sample"], strict=True), 2):
        image, sample = image.strip(), sample.strip()
        if not image or not sample:
            raise ValueError(f"{path}, line {row}: empty image or sample")
        if mapping.get(image, sample) != sample:
            raise ValueError(
                f"{path}, line {row}: {image} listed for {mapping[image]} and {sample}"
            )
        mapping[image] = sample
    return mapping


def sample_of(path: Path, mapping: dict[str, str]) -> str:
    """The sample of an image: ``mapping``'s (by path as given, else file name), else its folder."""
    for key in (str(path), path.name):
        if key in mapping:
            return mapping[key]
    return path.resolve().parent.name


def sample_table(particles: dict[str, list], summary: pd.DataFrame) -> pd.DataFrame:
    """samples.csv: per sample, the pooled statistics of its measured images.

    Args:
        particles: Per sample, the particle tables of its measured images.
        summary: The per-image table (summary.csv), for each image's ``sample`` and ``error``;
            samples come in its order.
    """
    import pandas as pd

    from nanoxtal.tem.measure import summarise_sample

    rows = []
    for sample, images in summary.groupby("sample", sort=False):
        row: dict[str, object] = {
            "sample": sample,
            "images": len(images),
            "images_failed": int(images["error"].notna().sum()),
        }
        try:
            rows.append(row | summarise_sample(particles.get(sample, [])) | {"error": None})
        except ValueError as error:
            rows.append(row | {"error": str(error)})
    table = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    return table.astype({"count": "Int64", "count_measured": "Int64"})


def write_samples(out: Path, particles: dict[str, list], summary: pd.DataFrame) -> list[Path]:
    """Write ``samples.csv`` (``sample_table``) and a pooled size histogram per sample.

    Returns:
        The histograms written, ``out/samples/<sample>.png`` (names made file-safe and
        distinct); none for a sample whose statistics failed.
    """
    import pandas as pd

    from nanoxtal.tem.measure import size_histogram

    table = sample_table(particles, summary)
    with atomic_write(out / "samples.csv") as partial:
        table.to_csv(partial, index=False)
    figures = []
    names = distinct_names([file_stem(sample) for sample in table["sample"]])
    for sample, count, error, name in zip(
        table["sample"], table["images"], table["error"], names, strict=True
    ):
        if pd.isna(error):
            figure = out / "samples" / f"{name}.png"
            pooled = pd.concat(particles[sample], ignore_index=True)
            figures.append(size_histogram(pooled, figure, f"sample {sample} ({count} images)"))
    return figures


MEASURE_TABLES = ("particles.csv", "summary.csv", "samples.csv")
# Per-image figures, one PNG per image in each folder; then the per-sample histograms' folder.
MEASURE_FIGURES = ("masks", "overlays", "histograms")
MEASURE_FOLDERS = (*MEASURE_FIGURES, "samples")


def earlier_measurement(out: Path) -> list[Path]:
    """The files of an earlier ``tem measure`` in ``out``: its tables and per-image PNGs."""
    tables = [out / name for name in MEASURE_TABLES if (out / name).is_file()]
    figures = [
        path
        for folder in MEASURE_FOLDERS
        if (out / folder).is_dir()
        for path in sorted((out / folder).glob("*.png"))
    ]
    return tables + figures


def _measure(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from nanoxtal.tem.calibration import (
        GATAN_SUFFIXES,
        CalibrationError,
        drop_scale_bar,
        read_micrograph,
        resolve_pixel_size,
    )
    from nanoxtal.tem.io import IMAGE_SUFFIXES, TemImageError, image_files
    from nanoxtal.tem.measure import (
        measure_particles,
        overlay,
        size_histogram,
        summarise_image,
        write_png,
    )
    from nanoxtal.tem.segmentation import SegmentSettings, segment_image

    if args.nm_per_px is not None and not args.nm_per_px > 0:
        raise ValueError(f"--nm-per-px must be > 0, got {args.nm_per_px}")
    out: Path = args.out
    earlier = earlier_measurement(out)
    if earlier and not args.overwrite:
        # A second batch into the same folder would replace the tables and leave the
        # first batch's masks beside them, matching no row.
        raise ValueError(
            f"{out} already holds a measurement ({len(earlier)} files, e.g. {earlier[0].name});"
            " choose another --out, or pass --overwrite to replace it"
        )
    model, segmenter = None, "classical baseline (threshold + distance watershed)"
    if args.model is not None:
        if not args.model.is_file():
            raise ValueError(f"model {args.model} not found")
        from nanoxtal.tem.module import load_segmenter

        model, segmenter = load_segmenter(args.model), f"network {args.model}"
    print(f"segmenter: {segmenter}")
    segment = args.segment | ({"polarity": args.polarity} if args.polarity else {})
    settings = SegmentSettings.from_mapping(segment)
    files, problems = image_files(args.images, IMAGE_SUFFIXES | GATAN_SUFFIXES)
    for message in problems:
        print(f"nanoxtal: error: {message}", file=sys.stderr)
    by_image = args.samples == "image"
    mapping = {} if args.samples in ("folder", "image") else read_sample_map(Path(args.samples))
    tables, summaries, failed = [], [], len(problems)
    per_sample: dict[str, list] = {}
    written: set[Path] = {out / name for name in MEASURE_TABLES}
    for path, name in tqdm(
        list(zip(files, distinct_names([path.stem for path in files]), strict=True)),
        desc="measure",
        unit="image",
        disable=args.no_progress,
    ):
        sample = name if by_image else sample_of(path, mapping)
        row: dict[str, object] = {"image": str(path), "sample": sample, "segmenter": segmenter}
        try:
            image = read_micrograph(path)
            pixel = resolve_pixel_size(path, image, args.nm_per_px)
            if pixel.overridden is not None:
                print(f"nanoxtal: warning: {path}: --nm-per-px {pixel.detail}", file=sys.stderr)
            instances = drop_scale_bar(segment_image(image, model, settings), pixel.scale_bar)
            if instances.max(initial=0) > np.iinfo(np.uint16).max:
                raise TemImageError(f"{path}: too many particles for a 16-bit mask")
            particles = measure_particles(instances, pixel.nm_per_px)
        except (TemImageError, CalibrationError) as error:
            failed += 1
            print(f"nanoxtal: error: {error}", file=sys.stderr)
            summaries.append(row | {"error": str(error)})
            continue
        figures = {folder: out / folder / f"{name}.png" for folder in MEASURE_FIGURES}
        write_png(figures["masks"], instances.astype(np.uint16))
        write_png(figures["overlays"], overlay(image, instances, particles))
        size_histogram(particles, figures["histograms"], path.name)
        written.update(figures.values())
        tables.append(particles.assign(image=str(path))[["image", *particles.columns]])
        per_sample.setdefault(sample, []).append(particles)
        summaries.append(
            row
            | summarise_image(particles)
            | {
                "nm_per_px": pixel.nm_per_px,
                "pixel_size_source": pixel.source,
                "pixel_size_detail": pixel.detail,
                "error": None,
            }
        )
    particles_table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if tables:
        # Images without a pixel size have no nm columns; keep them all, NaN where unknown.
        particles_table = particles_table[
            ["image", *[c for c in particles_table.columns if c != "image"]]
        ]
    summary = pd.DataFrame(summaries, columns=list(SUMMARY_COLUMNS))
    summary = summary.astype({"count": "Int64", "count_measured": "Int64"})
    with atomic_write(out / "particles.csv") as partial:
        particles_table.to_csv(partial, index=False)
    with atomic_write(out / "summary.csv") as partial:
        summary.to_csv(partial, index=False)
    written.update(write_samples(out, per_sample, summary))
    stale = sorted(set(earlier) - written)
    for path in stale:
        path.unlink()
    if stale:
        print(f"removed {len(stale)} files of the earlier measurement that this batch did not make")
    measured = len(files) - (failed - len(problems))
    print(
        f"{measured} images measured ({len(particles_table)} particles) into {out}; {failed} failed"
    )
    return 1 if failed else EXIT_OK


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Register ``nanoxtal tem`` and its verbs."""
    tem = stages.add_parser("tem", help="transmission electron micrographs: synthetic images")
    verbs = tem.add_subparsers(dest="verb", required=True, metavar="VERB")

    simulate = verbs.add_parser(
        "simulate", help="synthetic bright-field micrographs with instance truth"
    )
    simulate.add_argument("--out", type=Path, required=True, help="folder for the images")
    simulate.add_argument("--count", type=int, required=True, help="images to simulate")
    simulate.add_argument("--seed", type=int, default=42)
    simulate.add_argument(
        "--start", type=int, default=0, help="index of the first image (to split a batch)"
    )
    simulate.add_argument("--size", type=int, metavar="PX", help="square image side, px")
    simulate.add_argument("--bits", type=int, choices=(8, 16), help="bit depth (default 8)")
    simulate.add_argument(
        "--settings",
        type=json_object,
        default={},
        help="JSON object of MicrographSettings fields, e.g. '{\"nm_per_px\": 0.25}'",
    )
    simulate.add_argument("--prefix", default="synthetic_", help="file name prefix")
    simulate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    simulate.set_defaults(func=_simulate)

    train = verbs.add_parser(
        "train", help="train the segmentation network on micrographs simulated on the fly"
    )
    train.add_argument(
        "--out-dir", type=Path, required=True, help="stage folder, e.g. results/tem/synthetic"
    )
    train.add_argument(
        "--settings",
        type=json_object,
        default={},
        help="JSON object of TrainSettings fields (nanoxtal.tem.training)",
    )
    train.add_argument("--trainer", type=json_object, default={}, help="JSON trainer settings")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument(
        "--bank",
        type=Path,
        action="append",
        default=[],
        help="real image bank (.npz from 'tem bank' or 'tem pseudo') to mix in; repeatable",
    )
    train.add_argument("--init", type=Path, help="checkpoint whose weights the network starts from")
    train.set_defaults(func=_train)

    soup = verbs.add_parser(
        "soup", help="average the weights of segmenters trained from one start (model soup)"
    )
    soup.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT", help="one or more")
    soup.add_argument("--out", type=Path, required=True, help="the averaged checkpoint")
    soup.set_defaults(func=_soup)

    bank = verbs.add_parser(
        "bank", help="store the training part of labelled real sets for fine-tuning"
    )
    _split_arguments(bank)
    bank.add_argument("--out", type=Path, required=True, help="bank file (.npz)")
    bank.add_argument("--summary", type=Path, help="JSON record of the images and split")
    bank.add_argument(
        "--film-margin",
        type=float,
        metavar="PX",
        help="a film bank: trust only the film farther than PX from every labelled particle"
        " or box, so the network learns what is not a particle (e.g. textured supports)",
    )
    bank.set_defaults(func=_bank)

    pseudo = verbs.add_parser(
        "pseudo", help="pseudo-label unlabelled micrographs with a teacher model (self-training)"
    )
    pseudo.add_argument("images", nargs="+", type=Path, help="image files or folders")
    pseudo.add_argument("--model", type=Path, required=True, help="teacher checkpoint")
    pseudo.add_argument("--out", type=Path, required=True, help="bank file (.npz)")
    pseudo.add_argument(
        "--settings",
        type=json_object,
        default={},
        help="JSON object of PseudoSettings fields (nanoxtal.tem.bank)",
    )
    _segment_argument(pseudo)
    pseudo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    pseudo.set_defaults(func=_pseudo)

    evaluate = verbs.add_parser(
        "evaluate",
        help="score the model and the classical baseline on the held-out part of labelled sets"
        " (or, with --cv-folds, on one fold of their training part)",
    )
    _split_arguments(evaluate)
    evaluate.add_argument("--model", type=Path, help="segmenter checkpoint (else baseline only)")
    evaluate.add_argument("--out", type=Path, required=True, help="metrics JSON")
    evaluate.add_argument("--per-image", type=Path, help="per-image CSV")
    evaluate.add_argument("--figure", type=Path, help="PNG of the headline metrics")
    _segment_argument(evaluate)
    evaluate.add_argument(
        "--set-segment",
        type=_set_segment,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="segment settings of one set over --segment, e.g."
        """ stem_boxes='{"polarity": "auto", "scales": [1, 0.5, 0.25]}'""",
    )
    evaluate.add_argument(
        "--shapes-per-class",
        type=int,
        default=0,
        metavar="N",
        help="also score the shape classes on N simulated micrographs per class (0: skip)",
    )
    evaluate.add_argument(
        "--shapes-seed", type=int, default=2025, help="seed of the simulated shape micrographs"
    )
    evaluate.add_argument("--shapes-figure", type=Path, help="PNG of the shape confusion matrices")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    evaluate.set_defaults(func=_evaluate)

    pool = verbs.add_parser(
        "pool",
        help="pool the scored folds of a cross-validation (each training image scored once)",
    )
    pool.add_argument(
        "folds",
        nargs="+",
        type=Path,
        metavar="FOLD_DIR",
        help="folder of one fold's 'tem evaluate --cv-fold' output: metrics.json, per_image.csv",
    )
    pool.add_argument("--out", type=Path, required=True, help="pooled metrics JSON")
    pool.add_argument("--per-image", type=Path, help="pooled per-image CSV (with a fold column)")
    pool.add_argument("--figure", type=Path, help="PNG of the pooled headline metrics")
    pool.set_defaults(func=_pool)

    measure = verbs.add_parser(
        "measure", help="segment micrographs and measure their particles (sizes, shapes)"
    )
    measure.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="image files or folders: .png/.tif/.tiff/.jpg/.jpeg, .dm3/.dm4 (RosettaSciIO)",
    )
    measure.add_argument("--out", type=Path, required=True, help="output folder")
    measure.add_argument(
        "--model", type=Path, help="segmenter checkpoint; default: the classical baseline"
    )
    measure.add_argument(
        "--nm-per-px",
        type=float,
        metavar="X",
        help="pixel size (nm/px) for all images; default: metadata, sidecar or scale bar",
    )
    measure.add_argument(
        "--polarity",
        choices=("dark", "bright", "auto"),
        help="dark particles (bright-field TEM), bright (HAADF STEM) or guessed per image;"
        " default: the --segment settings' polarity, else dark",
    )
    _segment_argument(measure)
    measure.add_argument(
        "--samples",
        default="folder",
        metavar="folder|image|CSV",
        help="which images show one sample, pooled in samples.csv: those of one folder"
        " (default), each image alone, or as a CSV with columns image (path or file name) and"
        " sample says (unlisted images: their folder)",
    )
    measure.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier measurement in --out (its tables, masks, overlays and"
        " histograms; other files stay); default: refuse",
    )
    measure.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    measure.set_defaults(func=_measure)
