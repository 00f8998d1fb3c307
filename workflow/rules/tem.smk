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


# The students' film bank: the training part of `tem.bank.film_sets`, trusted as film only, far
# from every labelled particle (nanoxtal.tem.bank.film_labels).
# A rule of its own rather than `use rule tem_bank`: a film parameter in tem_bank would change
# its params record, and Snakemake would retrain the teacher of every existing run.
rule tem_film_bank:
    input:
        lambda wildcards: [dataset_dir(TEM_SETS[name]) for name in TEM_FILM_SETS],
    output:
        bank="results/tem/banks/film.npz",
        summary="results/tem/banks/film.json",
    params:
        sets=lambda wildcards, input: tem_set_options(TEM_FILM_SETS, input),
        split=tem_split_options(),
        margin=config["tem"]["bank"]["film_margin_px"],
    log:
        "logs/tem/film_bank.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem bank {params.sets} {params.split} --film-margin {params.margin}"
        " --out {output.bank:q} --summary {output.summary:q} > {log:q} 2>&1"


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


wildcard_constraints:
    student=r"\d+",


# One student per seed of `tem.student.seeds`, all from the teacher's weights; tem_publish
# averages them.
rule tem_student:
    input:
        init=rules.tem_teacher.output[0],
        # Without unlabelled micrographs there is nothing to pseudo-label: labelled bank only.
        banks=[rules.tem_bank.output.bank]
        + ([rules.tem_pseudo.output[0]] if TEM_UNLABELED else [])
        + ([rules.tem_film_bank.output.bank] if TEM_FILM_SETS else []),
    output:
        "results/tem/students/seed{student}/models/best.ckpt",
    params:
        out_dir=lambda wildcards, output: Path(output[0]).parent.parent,
        settings=tem_train_settings("student"),
        trainer=trainer_settings(config["tem"]["student"]["epochs"]),
        banks=lambda wildcards, input: " ".join(f"--bank '{bank}'" for bank in input.banks),
    log:
        "logs/tem/student_seed{student}.log",
    benchmark:
        "results/benchmarks/tem/student_seed{student}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=0,  # GPUs per job on a cluster: set in the profile (profiles/slurm)
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem train --out-dir {params.out_dir:q} {params.banks} --init {input.init:q}"
        " --settings {params.settings:q} --trainer {params.trainer:q} --seed {wildcards.student}"
        " > {log:q} 2>&1"


# The published segmenter: the weight average of the students (one student: its weights).
rule tem_publish:
    input:
        expand(rules.tem_student.output[0], student=TEM_STUDENT_SEEDS),
    output:
        "results/tem/models/best.ckpt",
    log:
        "logs/tem/publish.log",
    localrule: True
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem soup {input:q} --out {output:q} > {log:q} 2>&1"


rule tem_evaluate:
    input:
        model=rules.tem_publish.output[0],
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
        set_segment=" ".join(
            f"--set-segment {shlex.quote(f'{name}={json.dumps(values)}')}"
            for name, values in config["tem"]["evaluate"]["segment"].items()
            if name in TEM_EVALUATED
        ),
        shapes=lambda wildcards, output: (
            f"--shapes-per-class {config['tem']['evaluate']['shapes']['per_class']}"
            f" --shapes-seed {config['tem']['evaluate']['shapes']['seed']}"
            f" --shapes-figure '{output.shapes}'"
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
        " --segment {params.segment:q} {params.set_segment} --out {output.metrics:q}"
        " --per-image {output.per_image:q} --figure {output.figure:q}"
        " {params.shapes} > {log:q} 2>&1"


rule tem_measure:
    input:
        model=rules.tem_publish.output[0],
        images=lambda wildcards: dataset_dir(TEM_MEASURED[wildcards.name]),
    output:
        particles="results/tem/measure/{name}/particles.csv",
        summary=report(
            "results/tem/measure/{name}/summary.csv",
            caption="../report/tem_measure.rst",
            category="TEM",
            labels={"measured": "{name}"},
        ),
        samples="results/tem/measure/{name}/samples.csv",
    params:
        out_dir=lambda wildcards, output: Path(output.particles).parent,
        segment=json.dumps(config["tem"]["segment"]),
        samples=config["tem"]["measure"]["samples"],
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
        " --segment {params.segment:q} --samples {params.samples} --overwrite --no-progress"
        " > {log:q} 2>&1"


# Cross-validation inside the training part, on demand (`snakemake --cores 2 results/tem/cv/metrics.json`):
# the chain above (bank -> teacher -> pseudo -> students -> publish -> evaluate) once per fold, under
# results/tem/cv/fold<k>/. Fold k's bank leaves out the k-th fold of every set's training part;
# its evaluation scores that fold. The pooled metrics score each training image once, by models
# that never saw it, so settings can be compared without looking at the test part, which no
# rule here reads. About 20 min per fold on 2 CPU cores with the default config.
TEM_CV = "results/tem/cv/fold{fold}"


wildcard_constraints:
    fold=r"\d+",


use rule tem_bank as tem_cv_bank with:
    output:
        bank=f"{TEM_CV}/banks/labelled.npz",
        summary=f"{TEM_CV}/banks/labelled.json",
    params:
        split=tem_cv_split_options,
    log:
        "logs/tem/cv/fold{fold}/bank.log",


use rule tem_film_bank as tem_cv_film_bank with:
    output:
        bank=f"{TEM_CV}/banks/film.npz",
        summary=f"{TEM_CV}/banks/film.json",
    params:
        split=tem_cv_split_options,
    log:
        "logs/tem/cv/fold{fold}/film_bank.log",


use rule tem_teacher as tem_cv_teacher with:
    input:
        rules.tem_cv_bank.output.bank,
    output:
        f"{TEM_CV}/teacher/models/best.ckpt",
    log:
        "logs/tem/cv/fold{fold}/teacher.log",
    benchmark:
        "results/benchmarks/tem/cv/fold{fold}/teacher.tsv"


use rule tem_pseudo as tem_cv_pseudo with:
    input:
        model=rules.tem_cv_teacher.output[0],
        images=[dataset_dir(name) for name in TEM_UNLABELED],
    output:
        f"{TEM_CV}/banks/pseudo.npz",
    log:
        "logs/tem/cv/fold{fold}/pseudo.log",
    benchmark:
        "results/benchmarks/tem/cv/fold{fold}/pseudo.tsv"


use rule tem_student as tem_cv_student with:
    input:
        init=rules.tem_cv_teacher.output[0],
        banks=[rules.tem_cv_bank.output.bank]
        + ([rules.tem_cv_pseudo.output[0]] if TEM_UNLABELED else [])
        + ([rules.tem_cv_film_bank.output.bank] if TEM_FILM_SETS else []),
    output:
        f"{TEM_CV}/students/seed{{student}}/models/best.ckpt",
    log:
        "logs/tem/cv/fold{fold}/student_seed{student}.log",
    benchmark:
        "results/benchmarks/tem/cv/fold{fold}/student_seed{student}.tsv"


use rule tem_publish as tem_cv_publish with:
    input:
        expand(rules.tem_cv_student.output[0], student=TEM_STUDENT_SEEDS, allow_missing=True),
    output:
        f"{TEM_CV}/models/best.ckpt",
    log:
        "logs/tem/cv/fold{fold}/publish.log",


use rule tem_evaluate as tem_cv_evaluate with:
    input:
        model=rules.tem_cv_publish.output[0],
        sets=lambda wildcards: [dataset_dir(TEM_SETS[name]) for name in TEM_EVALUATED],
    output:
        metrics=f"{TEM_CV}/metrics.json",
        per_image=f"{TEM_CV}/per_image.csv",
        figure=f"{TEM_CV}/evaluation.png",
    params:
        split=tem_cv_split_options,
        shapes="",  # simulated shapes do not depend on the fold: scored once, by tem_evaluate
    log:
        "logs/tem/cv/fold{fold}/evaluate.log",
    benchmark:
        "results/benchmarks/tem/cv/fold{fold}/evaluate.tsv"


rule tem_cv:
    input:
        metrics=expand(f"{TEM_CV}/metrics.json", fold=range(config["tem"]["cv"]["folds"])),
        per_image=expand(f"{TEM_CV}/per_image.csv", fold=range(config["tem"]["cv"]["folds"])),
    output:
        metrics=report(
            "results/tem/cv/metrics.json",
            caption="../report/tem_cv.rst",
            category="TEM",
            labels={"result": "cross-validation metrics"},
        ),
        per_image="results/tem/cv/per_image.csv",
        figure=report(
            "results/tem/cv/evaluation.png",
            caption="../report/tem_cv.rst",
            category="TEM",
            labels={"figure": "cross-validation"},
        ),
    params:
        folds=lambda wildcards, input: " ".join(
            f"'{Path(path).parent}'" for path in input.metrics
        ),
    log:
        "logs/tem/cv/pool.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem pool {params.folds} --out {output.metrics:q}"
        " --per-image {output.per_image:q} --figure {output.figure:q} > {log:q} 2>&1"
