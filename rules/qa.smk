# Quality assurance: the figures astronomers judge a reduction by, gathered by
# `snakemake --report report.html`. Per visit: astrometric residuals against the
# refcat, and zeropoint / seeing / astrometric rms per CCD over the focal plane.
# Per patch: a colour image. Per tract: depth (5-sigma limiting magnitude) and
# coverage maps, number counts, colour-colour and colour-magnitude diagrams, and,
# for the simulated survey, completeness and photometry against the truth.
# The code is in src/skysnake/qa.py (measures) and qaplots.py (figures).

# Output patterns and input functions are in rules/common.smk (section "QA").


rule qa_visit:
    """Astrometric residuals against the refcat, and per-CCD zeropoint, seeing and astrometric rms."""
    input:
        calexp_dir=CALEXP_DIR,
        refcats=refcats_of_visit,
    output:
        astrometry=report(QA_ASTROMETRY, caption="../report/astrometry.rst", category="Visits",
                          subcategory="visit {visit}", labels={"visit": "{visit}", "figure": "astrometric residuals"}),
        focal_plane=report(QA_FOCAL_PLANE, caption="../report/focal_plane.rst", category="Visits",
                           subcategory="visit {visit}", labels={"visit": "{visit}", "figure": "CCD focal-plane maps"}),
    params:
        sources=sources_of_visit,
        summaries=summaries_of_visit,
        footprints=visit_footprints,
        quality=config["quality"],
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("qa_visit", "{visit}"),
    benchmark:
        bench_path("qa_visit", "{visit}")
    resources:
        mem_mb=mem_mb(800),
        runtime=5,
    script:
        "../scripts/qa_visit.py"


rule qa_color:
    """Colour image of one patch from three of its coadds (Lupton et al. asinh stretch)."""
    input:
        unpack(per_filter(COADD)),
    output:
        report(QA_COLOR, caption="../report/color.rst", category="Tract {tract}", subcategory="colour images",
               labels={"tract": "{tract}", "patch": "{patch}"}),
    params:
        geometry=patch_geometry,
        binning=4,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("qa_color", "{tract}-{patch}"),
    benchmark:
        bench_path("qa_color", "{tract}-{patch}")
    resources:
        mem_mb=mem_mb(1500),
        runtime=5,
    script:
        "../scripts/qa_color.py"


rule qa_tract:
    """Depth and coverage maps from the coadds; number counts, colour-colour and colour-magnitude diagrams."""
    input:
        coadds=coadds_of_tract,
        objects=OBJECTS,
    output:
        depth_maps=QA_DEPTH_MAPS,
        depth=report(qa_tract_png("depth"), caption="../report/depth.rst", category="Tract {tract}",
                     subcategory="depth and coverage", labels={"tract": "{tract}", "figure": "5-sigma depth"}),
        coverage=report(qa_tract_png("coverage"), caption="../report/coverage.rst", category="Tract {tract}",
                        subcategory="depth and coverage", labels={"tract": "{tract}", "figure": "coverage"}),
        counts=report(qa_tract_png("counts"), caption="../report/counts.rst", category="Tract {tract}",
                      subcategory="object catalog", labels={"tract": "{tract}", "figure": "number counts"}),
        colorcolor=report(qa_tract_png("colorcolor"), caption="../report/colorcolor.rst", category="Tract {tract}",
                          subcategory="object catalog", labels={"tract": "{tract}", "figure": "colour-colour"}),
        colormag=report(qa_tract_png("colormag"), caption="../report/colormag.rst", category="Tract {tract}",
                        subcategory="object catalog", labels={"tract": "{tract}", "figure": "colour-magnitude"}),
    params:
        tract=tract_geometry,
        units=coadd_units,
        filters=PLAN.filters,
        nsigma=5.0,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("qa_tract", "{tract}"),
    benchmark:
        bench_path("qa_tract", "{tract}")
    resources:
        mem_mb=mem_mb(1500),
        runtime=10,
    script:
        "../scripts/qa_tract.py"


rule qa_truth:
    """The simulated survey's truth against the object catalog: completeness and delta-mag vs magnitude."""
    input:
        truth=f"{R}/sim/truth.parquet",
        objects=OBJECTS,
        depth_maps=QA_DEPTH_MAPS,
    output:
        completeness=report(qa_tract_png("truth-completeness"), caption="../report/truth_completeness.rst",
                            category="Tract {tract}", subcategory="truth comparison (simulation)",
                            labels={"tract": "{tract}", "figure": "completeness"}),
        photometry=report(qa_tract_png("truth-photometry"), caption="../report/truth_photometry.rst",
                          category="Tract {tract}", subcategory="truth comparison (simulation)",
                          labels={"tract": "{tract}", "figure": "photometry"}),
    params:
        filters=PLAN.filters,
        mjd=float(PLAN.index["mjd"].mean()),
        match_radius_arcsec=0.5,
    conda:
        "../envs/skysnake.yaml"
    log:
        log_path("qa_truth", "{tract}"),
    benchmark:
        bench_path("qa_truth", "{tract}")
    resources:
        mem_mb=mem_mb(1500),
        runtime=10,
    script:
        "../scripts/qa_truth.py"
