from __future__ import annotations

import math

import numpy as np
import pytest

from nanoxtal.xrd.io import (
    PatternReadError,
    convert_two_theta,
    read_patterns,
    to_grid,
)
from nanoxtal.xrd.profiles import Grid
from nanoxtal.xrd.radiation import WAVELENGTHS

XRDML = """<?xml version="1.0"?>
<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/2.3">
 <xrdMeasurement>
  <usedWavelength intended="K-Alpha 1">
   <kAlpha1 unit="Angstrom">1.5405980</kAlpha1>
   <kAlpha2 unit="Angstrom">1.5444260</kAlpha2>
   <ratioKAlpha2KAlpha1>0.5000</ratioKAlpha2KAlpha1>
  </usedWavelength>
  <scan><dataPoints>
   <positions axis="2Theta" unit="deg"><startPosition>10</startPosition>
    <endPosition>11</endPosition></positions>
   <counts unit="counts">{counts}</counts>
  </dataPoints></scan>
 </xrdMeasurement>
</xrdMeasurements>
"""


def test_text_files_with_headers_rruff_lines_and_three_columns(tmp_path):
    lines = (
        ["##NAMES=Quartz", "2theta intensity error"]
        + [f"{10 + 0.1 * i:.2f}, {100 + i}, 3" for i in range(20)]
        + ["##END="]
    )
    (tmp_path / "q.txt").write_text("\n".join(lines))
    (pattern,) = read_patterns(tmp_path / "q.txt")
    assert len(pattern.two_theta) == 20 and pattern.intensity[0] == 100
    assert pattern.wavelength is None


def test_xrdml_axis_counts_and_weighted_wavelength(tmp_path):
    (tmp_path / "s.xrdml").write_text(XRDML.format(counts=" ".join(str(i) for i in range(11))))
    (pattern,) = read_patterns(tmp_path / "s.xrdml")
    assert pattern.two_theta[[0, -1]].tolist() == [10.0, 11.0]
    assert pattern.intensity[-1] == 10
    assert pattern.wavelength == pytest.approx((1.540598 + 0.5 * 1.544426) / 1.5)


def test_npz_archives_carry_labels(tmp_path):
    two_theta = np.arange(5, 90, 0.01)[:8500]
    np.savez(
        tmp_path / "a.npz",
        intensity=np.ones((3, 8500), np.uint16),
        two_theta=two_theta,
        crystal_system=np.array([1, 6, 0]),
        space_group=np.array([14, 225, 2]),
    )
    patterns = read_patterns(tmp_path / "a.npz")
    assert [p.labels["space_group"] for p in patterns] == [14, 225, 2]
    assert [p.index for p in patterns] == [0, 1, 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.xy", "", "no lines with two numeric columns"),
        ("short.xy", "10 1\n11 2\n", "only 2 data points"),
        ("bad.xrdml", "<xrd><oops", "not a readable XRDML"),
        ("noaxis.xrdml", "<a><dataPoints><counts>1 2</counts></dataPoints></a>", "lacks counts or"),
        ("data.jpg", "x", "unknown pattern format"),
    ],
)
def test_bad_files_are_named_with_the_reason(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(PatternReadError, match=message) as caught:
        read_patterns(tmp_path / name)
    assert name in str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PatternReadError, match="no such file"):
        read_patterns(tmp_path / "nope.xy")


def test_wavelength_conversion_keeps_d_spacings():
    two_theta = np.array([20.0, 40.0, 60.0])
    moved = convert_two_theta(two_theta, WAVELENGTHS["MoKa"], WAVELENGTHS["CuKa"])
    d_mo = WAVELENGTHS["MoKa"] / (2 * np.sin(np.radians(two_theta) / 2))
    d_cu = WAVELENGTHS["CuKa"] / (2 * np.sin(np.radians(moved) / 2))
    assert d_cu[:2] == pytest.approx(d_mo[:2])
    assert math.isnan(moved[2])  # that d cannot diffract Cu Kα


def test_to_grid_resamples_scales_and_reports_coverage(tmp_path):
    x = np.arange(10, 100.001, 0.02)
    y = 50 + 1000 * np.exp(-0.5 * ((x - 30) / 0.05) ** 2)
    (tmp_path / "p.xy").write_text("\n".join(f"{a} {b}" for a, b in zip(x, y, strict=True)))
    (pattern,) = read_patterns(tmp_path / "p.xy")
    values, coverage = to_grid(pattern)
    grid = Grid().values().numpy()
    assert values.shape == (8500,) and values.max() == pytest.approx(1.0)
    assert grid[values.argmax()] == pytest.approx(30.0, abs=0.01)
    assert values[grid < 10].max() == 0 and coverage == pytest.approx((89.99 - 10) / 85, abs=1e-3)


def test_real_measurements_read(shared_data):
    xy = sorted((shared_data / "xrd" / "experimental" / "autoanalyzer").glob("*.xy"))
    xrdml = sorted((shared_data / "xrd" / "experimental" / "alab_xrdml").rglob("*.xrdml"))
    assert len(xy) == 8 and len(xrdml) == 60
    for path in xy + xrdml[:5]:
        (pattern,) = read_patterns(path)
        values, coverage = to_grid(pattern)
        assert coverage > 0.8 and values.max() == pytest.approx(1.0)
    rruff = read_patterns(shared_data / "xrd" / "rruff_dev.npz")
    assert len(rruff) == 454 and all(1 <= p.labels["space_group"] <= 230 for p in rruff)
