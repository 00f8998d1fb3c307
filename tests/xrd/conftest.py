"""Tiny XRD tables (a dozen generated crystals) for training-path tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from nanoxtal.xrd.diffraction import peak_table, stick_pattern
from nanoxtal.xrd.profiles import Augmentation, Renderer, make_batch
from nanoxtal.xrd.structures import Source, build_table, crystal_system

CRYSTALS = [
    ("Fm-3m", Lattice.cubic(4.1), "Na"),
    ("Pm-3m", Lattice.cubic(3.2), "K"),
    ("Im-3m", Lattice.cubic(3.5), "Rb"),
    ("Fd-3m", Lattice.cubic(5.4), "Si"),
    ("P6_3/mmc", Lattice.hexagonal(3.2, 5.2), "Mg"),
    ("I4/mmm", Lattice.tetragonal(3.1, 5.0), "Ca"),
    ("P4/mmm", Lattice.tetragonal(3.6, 4.4), "Sr"),
    ("Pmmm", Lattice.orthorhombic(3.0, 4.0, 5.0), "Ba"),
    ("Cmcm", Lattice.orthorhombic(3.3, 9.0, 4.1), "Cu"),
    ("P2/m", Lattice.monoclinic(3.1, 4.2, 5.3, 100), "Ag"),
    ("C2/m", Lattice.monoclinic(5.1, 3.2, 4.3, 110), "Au"),
    ("P-1", Lattice.from_parameters(3.1, 4.2, 5.3, 80, 95, 105), "Al"),
]


def crystal(symbol: str, lattice: Lattice, element: str) -> Structure:
    return Structure.from_spacegroup(symbol, lattice, [element], [[0.1, 0.2, 0.3]])


@pytest.fixture(scope="session")
def tiny_tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xrd_tables")
    sources = [Source(f"x{i}", crystal(*c).to(fmt="cif")) for i, c in enumerate(CRYSTALS)]
    table, rejects = build_table(sources, fractions=(0.5, 0.25, 0.25), seed=1, progress=False)
    assert rejects.empty
    table.to_parquet(folder / "structures.parquet", index=False)
    patterns = [(i, stick_pattern(crystal(*c))) for i, c in zip(table["id"], CRYSTALS, strict=True)]
    peak_table(patterns).to_parquet(folder / "peaks.parquet", index=False)
    return folder / "structures.parquet", folder / "peaks.parquet", table


@pytest.fixture(scope="session")
def tiny_measured(tmp_path_factory, tiny_tables):
    """An .npz 'measured' set: 4 noisy renders of every tiny crystal, with labels."""
    _, _, table = tiny_tables
    rows = [i for i in range(len(table)) for _ in range(4)]
    sticks = [stick_pattern(crystal(*CRYSTALS[i])) for i in rows]
    batch = make_batch(
        [(p.d, p.intensity, p.hkl) for p in sticks],
        [crystal(*CRYSTALS[i]).lattice.matrix for i in rows],
        [int(table["crystal_system"][i]) for i in rows],
    )
    patterns = Renderer()(batch, Augmentation(), torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("measured") / "measured.npz"
    np.savez(
        path,
        intensity=(patterns.numpy() * 1000).astype(np.uint16),
        two_theta=5.0 + 0.01 * np.arange(8500),
        crystal_system=table["crystal_system"].to_numpy()[rows],
        space_group=table["space_group"].to_numpy()[rows],
    )
    return path


def _table_missing(groups: set[int]) -> pd.DataFrame:
    """A structure table with two training structures of every space group but ``groups``,
    and KCl in the validation split."""
    rows = []

    def add(i: int, number: int, formula: str, species: list[str], split: str) -> None:
        rows.append(
            {
                "id": f"s{i}",
                "formula": formula,
                "space_group": number,
                "crystal_system": crystal_system(number),
                "split": split,
                "n_sites": 2,
                "lattice": [5.6, 0, 0, 0, 5.6, 0, 0, 0, 5.6],
                "species": species,
                "frac_coords": [0.0] * 6,
            }
        )

    present = [n for n in range(1, 231) if n not in groups]
    for i, number in enumerate(present * 2):
        add(i, number, "MgO" if i % 2 else "SiC", ["Mg", "O"] if i % 2 else ["Si", "C"], "train")
    add(len(rows), 225, "KCl", ["K", "Cl"], "val")
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def table_missing():
    """Factory: a structure table lacking the given space groups in its train split."""
    return _table_missing


@pytest.fixture(scope="session")
def save_tiny_classifier(save_checkpoint):
    """Save an untrained (but fixed by ``seed``) classifier as training writes checkpoints."""
    import torch

    from nanoxtal.xrd.module import XrdClassifier
    from nanoxtal.xrd.nets import build_net

    def save(path, seed: int = 0):
        torch.manual_seed(seed)
        arch = {"name": "xrdnet", "width": 8, "hidden": 32}
        return save_checkpoint(XrdClassifier(build_net(**arch), arch), path)

    return save
