# The reference catalog of each tract, in skysnake's columns (ra, dec, pmra, pmdec,
# epoch, {filter}_mag, {filter}_magerr), cut to the tract's footprint plus a margin.


rule refcat:
    """Reference stars for one tract, from the configured source."""
    input:
        source=refcat_source,
    output:
        REFCAT,
    params:
        refcat=config["refcat"],
        tract=tract_geometry,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("refcat", "{tract}"),
    benchmark:
        bench_path("refcat", "{tract}")
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    script:
        "../scripts/refcat.py"
