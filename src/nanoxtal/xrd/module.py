"""The XRD training system: a network, two classification losses, metrics, optimiser."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from nanoxtal.files import atomic_write
from nanoxtal.xrd.nets import N_CRYSTAL_SYSTEMS, N_SPACE_GROUPS, build_net


def class_weights(labels: torch.Tensor, classes: int, power: float = 0.5) -> torch.Tensor:
    """Loss weights ∝ frequency^-power (classes never seen get the largest weight), mean 1.

    Inverse square-root frequency (power 0.5) counters the imbalance of space groups (a few
    hold most structures) without letting single examples dominate.
    """
    counts = torch.bincount(labels, minlength=classes).double().clamp_min(1.0)
    weights = counts**-power
    return (weights / weights.mean()).float()


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """Class-weighted negative log-likelihood, plus *unweighted* label smoothing.

    ``nn.functional.cross_entropy(weight=..., label_smoothing=...)`` weights the smoothing term
    by class as well, which with imbalance weights pushes probability onto the rarest (and
    never seen) classes; here the weights apply to the true class only.
    """
    nll = nn.functional.cross_entropy(logits, target, weights)
    if not smoothing:
        return nll
    uniform = -torch.log_softmax(logits, dim=1).mean(dim=1).mean()
    return (1.0 - smoothing) * nll + smoothing * uniform


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The softmax temperature minimising the negative log-likelihood of held-out labels.

    Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
    divides the logits by one scalar T > 0: the ranking, hence accuracy, is unchanged while the
    probabilities become calibrated. T is found by a bounded 1-D search on log T (the NLL is
    smooth and unimodal in it), which needs no learning rate.

    Args:
        logits: Uncalibrated logits (N, classes).
        labels: True class indices (N,).

    Returns:
        T, within [0.05, 20].
    """
    logits, labels = logits.detach().double(), labels.detach().long()

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / np.exp(log_t), labels))

    # Golden-section search over log T in [log 0.05, log 20].
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    f_a, f_b = nll(a), nll(b)
    for _ in range(60):
        if f_a < f_b:
            high, b, f_b = b, a, f_a
            a = high - ratio * (high - low)
            f_a = nll(a)
        else:
            low, a, f_a = a, b, f_b
            b = low + ratio * (high - low)
            f_b = nll(b)
    return float(np.exp((low + high) / 2.0))


class XrdClassifier(pl.LightningModule):
    """Predicts the crystal system (7) and space group (230) of powder patterns.

    Args:
        net: Network returning ``(crystal_system_logits, space_group_logits)``.
        arch: How ``net`` was built (``{"name": ..., **kwargs}``), kept so a checkpoint can
            rebuild it (``load_classifier``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        label_smoothing: Label smoothing of both cross-entropies.
        space_group_weight: Weight of the space-group loss against the crystal-system loss.
        crystal_system_weights: Per-class loss weights (7,), or ``None``.
        space_group_weights: Per-class loss weights (230,), or ``None``.
    """

    def __init__(
        self,
        net: nn.Module,
        arch: dict[str, Any],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.05,
        space_group_weight: float = 1.0,
        crystal_system_weights: torch.Tensor | None = None,
        space_group_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "crystal_system_weights", "space_group_weights"])
        self.net = net
        cs = (
            torch.ones(N_CRYSTAL_SYSTEMS)
            if crystal_system_weights is None
            else crystal_system_weights
        )
        sg = torch.ones(N_SPACE_GROUPS) if space_group_weights is None else space_group_weights
        self.register_buffer("crystal_system_weights", cs.float())
        self.register_buffer("space_group_weights", sg.float())
        # Softmax temperatures of the two heads (``store_calibration``); 1 until calibrated.
        self.register_buffer("temperature", torch.ones(2))
        # Below this calibrated space-group probability a prediction is marked abstained
        # (``store_calibration``); 0 (never) until chosen.
        self.abstain_below = 0.0
        # The same for this model's answers moved by a pattern library, reference phases or
        # both (``PIPELINES``), on their final space-group probability; absent until chosen.
        self.pipeline_abstain_below: dict[str, float] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the abstention thresholds with the weights."""
        checkpoint["abstain_below"] = float(self.abstain_below)
        checkpoint["pipeline_abstain_below"] = dict(self.pipeline_abstain_below)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the abstention thresholds (none for checkpoints written before them)."""
        self.abstain_below = float(checkpoint.get("abstain_below", 0.0))
        self.pipeline_abstain_below = dict(checkpoint.get("pipeline_abstain_below", {}))

    def forward(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for patterns (B, points)."""
        return self.net(patterns)

    @torch.no_grad()
    def embed(self, patterns: torch.Tensor) -> torch.Tensor:
        """The network's representation of patterns (B, points) before its heads (B, hidden)."""
        return self.net.embed(patterns)

    def fingerprint(self) -> str:
        """A digest of the network's weights: which model a library's embeddings came from.

        Temperatures live outside the network, so calibrating does not change it.
        """
        digest = hashlib.sha256()
        for name, tensor in self.net.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def predict_proba(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated probabilities of crystal systems (B, 7) and space groups (B, 230)."""
        cs_logits, sg_logits = self(patterns)
        return (
            torch.softmax(cs_logits / self.temperature[0], 1),
            torch.softmax(sg_logits / self.temperature[1], 1),
        )

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        cs_logits, sg_logits = self(batch["pattern"])
        smoothing = self.hparams.label_smoothing
        cs_loss = smoothed_cross_entropy(
            cs_logits, batch["crystal_system"], self.crystal_system_weights, smoothing
        )
        sg_loss = smoothed_cross_entropy(
            sg_logits, batch["space_group"] - 1, self.space_group_weights, smoothing
        )
        loss = cs_loss + self.hparams.space_group_weight * sg_loss
        size = len(batch["pattern"])
        cs_acc = (cs_logits.argmax(1) == batch["crystal_system"]).float().mean()
        sg_acc = (sg_logits.argmax(1) + 1 == batch["space_group"]).float().mean()
        on_step = stage == "train"
        self.log(
            f"{stage}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=size
        )
        self.log(
            f"{stage}_acc_crystal_system",
            cs_acc,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=size,
        )
        self.log(
            f"{stage}_acc_space_group",
            sg_acc,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=size,
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Weighted cross-entropies of both heads."""
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation loss and accuracies."""
        self._step(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a cosine decay over the run."""
        optimiser = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, int(steps)))
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def load_classifier(checkpoint: Path | str, map_location: str = "cpu") -> XrdClassifier:
    """Load a trained classifier; the network is rebuilt from the checkpoint's ``arch``."""
    state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    arch = dict(state["hyper_parameters"]["arch"])
    net = build_net(arch.pop("name"), **arch)
    model = XrdClassifier.load_from_checkpoint(checkpoint, net=net, map_location=map_location)
    return model.eval()


@torch.no_grad()
def run_batched(
    model: XrdClassifier,
    method: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
    patterns: np.ndarray | torch.Tensor,
    batch_size: int = 256,
) -> tuple[torch.Tensor, ...]:
    """A method of ``model`` (e.g. ``model``, ``model.embed``) over patterns (N, points).

    The model is put in eval mode; batches go to its device, outputs come back to the CPU and
    are concatenated per output.
    """
    model.eval()
    device = next(model.parameters()).device
    patterns = torch.as_tensor(patterns, dtype=torch.float32)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(patterns), batch_size):
        out = method(patterns[start : start + batch_size].to(device))
        parts.append(tuple(t.cpu() for t in (out if isinstance(out, tuple) else (out,))))
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def embed_patterns(model: XrdClassifier, patterns: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``model.embed`` of patterns (N, points): (N, hidden)."""
    return run_batched(model, model.embed, patterns, batch_size)[0].numpy()


# What may move the model's answers in prediction, named as ``pipeline_abstain_below`` keys.
PIPELINES = ("library", "references", "library+references")


def pipeline_name(library: bool, references: bool) -> str | None:
    """``PIPELINES`` name of a prediction with a library and/or references; None for neither."""
    if library and references:
        return "library+references"
    if library:
        return "library"
    return "references" if references else None


def store_calibration(
    checkpoint: Path | str,
    temperatures: tuple[float, float],
    abstain_below: float | None = None,
    pipeline_abstain_below: Mapping[str, float] | None = None,
) -> None:
    """Write the two heads' temperatures (and the abstention thresholds) into a classifier.

    The file is replaced atomically; ``predict_proba`` of the reloaded model uses the
    temperatures, and prediction marks answers below ``abstain_below`` (a space-group
    probability) abstained by default, or, with a library, reference phases or both
    (``PIPELINES``), answers whose final space-group probability is below that pipeline's
    ``pipeline_abstain_below``.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["state_dict"]["temperature"] = torch.tensor(temperatures, dtype=torch.float32)
    if abstain_below is not None:
        state["abstain_below"] = float(abstain_below)
    if pipeline_abstain_below is not None:
        state["pipeline_abstain_below"] = {k: float(v) for k, v in pipeline_abstain_below.items()}
    with atomic_write(checkpoint) as partial:
        torch.save(state, partial)
