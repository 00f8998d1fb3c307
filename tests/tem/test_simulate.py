from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage import io
from skimage.feature import peak_local_max

from nanoxtal.cli import main
from nanoxtal.tem.simulate import (
    SHAPE_CLASSES,
    MicrographSettings,
    scale_bar_length,
    shape_mask,
    simulate_batch,
    simulate_micrograph,
    text_bitmap,
)

SHAPES_FILE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "recipes" / "shape_classes.txt"
)
# Small, fast images: 256 px at 0.5 nm/px with 15 nm particles (30 px across).
SMALL = {"width_px": 256, "height_px": 256}
SIZE = 60.0
R = SIZE / 2
RHOMBUS, RECTANGLE, ROD = 1.7, 1.6, 3.0
EXPECTED_AREA = {
    "sphere": math.pi * R**2,
    "cube": SIZE**2 / 2,  # a square inscribed in the circle: side SIZE/√2
    "hexagon": 3 * math.sqrt(3) / 2 * R**2,
    "triangle": 3 * math.sqrt(3) / 4 * R**2,
    "rectangle": SIZE**2 * RECTANGLE / (1 + RECTANGLE**2),  # diagonal SIZE, sides w·h
    "rod": (SIZE - SIZE / ROD) * SIZE / ROD + math.pi * (SIZE / ROD / 2) ** 2,  # w·h + caps
    "rhombus": SIZE * (SIZE / RHOMBUS) / 2,  # half the product of the diagonals
    "four-pointed star": 4 * R * (0.42 * R) * math.sin(math.pi / 4),  # n·R·r·sin(π/n)
    "six-pointed star": math.sqrt(3) * R**2,  # the hexagram
}


def settings(**changes) -> MicrographSettings:
    return MicrographSettings(**(SMALL | changes))


def test_shape_classes_are_those_of_the_recipe_data():
    if not SHAPES_FILE.is_file():
        pytest.skip(f"{SHAPES_FILE} not present")
    names = [line.strip() for line in SHAPES_FILE.read_text().splitlines() if line.strip()]
    assert list(SHAPE_CLASSES) == names


@pytest.mark.parametrize("shape", SHAPE_CLASSES)
def test_shape_mask_area(shape):
    aspect = {"rhombus": RHOMBUS, "rectangle": RECTANGLE, "rod": ROD}.get(shape, 1.0)
    mask = shape_mask(shape, SIZE, aspect, rotation_deg=17.0, rng=3)
    area = mask.sum()
    if shape in EXPECTED_AREA:
        assert area == pytest.approx(EXPECTED_AREA[shape], rel=0.1)
    else:  # flower and irregular: random outlines within the circumscribed circle
        assert 0.3 * math.pi * R**2 < area < math.pi * R**2
    rows, cols = np.nonzero(mask)
    centre = (mask.shape[0] - 1) / 2
    assert np.hypot(rows - centre, cols - centre).max() <= R + 1


def test_unknown_shape_raises():
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("dodecahedron", 20)


def test_seeded_and_independent_of_batch_size():
    first = simulate_micrograph(settings(), 7)
    again = simulate_micrograph(settings(), 7)
    other = simulate_micrograph(settings(), 8)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.instances, again.instances)
    pd.testing.assert_frame_equal(first.particles, again.particles)
    assert not np.array_equal(first.image, other.image)

    short = list(simulate_batch(settings(), 2, seed=5))
    long = list(simulate_batch(settings(), 3, seed=5))
    shard = list(simulate_batch(settings(), 1, seed=5, start=1))
    assert np.array_equal(short[1].image, long[1].image)
    assert np.array_equal(short[1].image, shard[0].image)
    assert not np.array_equal(long[0].image, long[1].image)


@pytest.fixture(scope="module")
def crowded():
    """Every shape, touching and overlapping particles, with a scale bar."""
    return simulate_micrograph(
        settings(coverage=0.3, touching_probability=0.4, overlap_probability=0.2), 11
    )


def test_instances_match_the_particle_table(crowded):
    table, instances = crowded.particles, crowded.instances
    assert instances.dtype == np.int32
    assert set(np.unique(instances)) - {0} == set(table["id"])
    assert list(table["id"]) == list(range(1, len(table) + 1))
    assert set(table["shape"]) <= set(SHAPE_CLASSES)
    assert table["overlaps"].any() and (table["placement"] == "touching").any()
    for row in table.itertuples():
        own = instances == row.id
        full = crowded.full_mask(row.id)
        assert not (own & ~full).any()  # its visible pixels lie within its own outline
        assert own.sum() == row.visible_px
        assert crowded.masks[row.id - 1].mask.sum() == row.area_px
        if not row.occluded:
            assert np.array_equal(own, full)


def test_equivalent_diameters_match_areas():
    micrograph = simulate_micrograph(
        settings(diameter_nm=16.0, coverage=0.3, overlap_probability=0.0), 2
    )
    table = micrograph.particles
    clean = table[~table["overlaps"] & ~table["occluded"] & ~table["touches_border"]]
    assert len(clean) >= 5
    measured = np.sqrt(4 * clean["visible_px"] / np.pi) * micrograph.nm_per_px
    np.testing.assert_allclose(measured, clean["diameter_nm"], rtol=0.05)


def test_particles_are_darker_than_the_background(crowded):
    inside = crowded.instances > 0
    film = ~inside
    if crowded.scale_bar is not None:
        r0, c0, r1, c1 = crowded.scale_bar.text[0], 0, crowded.scale_bar.bar[2], 256
        film[r0:r1, c0:c1] = False
    assert crowded.image[inside].mean() < crowded.image[film].mean() - 20


def flat_relative_noise(dose: float) -> float:
    flat = settings(
        count=0,
        dose_e_per_px=dose,
        film_texture=0.0,
        film_undulation=0.0,
        illumination_gradient=0.0,
        scale_bar=False,
        bits=16,
    )
    image = simulate_micrograph(flat, 0).image.astype(float)
    return image.std() / image.mean()


def test_shot_noise_falls_with_dose():
    low, high = flat_relative_noise(25), flat_relative_noise(2500)
    assert high < low
    assert low == pytest.approx(1 / math.sqrt(25), rel=0.1)
    assert high == pytest.approx(1 / math.sqrt(2500), rel=0.1)


@pytest.mark.parametrize(("bits", "dtype"), [(8, np.uint8), (16, np.uint16)])
def test_bit_depth(bits, dtype):
    image = simulate_micrograph(settings(bits=bits, scale_bar=False), 1).image
    assert image.dtype == dtype
    assert image.shape == (256, 256)
    assert 0.4 * 2**bits < np.median(image) < 0.9 * 2**bits  # background near 68 % of full


@pytest.mark.parametrize(("nm_per_px", "dark"), [(0.5, True), (0.37, False), (2.0, True)])
def test_scale_bar(nm_per_px, dark):
    micrograph = simulate_micrograph(settings(nm_per_px=nm_per_px, scale_bar_dark=dark), 4)
    bar = micrograph.scale_bar
    assert bar.label == f"{bar.length_nm:g} nm"
    assert abs(bar.length_px - bar.length_nm / nm_per_px) <= 1
    assert 0.1 <= bar.length_px / 256 <= 0.2
    r0, c0, r1, c1 = bar.bar
    assert c1 - c0 == bar.length_px
    value = 0 if dark else 255
    assert (micrograph.image[r0:r1, c0:c1] == value).all()
    assert (micrograph.instances[r0:r1, c0:c1] == 0).all()
    t0, u0, t1, u1 = bar.text
    glyphs = text_bitmap(bar.label, (t1 - t0) // 7)
    assert glyphs.shape == (t1 - t0, u1 - u0)
    assert (micrograph.image[t0:t1, u0:u1][glyphs] == value).all()
    assert (micrograph.instances[t0:t1, u0:u1][glyphs] == 0).all()


def test_scale_bar_lengths_are_round():
    assert scale_bar_length(1024, 0.5) == 100
    assert scale_bar_length(1002, 0.25) == 50  # 200 px: 20 nm would be 80 px, 8 %
    with pytest.raises(ValueError, match="no glyphs"):
        text_bitmap("5 µm")


def test_touches_border_flags():
    micrograph = simulate_micrograph(
        settings(coverage=0.3, overlap_probability=0.0, scale_bar=False), 5
    )
    instances = micrograph.instances
    edge = np.concatenate([instances[0], instances[-1], instances[:, 0], instances[:, -1]])
    flagged = set(micrograph.particles.loc[micrograph.particles["touches_border"], "id"])
    assert flagged == set(np.unique(edge)) - {0}
    assert flagged


def test_edge_overhang_lets_the_image_edge_cut_slivers():
    def visible_shares(overhang: float) -> np.ndarray:
        chosen = settings(
            coverage=0.3,
            overlap_probability=0.0,
            touching_probability=0.0,
            shape_weights={"sphere": 1.0},
            edge_overhang=overhang,
            scale_bar=False,
        )
        table = simulate_micrograph(chosen, 5).particles
        cut = table[table["touches_border"]]
        return (cut["visible_px"] / cut["area_px"]).to_numpy()

    # Centres inside the image: a disc cut by the edge keeps about half of itself (a quarter
    # in a corner).
    assert visible_shares(0.0).min() > 0.2
    slivers = visible_shares(1.0)
    assert (slivers < 0.2).sum() >= 3 and (slivers > 0).all()
    with pytest.raises(ValueError, match="edge_overhang"):
        MicrographSettings(edge_overhang=1.5)


def test_monolayer_packs_without_overlaps():
    micrograph = simulate_micrograph(
        settings(monolayer=True, shape_weights={"sphere": 1.0}, diameter_nm=6.0), 3
    )
    table = micrograph.particles
    assert len(table) > 100
    assert (table["placement"] == "monolayer").all()
    assert not table["overlaps"].any()


def support_depth(**changes) -> np.ndarray:
    """Optical depth a support adds to an empty, noiseless, fringe-free micrograph."""
    plain = {
        "count": 0,
        "dose_e_per_px": None,
        "film_texture": 0.0,
        "film_undulation": 0.0,
        "illumination_gradient": 0.0,
        "fresnel_fringe": 0.0,
        "scale_bar": False,
        "bits": 16,
    }
    bare = simulate_micrograph(settings(**plain), 3).image.astype(float)
    supported = simulate_micrograph(settings(**plain, **changes), 3).image.astype(float)
    return np.log(bare / np.maximum(supported, 1))


def count_lumps(depth: np.ndarray) -> int:
    return len(peak_local_max(depth, min_distance=2, threshold_abs=0.05))


def test_granular_support_covers_its_share_with_grain_sized_lumps():
    sparse = support_depth(support_depth=0.3, support_grain_nm=5.0, support_coverage=0.3)
    fine = support_depth(support_depth=0.3, support_grain_nm=5.0, support_coverage=0.8)
    coarse = support_depth(support_depth=0.3, support_grain_nm=20.0, support_coverage=0.8)
    assert fine.min() > -1e-3  # a support only absorbs
    assert 0.2 < (sparse > 0.01).mean() < 0.4
    assert 0.6 < (fine > 0.01).mean() < 0.9
    assert fine[fine > 0.01].mean() == pytest.approx(0.3, rel=0.25)
    # 4× smaller grains: about 16× more lumps on the same area
    assert count_lumps(fine) > 5 * count_lumps(coarse)


def test_no_support_draws_no_random_numbers():
    # the teachers trained before supports existed stay reproducible
    plain = simulate_micrograph(settings(), 7).image
    unused = simulate_micrograph(settings(support_grain_nm=5.0, support_coverage=1.0), 7).image
    np.testing.assert_array_equal(plain, unused)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="support_coverage"):
        MicrographSettings(support_coverage=1.5)
    with pytest.raises(ValueError, match="unknown micrograph setting"):
        MicrographSettings.from_mapping({"nm_per_pixel": 1.0})
    with pytest.raises(ValueError, match="bits"):
        MicrographSettings(bits=12)
    with pytest.raises(ValueError, match="shape classes"):
        MicrographSettings(shape_weights={"sphere": 1.0, "blob": 1.0})
    assert MicrographSettings.from_mapping({"bits": 16}).bits == 16


def test_cli_writes_micrographs(tmp_path):
    out = tmp_path / "synthetic"
    args = ["tem", "simulate", "--out", str(out), "--count", "2", "--seed", "9", "--size", "128"]
    assert main([*args, "--no-progress", "--settings", '{"nm_per_px": 0.25}']) == 0
    expected = list(simulate_batch(settings(width_px=128, height_px=128, nm_per_px=0.25), 2, 9))
    for index, micrograph in enumerate(expected):
        name = f"synthetic_{index:05d}"
        assert np.array_equal(io.imread(out / f"{name}.png"), micrograph.image)
        labels = io.imread(out / f"{name}_instances.png")
        assert labels.dtype == np.uint16
        assert np.array_equal(labels, micrograph.instances)
        table = pd.read_csv(out / f"{name}_particles.csv")
        assert list(table["id"]) == list(micrograph.particles["id"])
        metadata = json.loads((out / f"{name}.json").read_text())
        assert metadata["nm_per_px"] == 0.25
        assert metadata["scale_bar"]["length_px"] == micrograph.scale_bar.length_px
    assert not list(out.glob(".*"))  # no partial files left behind

    assert main([*args, "--bits", "16", "--count", "1", "--no-progress", "--prefix", "b_"]) == 0
    assert tifffile.imread(out / "b_00000.tif").dtype == np.uint16
    assert main([*args, "--no-progress", "--settings", '{"bogus": 1}']) == 1
