"""Coadd the warps of one filter on one patch.

Inputs: ``warp_dirs`` (the warp folder of every visit of the filter that touches the patch).
Params: ``warps`` (the patch's warp file in each folder; empty warps are skipped).
Outputs: the coadd (FITS: IMAGE nJy, MASK, VARIANCE, NIMAGE count map) on the patch's outer grid,
with the residual background (large mesh, sources masked) subtracted once here, so that the
detection, measurement and forced-photometry jobs all see the same pixels (header BKGSUB = T).
Config: ``coadd.*`` (reject_sigma).
"""

import numpy as np

from skysnake import coadd, multiband
from skysnake.adapter import finish, provenance, set_threads, setup_logging, timed
from skysnake.io import read_exposure, write_exposure
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
geo = sm.params.geometry
tract = Tract(**geo["tract"])
patch = geo["patch"]
set_threads(sm.threads)
warps = [read_exposure(p, lazy=True) for p in sm.params.warps]  # rows read block by block by the coadd
with timed(log, f"coadd {len(warps)} warps"):
    result = coadd.coadd_warps(warps, shape=tract.patch_shape(patch), wcs=tract.patch_wcs(patch),
                               reject_sigma=sm.params.coadd["reject_sigma"])
if result.meta.get("NINPUT"):
    with timed(log, "residual background"):
        bkg = multiband.estimate_background(result)
        result.image -= np.asarray(bkg, dtype=np.float32)
        nodata = result.variance <= 0
        result.image[nodata] = 0.0
    log.info("residual background: median %.4g nJy/px", float(np.median(bkg)))
result.meta.update({"FILTER": sm.wildcards.filter, "TRACT": tract.id, "PATCH": patch, "BKGSUB": True})
write_exposure(sm.output[0], result, provenance=provenance(config=sm.params.coadd, inputs=list(sm.params.warps)))
log.info("coadd %s tract %d patch %s from %s warps", sm.wildcards.filter, tract.id, patch,
         result.meta.get("NINPUT"))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
