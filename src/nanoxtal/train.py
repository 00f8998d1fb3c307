"""One Lightning ``Trainer`` factory for every stage, and the fit-and-publish routine around it.

Layout under a stage's results folder (``results/<stage>/``)::

    logs/<run>/metrics.csv           CSV logger (one folder per run key; kept across resumes)
    checkpoints/<run>/last.ckpt      written every epoch; a rerun of an interrupted run resumes here
    checkpoints/<run>/best.ckpt      best epoch by the monitored metric
    models/best.ckpt                 published copy of the best checkpoint, what the CLI loads

``<run>`` is a short hash of everything that defines the training run (hyper-parameters and input
fingerprints, given by the caller), so an interrupted run resumes only into the same run, and a run
with changed data or settings starts afresh instead of resuming a stale model. The checkpoint
folder is deliberately not a workflow output: Snakemake deletes the outputs of a failed job, and
the checkpoints are what lets the rerun of a job killed by a cluster's time limit pick up again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
)

from nanoxtal.arguments import settings_from
from nanoxtal.files import atomic_write

COMPLETE_MARKER = "COMPLETE"
METRICS_FILE = "metrics.csv"
HISTORY_FILE = "metrics.history.csv"
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true")


@dataclass(frozen=True)
class TrainerSettings:
    """How to train: the run settings every stage shares.

    Several devices or nodes are a matter of these settings alone (see ``cluster_environment``
    for how a SLURM job is handled): ``devices=4, strategy="ddp"`` trains on four GPUs of one
    node, ``num_nodes=2`` on two nodes when SLURM started one task per device (``srun`` with
    ``--ntasks-per-node`` equal to ``devices``).

    Attributes:
        max_epochs: Number of epochs to train.
        accelerator: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        devices: Devices per node: a count, or ``"auto"``.
        num_nodes: Nodes to train on (multi-node DDP, e.g. under SLURM).
        strategy: Lightning strategy, e.g. ``"auto"``, ``"ddp"`` (one process per device; on CPUs
            with the gloo backend) or ``"ddp_spawn"``.
        precision: Lightning precision string, one of ``PRECISIONS``.
        seed: Global seed for Python, NumPy and torch (and dataloader workers).
        deterministic: ``True`` for deterministic algorithms, ``"warn"`` to only warn.
        monitor: Logged metric that selects the best checkpoint, or ``None`` for the last epoch.
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        log_every_n_steps: Logging interval in optimisation steps.
        gradient_clip_val: Gradient norm clipping, or ``None`` for none.
    """

    max_epochs: int = 10
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    seed: int = 42
    deterministic: bool | str = True
    monitor: str | None = "val_loss"
    mode: str = "min"
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"trainer setting max_epochs must be >= 1, got {self.max_epochs}")
        if self.num_nodes < 1:
            raise ValueError(f"trainer setting num_nodes must be >= 1, got {self.num_nodes}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"trainer setting precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.mode not in ("min", "max"):
            raise ValueError(f"trainer setting mode must be 'min' or 'max', got {self.mode!r}")
        if self.deterministic not in (True, False, "warn"):
            raise ValueError(
                f"trainer setting deterministic must be true, false or 'warn', "
                f"got {self.deterministic!r}"
            )

    @classmethod
    def from_mapping(cls, *layers: Mapping[str, Any] | None) -> TrainerSettings:
        """Build settings from config mappings; later layers override earlier ones.

        Typically ``from_mapping(config["trainer"], config["xrd"]["trainer"])``: shared run
        settings first, then a stage's own.

        Raises:
            ValueError: If a mapping holds a key that is not a trainer setting.
        """
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer or {})
        return settings_from(cls, merged, "trainer")


def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, position, has_gauss, gauss = state
    return kind, keys.tolist(), int(position), int(has_gauss), float(gauss)


class RngStateCheckpoint(Callback):
    """Keeps the random number generators' states in checkpoints, so a resumed run reproduces.

    Lightning restores weights, optimiser and loop state but not the global RNGs, so without
    this a run resumed after a kill would shuffle and augment differently from an uninterrupted
    one. ``build_trainer`` skips the sanity-check validation on resume, because it would draw
    random numbers between the restore and the first resumed epoch.
    """

    def state_dict(self) -> dict[str, Any]:
        """The RNG states at the moment the checkpoint is written."""
        states: dict[str, Any] = {
            "python": random.getstate(),
            # Plain lists and numbers: checkpoints are loaded with torch's weights_only=True.
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the states saved with the checkpoint."""
        random.setstate(state_dict["python"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


@cache
def code_fingerprint() -> str:
    """sha256 of the nanoxtal package's Python sources (so code changes start runs afresh)."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_key(*parts: Any) -> str:
    """Short stable hash identifying a training run.

    The package's code is part of the key: an interrupted run resumes only under the same
    code, never into a model trained by code that has since changed.

    Args:
        *parts: JSON-serialisable descriptions of the run: hyper-parameters, trainer settings,
            input fingerprints (e.g. file checksums).

    Returns:
        The first 12 hex digits of the sha256 of the canonical JSON of ``parts`` and the code.
    """
    canonical = json.dumps([code_fingerprint(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def seed_run(settings: TrainerSettings) -> None:
    """Seed Python, NumPy and torch (and dataloader workers) for a training run.

    Call it before building the module and the datamodule: initial weights and random splits
    are drawn when they are built. ``build_trainer`` seeds again, so both orders reproduce.
    """
    pl.seed_everything(settings.seed, workers=True, verbose=False)


def cluster_environment() -> ClusterEnvironment | None:
    """How the processes of a run find each other: Lightning's SLURM environment when it applies.

    - Not under SLURM: ``None``, Lightning's own choice (it starts one process per device).
    - SLURM started several tasks (``srun`` with ``--ntasks-per-node`` = devices, possibly on
      several nodes): Lightning's ``SLURMEnvironment``, which takes ranks, world size and the
      master address from SLURM. Its auto-requeue is off: Snakemake decides about reruns, and a
      rerun resumes from ``last.ckpt`` (``resume_checkpoint``).
    - SLURM started one task (a Snakemake job, which runs its command as one ``srun`` task):
      Lightning's plain environment, so Lightning starts the processes of the other devices
      itself, as outside SLURM, instead of waiting for tasks SLURM will never start.
    """
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None  # Lightning's convention: an interactive allocation is not a SLURM launch
    if "SLURM_NTASKS" not in os.environ:
        return None
    if int(os.environ["SLURM_NTASKS"]) > 1:
        return SLURMEnvironment(auto_requeue=False)
    return LightningEnvironment()


def _is_launching_process() -> bool:
    """Whether this is the first process of a run (the one that prepares its folders).

    Decided from the launchers' environment variables, before the trainer exists: the other
    processes of a multi-process run must not move or delete what the first one prepared.
    """
    return all(
        os.environ.get(name, "0") == "0"
        for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
    )


def checkpoint_dir(stage_dir: Path | str, key: str) -> Path:
    """Folder holding the checkpoints of run ``key`` of a stage."""
    return Path(stage_dir) / "checkpoints" / key


def resume_checkpoint(stage_dir: Path | str, key: str) -> Path | None:
    """The ``last.ckpt`` to resume run ``key`` from, or ``None`` to start afresh.

    A run that finished (``COMPLETE`` marker) is not resumed: asking for it again means
    training again, e.g. after ``snakemake --forcerun``.
    """
    folder = checkpoint_dir(stage_dir, key)
    last = folder / "last.ckpt"
    if last.is_file() and not (folder / COMPLETE_MARKER).exists():
        return last
    return None


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Write CSV rows whose keys may differ (union header, first-seen order)."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_write(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _keep_metrics_history(log_dir: Path, resume: Path) -> None:
    """Set aside the metrics logged before ``resume``'s step, before a resumed run starts.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts, so the rows of
    the interrupted attempts are kept in ``metrics.history.csv`` (rows at or after the
    checkpoint's step are dropped: the resumed run logs them again) and merged back by ``fit``.
    """
    resumed_at = torch.load(resume, map_location="cpu", weights_only=True)["global_step"]
    rows = _read_rows(log_dir / HISTORY_FILE) + _read_rows(log_dir / METRICS_FILE)
    kept = [row for row in rows if row.get("step") and int(float(row["step"])) < resumed_at]
    if kept:
        _write_rows(log_dir / HISTORY_FILE, kept)
    (log_dir / METRICS_FILE).unlink(missing_ok=True)


def _merge_metrics_history(log_dir: Path) -> None:
    history = log_dir / HISTORY_FILE
    if history.is_file():
        _write_rows(
            log_dir / METRICS_FILE, _read_rows(history) + _read_rows(log_dir / METRICS_FILE)
        )
        history.unlink()


def build_trainer(
    stage_dir: Path | str,
    settings: TrainerSettings,
    key: str,
    callbacks: Iterable[Callback] = (),
    **overrides: Any,
) -> tuple[pl.Trainer, Path | None]:
    """Build the Lightning ``Trainer`` for one training run of a stage.

    Seeds everything, chooses the accelerator (``"auto"``: CUDA when present, else CPU) and the
    cluster environment (``cluster_environment``), logs to CSV under ``<stage_dir>/logs/<key>``,
    checkpoints the best and last epochs under ``<stage_dir>/checkpoints/<key>`` and shows a
    progress bar. In a multi-process run (DDP) every process calls it; only the first one
    prepares the folders, and only global rank zero writes logs and checkpoints.

    Args:
        stage_dir: The stage's results folder, e.g. ``results/xrd``.
        settings: Run settings.
        key: Run key (see ``run_key``).
        callbacks: Extra callbacks (the checkpoint callback is always added).
        **overrides: Extra ``Trainer`` arguments, e.g. ``fast_dev_run=True`` in smoke tests.

    Returns:
        The trainer and the checkpoint to resume from (pass it as ``ckpt_path`` to ``fit``),
        or ``None`` when the run starts afresh.
    """
    stage_dir = Path(stage_dir)
    seed_run(settings)
    folder = checkpoint_dir(stage_dir, key)
    resume = resume_checkpoint(stage_dir, key)
    log_dir = stage_dir / "logs" / key
    launching = _is_launching_process()
    if launching and resume is None and folder.exists():
        # A finished run asked for again (e.g. --forcerun): its checkpoints are superseded,
        # its small logs are kept beside the new ones.
        shutil.rmtree(folder)
        if log_dir.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            log_dir.rename(log_dir.with_name(f"{key}.superseded-{stamp}"))
    if launching and resume is not None:
        _keep_metrics_history(log_dir, resume)
    environment = cluster_environment()
    if environment is not None:
        overrides = {"plugins": [environment], **overrides}
    checkpoint = ModelCheckpoint(
        dirpath=folder,
        filename="best",
        monitor=settings.monitor,
        mode=settings.mode,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    trainer = pl.Trainer(
        default_root_dir=stage_dir,
        max_epochs=settings.max_epochs,
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        deterministic=settings.deterministic,
        logger=CSVLogger(save_dir=log_dir.parent, name="", version=key),
        callbacks=[checkpoint, RngStateCheckpoint(), *callbacks],
        # Sanity-check validation draws random numbers: skipping it on resume keeps the
        # restored RNG states exactly where the interrupted run left them.
        num_sanity_val_steps=0 if resume else 2,
        enable_progress_bar=True,
        log_every_n_steps=settings.log_every_n_steps,
        gradient_clip_val=settings.gradient_clip_val,
        **overrides,
    )
    return trainer, resume


def _publish(source: Path, target: Path) -> None:
    """Copy a checkpoint to ``target`` via a temporary file, so readers never see half a file."""
    with atomic_write(target) as partial:
        shutil.copyfile(source, partial)


def fit(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    stage_dir: Path | str,
    settings: TrainerSettings,
    key: str,
    callbacks: Iterable[Callback] = (),
    **overrides: Any,
) -> Path:
    """Train ``module`` on ``datamodule``, resuming an interrupted run, and publish the best model.

    Build ``module`` and ``datamodule`` after ``seed_run(settings)`` so the run reproduces.

    Args:
        module: The LightningModule (the system).
        datamodule: The LightningDataModule (data and seeded splits).
        stage_dir: The stage's results folder, e.g. ``results/xrd``.
        settings: Run settings.
        key: Run key (see ``run_key``).
        callbacks: Extra callbacks.
        **overrides: Extra ``Trainer`` arguments.

    Returns:
        Path of the published best checkpoint, ``<stage_dir>/models/best.ckpt``.
    """
    trainer, resume = build_trainer(stage_dir, settings, key, callbacks, **overrides)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    folder = checkpoint_dir(stage_dir, key)
    if trainer.is_global_zero:
        _merge_metrics_history(Path(trainer.logger.log_dir))
    best = trainer.checkpoint_callback.best_model_path or str(folder / "last.ckpt")
    published = Path(stage_dir) / "models" / "best.ckpt"
    if trainer.is_global_zero:
        _publish(Path(best), published)
        (folder / COMPLETE_MARKER).write_text(
            json.dumps({"best": best, "settings": asdict(settings)}, indent=2) + "\n"
        )
    return published
