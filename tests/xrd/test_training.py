from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from nanoxtal.cli import main
from nanoxtal.environment import describe
from nanoxtal.train import TrainerSettings
from nanoxtal.xrd.datamodule import XrdDataModule, source_sampling_weights
from nanoxtal.xrd.diffraction import stick_pattern
from nanoxtal.xrd.evaluate import abstention_rule, predict_files
from nanoxtal.xrd.library import load_library, nearest_neighbour
from nanoxtal.xrd.module import class_weights, load_classifier, smoothed_cross_entropy
from nanoxtal.xrd.references import references_from_tables
from nanoxtal.xrd.training import (
    FinetuneSettings,
    TrainSettings,
    finetune_classifier,
    measured_set,
    rruff_split,
    train_classifier,
)

SMALL = {
    "arch": "xrdnet",
    "arch_kwargs": {"width": 8, "hidden": 32},
    "batch_size": 4,
    "train_per_epoch": 6,
    "val_size": 3,
}
CPU = TrainerSettings(max_epochs=1, accelerator="cpu", seed=3)


def test_class_weights_favour_rare_classes():
    weights = class_weights(torch.tensor([0, 0, 0, 0, 1]), 3)
    assert weights[1] > weights[0] and weights[2] >= weights[1]
    assert float(weights.mean()) == pytest.approx(1.0)


def test_label_smoothing_is_not_weighted_by_class():
    logits = torch.randn(5, 4)
    target = torch.tensor([0, 1, 2, 3, 0])
    weights = torch.tensor([0.1, 1.0, 5.0, 50.0])
    plain = torch.nn.functional.cross_entropy(logits, target, weights)
    assert torch.allclose(smoothed_cross_entropy(logits, target, weights, 0.0), plain)
    uniform = -torch.log_softmax(logits, 1).mean()
    # Full smoothing ignores the class weights entirely.
    assert torch.allclose(smoothed_cross_entropy(logits, target, weights, 1.0), uniform)
    assert torch.allclose(smoothed_cross_entropy(logits, target, torch.ones(4), 1.0), uniform)


def test_datamodule_renders_fresh_training_and_fixed_validation(tiny_tables):
    structures, peaks, table = tiny_tables
    data = XrdDataModule(str(structures), str(peaks), batch_size=4, train_per_epoch=4, seed=0)
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == table["split"].value_counts().to_dict()
    first = next(iter(data.val_dataloader()))
    again = next(iter(data.val_dataloader()))
    assert torch.equal(first["pattern"], again["pattern"])
    loader = data.train_dataloader()
    a, b = next(iter(loader))["pattern"], next(iter(loader))["pattern"]
    assert a.shape[1] == 8500 and not torch.equal(a, b)


def test_source_weights_decide_how_often_each_source_is_drawn(tiny_tables, tmp_path):
    _, peaks, table = tiny_tables
    # Name the sources of the training structures: the first two "amcsd", the rest "mp".
    named = table.copy()
    train = np.flatnonzero(named["split"] == "train")
    named["source"] = "mp"
    named.loc[train[:2], "source"] = "amcsd"
    named.to_parquet(tmp_path / "named.parquet", index=False)

    def drawn(weights):
        data = XrdDataModule(
            str(tmp_path / "named.parquet"),
            str(peaks),
            batch_size=2,
            train_per_epoch=2,
            seed=0,
            source_weights=weights,
        )
        data.setup()
        rows = list(data.train_dataloader().sampler)
        return set(data.subset("train").sources[rows])

    assert drawn({"mp": 0.0}) == {"amcsd"}
    assert drawn({"amcsd": 0.0}) == {"mp"}
    with pytest.raises(ValueError, match="'rruff': no such source"):
        drawn({"rruff": 2.0})
    with pytest.raises(ValueError, match="must be ≥ 0"):
        source_sampling_weights(np.array(["mp"]), {"mp": -1.0})
    assert source_sampling_weights(np.array(["mp", "amcsd"]), {"amcsd": 3.0}).tolist() == [1, 3]


def test_each_dataloader_worker_draws_its_own_effects(tiny_tables):
    structures, peaks, _ = tiny_tables
    data = XrdDataModule(str(structures), str(peaks), batch_size=2, seed=0)
    data.setup()
    collate = data.train_dataloader().collate_fn
    loader = torch.utils.data.DataLoader(
        range(4), batch_sampler=[[0, 1], [0, 1]], collate_fn=collate, num_workers=2
    )
    first, second = (batch["pattern"] for batch in loader)
    assert not torch.equal(first, second)  # same structures, different workers, other effects


def test_train_finetune_predict_round_trip(tmp_path, tiny_tables, tiny_measured):
    structures, peaks, _ = tiny_tables
    trained = train_classifier(structures, peaks, tmp_path / "xrdnet", TrainSettings(**SMALL), CPU)
    assert trained == tmp_path / "xrdnet" / "models" / "best.ckpt" and trained.is_file()
    model = load_classifier(trained)
    assert model.hparams.arch["width"] == 8

    references = references_from_tables(structures, peaks, progress=False)
    tuned = finetune_classifier(
        trained,
        tiny_measured,
        tmp_path / "xrdnet" / "finetune",
        FinetuneSettings(batch_size=8),
        CPU,
        references,
    )
    split = json.loads((tmp_path / "xrdnet" / "finetune" / "split.json").read_text())
    assert not set(split["finetune_rows"]) & set(split["held_out_rows"])
    assert len(split["finetune_rows"]) + len(split["held_out_rows"]) == 48
    calibration = json.loads((tmp_path / "xrdnet" / "finetune" / "calibration.json").read_text())
    # Calibrated on out-of-fold predictions of every fine-tune row (never a held-out one), by
    # one fine-tune per fold; the temperatures travel with the checkpoint.
    assert sorted(calibration["rows"]) == sorted(split["finetune_rows"])
    assert "3 cross-fitted" in calibration["method"]
    folds = tmp_path / "xrdnet" / "finetune" / "crossfit"
    assert sorted(p.name for p in folds.iterdir()) == ["fold0", "fold1", "fold2"]
    assert all((folds / f"fold{k}" / "models" / "best.ckpt").is_file() for k in range(3))
    # Without cross-fitting: calibrated on the fine-tune validation rows only.
    plain = tmp_path / "xrdnet" / "plain"
    finetune_classifier(
        trained, tiny_measured, plain, FinetuneSettings(batch_size=8, calibration_folds=0), CPU
    )
    rows = json.loads((plain / "calibration.json").read_text())["rows"]
    assert 0 < len(rows) < len(split["finetune_rows"]) / 4
    assert set(rows) <= set(split["finetune_rows"]) and not (plain / "crossfit").exists()
    assert calibration["temperature_space_group"] != 1.0
    assert load_classifier(tuned).temperature.tolist() == pytest.approx(
        [calibration["temperature_crystal_system"], calibration["temperature_space_group"]]
    )

    # The abstention threshold: chosen on the same out-of-fold predictions, kept in the model.
    threshold = calibration["abstain_below"]
    assert load_classifier(tuned).abstain_below == threshold > 0
    assert calibration["abstain_precision"] == 0.8 and 0 <= calibration["answered_share"] <= 1
    if calibration["answered_share"] > 0:
        assert calibration["answered_space_group_accuracy"] >= 0.8
    by_default, _ = predict_files(load_classifier(tuned), [tiny_measured])
    assert by_default["abstained"].tolist() == (by_default["p_space_group"] < threshold).tolist()

    # Each pipeline's own threshold (library, references, both): chosen on its out-of-fold
    # answers (model, library of the other folds, references), applied to its final probability.
    chosen = calibration["pipelines"]
    assert sorted(chosen) == ["library", "library+references", "references"]
    pipelines = load_classifier(tuned).pipeline_abstain_below
    assert pipelines == {name: value["abstain_below"] for name, value in chosen.items()}
    for value in chosen.values():
        assert value["answered_share"] == 0 or value["answered_space_group_accuracy"] >= 0.8
    library = load_library(tmp_path / "xrdnet" / "finetune" / "library.npz")
    model = load_classifier(tuned)
    for name, given in {
        "library+references": {"library": library, "references": references},
        "references": {"references": references},
        "library": {"library": library},
    }.items():
        published, _ = predict_files(model, [tiny_measured], **given)
        expected = published["p_space_group"] < pipelines[name]
        if "references" in given:
            expected |= published["unlike_references"]
        assert published["abstained"].tolist() == expected.tolist(), name
        assert abstention_rule(model, None, **given) == (pipelines[name], True)
    # Given a threshold, or with nothing moving the answers, the model's own probability decides.
    assert abstention_rule(model) == (threshold, False)
    assert abstention_rule(model, 0.3, library, references) == (0.3, False)

    # The refit: every labelled pattern fine-tuned on, none held out.
    refit = tmp_path / "xrdnet" / "refit"
    finetune_classifier(
        trained,
        tiny_measured,
        refit,
        FinetuneSettings(fraction=1.0, batch_size=8, calibration_folds=0, abstain_precision=0),
        CPU,
    )
    everything = json.loads((refit / "split.json").read_text())
    assert everything["finetune_rows"] == list(range(48)) and everything["held_out_rows"] == []
    assert load_classifier(refit / "models" / "best.ckpt").abstain_below == 0.0

    table, errors = predict_files(
        load_classifier(tuned), [tiny_measured, tmp_path / "x.xy"], min_confidence=1.01
    )
    assert len(table) == 48 and errors and "x.xy" in errors[0]
    assert table["abstained"].all()
    assert table["space_group"].between(1, 230).all()
    probabilities = table[[f"p_space_group_{k}" for k in range(1, 6)]].to_numpy()
    assert np.all(np.diff(probabilities, axis=1) <= 0)


def test_rruff_split_is_seeded_disjoint_and_complete():
    tune, held = rruff_split(10, 0.5, seed=1)
    again, _ = rruff_split(10, 0.5, seed=1)
    assert np.array_equal(tune, again) and len(tune) == 5
    assert sorted(np.concatenate([tune, held]).tolist()) == list(range(10))
    assert not np.array_equal(rruff_split(10, 0.5, seed=2)[0], tune)


def single_phase_folder(folder):
    """A measured NaCl.xy, a mixture file, and the NaCl reference CIF."""
    (folder / "references").mkdir(parents=True)
    rock_salt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    (folder / "references" / "NaCl_1.cif").write_text(rock_salt.to(fmt="cif"))
    sticks = stick_pattern(rock_salt)
    x = np.arange(10, 90, 0.02)
    y = 100 + sum(
        i * np.exp(-0.5 * ((x - t) / 0.05) ** 2)
        for t, i in zip(sticks.two_theta, sticks.intensity, strict=True)
    )
    text = "\n".join(f"{a:.2f} {b:.2f}" for a, b in zip(x, y, strict=True))
    (folder / "NaCl.xy").write_text(text)
    (folder / "NaCl+KCl.xy").write_text(text)
    return folder


def test_cli_train_evaluate_predict(tmp_path, tiny_tables, tiny_measured, outside_repository):
    structures, peaks, table = tiny_tables
    common = ["--trainer", json.dumps({"max_epochs": 1, "accelerator": "cpu"}), "--seed", "3"]
    assert (
        main(
            [
                "xrd",
                "train",
                "--structures",
                str(structures),
                "--peaks",
                str(peaks),
                "--out-dir",
                str(tmp_path / "m"),
                "--settings",
                json.dumps(SMALL),
                *common,
            ]
        )
        == 0
    )
    model = tmp_path / "m" / "models" / "best.ckpt"
    assert (
        main(
            [
                "xrd",
                "finetune",
                "--model",
                str(model),
                "--measured",
                str(tiny_measured),
                "--out-dir",
                str(tmp_path / "m" / "ft"),
                *common,
            ]
        )
        == 0
    )
    tuned = tmp_path / "m" / "ft" / "models" / "best.ckpt"
    single = single_phase_folder(tmp_path / "single")
    references = references_from_tables(structures, peaks, progress=False).save(
        tmp_path / "references.npz"
    )
    assert (
        main(
            [
                "xrd",
                "evaluate",
                "--model",
                f"tiny={model},{tuned}",
                "--structures",
                str(structures),
                "--peaks",
                str(peaks),
                "--measured",
                str(tiny_measured),
                "--seed",
                "3",
                "--test-size",
                "8",
                "--out",
                str(tmp_path / "metrics.json"),
                "--figures",
                str(tmp_path / "figures"),
                "--single-phase",
                str(single),
                "--references",
                str(references),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Every held-out pattern is a noisy render of a tiny crystal, all of them references.
    assert metrics["rruff_heldout/references/phases"] == len(table)
    assert metrics["rruff_heldout/references/match_1_space_group_accuracy"] >= 0.75
    assert (
        metrics["rruff_heldout/references/top3_space_group_accuracy"]
        >= metrics["rruff_heldout/references/match_1_space_group_accuracy"]
    )
    # Each model abstains below its own threshold: never for the model not fine-tuned.
    assert metrics["rruff_heldout/tiny/synthetic/abstain_below"] == 0.0
    assert metrics["rruff_heldout/tiny/synthetic/answered_share"] == 1.0
    assert (
        metrics["rruff_heldout/tiny/finetuned/abstain_below"]
        == load_classifier(tuned).abstain_below
    )
    assert 0.0 <= metrics["rruff_heldout/tiny/finetuned+library/answered_share"] <= 1.0
    # Protocol (d), thin films: every test structure, scored and abstained on by each model.
    assert metrics["film_test_size"] == metrics["mp_test_size"] + sum(
        v for k, v in metrics.items() if k.startswith("test/") and k.endswith("_size")
    )
    assert metrics["film_test/tiny/synthetic/answered_share"] == 1.0
    assert (
        metrics["film_test/tiny/finetuned/abstain_below"]
        == metrics["rruff_heldout/tiny/finetuned/abstain_below"]
    )
    for variant in ("synthetic", "finetuned"):
        assert 0.0 <= metrics[f"film_test/tiny/{variant}/space_group_accuracy"] <= 1.0
    # References without a fitted gate hold nothing back: the gated scores equal the plain.
    assert metrics["rruff_heldout/references/unlike_share"] == 0.0
    assert metrics["film_test/references/unlike_share"] == 0.0
    assert (
        metrics["film_test/tiny/finetuned+unlike/answered_share"]
        == metrics["film_test/tiny/finetuned/answered_share"]
    )
    assert metrics["rruff_heldout_size"] == 24 and metrics["rruff_finetune_size"] == 24
    assert metrics["environment"] == describe()  # the machine it was measured on
    # Every held-out crystal has three sibling renders in the fine-tune part: the lookup floor.
    assert metrics["rruff_heldout/nearest_neighbour/space_group_accuracy"] > 0.5
    # The floor is the plain cosine lookup on unsmoothed patterns, whatever the library does.
    patterns, _, space_group = measured_set(tiny_measured)
    tune, held = rruff_split(len(patterns), 0.5, 3)
    plain = tune[nearest_neighbour(patterns[tune], patterns[held])[0]]
    assert metrics["rruff_heldout/nearest_neighbour/space_group_accuracy"] == pytest.approx(
        np.mean(space_group[plain] == space_group[held])
    )
    assert 0.0 <= metrics["rruff_heldout/library/space_group_accuracy"] <= 1.0
    # Half the tiny crystals are training structures: their renders are found among them.
    lookup = "rruff_heldout/synthetic_lookup"
    assert metrics[f"{lookup}/structures"] == int((table["split"] == "train").sum())
    assert 0.25 <= metrics[f"{lookup}/space_group_accuracy"] <= 1.0
    assert 0.0 < metrics[f"{lookup}/similarity_median"] <= 1.0
    # The library's close matches carry the (barely trained) model to the floor's level.
    assert metrics["rruff_heldout/tiny/finetuned+library/space_group_accuracy"] > 0.5
    for key in (
        "rruff_heldout/tiny/finetuned/space_group_accuracy",
        "mp_test/tiny/crystal_system_accuracy",
    ):
        assert 0.0 <= metrics[key] <= 1.0
    assert (tmp_path / "figures" / "rruff_heldout_tiny_finetuned_crystal_system.png").is_file()
    assert (tmp_path / "figures" / "attribution_tiny_finetuned.png").is_file()
    assert (tmp_path / "figures" / "reliability_tiny_finetuned.png").is_file()
    assert metrics["rruff_heldout/tiny/synthetic/temperature_space_group"] == 1.0
    assert 0.0 <= metrics["rruff_heldout/tiny/finetuned/space_group_ece"] <= 1.0
    assert metrics["single_phase_size"] == 1  # the mixture has no single reference
    assert 0.0 <= metrics["single_phase/tiny+library/space_group_consistent"] <= 1.0
    assert (tmp_path / "figures" / "single_phase_tiny+library.csv").is_file()
    check = pd.read_csv(tmp_path / "figures" / "single_phase_tiny.csv")
    assert (
        check.loc[0, "formula"] == "NaCl" and str(check.loc[0, "reference_space_groups"]) == "225"
    )
    assert check.loc[0, "space_group_consistent"] == (check.loc[0, "predicted_space_group"] == 225)
    out = tmp_path / "predictions.csv"
    assert (
        main(["xrd", "predict", str(tiny_measured), "--model", str(tuned), "--out", str(out)]) == 0
    )
    assert list(pd.read_csv(out).columns[:6]) == [
        "source",
        "index",
        "crystal_system",
        "space_group",
        "p_crystal_system",
        "p_space_group",
    ]
    library = tmp_path / "m" / "ft" / "library.npz"
    with_library = tmp_path / "with_library.csv"

    def predict(model, out, *extra):
        return main(
            ["xrd", "predict", str(tiny_measured), "--model", str(model), "--out", str(out), *extra]
        )

    assert predict(tuned, with_library, "--library", str(library)) == 0
    # The fine-tune patterns are in the library: each finds itself, and its labels win.
    rows = json.loads((tmp_path / "m" / "ft" / "split.json").read_text())["finetune_rows"]
    found = pd.read_csv(with_library).iloc[rows]
    assert found["library_similarity"].to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert (found["space_group"] == found["library_space_group"]).all()
    assert predict(tuned, out, "--library", str(tmp_path / "none.npz")) == 1
    assert predict(tmp_path / "no.ckpt", out) == 1
