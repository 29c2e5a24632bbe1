# The simulated survey (inputs.source: sim): raw CCD files, a truth table and a
# reference catalog, made deterministically from config["sim"]["seed"].


rule simulate_sky:
    """Truth objects (stars with proper motions, galaxies) and the reference catalog drawn from the stars."""
    output:
        truth=f"{R}/sim/truth.parquet",
        refcat=f"{R}/sim/refcat.parquet",
    params:
        sim=config["sim"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("simulate_sky"),
    benchmark:
        bench_path("simulate_sky")
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    script:
        "../scripts/simulate_sky.py"


rule simulate_visit:
    """Raw CCD images (ADU, generic camera format) of one visit, and per-CCD truth (WCS, zeropoint)."""
    input:
        truth=f"{R}/sim/truth.parquet",
    output:
        raw=expand(RAW_SIM, ccd=SIM_CCDS, allow_missing=True),
        truth=expand(TRUTH_CCD, ccd=SIM_CCDS, allow_missing=True),
    params:
        sim=config["sim"],
        ccds=SIM_CCDS,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("simulate_visit", "{visit}"),
    benchmark:
        bench_path("simulate_visit", "{visit}")
    resources:
        mem_mb=mem_mb(1500),
        runtime=20,
    script:
        "../scripts/simulate_visit.py"
