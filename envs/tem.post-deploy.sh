#!/usr/bin/env bash
# Runs once inside the freshly created conda env (`snakemake --sdm conda`), from the directory
# snakemake was started in (the repository root): installs nanoxtal without touching the pins.
set -euo pipefail
pip install --no-deps --no-build-isolation --editable .
