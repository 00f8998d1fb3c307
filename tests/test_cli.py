from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from nanoxtal import __version__
from nanoxtal.cli import main


def test_version_is_the_installed_one(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"nanoxtal {__version__}"
    assert __version__ != "0+unknown"


def test_console_script_is_installed():
    found = shutil.which("nanoxtal")
    assert found, "the `nanoxtal` console script is not on PATH"
    done = subprocess.run([found, "data", "list"], capture_output=True, text=True, check=True)
    assert "xrd_rruff" in done.stdout


def test_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "nanoxtal", "--help"], capture_output=True, text=True, check=True
    )
    assert "data" in done.stdout


def test_verify_reports_each_dataset_and_fails_on_a_bad_one(data_root, capsys):
    root, _ = data_root
    (root / "alpha" / "a.txt").write_text("edited")
    assert main(["data", "verify", "alpha", "beta", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert "beta: ok (1 files, sha256 verified)" in captured.out
    assert "nanoxtal: error: dataset 'alpha'" in captured.err and "corrupt" in captured.err


def test_import_goes_on_after_a_failure(tmp_path, data_root, capsys):
    root, _ = data_root
    (root / "alpha" / "a.txt").unlink()
    dest = tmp_path / "resources"
    assert (
        main(
            [
                "data",
                "import",
                "alpha",
                "beta",
                "--root",
                str(root),
                "--dest",
                str(dest),
                "--no-progress",
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert "a.txt is missing" in captured.err
    assert (dest / "beta" / "c.csv").is_file()
    assert not (dest / "alpha").exists()


def test_unknown_dataset_is_a_clear_error(data_root, capsys):
    root, _ = data_root
    assert main(["data", "verify", "gamma", "--root", str(root)]) == 1
    assert "unknown dataset 'gamma'" in capsys.readouterr().err


def test_manifest_prints_registry_entries(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert main(["data", "manifest", str(tmp_path)]) == 0
    entry = yaml.safe_load(capsys.readouterr().out)
    assert entry["files"]["x.txt"]["size"] == 1
    assert main(["data", "manifest", str(tmp_path / "nope")]) == 1


def test_list_shows_presence_under_a_root(shared_data, capsys):
    assert main(["data", "list", "--root", str(shared_data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("xrd_rruff") and " yes " in line for line in lines)
