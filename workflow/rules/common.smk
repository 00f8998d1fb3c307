# Helpers and input functions shared by the workflow files; no science here. The dataset registry
# (what exists, where, which checksums) is the package's, so the workflow and the CLI agree.

import json
import os
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

from nanoxtal.data import DatasetError, check_present, get_dataset

DATA_ROOT = Path(config["data"]["root"])
MIRROR = config["data"]["mirror"]
RESOURCES = "resources"
DATASET_NAMES = list(config["data"]["datasets"])

for _name in DATASET_NAMES:
    try:
        get_dataset(_name)
    except DatasetError as error:
        raise WorkflowError(f"config data.datasets: {error}") from None


def dataset_dir(name):
    """Folder the data rules import dataset `name` into (an input for stage rules)."""
    return f"{RESOURCES}/{name}"


def dataset_sources(wildcards):
    """Input function of `data_import`: the dataset's files under the data root.

    Listing them as inputs makes Snakemake re-import a dataset (and rerun what depends on it)
    when one of its files changes. Without a mirror a missing file stops the workflow here,
    before anything runs, with the registry's message: dataset, expected path, where to get it.
    """
    dataset = get_dataset(wildcards.dataset)
    if not MIRROR:
        try:
            check_present(dataset, DATA_ROOT)
        except DatasetError as error:
            raise WorkflowError(str(error)) from None
    base = dataset.location(DATA_ROOT)
    return [str(base / f.path) for f in dataset.files if (base / f.path).is_file()]


def mirror_option():
    """The `--mirror` option of `nanoxtal data import`, empty when offline."""
    return f"--mirror '{MIRROR}'" if MIRROR else ""


def parent_dir(wildcards, output):
    """Params function: the folder holding a rule's first output (e.g. `--dest` of imports)."""
    return os.path.dirname(output[0])


def max_structures_option():
    """`--max-structures N` of `nanoxtal xrd structures`, empty for all structures."""
    limit = config["xrd"]["structures"]["max_structures"]
    return "" if limit is None else f"--max-structures {limit}"


def debye_waller_option():
    """`--debye-waller B` of `nanoxtal xrd simulate`, empty for none."""
    b = config["xrd"]["simulate"]["debye_waller"]
    return "" if b is None else f"--debye-waller {b}"


XRD_ARCHITECTURES = list(config["xrd"]["train"]["architectures"])
# Measured patterns the published XRD model is run on at the end of the workflow.
XRD_MEASURED = ["xrd_autoanalyzer", "xrd_alab"]
# Structure sources whose dataset this run imports, in order of preference.
XRD_SOURCES = [
    source for source in config["xrd"]["structures"]["sources"] if source["dataset"] in DATASET_NAMES
]


def xrd_source_arguments():
    """`NAME=PATH ... --published NAME --prefer NAME` of `nanoxtal xrd structures`."""
    named = [f"{s['name']}={dataset_dir(s['dataset'])}/{s['file']}" for s in XRD_SOURCES]
    published = [
        f"--published {s['name']}" for s in XRD_SOURCES if s.get("symmetry") == "published"
    ]
    preferred = [f"--prefer {s['name']}" for s in XRD_SOURCES if s.get("preferred")]
    return " ".join([*(shlex.quote(n) for n in named), *published, *preferred])


def trainer_settings(epochs):
    """JSON of the shared `trainer` config block with a stage's number of epochs."""
    return json.dumps({**config["trainer"], "max_epochs": epochs})


def xrd_train_settings(arch):
    """JSON of nanoxtal.xrd.training.TrainSettings for one architecture."""
    block = dict(config["xrd"]["train"])
    arch_kwargs = block.pop("arch_kwargs").get(arch, {})
    overrides = block.pop("overrides").get(arch, {})
    for key in ("architectures", "epochs"):
        block.pop(key)
    return json.dumps({**block, **overrides, "arch": arch, "arch_kwargs": arch_kwargs})


def xrd_finetune_settings(**changes):
    """nanoxtal.xrd.training.FinetuneSettings from the `xrd.finetune` block, with `changes`."""
    block = {k: v for k, v in config["xrd"]["finetune"].items() if k not in ("epochs", "refit")}
    return {**block, **changes}


def recipe_data_settings(extra=()):
    """The `recipes.evaluate` keys that decide a recipe rule's data (size limit, folds,
    vocabulary) and `extra` ones: passing just these keeps other changes from rerunning it."""
    block = config["recipes"]["evaluate"]
    return {key: block[key] for key in ("max_size_nm", "folds", "vocabulary", *extra)}


# Labelled TEM sets (the layout nanoxtal.tem.io reads) and the datasets that hold them.
TEM_SETS = {
    "sophon_example": "tem_sophon",
    "msa_em": "tem_msa_em",
    "au_monolayer": "tem_au_monolayer",
    "stem_boxes": "tem_stem_boxes",
}
TEM_EVALUATED = [name for name, dataset in TEM_SETS.items() if dataset in DATASET_NAMES]
TEM_BANK_SETS = [name for name in config["tem"]["bank"]["sets"] if name in TEM_EVALUATED]
TEM_FILM_SETS = [name for name in config["tem"]["bank"]["film_sets"] if name in TEM_EVALUATED]
TEM_UNLABELED = [name for name in ["tem_unlabeled"] if name in DATASET_NAMES]
# Micrographs `nanoxtal tem measure` runs on, by output name.
TEM_MEASURED = {
    name: dataset
    for name, dataset in {"sophon_example": "tem_sophon", "unlabeled": "tem_unlabeled"}.items()
    if dataset in DATASET_NAMES and name in config["tem"]["measure"]["sets"]
}


def tem_set_options(names, folders):
    """`--set NAME=FOLDER` options of `nanoxtal tem bank|evaluate` for the given sets."""
    return " ".join(f"--set '{name}={folder}'" for name, folder in zip(names, folders))


def tem_split_options():
    """The fixed train/test split of the labelled TEM sets, the same for bank and evaluate."""
    return f"--split-seed {config['seed']} --test-share {config['tem']['test_share']}"


def tem_cv_split_options(wildcards):
    """The split of one cross-validation fold: the training part cut into `tem.cv.folds`."""
    folds = config["tem"]["cv"]["folds"]
    return f"{tem_split_options()} --cv-folds {folds} --cv-fold {wildcards.fold}"


# Seeds of the students averaged into the published TEM segmenter (default: the global seed).
TEM_STUDENT_SEEDS = config["tem"]["student"].get("seeds") or [config["seed"]]


def tem_train_settings(role):
    """JSON of nanoxtal.tem.training.TrainSettings: `tem.train` with the role's overrides."""
    overrides = {k: v for k, v in config["tem"][role].items() if k not in ("epochs", "seeds")}
    return json.dumps({**config["tem"]["train"], **overrides})


# Lab datasets (config `lab`): each sheet and its folders are checked here, before anything
# runs, so a malformed sheet stops the workflow with every problem named (file, row, column).
def _read_labs():
    from nanoxtal.recipes.lab import LabError, read_lab

    labs = {}
    for name, root in config["lab"].items():
        try:
            labs[name] = read_lab(root, name)
        except (LabError, OSError) as error:
            raise WorkflowError(f"config lab.{name}: {root}:\n{error}") from None
    return labs


LABS = _read_labs()


def lab_micrographs(wildcards):
    """Input function of `lab_measure`: the sample's micrographs (a new one reruns the job)."""
    return [str(path) for path in LABS[wildcards.lab].micrographs[wildcards.sample]]


def lab_measure_options(wildcards, input):
    """`--model` (or `--classical`) and the sheet's `--nm-per-px` of one sample's measurement."""
    model = f"--model {shlex.quote(input.model)}" if input.get("model") else "--classical"
    nm_per_px = LABS[wildcards.lab].nm_per_px.get(wildcards.sample)
    return model + ("" if nm_per_px is None else f" --nm-per-px {nm_per_px}")


def lab_measured(lab):
    """The per-sample measurement folders' samples.csv of a lab."""
    return [f"results/recipes/lab/{lab}/measure/{sample}/samples.csv" for sample in LABS[lab].micrographs]


def all_targets():
    """Final outputs of the default run (grows as stages land)."""
    targets = [dataset_dir(name) for name in DATASET_NAMES]
    if XRD_SOURCES:
        targets += [
            "results/xrd/peaks.parquet",
            "results/xrd/structures_summary.json",
            "results/xrd/references.npz",
        ]
        if "xrd_rruff" in DATASET_NAMES:
            targets += ["results/xrd/metrics.json", "results/xrd/models/best.ckpt"]
            if any(name in DATASET_NAMES for name in XRD_MEASURED):
                targets.append("results/xrd/predictions/measured.csv")
    if TEM_BANK_SETS:
        targets += ["results/tem/metrics.json", "results/tem/models/best.ckpt"]
        targets += [f"results/tem/measure/{name}/summary.csv" for name in TEM_MEASURED]
    if "recipes" in DATASET_NAMES:
        targets += [
            "results/recipes/chemicals.json",
            "results/recipes/metrics.json",
            "results/recipes/importance/importance.json",
            "results/recipes/models/forest.pkl",
        ]
        for lab in LABS:
            targets += [f"results/recipes/lab/{lab}/labelled.parquet", f"results/recipes/lab/{lab}/check.csv"]
    return targets
