from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import io

from nanoxtal.cli import main
from nanoxtal.tem.simulate import MicrographSettings, simulate_micrograph, write_micrograph

pytestmark = pytest.mark.usefixtures("outside_repository")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A PNG with its sidecar, a 16-bit TIFF, a JPEG (no pixel size) and a corrupt PNG."""
    folder = tmp_path_factory.mktemp("images")
    settings = MicrographSettings(width_px=256, height_px=256, nm_per_px=1.0, diameter_nm=14)
    png = write_micrograph(simulate_micrograph(settings, 1), folder, "sim_png")["image"]
    tif = write_micrograph(
        simulate_micrograph(MicrographSettings(**{**vars(settings), "bits": 16}), 2),
        folder,
        "sim_tif",
    )["image"]
    jpeg = folder / "plain.jpg"
    micrograph = simulate_micrograph(
        MicrographSettings(**{**vars(settings), "scale_bar": False}), 3
    )
    io.imsave(jpeg, micrograph.image, check_contrast=False)
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return {"png": png, "tif": tif, "jpeg": jpeg, "bad": bad, "folder": folder}


def test_measure_batch_with_a_corrupt_file(images, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["tem", "measure", str(images["folder"]), "--out", str(out), "--no-progress"])
    assert status == 1  # one image failed
    captured = capsys.readouterr()
    assert "classical baseline" in captured.out
    assert "broken.png" in captured.err
    summary = pd.read_csv(out / "summary.csv")
    names = [name.rsplit("/", 1)[-1] for name in summary["image"]]
    # The simulator's *_instances.png label images are not taken for micrographs.
    assert sorted(names) == ["broken.png", "plain.jpg", "sim_png.png", "sim_tif.tif"]
    rows = summary.set_index(pd.Series(names))
    assert "not a readable PNG" in rows.loc["broken.png", "error"]
    assert rows.loc["sim_png.png", "pixel_size_source"] == "sidecar"
    assert rows.loc["sim_tif.tif", "pixel_size_source"] == "sidecar"
    assert rows.loc["plain.jpg", "pixel_size_source"] == "none"
    assert rows.loc["plain.jpg", "diameter_unit"] == "px"
    assert rows.loc["sim_png.png", "diameter_unit"] == "nm"
    # 14 nm particles at 1 nm/px.
    assert rows.loc["sim_png.png", "mean_diameter"] == pytest.approx(14, rel=0.25)
    assert rows.loc["sim_png.png", "count_measured"] > 5
    assert 0 < rows.loc["sim_png.png", "dominant_shape_share"] <= 1
    particles = pd.read_csv(out / "particles.csv")
    assert set(particles["image"].str.rsplit("/", n=1).str[-1]) == {
        "plain.jpg",
        "sim_png.png",
        "sim_tif.tif",
    }
    for stem in ("sim_png", "sim_tif", "plain"):
        mask = io.imread(out / "masks" / f"{stem}.png")
        assert mask.dtype == np.uint16 and mask.max() > 0
        assert io.imread(out / "overlays" / f"{stem}.png").shape == (256, 256, 3)
        assert (out / "histograms" / f"{stem}.png").is_file()
    assert not (out / "masks" / "broken.png").exists()
    # One folder, one sample; its JPEG has no pixel size, so nm and px cannot be pooled.
    assert set(summary["sample"]) == {images["folder"].name}
    sample = pd.read_csv(out / "samples.csv").iloc[0]
    assert (sample["sample"], sample["images"], sample["images_failed"]) == (
        images["folder"].name,
        4,
        1,
    )
    assert "1 of 3 images have no pixel size" in sample["error"]
    # No scale-bar pixels among the particles.
    micrograph_mask = io.imread(out / "masks" / "sim_png.png")
    image = io.imread(images["png"])
    assert not ((image == 0) & (micrograph_mask > 0)).any()


def test_measure_user_pixel_size_and_duplicate_names(images, tmp_path):
    out = tmp_path / "out"
    copy = tmp_path / "other"
    copy.mkdir()
    (copy / "plain.jpg").write_bytes(images["jpeg"].read_bytes())
    status = main(
        [
            "tem",
            "measure",
            str(images["jpeg"]),
            str(copy / "plain.jpg"),
            "--out",
            str(out),
            "--nm-per-px",
            "0.5",
            "--no-progress",
        ]
    )
    assert status == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["pixel_size_source"].tolist() == ["user", "user"]
    assert summary["pixel_size_detail"].tolist() == ["given", "given"]  # nothing to differ from
    assert summary["nm_per_px"].tolist() == [0.5, 0.5]
    # Same stem twice: both kept.
    assert (out / "masks" / "plain.png").is_file() and (out / "masks" / "plain-2.png").is_file()
    particles = pd.read_csv(out / "particles.csv")
    assert particles["diameter_nm"].to_numpy() == pytest.approx(
        0.5 * particles["diameter_px"].to_numpy()
    )


def test_measure_missing_model_and_bad_pixel_size(images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["tem", "measure", str(images["png"]), "--out", str(out), "--no-progress"]
    assert main([*args, "--model", str(tmp_path / "none.ckpt")]) == 1
    assert main([*args, "--nm-per-px", "-1"]) == 1
    assert "nm-per-px" in capsys.readouterr().err
    assert not out.exists()


def test_measure_takes_segment_settings_and_polarity_overrides_them(images, tmp_path, capsys):
    def counts(*options: str) -> int:
        out = tmp_path / "_".join(options).replace("{", "").replace('"', "")[:40]
        args = ["tem", "measure", str(images["jpeg"]), "--out", str(out), "--no-progress"]
        assert main([*args, *options]) == 0
        return int(pd.read_csv(out / "summary.csv")["count"].iloc[0])

    dark = counts()
    # The settings' polarity is used: dark particles taken for bright ones find other "particles".
    bright = counts("--segment", '{"polarity": "bright"}')
    assert bright != dark
    assert counts("--segment", '{"polarity": "bright"}', "--polarity", "dark") == dark
    args = ["tem", "measure", str(images["jpeg"]), "--out", str(tmp_path / "bad")]
    assert main([*args, "--segment", '{"colour": 1}', "--no-progress"]) == 1
    assert "unknown TEM segmentation setting 'colour'" in capsys.readouterr().err


def test_measure_keeps_an_earlier_measurement_unless_told_to_overwrite(images, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["tem", "measure", "--out", str(out), "--no-progress", "--nm-per-px", "1"]
    assert main([*base, str(images["png"]), str(images["jpeg"])]) == 0
    # The PNG's sidecar says 1 nm/px too: no warning; the JPEG has nothing to compare with.
    assert "warning" not in capsys.readouterr().err
    first = (out / "summary.csv").read_text()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert main([*base, str(images["tif"])]) == 1
    message = capsys.readouterr().err
    assert str(out) in message and "--overwrite" in message
    assert (out / "summary.csv").read_text() == first
    assert not (out / "masks" / "sim_tif.png").exists()

    assert main([*base, str(images["tif"]), str(images["png"]), "--overwrite"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert [name.rsplit("/", 1)[-1] for name in summary["image"]] == ["sim_tif.tif", "sim_png.png"]
    for folder in ("masks", "overlays", "histograms"):
        assert sorted(path.name for path in (out / folder).iterdir()) == [
            "sim_png.png",
            "sim_tif.png",
        ]
    assert set(pd.read_csv(out / "particles.csv")["image"]) == set(summary["image"])
    assert (out / "notes.txt").read_text() == "mine"
    assert "removed 3 files" in capsys.readouterr().out
    assert [path.name for path in (out / "samples").iterdir()] == [f"{images['folder'].name}.png"]


def test_measure_gatan_micrograph_with_its_calibration(tmp_path, gatan_file):
    settings = MicrographSettings(
        width_px=256, height_px=256, nm_per_px=1.0, diameter_nm=14, scale_bar=False
    )
    micrograph = simulate_micrograph(settings, 1)
    # DM files hold counts; a 1 nm/px micrograph stored with its calibration in Å.
    counts = (micrograph.image.astype(np.float32) * 40.0).astype(np.int32)
    path = gatan_file(tmp_path / "scan.dm4", counts, 10.0, "Å", 4)
    out = tmp_path / "out"
    assert main(["tem", "measure", str(path), "--out", str(out), "--no-progress"]) == 0
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["pixel_size_source"] == "metadata" and row["nm_per_px"] == pytest.approx(1.0)
    assert row["diameter_unit"] == "nm"
    assert row["mean_diameter"] == pytest.approx(14, rel=0.25)
    assert io.imread(out / "masks" / "scan.png").max() > 5


def test_measure_samples_from_a_map(images, tmp_path, capsys):
    out = tmp_path / "out"
    mapping = tmp_path / "samples.csv"
    mapping.write_text(
        f"image,sample\nsim_png.png,CdSe/ZnS 1\n{images['tif']},CdSe/ZnS 1\nplain.jpg,PbS-2\n"
        "broken.png,PbS-2\n"
    )
    args = ["tem", "measure", str(images["folder"]), "--out", str(out), "--no-progress"]
    assert main([*args, "--samples", str(mapping), "--nm-per-px", "1"]) == 1  # broken.png
    summary = pd.read_csv(out / "summary.csv").set_index("sample")
    samples = pd.read_csv(out / "samples.csv").set_index("sample")
    assert samples.index.tolist() == ["PbS-2", "CdSe/ZnS 1"]  # in image order
    assert samples.loc["CdSe/ZnS 1", "images"] == 2 and samples.loc["PbS-2", "images_failed"] == 1
    particles = pd.read_csv(out / "particles.csv")
    pooled = particles[
        particles["image"].isin(summary.loc["CdSe/ZnS 1", "image"]) & ~particles["touches_border"]
    ]
    assert samples.loc["CdSe/ZnS 1", "count_measured"] == len(pooled)
    assert samples.loc["CdSe/ZnS 1", "mean_diameter"] == pytest.approx(pooled["diameter_nm"].mean())
    assert samples.loc["CdSe/ZnS 1", "size_distribution_pct"] == pytest.approx(
        100 * pooled["diameter_nm"].std() / pooled["diameter_nm"].mean()
    )
    assert samples["error"].isna().all()
    # A pooled size histogram per sample, named after it as a file name can be.
    assert sorted(path.name for path in (out / "samples").iterdir()) == [
        "CdSe_ZnS_1.png",
        "PbS-2.png",
    ]

    mapping.write_text("image,sample\nplain.jpg,A\nplain.jpg,B\n")
    assert main([*args, "--samples", str(mapping), "--out", str(tmp_path / "b")]) == 1
    assert f"{mapping}, line 3: plain.jpg listed for A and B" in capsys.readouterr().err
    mapping.write_text("file,sample\nplain.jpg,A\n")
    assert main([*args, "--samples", str(mapping), "--out", str(tmp_path / "c")]) == 1
    assert "needs columns image and sample" in capsys.readouterr().err
    mapping.write_text("image,sample\nplain.jpg,\n")
    assert main([*args, "--samples", str(mapping), "--out", str(tmp_path / "d")]) == 1
    assert f"{mapping}, line 2: empty image or sample" in capsys.readouterr().err
    gone = tmp_path / "gone.csv"
    assert main([*args, "--samples", str(gone), "--out", str(tmp_path / "e")]) == 1
    assert f"{gone}: not a readable CSV" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "bcde")


def test_measure_warns_when_the_users_pixel_size_differs_from_the_files(images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["tem", "measure", str(images["png"]), "--out", str(out), "--nm-per-px", "2"]
    assert main([*args, "--no-progress"]) == 0
    assert "sim_png.png: --nm-per-px given; the sidecar says 1 nm/px" in capsys.readouterr().err
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert (row["nm_per_px"], row["pixel_size_source"]) == (2.0, "user")
    assert "sidecar says 1 nm/px" in row["pixel_size_detail"]


def test_measure_each_image_its_own_sample(images, tmp_path):
    out = tmp_path / "out"
    args = ["tem", "measure", str(images["png"]), str(images["tif"]), "--out", str(out)]
    assert main([*args, "--samples", "image", "--no-progress"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    samples = pd.read_csv(out / "samples.csv")
    assert summary["sample"].tolist() == samples["sample"].tolist() == ["sim_png", "sim_tif"]
    assert samples["count"].tolist() == summary["count"].tolist()
    assert samples["mean_diameter"].to_numpy() == pytest.approx(summary["mean_diameter"].to_numpy())
