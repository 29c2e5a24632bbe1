# Calibration: masks, variance, background, detection and measurement with sep,
# astrometric fit (TAN-SIP) and photometric zeropoint against the refcat, CCD by
# CCD. The data unit is the CCD (one calexp, source table and summary each); the
# job is the visit: one job calibrates the visit's CCDs one after the other and
# writes them into one folder, so a visit pays one Python start-up (imports),
# not one per CCD. A CCD whose data cannot be calibrated is recorded as failed
# (summary status "failed" with the reason) and the job goes on with the next.


rule calibrate:
    """Calibrated exposures (nJy, mask, variance, fitted WCS), source tables and summaries of one visit's CCDs."""
    input:
        raws=raws_of_visit,
        refcats=refcat_files_of_visit,
    output:
        directory(CALEXP_DIR),
    params:
        units=calibrate_units,
        calibrate=config["calibrate"],
        instrument=config["instrument"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("calibrate", "{visit}"),
    benchmark:
        bench_path("calibrate", "{visit}")
    resources:
        # one CCD in memory at a time; the wall time grows with the visit's CCD count
        mem_mb=mem_mb(200, per_mpix=60, mpix=CCD_MPIX),
        runtime=runtime(5, per_input=0.5 * CCD_MPIX, inputs=ccds_of_visit),
    script:
        "../scripts/calibrate.py"
