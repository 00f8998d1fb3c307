"""``nanoxtal tem ...``: synthetic micrographs and the segmentation network.

Heavy imports happen inside the commands, so ``nanoxtal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nanoxtal.arguments import json_object
from nanoxtal.files import atomic_write

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
    )
    print(f"trained segmenter: {published}")
    return EXIT_OK


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
    train.set_defaults(func=_train)
