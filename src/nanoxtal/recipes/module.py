"""The recipe training system: size regression and shape classification, metrics, optimiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from nanoxtal.recipes.nets import build_net


class RecipeModel(pl.LightningModule):
    """Predicts the mean size (nm) and the shape class of a recipe's nanocrystals.

    The network predicts the standardised log size z = (log(size_nm) - ``log_size_mean``) /
    ``log_size_std``; the size loss is the smooth L1 (Huber, β = 1) of z: log because size
    errors are relative, Huber because the literature sizes hold outliers (typos, unit slips,
    bimodal products) that a squared loss would chase.

    Args:
        net: Network ``(tokens, roles, padding, context) -> (z, shape_logits)``.
        arch: How ``net`` was built (``{"name": ..., **kwargs}``), kept so a checkpoint can
            rebuild it (``load_recipe_model``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        shape_weight: Weight of the shape cross-entropy against the size loss.
        log_size_mean: Mean of log(size_nm) over the training recipes.
        log_size_std: Standard deviation of log(size_nm) over the training recipes.
        tokenizer: ``RecipeTokenizer.state()`` of the tokenizer fitted with this model, kept in
            the checkpoint so new recipes are tokenised exactly as the training ones.
    """

    def __init__(
        self,
        net: nn.Module,
        arch: dict[str, Any],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        shape_weight: float = 1.0,
        log_size_mean: float = 0.0,
        log_size_std: float = 1.0,
        tokenizer: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not log_size_std > 0:
            raise ValueError(f"log_size_std must be positive, got {log_size_std}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    def forward(
        self,
        tokens: torch.Tensor,
        roles: torch.Tensor,
        padding: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised log size (B,) and shape logits (B, classes)."""
        return self.net(tokens, roles, padding, context)

    def size_nm(self, z: torch.Tensor) -> torch.Tensor:
        """Sizes in nm from standardised log sizes."""
        return torch.exp(z * self.hparams.log_size_std + self.hparams.log_size_mean)

    def standardised_log_size(self, size_nm: torch.Tensor) -> torch.Tensor:
        """Standardised log sizes from sizes in nm (the regression target)."""
        return (torch.log(size_nm) - self.hparams.log_size_mean) / self.hparams.log_size_std

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms and metrics of a labelled batch.

        Returns:
            ``loss`` (the optimised total), ``size_loss``, ``shape_loss``, ``size_mae_nm``,
            ``shape_accuracy``.
        """
        z, logits = self(batch["tokens"], batch["roles"], batch["padding"], batch["context"])
        target = self.standardised_log_size(batch["size_nm"])
        size_loss = nn.functional.smooth_l1_loss(z, target)
        shape_loss = nn.functional.cross_entropy(logits, batch["shape_class"])
        return {
            "loss": size_loss + self.hparams.shape_weight * shape_loss,
            "size_loss": size_loss,
            "shape_loss": shape_loss,
            "size_mae_nm": (self.size_nm(z) - batch["size_nm"]).abs().mean(),
            "shape_accuracy": (logits.argmax(1) == batch["shape_class"]).float().mean(),
        }

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        terms = self.losses(batch)
        on_step = stage == "train"
        size = len(batch["tokens"])
        for name, value in terms.items():
            self.log(
                f"{stage}_{name}",
                value,
                prog_bar=name in ("loss", "size_mae_nm"),
                on_step=on_step and name == "loss",
                on_epoch=True,
                batch_size=size,
            )
        return terms["loss"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Size loss plus weighted shape cross-entropy."""
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation loss, size MAE (nm) and shape accuracy."""
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Test loss, size MAE (nm) and shape accuracy."""
        self._step(batch, "test")

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        """Sizes in nm (B,) and shape probabilities (B, classes) of a batch."""
        z, logits = self(batch["tokens"], batch["roles"], batch["padding"], batch["context"])
        return {"size_nm": self.size_nm(z), "shape_probabilities": torch.softmax(logits, dim=1)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW (a constant rate: the best epoch is chosen on validation loss)."""
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


def log_size_statistics(size_nm: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of log sizes (std 1 when the sizes do not vary)."""
    logs = np.log(np.asarray(size_nm, dtype=float))
    std = float(logs.std())
    return float(logs.mean()), std if std > 1e-12 and np.isfinite(std) else 1.0


def load_recipe_model(checkpoint: Path | str, map_location: str = "cpu") -> RecipeModel:
    """Load a trained model in eval mode; the network is rebuilt from the checkpoint's ``arch``.

    The fitted tokenizer's statistics are in ``model.hparams.tokenizer``
    (``RecipeTokenizer.from_state``).
    """
    state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    net = build_net(dict(state["hyper_parameters"]["arch"]))
    model = RecipeModel.load_from_checkpoint(checkpoint, net=net, map_location=map_location)
    return model.eval()
