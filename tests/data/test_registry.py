from __future__ import annotations

import hashlib
import re

import pytest
import yaml

from nanoxtal.data import DatasetError, check_present, datasets, get_dataset, missing_files, verify
from nanoxtal.data.registry import load_registry, manifest_entry, sha256_file


def test_packaged_registry_declares_every_dataset_fully():
    found = datasets()
    assert {"recipes", "tem_sophon", "xrd_rruff", "xrd_mp", "xrd_alab"} <= set(found)
    for dataset in found.values():
        assert dataset.files, dataset.name
        assert dataset.source.startswith("https://"), dataset.name
        assert dataset.licence and dataset.description
        assert not dataset.folder.startswith(("/", "..")), dataset.name
        for entry in dataset.files:
            assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), (dataset.name, entry.path)
            assert entry.size > 0
            assert ".." not in entry.path.split("/")


def test_real_data_root_matches_the_registry(shared_data):
    for dataset in datasets().values():
        verify(dataset, shared_data)


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset 'xrd_nope'.*xrd_rruff"):
        get_dataset("xrd_nope")


def test_present_dataset_passes(data_root):
    root, found = data_root
    check_present(found["alpha"], root)
    verify(found["alpha"], root)
    assert missing_files(found["alpha"], root) == []


def test_missing_file_names_dataset_expected_path_and_source(data_root):
    root, found = data_root
    (root / "alpha" / "sub" / "b.bin").unlink()
    with pytest.raises(DatasetError) as caught:
        check_present(found["alpha"], root)
    message = str(caught.value)
    assert "'alpha'" in message
    assert str(root / "alpha" / "sub" / "b.bin") in message
    assert "https://example.org/alpha" in message
    assert "1 of 2 files" in message


def test_missing_data_root_is_reported_per_dataset(tmp_path, data_root):
    _, found = data_root
    with pytest.raises(DatasetError, match=r"missing 1 of 1 files"):
        check_present(found["beta"], tmp_path / "nowhere")


def test_corrupt_file_is_refused_with_both_checksums(data_root):
    root, found = data_root
    path = root / "beta" / "c.csv"
    path.write_bytes(b"x,y\n1,3\n")
    with pytest.raises(DatasetError) as caught:
        verify(found["beta"], root)
    message = str(caught.value)
    assert str(path) in message and "corrupt" in message
    assert hashlib.sha256(b"x,y\n1,3\n").hexdigest() in message
    assert found["beta"].files[0].sha256 in message


def test_manifest_round_trips_through_the_registry_format(tmp_path):
    folder = tmp_path / "set"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "one.dat").write_bytes(b"\x00\x01\x02")
    (folder / "two.txt").write_text("two")
    files = manifest_entry(folder, folder)
    assert list(files) == ["deep/one.dat", "two.txt"]
    assert files["two.txt"]["sha256"] == hashlib.sha256(b"two").hexdigest()
    assert sha256_file(folder / "deep" / "one.dat") == files["deep/one.dat"]["sha256"]
    text = yaml.safe_dump(
        {
            "datasets": {
                "s": {
                    "folder": "set",
                    "description": "d",
                    "source": "https://x",
                    "licence": "MIT",
                    "files": files,
                }
            }
        }
    )
    loaded = load_registry(text)["s"]
    verify(loaded, tmp_path)
    assert loaded.size == 6
