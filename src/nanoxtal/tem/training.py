"""Train the TEM segmenter: synthetic pre-training, then self-training and fine-tuning.

One routine serves the three stages of the TEM training plan (ARCHITECTURE §2):

1. pre-training on micrographs simulated on the fly (no bank, random initial weights);
2. self-training: the pre-trained model (teacher) labels unlabelled real micrographs
   (``nanoxtal.tem.bank.pseudo_bank``), and a student starts from the teacher's weights and
   trains on synthetic items mixed with the confident pseudo-labels;
3. fine-tuning on the training part of the labelled real sets (a labelled bank), which can be
   given together with the pseudo-labelled bank in one run.

Validation stays on fixed synthetic images: the real labelled images are either training
images or evaluation images, and the evaluation images are never looked at while training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import EMAWeightAveraging

from nanoxtal.arguments import settings_from
from nanoxtal.data.registry import sha256_file
from nanoxtal.tem.bank import load_bank, merge_banks
from nanoxtal.tem.datamodule import TemDataModule
from nanoxtal.tem.module import Segmenter
from nanoxtal.tem.nets import build_net
from nanoxtal.train import TrainerSettings, fit, run_key, seed_run


@dataclass(frozen=True)
class TrainSettings:
    """What a segmenter training run does (the ``tem.train`` config block).

    Attributes:
        arch: Network name (``nanoxtal.tem.nets.ARCHITECTURES``).
        arch_kwargs: Keyword arguments of the network.
        crop_px: Side of the training and validation squares (px).
        image_px: Side of the micrographs the squares are cut from (px); ``None``: crop_px.
        train_images: Freshly simulated training images per epoch.
        val_images: Validation images (fixed).
        batch_size: Images per batch.
        lr: Peak learning rate (AdamW, cosine decay).
        weight_decay: AdamW weight decay.
        foreground_weight: Weight of the foreground loss.
        distance_weight: Weight of the distance loss.
        boundary_weight: Weight of the boundary loss.
        boundary_pos_weight: Weight of boundary pixels within the boundary loss.
        num_workers: DataLoader workers (simulation runs in them).
        micrograph: ``MicrographSettings`` overrides.
        ranges: Micrograph settings drawn uniformly within [low, high] per image.
        bank_share: Expected share of training items cut from the real image banks (when
            banks are given).
        scale_range: Resampling factors of real crops, [low, high].
        ema_decay: Decay of an exponential moving average of the weights, updated after every
            step, that is validated and published instead of the raw weights (Polyak and
            Juditsky, SIAM J. Control Optim. 30, 838 (1992); Lightning's
            ``EMAWeightAveraging``); 0 for none. With decay d the average spans about
            1/(1 − d) steps.
    """

    arch: str = "unet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_px: int = 256
    image_px: int | None = None
    train_images: int = 512
    val_images: int = 64
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    foreground_weight: float = 1.0
    distance_weight: float = 1.0
    boundary_weight: float = 1.0
    boundary_pos_weight: float = 5.0
    num_workers: int = 0
    micrograph: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)
    bank_share: float = 0.5
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.4])
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be within [0, 1), got {self.ema_decay}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Settings from a mapping (e.g. JSON), defaults for what it leaves out.

        Raises:
            ValueError: A key that is not a setting.
        """
        return settings_from(cls, values, "TEM training")


def load_initial_weights(net: torch.nn.Module, checkpoint: Path | str) -> None:
    """Copy a segmenter checkpoint's network weights into ``net`` (same architecture).

    Raises:
        ValueError: The checkpoint's network does not fit ``net`` (names the file).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {key.removeprefix("net."): value for key, value in state.items()}
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint}: weights do not fit the network: {error}") from error


def train_segmenter(
    out_dir: Path | str,
    settings: TrainSettings,
    trainer: TrainerSettings,
    banks: Sequence[Path | str] = (),
    init_from: Path | str | None = None,
) -> Path:
    """Train a segmenter on synthetic micrographs, optionally mixed with real image banks.

    Args:
        out_dir: Stage folder, e.g. ``results/tem/pretrain``: logs, checkpoints, and the
            published model ``models/best.ckpt``.
        settings: What the run does.
        trainer: Trainer settings (its seed also fixes the validation images).
        banks: Real image banks (``nanoxtal.tem.bank.save_bank`` files) to mix in.
        init_from: A segmenter checkpoint whose weights the network starts from (the teacher
            of self-training, or the pre-trained model before fine-tuning).

    Returns:
        The published best checkpoint, ``<out_dir>/models/best.ckpt``.
    """
    seed_run(trainer)
    bank = merge_banks(load_bank(path) for path in banks) if banks else None
    data = TemDataModule(
        micrograph=settings.micrograph,
        ranges=settings.ranges,
        crop_px=settings.crop_px,
        image_px=settings.image_px,
        train_images=settings.train_images,
        val_images=settings.val_images,
        batch_size=settings.batch_size,
        seed=trainer.seed,
        num_workers=settings.num_workers,
        bank=bank,
        bank_share=settings.bank_share,
        scale_range=tuple(settings.scale_range),
    )
    net = build_net(settings.arch, **settings.arch_kwargs)
    if settings.crop_px % net.multiple:
        raise ValueError(f"crop_px ({settings.crop_px}) must be a multiple of {net.multiple}")
    if init_from is not None:
        load_initial_weights(net, init_from)
    module = Segmenter(
        net,
        {"name": settings.arch, **settings.arch_kwargs},
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        foreground_weight=settings.foreground_weight,
        distance_weight=settings.distance_weight,
        boundary_weight=settings.boundary_weight,
        boundary_pos_weight=settings.boundary_pos_weight,
    )
    inputs = [sha256_file(path) for path in banks]
    if init_from is not None:
        inputs.append(sha256_file(init_from))
    key = run_key(asdict(settings), asdict(trainer), inputs)
    callbacks = [EMAWeightAveraging(decay=settings.ema_decay)] if settings.ema_decay else []
    return fit(module, data, out_dir, trainer, key, callbacks)
