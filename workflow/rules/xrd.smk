# XRD stage: structures (symmetry, labels, formula split) and simulated stick patterns.


rule xrd_structures:
    input:
        dataset_dir("xrd_mp"),
    output:
        table="results/xrd/structures.parquet",
        rejects="results/xrd/rejects.csv",
        summary="results/xrd/structures_summary.json",
    params:
        cif_table=lambda wildcards, input: f"{input[0]}/mp_structures.csv.gz",
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
        "nanoxtal xrd structures {params.cif_table:q} --out {output.table:q}"
        " --rejects {output.rejects:q} --summary {output.summary:q}"
        " --symprec {params.settings[symprec]} --angle-tolerance {params.settings[angle_tolerance]}"
        " --split {params.split} --seed {params.seed} {params.max_structures}"
        " --workers {threads} > {log:q} 2>&1"


rule xrd_simulate:
    input:
        rules.xrd_structures.output.table,
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
