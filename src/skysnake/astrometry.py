"""Astrometric calibration of one CCD: reference-catalog epoch propagation, matching, TAN-SIP fit.

All fitting happens in gnomonic (tangent-plane) coordinates ``(xi, eta)`` in arcsec about a
fixed tangent point, where a TAN-SIP WCS is exactly a polynomial in the pixel offsets from
CRPIX::

    (xi, eta) = CD @ (u + f(u, v), v + g(u, v)),   f = sum A_pq u^p v^q  (2 <= p+q <= order)

so the fit is linear least squares; the tangent point is then moved to the sky position of
CRPIX (the CCD centre) and the fit repeated until the constant term vanishes.

Matching starts from the header WCS, which may be off by ~10" plus a small rotation and miss
the optical distortion: the offset is found by voting on all source-reference pair offsets
within a search radius (2-D histogram peak), then matches are refined with decreasing radius,
refitting each time (affine first, then the full SIP order) with iterative sigma clipping.

Pixel coordinates are 0-based (``x = 0`` is the centre of the first pixel), as in sep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS, Sip
from scipy import ndimage
from scipy.spatial import cKDTree

from .errors import DataError

__all__ = [
    "julian_year", "propagate_refcat", "gnomonic", "inverse_gnomonic", "find_offset", "match_nearest",
    "fit_tan_sip", "make_tan_sip_wcs", "choose_model", "AstrometryResult", "fit_astrometry", "wcs_separation_rms",
    "sip_world2pix",
]


def julian_year(mjd):
    """Julian epoch (e.g. 2024.5) of a Modified Julian Date."""
    return 2000.0 + (np.asarray(mjd, dtype=float) - 51544.5) / 365.25


def gnomonic(ra, dec, ra0, dec0):
    """Gnomonic projection of ``(ra, dec)`` (deg) about ``(ra0, dec0)``: standard coordinates in deg.

    ``xi`` increases towards east (increasing RA), ``eta`` towards north, matching the
    intermediate world coordinates of a FITS ``TAN`` projection.
    """
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = np.radians(ra0), np.radians(dec0)
    cosd, sind = np.cos(dec), np.sin(dec)
    cosd0, sind0 = np.cos(dec0), np.sin(dec0)
    dra = ra - ra0
    cosc = sind0 * sind + cosd0 * cosd * np.cos(dra)
    xi = cosd * np.sin(dra) / cosc
    eta = (cosd0 * sind - sind0 * cosd * np.cos(dra)) / cosc
    return np.degrees(xi), np.degrees(eta)


def inverse_gnomonic(xi, eta, ra0, dec0):
    """Inverse of :func:`gnomonic`: ``(ra, dec)`` in deg (RA in [0, 360))."""
    xi, eta = np.radians(xi), np.radians(eta)
    ra0, dec0 = np.radians(ra0), np.radians(dec0)
    cosd0, sind0 = np.cos(dec0), np.sin(dec0)
    denom = cosd0 - eta * sind0
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(sind0 + eta * cosd0, np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _column(refcat, name):
    if name in getattr(refcat, "columns", getattr(refcat, "colnames", [])):
        return np.asarray(refcat[name], dtype=float)
    return None


def propagate_refcat(refcat, *, mjd):
    """Reference positions at the epoch of ``mjd``, applying proper motions.

    Parameters
    ----------
    refcat : DataFrame or astropy Table
        Columns ``ra, dec`` (deg at ``epoch``), optional ``pmra`` (mas/yr, includes cos dec),
        ``pmdec`` (mas/yr) and ``epoch`` (Julian year, scalar column); missing or NaN proper
        motions count as zero.
    mjd : float
        Observation date.

    Returns
    -------
    ra, dec : ndarray
        Degrees. The motion ``(pmra, pmdec) * dt`` is applied as a tangent-plane displacement
        about each star (exact for any direction, no small-angle issue near the poles).
    """
    ra = _column(refcat, "ra")
    dec = _column(refcat, "dec")
    if ra is None or dec is None:
        raise DataError("reference catalog has no ra/dec columns; check the refcat file", code="bad_refcat")
    n = len(ra)
    pmra = _column(refcat, "pmra")
    pmdec = _column(refcat, "pmdec")
    epoch = _column(refcat, "epoch")
    pmra = np.zeros(n) if pmra is None else np.nan_to_num(pmra, nan=0.0)
    pmdec = np.zeros(n) if pmdec is None else np.nan_to_num(pmdec, nan=0.0)
    if epoch is None:
        epoch = np.full(n, 2000.0) if not (np.any(pmra) or np.any(pmdec)) else None
        if epoch is None:
            raise DataError("reference catalog has proper motions but no epoch column", code="bad_refcat")
    dt = julian_year(mjd) - np.nan_to_num(epoch, nan=float(julian_year(mjd)))
    xi = pmra * dt / 3.6e6
    eta = pmdec * dt / 3.6e6
    moving = (xi != 0) | (eta != 0)
    ra_out, dec_out = ra.copy(), dec.copy()
    if moving.any():
        ra_out[moving], dec_out[moving] = inverse_gnomonic(xi[moving], eta[moving], ra[moving], dec[moving])
    return ra_out, dec_out


# --------------------------------------------------------------------------- polynomial model


def _exponents(order, min_order=0):
    return [(p, t - p) for t in range(min_order, order + 1) for p in range(t, -1, -1)]


def _design(u, v, exps):
    return np.column_stack([u**p * v**q for p, q in exps])


@dataclass
class _PolyModel:
    """pixel (0-based) -> tangent-plane (arcsec) polynomial about ``(cx, cy)``, scaled by ``s``."""

    cx: float
    cy: float
    s: float
    exps: list
    cxi: np.ndarray
    ceta: np.ndarray

    def __call__(self, x, y):
        d = _design((np.asarray(x) - self.cx) / self.s, (np.asarray(y) - self.cy) / self.s, self.exps)
        return d @ self.cxi, d @ self.ceta


def _fit_poly(x, y, xi, eta, w, *, cx, cy, s, order):
    exps = _exponents(order)
    d = _design((x - cx) / s, (y - cy) / s, exps)
    sw = np.sqrt(w)[:, None]
    c = np.linalg.lstsq(d * sw, np.column_stack([xi, eta]) * sw, rcond=None)[0]
    return _PolyModel(cx, cy, s, exps, c[:, 0], c[:, 1])


# radial model: monomial -> coefficient of (K, P, Q) in the U (first) and V (second) equations
_RADIAL_U = {(3, 0): (1, 0, 0), (1, 2): (1, 0, 0), (2, 0): (0, -3, 0), (0, 2): (0, -1, 0), (1, 1): (0, 0, -2)}
_RADIAL_V = {(2, 1): (1, 0, 0), (0, 3): (1, 0, 0), (1, 1): (0, -2, 0), (2, 0): (0, 0, -1), (0, 2): (0, 0, -3)}


def _fit_radial(x, y, xi, eta, w, *, cx, cy, s):
    """Affine + cubic radial distortion about an unknown centre (9 parameters, linear).

    In undistorted pixel coordinates ``(U, V) = CD^-1 (xi, eta)`` (CD from an affine fit) a
    distortion ``k (u - u0) |u - u0|^2`` is, up to affine terms, ``K u r^2`` plus the quadratic
    terms ``-P (3u^2 + v^2) - 2Q uv`` (U) and ``-2P uv - Q (u^2 + 3v^2)`` (V) with ``P = K u0``,
    ``Q = K v0``: linear in ``(K, P, Q)``. Exact for a radial cubic camera distortion viewed
    through a similarity CD; needs far fewer stars than a general cubic.
    """
    aff = _fit_poly(x, y, xi, eta, w, cx=cx, cy=cy, s=s, order=1)
    cd = np.array([[aff.cxi[1], aff.cxi[2]], [aff.ceta[1], aff.ceta[2]]])  # arcsec per normalised unit
    cdinv = np.linalg.inv(cd)
    uv_t = cdinv @ np.vstack([xi - aff.cxi[0], eta - aff.ceta[0]])  # normalised undistorted coordinates
    u, v = (x - cx) / s, (y - cy) / s
    n = len(x)
    zero, one = np.zeros(n), np.ones(n)
    r2 = u * u + v * v
    # columns: aU0 aU1 aU2 aV0 aV1 aV2 K P Q
    du = np.column_stack([one, u, v, zero, zero, zero, u * r2, -(3 * u * u + v * v), -2 * u * v])
    dv = np.column_stack([zero, zero, zero, one, u, v, v * r2, -2 * u * v, -(u * u + 3 * v * v)])
    d = np.vstack([du, dv])
    # weights: the undistorted frame is ~isotropic, so each star's arcsec weight applies to U and V
    sw = np.sqrt(np.concatenate([w, w]))
    p = np.linalg.lstsq(d * sw[:, None], np.concatenate(uv_t) * sw, rcond=None)[0]
    cu = {(0, 0): p[0], (1, 0): p[1], (0, 1): p[2]}
    cv = {(0, 0): p[3], (1, 0): p[4], (0, 1): p[5]}
    for pq, (a, b, c) in _RADIAL_U.items():
        cu[pq] = cu.get(pq, 0.0) + a * p[6] + b * p[7] + c * p[8]
    for pq, (a, b, c) in _RADIAL_V.items():
        cv[pq] = cv.get(pq, 0.0) + a * p[6] + b * p[7] + c * p[8]
    exps = _exponents(3)
    cuv = np.array([[cu.get(pq, 0.0) for pq in exps], [cv.get(pq, 0.0) for pq in exps]])
    cxe = cd @ cuv
    cxe[0, 0] += aff.cxi[0]
    cxe[1, 0] += aff.ceta[0]
    return _PolyModel(cx, cy, s, exps, cxe[0], cxe[1])


def _fit_model(x, y, xi, eta, w, *, cx, cy, s, model):
    if model == "radial":
        return _fit_radial(x, y, xi, eta, w, cx=cx, cy=cy, s=s)
    return _fit_poly(x, y, xi, eta, w, cx=cx, cy=cy, s=s, order=int(model))


def _n_params(model):
    return 9 if model == "radial" else (int(model) + 1) * (int(model) + 2)


def choose_model(n_stars, *, order=3, radial_min_stars=12, factor=2.0):
    """Distortion model affordable with ``n_stars`` matches.

    The full polynomial of ``order`` needs ``factor`` x its ``(order+1)(order+2)`` parameters
    (20 stars for order 3); with fewer stars (but at least ``radial_min_stars``) the 9-parameter
    radial model (affine + cubic radial distortion about a free centre); otherwise the highest
    polynomial order that fits (affine from 6 stars).

    Returns
    -------
    int or "radial"
    """
    def need(m):  # _n_params counts both axes
        return factor * _n_params(m) / 2

    if order <= 1 or n_stars >= need(order):
        return int(order)
    if order >= 3 and radial_min_stars and n_stars >= radial_min_stars:
        return "radial"
    for o in range(min(int(order) - 1, 2), 0, -1):
        if n_stars >= need(o):
            return o
    return 1


def _fit_clipped(x, y, xi, eta, sig, *, cx, cy, s, order, clip, niter, scale_floor=1.0):
    """Weighted fit (polynomial ``order`` or ``"radial"``) with iterative clipping of normalised residuals."""
    w = 1.0 / sig**2
    used = np.ones(len(x), bool)
    model = None
    for _ in range(max(1, niter)):
        model = _fit_model(x[used], y[used], xi[used], eta[used], w[used], cx=cx, cy=cy, s=s, model=order)
        mxi, meta = model(x, y)
        z = np.hypot(mxi - xi, meta - eta) / sig
        # for a 2-D Gaussian, |z| has median sqrt(2 ln 2) = 1.177; never below the quoted errors
        # (a fit with few degrees of freedom shrinks the residuals and would clip good stars)
        scale = max(np.median(z[used]) / 1.1774, scale_floor, 1e-12)
        new = z <= clip * scale
        if new.sum() < _n_params(order) / 2 + 2 or np.array_equal(new, used):
            break
        used = new
    return model, used


def make_tan_sip_wcs(*, crpix, crval, cd, a=None, b=None, ap=None, bp=None, shape=None):
    """Build an astropy TAN(-SIP) WCS.

    Parameters
    ----------
    crpix : (float, float)
        Reference pixel, FITS 1-based convention.
    crval : (float, float)
        Tangent point (deg).
    cd : (2, 2) array
        CD matrix (deg/pixel).
    a, b, ap, bp : ndarray, optional
        SIP coefficient matrices (``a[p, q]`` multiplies ``u^p v^q``); without ``a`` a plain TAN
        WCS is returned.
    shape : (int, int), optional
        Image shape ``(ny, nx)``, stored as ``pixel_shape``.
    """
    w = WCS(naxis=2)
    sip = a is not None
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = list(crpix)
    w.wcs.crval = list(crval)
    w.wcs.cd = np.asarray(cd, dtype=float)
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    if sip:
        w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    if shape is not None:
        w.pixel_shape = (int(shape[1]), int(shape[0]))
    w.wcs.set()
    return w


def _fit_inverse_sip(a, b, *, order, inv_order, shape, cx, cy, margin=0.05, ngrid=25):
    """Fit inverse SIP polynomials AP, BP on a grid covering the image (plus a margin)."""
    ny, nx = shape
    gx = np.linspace(-margin * nx, (1 + margin) * nx - 1, ngrid) - cx
    gy = np.linspace(-margin * ny, (1 + margin) * ny - 1, 2 * ngrid if ny > 1.5 * nx else ngrid) - cy
    u, v = (g.ravel() for g in np.meshgrid(gx, gy))
    exps_f = _exponents(order, 2)
    f = sum(a[p, q] * u**p * v**q for p, q in exps_f)
    g = sum(b[p, q] * u**p * v**q for p, q in exps_f)
    uu, vv = u + f, v + g
    s = max(nx, ny) / 2.0
    exps = _exponents(inv_order)
    d = _design(uu / s, vv / s, exps)
    c = np.linalg.lstsq(d, np.column_stack([u - uu, v - vv]), rcond=None)[0]
    cap, cbp = c[:, 0], c[:, 1]
    ap = np.zeros((inv_order + 1, inv_order + 1))
    bp = np.zeros((inv_order + 1, inv_order + 1))
    for (p, q), ca, cb in zip(exps, cap, cbp):
        ap[p, q] = ca / s ** (p + q)
        bp[p, q] = cb / s ** (p + q)
    resid = np.hypot(d @ cap - (u - uu), d @ cbp - (v - vv))
    return ap, bp, float(np.max(resid))


def fit_tan_sip(x, y, ra, dec, *, shape, order=3, inv_order=None, sigma=None, crval0=None, clip=3.0, niter=5):
    """Fit a TAN-SIP WCS to matched pixel / sky positions.

    CRPIX is the image centre; CRVAL is found by moving the tangent point to the fitted sky
    position of CRPIX (the fit is repeated until the polynomial's constant term is < 1e-6").

    Parameters
    ----------
    x, y : array_like
        0-based pixel positions.
    ra, dec : array_like
        Sky positions (deg).
    shape : (int, int)
        Image shape ``(ny, nx)``.
    order : int or "radial", optional
        SIP (polynomial) order; 1 gives a plain TAN WCS; ``"radial"`` fits the 9-parameter
        radial-distortion model (:func:`choose_model`), written as an order-3 SIP.
    inv_order : int, optional
        Order of the inverse polynomials AP/BP (default ``order + 1``).
    sigma : array_like, optional
        Per-star position errors (arcsec) for the weights and the clipping (which never clips
        within ``clip`` x sigma); default: equal weights, clipping on the robust scatter alone.
    crval0 : (float, float), optional
        Starting tangent point (default: mean position).
    clip, niter : float, int, optional
        Sigma clipping of the normalised residuals and number of iterations.

    Returns
    -------
    wcs : astropy.wcs.WCS
    info : dict
        ``used`` (bool mask), ``resid_xi``, ``resid_eta`` (arcsec, all input stars),
        ``rms`` (2-D rms of used stars, arcsec), ``inv_maxerr`` (max inverse-SIP error, px).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    ny, nx = shape
    sig = np.ones(len(x)) if sigma is None else np.asarray(sigma, float)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    s = max(nx, ny) / 2.0
    if crval0 is None:
        v = np.column_stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                             np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))]).mean(0)
        crval0 = (np.degrees(np.arctan2(v[1], v[0])) % 360, np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1]))))
    crval = tuple(float(c) for c in crval0)
    used = None
    for _ in range(6):
        xi, eta = gnomonic(ra, dec, *crval)
        xi, eta = xi * 3600.0, eta * 3600.0
        model, used = _fit_clipped(x, y, xi, eta, sig, cx=cx, cy=cy, s=s, order=order, clip=clip, niter=niter,
                                   scale_floor=0.0 if sigma is None else 1.0)
        c0 = np.array([model.cxi[0], model.ceta[0]])
        crval = inverse_gnomonic(c0[0] / 3600.0, c0[1] / 3600.0, *crval)
        crval = (float(crval[0]), float(crval[1]))
        if np.hypot(*c0) < 1e-6:
            break
    # final model about the converged tangent point (constant term ~0 and dropped)
    xi, eta = gnomonic(ra, dec, *crval)
    xi, eta = xi * 3600.0, eta * 3600.0
    model = _fit_model(x[used], y[used], xi[used], eta[used], 1.0 / sig[used] ** 2, cx=cx, cy=cy, s=s, model=order)
    coef = {pq: (cxi / s ** sum(pq) / 3600.0, ceta / s ** sum(pq) / 3600.0)
            for pq, cxi, ceta in zip(model.exps, model.cxi, model.ceta)}
    order = 3 if order == "radial" else int(order)
    cd = np.array([[coef[(1, 0)][0], coef[(0, 1)][0]], [coef[(1, 0)][1], coef[(0, 1)][1]]])
    crpix = (cx + 1.0, cy + 1.0)
    if order >= 2:
        cdinv = np.linalg.inv(cd)
        a = np.zeros((order + 1, order + 1))
        b = np.zeros((order + 1, order + 1))
        for (p, q), (hxi, heta) in coef.items():
            if p + q >= 2:
                a[p, q], b[p, q] = cdinv @ np.array([hxi, heta])
        inv_order = order + 1 if inv_order is None else inv_order
        ap, bp, inv_err = _fit_inverse_sip(a, b, order=order, inv_order=inv_order, shape=shape, cx=cx, cy=cy)
        wcs = make_tan_sip_wcs(crpix=crpix, crval=crval, cd=cd, a=a, b=b, ap=ap, bp=bp, shape=shape)
    else:
        wcs = make_tan_sip_wcs(crpix=crpix, crval=crval, cd=cd, shape=shape)
        inv_err = 0.0
    mxi, meta = model(x, y)
    rxi, reta = mxi - xi, meta - eta
    rms = float(np.sqrt(np.mean(rxi[used] ** 2 + reta[used] ** 2))) if used.any() else np.nan
    return wcs, {"used": used, "resid_xi": rxi, "resid_eta": reta, "rms": rms, "inv_maxerr": inv_err}


# --------------------------------------------------------------------------- matching


def find_offset(src_xy, ref_xy, *, search_radius, bin_size=1.0, min_peak=5):
    """Offset ``src - ref`` (same units as the inputs) by voting on all pair offsets.

    Every pair closer than ``search_radius`` votes in a 2-D histogram with ``bin_size`` bins,
    smoothed over 3x3 bins; the peak is refined as the median offset of the pairs within
    ``1.5 bin_size`` of it (twice).

    Returns
    -------
    offset : ndarray (2,) or None
        None if the peak is not significant.
    info : dict
        ``npeak`` (votes in the peak), ``nbackground`` (expected random votes in a peak cell),
        ``npairs``.
    """
    src_xy, ref_xy = np.asarray(src_xy, float), np.asarray(ref_xy, float)
    info = {"npeak": 0, "nbackground": 0.0, "npairs": 0}
    if len(src_xy) == 0 or len(ref_xy) == 0:
        return None, info
    pairs = cKDTree(ref_xy).sparse_distance_matrix(cKDTree(src_xy), search_radius, output_type="coo_matrix")
    if pairs.nnz == 0:
        return None, info
    d = src_xy[pairs.col] - ref_xy[pairs.row]
    nb = int(np.ceil(search_radius / bin_size))
    edges = np.arange(-nb, nb + 1) * bin_size
    h, _, _ = np.histogram2d(d[:, 0], d[:, 1], bins=[edges, edges])
    hs = ndimage.uniform_filter(h, size=3, mode="constant") * 9.0
    i, j = np.unravel_index(np.argmax(hs), hs.shape)
    peak = np.array([(edges[i] + edges[i + 1]) / 2, (edges[j] + edges[j + 1]) / 2])
    for _ in range(2):
        near = np.all(np.abs(d - peak) < 1.5 * bin_size, axis=1)
        if near.any():
            peak = np.median(d[near], axis=0)
    npeak = int(np.count_nonzero(np.all(np.abs(d - peak) < 1.5 * bin_size, axis=1)))
    # random pairs are spread over the search disk: expected count in a 3x3-bin cell
    nbkg = (pairs.nnz - npeak) * (3 * bin_size) ** 2 / (np.pi * search_radius**2)
    info = {"npeak": npeak, "nbackground": float(nbkg), "npairs": int(pairs.nnz)}
    # significance: Poisson excess over the random pairs, allowing for the ~(2 R / bin)^2 cells searched
    if npeak < min_peak or npeak < nbkg + 4.0 * np.sqrt(nbkg) + 3.0:
        return None, info
    return peak, info


def match_nearest(a_xy, b_xy, *, radius):
    """Mutual nearest-neighbour matches closer than ``radius``: index arrays ``(ia, ib)``."""
    a_xy, b_xy = np.asarray(a_xy, float), np.asarray(b_xy, float)
    if len(a_xy) == 0 or len(b_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dab, iab = cKDTree(b_xy).query(a_xy, distance_upper_bound=radius)
    dba, iba = cKDTree(a_xy).query(b_xy, distance_upper_bound=radius)
    ia = np.flatnonzero(np.isfinite(dab))
    ib = iab[ia]
    mutual = iba[ib] == ia
    return ia[mutual], ib[mutual]


@dataclass
class AstrometryResult:
    """Fitted WCS and the matched stars.

    ``src_index`` / ``ref_index`` index the input source / reference arrays for every final
    match; ``used`` marks matches kept by the clipping; residuals are fitted minus reference in
    arcsec along RA (``xi``) and Dec (``eta``).
    """

    wcs: WCS
    src_index: np.ndarray
    ref_index: np.ndarray
    used: np.ndarray
    resid_xi: np.ndarray
    resid_eta: np.ndarray
    rms: float
    n_used: int
    offset: tuple
    match_radius: float
    info: dict = field(default_factory=dict)


def fit_astrometry(x, y, ref_ra, ref_dec, *, header_wcs, shape, src_err=None, src_rank=None, ref_err=0.001,
                   search_radius=20.0, vote_bin=1.0, match_radii=(3.0, 1.5, 0.75), final_radius=None, order=3,
                   inv_order=None, clip=3.0, niter=5, min_matches=10, max_vote_sources=None, floor=0.002,
                   radial_min_stars=12):
    """Match sources to reference stars and fit a TAN-SIP WCS.

    Parameters
    ----------
    x, y : array_like
        0-based pixel positions of usable sources (e.g. windowed centroids of clean detections).
    ref_ra, ref_dec : array_like
        Reference positions (deg) at the observation epoch (:func:`propagate_refcat`).
    header_wcs : astropy.wcs.WCS
        Approximate WCS of the CCD.
    shape : (int, int)
        Image shape ``(ny, nx)``.
    src_err : array_like, optional
        Source position errors (arcsec); default 0.01".
    src_rank : array_like, optional
        Brightness of the sources (e.g. flux); only the brightest ``max_vote_sources`` vote for
        the offset and take part in the first, affine match.
    ref_err : float or array_like, optional
        Reference position errors (arcsec).
    search_radius : float, optional
        Largest header-WCS error searched for (arcsec).
    vote_bin : float, optional
        Bin size of the offset histogram (arcsec).
    match_radii : sequence of float, optional
        Match radii (arcsec) of the refinement stages; the first stage fits an affine
        transformation, later ones the full order.
    final_radius : float, optional
        Match radius of the final fit (default: ``clip(6 x rms, 0.5, last match radius)``).
    order, inv_order : int, optional
        SIP order and inverse order. With fewer matches than an order needs, the model degrades
        (:func:`choose_model`): order 3 needs 20 stars, the radial model ``radial_min_stars``.
    clip, niter : float, int, optional
        Sigma clipping of the fits.
    min_matches : int, optional
        Minimum number of matched stars.
    radial_min_stars : int, optional
        Fewest matches for the radial distortion model (0 disables it).
    max_vote_sources : int, optional
        Default ``max(3 * n_ref_on_ccd, 100)``.
    floor : float, optional
        Systematic floor added in quadrature to the position errors (arcsec).

    Returns
    -------
    AstrometryResult

    Raises
    ------
    DataError
        ``few_refstars`` if fewer than ``min_matches`` reference stars fall on the CCD or are
        matched, ``no_match`` if no consistent offset is found.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ref_ra, ref_dec = np.asarray(ref_ra, float), np.asarray(ref_dec, float)
    ny, nx = shape
    nsrc = len(x)
    src_err = np.full(nsrc, 0.01) if src_err is None else np.asarray(src_err, float)
    ref_err = np.broadcast_to(np.asarray(ref_err, float), ref_ra.shape)
    # tangent point: header sky position of the CCD centre
    t_ra, t_dec = (float(np.ravel(v)[0]) for v in header_wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0))
    ok_ref = np.isfinite(ref_ra) & np.isfinite(ref_dec)
    rxi, reta = gnomonic(ref_ra, ref_dec, t_ra, t_dec)
    ref_t = np.column_stack([rxi, reta]) * 3600.0
    ok_ref &= np.all(np.isfinite(ref_t), axis=1) & (np.abs(np.degrees(np.arccos(np.clip(
        np.sin(np.radians(ref_dec)) * np.sin(np.radians(t_dec)) + np.cos(np.radians(ref_dec))
        * np.cos(np.radians(t_dec)) * np.cos(np.radians(ref_ra - t_ra)), -1, 1)))) < 45.0)
    # header model: pixel -> tangent plane (arcsec)
    sra, sdec = header_wcs.all_pix2world(x, y, 0)
    sxi, seta = gnomonic(sra, sdec, t_ra, t_dec)
    src_t = np.column_stack([sxi, seta]) * 3600.0
    # reference stars on (or near) the CCD according to the header WCS
    cpx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cpy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    cra, cdec = header_wcs.all_pix2world(cpx, cpy, 0)
    cxi, ceta = (c * 3600.0 for c in gnomonic(cra, cdec, t_ra, t_dec))
    on_ccd = ok_ref & _in_polygon(ref_t, np.column_stack([cxi, ceta]), margin=search_radius)
    strictly_on = ok_ref & _in_polygon(ref_t, np.column_stack([cxi, ceta]), margin=0.0)
    n_on = int(strictly_on.sum())
    if n_on < min_matches:
        raise DataError(f"only {n_on} reference stars fall on the CCD according to the header WCS (need "
                        f"{min_matches}); check the reference catalog covers this pointing "
                        f"(RA {t_ra:.4f}, Dec {t_dec:.4f}) and that the header WCS is roughly right",
                        code="few_refstars")
    ref_sel = np.flatnonzero(on_ccd)
    rank = np.arange(nsrc)[::-1] if src_rank is None else np.asarray(src_rank, float)
    nvote = max_vote_sources or max(3 * len(ref_sel), 100)
    bright = np.argsort(-np.nan_to_num(rank, nan=-np.inf))[:nvote]
    min_peak = max(5, min(min_matches, n_on) // 2)
    offset, vinfo = find_offset(src_t[bright], ref_t[ref_sel], search_radius=search_radius, bin_size=vote_bin,
                                min_peak=min_peak)
    if offset is None:  # sparse fields: a coarser histogram collects a peak smeared by distortion/rotation
        offset, vinfo = find_offset(src_t[bright], ref_t[ref_sel], search_radius=search_radius,
                                    bin_size=2.0 * vote_bin, min_peak=min_peak)
    if offset is None:
        raise DataError(f"no consistent offset between {len(bright)} detected sources and {len(ref_sel)} reference "
                        f"stars within a search radius of {search_radius:g} arcsec (best peak {vinfo['npeak']} "
                        f"pairs vs {vinfo['nbackground']:.1f} expected at random); check the header WCS "
                        "(pointing/rotation), that the refcat covers this field, or increase the search radius",
                        code="no_match")
    sig_all = np.sqrt(src_err**2 + floor**2)

    def pick(n):
        return choose_model(n, order=order, radial_min_stars=radial_min_stars)

    def stage_fit(src_idx, ref_idx, order_k):
        sig = np.sqrt(sig_all[src_idx] ** 2 + ref_err[ref_idx] ** 2)
        model, used = _fit_clipped(x[src_idx], y[src_idx], ref_t[ref_idx, 0], ref_t[ref_idx, 1], sig,
                                   cx=(nx - 1) / 2.0, cy=(ny - 1) / 2.0, s=max(nx, ny) / 2.0,
                                   order=order_k, clip=clip, niter=niter)
        return model, used

    # stage 0: header + offset
    cur_t = src_t - offset  # offset is src - ref
    # first (affine) stage: in sparse fields a larger radius is safe and tolerates the header's missing
    # distortion; keep the expected number of random neighbours per reference star below ~0.05
    area = max(abs(0.5 * np.sum(cxi * np.roll(ceta, -1) - np.roll(cxi, -1) * ceta)), 1.0)
    density = len(bright) / area
    radii = list(match_radii)
    radii[0] = float(np.clip(np.sqrt(0.05 / (np.pi * density)), match_radii[0], 2.0 * match_radii[0]))
    model = None
    for k, radius in enumerate(radii):
        pool = bright if k == 0 else np.arange(nsrc)
        ia, ib = match_nearest(cur_t[pool], ref_t[ref_sel], radius=radius)
        src_idx, ref_idx = pool[ia], ref_sel[ib]
        if len(src_idx) < min_matches:
            raise DataError(f"only {len(src_idx)} reference stars matched within {radius:g} arcsec after applying "
                            f"the offset ({offset[0]:.1f}, {offset[1]:.1f}) arcsec found with a {search_radius:g} "
                            f"arcsec search (need {min_matches}); check the header WCS and refcat coverage",
                            code="few_refstars")
        model, used = stage_fit(src_idx, ref_idx, 1 if k == 0 else pick(len(src_idx)))
        cur_t = np.column_stack(model(x, y))
    # final match with an adaptive radius, then the TAN-SIP fit
    resid = np.hypot(*(cur_t[src_idx[used]] - ref_t[ref_idx[used]]).T)
    rms = float(np.sqrt(np.mean(resid**2))) if used.any() else radii[-1]
    r_final = final_radius or float(np.clip(6.0 * rms, 0.5, match_radii[-1]))
    ia, ib = match_nearest(cur_t, ref_t[ref_sel], radius=r_final)
    src_idx, ref_idx = ia, ref_sel[ib]
    if len(src_idx) < min_matches:
        raise DataError(f"only {len(src_idx)} reference stars matched within {r_final:.2f} arcsec (need "
                        f"{min_matches}); check the header WCS and refcat coverage", code="few_refstars")
    order_f = pick(len(src_idx))
    sig = np.sqrt(sig_all[src_idx] ** 2 + ref_err[ref_idx] ** 2)
    wcs, finfo = fit_tan_sip(x[src_idx], y[src_idx], ref_ra[ref_idx], ref_dec[ref_idx], shape=shape, order=order_f,
                             inv_order=inv_order, sigma=sig, crval0=(t_ra, t_dec), clip=clip, niter=niter)
    used = finfo["used"]
    if used.sum() < min_matches:
        raise DataError(f"only {int(used.sum())} of {len(src_idx)} matched reference stars left after {clip:g}-sigma "
                        f"clipping of the {order_f}-model fit (need {min_matches}); the field has too few usable "
                        "stars - check the refcat depth/coverage for this field, or lower min_astrom_stars",
                        code="few_refstars")
    return AstrometryResult(
        wcs=wcs, src_index=src_idx, ref_index=ref_idx, used=used, resid_xi=finfo["resid_xi"],
        resid_eta=finfo["resid_eta"], rms=finfo["rms"], n_used=int(used.sum()), offset=tuple(map(float, offset)),
        match_radius=r_final,
        info={"order": order_f, "n_ref_on_ccd": n_on, "vote": vinfo, "inv_maxerr_px": finfo["inv_maxerr"],
              "n_matched": int(len(src_idx))})


def _in_polygon(pts, poly, *, margin=0.0):
    """Points inside a convex polygon (vertices in order) grown by ``margin``."""
    inside = np.ones(len(pts), bool)
    n = len(poly)
    # orientation of the polygon
    area = 0.5 * np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    sgn = 1.0 if area > 0 else -1.0
    for i in range(n):
        p0, p1 = poly[i], poly[(i + 1) % n]
        e = p1 - p0
        cross = sgn * (e[0] * (pts[:, 1] - p0[1]) - e[1] * (pts[:, 0] - p0[0])) / np.hypot(*e)
        inside &= cross >= -margin
    return inside


def sip_world2pix(wcs, ra, dec):
    """Sky to 0-based pixels through the inverse SIP polynomials (AP, BP) only, as a FITS reader would.

    ``all_world2pix`` inverts the forward polynomials iteratively and does not use AP/BP; this
    checks what the inverse polynomials written to the header are worth.
    """
    xi, eta = gnomonic(ra, dec, wcs.wcs.crval[0], wcs.wcs.crval[1])
    uu, vv = np.linalg.solve(wcs.pixel_scale_matrix, np.vstack([xi, eta]))
    u, v = uu.copy(), vv.copy()
    sip = wcs.sip
    if sip is not None and sip.ap is not None:
        for p in range(sip.ap.shape[0]):
            for q in range(sip.ap.shape[1]):
                if sip.ap[p, q]:
                    u += sip.ap[p, q] * uu**p * vv**q
                if sip.bp[p, q]:
                    v += sip.bp[p, q] * uu**p * vv**q
    return u + wcs.wcs.crpix[0] - 1.0, v + wcs.wcs.crpix[1] - 1.0


def wcs_separation_rms(wcs_a, wcs_b, shape, *, ngrid=20):
    """RMS and maximum sky separation (arcsec) between two WCSs over a grid of pixels."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, ngrid), np.linspace(0, ny - 1, 2 * ngrid if ny > 1.5 * nx else ngrid))
    ra1, dec1 = wcs_a.all_pix2world(gx.ravel(), gy.ravel(), 0)
    ra2, dec2 = wcs_b.all_pix2world(gx.ravel(), gy.ravel(), 0)
    xi, eta = gnomonic(ra2, dec2, ra1, dec1)
    sep = np.hypot(xi, eta) * 3600.0
    return float(np.sqrt(np.mean(sep**2))), float(np.max(sep))
