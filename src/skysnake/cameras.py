"""Instrument presets: header translations of real cameras (``instrument.name``).

Each preset is a partial ``instrument`` config block; the user's block overrides any key
(:func:`skysnake.instruments.merged_instrument`). Camera-specific steps that a keyword
mapping cannot express live here too:

* ``sdss``: SDSS "corrected frames" (``frame-{f}-{run}-{camcol}-{field}.fits[.bz2]``). The
  image is in nanomaggies, sky-subtracted; raw counts are rebuilt as ``frame / calib + sky``
  (SDSS data model), so the workflow calibrates counts like any camera's. The frame's own
  calibration gives a zeropoint hint (``22.5 - 2.5 log10(median calib)``, the AB magnitude of
  one count). SDSS scans: each filter of a field is its own visit,
  ``visit = (run * 1000 + FRAME) * 10 + filter index (ugriz)`` (``FRAME``: the header's frame sequence
  of that filter's CCD, which differs between filters of one field), ``ccd = camcol`` (a visit holds only
  the camcols whose frames are given: ``complete_visits: false``). A file holding
  counts only (HDU 0, no calibration HDUs) is read as counts, without a zeropoint hint.
* ``decam``: DECam community-pipeline products: ``ooi`` image, ``oow`` inverse-variance weight
  and ``ood`` data-quality mask found by file name; every image HDU is a CCD (one calibrate
  job per HDU); keywords from the primary header and the CCD's extension; zeropoint hint
  ``MAGZERO``; seeing ``FWHM`` (px); gain and saturation from amplifier A. A visit's files need
  not hold every CCD of the camera (``complete_visits: false``: no CCD is reported missing).
* ``generic``: one CCD per file (or HDU), keywords FILTER, EXPTIME, MJD-OBS, GAIN, RDNOISE,
  SATURATE, EXPNUM (visit), CCDNUM (ccd).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SDSS_FILTERS = "ugriz"
#: SDSS camera gains (e-/ADU) per camcol (1-6) and filter (ugriz), from the SDSS DR7+ data model
SDSS_GAIN = {
    1: (1.62, 3.32, 4.71, 5.165, 4.745), 2: (1.595, 3.855, 4.6, 6.565, 5.155),
    3: (1.59, 3.845, 4.72, 4.86, 4.885), 4: (1.6, 3.995, 4.76, 4.885, 4.775),
    5: (1.47, 4.05, 4.725, 4.64, 3.48), 6: (2.17, 4.035, 4.895, 4.76, 4.69),
}

PRESETS = {
    "generic": {
        "image_hdu": 0,
        "keywords": {"filter": "FILTER", "exptime": "EXPTIME", "mjd": "MJD-OBS", "gain": "GAIN",
                     "read_noise": "RDNOISE", "saturation": "SATURATE", "visit": "EXPNUM", "ccd": "CCDNUM",
                     "zeropoint": "MAGZERO"},
        "defaults": {"gain": 1.0, "read_noise": 5.0, "saturation": 65000.0},
        "complete_visits": True,
    },
    "sdss": {
        "image_hdu": 0,
        "keywords": {"filter": "FILTER", "exptime": "EXPTIME", "mjd": "TAI", "gain": "GAIN",
                     "read_noise": "RDNOISE", "saturation": "SATURATE", "visit": "RUN", "ccd": "CAMCOL",
                     "zeropoint": "ZPHINT"},
        "defaults": {"gain": 4.7, "read_noise": 6.0, "saturation": 60000.0},
        "complete_visits": False,  # a visit is one camcol's frame of one filter: other camcols are other fields
    },
    "decam": {
        "image_hdu": "all",
        "inherit_primary": True,
        "filter_first_word": True,
        "weight_file": ["_ooi_", "_oow_"],
        "mask_file": ["_ooi_", "_ood_"],
        "keywords": {"filter": "FILTER", "exptime": "EXPTIME", "mjd": "MJD-OBS", "gain": "GAINA",
                     "read_noise": "RDNOISEA", "saturation": "SATURATA", "visit": "EXPNUM", "ccd": "CCDNUM",
                     "zeropoint": "MAGZERO", "fwhm": "FWHM"},
        "defaults": {"gain": 4.0, "read_noise": 7.0, "saturation": 40000.0},
        "complete_visits": False,
    },
}


def derive_meta(name, header, meta):
    """Camera-specific fields computed from the header (updates ``meta`` in place)."""
    if name != "sdss":
        return
    filt = str(header.get("FILTER", "")).strip()
    if "RUN" in header and "FRAME" in header and filt in SDSS_FILTERS:
        meta["visit"] = (int(header["RUN"]) * 1000 + int(header["FRAME"])) * 10 + SDSS_FILTERS.index(filt)
        camcol = int(header.get("CAMCOL", 0))
        if "gain" not in meta and camcol in SDSS_GAIN:
            meta["gain"] = SDSS_GAIN[camcol][SDSS_FILTERS.index(filt)]
    if "TAI" in header:  # seconds since MJD 0 (TAI ~ UTC + 32 s: negligible for proper motions)
        meta["mjd"] = float(header["TAI"]) / 86400.0


def sdss_counts(hdul):
    """Raw counts ``frame / calib + sky`` of an SDSS corrected frame, and the zeropoint of one count.

    Returns ``(counts, zp)``; ``(None, None)`` when ``hdul`` is not a nanomaggie frame with its
    calibration (HDU 1) and sky (HDU 2) extensions.
    """
    if len(hdul) < 3 or not str(hdul[0].header.get("BUNIT", "")).lower().startswith("nanomaggy"):
        return None, None
    frame = np.asarray(hdul[0].data, dtype=np.float64)
    calib = np.asarray(hdul[1].data, dtype=np.float64)
    sky = hdul[2].data
    allsky = np.asarray(sky["ALLSKY"][0], dtype=np.float64)
    xi = np.asarray(sky["XINTERP"][0], dtype=np.float64)
    yi = np.asarray(sky["YINTERP"][0], dtype=np.float64)
    yy, xx = np.meshgrid(yi, xi, indexing="ij")
    sky_img = ndimage.map_coordinates(allsky, [yy, xx], order=1, mode="nearest")
    counts = frame / calib[None, :] + sky_img
    zp = float(22.5 - 2.5 * np.log10(np.median(calib)))
    return counts.astype(np.float32), zp


def companion(path, replace):
    """The companion file of ``path`` (weight or mask): ``replace = [old, new]`` applied to the file name."""
    import os

    old, new = replace
    d, name = os.path.split(str(path))
    if old not in name:
        return None
    return os.path.join(d, name.replace(old, new, 1))
