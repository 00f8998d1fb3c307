"""Fixtures of the TEM tests: a small labelled set written to disk."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    """Instance labels 1..n of discs of ``radius`` px at ``centres`` (row, col)."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


@pytest.fixture
def msa_like(tmp_path: Path) -> Path:
    """Six msa_em-like images (dark discs on a bright film, binary masks) under ``msa_em/``."""
    root = tmp_path / "tem" / "msa_em"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(6):
        labels = discs((48, 48), [(12 + index, 12), (34, 30)], 5)
        image = np.where(labels > 0, 60, 200).astype(np.uint8)
        skio.imsave(root / "images" / f"im{index}.png", image, check_contrast=False)
        mask = ((labels > 0) * 255).astype(np.uint8)
        skio.imsave(root / "masks" / f"im{index}.png", mask, check_contrast=False)
    return root


@pytest.fixture
def draw_discs():
    """``discs``, for tests that draw their own labels."""
    return discs


def _dm_name(name: str) -> bytes:
    raw = name.encode("latin-1")
    return struct.pack(">H", len(raw)) + raw


def _dm_group(version: int, entries: list[bytes]) -> bytes:
    """A tag group's body: sorted and open flags, the tag count, the tags."""
    return (
        b"\x00\x01" + struct.pack(">q" if version == 4 else ">l", len(entries)) + b"".join(entries)
    )


def _dm_tag(version: int, name: str, value: object) -> bytes:
    """One tag: a group (dict: named tags, list: unnamed) or data (float, int, str, array).

    Layout after Gatan's DM3/DM4 format as the openNCEM and RosettaSciIO readers parse it:
    type (0x14 group, 0x15 data), name length and name, in DM4 the tag's size (8 bytes), then
    the group, or "%%%%", the type-info array (big-endian) and the value (little-endian here).
    """
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else [("", item) for item in value]
        body = _dm_group(version, [_dm_tag(version, key, item) for key, item in items])
        kind = b"\x14"
    else:
        if isinstance(value, str):  # DM strings: arrays of 2-byte characters
            info, payload = [20, 4, len(value)], np.array([ord(c) for c in value], "<u2")
        elif isinstance(value, float):
            info, payload = [6], np.float32(value).astype("<f4")
        elif isinstance(value, int):
            info, payload = [3], np.int32(value).astype("<i4")
        else:
            array = np.ascontiguousarray(value)
            codes = {"float32": 6, "uint16": 4, "int32": 3}
            info, payload = (
                [20, codes[array.dtype.name], array.size],
                array.astype(array.dtype.newbyteorder("<")),
            )
        ints = ">" + ("q" if version == 4 else "l") * (len(info) + 1)
        body = b"%%%%" + struct.pack(ints, len(info), *info) + payload.tobytes()
        kind = b"\x15"
    size = struct.pack(">Q", len(body)) if version == 4 else b""
    return kind + _dm_name(name) + size + body


def write_gatan(
    path: Path, image: np.ndarray, scale: float, units: str = "nm", version: int = 3
) -> Path:
    """A Gatan DM3/DM4 file holding ``image`` (float32, uint16 or int32) calibrated ``scale``
    ``units`` per pixel, with the tags RosettaSciIO needs to read it."""
    data_type = {"float32": (2, 4), "uint16": (10, 2), "int32": (7, 4)}[image.dtype.name]
    axis = {"Origin": 0.0, "Scale": float(scale), "Units": units}
    tags = {
        "ImageList": [
            {
                "ImageData": {
                    "Calibrations": {
                        "Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": ""},
                        "Dimension": [axis, axis],
                    },
                    "Data": image,
                    "DataType": data_type[0],
                    "Dimensions": [int(image.shape[1]), int(image.shape[0])],  # x, y
                    "PixelDepth": data_type[1],
                },
                "ImageTags": {},
                "Name": path.stem,
            }
        ]
    }
    root = _dm_group(version, [_dm_tag(version, key, value) for key, value in tags.items()])
    header = struct.pack(">l", version) + struct.pack(">Q" if version == 4 else ">L", len(root))
    path.write_bytes(header + struct.pack(">l", 1) + root + b"\x00" * 8)  # 1: little-endian
    return path


@pytest.fixture
def gatan_file():
    """``write_gatan``, for tests that need DM3/DM4 micrographs."""
    return write_gatan
