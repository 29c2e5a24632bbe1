# Coadds: the warps of one filter on one patch, combined as a weighted mean with
# outlier rejection, with variance, mask and a count map.


rule coadd:
    """Coadd of one filter on one patch."""
    input:
        warp_dirs=warp_dirs_of_coadd,
    output:
        COADD,
    params:
        geometry=patch_geometry,
        coadd=config["coadd"],
        warps=warps_of_coadd,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("coadd", "{tract}-{patch}-{filter}"),
    benchmark:
        bench_path("coadd", "{tract}-{patch}-{filter}")
    resources:
        # the warps are read a block of rows at a time (~1 MB each beyond the block); the residual background
        # of the coadd is the peak: ~40 bytes a patch pixel (README "Resources")
        mem_mb=mem_mb(300, per_mpix=40, mpix=PATCH_MPIX, per_input=1, inputs=warps_of_coadd),
        runtime=runtime(5, per_mpix=0.5, mpix=PATCH_MPIX, per_input=0.2, inputs=warps_of_coadd),
    script:
        "../scripts/coadd.py"
