"""QA of one tract: depth and coverage maps, number counts, colour-colour and colour-magnitude diagrams.

Inputs: ``coadds`` (every patch and filter of the tract), ``objects`` (the tract's object catalog).
Outputs: ``depth_maps`` (FITS: binned 5-sigma depth ``M5_<f>`` and input count ``NIMAGE_<f>`` per filter,
with the tract's binned WCS), and the PNGs ``depth``, ``coverage``, ``counts``, ``colorcolor``, ``colormag``.
Params: ``tract`` (geometry), ``units`` ((patch, filter) of each coadd), ``filters``, ``nsigma``.
"""

from skysnake import qa, qaplots
from skysnake.adapter import finish, provenance, setup_logging, timed
from skysnake.io import add_provenance, read_exposure, read_table, write_hdulist
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
tract = Tract(**sm.params.tract)
# lazy planes: only the inner boxes are read, block by block, and nothing stays resident (memory-mapped
# planes would keep every page read, i.e. most of every coadd of the tract, in the job's RSS)
coadds = {(p, f): read_exposure(path, planes=("IMAGE", "VARIANCE", "NIMAGE"), lazy=True)
          for (p, f), path in zip(sm.params.units, sm.input.coadds)}
with timed(log, "depth maps"):
    maps = qa.depth_maps(coadds, tract, nsigma=sm.params.nsigma)
filters = qa.order_filters(sm.params.filters)
m5 = {f: maps.median_m5(f) for f in maps.filters}
areas = {f: maps.area_deg2(f) for f in maps.filters}
for f in maps.filters:
    log.info("%s: median %g-sigma depth %.2f mag over %.1f arcmin^2", f, maps.nsigma, m5[f], areas[f] * 3600)

prov_maps = provenance(config={"nsigma": sm.params.nsigma}, inputs=list(sm.input.coadds))
hdul = qa.depth_maps_to_hdulist(maps, meta={"TRACT": tract.id})
add_provenance(hdul[0].header, prov_maps)
write_hdulist(sm.output.depth_maps, hdul)

name = f"tract {tract.id}"
qaplots.save_png(qaplots.plot_depth(maps, tract=tract, title=f"{name}: {maps.nsigma:g}-sigma point-source depth"),
                 sm.output.depth, provenance=prov_maps)
qaplots.save_png(qaplots.plot_coverage(maps, tract=tract, title=f"{name}: coverage (visits per coadd pixel)"),
                 sm.output.coverage, provenance=prov_maps)

cat = read_table(sm.input.objects)
prov_cat = provenance(config={"nsigma": sm.params.nsigma}, inputs=[sm.input.objects, *sm.input.coadds])
qaplots.save_png(qaplots.plot_number_counts(cat, filters=filters, areas=areas, m5=m5,
                                            title=f"{name}: number counts (PSF magnitudes)"),
                 sm.output.counts, provenance=prov_cat)
qaplots.save_png(qaplots.plot_color_color(cat, filters=filters, title=f"{name}: colour-colour diagram"),
                 sm.output.colorcolor, provenance=prov_cat)
qaplots.save_png(qaplots.plot_color_magnitude(cat, filters=filters, title=f"{name}: colour-magnitude diagrams"),
                 sm.output.colormag, provenance=prov_cat)
log.info("tract %d: %d objects", tract.id, len(cat))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
