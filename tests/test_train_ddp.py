"""Multi-process training (DDP) through the shared Trainer factory, and its SLURM environment."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment

from nanoxtal.train import COMPLETE_MARKER, TrainerSettings, build_trainer, cluster_environment

SCRIPT = Path(__file__).with_name("ddp_run.py")
SLURM_VARIABLES = ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_PROCID", "SLURM_NTASKS_PER_NODE")


def run_script(stage_dir: Path, settings: dict) -> subprocess.CompletedProcess:
    # A clean launch: no SLURM or torchrun variables of a surrounding job.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SLURM_")
        and name not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(stage_dir), "k", json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def metrics(stage_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(stage_dir / "logs" / "k" / "metrics.csv") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_ddp_on_two_cpu_processes_matches_the_single_process_layout(tmp_path, tiny_lightning):
    common = {"accelerator": "cpu", "max_epochs": 2, "seed": 5, "log_every_n_steps": 1}
    single = run_script(tmp_path / "single", {**common, "devices": 1})
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_script(tmp_path / "ddp", {**common, "devices": 2, "strategy": "ddp"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # Two processes (the second started by Lightning), joined over gloo.
    assert "rank 0 of 2 (gloo)" in ddp.stdout and "rank 1 of 2 (gloo)" in ddp.stdout, ddp.stdout

    # The same files, the same metrics columns, each epoch validated once.
    def layout(stage):
        return sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())

    assert layout(tmp_path / "ddp") == layout(tmp_path / "single")
    (columns, rows), (ddp_columns, ddp_rows) = (
        metrics(tmp_path / "single"),
        metrics(tmp_path / "ddp"),
    )
    assert ddp_columns == columns
    for table in (rows, ddp_rows):
        assert [int(row["epoch"]) for row in table if row["val_loss"]] == [0, 1]
    # Each process trains on half the batches (DistributedSampler): half the steps.
    assert max(int(row["step"]) for row in ddp_rows) < max(int(row["step"]) for row in rows)
    assert (tmp_path / "ddp" / "checkpoints" / "k" / COMPLETE_MARKER).is_file()

    # The published checkpoint loads in one process, on the CPU.
    module = tiny_lightning.TinyRegressor.load_from_checkpoint(
        tmp_path / "ddp" / "models" / "best.ckpt", map_location="cpu"
    )
    assert module.hparams.width == 4
    assert torch.isfinite(module.net(torch.zeros(3, 4))).all()


def clear_slurm(monkeypatch):
    for name in SLURM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_cluster_environment_outside_slurm_is_lightnings_choice(monkeypatch):
    clear_slurm(monkeypatch)
    assert cluster_environment() is None


def test_slurm_tasks_use_lightnings_slurm_environment_without_requeue(monkeypatch, tmp_path):
    clear_slurm(monkeypatch)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    environment = cluster_environment()
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue is False  # Snakemake owns reruns; they resume last.ckpt


def test_one_slurm_task_lets_lightning_start_the_device_processes(monkeypatch, tmp_path):
    # A Snakemake job on SLURM runs its command as one task: with several devices Lightning
    # must start their processes itself rather than wait for SLURM tasks that never come.
    clear_slurm(monkeypatch)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "a1b2c3")
    assert isinstance(cluster_environment(), LightningEnvironment)
    settings = TrainerSettings(accelerator="cpu", devices=2, strategy="ddp")
    trainer, _ = build_trainer(tmp_path, settings, "k", enable_model_summary=False)
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)
    assert type(trainer.strategy.launcher).__name__ == "_SubprocessScriptLauncher"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert cluster_environment() is None


@pytest.mark.parametrize("rank_variable", ["LOCAL_RANK", "SLURM_PROCID"])
def test_only_the_first_process_prepares_the_run_folders(monkeypatch, tmp_path, rank_variable):
    finished = tmp_path / "checkpoints" / "k"
    finished.mkdir(parents=True)
    (finished / "last.ckpt").write_bytes(b"")
    (finished / COMPLETE_MARKER).write_text("{}")
    clear_slurm(monkeypatch)
    monkeypatch.setenv(rank_variable, "1")
    build_trainer(tmp_path, TrainerSettings(accelerator="cpu"), "k", enable_model_summary=False)
    assert (finished / COMPLETE_MARKER).exists()  # a second process leaves it to the first
