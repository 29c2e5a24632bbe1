# skysnake: CCD exposures -> calibrated CCDs -> warps -> coadds -> multi-band object catalogs.
#
# This file is the table of contents. Stages live in rules/*.smk, their code in
# scripts/*.py (thin adapters) and src/skysnake (the core). Run `snakemake -n` to
# see every job before anything runs.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/sim.smk"
include: "rules/ingest.smk"
include: "rules/refcat.smk"
include: "rules/calibrate.smk"
include: "rules/registry.smk"
include: "rules/skymap.smk"
include: "rules/warp.smk"
include: "rules/coadd.smk"
include: "rules/multiband.smk"
include: "rules/qa.smk"


# `snakemake --report report.html`: the QA figures (rules/qa.smk) with their captions (report/*.rst)
report: "report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
