from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch

import nanoxtal.train as train_module
from nanoxtal.train import (
    COMPLETE_MARKER,
    TrainerSettings,
    build_trainer,
    checkpoint_dir,
    fit,
    resume_checkpoint,
    run_key,
    seed_run,
)


class StopAtEpoch(pl.Callback):
    """Simulates a job killed by the scheduler when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed by the scheduler")


class EpochRecorder(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


QUIET = {"enable_model_summary": False}


@pytest.fixture
def train(tiny_lightning):
    """Train the tiny regressor in ``stage_dir`` through ``fit``; returns the module."""

    def run(stage_dir, settings, key, callbacks=()):
        seed_run(settings)
        module = tiny_lightning.TinyRegressor()
        fit(module, tiny_lightning.TinyData(), stage_dir, settings, key, callbacks, **QUIET)
        return module

    return run


def weights(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_settings_merge_layers_and_reject_unknown_keys():
    settings = TrainerSettings.from_mapping(
        {"accelerator": "cpu", "max_epochs": 3}, {"max_epochs": 5}
    )
    assert settings.accelerator == "cpu" and settings.max_epochs == 5
    with pytest.raises(ValueError, match="unknown trainer setting 'epochs'"):
        TrainerSettings.from_mapping({"epochs": 3})
    with pytest.raises(ValueError, match="precision"):
        TrainerSettings(precision="8-bit")
    with pytest.raises(ValueError, match="max_epochs"):
        TrainerSettings(max_epochs=0)


def test_run_key_is_stable_and_sensitive(monkeypatch):
    assert run_key({"lr": 0.1, "w": 4}, "data-sha") == run_key({"w": 4, "lr": 0.1}, "data-sha")
    assert run_key({"lr": 0.1}, "data-sha") != run_key({"lr": 0.2}, "data-sha")
    assert run_key({"lr": 0.1}, "data-sha") != run_key({"lr": 0.1}, "other-data")
    before = run_key({"lr": 0.1})
    monkeypatch.setattr(train_module, "code_fingerprint", lambda: "edited code")
    assert run_key({"lr": 0.1}) != before  # changed code never resumes an old run


def test_auto_accelerator_uses_cuda_when_present_else_cpu(tmp_path):
    trainer, resume = build_trainer(tmp_path, TrainerSettings(), "k", **QUIET)
    expected = "CUDAAccelerator" if torch.cuda.is_available() else "CPUAccelerator"
    assert type(trainer.accelerator).__name__ == expected
    assert resume is None
    assert trainer.logger.log_dir == str(tmp_path / "logs" / "k")


def test_same_seed_same_model_other_seed_other_model(tmp_path, train):
    settings = TrainerSettings(accelerator="cpu", max_epochs=2, seed=7)
    first = train(tmp_path / "a", settings, "k")
    again = train(tmp_path / "b", settings, "k")
    other = train(tmp_path / "c", TrainerSettings(accelerator="cpu", max_epochs=2, seed=8), "k")
    assert torch.equal(weights(first), weights(again))
    assert not torch.equal(weights(first), weights(other))


def test_interrupted_run_resumes_from_last_ckpt_and_matches_an_uninterrupted_one(
    tmp_path, train, tiny_lightning
):
    settings = TrainerSettings(accelerator="cpu", max_epochs=4, seed=3)
    reference = train(tmp_path / "reference", settings, "k")

    stage = tmp_path / "stage"
    with pytest.raises(RuntimeError, match="killed"):
        train(stage, settings, "k", callbacks=[StopAtEpoch(2)])
    assert resume_checkpoint(stage, "k") == checkpoint_dir(stage, "k") / "last.ckpt"
    assert not (stage / "models" / "best.ckpt").exists()

    recorder = EpochRecorder()
    resumed = train(stage, settings, "k", callbacks=[recorder])
    assert recorder.epochs == [2, 3]
    assert torch.allclose(weights(resumed), weights(reference), atol=1e-6)
    assert (checkpoint_dir(stage, "k") / COMPLETE_MARKER).exists()

    best = tiny_lightning.TinyRegressor.load_from_checkpoint(stage / "models" / "best.ckpt")
    assert best.hparams.width == 4
    # The metrics of the epochs before the kill survive the resume, each epoch once.
    with open(stage / "logs" / "k" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    validated = [int(row["epoch"]) for row in rows if row["val_loss"]]
    assert validated == [0, 1, 2, 3]
    assert any(row["train_loss"] for row in rows)
    assert not (stage / "logs" / "k" / "metrics.history.csv").exists()


def test_finished_run_is_retrained_not_resumed(tmp_path, train):
    settings = TrainerSettings(accelerator="cpu", max_epochs=2)
    train(tmp_path, settings, "k")
    assert resume_checkpoint(tmp_path, "k") is None
    recorder = EpochRecorder()
    train(tmp_path, settings, "k", callbacks=[recorder])
    assert recorder.epochs == [0, 1]
    superseded = list((tmp_path / "logs").glob("k.superseded-*/metrics.csv"))
    assert len(superseded) == 1 and (tmp_path / "logs" / "k" / "metrics.csv").is_file()


def test_other_run_key_does_not_resume_a_foreign_checkpoint(tmp_path, train):
    settings = TrainerSettings(accelerator="cpu", max_epochs=3)
    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path, settings, "old", callbacks=[StopAtEpoch(1)])
    _, resume = build_trainer(tmp_path, settings, "new", **QUIET)
    assert resume is None
    assert resume_checkpoint(tmp_path, "old") is not None
