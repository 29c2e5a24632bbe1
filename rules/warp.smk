# Warps: one visit's calibrated CCDs resampled onto the grid of every patch of a
# tract the visit touches (Lanczos3, flux-conserving, variance and mask
# propagated): one warp file per (patch, visit), written by one job per
# (tract, visit) so that a survey of thousands of CCDs stays a DAG of thousands of
# jobs, not tens of thousands. The visit's quality cuts are applied here, with the
# same function the registry uses.


rule warp:
    """The visit's selected CCDs resampled onto each patch's outer box (one file per patch)."""
    input:
        calexp_dir=CALEXP_DIR,
    output:
        directory(WARP_DIR),
    params:
        calexps=calexps_of_warp,
        summaries=summaries_of_visit,
        tract=tract_geometry,
        units=warp_units,
        warp=config["warp"],
        quality=config["quality"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("warp", "{tract}-{visit}"),
    benchmark:
        bench_path("warp", "{tract}-{visit}")
    resources:
        mem_mb=mem_mb(250, per_mpix=30, mpix=PATCH_MPIX, per_input=PLANE_BYTES * CCD_MPIX, inputs=largest_warp),
        runtime=runtime(5, per_input=0.2 * (CCD_MPIX + PATCH_MPIX), inputs=warp_units),
    script:
        "../scripts/warp.py"
