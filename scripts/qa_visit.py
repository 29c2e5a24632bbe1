"""QA of one visit: astrometric residuals against the refcat, and per-CCD focal-plane maps.

Inputs: ``calexp_dir`` (the folder of the visit's calibrated CCDs) and ``refcats`` (the reference catalog each
CCD was calibrated against, CCD by CCD).
Outputs: ``astrometry`` (PNG: residual histograms, residual vs magnitude, residual vectors over the focal
plane), ``focal_plane`` (PNG: zeropoint, seeing and astrometric rms per CCD).
Params: ``sources`` and ``summaries`` (the files of every CCD of the visit inside ``calexp_dir``, in the order of
``refcats``), ``footprints`` (approximate CCD corners, for CCDs without a fitted WCS), ``quality`` (the cuts, to
mark CCDs left out of the coadds).
"""

import numpy as np
import pandas as pd

from skysnake import qa, qaplots
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_json, read_table
from skysnake.quality import select_ccds

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
visit = int(sm.wildcards.visit)
summaries = [read_json(p) for p in sm.params.summaries]
decisions = {d["ccd"]: d for d in select_ccds(summaries, cuts=sm.params.quality)}
refcats = {p: read_table(p) for p in set(sm.input.refcats)}

rows, resid = [], []
for s, src_path, ref_path in zip(summaries, sm.params.sources, sm.input.refcats):
    ccd = int(s["ccd"])
    corners = s.get("corners") or sm.params.footprints[ccd]
    rows.append({**s, "corners": corners, "selected": decisions[ccd]["selected"],
                 "reject_reason": decisions[ccd]["reason"]})
    if s.get("status") == "ok":
        resid.append(qa.astrometric_residuals(read_table(src_path), refcats[ref_path], mjd=s["mjd"], ccd=ccd))
ccds = pd.DataFrame(rows)
resid = pd.concat(resid, ignore_index=True) if resid else qa.empty_residuals()
corners = np.concatenate([np.asarray(c, float) for c in ccds["corners"]])
center = qa.sky_center(corners[:, 0], corners[:, 1])
filt = next((s.get("filter") for s in summaries if s.get("filter")), "?")
n_ok = int((ccds["status"] == "ok").sum())
label = f"visit {visit} ({filt}, {n_ok}/{len(ccds)} CCDs calibrated)"
prov = provenance(config={"quality": sm.params.quality},
                  inputs=[*sm.params.sources, *sm.params.summaries, *sorted(set(sm.input.refcats))])

st = qa.residual_stats(resid)
log.info("astrometric residuals: %d stars, rms %.1f mas (east %.1f, north %.1f)", st["n"], st["rms"], st["rms_ra"],
         st["rms_dec"])
fig = qaplots.plot_astrometry(resid, ccds=ccds, center=center,
                              title=f"{label}: astrometric residuals against the reference catalog")
qaplots.save_png(fig, sm.output.astrometry, provenance=prov)
fig = qaplots.plot_focal_plane(ccds, center=center, title=f"{label}: calibration per CCD")
qaplots.save_png(fig, sm.output.focal_plane, provenance=prov)
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
