# Recipe stage: tidy the raw workbook, resolve chemicals, cross-validate size and shape models.


rule recipes_clean:
    input:
        dataset_dir("recipes"),
    output:
        table="results/recipes/recipes.parquet",
        rejects="results/recipes/rejects.csv",
        repairs="results/recipes/repairs.csv",
    params:
        sheet=lambda wildcards, input: f"{input[0]}/raw_recipe_dataset.xlsx",
        shapes=lambda wildcards, input: f"{input[0]}/shape_classes.txt",
    log:
        "logs/recipes/clean.log",
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes clean {params.sheet:q} --shapes {params.shapes:q}"
        " --out {output.table:q} --rejects {output.rejects:q} --repairs {output.repairs:q}"
        " > {log:q} 2>&1"


rule recipes_chemicals:
    input:
        rules.recipes_clean.output.table,
    output:
        report="results/recipes/chemicals.json",
        table="results/recipes/chemicals.csv",
    log:
        "logs/recipes/chemicals.log",
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes chemicals {input:q} --out {output.report:q} --table {output.table:q}"
        " > {log:q} 2>&1"


rule recipes_evaluate:
    input:
        table=rules.recipes_clean.output.table,
        data=dataset_dir("recipes"),
    output:
        metrics=report(
            "results/recipes/metrics.json",
            caption="../report/recipes_metrics.rst",
            category="Recipes",
            labels={"result": "metrics"},
        ),
        predictions="results/recipes/predictions.parquet",
        augmented="results/recipes/augmented.parquet",
        figures=report(
            directory("results/recipes/figures"),
            patterns=["{name}.png"],
            caption="../report/recipes_figures.rst",
            category="Recipes",
            labels={"figure": "{name}"},
        ),
    params:
        shapes=lambda wildcards, input: f"{input.data}/shape_classes.txt",
        settings=config["recipes"]["evaluate"],
        models=" ".join(config["recipes"]["evaluate"]["models"]),
        products=" ".join(config["recipes"]["evaluate"]["held_out_products"]),
        seed=config["seed"],
        augmentation=config["recipes"]["evaluate"]["augmentation"],
        transformer=json.dumps(config["recipes"]["evaluate"]["transformer"]),
        trainer=json.dumps(config["trainer"]),
        conversions=" ".join(
            str(c) for c in config["recipes"]["evaluate"]["augmentation"]["conversions"]
        ),
    log:
        "logs/recipes/evaluate.log",
    benchmark:
        "results/benchmarks/recipes/evaluate.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes evaluate {input.table:q} --shapes {params.shapes:q}"
        " --out {output.metrics:q} --predictions {output.predictions:q}"
        " --figures {output.figures:q} --models {params.models}"
        " --max-size {params.settings[max_size_nm]} --folds {params.settings[folds]}"
        " --products {params.products} --vocabulary {params.settings[vocabulary]}"
        " --trees {params.settings[trees]} --threads {threads} --seed {params.seed}"
        " --augment {params.augmentation[mode]} --augment-variants {params.augmentation[max_variants]}"
        " --augment-conversions {params.conversions} --augmented {output.augmented:q}"
        " --transformer {params.transformer:q} --trainer {params.trainer:q}"
        " --work-dir results/recipes/transformer"
        " > {log:q} 2>&1"


rule recipes_importance:
    input:
        rules.recipes_clean.output.table,
    output:
        table="results/recipes/importance/importance.csv",
        summary="results/recipes/importance/importance.json",
        figure=report(
            "results/recipes/importance/importance.png",
            caption="../report/recipes_importance.rst",
            category="Recipes",
            labels={"figure": "importance for size"},
        ),
        shape_figure=report(
            "results/recipes/importance/importance_shape.png",
            caption="../report/recipes_importance.rst",
            category="Recipes",
            labels={"figure": "importance for shape"},
        ),
    params:
        settings=config["recipes"]["importance"],
        # Only the keys it uses, so changing e.g. the evaluated models does not rerun it.
        evaluate=recipe_data_settings(["forest"]),
        seed=config["seed"],
    log:
        "logs/recipes/importance.log",
    benchmark:
        "results/benchmarks/recipes/importance.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes importance {input:q} --out {output.table:q}"
        " --summary {output.summary:q} --figure {output.figure:q}"
        " --max-size {params.evaluate[max_size_nm]} --folds {params.evaluate[folds]}"
        " --vocabulary {params.evaluate[vocabulary]} --trees {params.settings[trees]}"
        " --repeats {params.settings[repeats]} --forest {params.evaluate[forest]}"
        " --threads {threads} --seed {params.seed}"
        " > {log:q} 2>&1"


rule recipes_train:
    input:
        table=rules.recipes_clean.output.table,
        data=dataset_dir("recipes"),
        labs=[f"results/recipes/lab/{lab}/labelled.parquet" for lab in LABS],
    output:
        "results/recipes/models/forest.pkl",
    params:
        shapes=lambda wildcards, input: f"{input.data}/shape_classes.txt",
        settings=recipe_data_settings(["trees", "forest"]),
        seed=config["seed"],
        add=lambda wildcards, input: " ".join(f"--add {shlex.quote(p)}" for p in input.labs),
    log:
        "logs/recipes/train.log",
    benchmark:
        "results/benchmarks/recipes/train.tsv"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/recipes.yaml"
    shell:
        "nanoxtal recipes train {input.table:q} --shapes {params.shapes:q} --out {output:q}"
        " {params.add}"
        " --max-size {params.settings[max_size_nm]} --vocabulary {params.settings[vocabulary]}"
        " --trees {params.settings[trees]} --forest {params.settings[forest]}"
        " --threads {threads} --seed {params.seed} > {log:q} 2>&1"
