"""The TEM segmentation system: a network, three per-pixel losses, metrics, tiled inference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from nanoxtal.files import atomic_write
from nanoxtal.tem.nets import OUTPUTS, build_net, inference_copy
from nanoxtal.tem.targets import normalise_image

# Foreground probability above which a pixel counts as particle in the IoU.
FOREGROUND_THRESHOLD = 0.5


def segmentation_losses(
    maps: torch.Tensor, batch: dict[str, torch.Tensor], boundary_pos_weight: float
) -> dict[str, torch.Tensor]:
    """The three unweighted losses of a batch, over the trusted pixels only.

    Args:
        maps: Network output (B, 3, H, W): foreground logit, distance logit, boundary logit.
        batch: Targets (B, H, W) by name: ``foreground``, ``distance``, ``boundary``, and
            optionally ``valid`` (1 where the labels are trusted, 0 where they are unknown,
            e.g. unconfident pseudo-labels); without it every pixel counts.
        boundary_pos_weight: Weight of boundary pixels in their BCE: they are a few percent of
            the image, and a missed cut merges two particles.

    Returns:
        ``foreground``: BCE with logits; ``distance``: mean absolute error of
        ``sigmoid(distance logit)`` over the true foreground (the distance is undefined on the
        film, where the foreground map already decides); ``boundary``: weighted BCE. Each is
        a mean over trusted pixels.
    """
    foreground = batch["foreground"]
    valid = batch.get("valid")
    if valid is None:
        valid = torch.ones_like(foreground)
    trusted = valid.sum().clamp_min(1.0)
    inside = (foreground * valid).sum().clamp_min(1.0)
    distance_error = (torch.sigmoid(maps[:, 1]) - batch["distance"]).abs() * foreground * valid
    foreground_bce = nn.functional.binary_cross_entropy_with_logits(
        maps[:, 0], foreground, reduction="none"
    )
    boundary_bce = nn.functional.binary_cross_entropy_with_logits(
        maps[:, 2],
        batch["boundary"],
        pos_weight=maps.new_tensor(boundary_pos_weight),
        reduction="none",
    )
    return {
        "foreground": (foreground_bce * valid).sum() / trusted,
        "distance": distance_error.sum() / inside,
        "boundary": (boundary_bce * valid).sum() / trusted,
    }


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles of length ``tile`` that cover ``size`` pixels.

    The tiles are spread evenly, so neighbours share at least ``overlap`` pixels.

    Args:
        size: Length to cover (px), at least ``tile``.
        tile: Tile length (px).
        overlap: Least overlap of neighbouring tiles (px), below ``tile``.
    """
    if size <= tile:
        return [0]
    count = int(np.ceil((size - overlap) / (tile - overlap)))
    return np.linspace(0, size - tile, count).round().astype(int).tolist()


def blend_window(tile: tuple[int, int], overlap: int) -> np.ndarray:
    """Weights of one tile's pixels when overlapping tiles are averaged (tile shape, float32).

    The weight rises linearly over ``overlap`` pixels from each edge, so a tile hands over
    smoothly to its neighbour and its edge pixels, which saw the least context, count least.
    It stays above 0, so pixels only one tile covers (the image's own edges) keep their value.
    """
    ramps = []
    for length in tile:
        position = np.arange(length, dtype=np.float32)
        edge = np.minimum(position, length - 1 - position) + 1.0
        ramps.append(np.minimum(edge / (overlap + 1.0), 1.0))
    return np.outer(ramps[0], ramps[1]).astype(np.float32)


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Segmenter(pl.LightningModule):
    """Predicts foreground, per-instance distance and boundary maps of micrographs.

    Args:
        net: Network mapping images (B, 1, H, W) to maps (B, 3, H, W) (``OUTPUTS`` order) with
            a ``multiple`` attribute (height and width must be multiples of it).
        arch: How ``net`` was built (``{"name": ..., **kwargs}``), kept so a checkpoint can
            rebuild it (``load_segmenter``).
        lr: Peak AdamW learning rate (cosine decay over the run).
        weight_decay: AdamW weight decay.
        foreground_weight: Weight of the foreground BCE.
        distance_weight: Weight of the distance error.
        boundary_weight: Weight of the boundary BCE.
        boundary_pos_weight: Weight of boundary pixels within the boundary BCE.
    """

    def __init__(
        self,
        net: nn.Module,
        arch: dict[str, Any],
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        foreground_weight: float = 1.0,
        distance_weight: float = 1.0,
        boundary_weight: float = 1.0,
        boundary_pos_weight: float = 5.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        # Foreground intersection and union summed over a validation epoch.
        self._overlap = torch.zeros(2, dtype=torch.float64)
        # (key of the weights, inference copy): a tuple, so nn.Module does not register the
        # copy as a submodule.
        self._inference: tuple[tuple, nn.Module] | None = None

    def _weights_key(self) -> tuple:
        """What identifies the network's current weights: device, tensors, versions, sums.

        The tensors themselves are held (so their identities stay unique); in-place changes
        bump a tensor's version counter (optimiser steps, ``load_state_dict``), and changes
        through ``.data``, which bypass the counter, change its sum (float64; ~2 ms for the
        default U-Net).
        """
        tensors = tuple(self.net.state_dict(keep_vars=True).values())
        with torch.no_grad():
            sums = torch.stack([tensor.sum(dtype=torch.float64) for tensor in tensors])
        return (
            str(self.device),
            tensors,
            tuple(tensor._version for tensor in tensors),
            tuple(sums.tolist()),
        )

    def _inference_net(self) -> nn.Module:
        """``inference_copy`` of the network, rebuilt only when its weights have changed.

        Building the copy (deep copy, BatchNorm folding) takes ~0.06 s for the default U-Net,
        paid on every ``predict_maps`` call before; measuring a batch, or one image at three
        scales, calls it many times with the same weights (``_weights_key``).
        """
        key = self._weights_key()
        cached = self._inference
        if cached is None or not _same_key(cached[0], key):
            cached = (key, inference_copy(self.net).to(self.device))
            self._inference = cached
        return cached[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) of images (B, 1, H, W): logits, except as in ``OUTPUTS``."""
        return self.net(images)

    def _step(
        self, batch: dict[str, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self(batch["image"])
        parts = segmentation_losses(maps, batch, self.hparams.boundary_pos_weight)
        loss = (
            self.hparams.foreground_weight * parts["foreground"]
            + self.hparams.distance_weight * parts["distance"]
            + self.hparams.boundary_weight * parts["boundary"]
        )
        size = len(batch["image"])
        on_step = stage == "train"
        self.log(
            f"{stage}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=size
        )
        for name, value in parts.items():
            self.log(f"{stage}_loss_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return loss, maps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Weighted sum of the three losses."""
        return self._step(batch, "train")[0]

    def on_validation_epoch_start(self) -> None:
        """Reset the foreground overlap counts."""
        self._overlap = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation losses; accumulate the foreground intersection and union."""
        _, maps = self._step(batch, "val")
        predicted = torch.sigmoid(maps[:, 0]) > FOREGROUND_THRESHOLD
        truth = batch["foreground"] > 0.5
        self._overlap += torch.stack(
            [(predicted & truth).sum(), (predicted | truth).sum()]
        ).double()

    def on_validation_epoch_end(self) -> None:
        """Log ``val_foreground_iou``: intersection over union of the whole validation set."""
        # Pooled over pixels of all images (and devices), not averaged per batch: small
        # batches with few particles would otherwise weigh as much as crowded ones.
        totals = self.all_gather(self._overlap)
        if totals.ndim == 2:
            totals = totals.sum(0)
        iou = totals[0] / totals[1] if totals[1] > 0 else totals.new_tensor(1.0)
        self.log("val_foreground_iou", iou.float(), prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a cosine decay over the run's optimisation steps."""
        optimiser = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, int(steps)))
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def predict_maps(
        self, image: np.ndarray, tile: int = 1024, overlap: int = 32, batch_size: int = 4
    ) -> dict[str, np.ndarray]:
        """Per-pixel maps of a micrograph of any size, by tiled inference.

        The image is normalised (``normalise_image``), reflect-padded to at least one tile and
        to a multiple of the network's ``multiple``, and cut into the fewest overlapping tiles
        of at most ``tile`` px; the tiles' maps are averaged with ``blend_window`` weights.
        Inference uses ``inference_copy`` of the network (eval mode, BatchNorm folded); the
        module itself is left as it was.

        The default tile takes a 1-megapixel image in one piece: tiles of 512 px would need 9
        tiles (2.4 megapixels of work) for it, with overlaps of 32 px.

        Args:
            image: Grey-scale micrograph (height × width), any numeric dtype.
            tile: Largest tile side (px); rounded down to the network's ``multiple``.
            overlap: Least overlap of neighbouring tiles (px).
            batch_size: Tiles per forward pass.

        Returns:
            float32 maps (height × width) by name (``OUTPUTS``): ``foreground`` probability,
            ``distance`` (0–1, per-instance normalised) and ``boundary`` probability. The
            distance is trained inside particles only and means nothing on the film: mask it
            with the foreground before looking for markers.
        """
        if np.ndim(image) != 2:
            raise ValueError(f"expected a grey-scale image (H, W), got shape {np.shape(image)}")
        multiple = self.net.multiple
        tile = max(multiple, tile // multiple * multiple)
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must be within [0, {tile}), got {overlap}")
        height, width = np.shape(image)
        tile_shape = (min(tile, _ceil_to(height, multiple)), min(tile, _ceil_to(width, multiple)))
        padded_shape = (max(height, tile_shape[0]), max(width, tile_shape[1]))
        data = np.pad(
            normalise_image(image),
            [(0, padded_shape[0] - height), (0, padded_shape[1] - width)],
            mode="reflect" if min(height, width) > 1 else "edge",
        )
        corners = [
            (row, col)
            for row in tile_starts(padded_shape[0], tile_shape[0], overlap)
            for col in tile_starts(padded_shape[1], tile_shape[1], overlap)
        ]
        net = self._inference_net()
        window = blend_window(tile_shape, overlap)
        total = np.zeros((len(OUTPUTS), *padded_shape), dtype=np.float32)
        weight = np.zeros(padded_shape, dtype=np.float32)
        for first in range(0, len(corners), batch_size):
            chunk = corners[first : first + batch_size]
            tiles = np.stack([data[r : r + tile_shape[0], c : c + tile_shape[1]] for r, c in chunk])
            inputs = torch.from_numpy(tiles[:, None]).to(self.device)
            maps = torch.sigmoid(net(inputs.contiguous(memory_format=torch.channels_last)))
            for (r, c), tile_maps in zip(chunk, maps.float().cpu().numpy(), strict=True):
                total[:, r : r + tile_shape[0], c : c + tile_shape[1]] += tile_maps * window
                weight[r : r + tile_shape[0], c : c + tile_shape[1]] += window
        total /= weight
        return {name: total[i, :height, :width] for i, name in enumerate(OUTPUTS)}


def _same_key(old: tuple, new: tuple) -> bool:
    """Whether two ``Segmenter._weights_key`` keys name the same weights (tensors by identity)."""
    device, tensors, versions, sums = old
    return (
        device == new[0]
        and len(tensors) == len(new[1])
        and all(a is b for a, b in zip(tensors, new[1], strict=True))
        and versions == new[2]
        and sums == new[3]
    )


def load_segmenter(checkpoint: Path | str, map_location: str = "cpu") -> Segmenter:
    """Load a trained segmenter in eval mode (network rebuilt from the checkpoint's ``arch``)."""
    state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    arch = dict(state["hyper_parameters"]["arch"])
    net = build_net(arch.pop("name"), **arch)
    model = Segmenter.load_from_checkpoint(checkpoint, net=net, map_location=map_location)
    # Measurements name the file their segmenter came from (summary.csv's ``segmenter``).
    model.source_checkpoint = Path(checkpoint)
    return model.eval()


# Checkpoint entries a weight average keeps: what loading the model needs, not training state.
SOUP_KEPT = ("hyper_parameters", "hparams_name", "pytorch-lightning_version")


def average_segmenters(checkpoints: Sequence[Path | str], out: Path | str) -> Path:
    """Write the uniform weight average ("model soup") of segmenters trained from one start.

    Networks fine-tuned from the same weights with different seeds stay in one basin of the
    loss, where their average is often better than each of them and steadier than any one
    seed (Wortsman et al., "Model soups", ICML 2022), at the inference cost of one network.
    Floating-point parameters and BatchNorm statistics are averaged; integer buffers
    (``num_batches_tracked``) are the first checkpoint's.

    Args:
        checkpoints: Segmenter checkpoints of one architecture (one gives its own weights,
            without the training state).
        out: The averaged checkpoint, written atomically; it records its sources
            (``soup``).

    Returns:
        ``out``.

    Raises:
        ValueError: No checkpoint, or one whose architecture or weights differ
            from the first's (names the file).
    """
    if not checkpoints:
        raise ValueError("a weight average needs at least one checkpoint")
    first = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    arch, names = first["hyper_parameters"]["arch"], first["state_dict"].keys()
    states = [first["state_dict"]]
    for path in checkpoints[1:]:
        other = torch.load(path, map_location="cpu", weights_only=True)
        if other["hyper_parameters"]["arch"] != arch or other["state_dict"].keys() != names:
            raise ValueError(f"{path}: another network than {checkpoints[0]} ({arch})")
        states.append(other["state_dict"])
    averaged = {
        name: torch.stack([state[name] for state in states]).mean(0)
        if value.is_floating_point()
        else value
        for name, value in first["state_dict"].items()
    }
    soup = {key: first[key] for key in SOUP_KEPT if key in first}
    soup |= {"state_dict": averaged, "soup": [str(path) for path in checkpoints]}
    with atomic_write(out) as partial:
        torch.save(soup, partial)
    return Path(out)
