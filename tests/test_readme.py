"""The README's Quick start is what CI runs, and its commands refer to things that exist."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
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


def test_the_example_lab_commands_plan_the_check(tmp_path, shared_data):
    """The README's example-lab block, run as written (with the lab in a temporary folder) up to
    a dry run of its snakemake line: that line once named its target after ``--configfile``,
    which takes several files, so Snakemake read the target as a config file."""
    block = re.search(r"```bash\n(nanoxtal recipes lab-example.+?)\n```", README, re.S)
    assert block, "README lacks the example lab's commands"
    lines = block.group(1).replace("example_lab", str(tmp_path / "example_lab")).splitlines()
    assert [line.split()[0] for line in lines] == ["nanoxtal", "printf", "snakemake"]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for line in lines[:2]:
        subprocess.run(line, shell=True, cwd=tmp_path, env=env, check=True, capture_output=True)
    arguments = [
        str(tmp_path / word) if word == "lab.yaml" else word for word in shlex.split(lines[2])
    ]
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *arguments[1:], "-n"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recipes_check" in done.stdout and "lab_measure" in done.stdout
