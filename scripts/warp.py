"""Warp one visit's calibrated CCDs onto one patch.

Inputs: ``calexps`` (the visit's CCDs that may touch the patch), ``summaries``
(all of the visit's CCD summaries: the quality cuts compare CCDs within a visit).
Outputs: the warp (FITS on the sub-box of the patch's outer grid the visit covers;
an empty warp when none of its CCDs is usable or lands on the patch).
Config: ``warp.*`` (kernel, grid_step), ``quality.*`` (cuts).
"""

from pathlib import Path

from skysnake import quality, warp
from skysnake.adapter import provenance, set_threads, setup_logging, timed
from skysnake.io import Exposure, read_exposure, read_json, write_exposure
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
set_threads(sm.threads)
geo = sm.params.geometry
tract = Tract(**geo["tract"])
patch = geo["patch"]
visit = int(sm.wildcards.visit)
summaries = [read_json(p) for p in sm.input.summaries]
decisions = {d["ccd"]: d for d in quality.select_ccds(summaries, cuts=sm.params.quality)}
exposures, used = [], []
for path in sm.input.calexps:
    ccd = int(Path(path).stem.rsplit("-", 1)[1])
    d = decisions[ccd]
    if not d["selected"]:
        log.info("ccd %d left out: %s", ccd, d["reason"])
        continue
    exposures.append(read_exposure(path))
    used.append(ccd)
filt = next((s["filter"] for s in summaries if s.get("filter")), None)
with timed(log, f"warp {len(exposures)} CCDs"):
    result = warp.warp_exposures(exposures, target_wcs=tract.patch_wcs(patch), target_shape=tract.patch_shape(patch),
                                 kernel=sm.params.warp["kernel"], grid_step=sm.params.warp["grid_step"])
if result.is_empty:
    result = Exposure(None, None, None, None, meta={"NCCD": 0})
result.meta.update({"VISIT": visit, "FILTER": filt, "TRACT": tract.id, "PATCH": patch, "CCDS": used})
fwhms = [s["seeing_arcsec"] for s in summaries if s.get("status") == "ok" and s["ccd"] in used]
if fwhms:
    result.meta["FWHM"] = float(sorted(fwhms)[len(fwhms) // 2])
write_exposure(sm.output[0], result,
               provenance=provenance(config={"warp": sm.params.warp, "quality": sm.params.quality},
                                     inputs=list(sm.input.calexps)))
log.info("visit %d -> tract %d patch %s: %s", visit, tract.id, patch,
         "empty" if result.is_empty else f"{result.image.shape[1]}x{result.image.shape[0]} px from CCDs {used}")
