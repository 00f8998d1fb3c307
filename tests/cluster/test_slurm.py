"""The workflow submitted to a real SLURM scheduler through profiles/slurm.

Needs a running cluster: `tests/cluster/start_slurm.sh` starts a one-node one on this machine
(`.ci/run` does, before the tests). The commands are the README's ("GPUs and SLURM clusters").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# The README's test-cluster command after `snakemake`: the profile, no account and job status
# from squeue (no accounting database), first status check after 5 s (jobs are short here), at
# most 1 CPU per job (so the 2-CPU test node runs two jobs at once).
SLURM_ARGS = [
    "--workflow-profile",
    "profiles/slurm",
    "--slurm-no-account",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "5",
    "--max-threads",
    "1",
]


def test_readme_shows_the_commands_this_test_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## GPUs and SLURM clusters", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", section, flags=re.DOTALL)
    assert commands[-1].splitlines() == [
        "tests/cluster/start_slurm.sh",
        # The test's --configfile layers config/config.yaml (the Snakefile's own), the test
        # config and the data root; from the repository root the first comes by itself.
        " ".join(["snakemake", *SLURM_ARGS, "--configfile", "config/test.yaml"]),
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("tests/cluster/start_slurm.sh") < ci.index("# README test command:")


def cluster_state() -> str | None:
    """Why the cluster cannot take jobs, or ``None`` when it can."""
    for tool in ("sbatch", "squeue", "sinfo", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` not on PATH: start a cluster with tests/cluster/start_slurm.sh"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: is slurmctld running? (tests/cluster/start_slurm.sh)"
    usable = {"idle", "mixed", "allocated", "completing"}
    if states.returncode != 0 or not usable & set(states.stdout.split()):
        return (
            f"no SLURM node takes jobs (sinfo: {(states.stdout + states.stderr).strip()!r}): "
            "start the cluster with tests/cluster/start_slurm.sh"
        )
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = cluster_state()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("snakemake_executor_plugin_slurm")


def snakemake_command(workdir: Path, config: Path, *targets: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        *SLURM_ARGS,
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "test.yaml"),
        str(config),
        *targets,
    ]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    # Jobs inherit this environment (sbatch --export=ALL): rules call the `nanoxtal` console
    # script and `python -m snakemake` of this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def slurm_jobs() -> list[dict[str, str]]:
    """Every job slurmctld still lists (finished ones for MinJobAge): id, comment, state."""
    done = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%k|%T"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2]
    return [dict(zip(("id", "comment", "state"), row, strict=True)) for row in rows]


@pytest.mark.cluster
@pytest.mark.slow
def test_workflow_on_slurm_survives_a_killed_job_and_finishes_on_rerun(
    cluster, tmp_path, shared_data
):
    workdir = tmp_path / "w"
    workdir.mkdir()
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(shared_data)}}))
    started = time.monotonic()

    # 1. The whole test-config workflow; the training job is cancelled by the scheduler
    #    (scancel) while it runs. keep-going (profile) lets the independent jobs finish.
    first = subprocess.Popen(
        snakemake_command(workdir, config),
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + 900
    train_log = workdir / "logs" / "xrd" / "train_xrdnet.log"
    while first.poll() is None and time.monotonic() < deadline:
        running = [
            job
            for job in slurm_jobs()
            if job["comment"].startswith("rule_xrd_train") and job["state"] == "RUNNING"
        ]
        # Cancel once the rule's command is running (its log exists), not while it starts.
        if running and train_log.exists():
            killed = running[0]
            request = subprocess.run(
                ["scontrol", "show", "job", killed["id"]], capture_output=True, text=True
            ).stdout
            subprocess.run(["scancel", killed["id"]], check=True, timeout=20)
            break
        time.sleep(0.5)
    out = first.communicate(timeout=max(60, deadline - time.monotonic()))[0]
    assert killed is not None, f"no running xrd_train job was seen:\n{out[-5000:]}"
    assert first.returncode != 0, out[-5000:]
    assert "CANCELLED" in out, out[-5000:]
    # The profile's GPU request reached SLURM (the test node has one count-only GPU).
    assert "TresPerJob=gres:gpu:1" in request, request
    # The killed job left no output behind, and nothing downstream of it ran.
    assert not (workdir / "results" / "xrd" / "xrdnet" / "models" / "best.ckpt").exists()
    assert not (workdir / "results" / "xrd" / "metrics.json").exists()
    # Its SLURM log is kept (failed jobs' always are).
    killed_logs = list((workdir / ".snakemake" / "slurm_logs").glob(f"**/{killed['id']}.log"))
    assert killed_logs, list((workdir / ".snakemake" / "slurm_logs").rglob("*"))
    # The independent branch finished in the same run.
    assert (workdir / "results" / "recipes" / "metrics.json").is_file()
    first_run = time.monotonic() - started

    # 2. The rerun (same command) finishes the workflow.
    second = subprocess.run(
        snakemake_command(workdir, config),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-5000:]
    assert "Nothing to be done" not in out
    results = workdir / "results"
    for path in (
        "xrd/structures.parquet",
        "xrd/structures_summary.json",
        "xrd/random_structures.parquet",
        "xrd/peaks.parquet",
        "xrd/xrdnet/models/best.ckpt",
        "xrd/xrdnet/finetune/models/best.ckpt",
        "xrd/metrics.json",
        "xrd/models/best.ckpt",
        "xrd/models/library.npz",
        "xrd/predictions/measured.csv",
        "recipes/recipes.parquet",
        "recipes/chemicals.json",
        "recipes/metrics.json",
        "recipes/importance/importance.json",
        "recipes/models/forest.pkl",
        "tem/banks/labelled.npz",
        "tem/banks/pseudo.npz",
        "tem/models/best.ckpt",
        "tem/metrics.json",
        "tem/measure/sophon_example/summary.csv",
    ):
        assert (results / path).is_file(), path
    metrics = json.loads((results / "xrd" / "metrics.json").read_text())
    assert 0.0 <= metrics["rruff_heldout/xrdnet/finetuned/space_group_top5_accuracy"] <= 1.0
    datasets = ("recipes", "tem_sophon", "tem_unlabeled", "tem_msa_em")
    for name in (*datasets, "xrd_rruff", "xrd_mp", "xrd_autoanalyzer"):
        assert (workdir / "resources" / name / "_import.json").is_file(), name
    # Every rule's log, and a SLURM log for every submitted rule (kept: profile).
    for log in (
        "data/import_xrd_mp.log",
        "xrd/structures.log",
        "xrd/random.log",
        "xrd/simulate.log",
        "xrd/train_xrdnet.log",
        "xrd/finetune_xrdnet.log",
        "xrd/evaluate.log",
        "xrd/predict_measured.log",
        "recipes/clean.log",
        "recipes/chemicals.log",
        "recipes/evaluate.log",
        "recipes/importance.log",
        "recipes/train.log",
        "tem/bank.log",
        "tem/teacher.log",
        "tem/pseudo.log",
        "tem/student_seed42.log",
        "tem/publish.log",
        "tem/evaluate.log",
        "tem/measure_sophon_example.log",
    ):
        assert (workdir / "logs" / log).is_file(), log
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    submitted = {
        "data_import",
        "xrd_structures",
        "xrd_random",
        "xrd_simulate",
        "xrd_train",
        "xrd_finetune",
        "xrd_evaluate",
        "xrd_predict_measured",
        "recipes_clean",
        "recipes_chemicals",
        "recipes_evaluate",
        "recipes_importance",
        "recipes_train",
        "tem_bank",
        "tem_teacher",
        "tem_pseudo",
        "tem_student",
        "tem_evaluate",
        "tem_measure",
    }
    for rule in submitted:
        logs = list((slurm_logs / f"rule_{rule}").rglob("*.log"))
        assert logs and all(log.stat().st_size > 0 for log in logs), rule
    # The interrupted training ran again under SLURM and finished.
    train_logs = list((slurm_logs / "rule_xrd_train").rglob("*.log"))
    assert len(train_logs) == 2, train_logs
    # xrd_publish is a local rule: it runs on the submitting host, not through sbatch.
    assert not (slurm_logs / "rule_xrd_publish").exists()

    again = subprocess.run(
        [*snakemake_command(workdir, config), "-n"],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Nothing to be done" in again.stdout + again.stderr
    print(f"first run (with the kill) {first_run:.0f} s, total {time.monotonic() - started:.0f} s")
