from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import convex_hull_image

from nanoxtal.cli import main
from nanoxtal.environment import describe
from nanoxtal.tem.evaluate import (
    evaluate_test_parts,
    evaluation_figure,
    figure_sets_and_methods,
    pool_folds,
)
from nanoxtal.tem.io import Split
from nanoxtal.tem.segmentation import SegmentSettings, instances_from_maps, segment_image

CENTRES = [(20, 20), (20, 60), (60, 40)]


class ThresholdModel:
    """A 'network' whose maps come from the image: dark pixels are particle."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict_maps(self, image: np.ndarray, tile: int = 1024) -> dict[str, np.ndarray]:
        self.seen.append(image)
        scaled = (image - image.min()) / (image.max() - image.min())
        foreground = (scaled < 0.5).astype(np.float32)
        distance = ndimage.distance_transform_edt(foreground)
        return {
            "foreground": foreground,
            "distance": (distance / max(distance.max(), 1)).astype(np.float32),
            "boundary": np.zeros(image.shape, np.float32),
        }


def test_baseline_and_model_find_the_particles_of_either_polarity(draw_discs):
    labels = draw_discs((80, 80), CENTRES, 8)
    dark = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    assert segment_image(dark).max() == 3
    bright = 1.0 - dark
    # Particles a fifth of the image wide: the support flattening needs a footprint wider than
    # them (the default, 0.09 of the side, suits particles of a few % of it).
    wide = {"background_fraction": 0.5}
    for polarity in ("bright", "auto"):
        settings = SegmentSettings(polarity=polarity, **wide)
        assert segment_image(bright, settings=settings).max() == 3
    model = ThresholdModel()
    assert segment_image(dark, model).max() == 3
    found = segment_image(bright, model, SegmentSettings(polarity="bright", **wide))
    assert found.max() == 3 and (found > 0).sum() == (labels > 0).sum()
    # Bright particles reach the network inverted: dark particles, as it was trained on.
    assert model.seen[-1][20, 20] < model.seen[-1][0, 0]


def test_bright_particles_on_a_bright_uneven_support_are_flattened_first(draw_discs):
    # HAADF of a supported catalyst: small bright particles on a broad bright support. Inverted
    # as it is, the support would be a dark blob, i.e. particle, to the network.
    labels = draw_discs((160, 160), [(60, 60), (60, 100), (100, 80)], 4)
    rows, cols = np.mgrid[:160, :160]
    support = 0.6 * np.exp(-((rows - 80) ** 2 + (cols - 80) ** 2) / (2 * 45.0**2))
    image = (0.05 + support + 0.6 * (labels > 0)).astype(np.float32)
    model = ThresholdModel()
    found = segment_image(image, model, SegmentSettings(polarity="bright", min_area_factor=0))
    assert found.max() == 3
    assert not (found > 0)[labels == 0].any()


def test_distance_smoothing_scales_with_the_particles(draw_discs):
    # One large particle (radius 30 px) whose predicted distance map has a valley across it, as
    # a lattice fringe makes it have, so its core falls in two: a fixed 2-px smoothing splits
    # it, smoothing by a fraction of the typical radius keeps it whole; a small particle
    # (radius 4 px) stays one whole instance.
    labels = draw_discs((96, 160), [(48, 48)], 30) + 2 * draw_discs((96, 160), [(48, 130)], 4)
    foreground = (labels > 0).astype(np.float32)
    distance = ndimage.distance_transform_edt(labels == 1)
    distance = distance / distance.max()
    cols = np.arange(160)[None, :]
    distance = distance * (1 - 0.7 * np.exp(-(((cols - 48) / 4) ** 2)))
    small = ndimage.distance_transform_edt(labels == 2)
    distance[labels == 2] = (small / small.max())[labels == 2]
    maps = {
        "foreground": foreground,
        "distance": distance.astype(np.float32),
        "boundary": np.zeros_like(foreground),
    }
    exact = {"min_area_factor": 0.0, "foreground_smooth_factor": 0.0}
    fixed = instances_from_maps(maps, SegmentSettings(distance_smooth_factor=0.0, **exact))
    relative = instances_from_maps(maps, SegmentSettings(distance_smooth_factor=0.3, **exact))
    assert len(np.unique(fixed[labels == 1])) >= 2
    assert len(np.unique(relative[labels == 1])) == 1
    assert (relative[labels == 2] > 0).all()
    assert relative.max() == 2


def test_foreground_smoothing_gives_a_ragged_rim_a_smooth_outline(draw_discs):
    # A 30-px particle whose predicted probability is ragged within 3 px of its rim, as the
    # network's is on textured carbon film: thresholded as it is, the outline is jagged;
    # smoothed over a fraction of the typical radius it is the disc again. A 4-px particle
    # beside it stays.
    labels = draw_discs((96, 160), [(48, 48)], 30) + 2 * draw_discs((96, 160), [(48, 130)], 4)
    large = labels == 1
    rim = ndimage.distance_transform_edt(large) + ndimage.distance_transform_edt(~large) < 3
    noise = np.random.default_rng(5).uniform(-0.6, 0.6, large.shape)
    foreground = np.clip((labels > 0) + np.where(rim, noise, 0.0), 0, 1).astype(np.float32)
    distance = ndimage.distance_transform_edt(labels > 0)
    maps = {
        "foreground": foreground,
        "distance": (distance / distance.max()).astype(np.float32),
        "boundary": np.zeros_like(foreground),
    }

    def solidity_and_iou(factor: float) -> tuple[float, float]:
        settings = SegmentSettings(foreground_smooth_factor=factor, min_area_factor=0.0)
        found = instances_from_maps(maps, settings)
        # Smoothing sized for the large one costs the small one at most its outer ring.
        assert found.max() == 2 and (found[labels == 2] > 0).mean() > 0.7
        large = found == found[48, 48]
        hull = convex_hull_image(large)
        return large.sum() / hull.sum(), (large & (labels == 1)).sum() / (
            large | (labels == 1)
        ).sum()

    ragged, smooth = solidity_and_iou(0.0), solidity_and_iou(0.07)
    assert smooth[0] > 0.98 > ragged[0]
    assert smooth[1] > ragged[1]


def test_test_time_augmentation_maps_every_view_back(draw_discs):
    labels = draw_discs((48, 64), [(12, 12), (30, 45)], 6)
    image = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    image[:3, :] = 0.9  # asymmetric, so a view mapped back wrongly would show
    model = ThresholdModel()
    plain = segment_image(image, model)
    augmented = segment_image(image, model, SegmentSettings(test_time_augment=True))
    assert len(model.seen) == 1 + 8
    assert {view.shape for view in model.seen} == {(48, 64), (64, 48)}
    np.testing.assert_array_equal(augmented > 0, plain > 0)
    assert augmented.max() == plain.max() == 2


class FringeModel(ThresholdModel):
    """Like ``ThresholdModel``, but at full size a 'lattice fringe' (a 3-px band of low
    particle probability) cuts every particle in two, as fringes of high-resolution images
    make the network do; images under 64 px (the halved view) come out whole."""

    def predict_maps(self, image: np.ndarray, tile: int = 1024) -> dict[str, np.ndarray]:
        maps = super().predict_maps(image, tile)
        if image.shape[0] >= 64:
            maps["foreground"][:, 47:50] *= 0.2
            distance = ndimage.distance_transform_edt(maps["foreground"] > 0.5)
            maps["distance"] = (distance / max(distance.max(), 1)).astype(np.float32)
        return maps


def test_maps_averaged_over_scales_mend_particles_split_at_full_size(draw_discs):
    labels = draw_discs((96, 96), [(48, 48)], 32)
    image = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    model = FringeModel()
    assert segment_image(image, model).max() == 2
    assert [view.shape for view in model.seen] == [(96, 96)]
    model = FringeModel()
    found = segment_image(image, model, SegmentSettings(scales=(1.0, 0.5)))
    assert [view.shape for view in model.seen] == [(96, 96), (48, 48)]
    assert found.max() == 1
    assert abs(int((found > 0).sum()) - int((labels > 0).sum())) < 0.05 * (labels > 0).sum()


def test_small_particles_are_not_halved(draw_discs):
    # Radius 5 px: halved it would be 2.5 px, under min_scaled_radius_px (6), so the image is
    # predicted once, at full size, and comes out as without scales.
    labels = draw_discs((80, 80), [(20, 20), (20, 60), (60, 40)], 5)
    image = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    model = ThresholdModel()
    found = segment_image(image, model, SegmentSettings(scales=(1.0, 0.5)))
    assert [view.shape for view in model.seen] == [(80, 80)]
    np.testing.assert_array_equal(found, segment_image(image, ThresholdModel()))
    model = ThresholdModel()
    segment_image(image, model, SegmentSettings(scales=(1.0, 0.5), min_scaled_radius_px=2))
    assert [view.shape for view in model.seen] == [(80, 80), (40, 40)]


def test_segment_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="polarity"):
        SegmentSettings(polarity="grey")
    with pytest.raises(ValueError, match="foreground_threshold"):
        SegmentSettings(foreground_threshold=1.5)
    with pytest.raises(ValueError, match="foreground_smooth_factor"):
        SegmentSettings(foreground_smooth_factor=-0.1)
    for scales in ((0.5,), (1.0, 2.0), (1.0, 0.0), 0.5, ("a",)):
        with pytest.raises(ValueError, match="scales"):
            SegmentSettings(scales=scales)
    assert SegmentSettings.from_mapping({"scales": [1, 0.5]}).scales == (1.0, 0.5)
    with pytest.raises(ValueError, match="unknown TEM segmentation setting 'colour'"):
        SegmentSettings.from_mapping({"colour": 1})


def test_evaluation_scores_only_the_held_out_images(msa_like):
    seen = []

    def perfect(image: np.ndarray) -> np.ndarray:
        seen.append(image.shape)
        return segment_image(image)

    metrics, table = evaluate_test_parts(
        {"msa_em": msa_like}, {"baseline": perfect}, Split(42, 0.5)
    )
    test = metrics["msa_em/test_images"]
    assert len(test) == 3 and len(seen) == 3 and sorted(table["name"]) == test
    assert metrics["msa_em/baseline/ap50"] == 1.0 and metrics["msa_em/baseline/n_true"] == 6
    assert metrics["split_seed"] == 42 and metrics["test_share"] == 0.5
    assert metrics["cv_folds"] == 0
    assert not any("model_minus_baseline" in key for key in metrics)


def test_evaluation_compares_model_and_baseline_image_by_image(msa_like, tmp_path):
    def one_missed(image: np.ndarray) -> np.ndarray:
        labels = segment_image(image)
        return np.where(labels == labels.max(), 0, labels)  # 1 of the 2 particles per image

    predictors = {"model": one_missed, "baseline": segment_image}
    metrics, _ = evaluate_test_parts({"msa_em": msa_like}, predictors, Split(42, 0.5))
    ap50 = {
        key: metrics[f"msa_em/model_minus_baseline/ap50/{key}"]
        for key in ("difference", "ci95_low", "ci95_high", "images")
    }
    assert ap50 == {"difference": -0.5, "ci95_low": -0.5, "ci95_high": -0.5, "images": 3}
    assert metrics["msa_em/model_minus_baseline/count_error/difference"] == 0.5
    figure = evaluation_figure(metrics, tmp_path / "evaluation.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"
    # The shape scores on simulated micrographs are neither a set nor a method of the bars.
    shapes = {"shapes/synthetic/seed": 3, "shapes/synthetic/model": {}}
    assert figure_sets_and_methods(metrics | shapes) == (["msa_em"], ["model", "baseline"])


def test_cli_evaluate_writes_metrics_table_and_figure(tmp_path, msa_like, capsys):
    out = tmp_path / "metrics.json"
    args = ["tem", "evaluate", "--set", f"msa_em={msa_like}", "--out", str(out)]
    extra = ["--per-image", str(tmp_path / "per_image.csv"), "--figure", str(tmp_path / "f.png")]
    assert main([*args, *extra]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["model"] is None and metrics["msa_em/baseline/ap50"] == 1.0
    assert metrics["environment"] == describe()  # the machine it was measured on
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    captured = capsys.readouterr()
    assert "msa_em/baseline/ap50: 1.000" in captured.out
    assert "msa_em (baseline)" in captured.err  # a progress bar per set and method
    assert not any(key.startswith("shapes/") for key in metrics)
    assert main([*args, "--no-progress"]) == 0
    assert "msa_em (baseline)" not in capsys.readouterr().err
    # The shape classes on simulated micrographs, with their figure, when asked.
    shapes = ["--shapes-per-class", "1", "--shapes-seed", "3", "--shapes-figure"]
    assert main([*args, *shapes, str(tmp_path / "shapes.png")]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["shapes/synthetic/seed"] == 3 and metrics["shapes/synthetic/per_class"] == 1
    assert 0 <= metrics["shapes/synthetic/baseline/accuracy"] <= 1
    assert (tmp_path / "shapes.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["tem", "evaluate", "--set", "nowhere=x", "--out", str(out)])
    assert "expected NAME=FOLDER" in capsys.readouterr().err


def test_cli_evaluate_set_segment_applies_to_its_set_only(tmp_path, msa_like, capsys):
    # The same images under two set names; one is told its particles are bright, which they
    # are not, so only that set loses its particles.
    out = tmp_path / "metrics.json"
    args = ["tem", "evaluate", "--set", f"msa_em={msa_like}", "--set", f"au_monolayer={msa_like}"]
    wrong = ["--set-segment", 'au_monolayer={"polarity": "bright"}', "--out", str(out)]
    assert main([*args, *wrong]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["msa_em/baseline/ap50"] == 1.0
    assert metrics["au_monolayer/baseline/ap50"] < 0.5
    capsys.readouterr()
    typo = ["--set-segment", 'stem_boxes={"polarity": "auto"}', "--out", str(out)]
    assert main([*args, *typo]) != 0
    assert "--set-segment names sets not given with --set: stem_boxes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--set-segment", "au_monolayer", "--out", str(out)])
    assert "expected NAME=JSON" in capsys.readouterr().err


def test_pooled_folds_score_every_training_image_once(msa_like):
    def one_missed(image: np.ndarray) -> np.ndarray:
        labels = segment_image(image)
        return np.where(labels == labels.max(), 0, labels)

    predictors = {"model": one_missed, "baseline": segment_image}
    folds = [
        evaluate_test_parts({"msa_em": msa_like}, predictors, Split(42, 0.5, 2, k)) for k in (1, 0)
    ]
    metrics, table = pool_folds([found for found, _ in folds], [rows for _, rows in folds])
    assert (
        metrics["msa_em/test_images"]
        == Split(42, 0.5).parts(path.stem for path in (msa_like / "images").iterdir())["train"]
    )
    assert metrics["cv_folds"] == 2 and metrics["cv_fold"] is None
    assert metrics["msa_em/baseline/n_true"] == 6 and metrics["msa_em/model/n_pred"] == 3
    assert metrics["msa_em/model_minus_baseline/ap50/images"] == 3
    assert metrics["msa_em/model_minus_baseline/ap50/difference"] == -0.5
    assert sorted(table["fold"]) == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="once each"):
        pool_folds([folds[0][0], folds[0][0]], [folds[0][1], folds[0][1]])
    other = {**folds[1][0], "split_seed": 7}
    with pytest.raises(ValueError, match="different splits"):
        pool_folds([folds[0][0], other], [folds[0][1], folds[1][1]])


def test_cli_pool_reads_fold_folders(tmp_path, msa_like, capsys):
    for fold in range(2):
        out = tmp_path / f"fold{fold}"
        args = ["tem", "evaluate", "--set", f"msa_em={msa_like}", "--cv-folds", "2"]
        args += ["--cv-fold", str(fold), "--out", str(out / "metrics.json")]
        assert main([*args, "--per-image", str(out / "per_image.csv")]) == 0
    pooled = tmp_path / "cv" / "metrics.json"
    folders = [str(tmp_path / "fold0"), str(tmp_path / "fold1")]
    command = ["tem", "pool", *folders, "--out", str(pooled), "--figure", str(tmp_path / "cv.png")]
    assert main(command) == 0
    metrics = json.loads(pooled.read_text())
    assert len(metrics["msa_em/test_images"]) == 3 and metrics["msa_em/baseline/ap50"] == 1.0
    # Each fold's machine, as its metrics recorded it.
    folds = [json.loads((tmp_path / f"fold{k}" / "metrics.json").read_text()) for k in (0, 1)]
    assert metrics["cv_environments"] == [fold["environment"] for fold in folds]
    assert (tmp_path / "cv.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="fold2: not a scored fold"):
        main(["tem", "pool", *folders, str(tmp_path / "fold2"), "--out", str(pooled)])
