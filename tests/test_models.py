from __future__ import annotations

import pickle

import pytest
import torch

import nanoxtal
from nanoxtal.models import (
    PUBLISHED_LIBRARY,
    PUBLISHED_REFERENCES,
    ModelError,
    checkpoint_stage,
    choose_model,
    model_file,
    published_file,
    published_model,
)
from nanoxtal.tem.module import Segmenter
from nanoxtal.tem.nets import UNet
from nanoxtal.xrd.module import XrdClassifier
from nanoxtal.xrd.nets import XrdNet


@pytest.fixture
def results(tmp_path, save_checkpoint):
    """A results folder with a TEM and an XRD model published as the workflow does."""
    torch.manual_seed(0)
    tem_arch = {"width": 8, "depth": 3, "stem": 1}
    xrd_arch = {"width": 4, "hidden": 16, "reduced": 4}
    root = tmp_path / "results"
    save_checkpoint(
        Segmenter(UNet(**tem_arch), {"name": "unet", **tem_arch}),
        root / "tem" / "models" / "best.ckpt",
    )
    save_checkpoint(
        XrdClassifier(XrdNet(**xrd_arch), {"name": "xrdnet", **xrd_arch}),
        root / "xrd" / "models" / "best.ckpt",
    )
    return root


def test_checkpoints_are_told_apart_by_their_network(results):
    assert checkpoint_stage(results / "tem" / "models" / "best.ckpt") == "tem"
    assert checkpoint_stage(results / "xrd" / "models" / "best.ckpt") == "xrd"


def test_load_model_from_a_file_or_a_results_folder(results):
    tem = nanoxtal.load_model(results / "tem" / "models" / "best.ckpt")
    assert isinstance(tem, Segmenter) and not tem.training
    for folder in (results, results / "xrd", results / "xrd" / "models"):
        assert isinstance(nanoxtal.load_model(folder, stage="xrd"), XrdClassifier), folder
    assert isinstance(nanoxtal.load_model(results / "tem"), Segmenter)


def test_what_is_missing_or_ambiguous_is_named(results, tmp_path):
    with pytest.raises(ModelError, match=r"holds several models .*name the stage"):
        model_file(results)
    with pytest.raises(ModelError, match=r"no trained model found \(looked for .*forest\.pkl"):
        nanoxtal.load_model(results, stage="recipes")
    with pytest.raises(ModelError, match="a tem model, not a xrd one"):
        nanoxtal.load_model(results / "tem" / "models" / "best.ckpt", stage="xrd")
    with pytest.raises(ModelError, match=r"missing\.ckpt: no such model file or results folder"):
        nanoxtal.load_model(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.ckpt: not a nanoxtal checkpoint"):
        nanoxtal.load_model(junk)
    bad = tmp_path / "model.pkl"
    bad.write_bytes(pickle.dumps({"format": -1}))
    with pytest.raises(ModelError, match=r"model\.pkl: not a nanoxtal recipe model"):
        nanoxtal.load_model(bad)
    with pytest.raises(ModelError, match="unknown stage"):
        published_model("sem", results)  # type: ignore[arg-type]


def test_the_published_model_is_chosen_when_none_is_given(results, tmp_path, monkeypatch):
    assert published_model("tem", results) == results / "tem" / "models" / "best.ckpt"
    assert published_model("recipes", results) is None
    assert published_file(PUBLISHED_LIBRARY, results) is None
    (results / PUBLISHED_REFERENCES).write_bytes(b"")
    assert published_file(PUBLISHED_REFERENCES, results) == results / "xrd" / "references.npz"
    chosen = choose_model("xrd", None, results)
    assert (
        isinstance(chosen.model, XrdClassifier) and "published by the workflow" in chosen.describe
    )
    assert choose_model("recipes", None, results).model is None
    assert choose_model("tem", "classical", results).model is None
    # The default results folder is the current folder's.
    monkeypatch.chdir(tmp_path)
    assert published_model("tem") == results.relative_to(tmp_path) / "tem" / "models" / "best.ckpt"
    given = choose_model("tem", results / "tem")
    assert given.path == results / "tem" / "models" / "best.ckpt"
