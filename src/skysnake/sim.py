"""Deterministic simulated survey: camera, visits, sky truth, reference catalog and raw CCDs.

The simulation is the ground truth every pipeline stage is tested against.

Camera
    A ``ccd_cols x ccd_rows`` mosaic of ``ccd_nx x ccd_ny`` CCDs separated by ``ccd_gap_px``; the optical
    axis is at the mosaic centre. Focal-plane pixel coordinates ``(X, Y)`` (relative to the axis) are
    distorted radially, ``(U, V) = (X, Y) (1 + k r^2)``, then projected (TAN) at the boresight with the
    visit's rotation and ``pixel_scale``. Each CCD's true WCS is therefore exactly TAN-SIP with
    ``A_3_0 = A_1_2 = B_2_1 = B_0_3 = k`` and CRPIX at the optical axis (the inverse AP/BP terms are the
    analytic series inverse, accurate to < 1e-3 px over the mosaic).
Photometry
    ``zp`` is the magnitude of 1 ADU of *total* counts in the exposure (see :mod:`skysnake.units`); an
    object of AB magnitude ``m`` gets ``10**(-0.4 (m - zp))`` ADU. The sky is ``10**(-0.4 (sky_mag - zp))``
    ADU per arcsec^2, i.e. proportional to each pixel's true solid angle.
Randomness
    Every random number comes from ``numpy.random.default_rng([seed, tag, ...])`` with a fixed tag per use
    (design, camera defects, sky, per-(visit, ccd) rendering), so outputs are bit-identical for a seed and
    one CCD's pixels do not depend on which other CCDs were rendered.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from math import comb

import galsim
import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from .errors import ConfigError

DEFAULTS = {
    "seed": 1234,
    "ra": 150.1,
    "dec": 2.2,
    "filters": ["g", "r", "i"],
    "visits_per_filter": 3,
    "first_visit": 1000,
    "ccd_nx": 1024,
    "ccd_ny": 2048,
    "ccd_cols": 2,
    "ccd_rows": 2,
    "ccd_gap_px": 60,
    "pixel_scale": 0.2,
    # 2e-9 px^-2: 5" displacement at the mosaic corner; a linear TAN fit per CCD is off by 0.48-1.64" at
    # the CCD corners (the requirement is > 0.3" everywhere, < ~3").
    "distortion_k": 2.0e-9,
    "dither_arcmin": 3.0,
    "exptime": 60.0,
    "mjd_start": 60400.0,
    "seeing_arcsec": [0.6, 1.2],
    "psf_beta": 4.765,
    "sky_mag": {"g": 22.0, "r": 21.0, "i": 20.3},
    "zeropoint": {"g": 28.3, "r": 28.5, "i": 28.1},
    "zp_jitter": 0.1,
    "ccd_zp_scatter": 0.02,
    "gain": 1.5,
    "read_noise": 6.0,
    "saturation": 50000.0,
    "cosmic_rays": 80,
    "bad_columns": 1,
    "star_density": 60000.0,
    "galaxy_density": 30000.0,
    "mag_bright": 16.0,
    "mag_limit": 24.5,
    "pm_sigma_mas_yr": 6.0,
    "pointing_error_arcsec": [2.0, 10.0],
    "rotation_error_deg": 0.1,
    "refcat_epoch": 2016.0,
    "refcat_mag_limit": 21.0,
    "refcat_mag_bright": 16.5,
    "ccd_bad": [],
}

FAULT_KINDS = ("nan", "zeros", "no_wcs", "offset_far", "saturated")

# Colours relative to r (the reference filter) of the filters the simulation knows.
_KNOWN_FILTERS = ("u", "g", "r", "i", "z", "y")
_TAG_DESIGN, _TAG_CAMERA, _TAG_SKY, _TAG_RENDER = 11, 12, 13, 14
TRUTH_COLUMNS = ["id", "ra", "dec", "pmra", "pmdec", "epoch", "is_star"]  # + mag_{f}, profile, hlr_arcsec, q, pa_deg


@dataclass
class Design:
    """A survey design: the merged configuration, the visits and the camera's CCDs.

    Attributes
    ----------
    cfg : dict
        ``DEFAULTS`` updated with the user's ``sim`` block.
    visits : pandas.DataFrame
        One row per visit: ``visit, filter, mjd, epoch`` (Julian year), ``exptime, seeing_arcsec, zp``
        (true visit zeropoint, before the per-CCD offset), ``sky_mag, ra, dec, rot_deg`` (true boresight
        and rotation), ``ra_hdr, dec_hdr, rot_hdr_deg`` (what the headers claim),
        ``pointing_error_arcsec, rotation_error_deg, dither_x_arcmin, dither_y_arcmin``.
    ccds : pandas.DataFrame
        One row per CCD: ``ccd`` (1-based id), ``col, row``, ``x_off, y_off`` (focal-plane coordinates of the
        CCD's 0-based pixel (0, 0) relative to the optical axis), ``crpix1, crpix2`` (optical axis in the
        CCD's 1-based FITS pixel coordinates), ``gain, saturation, dzp`` (true per-CCD zeropoint offset).
    """

    cfg: dict
    visits: pd.DataFrame
    ccds: pd.DataFrame


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------

def merge_config(cfg=None):
    """``DEFAULTS`` deep-updated with ``cfg`` (a possibly partial ``sim`` block); raises ConfigError on typos."""
    out = copy.deepcopy(DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"sim: unknown key {key!r} (known keys: {', '.join(sorted(DEFAULTS))})")
        if isinstance(DEFAULTS[key], dict) and isinstance(value, dict):
            out[key].update(copy.deepcopy(value))
        else:
            out[key] = copy.deepcopy(value)
    for f in out["filters"]:
        if f not in _KNOWN_FILTERS:
            raise ConfigError(f"sim: filter {f!r} is not simulated; use some of {_KNOWN_FILTERS}")
        for key in ("sky_mag", "zeropoint"):
            if f not in out[key]:
                raise ConfigError(f"sim: {key} has no value for filter {f!r}; add it to the sim block")
    for bad in out["ccd_bad"]:
        if bad.get("kind") not in FAULT_KINDS or "visit" not in bad or "ccd" not in bad:
            raise ConfigError(f"sim: ccd_bad entry {bad!r} needs visit, ccd and kind in {FAULT_KINDS}")
    return out


def julian_year(mjd):
    """Julian epoch (e.g. 2016.0) of an MJD."""
    return 2000.0 + (np.asarray(mjd, dtype=float) - 51544.5) / 365.25


# ----------------------------------------------------------------------------------------------------------
# gnomonic projection helpers (numpy, vectorised; degrees in and out)
# ----------------------------------------------------------------------------------------------------------

def _tan_deproject(ra0, dec0, xi, eta):
    """Sky position of tangent-plane offsets ``xi`` (towards +RA) and ``eta`` (north), degrees."""
    ra0, dec0, xi, eta = (np.radians(np.asarray(a, dtype=float)) for a in (ra0, dec0, xi, eta))
    den = np.cos(dec0) - eta * np.sin(dec0)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, den))
    ra = ra0 + np.arctan2(xi, den)
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _tan_project(ra0, dec0, ra, dec):
    """Tangent-plane offsets (degrees; xi towards +RA, eta north) of ``ra, dec`` about ``ra0, dec0``."""
    ra0, dec0, ra, dec = (np.radians(np.asarray(a, dtype=float)) for a in (ra0, dec0, ra, dec))
    dra = ra - ra0
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(dra)
    xi = np.cos(dec) * np.sin(dra) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(dra)) / cosc
    return np.degrees(xi), np.degrees(eta)


def _cd_matrix(scale_arcsec, rot_deg):
    """CD matrix (deg/px): east to the left (parity flip), then a rotation by ``rot_deg``."""
    s = scale_arcsec / 3600.0
    c, n = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    return s * np.array([[-c, n], [n, c]])


def _distort(k, x, y):
    """Camera distortion: focal-plane pixels (relative to the axis) to undistorted (U, V)."""
    f = 1.0 + k * (x * x + y * y)
    return x * f, y * f


def pixel_area_factor(k, x, y):
    """True pixel solid angle relative to ``pixel_scale**2`` at focal-plane coords ``x, y`` (px from the axis).

    This is the Jacobian determinant ``(1 + k r^2)(1 + 3 k r^2)`` of the radial distortion (the TAN
    projection's own area change, < 1e-5 over the field, is neglected).
    """
    kr2 = k * (np.asarray(x, dtype=float) ** 2 + np.asarray(y, dtype=float) ** 2)
    return (1.0 + kr2) * (1.0 + 3.0 * kr2)


# ----------------------------------------------------------------------------------------------------------
# design
# ----------------------------------------------------------------------------------------------------------

_DITHER = np.array([(0.0, 0.0), (1.0, 0.6), (-0.7, 1.0), (0.6, -0.9), (-1.0, -0.5), (0.2, 1.3)])


def _dither_offsets(n_filters, n_visits):
    """Dither pattern (units of ``dither_arcmin``), shape (n_filters, n_visits, 2), centred on zero."""
    out = np.empty((n_filters, n_visits, 2))
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for i in range(n_filters):
        phi = 2.0 * np.pi * i / max(n_filters, 1) * 0.37
        rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
        shift = 0.3 * np.array([np.cos(2 * np.pi * i / max(n_filters, 1)), np.sin(2 * np.pi * i / max(n_filters, 1))])
        for j in range(n_visits):
            if j < len(_DITHER):
                base = _DITHER[j]
            else:  # golden-angle spiral beyond the hand-made pattern
                base = 1.2 * np.sqrt(j / n_visits) * np.array([np.cos(j * golden), np.sin(j * golden)])
            out[i, j] = rot @ base + shift
    return out - out.reshape(-1, 2).mean(axis=0)


def survey_design(cfg=None) -> Design:
    """Build the deterministic survey design (visits, camera) from a ``sim`` config block.

    Parameters
    ----------
    cfg : dict, optional
        Partial ``sim`` block merged over :data:`DEFAULTS`.

    Returns
    -------
    Design
    """
    cfg = merge_config(cfg)
    seed = int(cfg["seed"])
    rng = np.random.default_rng([seed, _TAG_DESIGN])
    filters = list(cfg["filters"])
    nv = int(cfg["visits_per_filter"])

    # camera
    nx, ny, gap = int(cfg["ccd_nx"]), int(cfg["ccd_ny"]), int(cfg["ccd_gap_px"])
    ncol, nrow = int(cfg["ccd_cols"]), int(cfg["ccd_rows"])
    xc = ((ncol - 1) * (nx + gap) + nx - 1) / 2.0
    yc = ((nrow - 1) * (ny + gap) + ny - 1) / 2.0
    crng = np.random.default_rng([seed, _TAG_CAMERA])
    rows = []
    for r in range(nrow):
        for c in range(ncol):
            x_off, y_off = c * (nx + gap) - xc, r * (ny + gap) - yc
            rows.append(dict(ccd=len(rows) + 1, col=c, row=r, x_off=x_off, y_off=y_off,
                             crpix1=1.0 - x_off, crpix2=1.0 - y_off))
    ccds = pd.DataFrame(rows)
    n = len(ccds)
    ccds["gain"] = cfg["gain"] * crng.uniform(0.95, 1.05, n)
    ccds["saturation"] = cfg["saturation"] * crng.uniform(0.95, 1.05, n)
    ccds["dzp"] = crng.normal(0.0, cfg["ccd_zp_scatter"], n)

    # visits
    offsets = _dither_offsets(len(filters), nv) * cfg["dither_arcmin"] / 60.0  # degrees
    recs = []
    mjd = float(cfg["mjd_start"])
    for i, f in enumerate(filters):
        if i > 0:
            mjd += rng.uniform(0.5, 3.0)  # next filter: another night
        for j in range(nv):
            if j > 0:
                mjd += (cfg["exptime"] + rng.uniform(60.0, 600.0)) / 86400.0
            ra, dec = _tan_deproject(cfg["ra"], cfg["dec"], offsets[i, j, 0], offsets[i, j, 1])
            rot = rng.uniform(-0.05, 0.05)
            pe = rng.uniform(*cfg["pointing_error_arcsec"])
            pa = rng.uniform(0.0, 2.0 * np.pi)
            ra_h, dec_h = _tan_deproject(ra, dec, pe / 3600.0 * np.cos(pa), pe / 3600.0 * np.sin(pa))
            rot_err = rng.uniform(-1.0, 1.0) * cfg["rotation_error_deg"]
            zp = cfg["zeropoint"][f] + rng.normal(0.0, cfg["zp_jitter"])
            recs.append(dict(
                visit=int(cfg["first_visit"]) + len(recs), filter=f, mjd=mjd, epoch=float(julian_year(mjd)),
                exptime=float(cfg["exptime"]), seeing_arcsec=rng.uniform(*cfg["seeing_arcsec"]), zp=zp,
                sky_mag=float(cfg["sky_mag"][f]), ra=float(ra), dec=float(dec), rot_deg=rot,
                ra_hdr=float(ra_h), dec_hdr=float(dec_h), rot_hdr_deg=rot + rot_err,
                pointing_error_arcsec=pe, rotation_error_deg=rot_err,
                dither_x_arcmin=offsets[i, j, 0] * 60.0, dither_y_arcmin=offsets[i, j, 1] * 60.0))
    visits = pd.DataFrame(recs)
    return Design(cfg=cfg, visits=visits, ccds=ccds)


def _row(df, key, value, what):
    sel = df.index[df[key].to_numpy() == value]
    if len(sel) != 1:
        raise ValueError(f"no {what} {value!r} in the survey design (have {df[key].tolist()})")
    return df.loc[sel[0]]


def _fault(design, visit, ccd):
    for bad in design.cfg["ccd_bad"]:
        if int(bad["visit"]) == int(visit) and int(bad["ccd"]) == int(ccd):
            return bad["kind"]
    return ""


# ----------------------------------------------------------------------------------------------------------
# WCS
# ----------------------------------------------------------------------------------------------------------

def _sip_terms(k, inv_order=9):
    """Forward (A, B) and series-inverse (AP, BP) SIP coefficients of the radial cubic distortion."""
    a = {(3, 0): k, (1, 2): k}
    b = {(2, 1): k, (0, 3): k}
    ap, bp = {}, {}
    # rho = R sum_n (-1)^n C(3n, n)/(2n+1) k^n R^2n  (Lagrange inversion of R = rho (1 + k rho^2))
    for n_ in range(1, (inv_order - 1) // 2 + 1):
        an = (-1) ** n_ * comb(3 * n_, n_) / (2 * n_ + 1) * k ** n_
        for j in range(n_ + 1):
            c = an * comb(n_, j)
            ap[(2 * j + 1, 2 * (n_ - j))] = ap.get((2 * j + 1, 2 * (n_ - j)), 0.0) + c
            bp[(2 * j, 2 * (n_ - j) + 1)] = bp.get((2 * j, 2 * (n_ - j) + 1), 0.0) + c
    return a, b, ap, bp


def _wcs_cards(crpix, crval, cd):
    return [("WCSAXES", 2), ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CUNIT1", "deg"), ("CUNIT2", "deg"),
            ("CRPIX1", float(crpix[0])), ("CRPIX2", float(crpix[1])),
            ("CRVAL1", float(crval[0])), ("CRVAL2", float(crval[1])),
            ("CD1_1", float(cd[0, 0])), ("CD1_2", float(cd[0, 1])), ("CD2_1", float(cd[1, 0])),
            ("CD2_2", float(cd[1, 1])), ("RADESYS", "ICRS"), ("EQUINOX", 2000.0)]


def true_wcs_header(design, *, visit, ccd) -> fits.Header:
    """The true TAN-SIP WCS of one CCD as FITS header cards (see :func:`true_wcs`)."""
    v = _row(design.visits, "visit", visit, "visit")
    c = _row(design.ccds, "ccd", ccd, "ccd")
    cfg = design.cfg
    hdr = fits.Header(_wcs_cards((c.crpix1, c.crpix2), (v.ra, v.dec), _cd_matrix(cfg["pixel_scale"], v.rot_deg)))
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    a, b, ap, bp = _sip_terms(float(cfg["distortion_k"]))
    for name, terms, order in (("A", a, 3), ("B", b, 3), ("AP", ap, 9), ("BP", bp, 9)):
        hdr[f"{name}_ORDER"] = order
        for (p, q), val in sorted(terms.items()):
            hdr[f"{name}_{p}_{q}"] = val
    return hdr


def true_wcs(design, *, visit, ccd) -> WCS:
    """The exact WCS of CCD ``ccd`` in ``visit``: TAN-SIP about the optical axis at the true boresight.

    Pixel coordinates follow astropy (0-based for ``origin=0``); ``all_world2pix`` or the AP/BP inverse
    (accurate to < 1e-3 px) map sky to pixels.
    """
    return WCS(true_wcs_header(design, visit=visit, ccd=ccd), relax=True)


def _header_crval(design, vrows, crows):
    """CCD-centre sky positions the headers claim: the camera model at the header boresight/rotation."""
    cfg = design.cfg
    nx, ny = cfg["ccd_nx"], cfg["ccd_ny"]
    xc = np.asarray(crows.x_off, dtype=float) + (nx - 1) / 2.0
    yc = np.asarray(crows.y_off, dtype=float) + (ny - 1) / 2.0
    u, v = _distort(cfg["distortion_k"], xc, yc)
    th = np.radians(np.asarray(vrows.rot_hdr_deg, dtype=float))
    s = cfg["pixel_scale"] / 3600.0
    xi = s * (-np.cos(th) * u + np.sin(th) * v)
    eta = s * (np.sin(th) * u + np.cos(th) * v)
    return _tan_deproject(np.asarray(vrows.ra_hdr), np.asarray(vrows.dec_hdr), xi, eta)


def header_wcs_header(design, *, visit, ccd, faults=True) -> fits.Header:
    """The header WCS cards of one raw CCD (plain TAN, no SIP); empty for an injected ``no_wcs`` fault.

    CRPIX is the CCD centre, CRVAL where the camera model puts it for the (erroneous) header boresight,
    and CD the nominal scale with the header rotation. ``faults=False`` ignores ``ccd_bad``.
    """
    v = _row(design.visits, "visit", visit, "visit")
    c = _row(design.ccds, "ccd", ccd, "ccd")
    fault = _fault(design, visit, ccd) if faults else ""
    if fault == "no_wcs":
        return fits.Header()
    ra, dec = _header_crval(design, v, c)
    if fault == "offset_far":
        dec = dec + 1.0 if dec < 80 else dec - 1.0
    cfg = design.cfg
    crpix = ((cfg["ccd_nx"] + 1) / 2.0, (cfg["ccd_ny"] + 1) / 2.0)
    return fits.Header(_wcs_cards(crpix, (float(ra), float(dec)), _cd_matrix(cfg["pixel_scale"], v.rot_hdr_deg)))


def header_wcs(design, *, visit, ccd, faults=True):
    """The plain TAN WCS written in the raw CCD's header (what is known before calibration).

    Returns ``None`` when an injected ``no_wcs`` fault removes it (``faults=False`` ignores faults).
    """
    hdr = header_wcs_header(design, visit=visit, ccd=ccd, faults=faults)
    return WCS(hdr) if len(hdr) else None


def nominal_footprints(design) -> pd.DataFrame:
    """Sky corners of every (visit, ccd) from the header WCS, computed without building WCS objects.

    Columns ``visit, ccd, filter, mjd, exptime, ra_c0..ra_c3, dec_c0..dec_c3`` (corners at the outer pixel
    edges, counter-clockwise in pixel space from (0.5, 0.5) in FITS pixels) and ``fault`` (the injected
    fault kind or ""). Corners ignore injected faults so the workflow still schedules faulty CCDs.
    """
    cfg = design.cfg
    vis, cc = design.visits, design.ccds
    vi = np.repeat(np.arange(len(vis)), len(cc))
    ci = np.tile(np.arange(len(cc)), len(vis))
    vrows, crows = vis.iloc[vi], cc.iloc[ci]
    ra0, dec0 = _header_crval(design, vrows, crows)
    nx, ny = cfg["ccd_nx"], cfg["ccd_ny"]
    dx = np.array([-nx / 2.0, nx / 2.0, nx / 2.0, -nx / 2.0])
    dy = np.array([-ny / 2.0, -ny / 2.0, ny / 2.0, ny / 2.0])
    th = np.radians(np.asarray(vrows.rot_hdr_deg, dtype=float))[:, None]
    s = cfg["pixel_scale"] / 3600.0
    xi = s * (-np.cos(th) * dx + np.sin(th) * dy)
    eta = s * (np.sin(th) * dx + np.cos(th) * dy)
    ra, dec = _tan_deproject(ra0[:, None], dec0[:, None], xi, eta)
    out = pd.DataFrame({"visit": vrows.visit.to_numpy(), "ccd": crows.ccd.to_numpy(),
                        "filter": vrows["filter"].to_numpy(), "mjd": vrows.mjd.to_numpy(),
                        "exptime": vrows.exptime.to_numpy()})
    for i in range(4):
        out[f"ra_c{i}"] = ra[:, i]
    for i in range(4):
        out[f"dec_c{i}"] = dec[:, i]
    out["fault"] = [_fault(design, v, c) for v, c in zip(out.visit, out.ccd)]
    return out


# ----------------------------------------------------------------------------------------------------------
# sky
# ----------------------------------------------------------------------------------------------------------

def _true_corners(design):
    """True sky corners (tangent plane at the field centre, degrees) of every CCD of every visit."""
    cfg = design.cfg
    nx, ny, k = cfg["ccd_nx"], cfg["ccd_ny"], cfg["distortion_k"]
    x = (design.ccds.x_off.to_numpy()[:, None] + np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])).ravel()
    y = (design.ccds.y_off.to_numpy()[:, None] + np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])).ravel()
    u, v = _distort(k, x, y)
    xis, etas = [], []
    for vr in design.visits.itertuples():
        cd = _cd_matrix(cfg["pixel_scale"], vr.rot_deg)
        ra, dec = _tan_deproject(vr.ra, vr.dec, cd[0, 0] * u + cd[0, 1] * v, cd[1, 0] * u + cd[1, 1] * v)
        xi, eta = _tan_project(cfg["ra"], cfg["dec"], ra, dec)
        xis.append(xi)
        etas.append(eta)
    return np.concatenate(xis), np.concatenate(etas)


def _power_law_mags(rng, n, lo, hi, slope):
    """Magnitudes with dN/dm ~ 10**(slope m) between lo and hi."""
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.uniform(size=n) * (b - a)) / slope


def _colours_star(rng, n):
    """Colours relative to r on a stellar locus parametrised by g-r."""
    gr = np.where(rng.uniform(size=n) < 0.6, rng.normal(0.45, 0.12, n), rng.uniform(0.2, 1.4, n))
    gr = np.clip(gr, 0.2, 1.4)
    ri = 0.02 + 0.33 * gr + 4.0 * np.clip(gr - 1.1, 0.0, None) ** 2 + rng.normal(0.0, 0.03, n)
    iz = 0.02 + 0.5 * ri + rng.normal(0.0, 0.02, n)
    zy = 0.25 * ri + rng.normal(0.0, 0.02, n)
    ug = 0.8 + 1.4 * np.clip(gr - 0.2, 0.0, 1.0) + rng.normal(0.0, 0.08, n)
    return {"u": gr + ug, "g": gr, "r": 0.0, "i": -ri, "z": -ri - iz, "y": -ri - iz - zy}


def _colours_galaxy(rng, red):
    n = red.size
    gr = np.where(red, rng.normal(0.9, 0.08, n), rng.normal(0.45, 0.15, n))
    ri = np.where(red, rng.normal(0.42, 0.05, n), rng.normal(0.2, 0.08, n))
    iz = np.where(red, 0.25, 0.1) + rng.normal(0.0, 0.05, n)
    zy = np.where(red, 0.1, 0.05) + rng.normal(0.0, 0.04, n)
    ug = np.where(red, 1.8, 0.9) + rng.normal(0.0, 0.15, n)
    return {"u": gr + ug, "g": gr, "r": 0.0, "i": -ri, "z": -ri - iz, "y": -ri - iz - zy}


def survey_box(design, margin_arcmin=1.0):
    """Tangent-plane box (degrees about the field centre) holding every visit plus ``margin_arcmin``.

    Returns ``(xi_min, xi_max, eta_min, eta_max)``; xi points to +RA.
    """
    xi, eta = _true_corners(design)
    m = margin_arcmin / 60.0
    return xi.min() - m, xi.max() + m, eta.min() - m, eta.max() + m


def _empty_truth(filters):
    cols = {"id": np.int64, "ra": float, "dec": float, "pmra": float, "pmdec": float, "epoch": float,
            "is_star": bool}
    cols.update({f"mag_{f}": float for f in filters})
    cols.update({"profile": "U4", "hlr_arcsec": float, "q": float, "pa_deg": float})
    return Table({k: np.zeros(0, dtype=t) for k, t in cols.items()})


def make_sky(design):
    """Draw the true sky (stars and galaxies) and a Gaia-like reference catalog of its stars.

    Returns
    -------
    truth : astropy.table.Table
        ``id, ra, dec`` (deg at ``refcat_epoch``), ``pmra`` (mas/yr, includes cos dec), ``pmdec, epoch,
        is_star, mag_{f}`` (true AB per filter), ``profile`` ("star", "exp", "dev"), ``hlr_arcsec``
        (circularised half-light radius, sqrt(a b)), ``q`` (b/a), ``pa_deg`` (major axis, east of north).
    refcat : astropy.table.Table
        Stars with ``refcat_mag_bright < r < refcat_mag_limit``: ``source_id`` (= truth id), ``ra, dec``
        (deg at ``epoch``), ``ra_err, dec_err`` (mas, ra_err on the sky), ``pmra, pmdec, pmra_err,
        pmdec_err`` (mas/yr), ``epoch``, ``{f}_mag, {f}_magerr``; values are truth plus Gaussian errors.
    """
    cfg = design.cfg
    rng = np.random.default_rng([int(cfg["seed"]), _TAG_SKY])
    filters = list(cfg["filters"])
    x0, x1, y0, y1 = survey_box(design)
    area = (x1 - x0) * (y1 - y0)  # deg^2 (tangent plane; exact to < 1e-5 at this size)
    nstar = rng.poisson(cfg["star_density"] * area)
    ngal = rng.poisson(cfg["galaxy_density"] * area)
    n = nstar + ngal
    truth = _empty_truth(filters)
    if n == 0:
        return truth, _refcat(rng, truth, cfg, np.zeros(0))
    xi, eta = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    ra, dec = _tan_deproject(cfg["ra"], cfg["dec"], xi, eta)
    is_star = np.arange(n) < nstar
    mb, ml = cfg["mag_bright"], cfg["mag_limit"]
    rmag = np.concatenate([_power_law_mags(rng, nstar, mb, ml, 0.2), _power_law_mags(rng, ngal, mb, ml, 0.35)])
    pm = rng.normal(0.0, cfg["pm_sigma_mas_yr"], (2, n)) * is_star
    is_dev = ~is_star & (rng.uniform(size=n) < 0.3)
    cs, cg = _colours_star(rng, nstar), _colours_galaxy(rng, is_dev[nstar:])
    # fainter -> smaller: median hlr 1.2" at r=18 falling to 0.4" at r=24.5, 0.12 dex scatter
    med = np.interp(rmag, [18.0, 24.5], np.log10([1.2, 0.4]))
    hlr = np.where(is_star, 0.0, np.clip(10.0 ** (med + rng.normal(0.0, 0.12, n)), 0.3, 1.5))
    q = np.where(is_star, 1.0, rng.uniform(0.3, 1.0, n))
    pa = np.where(is_star, 0.0, rng.uniform(0.0, 180.0, n))
    cols = {"id": np.arange(1, n + 1, dtype=np.int64), "ra": ra, "dec": dec, "pmra": pm[0], "pmdec": pm[1],
            "epoch": np.full(n, float(cfg["refcat_epoch"])), "is_star": is_star}
    for f in filters:
        cols[f"mag_{f}"] = rmag + np.concatenate([np.broadcast_to(cs[f], nstar), np.broadcast_to(cg[f], ngal)])
    cols["profile"] = np.where(is_star, "star", np.where(is_dev, "dev", "exp"))
    cols.update({"hlr_arcsec": hlr, "q": q, "pa_deg": pa})
    truth = Table(cols)
    return truth, _refcat(rng, truth, cfg, rmag)


def _refcat(rng, truth, cfg, rmag):
    filters = list(cfg["filters"])
    sel = np.asarray(truth["is_star"], dtype=bool) & (rmag > cfg["refcat_mag_bright"]) & (rmag < cfg["refcat_mag_limit"])
    t = truth[sel]
    r = rmag[sel]
    m = len(t)
    lim = cfg["refcat_mag_limit"]
    pos_err = np.hypot(0.05, 1.0 * 10.0 ** (0.3 * (r - lim)))  # mas: ~0.065 at 16.5, 1.0 at 21
    pm_err = 1.3 * pos_err  # mas/yr
    dec = np.asarray(t["dec"], dtype=float)
    out = {"source_id": np.asarray(t["id"], dtype=np.int64),
           "ra": np.asarray(t["ra"], dtype=float) + rng.normal(0, 1, m) * pos_err / 3.6e6 / np.cos(np.radians(dec)),
           "dec": dec + rng.normal(0, 1, m) * pos_err / 3.6e6,
           "ra_err": pos_err, "dec_err": pos_err.copy(),
           "pmra": np.asarray(t["pmra"], dtype=float) + rng.normal(0, 1, m) * pm_err,
           "pmdec": np.asarray(t["pmdec"], dtype=float) + rng.normal(0, 1, m) * pm_err,
           "pmra_err": pm_err, "pmdec_err": pm_err.copy(),
           "epoch": np.full(m, float(cfg["refcat_epoch"]))}
    for f in filters:
        mag = np.asarray(t[f"mag_{f}"], dtype=float)
        err = np.hypot(0.003, 0.02 * 10.0 ** (0.4 * (mag - lim)))
        out[f"{f}_mag"] = mag + rng.normal(0, 1, m) * err
        out[f"{f}_magerr"] = err
    return Table(out)


def truth_at_epoch(truth, mjd) -> Table:
    """Copy of ``truth`` with ``ra, dec`` propagated by proper motion to ``mjd`` (and ``epoch`` set)."""
    out = Table(truth) if isinstance(truth, Table) else Table.from_pandas(truth)
    out = out.copy()
    ep = float(julian_year(mjd))
    dt = ep - np.asarray(out["epoch"], dtype=float)
    dec = np.asarray(out["dec"], dtype=float)
    out["ra"] = (np.asarray(out["ra"], dtype=float)
                 + np.asarray(out["pmra"], dtype=float) * dt / 3.6e6 / np.cos(np.radians(dec))) % 360.0
    out["dec"] = dec + np.asarray(out["pmdec"], dtype=float) * dt / 3.6e6
    out["epoch"] = np.full(len(out), ep)
    return out


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------

def ccd_defects(design, *, ccd):
    """The camera defects of one CCD (fixed for all visits): list of bad-column dicts.

    Each dict has ``x`` (0-based column), ``y0`` (first bad row, 0-based; bad up to the top),
    ``kind`` ("low": response times ``level``; "hot": ``level`` ADU added) and ``level``.
    """
    cfg = design.cfg
    rng = np.random.default_rng([int(cfg["seed"]), _TAG_CAMERA, int(ccd)])
    out = []
    for _ in range(int(cfg["bad_columns"])):
        kind = "low" if rng.uniform() < 0.5 else "hot"
        out.append(dict(x=int(rng.integers(8, cfg["ccd_nx"] - 8)), y0=int(rng.integers(0, cfg["ccd_ny"] // 2)),
                        kind=kind, level=float(rng.uniform(0.2, 0.6) if kind == "low" else rng.uniform(200, 2000))))
    return out


def pixel_area_map(design, *, ccd):
    """True pixel solid angle / ``pixel_scale**2`` for every pixel of a CCD, shape (ccd_ny, ccd_nx)."""
    c = _row(design.ccds, "ccd", ccd, "ccd")
    x = np.arange(design.cfg["ccd_nx"]) + c.x_off
    y = np.arange(design.cfg["ccd_ny"]) + c.y_off
    return pixel_area_factor(design.cfg["distortion_k"], x[None, :], y[:, None])


def _moffat_radius_px(fwhm_px, beta, flux):
    """Stamp half-size beyond which a Moffat of total ``flux`` has < min(1e-4, 0.5 ADU) left."""
    alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    eps = np.minimum(1e-4, 0.5 / np.maximum(flux, 1e-3))
    return alpha * np.sqrt(eps ** (1.0 / (1.0 - beta)) - 1.0)


def _objects_on_ccd(design, truth, v, c, wcs):
    """Truth rows (at the visit epoch) whose stamps touch the CCD, with pixel positions and stamp radii."""
    cfg = design.cfg
    nx, ny, scale = cfg["ccd_nx"], cfg["ccd_ny"], cfg["pixel_scale"]
    t = truth_at_epoch(truth, v.mjd)
    if len(t) == 0:
        return t, np.zeros(0), np.zeros(0), np.zeros(0)
    # cheap pre-selection in the (undistorted) focal plane
    xi, eta = _tan_project(v.ra, v.dec, np.asarray(t["ra"]), np.asarray(t["dec"]))
    inv = np.linalg.inv(_cd_matrix(scale, v.rot_deg))
    u = inv[0, 0] * xi + inv[0, 1] * eta - c.x_off
    w = inv[1, 0] * xi + inv[1, 1] * eta - c.y_off
    r_far = np.hypot(max(abs(c.x_off), abs(c.x_off + nx)), max(abs(c.y_off), abs(c.y_off + ny))) + 250.0
    big = 250.0 + cfg["distortion_k"] * r_far ** 3  # largest stamp + distortion displacement
    near = (u > -big) & (u < nx + big) & (w > -big) & (w < ny + big) & np.isfinite(u) & np.isfinite(w)
    t = t[near]
    if len(t) == 0:
        return t, np.zeros(0), np.zeros(0), np.zeros(0)
    x, y = wcs.all_world2pix(np.asarray(t["ra"]), np.asarray(t["dec"]), 1)  # FITS (1-based) pixels
    fwhm_px = v.seeing_arcsec / scale
    flux = 10.0 ** (-0.4 * (np.asarray(t[f"mag_{v['filter']}"], dtype=float) - (v.zp + c.dzp)))
    hlr_px = np.asarray(t["hlr_arcsec"], dtype=float) / scale / np.sqrt(np.asarray(t["q"], dtype=float))
    prof = np.asarray(t["profile"]).astype(str)
    rad = np.where(prof == "star", _moffat_radius_px(fwhm_px, cfg["psf_beta"], flux),
                   np.where(prof == "dev", 8.0, 6.0) * hlr_px + 4.0 * fwhm_px)
    rad = np.clip(np.ceil(rad), 4, 200)
    on = (x + rad > 0.5) & (x - rad < nx + 0.5) & (y + rad > 0.5) & (y - rad < ny + 0.5)
    return t[on], x[on], y[on], rad[on]


def _local_jacobians(wcs, x, y):
    """(n, 2, 2) Jacobians d(u, v)/d(x, y) in arcsec/px, u = west, v = north, at FITS pixels ``x, y``."""
    xs = np.concatenate([x + 1, x - 1, x, x])
    ys = np.concatenate([y, y, y + 1, y - 1])
    ra, dec = wcs.all_pix2world(xs, ys, 1)
    ra, dec = ra.reshape(4, -1), dec.reshape(4, -1)
    cosd = np.cos(np.radians(dec.mean(axis=0)))
    dra = (ra[[0, 2]] - ra[[1, 3]] + 180.0) % 360.0 - 180.0
    du = -dra * cosd * 3600.0 / 2.0  # [d/dx, d/dy]
    dv = (dec[[0, 2]] - dec[[1, 3]]) * 3600.0 / 2.0
    return np.stack([du.T, dv.T], axis=1)


def _draw_objects(design, truth, v, c, wcs):
    """Noiseless object image (ADU, float32, (ny, nx)) drawn with GalSim through the true WCS."""
    cfg = design.cfg
    nx, ny = cfg["ccd_nx"], cfg["ccd_ny"]
    img = galsim.ImageF(nx, ny, xmin=1, ymin=1)
    t, x, y, rad = _objects_on_ccd(design, truth, v, c, wcs)
    if len(t) == 0:
        return img.array, 0
    jac = _local_jacobians(wcs, x, y)
    flux = 10.0 ** (-0.4 * (np.asarray(t[f"mag_{v['filter']}"], dtype=float) - (v.zp + c.dzp)))
    psf = galsim.Moffat(beta=cfg["psf_beta"], fwhm=v.seeing_arcsec)
    prof = np.asarray(t["profile"]).astype(str)
    hlr, q, pa = (np.asarray(t[k], dtype=float) for k in ("hlr_arcsec", "q", "pa_deg"))
    for i in range(len(t)):
        if prof[i] == "star":
            obj = psf.withFlux(flux[i])
        else:
            if prof[i] == "exp":
                gal = galsim.Exponential(half_light_radius=hlr[i], flux=flux[i])
            else:
                gal = galsim.DeVaucouleurs(half_light_radius=hlr[i], flux=flux[i], trunc=8.0 * hlr[i])
            # galsim's beta is measured from +u (west) towards +v (north): beta = 90 deg + PA (east of north)
            gal = gal.shear(q=q[i], beta=(90.0 + pa[i]) * galsim.degrees)
            obj = galsim.Convolve(gal, psf)
        ix, iy, r = int(np.rint(x[i])), int(np.rint(y[i])), int(rad[i])
        b = galsim.BoundsI(ix - r, ix + r, iy - r, iy + r) & img.bounds
        if not b.isDefined():
            continue
        lw = galsim.JacobianWCS(*jac[i].ravel())
        # the Moffat is the effective (pixel-convolved) PSF: sample it, do not convolve with the pixel again
        obj.drawImage(image=img[b], wcs=lw, center=galsim.PositionD(x[i], y[i]), add_to_image=True,
                      method="no_pixel")
    return img.array, len(t)


def _add_cosmic_rays(rng, image, n_hits, gain):
    """Short 1-4 px tracks of 300-5000 e- per pixel (log-uniform), added in place; returns the hit count."""
    ny, nx = image.shape
    n = rng.poisson(n_hits) if n_hits > 0 else 0
    if n == 0:
        return 0
    x0, y0 = rng.uniform(0, nx, n), rng.uniform(0, ny, n)
    length = rng.integers(1, 5, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    hit = np.repeat(np.arange(n), length)
    step = np.arange(hit.size) - np.repeat(np.cumsum(length) - length, length)
    px = np.floor(x0[hit] + step * np.cos(phi[hit])).astype(int)
    py = np.floor(y0[hit] + step * np.sin(phi[hit])).astype(int)
    charge = np.exp(rng.uniform(np.log(300.0), np.log(5000.0), hit.size)) / gain
    ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    np.add.at(image, (py[ok], px[ok]), charge[ok])
    return int(n)


def render_ccd(design, truth, *, visit, ccd, noise=True):
    """Simulate one raw CCD.

    Parameters
    ----------
    design : Design
    truth : astropy.table.Table or pandas.DataFrame
        True sky as made by :func:`make_sky` (positions at ``epoch``; moved to the visit's epoch here).
    visit, ccd : int
    noise : bool
        False: return the expectation (sky + objects + bad columns, clipped at saturation) without Poisson
        and read noise or cosmic rays (for tests).

    Returns
    -------
    image : numpy.ndarray
        float32 ADU, shape (ccd_ny, ccd_nx).
    bpm : numpy.ndarray
        uint8, 1 on camera defects (bad columns).
    header : astropy.io.fits.Header
        Generic-camera header: perturbed plain TAN WCS (no SIP), FILTER, EXPTIME, MJD-OBS, DATE-OBS, EXPNUM,
        CCDNUM, GAIN, RDNOISE, SATURATE, TELESCOP, INSTRUME, BUNIT.
    truth_record : dict
        ``visit, ccd, filter, mjd, zp`` (true, this CCD), ``seeing_arcsec``, ``sky_adu`` (per pixel of nominal
        area ``pixel_scale**2``; each pixel gets ``sky_adu * pixel_area_map``), ``gain, read_noise,
        saturation, n_objects, n_cosmic_rays, bad_columns, fault`` and ``true_wcs`` (TAN-SIP header string).
    """
    cfg = design.cfg
    v = _row(design.visits, "visit", visit, "visit")
    c = _row(design.ccds, "ccd", ccd, "ccd")
    rng = np.random.default_rng([int(cfg["seed"]), _TAG_RENDER, int(visit), int(ccd)])
    wcs = true_wcs(design, visit=visit, ccd=ccd)
    zp = float(v.zp + c.dzp)
    gain, rn, sat = float(c.gain), float(cfg["read_noise"]), float(c.saturation)
    sky_adu = float(10.0 ** (-0.4 * (v.sky_mag - zp)) * cfg["pixel_scale"] ** 2)

    objects, n_obj = _draw_objects(design, truth, v, c, wcs)
    model = pixel_area_map(design, ccd=ccd)
    model *= sky_adu
    model += np.maximum(objects, 0.0)
    bpm = np.zeros(model.shape, dtype=np.uint8)
    defects = ccd_defects(design, ccd=ccd)
    for d in defects:
        if d["kind"] == "low":
            model[d["y0"]:, d["x"]] *= d["level"]
        else:
            model[d["y0"]:, d["x"]] += d["level"]
        bpm[d["y0"]:, d["x"]] = 1
    n_cr = 0
    if noise:
        image = rng.poisson(model * gain).astype(np.float64)
        image += rng.normal(0.0, rn, model.shape)
        image /= gain
        n_cr = _add_cosmic_rays(rng, image, cfg["cosmic_rays"], gain)
    else:
        image = model
    image = np.minimum(image, sat).astype(np.float32)

    fault = _fault(design, visit, ccd)
    if fault == "nan":
        image[:] = np.nan
    elif fault == "zeros":
        image[:] = 0.0
    elif fault == "saturated":  # every pixel at the CCD's saturation level (overexposed, e.g. twilight)
        image[:] = sat

    hdr = fits.Header()
    hdr.extend(header_wcs_header(design, visit=visit, ccd=ccd).cards)
    mjd = float(v.mjd)
    for key, val, com in [
            ("FILTER", v["filter"], "filter"), ("EXPTIME", float(v.exptime), "[s] exposure time"),
            ("MJD-OBS", mjd, "start of exposure"), ("DATE-OBS", Time(mjd, format="mjd", scale="utc").isot, "UTC"),
            ("EXPNUM", int(visit), "visit id"), ("CCDNUM", int(ccd), "CCD id"), ("GAIN", gain, "[e-/ADU]"),
            ("RDNOISE", rn, "[e-] read noise"), ("SATURATE", sat, "[ADU] saturation level"),
            ("TELESCOP", "SKYSIM", ""), ("INSTRUME", "SKYCAM", ""), ("BUNIT", "ADU", "")]:
        hdr[key] = (val, com)
    record = dict(visit=int(visit), ccd=int(ccd), filter=str(v["filter"]), mjd=mjd, zp=zp,
                  seeing_arcsec=float(v.seeing_arcsec), sky_adu=sky_adu, gain=gain, read_noise=rn, saturation=sat,
                  n_objects=int(n_obj), n_cosmic_rays=n_cr, bad_columns=defects, fault=fault,
                  true_wcs=wcs.to_header(relax=True).tostring())
    return image, bpm, hdr, record
