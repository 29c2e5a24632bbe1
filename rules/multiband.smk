# Multi-band processing of each patch, as in the HSC/LSST pipelines: detect per
# filter, merge detections across filters, measure per filter at the merged
# positions, choose a reference band per object, forced photometry per filter at
# the reference positions, and one object catalog per tract.
#
# Each rule's params hold only the multiband options it uses, so changing one option
# reruns the stages it affects and no others (Snakemake's params trigger).


rule detect:
    """Detections on one filter's coadd."""
    input:
        coadd=COADD,
    output:
        DETECT,
    params:
        multiband=multiband_options("detect_thresh", "minarea"),
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("detect", "{tract}-{patch}-{filter}"),
    benchmark:
        bench_path("detect", "{tract}-{patch}-{filter}")
    resources:
        mem_mb=mem_mb(350, per_mpix=40, mpix=PATCH_MPIX),
        runtime=runtime(5, per_mpix=0.5, mpix=PATCH_MPIX),
    script:
        "../scripts/detect.py"


rule merge_detections:
    """One list of peaks per patch, merged across filters."""
    input:
        unpack(lambda wc: {"detections": list(per_filter(DETECT)(wc).values())}),
        coadd=lambda wc: next(iter(per_filter(COADD)(wc).values())),
    output:
        MERGED,
    params:
        filters=lambda wc: list(per_filter(DETECT)(wc)),
        multiband=multiband_options("merge_radius_arcsec", "priority"),
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("merge_detections", "{tract}-{patch}"),
    benchmark:
        bench_path("merge_detections", "{tract}-{patch}")
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    script:
        "../scripts/merge_detections.py"


rule measure:
    """Measurements of the merged peaks on one filter's coadd."""
    input:
        coadd=COADD,
        merged=MERGED,
    output:
        MEASURE,
    params:
        multiband=multiband_options("aperture_radii_arcsec", "psf_aperture_arcsec"),
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("measure", "{tract}-{patch}-{filter}"),
    benchmark:
        bench_path("measure", "{tract}-{patch}-{filter}")
    resources:
        mem_mb=mem_mb(250, per_mpix=45, mpix=PATCH_MPIX),
        runtime=runtime(5, per_mpix=0.5, mpix=PATCH_MPIX),
    script:
        "../scripts/measure.py"


rule select_reference:
    """Reference band, position and shape of every object of a patch."""
    input:
        measurements=lambda wc: list(per_filter(MEASURE)(wc).values()),
    output:
        REFERENCE,
    params:
        filters=lambda wc: list(per_filter(MEASURE)(wc)),
        multiband=multiband_options("priority", "min_ref_snr"),
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("select_reference", "{tract}-{patch}"),
    benchmark:
        bench_path("select_reference", "{tract}-{patch}")
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    script:
        "../scripts/select_reference.py"


rule forced_photometry:
    """Forced photometry of one filter's coadd at the reference positions and shapes."""
    input:
        coadd=COADD,
        reference=REFERENCE,
    output:
        FORCED,
    params:
        multiband=multiband_options("psf_aperture_arcsec", "aperture_radii_arcsec"),
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("forced_photometry", "{tract}-{patch}-{filter}"),
    benchmark:
        bench_path("forced_photometry", "{tract}-{patch}-{filter}")
    resources:
        mem_mb=mem_mb(250, per_mpix=45, mpix=PATCH_MPIX),
        runtime=runtime(5, per_mpix=0.5, mpix=PATCH_MPIX),
    script:
        "../scripts/forced_photometry.py"


rule object_catalog:
    """The tract's object catalog: each object once (primary in the patch whose inner box holds it)."""
    input:
        forced=forced_of_tract,
        references=references_of_tract,
    output:
        OBJECTS,
    params:
        skymap=PLAN.skymap.to_dict(),
        units=forced_units,
        patches=lambda wc: PLAN.patches(wc.tract),
        filters=PLAN.filters,
        multiband=config["multiband"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("object_catalog", "{tract}"),
    benchmark:
        bench_path("object_catalog", "{tract}")
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    script:
        "../scripts/object_catalog.py"
