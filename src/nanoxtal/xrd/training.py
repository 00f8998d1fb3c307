"""Train the XRD classifiers on rendered synthetic patterns, then fine-tune on measured ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoxtal.data.registry import sha256_file
from nanoxtal.files import atomic_write
from nanoxtal.train import TrainerSettings, fit, run_key, seed_run
from nanoxtal.xrd.datamodule import MeasuredDataModule, XrdDataModule
from nanoxtal.xrd.io import read_patterns, to_grid
from nanoxtal.xrd.module import (
    XrdClassifier,
    calibrate_checkpoint,
    class_weights,
    load_classifier,
)
from nanoxtal.xrd.nets import N_CRYSTAL_SYSTEMS, N_SPACE_GROUPS, build_net


@dataclass(frozen=True)
class TrainSettings:
    """What a training run does (the ``xrd.train`` config block, per architecture).

    Attributes:
        arch: Network name (``nanoxtal.xrd.nets.ARCHITECTURES``).
        arch_kwargs: Keyword arguments of the network.
        batch_size: Patterns per batch.
        train_per_epoch: Training structures per epoch (``None``: the whole train split).
        val_size: Validation structures (``None``: the whole val split).
        lr: Peak learning rate (AdamW, cosine decay).
        weight_decay: AdamW weight decay.
        label_smoothing: Label smoothing.
        class_weight_power: Loss weights ∝ class frequency^-power against imbalance (0: off).
            On the val split after 3 × 2,560 rendered patterns, 0.5 gave 35.5 % / 13.1 %
            (crystal system / space group) against 35.9 % / 16.0 % without: off by default.
        min_intensity: Peaks weaker than this (of 100) are not rendered.
        num_workers: DataLoader workers.
        augmentation: Overrides of ``Augmentation`` for training renders.
    """

    arch: str = "xrdnet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    train_per_epoch: int | None = 8192
    val_size: int | None = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    class_weight_power: float = 0.0
    min_intensity: float = 0.05
    num_workers: int = 0
    augmentation: dict[str, Any] = field(default_factory=dict)


def _fingerprint(*paths: Path | str) -> list[str]:
    return [sha256_file(p) for p in paths]


def train_classifier(
    structures: Path | str | Sequence[Path | str],
    peaks: Path | str,
    stage_dir: Path | str,
    settings: TrainSettings,
    trainer: TrainerSettings,
) -> Path:
    """Train on rendered stick patterns of the train split; validate on the val split.

    Args:
        structures: Structure table(s): the database's and, optionally, random crystals.
        peaks: Peak table of all of them.
        stage_dir: Stage folder (``results/xrd/<arch>``).
        settings: What the run does.
        trainer: Trainer settings.

    Returns:
        The published best checkpoint, ``<stage_dir>/models/best.ckpt``.
    """
    paths = [str(structures)] if isinstance(structures, str | Path) else list(map(str, structures))
    seed_run(trainer)
    data = XrdDataModule(
        paths,
        str(peaks),
        settings.batch_size,
        settings.train_per_epoch,
        settings.val_size,
        settings.augmentation,
        None,
        trainer.seed,
        settings.min_intensity,
        settings.num_workers,
    )
    data.setup()
    train = data.subset("train")
    net = build_net(settings.arch, **settings.arch_kwargs)
    module = XrdClassifier(
        net,
        {"name": settings.arch, **settings.arch_kwargs},
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        label_smoothing=settings.label_smoothing,
        crystal_system_weights=class_weights(
            torch.as_tensor(train.crystal_system), N_CRYSTAL_SYSTEMS, settings.class_weight_power
        ),
        space_group_weights=class_weights(
            torch.as_tensor(train.space_group - 1), N_SPACE_GROUPS, settings.class_weight_power
        ),
    )
    key = run_key(asdict(settings), asdict(trainer), _fingerprint(*paths, peaks))
    return fit(module, data, stage_dir, trainer, key)


def rruff_split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the measured set used for fine-tuning, and the rows held out for evaluation.

    Args:
        count: Number of measured patterns.
        fraction: Share used for fine-tuning (the reference "soups" 50 %).
        seed: Seed of the permutation.
    """
    order = np.random.default_rng(seed).permutation(count)
    cut = round(fraction * count)
    return np.sort(order[:cut]), np.sort(order[cut:])


def measured_set(path: Path | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patterns of an ``.npz`` archive on the model grid, with their two labels."""
    patterns = read_patterns(path)
    grid = np.stack([to_grid(p)[0] for p in patterns])
    crystal_system = np.array([p.labels["crystal_system"] for p in patterns])
    space_group = np.array([p.labels["space_group"] for p in patterns])
    return grid, crystal_system, space_group


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning on measured patterns (the ``xrd.finetune`` config block).

    Attributes:
        fraction: Share of the measured set used for fine-tuning; the rest is held out.
        validation_share: Share of the fine-tune part that validates (early model choice).
        lr: Learning rate.
        batch_size: Patterns per batch.
    """

    fraction: float = 0.5
    validation_share: float = 0.1
    lr: float = 3e-4
    batch_size: int = 32


def finetune_classifier(
    checkpoint: Path | str,
    measured: Path | str,
    stage_dir: Path | str,
    settings: FinetuneSettings,
    trainer: TrainerSettings,
) -> Path:
    """Fine-tune a trained classifier on the fine-tune part of a labelled measured set.

    The held-out part (``rruff_split``) is never seen: validation comes from a further split of
    the fine-tune part, which also calibrates the probabilities (temperature scaling, stored in
    the published checkpoint and ``<stage_dir>/calibration.json``). The split is written to
    ``<stage_dir>/split.json``.

    Returns:
        The published fine-tuned checkpoint, ``<stage_dir>/models/best.ckpt``.
    """
    seed_run(trainer)
    patterns, crystal_system, space_group = measured_set(measured)
    tune_rows, held_out = rruff_split(len(patterns), settings.fraction, trainer.seed)
    validation = np.random.default_rng(trainer.seed + 1).permutation(len(tune_rows))
    n_val = max(1, round(settings.validation_share * len(tune_rows)))
    train_rows = np.sort(validation[n_val:])
    data = MeasuredDataModule(
        patterns[tune_rows],
        crystal_system[tune_rows],
        space_group[tune_rows],
        train_rows,
        settings.batch_size,
        trainer.seed,
    )
    module = load_classifier(checkpoint)
    module.hparams.lr = settings.lr
    module.train()
    split = {
        "measured": str(measured),
        "seed": trainer.seed,
        "fraction": settings.fraction,
        "finetune_rows": tune_rows.tolist(),
        "held_out_rows": held_out.tolist(),
    }
    with atomic_write(Path(stage_dir) / "split.json") as partial:
        partial.write_text(json.dumps(split) + "\n")
    key = run_key(asdict(settings), asdict(trainer), _fingerprint(checkpoint, measured))
    published = fit(module, data, stage_dir, trainer, key)
    # Calibrate on the fine-tune validation rows: measured, never trained on, not held out.
    calibration_rows = tune_rows[np.sort(validation[:n_val])]
    temperatures = calibrate_checkpoint(
        published,
        torch.as_tensor(patterns[calibration_rows], dtype=torch.float32),
        torch.as_tensor(crystal_system[calibration_rows]),
        torch.as_tensor(space_group[calibration_rows]),
    )
    calibration = {
        "method": "temperature scaling (Guo et al., ICML 2017)",
        "rows": calibration_rows.tolist(),
        "temperature_crystal_system": temperatures[0],
        "temperature_space_group": temperatures[1],
    }
    with atomic_write(Path(stage_dir) / "calibration.json") as partial:
        partial.write_text(json.dumps(calibration, indent=2) + "\n")
    return published
