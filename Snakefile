# nanoxtal: one workflow for TEM segmentation, recipe models and XRD symmetry classification.
# Run from the repository root: `snakemake --cores 2` (default config) or
# `snakemake --cores 2 --configfile config/test.yaml` (tiny run). See README.md.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# Fills in every default and refuses unknown or out-of-range keys before anything runs.
validate(config, "workflow/schemas/config.schema.yaml")


# `snakemake --report results/report.zip` collects metrics and figures with these captions.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tem.smk"
include: "workflow/rules/xrd.smk"
include: "workflow/rules/recipes.smk"
include: "workflow/rules/lab.smk"


rule all:
    input:
        all_targets(),
    default_target: True
