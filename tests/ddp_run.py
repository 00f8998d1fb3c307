"""Train a tiny model through nanoxtal.train.fit, as a script (for tests/test_train_ddp.py).

    python tests/ddp_run.py STAGE_DIR KEY SETTINGS_JSON

DDP (``strategy="ddp"``) starts the other processes by running this script again, which is why
the test runs it as a script rather than in the pytest process.
"""

from __future__ import annotations

import json
import sys

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nanoxtal.train import TrainerSettings, fit, seed_run


class TinyRegressor(pl.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(width, 1)

    def _loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        # Averaged over the processes, so every process selects the same best checkpoint.
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=generator)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
        self.train_set = TensorDataset(x[:48], y[:48])
        self.val_set = TensorDataset(x[48:], y[48:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)


def main() -> None:
    stage_dir, key, settings_json = sys.argv[1:4]
    settings = TrainerSettings.from_mapping(json.loads(settings_json))
    seed_run(settings)
    published = fit(
        TinyRegressor(),
        TinyData(),
        stage_dir,
        settings,
        key,
        enable_model_summary=False,
    )
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    backend = torch.distributed.get_backend() if distributed else "none"
    print(f"rank {pl.utilities.rank_zero_only.rank} of {world} ({backend}) published {published}")


if __name__ == "__main__":
    main()
