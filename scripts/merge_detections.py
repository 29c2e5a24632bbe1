"""Merge one patch's detections across filters.

Inputs: ``detections`` (one parquet per filter), ``coadd`` (any filter's coadd, for the WCS).
Outputs: merged peaks (parquet). Config: ``multiband.merge_radius_arcsec``, ``multiband.priority``.
"""

from skysnake import multiband
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_exposure, read_table, write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.multiband
dets = {f: read_table(p) for f, p in zip(sm.params.filters, sm.input.detections)}
wcs = read_exposure(sm.input.coadd, planes=("IMAGE",)).wcs
merged = multiband.merge_detections(dets, wcs=wcs, match_radius_arcsec=cfg["merge_radius_arcsec"],
                                    priority=tuple(cfg["priority"]))
write_table(sm.output[0], merged, provenance=provenance(config=cfg, inputs=[*sm.input.detections, sm.input.coadd]))
log.info("%d merged peaks from %s", len(merged), {f: len(d) for f, d in dets.items()})
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
