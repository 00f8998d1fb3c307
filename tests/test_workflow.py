"""The Snakemake workflow as users run it: dry runs, lint, and real runs of the data stage."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import matplotlib
import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Rules call the `nanoxtal` console script installed beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # the whole test-config workflow takes 7-8 min on 2 cores
    )


def run_in(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with ``config`` layered over the default config."""
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return snakemake(
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(configfile),
        "--cores",
        "2",
        *args,
    )


@pytest.fixture
def small_root(tmp_path, shared_data) -> Path:
    """A writable data root holding copies of two small real datasets."""
    root = tmp_path / "data"
    for folder in ("recipes", "tem/sophon_example"):
        shutil.copytree(shared_data / folder, root / folder)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.mark.parametrize("configfile", [None, "config/test.yaml", "config/gpu.yaml"])
def test_dry_run_prints_the_dag(configfile):
    # --forceall: plan every job whatever this checkout's results/ already holds.
    args = ["-n", "--forceall", "--cores", "2"]
    done = snakemake(*args, *(["--configfile", configfile] if configfile else []))
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "This was a dry-run" in out
    for rule in ("data_import", "xrd_structures", "xrd_simulate"):
        assert f"rule {rule}:" in out, rule


@pytest.mark.parametrize("configfile", [None, "config/test.yaml"])
def test_lint_reports_nothing(configfile):
    done = snakemake("--lint", *(["--configfile", configfile] if configfile else []))
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Congratulations" in out, out


def test_invalid_config_is_refused_before_anything_runs(tmp_path, small_root):
    done = run_in(tmp_path / "w", {"data": {"root": str(small_root), "datasts": ["recipes"]}}, "-n")
    assert done.returncode != 0
    assert "datasts" in done.stdout + done.stderr


def test_unknown_dataset_in_config_is_named(tmp_path, small_root):
    done = run_in(
        tmp_path / "w", {"data": {"root": str(small_root), "datasets": ["xrd_nope"]}}, "-n"
    )
    assert done.returncode != 0
    assert "unknown dataset 'xrd_nope'" in done.stdout + done.stderr


def test_missing_dataset_stops_with_one_clear_message(tmp_path, small_root):
    config = {"data": {"root": str(small_root), "datasets": ["recipes", "xrd_rruff"]}}
    done = run_in(tmp_path / "w", config)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "dataset 'xrd_rruff' is missing 1 of 1 files" in out
    assert str(small_root / "xrd" / "rruff_dev.npz") in out
    assert "https://github.com/AGI-init/XRDs" in out
    assert not (tmp_path / "w" / "resources").exists()


def test_corrupt_file_is_refused_and_nothing_half_written(tmp_path, small_root):
    with open(small_root / "recipes" / "shape_classes.txt", "a") as handle:
        handle.write("dodecahedron\n")
    done = run_in(tmp_path / "w", {"data": {"root": str(small_root), "datasets": ["recipes"]}})
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "shape_classes.txt is corrupt or a different version" in out
    resources = tmp_path / "w" / "resources"
    assert not resources.exists() or list(resources.iterdir()) == []


@pytest.mark.slow
def test_import_then_noop_then_data_change_reruns_only_that_dataset(tmp_path, small_root):
    workdir = tmp_path / "w"
    config = {"data": {"root": str(small_root), "datasets": ["recipes", "tem_sophon"]}}
    # The imports only: the stages downstream of them are exercised by the test-config run.
    imports = ("resources/recipes", "resources/tem_sophon")
    done = run_in(workdir, config, *imports)
    assert done.returncode == 0, done.stderr
    for name, count in (("recipes", 4), ("tem_sophon", 2)):
        # Besides the data: our import receipt and the timestamp Snakemake keeps in folders.
        files = [p for p in (workdir / "resources" / name).iterdir() if p.name[0] not in "._"]
        assert len(files) == count
        assert (workdir / "logs" / "data" / f"import_{name}.log").is_file()

    again = run_in(workdir, config, "-n", *imports)
    assert "Nothing to be done" in again.stdout + again.stderr

    # A changed data file (Snakemake 9 ignores a bare touch: it compares checksums too).
    source = small_root / "tem" / "sophon_example" / "1-0001_16.png"
    with open(source, "ab") as handle:
        handle.write(b"\0")
    os.utime(source, (time.time() + 60, time.time() + 60))
    plan = run_in(workdir, config, "-n", *imports)
    out = plan.stdout + plan.stderr
    assert "wildcards: dataset=tem_sophon" in out
    assert "wildcards: dataset=recipes" not in out


def planned_rules(done: subprocess.CompletedProcess) -> set[str]:
    """Rules a dry run would execute (from its "rule NAME:" lines)."""
    out = done.stdout + done.stderr
    return {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("rule ")}


@pytest.mark.slow
def test_config_change_reruns_exactly_the_stage_it_configures(tmp_path, small_root):
    workdir = tmp_path / "w"
    recipes = {"evaluate": {"folds": 2, "vocabulary": 10}, "importance": {"trees": 5, "repeats": 1}}
    config = {"data": {"root": str(small_root), "datasets": ["recipes"]}, "recipes": recipes}
    target = "results/recipes/importance/importance.json"
    done = run_in(workdir, config, target)
    assert done.returncode == 0, done.stderr[-3000:]
    again = run_in(workdir, config, "-n", target)
    assert "Nothing to be done" in again.stdout + again.stderr
    # A key the rule does not read: nothing to do.
    other = {**config, "recipes": {**recipes, "evaluate": {**recipes["evaluate"], "trees": 7}}}
    assert planned_rules(run_in(workdir, other, "-n", target)) == set()
    # Its own block: exactly that rule.
    changed = {**config, "recipes": {**recipes, "importance": {"trees": 6, "repeats": 1}}}
    assert planned_rules(run_in(workdir, changed, "-n", target)) == {"recipes_importance"}
    # --forcerun of one rule: that rule (and what depends on it, here nothing).
    # (--forcerun takes a list: targets go before it.)
    forced = run_in(workdir, config, "-n", target, "--forcerun", "recipes_importance")
    assert planned_rules(forced) == {"recipes_importance"}


def test_a_malformed_lab_sheet_stops_the_workflow_before_anything_runs(tmp_path, small_root):
    from nanoxtal.recipes.lab import write_example_lab

    lab = tmp_path / "lab"
    write_example_lab(lab, size_px=128)
    sheet = pd.read_csv(lab / "recipes.csv")
    sheet.loc[1, "reagents"] = "InCl3; Unobtainium"
    sheet.to_csv(lab / "recipes.csv", index=False)
    config = {"data": {"root": str(small_root), "datasets": ["recipes"]}, "lab": {"mine": str(lab)}}
    done = run_in(tmp_path / "w", config, "-n")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert f"config lab.mine: {lab}" in out
    assert f"{lab / 'recipes.csv'}, row 3, column 'reagents': unknown chemical" in out


@pytest.mark.slow
def test_a_micrograph_added_to_one_lab_sample_reruns_that_sample_alone(tmp_path, small_root):
    from nanoxtal.recipes.lab import write_example_lab

    lab = tmp_path / "lab"
    write_example_lab(lab)
    recipes = {"evaluate": {"vocabulary": 10, "trees": 20}, "labels": {"segmenter": "classical"}}
    config = {
        "data": {"root": str(small_root), "datasets": ["recipes"]},
        "recipes": recipes,
        "lab": {"example": str(lab)},
    }
    workdir = tmp_path / "w"
    targets = ["results/recipes/lab/example/check.csv", "results/recipes/models/forest.pkl"]
    done = run_in(workdir, config, *targets)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = workdir / "results" / "recipes" / "lab" / "example"
    assert len(pd.read_parquet(results / "labelled.parquet")) == 3
    assert pd.read_csv(results / "label_rejects.csv")["sample"].tolist() == ["pbse-few"]
    assert len(pd.read_csv(results / "check.csv")) == 3
    assert "--add results/recipes/lab/example/labelled.parquet" in done.stdout + done.stderr
    again = run_in(workdir, config, "-n", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
    # One more micrograph of one sample: that sample's measurement, its lab's labels, the
    # recipe model and the check rerun; no other sample.
    folder = lab / "micrographs" / "inp-triangles"
    shutil.copy(folder / "inp-triangles_1.png", folder / "inp-triangles_3.png")
    planned = run_in(workdir, config, "-n", *targets)
    out = planned.stdout + planned.stderr
    assert planned_rules(planned) == {
        "lab_measure",
        "recipes_label",
        "recipes_train",
        "recipes_check",
    }
    assert out.count("rule lab_measure:") == 1 and "sample=inp-triangles" in out


class WorkflowRun(NamedTuple):
    """One run of the whole workflow: where it ran, its config, and how it ended."""

    workdir: Path
    config: dict
    done: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def test_config_run(tmp_path_factory, shared_data) -> WorkflowRun:
    """The test config's whole workflow, run once for the tests of this module that need it
    (whichever runs first builds it): ``<tmp>/w`` holds its results and trained models."""
    workdir = tmp_path_factory.mktemp("test_config") / "w"
    workdir.mkdir()
    test_config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    test_config["data"]["root"] = str(shared_data)
    return WorkflowRun(workdir, test_config, run_in(workdir, test_config))


@pytest.mark.slow
def test_test_config_runs_the_whole_workflow(test_config_run):
    workdir, test_config, done = test_config_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((workdir / "results" / "xrd" / "structures_summary.json").read_text())
    # Each source gives its own seeded subset: Materials Project and AMCSD minerals.
    limit = test_config["xrd"]["structures"]["max_structures"]
    assert set(summary["per_source"]) == {"materials_project", "amcsd"}
    for source in summary["per_source"].values():
        assert source["structures"] == limit and source["read_share"] >= 0.95
    assert summary["kept"] + summary["rejected"] == 2 * limit
    random = json.loads((workdir / "results" / "xrd" / "random_summary.json").read_text())
    # Per group 1: every space group missing from the training split gets one crystal.
    assert random["space_groups_in_train_after"] == 230 - random["unfilled"]
    assert random["unfilled"] <= 5
    peaks = pd.read_parquet(workdir / "results" / "xrd" / "peaks.parquet")
    assert peaks["id"].nunique() == summary["kept"] + random["crystals"]
    for log in (
        "data/import_xrd_mp.log",
        "data/import_xrd_amcsd.log",
        "xrd/structures.log",
        "xrd/random.log",
        "xrd/simulate.log",
        "xrd/train_xrdnet.log",
        "xrd/finetune_xrdnet.log",
        "xrd/refit_xrdnet.log",
        "xrd/references.log",
        "xrd/evaluate.log",
    ):
        assert (workdir / "logs" / log).is_file(), log
    assert (workdir / "results" / "benchmarks" / "xrd" / "simulate.tsv").is_file()
    recipes = json.loads((workdir / "results" / "recipes" / "metrics.json").read_text())
    assert recipes["recipes"] > 2000  # sizes up to 20 nm of the real workbook
    assert recipes["random/random_forest/size_mae_nm"] > 0
    assert "product/random_forest/PbSe/size_mae_nm" in recipes
    # Every model with and without reaction intermediates; the transformer's uncertainty.
    for model in ("random_forest+intermediates", "transformer", "transformer+intermediates"):
        assert recipes[f"random/{model}/size_mae_nm"] > 0, model
    assert recipes["random/transformer/size_std_mean_nm"] >= 0
    assert recipes["augmentation"]["expansion_factor"] > 1.5
    importance = json.loads(
        (workdir / "results" / "recipes" / "importance" / "importance.json").read_text()
    )
    assert "composition" in importance["size_ranking"]
    assert (workdir / "results" / "recipes" / "models" / "forest.pkl").is_file()
    coverage = json.loads((workdir / "results" / "recipes" / "chemicals.json").read_text())
    assert coverage["resolved_share"] >= 0.98
    metrics = json.loads((workdir / "results" / "xrd" / "metrics.json").read_text())
    assert metrics["rruff_heldout_size"] + metrics["rruff_finetune_size"] == 454
    for key in (
        "rruff_heldout/nearest_neighbour/space_group_accuracy",
        "rruff_heldout/xrdnet/synthetic/crystal_system_accuracy",
        "rruff_heldout/xrdnet/finetuned/space_group_top5_accuracy",
        "rruff_heldout/xrdnet/finetuned+library/space_group_accuracy",
        "mp_test/xrdnet/space_group_macro_f1",
        # Issue 3's coverage per source: does it hold an analogue of each measured pattern?
        "rruff_heldout/synthetic_lookup/materials_project/space_group_accuracy",
        "rruff_heldout/synthetic_lookup/amcsd/space_group_accuracy",
        "rruff_heldout/references/match_1_space_group_accuracy",
        "rruff_heldout/xrdnet/finetuned+library/answered_space_group_accuracy",
        # The references' trust is fitted on the fine-tune part: they are mixed in too.
        "rruff_heldout/xrdnet/finetuned+library+references/space_group_accuracy",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    # Published: the refit on all of RRUFF dev (nothing held out), with its library.
    xrd_results = workdir / "results" / "xrd"
    refit = xrd_results / "xrdnet" / "refit"
    assert json.loads((refit / "split.json").read_text())["held_out_rows"] == []
    assert (xrd_results / "models" / "best.ckpt").read_bytes() == (
        refit / "models" / "best.ckpt"
    ).read_bytes()
    assert (xrd_results / "models" / "library.npz").read_bytes() == (
        refit / "library.npz"
    ).read_bytes()
    assert metrics["rruff_heldout/references/phases"] == summary["kept"]
    predictions = pd.read_csv(xrd_results / "predictions" / "measured.csv")
    assert len(predictions) == 8  # the autoanalyzer .xy files of the test config
    assert predictions["match_1_id"].str.match(r"(mp-|amcsd-)").all()
    tem = json.loads((workdir / "results" / "tem" / "metrics.json").read_text())
    assert tem["sophon_example/test_images"] == ["1-0001_16"] and tem["split_seed"] == 42
    for method in ("model", "baseline"):
        for key in ("ap50", "semantic_miou"):
            assert 0.0 <= tem[f"msa_em/{method}/{key}"] <= 1.0, (method, key)
        assert tem[f"msa_em/{method}/count_error"] >= 0.0  # the 1-epoch model over-splits
    # The model − baseline difference pairs the same 10 held-out images (nothing failed).
    compared = "msa_em/model_minus_baseline/ap50"
    assert tem[f"{compared}/images"] == 10
    difference = tem["msa_em/model/ap50"] - tem["msa_em/baseline/ap50"]
    assert tem[f"{compared}/difference"] == pytest.approx(difference)
    assert (
        tem[f"{compared}/ci95_low"] <= tem[f"{compared}/difference"] <= tem[f"{compared}/ci95_high"]
    )
    # The baseline needs no training: its score on the held-out half is the real one.
    assert tem["msa_em/baseline/ap50"] > 0.85 and tem["msa_em/baseline/n_true"] > 100
    # The labelled bank holds the training half of msa_em only, never a test image.
    bank = json.loads((workdir / "results" / "tem" / "banks" / "labelled.json").read_text())
    test_names = {f"msa_em/{name}" for name in tem["msa_em/test_images"]}
    assert len(bank["images"]) == 10 and not test_names & set(bank["images"])
    assert (workdir / "results" / "tem" / "banks" / "pseudo.npz").is_file()
    # The students' film bank (test config: msa_em, as film only) holds the same training half.
    film = json.loads((workdir / "results" / "tem" / "banks" / "film.json").read_text())
    assert film["images"] == bank["images"] and film["film_margin_px"] == 8
    # The published segmenter is the weight average of the test config's two students.
    published = torch.load(
        workdir / "results" / "tem" / "models" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert published["soup"] == [
        f"results/tem/students/seed{seed}/models/best.ckpt" for seed in (42, 7)
    ]
    measured = pd.read_csv(
        workdir / "results" / "tem" / "measure" / "sophon_example" / "summary.csv"
    )
    # One row, measured without error; the 1-epoch test model may well find no particle.
    assert len(measured) == 1 and measured["error"].isna().all()
    assert measured["pixel_size_source"].iloc[0] in {"scale_bar", "none"}
    samples = pd.read_csv(
        workdir / "results" / "tem" / "measure" / "sophon_example" / "samples.csv"
    )
    assert samples[["images", "images_failed"]].values.tolist() == [[1, 0]]
    # The report collects every stage's metrics and figures, as the README shows.
    report = workdir / "results" / "report.zip"
    done = run_in(workdir, test_config, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    with zipfile.ZipFile(report) as archive:
        names = {Path(name).name for name in archive.namelist()}
    assert {"report.html", "measured.csv", "importance.png", "importance_shape.png"} <= names
    assert {"evaluation.png", "summary.csv"} <= names
    assert any(name.startswith("parity_random_forest") for name in names)
    assert any(name.startswith("reliability_xrdnet") for name in names)
    # Cross-validation inside msa_em's training half, on demand: every training image is
    # scored once, by the fold model whose bank left it out; no test image is read.
    done = run_in(workdir, test_config, "results/tem/cv/metrics.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cv_root = workdir / "results" / "tem" / "cv"
    pooled = json.loads((cv_root / "metrics.json").read_text())
    training = sorted(name.removeprefix("msa_em/") for name in bank["images"])
    assert pooled["cv_folds"] == 2 and pooled["msa_em/test_images"] == training
    assert pooled["msa_em/model_minus_baseline/ap50/images"] == 10
    for fold in (0, 1):
        scored = json.loads((cv_root / f"fold{fold}" / "metrics.json").read_text())
        fold_bank = json.loads((cv_root / f"fold{fold}" / "banks" / "labelled.json").read_text())
        left_out = {f"msa_em/{name}" for name in scored["msa_em/test_images"]}
        assert len(left_out) == 5 and not left_out & set(fold_bank["images"])
        assert not test_names & set(fold_bank["images"]) and len(fold_bank["images"]) == 5
        fold_film = json.loads((cv_root / f"fold{fold}" / "banks" / "film.json").read_text())
        assert fold_film["images"] == fold_bank["images"]


def load_test_docs() -> ModuleType:
    """``tests/test_docs.py`` as a module, for its tutorial runner (tests are no package)."""
    spec = importlib.util.spec_from_file_location(
        "test_docs_runner", REPO / "tests" / "test_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tutorials_run_on_the_test_models(test_config_run, shared_data):
    workdir, _, done = test_config_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    docs = load_test_docs()
    tutorials = sorted((REPO / "docs" / "tutorials").glob("*.md"))
    assert [path.stem for path in tutorials] == ["recipes", "tem", "xrd"]
    # The tutorials read the data as a user in the repository root does: ../shared/data.
    shared = workdir.parent / "shared"
    shared.mkdir(exist_ok=True)
    if not (shared / "data").exists():
        (shared / "data").symlink_to(shared_data, target_is_directory=True)
    matplotlib.use("Agg")  # figures are saved, never shown (plt.show() does nothing)
    for path in tutorials:
        docs.run_tutorial(path, workdir)
