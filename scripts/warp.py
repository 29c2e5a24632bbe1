"""Warp one visit's calibrated CCDs onto every patch of a tract that the visit touches.

Inputs: ``calexp_dir`` (the folder of the visit's calibrated CCDs).
Outputs: one folder holding a warp per patch, ``warp-{tract}-{patch}-{visit}.fits`` (FITS on the
sub-box of the patch's outer grid the visit covers; an empty warp when none of its CCDs is usable
or lands on the patch). Patches are done one at a time: only one patch's CCDs are in memory.
Params: ``tract`` (geometry), ``units`` ({patch: [ccd, ...]}), ``calexps`` (the files, inside ``calexp_dir``, of
the visit's CCDs that may touch a patch of the tract), ``summaries`` (all of the visit's CCD summaries: the
quality cuts compare CCDs within a visit).
Config: ``warp.*`` (kernel, grid_step), ``quality.*`` (cuts).
"""

from pathlib import Path

from skysnake import quality, warp
from skysnake.adapter import finish, provenance, set_threads, setup_logging, timed
from skysnake.io import Exposure, read_exposure, read_json, write_exposure
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
set_threads(sm.threads)
tract = Tract(**sm.params.tract)
visit = int(sm.wildcards.visit)
summaries = [read_json(p) for p in sm.params.summaries]
decisions = {d["ccd"]: d for d in quality.select_ccds(summaries, cuts=sm.params.quality)}
calexp_of = {int(Path(p).stem.rsplit("-", 1)[1]): p for p in sm.params.calexps}
for ccd in sorted(calexp_of):
    if not decisions[ccd]["selected"]:
        log.info("ccd %d left out: %s", ccd, decisions[ccd]["reason"])
filt = next((s["filter"] for s in summaries if s.get("filter")), None)
seeing = {s["ccd"]: s["seeing_arcsec"] for s in summaries if s.get("status") == "ok"}
out_dir = Path(sm.output[0])
out_dir.mkdir(parents=True, exist_ok=True)
for patch, ccds in sm.params.units.items():
    used = [c for c in ccds if decisions[c]["selected"]]
    exposures = [read_exposure(calexp_of[c]) for c in used]
    with timed(log, f"warp patch {patch}: {len(exposures)} CCDs"):
        result = warp.warp_exposures(exposures, target_wcs=tract.patch_wcs(patch),
                                     target_shape=tract.patch_shape(patch), kernel=sm.params.warp["kernel"],
                                     grid_step=sm.params.warp["grid_step"])
    del exposures
    if result.is_empty:
        result = Exposure(None, None, None, None, meta={"NCCD": 0})
    result.meta.update({"VISIT": visit, "FILTER": filt, "TRACT": tract.id, "PATCH": patch, "CCDS": used})
    fwhms = sorted(seeing[c] for c in used if c in seeing)
    if fwhms:
        result.meta["FWHM"] = float(fwhms[len(fwhms) // 2])
    prov = provenance(config={"warp": sm.params.warp, "quality": sm.params.quality},
                      inputs=[calexp_of[c] for c in ccds])
    write_exposure(out_dir / f"warp-{tract.id}-{patch}-{visit}.fits", result, provenance=prov)
    log.info("visit %d -> tract %d patch %s: %s", visit, tract.id, patch,
             "empty" if result.is_empty else f"{result.image.shape[1]}x{result.image.shape[0]} px from CCDs {used}")
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
