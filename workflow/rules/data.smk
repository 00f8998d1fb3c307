# Data stage: verified, atomic copies of the registered datasets into resources/.


wildcard_constraints:
    dataset="|".join(DATASET_NAMES),


rule data_import:
    input:
        dataset_sources,
    output:
        directory(f"{RESOURCES}/{{dataset}}"),
    params:
        root=DATA_ROOT,
        dest=parent_dir,
        mirror=mirror_option(),
    log:
        "logs/data/import_{dataset}.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    conda:
        "../../envs/data.yaml"
    shell:
        "nanoxtal data import {wildcards.dataset} --root {params.root:q} --dest {params.dest:q}"
        " {params.mirror} --no-progress > {log:q} 2>&1"
