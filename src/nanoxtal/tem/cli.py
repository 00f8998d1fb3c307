"""``nanoxtal tem ...``: argument parsing and file writing around ``nanoxtal.tem``'s functions.

Here the verbs users run on their micrographs (``simulate``, ``measure``); the workflow's verbs
that build and score the segmenter are in ``nanoxtal.tem.model_cli``. Heavy imports happen
inside the commands, so ``nanoxtal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanoxtal.arguments import json_object
from nanoxtal.tem.model_cli import add_model_commands

EXIT_OK = 0


def _simulate(args: argparse.Namespace) -> int:
    from nanoxtal.tem.simulate import MicrographSettings, write_batch

    overrides = dict(args.settings)
    if args.size is not None:
        overrides |= {"width_px": args.size, "height_px": args.size}
    if args.bits is not None:
        overrides["bits"] = args.bits
    settings = MicrographSettings.from_mapping(overrides)
    summary = write_batch(
        settings, args.count, args.seed, args.out, args.start, args.prefix, not args.no_progress
    )
    print(f"{args.count} micrographs ({summary['particles']} particles) written to {args.out}")
    return EXIT_OK


def _measure(args: argparse.Namespace) -> int:
    from nanoxtal.tem.api import measure_images, resolve_segmenter
    from nanoxtal.tem.batch import ImageResult, MeasurementFolder

    folder = MeasurementFolder(args.out, args.overwrite)
    network, segmenter = resolve_segmenter("classical" if args.classical else args.model)
    default = network is not None and args.model is None
    print(f"segmenter: {segmenter}{' (published by the workflow)' if default else ''}")

    def write(result: ImageResult) -> None:
        if result.error:
            print(f"nanoxtal: error: {result.error}", file=sys.stderr)
        if result.overridden:
            warning = f"{result.row['image']}: --nm-per-px {result.overridden}"
            print(f"nanoxtal: warning: {warning}", file=sys.stderr)
        folder.write_image(result)

    segment = args.segment | ({"polarity": args.polarity} if args.polarity else {})
    measurement = measure_images(
        args.images, network or "classical", args.nm_per_px, args.samples, segment,
        progress=not args.no_progress, on_image=write,
    )  # fmt: skip
    for message in measurement.problems:
        print(f"nanoxtal: error: {message}", file=sys.stderr)
    stale = folder.finish(measurement)
    if stale:
        print(f"removed {len(stale)} files of the earlier measurement that this batch did not make")
    failed, images = measurement.failed, len(measurement.summary)
    print(
        f"{images - (failed - len(measurement.problems))} images measured"
        f" ({len(measurement.particles)} particles) into {args.out}; {failed} failed"
    )
    return 1 if failed else EXIT_OK


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Register ``nanoxtal tem`` and its verbs."""
    tem = stages.add_parser("tem", help="transmission electron micrographs: synthetic images")
    verbs = tem.add_subparsers(dest="verb", required=True, metavar="VERB")
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    segment = argparse.ArgumentParser(add_help=False)
    segment.add_argument(
        "--segment", type=json_object, default={},
        help="JSON object of SegmentSettings fields (nanoxtal.tem.segmentation), e.g. the"
        " tem.segment config block",
    )  # fmt: skip

    simulate = verbs.add_parser(
        "simulate", parents=[progress], help="synthetic bright-field micrographs with truth"
    )
    simulate.add_argument("--out", type=Path, required=True, help="folder for the images")
    simulate.add_argument("--count", type=int, required=True, help="images to simulate")
    simulate.add_argument("--seed", type=int, default=42)
    simulate.add_argument("--start", type=int, default=0, help="index of the first image")
    simulate.add_argument("--size", type=int, metavar="PX", help="square image side, px")
    simulate.add_argument("--bits", type=int, choices=(8, 16), help="bit depth (default 8)")
    simulate.add_argument(
        "--settings", type=json_object, default={},
        help="JSON object of MicrographSettings fields, e.g. '{\"nm_per_px\": 0.25}'",
    )  # fmt: skip
    simulate.add_argument("--prefix", default="synthetic_", help="file name prefix")
    simulate.set_defaults(func=_simulate)

    add_model_commands(verbs, segment, progress)

    measure = verbs.add_parser(
        "measure", parents=[segment, progress], help="measure particles in micrographs"
    )
    measure.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE",
        help="image files or folders: .png/.tif/.tiff/.jpg/.jpeg, .dm3/.dm4 (RosettaSciIO)",
    )  # fmt: skip
    measure.add_argument("--out", type=Path, required=True, help="output folder")
    model = measure.add_mutually_exclusive_group()
    model.add_argument(
        "--model", type=Path,
        help="segmenter checkpoint or results folder; default: the workflow's published"
        " results/tem/models/best.ckpt when it exists, else the classical baseline",
    )  # fmt: skip
    model.add_argument(
        "--classical", action="store_true",
        help="use the classical baseline (threshold + distance watershed), not a network",
    )  # fmt: skip
    measure.add_argument(
        "--nm-per-px", type=float, metavar="X",
        help="pixel size (nm/px) for all images; default: metadata, sidecar or scale bar",
    )  # fmt: skip
    measure.add_argument(
        "--polarity", choices=("dark", "bright", "auto"),
        help="dark particles (bright-field TEM), bright (HAADF STEM) or guessed per image;"
        " default: the --segment settings' polarity, else dark",
    )  # fmt: skip
    measure.add_argument(
        "--samples", default="folder", metavar="folder|image|CSV",
        help="which images show one sample, pooled in samples.csv: those of one folder"
        " (default), each image alone, or as a CSV with columns image (path or file name) and"
        " sample says (unlisted images: their folder)",
    )  # fmt: skip
    measure.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier measurement in --out (its tables, masks, overlays and"
        " histograms; other files stay); default: refuse",
    )  # fmt: skip
    measure.set_defaults(func=_measure)
