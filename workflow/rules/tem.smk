# TEM stage: a segmenter trained on simulated micrographs and the training part of the labelled
# real sets (teacher), pseudo-labels of unlabelled real micrographs (self-training), a student
# started from the teacher; evaluation against the classical baseline on the held-out parts;
# particle measurements of real micrographs.


rule tem_bank:
    input:
        lambda wildcards: [dataset_dir(TEM_SETS[name]) for name in TEM_BANK_SETS],
    output:
        bank="results/tem/banks/labelled.npz",
        summary="results/tem/banks/labelled.json",
    params:
        sets=lambda wildcards, input: tem_set_options(TEM_BANK_SETS, input),
        split=tem_split_options(),
    log:
        "logs/tem/bank.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem bank {params.sets} {params.split} --out {output.bank:q}"
        " --summary {output.summary:q} > {log:q} 2>&1"


rule tem_teacher:
    input:
        rules.tem_bank.output.bank,
    output:
        "results/tem/teacher/models/best.ckpt",
    params:
        out_dir=lambda wildcards, output: Path(output[0]).parent.parent,
        settings=tem_train_settings("teacher"),
        trainer=trainer_settings(config["tem"]["teacher"]["epochs"]),
        seed=config["seed"],
    log:
        "logs/tem/teacher.log",
    benchmark:
        "results/benchmarks/tem/teacher.tsv"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=0,  # GPUs per job on a cluster: set in the profile (profiles/slurm)
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem train --out-dir {params.out_dir:q} --bank {input:q}"
        " --settings {params.settings:q} --trainer {params.trainer:q} --seed {params.seed}"
        " > {log:q} 2>&1"


rule tem_pseudo:
    input:
        model=rules.tem_teacher.output[0],
        images=[dataset_dir(name) for name in TEM_UNLABELED],
    output:
        "results/tem/banks/pseudo.npz",
    params:
        settings=json.dumps(config["tem"]["pseudo"]),
        segment=json.dumps(config["tem"]["segment"]),
    log:
        "logs/tem/pseudo.log",
    benchmark:
        "results/benchmarks/tem/pseudo.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem pseudo {input.images:q} --model {input.model:q} --out {output:q}"
        " --settings {params.settings:q} --segment {params.segment:q} --no-progress > {log:q} 2>&1"


rule tem_student:
    input:
        init=rules.tem_teacher.output[0],
        # Without unlabelled micrographs there is nothing to pseudo-label: labelled bank only.
        banks=[rules.tem_bank.output.bank]
        + ([rules.tem_pseudo.output[0]] if TEM_UNLABELED else []),
    output:
        "results/tem/models/best.ckpt",
    params:
        out_dir=lambda wildcards, output: Path(output[0]).parent.parent / "student",
        settings=tem_train_settings("student"),
        trainer=trainer_settings(config["tem"]["student"]["epochs"]),
        banks=lambda wildcards, input: " ".join(f"--bank '{bank}'" for bank in input.banks),
        seed=config["seed"],
    log:
        "logs/tem/student.log",
    benchmark:
        "results/benchmarks/tem/student.tsv"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=0,  # GPUs per job on a cluster: set in the profile (profiles/slurm)
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem train --out-dir {params.out_dir:q} {params.banks} --init {input.init:q}"
        " --settings {params.settings:q} --trainer {params.trainer:q} --seed {params.seed}"
        " > {log:q} 2>&1 && cp {params.out_dir:q}/models/best.ckpt {output:q}"


rule tem_evaluate:
    input:
        model=rules.tem_student.output[0],
        sets=lambda wildcards: [dataset_dir(TEM_SETS[name]) for name in TEM_EVALUATED],
    output:
        metrics=report(
            "results/tem/metrics.json",
            caption="../report/tem_metrics.rst",
            category="TEM",
            labels={"result": "metrics"},
        ),
        per_image="results/tem/per_image.csv",
        figure=report(
            "results/tem/figures/evaluation.png",
            caption="../report/tem_figures.rst",
            category="TEM",
            labels={"figure": "evaluation"},
        ),
        shapes=report(
            "results/tem/figures/shapes.png",
            caption="../report/tem_shapes.rst",
            category="TEM",
            labels={"figure": "shape classes"},
        ),
    params:
        sets=lambda wildcards, input: tem_set_options(TEM_EVALUATED, input.sets),
        split=tem_split_options(),
        segment=json.dumps(config["tem"]["segment"]),
        polarity=" ".join(
            f"--polarity {name}={value}"
            for name, value in config["tem"]["evaluate"]["polarity"].items()
        ),
        shapes=lambda wildcards: (
            f"--shapes-per-class {config['tem']['evaluate']['shapes']['per_class']}"
            f" --shapes-seed {config['tem']['evaluate']['shapes']['seed']}"
        ),
    log:
        "logs/tem/evaluate.log",
    benchmark:
        "results/benchmarks/tem/evaluate.tsv"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem evaluate {params.sets} {params.split} --model {input.model:q}"
        " --segment {params.segment:q} {params.polarity} --out {output.metrics:q}"
        " --per-image {output.per_image:q} --figure {output.figure:q}"
        " {params.shapes} --shapes-figure {output.shapes:q} > {log:q} 2>&1"


rule tem_measure:
    input:
        model=rules.tem_student.output[0],
        images=lambda wildcards: dataset_dir(TEM_MEASURED[wildcards.name]),
    output:
        particles="results/tem/measure/{name}/particles.csv",
        summary=report(
            "results/tem/measure/{name}/summary.csv",
            caption="../report/tem_measure.rst",
            category="TEM",
            labels={"measured": "{name}"},
        ),
    params:
        out_dir=lambda wildcards, output: Path(output.particles).parent,
        segment=json.dumps(config["tem"]["segment"]),
    log:
        "logs/tem/measure_{name}.log",
    benchmark:
        "results/benchmarks/tem/measure_{name}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem measure {input.images:q} --model {input.model:q} --out {params.out_dir:q}"
        " --segment {params.segment:q} --no-progress > {log:q} 2>&1"
