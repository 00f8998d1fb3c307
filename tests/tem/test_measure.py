from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage import draw, io, measure

from nanoxtal.tem.measure import (
    FEATURES,
    PROBABILITY_COLUMNS,
    SHAPE_EVIDENCE_FLOOR,
    ShapeClassifier,
    classify_shapes,
    dominant_shape,
    measure_particles,
    overlay,
    segmentation_like,
    segmented_shapes,
    shape_classifier,
    shape_support,
    size_histogram,
    summarise_image,
    summarise_sample,
    synthetic_shapes,
)
from nanoxtal.tem.segmentation import segment_image
from nanoxtal.tem.simulate import (
    SHAPE_CLASSES,
    MicrographSettings,
    image_rng,
    shape_mask,
    simulate_micrograph,
)

# Held-out accuracy of the shape classifier on simulated outlines degraded like segmentations
# (8–200 px, ``segmentation_like``); measured 0.75 with 40 particles per class (every class
# 0.55–0.98; 0.78 before the classical baseline's outlines joined the training set). Exact
# polygon outlines alone gave 0.94, but 0.27 on the exact particles of simulated micrographs
# (``evaluate_synthetic_shapes``, ``truth``).
MIN_SHAPE_ACCURACY = 0.72


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[draw.disk(centre, radius, shape=shape)] = True
    return mask


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    labels = np.zeros((200, 240), dtype=np.int32)
    labels[disc(labels.shape, (60, 60), 20.5)] = 3
    labels[120:130, 40:70] = 7  # 10 × 30 px rectangle
    labels[0:12, 200:212] = 9  # cut by the top edge
    return labels


def test_disc_rectangle_and_border(scene):
    table = measure_particles(scene, None).set_index("particle_id")
    assert list(table.index) == [3, 7, 9]  # ids kept, gaps allowed
    circle = table.loc[3]
    assert circle["diameter_px"] == pytest.approx(41, abs=1)
    assert circle["feret_max_px"] == pytest.approx(41, abs=1)
    assert circle["feret_min_px"] == pytest.approx(41, abs=1)
    assert circle["circularity"] > 0.9
    assert circle["solidity"] > 0.95
    assert (circle["centroid_row"], circle["centroid_col"]) == pytest.approx((60, 60), abs=0.01)
    rectangle = table.loc[7]
    assert rectangle["area_px"] == 300
    assert rectangle["feret_min_px"] == pytest.approx(10)
    assert rectangle["feret_max_px"] == pytest.approx(math.hypot(10, 30))
    assert rectangle["aspect_ratio"] == pytest.approx(math.hypot(10, 30) / 10)
    assert rectangle["solidity"] == pytest.approx(1.0)
    assert table["touches_border"].tolist() == [False, False, True]
    assert set(table["shape"]) <= set(SHAPE_CLASSES)
    assert "diameter_nm" not in table.columns


def test_matches_skimage_area_centroid_perimeter():
    rng = np.random.default_rng(0)
    labels = np.zeros((300, 300), dtype=np.int32)
    for number, shape in enumerate(("triangle", "six-pointed star", "flower shape"), start=1):
        mask = shape_mask(shape, 60, 1.0, rng.uniform(0, 360), rng)
        window = labels[number * 80 - 60 : number * 80 - 60 + mask.shape[0], 100:][
            :, : mask.shape[1]
        ]
        window[mask] = number
    ours = measure_particles(labels, None)
    theirs = pd.DataFrame(
        measure.regionprops_table(labels, properties=("label", "area", "centroid", "perimeter"))
    )
    assert ours["area_px"].tolist() == theirs["area"].tolist()
    assert ours["centroid_row"].to_numpy() == pytest.approx(theirs["centroid-0"].to_numpy())
    assert ours["centroid_col"].to_numpy() == pytest.approx(theirs["centroid-1"].to_numpy())
    perimeter = theirs["perimeter"].to_numpy()
    circularity = np.minimum(4 * np.pi * theirs["area"].to_numpy() / perimeter**2, 1)
    assert ours["circularity"].to_numpy() == pytest.approx(circularity)


def test_nm_columns_and_summary(scene):
    table = measure_particles(scene, 0.5)
    assert table["diameter_nm"].to_numpy() == pytest.approx(0.5 * table["diameter_px"])
    assert table["area_nm2"].to_numpy() == pytest.approx(0.25 * table["area_px"])
    assert table["feret_max_nm"].to_numpy() == pytest.approx(0.5 * table["feret_max_px"])
    summary = summarise_image(table)
    assert summary["count"] == 3
    assert summary["count_measured"] == 2  # the edge particle is not measured
    measured = table.loc[~table["touches_border"], "diameter_nm"]
    assert summary["mean_diameter"] == pytest.approx(measured.mean())
    assert summary["std_diameter"] == pytest.approx(measured.std(ddof=1))
    assert summary["size_distribution_pct"] == pytest.approx(
        100 * measured.std(ddof=1) / measured.mean()
    )
    assert summary["diameter_unit"] == "nm"
    assert summary["dominant_shape"] in SHAPE_CLASSES
    shapes = table.loc[~table["touches_border"], "shape"]
    assert summary["dominant_shape_share"] == pytest.approx(
        (shapes == summary["dominant_shape"]).mean()
    )
    # The class probabilities: one column per class, summing to 1, the largest the class.
    probabilities = table[list(PROBABILITY_COLUMNS)].to_numpy()
    assert list(table.columns[-len(SHAPE_CLASSES) :]) == list(PROBABILITY_COLUMNS)
    assert probabilities.sum(axis=1) == pytest.approx(1)
    assert table["shape"].tolist() == [SHAPE_CLASSES[i] for i in probabilities.argmax(axis=1)]


def test_sample_pools_particles_not_image_means(draw_discs):
    one = draw_discs((64, 64), [(32, 32)], 5)  # a single 10-px particle
    three = draw_discs((64, 64), [(15, 15), (15, 45), (45, 30)], 10)  # three of 20 px
    tables = [
        measure_particles(one, 1.0),
        measure_particles(three, 1.0),
        measure_particles(np.zeros((8, 8), dtype=np.int32), 1.0),
    ]
    sample = summarise_sample(tables)
    pooled = np.concatenate([table["diameter_nm"].to_numpy() for table in tables])
    assert sample["count_measured"] == 4 and sample["diameter_unit"] == "nm"
    assert sample["mean_diameter"] == pytest.approx(pooled.mean())
    assert sample["std_diameter"] == pytest.approx(pooled.std(ddof=1))
    means = [summarise_image(table)["mean_diameter"] for table in tables[:2]]
    assert abs(sample["mean_diameter"] - np.mean(means)) > 2  # 17.6 nm, not 15.1 nm
    in_px = summarise_sample([measure_particles(three, None)])
    assert in_px["diameter_unit"] == "px"
    with pytest.raises(ValueError, match="1 of 2 images have no pixel size"):
        summarise_sample([tables[0], measure_particles(three, None)])
    with pytest.raises(ValueError, match="no measured image"):
        summarise_sample([])


def test_empty_and_invalid_input():
    empty = measure_particles(np.zeros((20, 20), dtype=np.int32), 1.0)
    assert empty.empty and "diameter_nm" in empty.columns
    summary = summarise_image(empty)
    assert summary["count"] == 0 and math.isnan(summary["mean_diameter"])
    assert summary["dominant_shape"] is None and math.isnan(summary["dominant_shape_share"])
    with pytest.raises(ValueError, match="nm_per_px"):
        measure_particles(np.ones((4, 4), dtype=np.int32), -1.0)
    with pytest.raises(ValueError, match="integers"):
        measure_particles(np.ones((4, 4)), None)
    with pytest.raises(ValueError, match="shape"):
        measure_particles(np.ones((4, 4), dtype=np.int32), None, image=np.ones((3, 3)))


def test_mean_intensity(scene):
    image = np.where(scene == 3, 0.2, 0.8)
    table = measure_particles(scene, None, image=image).set_index("particle_id")
    assert table.loc[3, "mean_intensity"] == pytest.approx(0.2)
    assert table.loc[7, "mean_intensity"] == pytest.approx(0.8)


def test_shape_classifier_held_out_accuracy():
    features, truth = synthetic_shapes(per_class=40, seed=12345)
    assert features.shape == (40 * len(SHAPE_CLASSES), len(FEATURES))
    predicted = shape_classifier().predict(features)
    accuracy = float((predicted == truth).mean())
    assert accuracy >= MIN_SHAPE_ACCURACY, accuracy
    # Every class is recognised most of the time.
    for index in range(len(SHAPE_CLASSES)):
        assert (predicted[truth == index] == index).mean() >= 0.45, SHAPE_CLASSES[index]


@pytest.mark.parametrize("shape", ["sphere", "cube", "triangle"])
def test_segmented_micrograph_particles_keep_their_class(shape):
    # Particles of a simulated micrograph outlined by the classical baseline: rough, pixelated
    # outlines. A classifier fitted on exact polygons called 0 % of these spheres spheres.
    settings = MicrographSettings(
        width_px=384,
        height_px=384,
        nm_per_px=0.5,
        diameter_nm=14.0,
        shape_weights={shape: 1.0},
        coverage=0.15,
        scale_bar=False,
    )
    micrograph = simulate_micrograph(settings, 5)
    labels = segment_image(micrograph.image)
    table = measure_particles(labels, None)
    measured = table[~table["touches_border"]]
    assert len(measured) >= 10
    assert summarise_image(table)["dominant_shape"] == shape
    assert (measured["shape"] == shape).mean() >= 0.4


def evidence(**probabilities: float) -> np.ndarray:
    """Class probabilities: the named classes' (underscores for spaces), the rest shared."""
    row = np.zeros(len(SHAPE_CLASSES))
    for name, value in probabilities.items():
        row[SHAPE_CLASSES.index(name.replace("_", " "))] = value
    rest = row == 0
    row[rest] = (1 - row.sum()) / rest.sum()
    return row


def particle_table(rows: list[np.ndarray], edge: list[bool] | None = None) -> pd.DataFrame:
    """A particle table of these class probabilities (``shape`` the most probable)."""
    probabilities = np.array(rows)
    table = pd.DataFrame(
        {
            "touches_border": edge or [False] * len(rows),
            "shape": np.array(SHAPE_CLASSES, dtype=object)[probabilities.argmax(axis=1)],
        }
    )
    for name, column in zip(PROBABILITY_COLUMNS, probabilities.T, strict=True):
        table[name] = column
    return table


def test_dominant_shape_pools_evidence_where_votes_fail():
    # Three pieces of rods a segmentation cut across: "rectangle" by a hair, "rod" a close
    # second; two whole rods, sure. Votes say rectangle 3 : 2; the pooled evidence says rod.
    pieces = [evidence(rectangle=0.5, rod=0.45)] * 3
    whole = [evidence(rod=0.9, rectangle=0.02)] * 2
    cut = [evidence(cube=0.99)]  # touching the edge: not measured, not counted
    table = particle_table(pieces + whole + cut, edge=[False] * 5 + [True])
    assert dominant_shape(table) == ("rod", pytest.approx(0.4))
    summary = summarise_image(table.assign(diameter_px=10.0))
    assert summary["dominant_shape"] == "rod" and summary["dominant_shape_share"] == 0.4
    # Every measured particle finds "rod" about as likely as its own class: a clear rod
    # sample, which "rectangle" is not (the whole rods give it 0.02 against 0.9).
    assert summary["dominant_shape_support"] == 1.0
    assert shape_support(table, "rectangle") == pytest.approx(0.6)
    # A mixture: each particle sure of its own class, so each class is supported by its half.
    mixture = particle_table([evidence(cube=0.95)] * 4 + [evidence(sphere=0.95)] * 4)
    assert shape_support(mixture, "cube") == shape_support(mixture, "sphere") == 0.5
    assert summarise_image(mixture.assign(diameter_px=10.0))["dominant_shape_support"] == 0.5
    # Without the probabilities (a table from elsewhere): the majority of the classes.
    votes = table.drop(columns=list(PROBABILITY_COLUMNS))
    assert dominant_shape(votes) == ("rectangle", pytest.approx(0.6))
    # Pooled over a sample's images like its sizes.
    sample = summarise_sample([table.assign(diameter_px=10.0)] * 2)
    assert sample["dominant_shape"] == "rod" and sample["count_measured"] == 10


def test_one_odd_particle_cannot_veto_the_sample():
    # Three cubes, fairly sure; one particle that is certainly no cube (a speck, two merged).
    cubes = [evidence(cube=0.6, triangle=1e-3)] * 3
    odd = evidence(triangle=0.999, cube=1e-12)
    table = particle_table([*cubes, odd])
    assert dominant_shape(table)[0] == "cube"
    # Unfloored, the odd particle's 1e-12 outweighs the three cubes.
    scores = np.log(table[list(PROBABILITY_COLUMNS)].to_numpy()).sum(axis=0)
    assert SHAPE_CLASSES[scores.argmax()] != "cube" and SHAPE_EVIDENCE_FLOOR > 1e-3
    # Only particles cut by the edge: no shape.
    shape, share = dominant_shape(particle_table([odd], edge=[True]))
    assert shape is None and math.isnan(share)


def sample_micrograph(shape: str, diameter_px: float, side: int, seed: int, index: int):
    settings = MicrographSettings(
        width_px=side,
        height_px=side,
        nm_per_px=0.5,
        diameter_nm=0.5 * diameter_px,
        shape_weights={shape: 1.0},
        scale_bar=False,
    )
    return simulate_micrograph(settings, image_rng(seed, index))


def test_dominant_shape_of_classical_outlines_at_40_px():
    # One sample per class, ~15 measured particles of 40 px each, outlined by the classical
    # baseline; benchmarks/tem_shapes.py scores 20 per class and size. Seed 7 is neither its
    # development (2025) nor its evaluation seed (2026). Before the classifier learnt the
    # baseline's outlines and pooled the evidence: 96 % of such samples right, rods 70 %.
    wrong = []
    for index, shape in enumerate(SHAPE_CLASSES):
        micrograph = sample_micrograph(shape, 40, 400, 7, index)
        table = measure_particles(segment_image(micrograph.image), None)
        found = summarise_sample([table])["dominant_shape"]
        if found != shape:
            wrong.append((shape, found))
    assert len(wrong) <= 1, wrong


def test_rod_cut_in_pieces_is_still_a_rod_sample():
    # The classical watershed cuts 80-px rods across into two or three pieces, which the
    # classifier fitted on whole outlines called mostly rectangles and rhombi: 1 of 20 rod
    # samples right (benchmark, seed 2026); this micrograph with seeds 7–12 was never right.
    micrograph = sample_micrograph("rod", 80, 640, 7, 0)
    table = measure_particles(segment_image(micrograph.image), None)
    assert summarise_sample([table])["dominant_shape"] == "rod"


def test_segmented_shapes_and_mixture_classifier():
    features, classes = segmented_shapes(4, seed=3)
    assert features.shape == (len(classes), len(FEATURES)) and len(classes) > 20
    assert np.isfinite(features).all() and set(classes) <= set(range(len(SHAPE_CLASSES)))
    drawn, drawn_classes = synthetic_shapes(per_class=20, seed=3)
    # One Gaussian per class and source; classes and sources need not be balanced.
    both = ShapeClassifier().fit(
        np.vstack([drawn, drawn + 0.01]),
        np.concatenate([drawn_classes, drawn_classes]),
        np.repeat([0, 1], len(drawn)),
    )
    assert len(both.means) == 2 * len(SHAPE_CLASSES)
    probabilities = both.probabilities(drawn)
    assert probabilities.shape == (len(drawn), len(SHAPE_CLASSES))
    assert probabilities.sum(axis=1) == pytest.approx(1)
    assert (probabilities.argmax(axis=1) == both.predict(drawn)).all()
    assert both.probabilities(drawn[:0]).shape == (0, len(SHAPE_CLASSES))
    odd = np.full((1, len(FEATURES)), np.nan)
    assert both.probabilities(odd) == pytest.approx(np.full((1, len(SHAPE_CLASSES)), 1 / 11))
    with pytest.raises(ValueError, match="too few training outlines of cube"):
        ShapeClassifier().fit(drawn[drawn_classes != 1], drawn_classes[drawn_classes != 1])


def test_segmentation_like_roughens_but_keeps_the_particle():
    rng = np.random.default_rng(0)
    square = shape_mask("cube", 40)
    rough = [segmentation_like(square, 40, rng) for _ in range(20)]
    areas = np.array([mask.sum() for mask in rough])
    assert np.all(np.abs(areas / square.sum() - 1) < 0.35)
    assert all(ndimage.label(mask)[1] == 1 for mask in rough)
    # Random: no two draws give the same outline.
    assert len({mask.tobytes() for mask in rough}) == len(rough)


def test_classify_clean_shapes():
    labels = np.zeros((120, 400), dtype=np.int32)
    shapes = ("triangle", "hexagon", "rod", "sphere")
    for number, shape in enumerate(shapes, start=1):
        mask = shape_mask(shape, 60, 3.5 if shape == "rod" else 1.0, 17.0 * number)
        labels[10 : 10 + mask.shape[0], number * 90 - 80 : number * 90 - 80 + mask.shape[1]][
            mask
        ] = number
    assert classify_shapes(labels).tolist() == list(shapes)


def test_overlay_and_histogram(scene, tmp_path):
    image = np.where(scene > 0, 0.3, 0.7).astype(np.float32)
    table = measure_particles(scene, 0.5)
    rgb = overlay(image, scene, table)
    assert rgb.shape == (*scene.shape, 3) and rgb.dtype == np.uint8
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert (0, 220, 255) in colours  # measured outline
    assert (255, 60, 60) in colours  # edge particle
    assert (255, 230, 0) in colours  # ids
    path = size_histogram(table, tmp_path / "hist.png", "test")
    assert io.imread(path).ndim == 3
