# Warps: one visit's calibrated CCDs resampled onto one patch's grid (Lanczos3,
# flux-conserving, variance and mask propagated). The visit's quality cuts are
# applied here, with the same function the registry uses.


rule warp:
    """The visit's selected CCDs resampled onto the patch's outer box."""
    input:
        calexps=calexps_of_warp,
        summaries=summaries_of_visit,
    output:
        WARP,
    params:
        geometry=patch_geometry,
        warp=config["warp"],
        quality=config["quality"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("warp", "{tract}-{patch}-{visit}"),
    benchmark:
        bench_path("warp", "{tract}-{patch}-{visit}")
    resources:
        mem_mb=mem_mb(250, per_mpix=30, mpix=PATCH_MPIX, per_input=PLANE_BYTES * CCD_MPIX, inputs=calexps_of_warp),
        runtime=runtime(5, per_mpix=0.2, mpix=PATCH_MPIX, per_input=0.2 * CCD_MPIX, inputs=calexps_of_warp),
    script:
        "../scripts/warp.py"
