"""Multi-band detection, merging, measurement, reference-band selection and forced photometry on coadds.

The per-patch flow (one coadd per filter, all on the patch's pixel grid)::

    dets = {f: detect(coadds[f]) for f in filters}
    merged = merge_detections(dets, wcs=coadds["i"].wcs)
    meas = {f: measure(coadds[f], merged, filter=f) for f in filters}
    ref = select_reference(meas)
    forced = {f: forced_photometry(coadds[f], ref, filter=f) for f in filters}

Each step re-estimates the coadd's residual background (a 256 px mesh with sources masked); pass
``background=estimate_background(coadd)`` to do it once per band. :func:`measure` and
:func:`forced_photometry` then also remove the residual sky pedestal (the mean sky level above the median
that the background estimate finds; :func:`skysnake.measure.sky_pedestal`) before any photometry.
Conventions (pixel coordinates, units, the aperture-corrected PSF flux, ``FLAG_*`` bits) are documented in
:mod:`skysnake.measure`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sep
from scipy.spatial import cKDTree

from .measure import (FLAG_APCORR, FLAG_BLENDED, FLAG_CENTROID, FLAG_EDGE, FLAG_KRON, FLAG_MASKED,
                      FLAG_NAMES, FLAG_NO_DATA, FLAG_SATURATED, FLAG_SHAPE, FLAG_TRUNCATED, KRON_FACTOR,
                      KRON_MIN_RADIUS, aperture_column, calibrate, concentration,
                      detection_catalog, empty_frame, estimate_background, inside_image, photometry,
                      pixel_scale_arcsec, pixel_to_sky, prepare, sanitize_shape, sky_pedestal, sky_to_pixel)

__all__ = ["detect", "merge_detections", "measure", "select_reference", "forced_photometry",
           "estimate_background", "aperture_column", "measure_columns", "DETECT_COLUMNS", "REFERENCE_COLUMNS",
           "forced_columns", "FLAG_NAMES"]

DETECT_COLUMNS = ["x", "y", "ra", "dec", "flux", "fluxerr", "snr", "peak", "npix", "a", "b", "theta", "flags"]
REFERENCE_COLUMNS = ["id", "ref_filter", "x", "y", "ra", "dec", "a", "b", "theta", "kron_radius", "is_extended"]
DEFAULT_PRIORITY = ("i", "r", "g", "z", "y", "u")


def _empty_detections(attrs=None):
    df = empty_frame(DETECT_COLUMNS)
    df["npix"] = df["npix"].astype(np.int64)
    df.attrs.update(attrs or {})
    return df


def detect(coadd, *, thresh=5.0, minarea=5, deblend_nthresh=32, deblend_cont=0.005, filter_fwhm_arcsec=None,
           background=None):
    """Detect sources on a coadd: sep footprints on the matched-filter S/N map, split at significant peaks.

    The S/N map is the matched filter of the residual-background-subtracted image with ``err =
    sqrt(variance)`` (unusable pixels masked) for a Gaussian at the coadd FWHM; see
    :func:`skysnake.measure.detection_catalog` for the peak splitting that fixes sep's deblending of faint
    neighbours. Positions are refined with windowed centroids.

    Parameters
    ----------
    coadd : skysnake.io.Exposure
        Coadd: image (nJy/px), variance (nJy^2), mask, TAN WCS, ``meta["FWHM"]`` (arcsec) if known.
    thresh : float
        Threshold in sigma of the matched-filter S/N map. At 5, 1000x1000 noise-only coadds give no
        detection, and 98.7% of point sources with S/N >= 10 are found in crowded simulated coadds (the
        rest are blended within ~2" of brighter sources), with 0.06% spurious detections at S/N >= 10.
    minarea : int
        Minimum number of pixels above threshold.
    deblend_nthresh, deblend_cont : int, float
        sep deblending parameters.
    filter_fwhm_arcsec : float, optional
        FWHM of the detection kernel; default ``meta["FWHM"]``, else measured on bright compact sources.
    background : numpy.ndarray, float or None
        Residual background to subtract; ``None`` estimates it (256 px mesh, sources masked).

    Returns
    -------
    pandas.DataFrame
        Columns ``DETECT_COLUMNS``: windowed centroid ``x, y`` (0-based array pixels; isophotal barycentre
        where the windowed centroid fails) and ``ra, dec`` (deg); ``flux, fluxerr`` (nJy) in a circular
        aperture of radius 1 FWHM and ``snr = flux / fluxerr``; ``peak`` (nJy/px); ``npix`` (footprint
        pixels); isophotal ``a, b`` (px), ``theta`` (rad); ``flags`` (``FLAG_BLENDED``, ``FLAG_TRUNCATED``,
        ``FLAG_EDGE``, ``FLAG_SATURATED``). ``df.attrs``: ``filter, fwhm_arcsec, fwhm_source, pixscale_arcsec``.
        Empty (with these columns) for an empty coadd or one without usable pixels.
    """
    if coadd.is_empty:
        return _empty_detections()
    prep = prepare(coadd, background=background, fwhm_arcsec=filter_fwhm_arcsec, what="detect")
    if prep is None:
        return _empty_detections({"pixscale_arcsec": pixel_scale_arcsec(coadd.wcs)})
    attrs = {"filter": prep.filter, "fwhm_arcsec": prep.fwhm_px * prep.pixscale, "fwhm_source": prep.fwhm_source,
             "pixscale_arcsec": prep.pixscale}
    objs, seg = detection_catalog(prep, thresh=thresh, minarea=minarea, deblend_nthresh=deblend_nthresh,
                                  deblend_cont=deblend_cont)
    nobj = len(objs["x"])
    if nobj == 0:
        return _empty_detections(attrs)
    fwhm = prep.fwhm_px
    x, y = objs["x"].astype(float), objs["y"].astype(float)
    xw, yw, wflag = sep.winpos(prep.data, x, y, np.full(len(x), fwhm / 2.3548), mask=prep.bad)
    good = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < fwhm)
    x, y = np.where(good, xw, x), np.where(good, yw, y)
    flux, fluxerr, aflag = sep.sum_circle(prep.data, x, y, fwhm, var=prep.var, mask=prep.bad, subpix=0)
    flags = np.zeros(nobj, np.int32)
    flags[(objs["flag"] & sep.OBJ_MERGED) != 0] |= FLAG_BLENDED
    flags[((objs["flag"] & sep.OBJ_TRUNC) != 0) | ((aflag & sep.APER_TRUNC) != 0)] |= FLAG_TRUNCATED
    nd, _, _ = sep.sum_circle(prep.nodata, x, y, 2.0 * fwhm, subpix=0)
    flags[nd > 0] |= FLAG_EDGE
    if prep.sat is not None:
        nsat = np.bincount(seg.ravel(), weights=prep.sat.ravel(), minlength=nobj + 1)[1:nobj + 1]
        flags[nsat > 0] |= FLAG_SATURATED
    ra, dec = pixel_to_sky(prep.wcs, x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = flux / fluxerr
    df = pd.DataFrame({"x": x, "y": y, "ra": ra, "dec": dec, "flux": flux.astype(float),
                       "fluxerr": fluxerr.astype(float), "snr": snr, "peak": objs["peak"].astype(float),
                       "npix": objs["npix"].astype(np.int64), "a": objs["a"].astype(float),
                       "b": objs["b"].astype(float), "theta": objs["theta"].astype(float), "flags": flags},
                      columns=DETECT_COLUMNS)
    df.attrs.update(attrs)
    return df


def _band_order(bands, priority):
    bands = list(bands)
    return [b for b in priority if b in bands] + sorted(b for b in bands if b not in priority)


def merge_detections(detections, *, wcs, match_radius_arcsec=0.5, fwhm_factor=1.0,
                     priority=DEFAULT_PRIORITY):
    """Union of the peaks detected in several filters: each source once.

    Bands are added in ``priority`` order (others after, alphabetically). Each detection of a band is paired
    one-to-one (closest pairs first) with a merged source not yet detected in that band within
    ``max(match_radius_arcsec, fwhm_factor * FWHM of the band)`` (FWHM from the detection table's
    ``attrs["fwhm_arcsec"]``); unpaired detections start new sources. Two peaks of one band are never merged.

    Parameters
    ----------
    detections : dict
        ``{filter: DataFrame}`` from :func:`detect` (``ra, dec, snr`` are used).
    wcs : astropy.wcs.WCS
        Pixel grid of the patch (the coadds' WCS): merged ``x, y`` are 0-based pixels of it.
    match_radius_arcsec : float
        Minimum matching radius.
    fwhm_factor : float
        Matching radius in units of the band's FWHM, when larger.
    priority : sequence of str
        Band order for the merge.

    Returns
    -------
    pandas.DataFrame
        ``id`` (0..N-1 in order of (y, x)), ``x, y, ra, dec`` of the highest-S/N detection, ``pos_filter``
        (its band), ``snr_max``, ``n_detected`` and ``detected_<f>`` (bool) for each band.
    """
    bands = _band_order(detections, priority)
    columns = ["id", "x", "y", "ra", "dec", "pos_filter", "snr_max", "n_detected"] + [f"detected_{b}" for b in bands]
    if wcs is None:
        raise ValueError("merge_detections needs the patch WCS")
    scale = pixel_scale_arcsec(wcs)
    # merged sources as lists of per-band detection row indices
    mx, my = np.zeros(0), np.zeros(0)
    members = {b: np.zeros(0, np.int64) for b in bands}  # row index of each merged source in band b, -1 if none
    for band in bands:
        det = detections[band]
        n_new = len(det)
        if n_new == 0:
            members[band] = np.full(len(mx), -1, np.int64)
            continue
        dx, dy = sky_to_pixel(wcs, det["ra"].to_numpy(float), det["dec"].to_numpy(float))
        fwhm = float(det.attrs.get("fwhm_arcsec", 0.0) or 0.0)
        radius = max(match_radius_arcsec, fwhm_factor * fwhm) / scale
        assign = np.full(len(mx), -1, np.int64)
        used = np.zeros(n_new, bool)
        if len(mx):
            sdm = cKDTree(np.column_stack([mx, my])).sparse_distance_matrix(
                cKDTree(np.column_stack([dx, dy])), radius, output_type="ndarray")
            order = np.lexsort((sdm["j"], sdm["i"], sdm["v"]))
            for i, j in zip(sdm["i"][order], sdm["j"][order]):
                if assign[i] < 0 and not used[j]:
                    assign[i], used[j] = j, True
        new = np.flatnonzero(~used)
        for b in members:
            members[b] = np.concatenate([members[b], np.full(len(new), -1, np.int64)]) if b != band else \
                np.concatenate([assign, new])
        mx, my = np.concatenate([mx, dx[new]]), np.concatenate([my, dy[new]])
    n = len(mx)
    if n == 0:
        return empty_frame(columns)
    snr = np.full((n, len(bands)), -np.inf)
    ras, decs = np.zeros((n, len(bands))), np.zeros((n, len(bands)))
    for k, band in enumerate(bands):
        rows = members[band]
        has = rows >= 0
        if not has.any():
            continue
        det = detections[band]
        s = det["snr"].to_numpy(float)[rows[has]]
        snr[has, k] = np.where(np.isfinite(s), s, -1e30)
        ras[has, k] = det["ra"].to_numpy(float)[rows[has]]
        decs[has, k] = det["dec"].to_numpy(float)[rows[has]]
    best = np.argmax(snr, axis=1)  # ties go to the higher-priority band
    ra, dec = ras[np.arange(n), best], decs[np.arange(n), best]
    x, y = sky_to_pixel(wcs, ra, dec)
    out = pd.DataFrame({"x": x, "y": y, "ra": ra, "dec": dec,
                        "pos_filter": np.array(bands, dtype=object)[best],
                        "snr_max": np.where(snr[np.arange(n), best] > -1e29, snr[np.arange(n), best], np.nan),
                        "n_detected": np.isfinite(snr).sum(axis=1).astype(np.int64)})
    for band in bands:
        out[f"detected_{band}"] = members[band] >= 0
    out = out.iloc[np.lexsort((out["x"].to_numpy(), out["y"].to_numpy()))].reset_index(drop=True)
    out.insert(0, "id", np.arange(n, dtype=np.int64))
    out.attrs.update({"bands": bands, "match_radius_arcsec": float(match_radius_arcsec)})
    return out[columns]


def select_reference(measurements, *, priority=DEFAULT_PRIORITY, min_snr=10.0):
    """Choose a reference band per object and take its position, shape and star/galaxy decision.

    The reference band is the first band in ``priority`` order (others after, alphabetically) where the PSF
    S/N (``snr``) is at least ``min_snr``; when there is none, the band with the highest finite S/N (the first
    available band if none is finite).

    Parameters
    ----------
    measurements : dict
        ``{filter: DataFrame}`` from :func:`measure` (same ``id`` set in every band).
    priority : sequence of str
    min_snr : float

    Returns
    -------
    pandas.DataFrame
        ``REFERENCE_COLUMNS`` (``id, ref_filter, x, y, ra, dec, a, b, theta, kron_radius, is_extended``),
        sorted by ``id``; ``x, y`` are pixels of the measured coadds' grid.
    """
    bands = [b for b in _band_order(measurements, priority) if len(measurements[b])]
    if not bands:
        return empty_frame(REFERENCE_COLUMNS)
    ids = np.unique(np.concatenate([measurements[b]["id"].to_numpy(np.int64) for b in bands]))
    tables = [measurements[b].drop_duplicates("id").set_index("id").reindex(ids) for b in bands]
    snr = np.column_stack([t["snr"].to_numpy(float) for t in tables])
    finite = np.isfinite(snr)
    passing = finite & (snr >= min_snr)
    first_pass = np.argmax(passing, axis=1)
    best = np.argmax(np.where(finite, snr, -np.inf), axis=1)
    choice = np.where(passing.any(axis=1), first_pass, np.where(finite.any(axis=1), best, 0))
    out = {"id": ids, "ref_filter": np.array(bands, dtype=object)[choice]}
    for col in REFERENCE_COLUMNS[2:]:
        stacked = np.column_stack([t[col].to_numpy() for t in tables])
        out[col] = stacked[np.arange(len(ids)), choice]
    df = pd.DataFrame(out, columns=REFERENCE_COLUMNS)
    df["is_extended"] = df["is_extended"].fillna(False).astype(bool)
    return df


def _subtract_pedestal(prep, x, y, a):
    """Remove the residual sky pedestal (:func:`skysnake.measure.sky_pedestal`) from ``prep.data`` in place."""
    pedestal, info = sky_pedestal(prep, x, y, a_px=a)
    prep.data -= pedestal
    return info


def measure_columns(aperture_radii_arcsec):
    """Columns of a :func:`measure` table."""
    cols = ["id", "x", "y", "ra", "dec", "psf_flux", "psf_fluxerr", "snr", "apcorr", "apcorr_err"]
    for r in aperture_radii_arcsec:
        cols += [aperture_column(r), aperture_column(r, "fluxerr")]
    return cols + ["kron_flux", "kron_fluxerr", "kron_radius", "a", "b", "theta", "flux_radius", "concentration",
                   "extendedness", "extendedness_err", "is_extended", "flags"]


def _band_shapes(prep, x, y, ok, *, thresh):
    """Isophotal (a, b, theta) of this band's object under each position (a PSF circle where none)."""
    objs, seg = detection_catalog(prep, thresh=thresh)
    segid = np.zeros(len(x), np.int32)
    segid[ok] = seg[np.rint(y[ok]).astype(np.int64), np.rint(x[ok]).astype(np.int64)]
    has = segid > 0
    sigma = prep.fwhm_px / 2.3548
    a, b, theta = np.full(len(x), sigma), np.full(len(x), sigma), np.zeros(len(x))
    a[has], b[has], theta[has] = (objs[f][segid[has] - 1] for f in ("a", "b", "theta"))
    a, b, theta, fixed = sanitize_shape(a, b, theta, sigma)
    return a, b, theta, ~has | fixed, seg, segid


def _windowed_centroid(prep, x0, y0, ok, *, min_snr):
    """sep.winpos centroids (window sigma from the half-light radius); the input where it fails or is faint."""
    x, y = x0.copy(), y0.copy()
    failed = np.ones(len(x), bool)
    fwhm = prep.fwhm_px
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return x, y, failed
    f, e, _ = sep.sum_circle(prep.data, x0[idx], y0[idx], fwhm, var=prep.var, mask=prep.bad, subpix=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        idx = idx[f / e >= min_snr]
    if len(idx) == 0:
        return x, y, failed
    r50, _ = sep.flux_radius(prep.data, x0[idx], y0[idx], np.full(len(idx), 3.0 * fwhm), 0.5, mask=prep.bad)
    sig = np.clip(np.nan_to_num(2.0 * r50 / 2.35, nan=fwhm / 2.3548), fwhm / 2.3548, 2.0 * fwhm)
    xw, yw, wflag = sep.winpos(prep.data, x0[idx], y0[idx], sig, mask=prep.bad)
    good = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x0[idx], yw - y0[idx])
                                                                 < max(0.5 * fwhm, 1.0))
    idx = idx[good]
    x[idx], y[idx] = xw[good], yw[good]
    failed[idx] = False
    return x, y, failed


def measure(coadd, merged, *, filter, aperture_radii_arcsec=(1.0, 1.5, 2.0, 3.0, 5.0), psf_aperture_arcsec=2.0,
            total_aperture_arcsec=5.0, background=None, fwhm_arcsec=None, shape_thresh=3.0, centroid_min_snr=5.0,
            calib_min_snr=50.0, extended_nsigma=3.0, extended_min=0.02, pedestal=True):
    """Measure one band's coadd at the positions of the merged detection catalog.

    Parameters
    ----------
    coadd : skysnake.io.Exposure
        This band's coadd (image nJy/px, variance, mask, TAN WCS; ``meta["FWHM"]`` in arcsec if known).
    merged : pandas.DataFrame
        Output of :func:`merge_detections` (``id, ra, dec`` are used).
    filter : str
        Band name (recorded in ``df.attrs``).
    aperture_radii_arcsec : sequence of float
        Radii of the circular apertures reported as ``ap_flux_<r>`` (:func:`aperture_column`).
    psf_aperture_arcsec : float
        Radius of the aperture that is aperture-corrected into ``psf_flux``.
    total_aperture_arcsec : float
        Radius taken as "total" by the aperture correction.
    background : numpy.ndarray, float or None
        Residual background to subtract (``None``: estimate it, as :func:`estimate_background`).
    fwhm_arcsec : float, optional
        Coadd FWHM; default ``meta["FWHM"]``, else measured on stars.
    shape_thresh : float
        Threshold (sigma) of this band's segmentation, whose isophotal moments give ``a, b, theta``.
    centroid_min_snr : float
        Windowed centroids are computed above this S/N (1-FWHM aperture); fainter sources keep the input.
    calib_min_snr : float
        Minimum PSF-aperture S/N of the stars that calibrate the aperture correction and the star locus.
    extended_nsigma, extended_min : float
        ``is_extended`` when ``extendedness`` exceeds both ``extended_nsigma * extendedness_err`` and
        ``extended_min``.
    pedestal : bool
        Remove the residual sky pedestal (:func:`skysnake.measure.sky_pedestal`, masked around the merged
        positions) from the pixels before measuring. Without it the 5" apertures of the aperture-correction
        stars collect the pedestal and bias the PSF fluxes high.

    Returns
    -------
    pandas.DataFrame
        One row per merged object, columns :func:`measure_columns`: windowed centroid ``x, y, ra, dec``;
        ``psf_flux, psf_fluxerr`` (nJy), ``snr = psf_flux / psf_fluxerr``, per-object ``apcorr, apcorr_err``;
        ``ap_flux_<r>, ap_fluxerr_<r>``; ``kron_flux, kron_fluxerr`` in the ellipse
        ``2.5 * kron_radius * (a, b)``; isophotal ``a, b`` (px), ``theta`` (rad); ``flux_radius`` (px, half
        light); ``concentration`` = f(1")/f(3"); ``extendedness`` = 1 - concentration / local star locus,
        its error, and ``is_extended``; ``flags`` (``FLAG_*`` of :mod:`skysnake.measure`). ``df.attrs``:
        ``filter, fwhm_arcsec, fwhm_source, apcorr`` (median), ``apcorr_scatter`` (robust scatter of the stars'
        5"/psf-aperture ratios about the fit), ``apcorr_nstars, apcorr_method, locus_scatter, n_point_sources``
        and, with ``pedestal``, ``sky_pedestal`` (nJy/px, median), ``sky_pedestal_slope, sky_pedestal_npix``.
        Rows of an empty or unusable coadd have NaN measurements and ``FLAG_NO_DATA``.
    """
    columns = measure_columns(aperture_radii_arcsec)
    n = len(merged)
    out = empty_frame(columns, n)
    out.attrs["filter"] = filter
    if n == 0:
        return out
    out["id"] = merged["id"].to_numpy(np.int64)
    prep = None if coadd.is_empty else prepare(coadd, background=background, fwhm_arcsec=fwhm_arcsec,
                                                 what=f"measure({filter})")
    if prep is None:
        out["ra"], out["dec"] = merged["ra"].to_numpy(float), merged["dec"].to_numpy(float)
        out["flags"] = FLAG_NO_DATA
        return out
    x0, y0 = sky_to_pixel(prep.wcs, merged["ra"].to_numpy(float), merged["dec"].to_numpy(float))
    ok = inside_image(prep, x0, y0)
    a, b, theta, noshape, seg, segid = _band_shapes(prep, x0, y0, ok, thresh=shape_thresh)
    ped_info = _subtract_pedestal(prep, x0, y0, np.where(noshape, 0.0, a)) if pedestal else {}
    x, y, cfail = _windowed_centroid(prep, x0, y0, ok, min_snr=centroid_min_snr)
    kron = np.full(n, KRON_MIN_RADIUS)
    kfail = np.ones(n, bool)
    idx = np.flatnonzero(ok)
    if len(idx):
        kr, kflag = sep.kron_radius(prep.data, x[idx], y[idx], a[idx], b[idx], theta[idx], 6.0, mask=prep.bad,
                                    segmap=seg, seg_id=segid[idx])
        good = np.isfinite(kr) & (kr > 0) & ((kflag & ~sep.APER_HASMASKED) == 0)
        kron[idx[good]] = np.maximum(kr[good], KRON_MIN_RADIUS)
        kfail[idx[good]] = False
    phot = photometry(prep, x, y, a, b, theta, kron, radii_arcsec=aperture_radii_arcsec,
                      psf_aperture_arcsec=psf_aperture_arcsec, total_aperture_arcsec=total_aperture_arcsec)
    flags = phot["flags"]
    flags[cfail & ok] |= FLAG_CENTROID
    flags[kfail & ok] |= FLAG_KRON
    flags[noshape & ok] |= FLAG_SHAPE
    rhalf = np.full(n, np.nan)
    if len(idx):
        rmax = np.maximum(KRON_FACTOR * kron[idx] * a[idx], 2.0 * prep.fwhm_px)
        r50, _ = sep.flux_radius(prep.data, x[idx], y[idx], rmax, 0.5, mask=prep.bad)
        rhalf[idx] = np.where(np.isfinite(r50) & (r50 > 0), r50, np.nan)

    cal = calibrate(prep, x, y, phot, psf_aperture_arcsec=psf_aperture_arcsec,
                    total_aperture_arcsec=total_aperture_arcsec, min_snr=calib_min_snr)
    conc, conc_err = concentration(phot)
    with np.errstate(invalid="ignore", divide="ignore"):
        ext = 1.0 - conc / cal.broadest
        ext_err = np.sqrt(conc_err ** 2 + cal.scatter ** 2) / cal.broadest
    is_ext = np.isfinite(ext) & (ext > extended_nsigma * ext_err) & (ext > extended_min)
    point = ~is_ext & ((flags & (FLAG_MASKED | FLAG_SATURATED | FLAG_NO_DATA)) == 0)
    apcorr, apcorr_err = cal.apcorr(conc, conc_err, point)
    if cal.model is not None:
        flags |= FLAG_APCORR
    fp, ep = phot["ap"][float(psf_aperture_arcsec)]
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = fp / ep
    ra, dec = pixel_to_sky(prep.wcs, x, y)
    values = {"x": x, "y": y, "ra": ra, "dec": dec, "psf_flux": fp * apcorr, "psf_fluxerr": ep * apcorr,
              "snr": snr, "apcorr": apcorr, "apcorr_err": apcorr_err, "kron_flux": phot["kron"][0],
              "kron_fluxerr": phot["kron"][1], "kron_radius": kron, "a": a, "b": b, "theta": theta,
              "flux_radius": rhalf, "concentration": conc, "extendedness": ext, "extendedness_err": ext_err,
              "is_extended": is_ext, "flags": flags.astype(np.int32)}
    for r in aperture_radii_arcsec:
        values[aperture_column(r)], values[aperture_column(r, "fluxerr")] = phot["ap"][float(r)]
    for key, value in values.items():
        out[key] = value
    out.attrs.update(cal.summary)
    out.attrs.update(ped_info)
    out.attrs.update({"fwhm_arcsec": prep.fwhm_px * prep.pixscale, "fwhm_source": prep.fwhm_source,
                      "n_point_sources": int(cal.stars.sum())})
    return out


def forced_columns(aperture_radii_arcsec):
    """Columns of a :func:`forced_photometry` table."""
    cols = ["id", "x", "y", "psf_flux", "psf_fluxerr", "snr", "apcorr", "apcorr_err", "kron_flux", "kron_fluxerr"]
    for r in aperture_radii_arcsec:
        cols += [aperture_column(r), aperture_column(r, "fluxerr")]
    return cols + ["flags"]


def forced_photometry(coadd, reference, *, filter, psf_aperture_arcsec=2.0,
                      aperture_radii_arcsec=(1.0, 1.5, 2.0, 3.0, 5.0), total_aperture_arcsec=5.0, background=None,
                      fwhm_arcsec=None, calib_min_snr=50.0, pedestal=True):
    """Photometry of this band's coadd at the fixed reference positions and shapes.

    Every band uses the same apertures (circles and the reference Kron ellipse) at the same sky positions.
    The PSF flux is the ``psf_aperture_arcsec`` aperture flux times this band's aperture correction,
    calibrated as in :func:`measure` on bright, isolated, unflagged reference point sources
    (``is_extended`` False), so colours of point sources are unbiased when the PSF differs between bands.

    Parameters
    ----------
    coadd : skysnake.io.Exposure
    reference : pandas.DataFrame
        Output of :func:`select_reference`.
    filter : str
    psf_aperture_arcsec, aperture_radii_arcsec, total_aperture_arcsec, background, fwhm_arcsec, calib_min_snr
        As in :func:`measure`.
    pedestal : bool
        As in :func:`measure` (masked around the reference positions).

    Returns
    -------
    pandas.DataFrame
        :func:`forced_columns`: ``id, x, y`` (pixels of this coadd), ``psf_flux, psf_fluxerr, snr, apcorr,
        apcorr_err, kron_flux, kron_fluxerr, ap_flux_<r>, ap_fluxerr_<r>, flags``; ``df.attrs`` as in
        :func:`measure`. NaN fluxes with ``FLAG_NO_DATA`` where this band has no data.
    """
    columns = forced_columns(aperture_radii_arcsec)
    n = len(reference)
    out = empty_frame(columns, n)
    out.attrs["filter"] = filter
    if n == 0:
        return out
    out["id"] = reference["id"].to_numpy(np.int64)
    prep = None if coadd.is_empty else prepare(coadd, background=background, fwhm_arcsec=fwhm_arcsec,
                                                 what=f"forced_photometry({filter})")
    if prep is None:
        out["flags"] = FLAG_NO_DATA
        return out
    x, y = sky_to_pixel(prep.wcs, reference["ra"].to_numpy(float), reference["dec"].to_numpy(float))
    sigma = prep.fwhm_px / 2.3548
    a, b, theta, _ = sanitize_shape(reference["a"].to_numpy(float), reference["b"].to_numpy(float),
                                    reference["theta"].to_numpy(float), sigma)
    kron = reference["kron_radius"].to_numpy(float)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, KRON_MIN_RADIUS)
    ped_info = _subtract_pedestal(prep, x, y, a) if pedestal else {}
    phot = photometry(prep, x, y, a, b, theta, kron, radii_arcsec=aperture_radii_arcsec,
                      psf_aperture_arcsec=psf_aperture_arcsec, total_aperture_arcsec=total_aperture_arcsec)
    flags = phot["flags"]
    point = ~reference["is_extended"].to_numpy(bool)
    cal = calibrate(prep, x, y, phot, psf_aperture_arcsec=psf_aperture_arcsec,
                    total_aperture_arcsec=total_aperture_arcsec, min_snr=calib_min_snr, points=point)
    conc, conc_err = concentration(phot)
    apcorr, apcorr_err = cal.apcorr(conc, conc_err, point & ((flags & (FLAG_MASKED | FLAG_SATURATED)) == 0))
    if cal.model is not None:
        flags |= FLAG_APCORR
    fp, ep = phot["ap"][float(psf_aperture_arcsec)]
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = fp / ep
    values = {"x": x, "y": y, "psf_flux": fp * apcorr, "psf_fluxerr": ep * apcorr, "snr": snr,
              "apcorr": apcorr, "apcorr_err": apcorr_err, "kron_flux": phot["kron"][0],
              "kron_fluxerr": phot["kron"][1], "flags": flags.astype(np.int32)}
    for r in aperture_radii_arcsec:
        values[aperture_column(r)], values[aperture_column(r, "fluxerr")] = phot["ap"][float(r)]
    for key, value in values.items():
        out[key] = value
    out.attrs.update(cal.summary)
    out.attrs.update(ped_info)
    out.attrs.update({"fwhm_arcsec": prep.fwhm_px * prep.pixscale, "fwhm_source": prep.fwhm_source,
                      "n_point_sources": int(cal.stars.sum())})
    return out
