"""The machine record written beside every stage's metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import torch

from nanoxtal.environment import describe, package_versions, source_commit

REPO = Path(__file__).resolve().parents[1]


def test_describe_names_this_machine_and_its_packages():
    found = describe()
    assert found["cpu_count"] == os.cpu_count()
    assert found["torch_threads"] == torch.get_num_threads()
    assert found["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert found["packages"]["torch"] == torch.__version__
    assert found["cpu"] and found["cpu"] != "unknown"
    json.dumps(found)  # it goes into metrics.json as it is


def test_missing_package_is_none_not_an_error():
    assert package_versions(("numpy", "no-such-package-xyz")) == {
        "numpy": package_versions(("numpy",))["numpy"],
        "no-such-package-xyz": None,
    }


def test_source_commit_of_a_checkout_and_of_a_plain_folder(tmp_path):
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        commit = source_commit(REPO / "src")
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit), commit
        assert commit.startswith(head.stdout.strip())
    assert source_commit(tmp_path) is None


def test_uncommitted_changes_mark_the_commit_dirty(tmp_path):
    def git(*args: str) -> str:
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
        done = subprocess.run(
            ["git", *identity, "-C", str(tmp_path), *args], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    assert source_commit(tmp_path) == git("rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("not part of the source\n")
    assert source_commit(tmp_path) == git("rev-parse", "HEAD")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == git("rev-parse", "HEAD") + "+dirty"
    # A package copied into an untracked folder (a virtualenv inside the repository) is not
    # the repository's source.
    installed = tmp_path / ".venv" / "site-packages" / "nanoxtal"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert source_commit(installed) is None
