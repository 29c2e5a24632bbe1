"""Quality cuts: which calibrated CCDs enter warps and coadds.

The same function decides for the warp jobs (one visit at a time) and for the
registry (all CCDs), so what the registry records is what the coadds used.
"""

from __future__ import annotations

import math

import numpy as np

#: Defaults of the ``quality`` config block.
DEFAULTS = {
    "max_seeing_arcsec": 2.0,
    "max_astrom_rms_arcsec": 0.1,
    "min_matched_stars": 10,
    "max_zp_offset_mag": 0.25,
}


def select_ccds(summaries, *, cuts=None):
    """Apply the quality cuts to the summaries of calibrated CCDs.

    Parameters
    ----------
    summaries : list of dict
        Calibration summaries (sidecars); each has ``visit``, ``ccd``, ``status``
        and, when ``status == "ok"``, ``seeing_arcsec``, ``astrom_rms_arcsec``,
        ``n_astrom`` and ``zeropoint``. A CCD calibrated from its header (``calib_method ==
        "header"``) is judged on its seeing only.
    cuts : dict, optional
        Keys of :data:`DEFAULTS`. The zeropoint cut compares each CCD with the
        median zeropoint of the other usable CCDs of the same visit (a visit
        shares one transparency), so it needs summaries of the whole visit.

    Returns
    -------
    list of dict
        One per input, in order: ``{"visit", "ccd", "selected": bool, "reason": str}``;
        ``reason`` is empty for selected CCDs.
    """
    c = {**DEFAULTS, **(cuts or {})}
    out = []
    for s in summaries:
        reason = ""
        if s.get("status") != "ok":
            reason = f"calibration failed: {s.get('reason', 'unknown')}"
        elif not s.get("seeing_arcsec") or s["seeing_arcsec"] > c["max_seeing_arcsec"]:
            reason = f"seeing {s.get('seeing_arcsec')} arcsec > max_seeing_arcsec {c['max_seeing_arcsec']}"
        elif str(s.get("calib_method")).startswith("header"):
            pass  # header WCS and camera zeropoint (calibrate.header_fallback): no fit to judge
        elif not _finite(s.get("astrom_rms_arcsec")) or s["astrom_rms_arcsec"] > c["max_astrom_rms_arcsec"]:
            reason = (f"astrometric rms {s.get('astrom_rms_arcsec')} arcsec > max_astrom_rms_arcsec "
                      f"{c['max_astrom_rms_arcsec']}")
        elif s.get("n_astrom", 0) < c["min_matched_stars"]:
            reason = f"{s.get('n_astrom', 0)} matched stars < min_matched_stars {c['min_matched_stars']}"
        out.append({"visit": s.get("visit"), "ccd": s.get("ccd"), "selected": not reason, "reason": reason})
    # zeropoint outliers within each visit, among CCDs that passed the other cuts
    by_visit = {}
    for s, o in zip(summaries, out):
        if o["selected"]:
            by_visit.setdefault(s.get("visit"), []).append((s, o))
    for members in by_visit.values():
        if len(members) < 3:
            continue  # too few to call one an outlier
        zps = np.array([s["zeropoint"] for s, _ in members], dtype=float)
        for i, (s, o) in enumerate(members):
            others = np.delete(zps, i)
            offset = zps[i] - np.median(others)
            if abs(offset) > c["max_zp_offset_mag"]:
                o["selected"] = False
                o["reason"] = (f"zeropoint {zps[i]:.3f} is {offset:+.3f} mag from the visit's median: "
                               f"|offset| > max_zp_offset_mag {c['max_zp_offset_mag']}")
    return out


def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
