# The CCD registry (sqlite): one job gathers every CCD's summary, so calibrate jobs
# never write the database concurrently. It records status, reason, and whether
# the quality cuts admit the CCD to warps and coadds.


rule registry:
    """sqlite table of all CCDs: footprints, seeing, zeropoints, astrometric rms, status, selection."""
    input:
        all_calexp_dirs,
    output:
        REGISTRY,
    params:
        summaries=all_summaries,
        quality=config["quality"],
        problems=input_problems_records,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("registry"),
    benchmark:
        bench_path("registry")
    resources:
        mem_mb=mem_mb(500),
        runtime=5,
    script:
        "../scripts/registry.py"
