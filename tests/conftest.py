"""Shared fixtures: paths to the repository and the real data root, and a synthetic dataset."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from nanoxtal.data import registry
from nanoxtal.data.registry import DataFile, Dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_lightning() -> ModuleType:
    """``tests/ddp_run.py`` as a module: the tiny LightningModule and DataModule that the
    training tests share (DDP runs that file as a script, so the classes live there)."""
    spec = importlib.util.spec_from_file_location("ddp_run", REPO / "tests" / "ddp_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def save_checkpoint():
    """Write a LightningModule as training writes its checkpoints (weights, hyperparameters,
    Lightning version), for tests that need a saved model without training one."""
    import pytorch_lightning as pl
    import torch

    def save(model: pl.LightningModule, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__,
        }
        torch.save(state, path)
        return path

    return save


@pytest.fixture
def outside_repository(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder: no workflow has published a model in its ``results/`` (the
    jobs' default model), unless the test publishes one there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data root (../shared/data), as CI provides it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data root {SHARED_DATA} not present")
    return SHARED_DATA


def write_dataset(root: Path, name: str, contents: dict[str, bytes]) -> Dataset:
    """Write files under ``root/<name>/`` and return a registry entry that matches them."""
    files = []
    for path, data in sorted(contents.items()):
        target = root / name / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append(DataFile(path, hashlib.sha256(data).hexdigest(), len(data)))
    return Dataset(
        name=name,
        folder=name,
        description=f"synthetic dataset {name}",
        source=f"https://example.org/{name}",
        licence="CC0",
        files=tuple(files),
    )


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Dataset]]:
    """A data root with two small synthetic datasets, registered in place of the real registry."""
    root = tmp_path / "data_root"
    found = {
        "alpha": write_dataset(
            root, "alpha", {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256))}
        ),
        "beta": write_dataset(root, "beta", {"c.csv": b"x,y\n1,2\n"}),
    }
    monkeypatch.setattr(registry, "datasets", lambda: found)
    return root, found
