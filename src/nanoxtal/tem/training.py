"""Train the TEM segmenter on synthetic micrographs simulated on the fly (pre-training)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanoxtal.arguments import settings_from
from nanoxtal.tem.datamodule import SyntheticTemDataModule
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

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Settings from a mapping (e.g. JSON), defaults for what it leaves out.

        Raises:
            ValueError: A key that is not a setting.
        """
        return settings_from(cls, values, "TEM training")


def train_segmenter(out_dir: Path | str, settings: TrainSettings, trainer: TrainerSettings) -> Path:
    """Train a segmenter on synthetic micrographs; validate on fixed synthetic ones.

    Args:
        out_dir: Stage folder, e.g. ``results/tem/synthetic``: logs, checkpoints, and the
            published model ``models/best.ckpt``.
        settings: What the run does.
        trainer: Trainer settings (its seed also fixes the validation images).

    Returns:
        The published best checkpoint, ``<out_dir>/models/best.ckpt``.
    """
    seed_run(trainer)
    data = SyntheticTemDataModule(
        micrograph=settings.micrograph,
        ranges=settings.ranges,
        crop_px=settings.crop_px,
        image_px=settings.image_px,
        train_images=settings.train_images,
        val_images=settings.val_images,
        batch_size=settings.batch_size,
        seed=trainer.seed,
        num_workers=settings.num_workers,
    )
    net = build_net(settings.arch, **settings.arch_kwargs)
    if settings.crop_px % net.multiple:
        raise ValueError(f"crop_px ({settings.crop_px}) must be a multiple of {net.multiple}")
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
    key = run_key(asdict(settings), asdict(trainer))
    return fit(module, data, out_dir, trainer, key)
