# Per-CCD calibration: masks, variance, background, detection and measurement
# with sep, astrometric fit (TAN-SIP) and photometric zeropoint against the refcat.
# A CCD whose data cannot be calibrated is recorded as failed (summary status
# "failed" with the reason) and the run goes on without it.


rule calibrate:
    """Calibrated exposure (nJy, mask, variance, fitted WCS), source table and summary of one CCD."""
    input:
        raw=raw_of_ccd,
        refcat=refcat_of_ccd,
    output:
        calexp=CALEXP,
        sources=SOURCES,
        summary=SUMMARY,
    params:
        calibrate=config["calibrate"],
        instrument=config["instrument"],
        raw=raw_info,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("calibrate", "{visit}-{ccd}"),
    benchmark:
        bench_path("calibrate", "{visit}-{ccd}")
    resources:
        mem_mb=mem_mb(200, per_mpix=60, mpix=CCD_MPIX),
        runtime=runtime(5, per_mpix=0.5, mpix=CCD_MPIX),
    script:
        "../scripts/calibrate.py"
