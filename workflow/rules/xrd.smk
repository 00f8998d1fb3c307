# XRD stage: structures (symmetry, labels, formula split), simulated stick patterns, classifiers
# trained on patterns rendered on the fly, fine-tuned on RRUFF, evaluated, and applied.


wildcard_constraints:
    arch="xrdnet|npcnn",


rule xrd_structures:
    input:
        [dataset_dir(source["dataset"]) for source in XRD_SOURCES],
    output:
        table="results/xrd/structures.parquet",
        rejects="results/xrd/rejects.csv",
        summary="results/xrd/structures_summary.json",
    params:
        sources=xrd_source_arguments(),
        settings=config["xrd"]["structures"],
        seed=config["seed"],
        max_structures=max_structures_option(),
        split=" ".join(str(f) for f in config["xrd"]["structures"]["split"]),
    log:
        "logs/xrd/structures.log",
    benchmark:
        "results/benchmarks/xrd/structures.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd structures {params.sources} --out {output.table:q}"
        " --rejects {output.rejects:q} --summary {output.summary:q}"
        " --symprec {params.settings[symprec]} --angle-tolerance {params.settings[angle_tolerance]}"
        " --split {params.split} --seed {params.seed} {params.max_structures}"
        " --workers {threads} > {log:q} 2>&1"


rule xrd_random:
    input:
        rules.xrd_structures.output.table,
    output:
        table="results/xrd/random_structures.parquet",
        rejects="results/xrd/random_rejects.csv",
        summary="results/xrd/random_summary.json",
    params:
        settings=config["xrd"]["random"],
        seed=config["seed"],
    log:
        "logs/xrd/random.log",
    benchmark:
        "results/benchmarks/xrd/random.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd random {input:q} --out {output.table:q} --rejects {output.rejects:q}"
        " --summary {output.summary:q} --per-group {params.settings[per_group]}"
        " --max-species {params.settings[max_species]} --max-atoms {params.settings[max_atoms]}"
        " --attempts {params.settings[attempts]} --seed {params.seed} --workers {threads}"
        " > {log:q} 2>&1"


rule xrd_simulate:
    input:
        rules.xrd_structures.output.table,
        rules.xrd_random.output.table,
    output:
        "results/xrd/peaks.parquet",
    params:
        settings=config["xrd"]["simulate"],
        two_theta=" ".join(str(t) for t in config["xrd"]["simulate"]["two_theta"]),
        debye_waller=debye_waller_option(),
    log:
        "logs/xrd/simulate.log",
    benchmark:
        "results/benchmarks/xrd/simulate.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd simulate {input:q} --out {output:q}"
        " --wavelength {params.settings[wavelength]} --two-theta {params.two_theta}"
        " {params.debye_waller} > {log:q} 2>&1"


rule xrd_references:
    input:
        structures=rules.xrd_structures.output.table,
        peaks=rules.xrd_simulate.output[0],
        measured=dataset_dir("xrd_rruff") if "xrd_rruff" in DATASET_NAMES else [],
    output:
        "results/xrd/references.npz",
    params:
        # How far match 1 is trusted: fitted on the RRUFF fine-tune part (never the held-out).
        measured=lambda wildcards, input: (
            f"--measured {input.measured}/rruff_dev.npz"
            f" --fraction {config['xrd']['finetune']['fraction']} --seed {config['seed']}"
            if input.measured
            else ""
        ),
        sources=lambda wildcards: (
            "--sources " + " ".join(config["xrd"]["references"]["sources"])
            if config["xrd"]["references"]["sources"]
            else ""
        ),
    log:
        "logs/xrd/references.log",
    benchmark:
        "results/benchmarks/xrd/references.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd references {input.structures:q} --peaks {input.peaks:q}"
        " {params.sources} {params.measured} --out {output:q} --no-progress > {log:q} 2>&1"


rule xrd_train:
    input:
        structures=rules.xrd_structures.output.table,
        random=rules.xrd_random.output.table,
        peaks=rules.xrd_simulate.output[0],
    output:
        "results/xrd/{arch}/models/best.ckpt",
    params:
        out_dir=lambda wildcards, output: Path(output[0]).parent.parent,
        settings=lambda wildcards: xrd_train_settings(wildcards.arch),
        trainer=trainer_settings(config["xrd"]["train"]["epochs"]),
        seed=config["seed"],
    log:
        "logs/xrd/train_{arch}.log",
    benchmark:
        "results/benchmarks/xrd/train_{arch}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=0,  # GPUs per job on a cluster: set in the profile (profiles/slurm)
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd train --structures {input.structures:q} {input.random:q}"
        " --peaks {input.peaks:q}"
        " --out-dir {params.out_dir:q} --settings {params.settings:q}"
        " --trainer {params.trainer:q} --seed {params.seed} > {log:q} 2>&1"


rule xrd_finetune:
    input:
        model=rules.xrd_train.output[0],
        measured=dataset_dir("xrd_rruff"),
        # Each prediction pipeline's abstention threshold (library, references, both)
        # is chosen with them.
        references=rules.xrd_references.output[0],
    output:
        "results/xrd/{arch}/finetune/models/best.ckpt",
        library="results/xrd/{arch}/finetune/library.npz",
    params:
        measured=lambda wildcards, input: f"{input.measured}/rruff_dev.npz",
        out_dir=lambda wildcards, output: Path(output[0]).parent.parent,
        settings=json.dumps(xrd_finetune_settings()),
        trainer=trainer_settings(config["xrd"]["finetune"]["epochs"]),
        seed=config["seed"],
    log:
        "logs/xrd/finetune_{arch}.log",
    benchmark:
        "results/benchmarks/xrd/finetune_{arch}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=0,  # GPUs per job on a cluster: set in the profile (profiles/slurm)
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd finetune --model {input.model:q} --measured {params.measured:q}"
        " --references {input.references:q} --out-dir {params.out_dir:q}"
        " --settings {params.settings:q} --trainer {params.trainer:q} --seed {params.seed}"
        " > {log:q} 2>&1"


rule xrd_refit:
    input:
        model=rules.xrd_train.output[0],
        measured=dataset_dir("xrd_rruff"),
        # Each prediction pipeline's abstention threshold (library, references, both)
        # is chosen with them.
        references=rules.xrd_references.output[0],
    output:
        "results/xrd/{arch}/refit/models/best.ckpt",
        library="results/xrd/{arch}/refit/library.npz",
    params:
        measured=lambda wildcards, input: f"{input.measured}/rruff_dev.npz",
        out_dir=lambda wildcards, output: Path(output[0]).parent.parent,
        settings=json.dumps(xrd_finetune_settings(fraction=1.0)),
        trainer=trainer_settings(config["xrd"]["finetune"]["epochs"]),
        seed=config["seed"],
    log:
        "logs/xrd/refit_{arch}.log",
    benchmark:
        "results/benchmarks/xrd/refit_{arch}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=0,  # GPUs per job on a cluster: set in the profile (profiles/slurm)
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd finetune --model {input.model:q} --measured {params.measured:q}"
        " --references {input.references:q} --out-dir {params.out_dir:q}"
        " --settings {params.settings:q} --trainer {params.trainer:q} --seed {params.seed}"
        " > {log:q} 2>&1"


rule xrd_evaluate:
    input:
        synthetic=expand(rules.xrd_train.output[0], arch=XRD_ARCHITECTURES),
        finetuned=expand(rules.xrd_finetune.output[0], arch=XRD_ARCHITECTURES),
        structures=rules.xrd_structures.output.table,
        peaks=rules.xrd_simulate.output[0],
        references=rules.xrd_references.output[0],
        measured=dataset_dir("xrd_rruff"),
        single_phase=[dataset_dir("xrd_autoanalyzer")] if "xrd_autoanalyzer" in DATASET_NAMES else [],
    output:
        metrics=report(
            "results/xrd/metrics.json",
            caption="../report/xrd_metrics.rst",
            category="XRD",
            labels={"result": "metrics"},
        ),
        figures=report(
            directory("results/xrd/figures"),
            patterns=["{name}.png"],
            caption="../report/xrd_figures.rst",
            category="XRD",
            labels={"figure": "{name}"},
        ),
    params:
        models=lambda wildcards, input: " ".join(
            f"--model {arch}={synthetic},{finetuned}"
            for arch, synthetic, finetuned in zip(
                XRD_ARCHITECTURES, input.synthetic, input.finetuned
            )
        ),
        measured=lambda wildcards, input: f"{input.measured}/rruff_dev.npz",
        fraction=config["xrd"]["finetune"]["fraction"],
        test_size=config["xrd"]["evaluate"]["test_size"],
        single_phase=lambda wildcards, input: (
            f"--single-phase {input.single_phase}" if input.single_phase else ""
        ),
        seed=config["seed"],
    log:
        "logs/xrd/evaluate.log",
    benchmark:
        "results/benchmarks/xrd/evaluate.tsv"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd evaluate {params.models} --structures {input.structures:q}"
        " --peaks {input.peaks:q} --measured {params.measured:q} --fraction {params.fraction}"
        " --test-size {params.test_size} --seed {params.seed} {params.single_phase}"
        " --references {input.references:q}"
        " --out {output.metrics:q}"
        " --figures {output.figures:q} > {log:q} 2>&1"


# Published: the refit on every labelled measured pattern (xrd_evaluate scores the fine-tune of
# the fine-tune part, on the held-out half); or that fine-tune (xrd.finetune.refit: false).
PUBLISHED_STAGE = rules.xrd_refit if config["xrd"]["finetune"]["refit"] else rules.xrd_finetune


rule xrd_publish:
    input:
        model=expand(PUBLISHED_STAGE.output[0], arch=config["xrd"]["primary"]),
        library=expand(PUBLISHED_STAGE.output.library, arch=config["xrd"]["primary"]),
    output:
        model="results/xrd/models/best.ckpt",
        library="results/xrd/models/library.npz",
    log:
        "logs/xrd/publish.log",
    localrule: True
    conda:
        "../../envs/xrd.yaml"
    shell:
        "(cp {input.model:q} {output.model:q} && cp {input.library:q} {output.library:q})"
        " > {log:q} 2>&1"


rule xrd_predict_measured:
    input:
        model=rules.xrd_publish.output.model,
        references=rules.xrd_references.output[0],
        patterns=[dataset_dir(name) for name in XRD_MEASURED if name in DATASET_NAMES],
    output:
        report(
            "results/xrd/predictions/measured.csv",
            caption="../report/xrd_predictions.rst",
            category="XRD",
            labels={"result": "predictions on measured files"},
        ),
    log:
        "logs/xrd/predict_measured.log",
    conda:
        "../../envs/xrd.yaml"
    shell:
        "nanoxtal xrd predict $(find {input.patterns:q} -name '*.xy' -o -name '*.xrdml' | sort)"
        " --model {input.model:q} --no-library --references {input.references:q}"
        " --out {output:q} > {log:q} 2>&1"
