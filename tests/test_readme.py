"""The README's Quick start is what CI runs, and its commands refer to things that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_is_two_commands_installing_then_running():
    main_job, tests = quick_start_commands()
    assert main_job.endswith("snakemake --cores 2")
    assert tests.endswith("pytest")
    assert "pip install -e" in main_job and "pip install -e" in tests


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    command = ci.split("# README test command:\n", 1)[1].strip()
    assert command == quick_start_commands()[1]


def test_readme_lists_every_registered_dataset():
    from nanoxtal.data import datasets

    for name in datasets():
        assert f"| `{name}` |" in README, f"README's data table lacks {name}"
