"""Per-CCD calibration: masks, background, detection, PSF size, astrometry and photometry.

:func:`calibrate_ccd` turns one flat-fielded CCD (ADU, sky included) and a reference catalog
into a calibrated :class:`~skysnake.io.Exposure` (background-subtracted, nJy, TAN-SIP WCS), a
source catalog and a JSON-able summary. Data problems raise
:class:`~skysnake.errors.DataError` with a ``code``; :func:`failure_summary` turns one into the
summary record of a failed CCD.

Steps (timed in ``summary["timing"]``):

1. ``checks``: image has finite, non-constant data (``no_data``, ``blank``), usable header WCS
   (``no_wcs``).
2. ``mask``: SAT (grown), BAD (from ``bpm``), NO_DATA; ``background``: sep, source-masked,
   mean-corrected; variance ``(sky + max(image - sky, 0)) / gain + (read_noise / gain)^2``;
   ``cosmic_rays``: :func:`skysnake.ccdproc.find_cosmic_rays` (or astroscrappy with
   ``cr_method="lacosmic"``).
3. ``detect`` / ``measure``: sep on the background-subtracted image.
4. ``psf``: FWHM from a joint Moffat fit to bright isolated stars; aperture corrections (to total
   flux) of the calibration aperture and of the zeropoint aperture: the Moffat model's, averaged
   with the one measured on the PSF stars out to ``apcorr_total_fwhm`` FWHM
   (:func:`skysnake.photocal.combine_aperture_correction`).
5. ``astrometry``: proper motions to the epoch, offset voting, matching with decreasing radius,
   TAN-SIP fit (:mod:`skysnake.astrometry`).
6. ``photometry``: zeropoint from matched stars measured in an aperture of ``phot_aper_fwhm``
   FWHM, aperture-corrected (:mod:`skysnake.photocal`); its error includes the aperture
   correction's.
7. ``output``: nJy image/variance, catalog with sky coordinates.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import astrometry, ccdproc, detection, masks, photocal, units
from .errors import ConfigError, DataError
from .io import Exposure

__all__ = ["DEFAULTS", "SOURCE_COLUMNS", "CalibResult", "calibrate_ccd", "failure_summary", "merge_config",
           "source_columns", "empty_sources"]

#: Options of :func:`calibrate_ccd` and their defaults (override any subset with ``config``).
DEFAULTS = {
    # masks
    "sat_grow": 1,                   # grow saturated regions by this many pixels
    "cr_method": "fast",             # "fast" (skysnake.ccdproc), "lacosmic" (astroscrappy) or "none"
    "cr_nsigma": 5.0,                # CR seed threshold (sigma)
    "cr_min_fwhm_arcsec": 0.6,       # narrowest PSF whose star cores must never be flagged
    "cr_contrast_margin": 1.5,       # safety factor on the PSF's centre/neighbour contrast
    "cr_grow_nsigma": 2.5,           # grow CR seeds into neighbours above this (sigma)
    "cr_lacosmic": {"sigclip": 5.0, "sigfrac": 0.3, "objlim": 10.0, "niter": 2},  # astroscrappy options
    # background
    "bkg_mesh": 128,                 # sep mesh size (pixels)
    "bkg_filter": 3,                 # sep median filter size (meshes)
    # detection and measurement
    "detect_thresh": 5.0,            # detection threshold (sigma, on the filtered image)
    "detect_minarea": 5,
    "deblend_nthresh": 32,
    "deblend_cont": 0.005,
    "aper_radii_arcsec": [1.0, 2.0, 3.0, 6.0],  # catalog aperture radii
    "calib_aper_arcsec": 2.0,        # radius of the aperture that is aperture-corrected to "flux"
    "kron": True,                    # also measure Kron fluxes
    # PSF and aperture correction
    "psf_min_snr": 50.0,             # PSF stars: minimum S/N in the first aperture
    "psf_max_peak_frac": 0.8,        # PSF stars: peak (sky included) below this fraction of saturation
    "psf_max_stars": 100,
    "apcorr_total_fwhm": 3.0,        # "total" aperture radius (FWHM units); light beyond it from the PSF model
    "apcorr_min_stars": 3,           # fewer PSF stars: aperture correction from the fitted Moffat PSF alone
    "apcorr_model_wing_err": 0.3,    # relative uncertainty of the Moffat model's light outside an aperture: the
                                     # model's aperture correction is averaged with the (noisy) empirical one
                                     # with this uncertainty (photocal.combine_aperture_correction)
    "apcorr_local_sky": False,       # aperture correction: subtract a local annulus sky around each star
                                     # (robust to background errors but noisier) instead of trusting the
                                     # source-masked, mean-corrected global background
    # astrometry
    "astrom_search_radius": 20.0,    # arcsec: largest header-WCS error searched for
    "astrom_vote_bin": 1.0,          # arcsec: offset-histogram bin
    "astrom_match_radii": [3.0, 1.5, 0.75],  # arcsec: refinement stages (affine first)
    "astrom_final_radius": None,     # arcsec: default clip(6 x rms, 0.5, last match radius)
    "sip_order": 3,
    "sip_inv_order": 4,
    "astrom_clip": 3.0,
    "astrom_niter": 5,
    "astrom_min_snr": 5.0,           # sources used for astrometry (S/N in the calibration aperture)
    "astrom_sys_err": 0.002,         # arcsec, added in quadrature to every star
    "min_astrom_stars": 10,
    "astrom_radial_min_stars": 12,   # 12-19 matches: 9-parameter radial-distortion model instead of the full
                                     # order-3 polynomial (which needs 20); fewer: affine
    # photometry
    "min_phot_stars": 5,
    "phot_clip": 3.0,
    "phot_min_snr": 10.0,
    "phot_max_magerr": 0.1,          # reference magnitude error cut
    "phot_max_peak_frac": 0.9,       # peak (sky included) below this fraction of saturation
    "phot_sys_err": 0.005,           # mag, added in quadrature per star
    "phot_aper_fwhm": 2.0,           # zeropoint stars: aperture radius (FWHM units; ~99% of a Moffat's light,
                                     # far less sky noise than a fixed 2" aperture in good seeing)
    "phot_local_sky": False,         # zeropoint stars: subtract a local annulus sky (its noise and the wings of
                                     # neighbours in the annulus bias and scatter the zeropoint; use only
                                     # if the global background is poor on scales < bkg_mesh)
    "colour_terms": {},              # {filter: {"primary": b1, "secondary": b2, "coeffs": [c0, c1, ...]}}
    # fallback
    "header_fallback": False,        # too few reference stars (or none): keep the header WCS and take the camera's
                                     # zeropoint (instrument.keywords.zeropoint, e.g. DECam MAGZERO; SDSS frames'
                                     # calibration) instead of failing the CCD; the summary says calib_method "header"
}

#: Error codes of the astrometric/photometric calibration after which ``header_fallback`` applies.
FALLBACK_CODES = ("empty_refcat", "few_refstars", "no_match", "few_photstars", "no_refmags")

_F = detection.FLAGS
#: flags that exclude a source from the PSF and aperture-correction stars (anything masked nearby)
_BAD_FOR_PSF = (detection.NEAR_MASKED | _F["MERGED"] | _F["TRUNC"] | _F["APER_TRUNC"] | _F["APER_HASMASKED"]
                | _F["WINPOS_FAILED"] | _F["DOVERFLOW"] | _F["SINGU"])
#: flags that exclude a source from the astrometric and photometric reference stars; masked pixels
#: (cosmic rays, bad columns) are tolerated outside the core (they are left out of the centroid and the
#: aperture sum), see ``_core_clean``
_BAD_FOR_CALIB = (_F["NEAR_SAT"] | _F["MERGED"] | _F["TRUNC"] | _F["APER_TRUNC"] | _F["APER_ALLMASKED"]
                  | _F["WINPOS_FAILED"] | _F["DOVERFLOW"] | _F["SINGU"])


@dataclass
class CalibResult:
    """Output of :func:`calibrate_ccd`.

    Attributes
    ----------
    exposure : Exposure
        Background-subtracted image in nJy, mask, variance (nJy^2), fitted TAN-SIP WCS and meta.
    sources : pandas.DataFrame
        Detected sources (see :func:`calibrate_ccd`).
    summary : dict
        JSON-able record of the calibration.
    """

    exposure: Exposure
    sources: pd.DataFrame
    summary: dict


def merge_config(config=None):
    """``DEFAULTS`` updated with ``config``; raises ConfigError for unknown keys."""
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in (config or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"calibrate: unknown option {key!r} (known: {', '.join(sorted(DEFAULTS))})")
        if isinstance(DEFAULTS[key], dict) and isinstance(value, dict) and key != "colour_terms":
            cfg[key].update(value)
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def failure_summary(err: DataError, **ids) -> dict:
    """Summary record of a CCD that failed with ``err``: ``status="failed"``, ``reason``, ``code`` + ids."""
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in ids.items()}
    out.update({"status": "failed", "reason": str(err), "code": getattr(err, "code", "data_error")})
    return out


class _Timer:
    def __init__(self):
        self.times = {}
        self._t = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.times[name] = round(self.times.get(name, 0.0) + now - self._t, 4)
        self._t = now


def _aper_name(r):
    """Column suffix of an aperture of radius ``r`` arcsec: 1.5 -> ``aper_1p5``."""
    return "aper_" + f"{r:.1f}".replace(".", "p")


def _cosmic_rays(image, bkg, var, mask, *, cfg, gain, read_noise, saturation, pixscale):
    method = cfg["cr_method"]
    if method == "none":
        return np.zeros(image.shape, bool)
    if method == "lacosmic":
        import astroscrappy

        opts = dict(cfg["cr_lacosmic"])
        crmask, _ = astroscrappy.detect_cosmics(
            np.nan_to_num(image, nan=0.0).astype(np.float32), inmask=(mask & (masks.BAD | masks.NO_DATA)) != 0,
            gain=gain, readnoise=read_noise, satlevel=saturation, sepmed=True, cleantype="meanmask",
            fsmode="median", **opts)
        return crmask & ((mask & masks.SAT) == 0)
    if method != "fast":
        raise ConfigError(f"calibrate: cr_method must be 'fast', 'lacosmic' or 'none', not {method!r}")
    return ccdproc.find_cosmic_rays(image, background=bkg, variance=var, mask=mask, nsigma=cfg["cr_nsigma"],
                                    min_fwhm_px=cfg["cr_min_fwhm_arcsec"] / pixscale,
                                    contrast_margin=cfg["cr_contrast_margin"], grow_nsigma=cfg["cr_grow_nsigma"])


def _core_clean(mask, cat, sel, *, radius):
    """True where no unusable pixel lies within ``radius`` of the source (computed for ``sel`` only)."""
    ok = np.zeros(len(cat), bool)
    idx = np.flatnonzero(sel)
    bits = detection.mask_bits_near(mask, cat["x"].to_numpy()[idx], cat["y"].to_numpy()[idx], radius)
    ok[idx] = (bits & masks.UNUSABLE) == 0
    return ok


def _ref_errors(refcat, n, mjd):
    """Reference position errors (arcsec) at the epoch: position error (+) proper-motion error x dt."""
    cols = set(getattr(refcat, "columns", getattr(refcat, "colnames", [])))

    def col(name, default):
        return np.nan_to_num(np.asarray(refcat[name], float), nan=default) if name in cols else np.full(n, default)

    pos = np.hypot(col("ra_err", 1.0), col("dec_err", 1.0)) / np.sqrt(2) / 1000.0
    dt = np.abs(astrometry.julian_year(mjd) - col("epoch", float(astrometry.julian_year(mjd))))
    pm = np.hypot(col("pmra_err", 0.0), col("pmdec_err", 0.0)) / np.sqrt(2) / 1000.0 * dt
    return np.hypot(pos, pm)


def calibrate_ccd(image, *, header_wcs, refcat, filter, mjd, exptime, gain, read_noise, saturation, bpm=None,
                  config=None, variance=None, header_zeropoint=None, header_fwhm_px=None) -> CalibResult:
    """Calibrate one CCD.

    Parameters
    ----------
    image : ndarray
        Flat-fielded image in ADU, sky not subtracted (float32).
    header_wcs : astropy.wcs.WCS
        Approximate WCS from the raw header (may be off by ~10" and ~0.1 deg, no distortion).
    refcat : DataFrame or astropy Table
        Reference stars: ``ra, dec`` (deg at ``epoch``), ``pmra, pmdec`` (mas/yr, optional),
        ``epoch`` (Julian year), ``{f}_mag, {f}_magerr``; optional ``ra_err, dec_err`` (mas) and
        ``pmra_err, pmdec_err`` (mas/yr) weight the astrometric fit.
    filter : str
        Filter of the exposure (selects ``{filter}_mag`` or a colour term).
    mjd, exptime : float
        Observation date and exposure time (s).
    gain, read_noise, saturation : float
        e-/ADU, e-, ADU.
    bpm : ndarray, optional
        Bad-pixel map (non-zero = bad).
    config : dict, optional
        Options overriding :data:`DEFAULTS`.
    variance : ndarray, optional
        The camera's own variance of the sky and detector (ADU^2, e.g. from an inverse-variance
        weight map; non-finite or <= 0 where unusable). Used instead of the modelled one where
        usable, plus the sources' Poisson term.
    header_zeropoint : float, optional
        The camera's zeropoint (mag of 1 ADU), used with the header WCS when ``header_fallback``
        is on and the reference stars are too few (codes :data:`FALLBACK_CODES`). Without one, the
        zeropoint comes from the reference stars placed by the header WCS (``calib_method`` "header_wcs";
        at least ``min_phot_stars``), else the CCD fails.
    header_fwhm_px : float, optional
        The camera's seeing FWHM (px), used as the PSF (a Moffat) when ``header_fallback`` is on and
        no PSF star is found.

    Returns
    -------
    CalibResult
        ``exposure``: image (nJy, background-subtracted; NO_DATA pixels set to 0), mask, variance
        (nJy^2; NO_DATA pixels get the sky variance), fitted WCS, meta (``FILTER, MJD-OBS, EXPTIME,
        BUNIT, ZP, ZPERR, NJY_ADU, FWHM, PSFBETA, SKY, SKYRMS, APCORR, ASTRMS, NASTROM, NPHOT,
        GAIN, RDNOISE, SATURATE``).
        ``sources``: one row per detection: ``id, x, y`` (windowed, 0-based), ``ra, dec``,
        ``flux, fluxerr`` (nJy, calibration aperture x aperture correction), ``mag, magerr``,
        ``flux_aper_<r>, fluxerr_aper_<r>`` (nJy, not aperture corrected; ``<r>`` is the radius
        in arcsec with ``p`` for the decimal point, e.g. ``flux_aper_2p0``),
        ``flux_kron, fluxerr_kron``, ``snr``, ``flux_radius`` (px), ``fwhm`` (arcsec,
        2 x flux_radius), ``a, b`` (px), ``theta`` (rad), ``peak_adu``, ``sky_adu``, ``flags``
        (:mod:`skysnake.detection`), ``maskbits``, ``psf_star``, ``ref_match``, ``ref_index``
        (row in ``refcat``, -1 if none), ``astrom_used``, ``phot_used``.
        ``summary`` (JSON-able): ``status`` ("ok"), ``filter, mjd, exptime``, ``seeing_arcsec``
        (PSF FWHM), ``psf_fwhm_px, psf_beta, n_psf_stars``, ``zeropoint, zeropoint_err``
        (including the aperture correction's error), ``zeropoint_rms, n_phot, njy_per_adu``,
        ``apcorr, apcorr_err, n_apcorr, apcorr_method`` (calibration aperture to total: "combined"
        model and empirical, "empirical" when they disagreed, or "psf_model" with too few PSF stars),
        ``apcorr_model`` (the Moffat model's value), ``apcorr_model_ee`` (model EE of the "total"
        aperture), ``phot_aper_px, phot_apcorr, phot_apcorr_err, phot_apcorr_method`` (the
        zeropoint stars' aperture and its correction),
        ``astrom_rms_arcsec`` (2-D rms of the matched stars' residuals), ``n_astrom,
        n_ref_on_ccd, astrom_model`` ("poly3", "radial", ...), ``astrom_offset_arcsec`` (header
        error found), ``astrom_match_radius, astrom_inv_maxerr_px``, ``sky_adu, sky_rms_adu,
        n_sources, n_cr_pixels, n_sat_pixels, pixel_scale_arcsec``, ``corners`` (4 [ra, dec] of
        the outer pixel corners from the fitted WCS), ``center_ra, center_dec`` and ``timing``
        (seconds per step and ``total``).

    Raises
    ------
    DataError
        ``no_data``, ``blank``, ``no_wcs``, ``no_sources``, ``no_psf_stars``, ``few_refstars``,
        ``no_match``, ``few_photstars``, ``no_refmags`` (see the messages for the fix).
    """
    cfg = merge_config(config)
    if not 0.0 < cfg["phot_aper_fwhm"] <= cfg["apcorr_total_fwhm"]:
        raise ConfigError(f"calibrate: phot_aper_fwhm ({cfg['phot_aper_fwhm']}) must be > 0 and at most "
                          f"apcorr_total_fwhm ({cfg['apcorr_total_fwhm']}), the aperture its correction is measured to")
    timer = _Timer()

    # 1. checks -------------------------------------------------------------------------------
    ccdproc.check_image(image)
    ccdproc.check_wcs(header_wcs)
    image = np.asarray(image, dtype=np.float32)
    ny, nx = image.shape
    pixscale = float(np.sqrt(abs(np.linalg.det(header_wcs.pixel_scale_matrix))) * 3600.0)
    timer.lap("checks")

    # 2. masks, background, variance, cosmic rays ------------------------------------------------
    mask = ccdproc.initial_mask(image, saturation=saturation, bpm=bpm, grow_sat=cfg["sat_grow"])
    nodata = (mask & masks.NO_DATA) != 0
    timer.lap("mask")
    bkg = detection.estimate_background(image, mask=mask, mesh=cfg["bkg_mesh"], filter_size=cfg["bkg_filter"])
    sky_var = ccdproc.sky_variance(bkg.back, gain=gain, read_noise=read_noise)
    var = ccdproc.variance_plane(image, bkg.back, gain=gain, read_noise=read_noise, sky_var=sky_var)
    timer.lap("background")
    cr = _cosmic_rays(image, bkg.back, var, mask, cfg=cfg, gain=gain, read_noise=read_noise,
                      saturation=saturation, pixscale=pixscale)
    mask[cr] |= masks.CR
    timer.lap("cosmic_rays")

    sub = image - bkg.back
    if variance is not None:  # the camera's variance (sky + detector) where it has one, plus the sources' Poisson
        good = np.isfinite(variance) & (variance > 0)
        sky_var = np.where(good, variance, sky_var).astype(np.float32)
        var = np.where(good, variance + np.maximum(sub, 0.0) / np.float32(gain), var).astype(np.float32)
    if nodata.any():
        sub[nodata] = 0.0
        var[nodata] = sky_var[nodata]

    # 3. detection and measurement ----------------------------------------------------------------
    det_mask = (mask & (masks.BAD | masks.NO_DATA | masks.CR)) != 0
    objects = detection.detect_sources(sub, variance=sky_var, mask=det_mask, thresh=cfg["detect_thresh"],
                                       minarea=cfg["detect_minarea"], deblend_nthresh=cfg["deblend_nthresh"],
                                       deblend_cont=cfg["deblend_cont"])
    timer.lap("detect")
    if len(objects) == 0:
        raise DataError(f"no source detected above {cfg['detect_thresh']} sigma; the exposure is empty or "
                        "out of focus (check the shutter, the background and detect_thresh)", code="no_sources")
    calib_r = cfg["calib_aper_arcsec"] / pixscale
    radii_as = [float(r) for r in cfg["aper_radii_arcsec"]]
    names = [_aper_name(r) for r in radii_as] + ["calib"]
    cat = detection.measure_sources(sub, objects, variance=var, mask=mask, aper_radii=[r / pixscale for r in radii_as]
                                    + [calib_r], aper_names=names, flag_radius=calib_r, kron=cfg["kron"])
    # S/N of the calibration aperture drives selections
    with np.errstate(divide="ignore", invalid="ignore"):
        cat["snr"] = np.where(cat["fluxerr_calib"] > 0, cat["flux_calib"] / cat["fluxerr_calib"], 0.0)
    timer.lap("measure")

    # 4. PSF and aperture correction ------------------------------------------------------------------
    iy = np.clip(np.rint(cat["y"].to_numpy()).astype(int), 0, ny - 1)
    ix = np.clip(np.rint(cat["x"].to_numpy()).astype(int), 0, nx - 1)
    cat["sky_adu"] = bkg.back[iy, ix].astype(np.float64)
    sky_adu = float(np.median(bkg.back))
    max_peak = cfg["psf_max_peak_frac"] * saturation - sky_adu
    # PSF stars: bright and isolated first; relax S/N and isolation for sparse fields
    stars = np.zeros(len(cat), bool)
    for snr_min, iso in ((cfg["psf_min_snr"], max(3.0 * calib_r, 10.0)), (cfg["psf_min_snr"] / 2, 1.5 * calib_r),
                         (cfg["psf_min_snr"] / 5, calib_r)):
        stars = detection.select_psf_stars(cat, min_snr=snr_min, max_peak=max_peak, isolation=iso,
                                           bad_flags=_BAD_FOR_PSF, max_stars=cfg["psf_max_stars"])
        if stars.sum() >= cfg["apcorr_min_stars"]:
            break
    unusable = (mask & masks.UNUSABLE) != 0
    if not stars.any():
        if not (cfg["header_fallback"] and header_fwhm_px):
            raise DataError("no bright, isolated, unsaturated point source found to measure the PSF; check the "
                            "saturation level, the focus and psf_min_snr", code="no_psf_stars")
        # the camera's seeing, as a Moffat of the default beta (header_fallback)
        beta = 4.765
        psf = {"fwhm": float(header_fwhm_px), "beta": beta, "n": 0,
               "alpha": float(header_fwhm_px) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))}
    else:
        # fit weights from the sky variance plus a smoothed (3x3) source term: weights computed from each pixel's
        # own noisy value (``var``) favour low pixels and bias the Moffat beta high (wings too faint by ~0.1%)
        psf = detection.measure_psf_fwhm(sub, cat, stars, mask=unusable, variance=sky_var, gain=gain)
    fwhm_px = psf["fwhm"]
    phot_r = max(cfg["phot_aper_fwhm"] * fwhm_px, 2.0)
    r_tot = max(cfg["apcorr_total_fwhm"] * fwhm_px, 1.5 * max(calib_r, phot_r))
    annulus = (1.2 * r_tot, 1.7 * r_tot)
    ee_tot = float(detection.moffat_encircled_energy(r_tot, psf["alpha"], psf["beta"]))

    def aperture_correction(radius):
        ee = float(detection.moffat_encircled_energy(radius, psf["alpha"], psf["beta"]))
        model, model_err = photocal.model_aperture_correction(ee, wing_err=cfg["apcorr_model_wing_err"])
        if stars.sum() < cfg["apcorr_min_stars"]:  # too few stars to check the model
            return {"apcorr": model, "apcorr_err": model_err, "n": int(stars.sum()), "method": "psf_model",
                    "model": model}
        emp = detection.aperture_correction(sub, cat, stars, variance=sky_var, mask=unusable, radius=radius,
                                            total_radius=r_tot, total_fraction=ee_tot,
                                            bkg_annulus=annulus if cfg["apcorr_local_sky"] else None)
        out = photocal.combine_aperture_correction(emp["apcorr"], emp["apcorr_err"], model=model,
                                                   model_err=model_err)
        out.update(n=emp["n"], model=model, empirical=emp["apcorr"], empirical_err=emp["apcorr_err"])
        return out

    apc = aperture_correction(calib_r)      # catalog fluxes (calibration aperture)
    phot_apc = aperture_correction(phot_r)  # zeropoint stars
    timer.lap("psf")

    try:
        if len(refcat) == 0:
            raise DataError("the reference catalog has no star in this CCD's tract", code="empty_refcat")
        # 5. astrometry -----------------------------------------------------------------------------------------
        ref_ra, ref_dec = astrometry.propagate_refcat(refcat, mjd=mjd)
        ref_err = _ref_errors(refcat, len(ref_ra), mjd)
        flags = cat["flags"].to_numpy()
        snr = cat["snr"].to_numpy()
        ast_ok = ((flags & _BAD_FOR_CALIB) == 0) & (snr >= cfg["astrom_min_snr"])
        ast_ok &= _core_clean(mask, cat, ast_ok, radius=max(fwhm_px, 2.0))
        ast_idx = np.flatnonzero(ast_ok)
        src_err = 0.4 * fwhm_px / np.maximum(snr[ast_idx], 1.0) * pixscale
        ast = astrometry.fit_astrometry(
            cat["x"].to_numpy()[ast_idx], cat["y"].to_numpy()[ast_idx], ref_ra, ref_dec, header_wcs=header_wcs,
            shape=image.shape, src_err=src_err, src_rank=cat["flux_calib"].to_numpy()[ast_idx], ref_err=ref_err,
            search_radius=cfg["astrom_search_radius"], vote_bin=cfg["astrom_vote_bin"],
            match_radii=cfg["astrom_match_radii"], final_radius=cfg["astrom_final_radius"], order=cfg["sip_order"],
            inv_order=cfg["sip_inv_order"], clip=cfg["astrom_clip"], niter=cfg["astrom_niter"],
            min_matches=cfg["min_astrom_stars"], floor=cfg["astrom_sys_err"],
            radial_min_stars=cfg["astrom_radial_min_stars"])
        wcs = ast.wcs
        timer.lap("astrometry")

        # 6. photometric calibration -------------------------------------------------------------------------------
        ref_mag, ref_magerr = photocal.reference_magnitudes(refcat, filter, colour_terms=cfg["colour_terms"])
        m_src = ast_idx[ast.src_index[ast.used]]
        m_ref = ast.ref_index[ast.used]
        peak_tot = cat["peak"].to_numpy()[m_src] + cat["sky_adu"].to_numpy()[m_src]
        ok = ((snr[m_src] >= cfg["phot_min_snr"]) & (peak_tot < cfg["phot_max_peak_frac"] * saturation)
              & np.isfinite(ref_mag[m_ref]) & (np.nan_to_num(ref_magerr[m_ref], nan=9.0) <= cfg["phot_max_magerr"]))
        p_src, p_ref = m_src[ok], m_ref[ok]
        xs, ys = cat["x"].to_numpy()[p_src], cat["y"].to_numpy()[p_src]
        f_zp, fe_zp = detection.fixed_aperture_flux(sub, xs, ys, phot_r, variance=var, mask=unusable)
        if cfg["phot_local_sky"]:
            lsky = detection.local_background(sub, xs, ys, r_in=annulus[0], r_out=annulus[1], mask=unusable)
            lsky = np.where(np.isfinite(lsky), lsky, 0.0)
            area = np.pi * phot_r**2
            f_zp = f_zp - lsky * area
            # noise of the annulus mean, scaled to the aperture
            sky_sig = bkg.rms[np.clip(np.rint(ys).astype(int), 0, ny - 1), np.clip(np.rint(xs).astype(int), 0, nx - 1)]
            fe_zp = np.hypot(fe_zp, sky_sig / np.sqrt(np.pi * (annulus[1]**2 - annulus[0]**2)) * area)
        a_zp = phot_apc["apcorr"]
        zpr = photocal.fit_zeropoint(f_zp * a_zp, fe_zp * a_zp, ref_mag[p_ref], ref_magerr[p_ref],
                                     clip=cfg["phot_clip"], min_stars=cfg["min_phot_stars"], sys_err=cfg["phot_sys_err"])
        zp = zpr.zp
        # the aperture correction's error is common to every star
        zp_err = float(np.hypot(zpr.zp_err, 2.5 / np.log(10) * phot_apc["apcorr_err"] / a_zp))
        timer.lap("photometry")
        method, fallback_reason = "refcat", ""
    except DataError as err:
        if not (cfg["header_fallback"] and err.code in FALLBACK_CODES):
            raise
        method, fallback_reason = "header", f"{err.code}: {err}"
        ast, zpr, wcs = _HeaderAstrometry(), _HeaderZeropoint(), header_wcs
        a_zp = phot_apc["apcorr"]
        m_src = p_src = np.zeros(0, dtype=np.int64)
        ast_idx = np.zeros(0, dtype=np.int64)
        if header_zeropoint is not None:
            zp, zp_err = float(header_zeropoint), float("nan")
        else:  # no camera zeropoint: the few reference stars, placed by the header WCS
            zpr, p_src = _zeropoint_on_header_wcs(sub, var, unusable, cat, snr, refcat, header_wcs, mjd=mjd,
                                                  filter=filter, phot_r=phot_r, apcorr=a_zp, saturation=saturation,
                                                  cfg=cfg, err=err)
            zp = zpr.zp
            zp_err = float(np.hypot(zpr.zp_err, 2.5 / np.log(10) * phot_apc["apcorr_err"] / a_zp))
            method = "header_wcs"
        timer.lap("fallback")

    # 7. outputs ---------------------------------------------------------------------------------------------------
    njy = float(units.nJy_per_adu(zp))
    # in place (both are float32 planes of this function's own making, not used below): no CCD-sized copies
    exp_image = np.multiply(sub, np.float32(njy), out=sub)
    exp_var = np.multiply(var, np.float32(njy**2), out=var)
    pix_scale_fit = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)
    sources = _source_table(cat, wcs=wcs, njy=njy, apcorr=apc["apcorr"], pixscale=pix_scale_fit,
                            radii_as=radii_as, stars=stars, kron=cfg["kron"])
    n = len(sources)
    ref_index = np.full(n, -1, dtype=np.int64)
    ref_index[ast_idx[ast.src_index]] = ast.ref_index
    astrom_used = np.zeros(n, bool)
    astrom_used[m_src] = True
    phot_used = np.zeros(n, bool)
    phot_used[p_src[zpr.used]] = True
    sources["ref_match"] = ref_index >= 0
    sources["ref_index"] = ref_index
    sources["astrom_used"] = astrom_used
    sources["phot_used"] = phot_used

    fwhm_as = fwhm_px * pix_scale_fit
    cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    cra, cdec = wcs.all_pix2world(cx, cy, 0)
    cen_ra, cen_dec = (float(np.ravel(v)[0]) for v in wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0))
    meta = {
        "FILTER": str(filter), "MJD-OBS": float(mjd), "EXPTIME": float(exptime), "BUNIT": "nJy",
        "ZP": zp, "ZPERR": zp_err, "NJY_ADU": njy, "FWHM": fwhm_as, "PSFBETA": psf["beta"],
        "SKY": sky_adu, "SKYRMS": bkg.globalrms, "APCORR": apc["apcorr"], "ASTRMS": ast.rms,
        "NASTROM": ast.n_used, "NPHOT": zpr.n, "GAIN": float(gain), "RDNOISE": float(read_noise),
        "SATURATE": float(saturation),
    }
    exposure = Exposure(image=exp_image, mask=mask, variance=exp_var, wcs=wcs, meta=meta)
    timer.lap("output")
    summary = {
        "status": "ok",
        "calib_method": method,
        "fallback_reason": fallback_reason,
        "filter": str(filter),
        "mjd": float(mjd),
        "exptime": float(exptime),
        "seeing_arcsec": float(fwhm_as),
        "psf_fwhm_px": float(fwhm_px),
        "psf_beta": float(psf["beta"]),
        "n_psf_stars": int(psf["n"]),
        "zeropoint": float(zp),
        "zeropoint_err": zp_err,
        "zeropoint_rms": float(zpr.rms),
        "njy_per_adu": njy,
        "apcorr": float(apc["apcorr"]),
        "apcorr_err": float(apc["apcorr_err"]),
        "n_apcorr": int(apc["n"]),
        "apcorr_method": apc["method"],
        "apcorr_model": float(apc["model"]),
        "apcorr_model_ee": float(ee_tot),
        "phot_aper_px": float(phot_r),
        "phot_apcorr": float(a_zp),
        "phot_apcorr_err": float(phot_apc["apcorr_err"]),
        "phot_apcorr_method": phot_apc["method"],
        "astrom_rms_arcsec": float(ast.rms),
        "astrom_offset_arcsec": [float(v) for v in ast.offset],
        "astrom_model": ast.info["order"] if ast.info["order"] in ("radial", "header") else f"poly{ast.info['order']}",
        "astrom_match_radius": float(ast.match_radius),
        "astrom_inv_maxerr_px": float(ast.info["inv_maxerr_px"]),
        "n_astrom": int(ast.n_used),
        "n_ref_on_ccd": int(ast.info["n_ref_on_ccd"]),
        "n_phot": int(zpr.n),
        "sky_adu": sky_adu,
        "sky_rms_adu": bkg.globalrms,
        "n_sources": int(n),
        "n_cr_pixels": int(np.count_nonzero(cr)),
        "n_sat_pixels": int(np.count_nonzero(mask & masks.SAT)),
        "pixel_scale_arcsec": pix_scale_fit,
        "corners": [[float(r), float(d)] for r, d in zip(cra, cdec)],
        "center_ra": cen_ra,
        "center_dec": cen_dec,
        "timing": dict(timer.times),
    }
    summary["timing"]["total"] = round(sum(timer.times.values()), 4)
    return CalibResult(exposure=exposure, sources=sources, summary=summary)


def _zeropoint_on_header_wcs(sub, var, unusable, cat, snr, refcat, header_wcs, *, mjd, filter, phot_r, apcorr,
                             saturation, cfg, err):
    """Zeropoint from reference stars matched (within 1.5") to sources placed by the header WCS.

    The header's pointing error is taken out first: the median offset between each reference star and the
    nearest bright source within ``astrom_search_radius``.
    """
    from astropy.coordinates import SkyCoord

    fail = DataError(f"{err} - and no camera zeropoint (instrument.keywords.zeropoint) to fall back on",
                     code=err.code)
    if len(refcat) == 0 or len(cat) == 0:
        raise fail
    try:
        ref_mag, ref_magerr = photocal.reference_magnitudes(refcat, filter, colour_terms=cfg["colour_terms"])
    except DataError:
        raise fail from None
    ref_ra, ref_dec = astrometry.propagate_refcat(refcat, mjd=mjd)
    ra, dec = header_wcs.all_pix2world(cat["x"].to_numpy(), cat["y"].to_numpy(), 0)
    refc = SkyCoord(ref_ra, ref_dec, unit="deg")
    bright = snr >= cfg["phot_min_snr"]
    # the header's pointing error: median offset of the bright sources nearest each reference star
    if bright.any():
        near, d, _ = refc.match_to_catalog_sky(SkyCoord(ra[bright], dec[bright], unit="deg"))
        close = d.arcsec < cfg["astrom_search_radius"]
        if close.any():
            dra = np.median((ra[bright][near[close]] - ref_ra[close]) * np.cos(np.radians(ref_dec[close])))
            ra = ra - dra / np.cos(np.radians(dec))
            dec = dec - np.median(dec[bright][near[close]] - ref_dec[close])
    idx, sep, _ = SkyCoord(ra, dec, unit="deg").match_to_catalog_sky(refc)
    peak_tot = cat["peak"].to_numpy() + cat["sky_adu"].to_numpy()
    ok = ((sep.arcsec < 1.5) & bright & (peak_tot < cfg["phot_max_peak_frac"] * saturation)
          & np.isfinite(ref_mag[idx]) & (np.nan_to_num(ref_magerr[idx], nan=9.0) <= cfg["phot_max_magerr"])
          & ((cat["flags"].to_numpy() & _BAD_FOR_CALIB) == 0))
    p_src = np.flatnonzero(ok)
    f, fe = detection.fixed_aperture_flux(sub, cat["x"].to_numpy()[p_src], cat["y"].to_numpy()[p_src], phot_r,
                                          variance=var, mask=unusable)
    try:
        zpr = photocal.fit_zeropoint(f * apcorr, fe * apcorr, ref_mag[idx[p_src]], ref_magerr[idx[p_src]],
                                     clip=cfg["phot_clip"], min_stars=cfg["min_phot_stars"],
                                     sys_err=cfg["phot_sys_err"])
    except DataError:
        raise fail from None
    return zpr, p_src


class _HeaderAstrometry:
    """Stands in for the astrometric fit when the header WCS is kept (``header_fallback``)."""

    rms = float("nan")
    n_used = 0
    offset = (0.0, 0.0)
    match_radius = float("nan")
    info = {"order": "header", "inv_maxerr_px": float("nan"), "n_ref_on_ccd": 0}
    src_index = np.zeros(0, dtype=np.int64)
    ref_index = np.zeros(0, dtype=np.int64)
    used = np.zeros(0, dtype=bool)


class _HeaderZeropoint:
    """Stands in for the zeropoint fit when the camera's zeropoint is kept (``header_fallback``)."""

    n = 0
    rms = float("nan")
    used = np.zeros(0, dtype=np.int64)


def source_columns(config=None):
    """Column names of the ``sources`` table for ``config`` (aperture columns follow its radii)."""
    cfg = merge_config(config)
    cols = ["id", "ra", "dec", "x", "y", "flux", "fluxerr", "mag", "magerr"]
    for r in cfg["aper_radii_arcsec"]:
        cols += [f"flux_{_aper_name(float(r))}", f"fluxerr_{_aper_name(float(r))}"]
    if cfg["kron"]:
        cols += ["flux_kron", "fluxerr_kron", "kron_radius"]
    cols += ["snr", "flux_radius", "fwhm", "a", "b", "theta", "peak_adu", "sky_adu", "flags", "maskbits", "psf_star",
             "ref_match", "ref_index", "astrom_used", "phot_used"]
    return cols


def empty_sources(config=None):
    """An empty ``sources`` table with the right columns and dtypes (for failed CCDs)."""
    ints = {"id": np.int32, "flags": np.int32, "maskbits": np.int32, "ref_index": np.int64}
    bools = {"psf_star", "ref_match", "astrom_used", "phot_used"}
    return pd.DataFrame({c: np.zeros(0, dtype=ints.get(c, bool if c in bools else np.float64))
                         for c in source_columns(config)})


def _source_table(cat, *, wcs, njy, apcorr, pixscale, radii_as, stars, kron):
    x, y = cat["x"].to_numpy(), cat["y"].to_numpy()
    if len(cat):
        ra, dec = wcs.all_pix2world(x, y, 0)
    else:
        ra = dec = np.zeros(0)
    flux = cat["flux_calib"].to_numpy() * apcorr * njy
    fluxerr = cat["fluxerr_calib"].to_numpy() * apcorr * njy
    out = {"id": cat["id"].to_numpy(), "ra": np.asarray(ra, float), "dec": np.asarray(dec, float), "x": x, "y": y,
           "flux": flux, "fluxerr": fluxerr, "mag": units.flux_to_mag(flux),
           "magerr": units.magerr_from_flux(flux, fluxerr)}
    for r in radii_as:
        name = _aper_name(r)
        out[f"flux_{name}"] = cat[f"flux_{name}"].to_numpy() * njy
        out[f"fluxerr_{name}"] = cat[f"fluxerr_{name}"].to_numpy() * njy
    if kron:
        out["flux_kron"] = cat["flux_kron"].to_numpy() * njy
        out["fluxerr_kron"] = cat["fluxerr_kron"].to_numpy() * njy
        out["kron_radius"] = cat["kron_radius"].to_numpy()
    out.update({
        "snr": cat["snr"].to_numpy(), "flux_radius": cat["flux_radius"].to_numpy(),
        "fwhm": 2.0 * cat["flux_radius"].to_numpy() * pixscale, "a": cat["a"].to_numpy(), "b": cat["b"].to_numpy(),
        "theta": cat["theta"].to_numpy(), "peak_adu": cat["peak"].to_numpy(), "sky_adu": cat["sky_adu"].to_numpy(),
        "flags": cat["flags"].to_numpy().astype(np.int32), "maskbits": cat["maskbits"].to_numpy().astype(np.int32),
        "psf_star": np.asarray(stars, bool),
    })
    return pd.DataFrame(out)


#: Columns of the ``sources`` table with the default configuration (see :func:`source_columns`).
SOURCE_COLUMNS = source_columns()
