# The input index as a table, read back from the raw headers (what the plan used
# at parse time came from the same headers, or from the simulation design).


rule ingest:
    """Index of every input CCD: visit, ccd, filter, exptime, mjd, raw file, approximate footprint."""
    input:
        raws=lambda wc: sorted(set(PLAN.index["raw"])),
    output:
        INDEX,
    params:
        index=PLAN.index.to_dict(orient="list"),
        problems=INPUT_PROBLEMS.to_dict(orient="list"),
        instrument=config["instrument"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("ingest"),
    benchmark:
        bench_path("ingest")
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    script:
        "../scripts/ingest.py"
