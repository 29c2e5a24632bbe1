# The sky map (tracts, patches, inner and outer boxes) and the assignment of
# CCDs to patches the plan made at parse time, written down for users and QA.


rule skymap:
    """skymap.json: tracts, patches and which (visit, ccd) land on which patch."""
    output:
        SKYMAP,
    params:
        skymap=PLAN.skymap.to_dict(),
        overlaps=PLAN.overlaps.to_dict(orient="list"),
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("skymap"),
    benchmark:
        bench_path("skymap")
    resources:
        mem_mb=mem_mb(300),
        runtime=5,
    script:
        "../scripts/skymap.py"
