"""Photometric calibration of one CCD: reference magnitudes (with colour terms) and the zeropoint.

The zeropoint ``zp`` is the magnitude of 1 ADU of *total* counts (:mod:`skysnake.units`):
``mag = zp - 2.5 log10(flux_ADU)``. It is fitted from matched reference stars as the
inverse-variance weighted, sigma-clipped mean of ``ref_mag + 2.5 log10(flux_ADU)``, where
``flux_ADU`` is an aperture-corrected (i.e. total) flux.

Colour terms map the reference catalog's photometric system to the instrument's::

    colour_terms = {"g": {"primary": "g", "secondary": "r", "coeffs": [c0, c1, ...]}}
    ref_mag(g) = g_mag + sum_k c_k (g_mag - r_mag)^k

A filter without an entry uses ``{filter}_mag`` directly.

Aperture corrections (aperture flux -> total flux) are known two ways: from the fitted PSF model
(``1 / EE(r)``, whose uncertainty is a fraction of the light it extrapolates beyond ``r``) and
empirically from a few bright stars (noisy: sky noise in their large apertures).
:func:`combine_aperture_correction` averages the two, and keeps the empirical value alone when they
disagree (the PSF model is then evidently wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detection import clipped_mean
from .errors import DataError

__all__ = ["reference_magnitudes", "ZeropointResult", "fit_zeropoint", "model_aperture_correction",
           "combine_aperture_correction"]


def _col(refcat, name):
    cols = getattr(refcat, "columns", None)
    names = list(cols) if cols is not None else list(getattr(refcat, "colnames", []))
    if name not in names:
        return None
    return np.asarray(refcat[name], dtype=float)


def reference_magnitudes(refcat, filter, *, colour_terms=None):
    """Reference magnitudes (and errors) in the instrument's ``filter``.

    Parameters
    ----------
    refcat : DataFrame or astropy Table
        Needs ``{band}_mag`` (and optionally ``{band}_magerr``) for the bands involved.
    filter : str
        Instrument filter name.
    colour_terms : dict, optional
        ``{filter: {"primary": band, "secondary": band, "coeffs": [c0, c1, ...]}}`` (see module
        docstring).

    Returns
    -------
    mag, magerr : ndarray
        NaN where a needed magnitude is missing. Errors of missing ``*_magerr`` columns are 0; the
        colour's error is propagated through the polynomial's derivative (primary and secondary
        errors treated as independent).

    Raises
    ------
    DataError
        ``code="no_refmags"`` if the needed magnitude columns are absent.
    """
    term = (colour_terms or {}).get(filter)
    if not term:
        mag = _col(refcat, f"{filter}_mag")
        if mag is None:
            raise DataError(f"reference catalog has no {filter}_mag column; add a colour term for filter "
                            f"{filter!r} in config colour_terms or use a refcat with this band", code="no_refmags")
        err = _col(refcat, f"{filter}_magerr")
        return mag, (np.zeros_like(mag) if err is None else err)
    p = term["primary"]
    coeffs = np.asarray(term.get("coeffs", [0.0]), dtype=float)
    if term.get("colour"):  # colour of two other bands, e.g. Gaia: G + poly(BP - RP)
        return _colour_band_terms(refcat, filter, p, term["colour"], coeffs)
    s = term["secondary"]
    mp, ms = _col(refcat, f"{p}_mag"), _col(refcat, f"{s}_mag")
    if mp is None or ms is None:
        raise DataError(f"colour term for {filter!r} needs {p}_mag and {s}_mag in the reference catalog",
                        code="no_refmags")
    ep = _col(refcat, f"{p}_magerr")
    es = _col(refcat, f"{s}_magerr")
    ep = np.zeros_like(mp) if ep is None else ep
    es = np.zeros_like(ms) if es is None else es
    c = mp - ms
    poly = np.polynomial.polynomial.polyval(c, coeffs)
    dpoly = np.polynomial.polynomial.polyval(c, np.polynomial.polynomial.polyder(coeffs)) if len(coeffs) > 1 \
        else np.zeros_like(c)
    mag = mp + poly
    # d mag / d mp = 1 + dpoly, d mag / d ms = -dpoly
    err = np.sqrt(((1 + dpoly) * ep) ** 2 + (dpoly * es) ** 2)
    return mag, err


def _colour_band_terms(refcat, filter, primary, colour, coeffs):
    """``primary_mag + poly(b1_mag - b2_mag)``; errors of the three bands treated as independent."""
    b1, b2 = colour
    mags = {b: _col(refcat, f"{b}_mag") for b in (primary, b1, b2)}
    missing = [b for b, m in mags.items() if m is None]
    if missing:
        raise DataError(f"colour term for {filter!r} needs {', '.join(f'{b}_mag' for b in missing)} in the reference "
                        "catalog", code="no_refmags")
    errs = {b: (_col(refcat, f"{b}_magerr") if _col(refcat, f"{b}_magerr") is not None
                else np.zeros_like(mags[b])) for b in (primary, b1, b2)}
    c = mags[b1] - mags[b2]
    poly = np.polynomial.polynomial.polyval(c, coeffs)
    dpoly = np.polynomial.polynomial.polyval(c, np.polynomial.polynomial.polyder(coeffs)) if len(coeffs) > 1 \
        else np.zeros_like(c)
    err = np.sqrt(errs[primary] ** 2 + dpoly ** 2 * (errs[b1] ** 2 + errs[b2] ** 2))
    return mags[primary] + poly, err


@dataclass
class ZeropointResult:
    """Fitted zeropoint: ``zp`` (mag for 1 ADU), its error, the number of stars used, their rms."""

    zp: float
    zp_err: float
    n: int
    rms: float
    used: np.ndarray
    resid: np.ndarray


def fit_zeropoint(flux, fluxerr, ref_mag, ref_magerr, *, clip=3.0, max_iter=10, min_stars=5, sys_err=0.005):
    """Zeropoint from total instrumental fluxes (ADU) and reference magnitudes.

    Each star gives ``zp_i = ref_mag_i + 2.5 log10(flux_i)`` with error
    ``sqrt(magerr_inst^2 + ref_magerr^2 + sys_err^2)`` (``magerr_inst`` from ``fluxerr`` relative
    to the flux expected from ``ref_mag``, so the weights do not follow the flux noise); the
    result is their weighted mean with
    iterative ``clip``-sigma clipping (robust scale), its error scaled by ``sqrt(reduced chi2)``
    when that exceeds 1.

    Parameters
    ----------
    flux, fluxerr : array_like
        Aperture-corrected fluxes and errors (ADU).
    ref_mag, ref_magerr : array_like
        Reference magnitudes and errors (:func:`reference_magnitudes`).
    clip : float, optional
        Clipping threshold (sigma).
    max_iter : int, optional
        Clipping iterations.
    min_stars : int, optional
        Minimum number of usable stars.
    sys_err : float, optional
        Per-star systematic error (mag) added in quadrature (PSF/aperture-correction variations).

    Returns
    -------
    ZeropointResult

    Raises
    ------
    DataError
        ``code="few_photstars"`` if fewer than ``min_stars`` stars are usable (after clipping).
    """
    flux = np.asarray(flux, float)
    fluxerr = np.asarray(fluxerr, float)
    ref_mag = np.asarray(ref_mag, float)
    ref_magerr = np.asarray(ref_magerr, float)
    good = (flux > 0) & np.isfinite(flux) & np.isfinite(fluxerr) & np.isfinite(ref_mag)
    ref_magerr = np.where(np.isfinite(ref_magerr), ref_magerr, 0.0)
    n_good = int(good.sum())
    if n_good < min_stars:
        raise DataError(f"only {n_good} usable photometric reference stars (need {min_stars}); check the "
                        "refcat magnitudes for this filter, the saturation level, and that astrometric "
                        "matching succeeded", code="few_photstars")
    with np.errstate(divide="ignore", invalid="ignore"):
        zpi = np.where(good, ref_mag + 2.5 * np.log10(np.where(good, flux, 1.0)), np.nan)
        # relative errors from the flux *expected* from the reference magnitude (median zeropoint):
        # weights computed from the measured flux would favour upward fluctuations and bias the zp
        flux_exp = 10.0 ** (-0.4 * (ref_mag - np.nanmedian(zpi[good])))
        inst_err = 2.5 / np.log(10) * fluxerr / np.where(good, flux_exp, 1.0)
    err = np.sqrt(inst_err**2 + ref_magerr**2 + sys_err**2)
    err = np.where(good, err, np.nan)
    zp, zp_err, used = clipped_mean(zpi, err, clip=clip, max_iter=max_iter)
    n = int(used.sum())
    if n < min_stars:
        raise DataError(f"only {n} photometric reference stars left after {clip:g}-sigma clipping (of {n_good}; "
                        f"need {min_stars}); the matched stars disagree - check for non-linearity/saturation",
                        code="few_photstars")
    resid = zpi - zp
    rms = float(np.sqrt(np.mean(resid[used] ** 2)))
    return ZeropointResult(zp=float(zp), zp_err=float(zp_err), n=n, rms=rms, used=used, resid=resid)


def model_aperture_correction(encircled_energy, *, wing_err=0.3, floor=2e-4):
    """Aperture correction from a PSF model's encircled energy, and its uncertainty.

    Parameters
    ----------
    encircled_energy : float
        Fraction of a point source's light inside the aperture according to the PSF model.
    wing_err : float, optional
        Relative uncertainty of the model's light *outside* the aperture (a fitted Moffat gets
        the light outside 2 FWHM of a Moffat-like PSF to ~10%, measured on the simulation; 0.3 is
        conservative).
    floor : float, optional
        Smallest relative uncertainty.

    Returns
    -------
    apcorr, apcorr_err : float
        ``1 / EE`` and ``apcorr * max(wing_err * (1 - EE) / EE, floor)``.
    """
    ee = float(encircled_energy)
    if not 0.0 < ee <= 1.0:
        raise ValueError(f"encircled energy must be in (0, 1], not {ee}")
    apcorr = 1.0 / ee
    return apcorr, apcorr * max(wing_err * (1.0 - ee) / ee, floor)


def combine_aperture_correction(empirical, empirical_err, *, model, model_err, max_tension=3.0):
    """Inverse-variance average of an empirical and a PSF-model aperture correction.

    Parameters
    ----------
    empirical, empirical_err : float
        Aperture correction measured on stars and its error (NaN if unavailable).
    model, model_err : float
        PSF-model value and its uncertainty (:func:`model_aperture_correction`).
    max_tension : float, optional
        If the two differ by more than this many combined sigma, the model is rejected and the
        empirical value is returned alone.

    Returns
    -------
    dict
        ``apcorr, apcorr_err``, ``method`` ("combined", "empirical" when the model was rejected,
        "psf_model" when there is no usable empirical value) and ``tension`` (difference in
        combined sigma, NaN without an empirical value).
    """
    e, ee_, m, me = (float(v) for v in (empirical, empirical_err, model, model_err))
    if not (np.isfinite(e) and np.isfinite(ee_) and ee_ > 0 and e > 0):
        return {"apcorr": m, "apcorr_err": me, "method": "psf_model", "tension": float("nan")}
    tension = abs(e - m) / np.hypot(ee_, me)
    if tension > max_tension:
        return {"apcorr": e, "apcorr_err": ee_, "method": "empirical", "tension": float(tension)}
    w_e, w_m = 1.0 / ee_**2, 1.0 / me**2
    return {"apcorr": float((w_e * e + w_m * m) / (w_e + w_m)), "apcorr_err": float(1.0 / np.sqrt(w_e + w_m)),
            "method": "combined", "tension": float(tension)}
