# A lab's own syntheses (config `lab`): each sample's micrographs measured in a job of its own
# (a micrograph added to one sample reruns that sample alone), the samples labelled, the labels
# joined to recipes_train's data, and a model of the published recipes checked against them.


wildcard_constraints:
    lab="[A-Za-z0-9_.-]+",
    sample="[^/]+",


rule lab_measure:
    input:
        images=lab_micrographs,
        model=(
            rules.tem_publish.output[0]
            if config["recipes"]["labels"]["segmenter"] == "network"
            else []
        ),
    output:
        samples="results/recipes/lab/{lab}/measure/{sample}/samples.csv",
        summary="results/recipes/lab/{lab}/measure/{sample}/summary.csv",
        particles="results/recipes/lab/{lab}/measure/{sample}/particles.csv",
    params:
        options=lab_measure_options,
        segment=json.dumps(config["tem"]["segment"]),
        out_dir=lambda wildcards, output: os.path.dirname(output.samples),
    log:
        "logs/recipes/lab/{lab}/measure_{sample}.log",
    benchmark:
        "results/benchmarks/recipes/lab/{lab}/measure_{sample}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/tem.yaml"
    shell:
        "nanoxtal tem measure {input.images:q} --out {params.out_dir:q} {params.options}"
        " --segment {params.segment:q} --samples folder --overwrite --no-progress > {log:q} 2>&1"


rule recipes_label:
    input:
        measured=lambda wildcards: lab_measured(wildcards.lab),
        data=dataset_dir("recipes"),
    output:
        labelled="results/recipes/lab/{lab}/labelled.parquet",
        rejects="results/recipes/lab/{lab}/label_rejects.csv",
    params:
        root=lambda wildcards: str(LABS[wildcards.lab].root),
        measured="results/recipes/lab/{lab}/measure",
        shapes=lambda wildcards, input: f"{input.data}/shape_classes.txt",
        settings=config["recipes"]["labels"],
    log:
        "logs/recipes/lab/{lab}/label.log",
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes label {params.root:q} --name {wildcards.lab} --measured {params.measured:q}"
        " --shapes {params.shapes:q} --out {output.labelled:q} --rejects {output.rejects:q}"
        " --min-particles {params.settings[min_particles]}"
        " --min-shape-support {params.settings[min_shape_support]} > {log:q} 2>&1"


rule recipes_check:
    input:
        table=rules.recipes_clean.output.table,
        labelled=rules.recipes_label.output.labelled,
        data=dataset_dir("recipes"),
    output:
        check="results/recipes/lab/{lab}/check.csv",
        metrics="results/recipes/lab/{lab}/check.json",
    params:
        shapes=lambda wildcards, input: f"{input.data}/shape_classes.txt",
        settings=recipe_data_settings(["trees", "forest"]),
        seed=config["seed"],
    log:
        "logs/recipes/lab/{lab}/check.log",
    benchmark:
        "results/benchmarks/recipes/lab/{lab}/check.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes check {input.table:q} {input.labelled:q} --shapes {params.shapes:q}"
        " --out {output.check:q} --metrics {output.metrics:q}"
        " --max-size {params.settings[max_size_nm]} --vocabulary {params.settings[vocabulary]}"
        " --trees {params.settings[trees]} --forest {params.settings[forest]}"
        " --threads {threads} --seed {params.seed} > {log:q} 2>&1"
