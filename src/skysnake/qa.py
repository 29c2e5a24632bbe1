"""Quality-assurance measures: the numbers behind the QA figures.

Pure functions on arrays, WCS objects, exposures and tables; the figures that show
them are in :mod:`skysnake.qaplots`. Conventions:

* fluxes in nJy, AB magnitudes (``mag = 31.4 - 2.5 log10(flux)``);
* astrometric residuals in milliarcseconds, measured minus reference, as offsets in the
  tangent plane about the reference star (``dra`` is the east offset, i.e. includes cos dec);
* focal-plane coordinates are gnomonic standard coordinates (arcmin, east and north)
  about the visit's centre: the sky seen by the camera, whatever the camera's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from .astrometry import gnomonic, propagate_refcat
from .units import AB_NJY_ZP

#: Gaussian FWHM / sigma.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Wavelength order of the usual broad-band filters; other filters follow, alphabetically.
FILTER_ORDER = ("u", "g", "r", "i", "z", "y")


def order_filters(filters):
    """Filters sorted blue to red (``u g r i z y``, then any others alphabetically)."""
    known = [f for f in FILTER_ORDER if f in filters]
    return known + sorted(f for f in set(filters) if f not in FILTER_ORDER)


# ------------------------------------------------------------------------------------------- depth

def noise_equivalent_area(fwhm_arcsec, pixel_scale_arcsec):
    """Noise-equivalent area (pixels) of a Gaussian PSF: ``4 pi sigma^2``.

    An optimal (PSF-weighted) flux measurement on white noise of per-pixel variance ``v``
    has variance ``v * NEA``.
    """
    sigma_px = np.asarray(fwhm_arcsec, dtype=float) / FWHM_PER_SIGMA / float(pixel_scale_arcsec)
    return 4.0 * np.pi * sigma_px**2


def limiting_magnitude(variance, *, fwhm_arcsec, pixel_scale_arcsec, nsigma=5.0):
    """Point-source ``nsigma`` limiting AB magnitude from a per-pixel variance (nJy^2).

    ``m_lim = 31.4 - 2.5 log10(nsigma * sqrt(variance * NEA))`` with the noise-equivalent
    area of a Gaussian PSF of the given FWHM (:func:`noise_equivalent_area`): the magnitude
    of a point source detected at ``nsigma`` by an optimal PSF-weighted flux. Pixel-to-pixel
    noise correlations (from resampling) are ignored. NaN where the variance is not positive.
    """
    var = np.asarray(variance, dtype=float)
    nea = noise_equivalent_area(fwhm_arcsec, pixel_scale_arcsec)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_flux = np.sqrt(np.where(var > 0, var, np.nan) * nea)
        return AB_NJY_ZP - 2.5 * np.log10(nsigma * sigma_flux)


def block_mean(array, factor, *, valid=None):
    """Mean over ``factor x factor`` blocks (the array is cropped to a multiple of ``factor``).

    With ``valid`` (boolean, same shape), the mean is over valid pixels only and blocks
    without any are NaN. Returns ``(mean, n_valid)``.
    """
    f = int(factor)
    ny, nx = (array.shape[0] // f) * f, (array.shape[1] // f) * f
    a = np.asarray(array[:ny, :nx])
    shape = (ny // f, f, nx // f, f)
    if valid is None:  # accumulated in float64 without a float64 copy of the array
        return a.reshape(shape).mean(axis=(1, 3), dtype=np.float64), np.full((ny // f, nx // f), f * f)
    v = np.asarray(valid[:ny, :nx], dtype=bool)
    n = v.reshape(shape).sum(axis=(1, 3))
    s = np.where(v, a, a.dtype.type(0)).reshape(shape).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan), n


def binned_wcs(wcs, factor):
    """WCS of a grid binned by ``factor``: binned pixel ``i`` covers pixels ``[i f, (i + 1) f)``."""
    f = int(factor)
    out = wcs.deepcopy()
    # 0-based pixel p of the binned grid sits at f p + (f - 1) / 2 of the fine grid
    out.wcs.crpix = (np.asarray(wcs.wcs.crpix, float) - 1.0 - (f - 1) / 2.0) / f + 1.0
    if wcs.wcs.has_cd():
        out.wcs.cd = np.asarray(wcs.wcs.cd) * f
    else:
        out.wcs.cdelt = np.asarray(wcs.wcs.cdelt) * f
    return out


def choose_bin_factor(patch_inner, tract_shape, *, max_pixels=600):
    """Smallest divisor of ``patch_inner`` that bins the tract to at most ``max_pixels`` on a side."""
    need = max(tract_shape) / float(max_pixels)
    for d in range(1, int(patch_inner) + 1):
        if patch_inner % d == 0 and d >= need:
            return d
    return int(patch_inner)


@dataclass
class DepthMaps:
    """Binned tract maps per filter: ``m5`` (limiting AB mag), ``nimage`` (mean input count)."""

    wcs: WCS
    factor: int
    pixel_scale_arcsec: float  # of the binned grid
    nsigma: float
    m5: dict = field(default_factory=dict)
    nimage: dict = field(default_factory=dict)
    fwhm: dict = field(default_factory=dict)  # filter -> {patch: coadd FWHM (arcsec)}

    @property
    def filters(self):
        return order_filters(list(self.m5))

    def area_deg2(self, filter):
        """Sky area (deg^2) with at least one input image in ``filter``."""
        return float(np.count_nonzero(self.nimage[filter] > 0)) * (self.pixel_scale_arcsec / 3600.0) ** 2

    def covered(self, filter, ra, dec):
        """True where (ra, dec) falls in a bin with data in ``filter``."""
        x, y = self.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        ix, iy = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
        ny, nx = self.nimage[filter].shape
        inside = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny)
        out = np.zeros(ix.shape, bool)
        out[inside] = self.nimage[filter][iy[inside], ix[inside]] > 0
        return out

    def median_m5(self, filter):
        v = self.m5[filter]
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else float("nan")


def depth_maps(coadds, tract, *, factor=None, nsigma=5.0, max_pixels=600):
    """Binned maps of the ``nsigma`` point-source depth and the input count over a tract.

    Parameters
    ----------
    coadds : dict
        ``{(patch, filter): Exposure}``: coadds on their patch's outer box (``VARIANCE`` in
        nJy^2, ``extra["NIMAGE"]``, ``meta["FWHM"]`` in arcsec); memory-mapped planes are
        read block by block. Empty coadds are skipped.
    tract : skysnake.skymap.Tract
    factor : int, optional
        Binning (a divisor of the patch inner size); by default :func:`choose_bin_factor`.
    nsigma : float
        Detection significance of the depth (5 for the usual 5-sigma depth).

    Returns
    -------
    DepthMaps
        Maps on the tract's inner grid binned by ``factor`` (each patch's inner box only,
        so overlaps are counted once); NaN depth where no pixel has data.
    """
    f = int(factor or choose_bin_factor(tract.patch_inner, tract.shape, max_pixels=max_pixels))
    if tract.patch_inner % f:
        raise ValueError(f"bin factor {f} does not divide the patch inner size {tract.patch_inner}")
    ny, nx = tract.shape[0] // f, tract.shape[1] // f
    out = DepthMaps(wcs=binned_wcs(tract.wcs(), f), factor=f, pixel_scale_arcsec=tract.pixel_scale * f,
                    nsigma=float(nsigma))
    n = tract.patch_inner
    b = tract.patch_border
    for (patch, filt), exp in coadds.items():
        m5 = out.m5.setdefault(filt, np.full((ny, nx), np.nan))
        nim = out.nimage.setdefault(filt, np.zeros((ny, nx)))
        if exp is None or exp.is_empty:
            continue
        fwhm = float(exp.meta.get("FWHM", np.nan))
        out.fwhm.setdefault(filt, {})[patch] = fwhm
        x0, y0, _, _ = tract.inner_box(patch)
        # the coadd covers the outer box: the inner box starts `border` pixels in
        sl = (slice(b - exp.y0, b - exp.y0 + n), slice(b - exp.x0, b - exp.x0 + n))
        var = np.asarray(exp.variance[sl], dtype=np.float32)
        mean_var, _ = block_mean(var, f, valid=np.isfinite(var) & (var > 0))
        by, bx = y0 // f, x0 // f
        m5[by:by + n // f, bx:bx + n // f] = limiting_magnitude(
            mean_var, fwhm_arcsec=fwhm, pixel_scale_arcsec=tract.pixel_scale, nsigma=nsigma)
        if "NIMAGE" in exp.extra:
            nim[by:by + n // f, bx:bx + n // f] = block_mean(exp.extra["NIMAGE"][sl], f)[0]
        else:
            nim[by:by + n // f, bx:bx + n // f] = np.isfinite(mean_var).astype(float)
    return out


# ------------------------------------------------------------------------------------- astrometry

def sky_center(ra, dec):
    """Mean position (deg) of points on the sphere (robust to the RA wrap)."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).reshape(3, -1).mean(axis=1)
    return (math.degrees(math.atan2(v[1], v[0])) % 360.0, math.degrees(math.atan2(v[2], math.hypot(v[0], v[1]))))


def focal_plane(ra, dec, *, center):
    """Standard coordinates (arcmin; east, north) of (ra, dec) about ``center = (ra0, dec0)``."""
    xi, eta = gnomonic(np.asarray(ra, float), np.asarray(dec, float), center[0], center[1])
    return xi * 60.0, eta * 60.0


#: Columns of :func:`astrometric_residuals`.
RESIDUAL_COLUMNS = ["ccd", "ra", "dec", "dra_mas", "ddec_mas", "mag", "snr", "used"]


def astrometric_residuals(sources, refcat, *, mjd, ccd=-1):
    """Positions of matched sources minus their reference stars (moved to the epoch ``mjd``).

    Parameters
    ----------
    sources : DataFrame
        A calibrated CCD's source table (``ra, dec, ref_index, astrom_used``; ``mag, snr``
        optional): ``ref_index`` is the row of the reference star in ``refcat`` (-1: none).
    refcat : DataFrame
        The reference catalog the CCD was calibrated against (``ra, dec, pmra, pmdec, epoch``).
    mjd : float
        The exposure's date: proper motions are applied to it, as in the calibration.
    ccd : int
        Written to the ``ccd`` column.

    Returns
    -------
    DataFrame
        :data:`RESIDUAL_COLUMNS`: ``dra_mas`` (east, includes cos dec) and ``ddec_mas``
        (north); ``used`` marks the stars the astrometric fit kept. Empty if no match.
    """
    if len(sources) == 0 or "ref_index" not in sources:
        return empty_residuals()
    idx = np.asarray(sources["ref_index"], dtype=np.int64)
    m = (idx >= 0) & (idx < len(refcat))
    src = sources[m]
    ref_ra, ref_dec = propagate_refcat(refcat, mjd=mjd)
    rra, rdec = ref_ra[idx[m]], ref_dec[idx[m]]
    xi, eta = gnomonic(src["ra"].to_numpy(float), src["dec"].to_numpy(float), rra, rdec)
    n = int(m.sum())
    return pd.DataFrame({
        "ccd": np.full(n, int(ccd)),
        "ra": src["ra"].to_numpy(float), "dec": src["dec"].to_numpy(float),
        "dra_mas": xi * 3.6e6, "ddec_mas": eta * 3.6e6,
        "mag": src["mag"].to_numpy(float) if "mag" in src else np.full(n, np.nan),
        "snr": src["snr"].to_numpy(float) if "snr" in src else np.full(n, np.nan),
        "used": src["astrom_used"].to_numpy(bool) if "astrom_used" in src else np.ones(n, bool),
    })


def empty_residuals():
    """An :func:`astrometric_residuals` table without rows."""
    return pd.DataFrame({c: pd.Series(dtype=bool if c == "used" else int if c == "ccd" else float)
                         for c in RESIDUAL_COLUMNS})


def residual_stats(resid):
    """rms of ``dra`` and ``ddec`` and of the total offset (mas) over the stars the fit used."""
    r = resid[resid["used"].astype(bool)] if len(resid) else resid
    if len(r) == 0:
        return {"n": 0, "rms_ra": np.nan, "rms_dec": np.nan, "rms": np.nan}
    dra, ddec = r["dra_mas"].to_numpy(float), r["ddec_mas"].to_numpy(float)
    return {"n": len(r), "rms_ra": float(np.sqrt(np.mean(dra**2))), "rms_dec": float(np.sqrt(np.mean(ddec**2))),
            "rms": float(np.sqrt(np.mean(dra**2 + ddec**2)))}


# ------------------------------------------------------------------------------------- catalogs

def number_counts(mag, *, area_deg2, bins):
    """Differential number counts (per deg^2 per mag) with Poisson errors.

    Returns a DataFrame with ``mag`` (bin centre), ``n``, ``density``, ``density_err``.
    """
    mag = np.asarray(mag, dtype=float)
    n, edges = np.histogram(mag[np.isfinite(mag)], bins=bins)
    width = np.diff(edges)
    norm = 1.0 / (float(area_deg2) * width) if area_deg2 > 0 else np.full(width.shape, np.nan)
    return pd.DataFrame({"mag": 0.5 * (edges[1:] + edges[:-1]), "n": n, "density": n * norm,
                         "density_err": np.sqrt(n) * norm})


def snr_cut(cat, filters, min_snr):
    """True for rows with ``{f}_flux / {f}_fluxerr >= min_snr`` in every one of ``filters``."""
    ok = np.ones(len(cat), bool)
    for f in filters:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = cat[f"{f}_flux"].to_numpy(float) / cat[f"{f}_fluxerr"].to_numpy(float)
        ok &= np.nan_to_num(snr, nan=0.0) >= min_snr
    return ok


def match_sky(ra1, dec1, ra2, dec2, *, radius_arcsec):
    """Nearest neighbour in set 2 of each point of set 1 within a radius.

    Returns ``(index, separation_arcsec)``: index into set 2, -1 where none is near enough.
    """
    from astropy.coordinates import SkyCoord

    n1 = len(ra1)
    if n1 == 0 or len(ra2) == 0:
        return np.full(n1, -1, np.int64), np.full(n1, np.inf)
    c1 = SkyCoord(np.asarray(ra1, float), np.asarray(dec1, float), unit="deg")
    c2 = SkyCoord(np.asarray(ra2, float), np.asarray(dec2, float), unit="deg")
    idx, sep, _ = c1.match_to_catalog_sky(c2)
    sep = sep.arcsec
    return np.where(sep <= radius_arcsec, idx, -1).astype(np.int64), sep


def match_to_truth(cat, truth, *, radius_arcsec=0.5):
    """Match a catalog to the truth both ways.

    Returns ``(t2c, pairs)``: ``t2c`` is the catalog row nearest each truth object within the
    radius (-1: none; the truth object is *found*), ``pairs`` the (truth row, catalog row)
    arrays of one-to-one (mutual nearest) matches, for comparing measurements with truth.
    """
    t2c, _ = match_sky(truth["ra"], truth["dec"], cat["ra"], cat["dec"], radius_arcsec=radius_arcsec)
    c2t, _ = match_sky(cat["ra"], cat["dec"], truth["ra"], truth["dec"], radius_arcsec=radius_arcsec)
    t = np.flatnonzero(t2c >= 0)
    mutual = c2t[t2c[t]] == t
    return t2c, (t[mutual], t2c[t[mutual]])


def completeness(true_mag, found, *, bins):
    """Fraction of truth objects found per magnitude bin, with binomial errors.

    Returns a DataFrame with ``mag`` (bin centre), ``n``, ``n_found``, ``completeness``
    (NaN for empty bins) and ``err``.
    """
    mag = np.asarray(true_mag, float)
    found = np.asarray(found, bool)
    ok = np.isfinite(mag)
    n, edges = np.histogram(mag[ok], bins=bins)
    k, _ = np.histogram(mag[ok & found], bins=edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        err = np.where(n > 0, np.sqrt(c * (1 - c) / np.maximum(n, 1)), np.nan)
    return pd.DataFrame({"mag": 0.5 * (edges[1:] + edges[:-1]), "n": n, "n_found": k, "completeness": c,
                         "err": err})


def magnitude_at_completeness(table, level=0.5):
    """Faintest magnitude before the completeness (a :func:`completeness` table) first drops below ``level``.

    Linear interpolation between the last bin at or above the level and the next one;
    NaN if it never drops below (or never reaches) the level.
    """
    c = table["completeness"].to_numpy(float)
    m = table["mag"].to_numpy(float)
    above = np.flatnonzero(np.nan_to_num(c, nan=-1) >= level)
    if above.size == 0:
        return float("nan")
    start = above[0]
    below = np.flatnonzero((np.arange(len(c)) > start) & (np.nan_to_num(c, nan=level) < level))
    if below.size == 0:
        return float("nan")
    j = below[0]
    i = j - 1
    while i > start and not np.isfinite(c[i]):
        i -= 1
    return float(m[i] + (c[i] - level) / (c[i] - c[j]) * (m[j] - m[i]))


def running_median(x, y, *, bins, min_count=5):
    """Median and 16-84% half-width of ``y`` in bins of ``x``: DataFrame ``x, median, sigma, n``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    which = np.digitize(x, bins) - 1
    rows = []
    for i in range(len(bins) - 1):  # a loop over a few bins, not over data
        v = y[which == i]
        if v.size >= min_count:
            p16, p50, p84 = np.percentile(v, [16, 50, 84])
            rows.append((0.5 * (bins[i] + bins[i + 1]), p50, 0.5 * (p84 - p16), v.size))
    return pd.DataFrame(rows, columns=["x", "median", "sigma", "n"])


# ------------------------------------------------------------------------------------ colour images

def color_composite(red, green, blue, *, factor=4, q=8.0, stretch_sigma=20.0, minimum_sigma=-1.0,
                    nodata_rgb=(150, 150, 150)):
    """An RGB image (uint8, ``(ny, nx, 3)``) of three coadds with Lupton et al. (2004)'s asinh stretch.

    Each image is block-averaged by ``factor`` (NaN as 0). The stretch scales with the
    noise so that any survey depth looks alike: ``stretch = stretch_sigma * noise`` and
    ``minimum = minimum_sigma * noise``, with ``noise`` the robust (MAD) pixel scatter of
    the binned images, averaged over the three. Pixels without data in any of the three
    (exactly 0 in all, as coadds store them) are painted ``nodata_rgb``; a region covered
    by only some of the filters shows in their colours.
    """
    from astropy.visualization import make_lupton_rgb

    planes = []
    for im in (red, green, blue):
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        planes.append(block_mean(a, factor)[0].astype(np.float32) if factor > 1 else a)
    noise = []
    for p in planes:
        v = p[p != 0]
        if v.size:
            med = np.median(v)
            noise.append(1.4826 * np.median(np.abs(v - med)))
    sigma = float(np.mean(noise)) if noise and np.mean(noise) > 0 else 1.0
    rgb = make_lupton_rgb(*planes, minimum=minimum_sigma * sigma, stretch=stretch_sigma * sigma, Q=q)
    nodata = (planes[0] == 0) & (planes[1] == 0) & (planes[2] == 0)
    rgb[nodata] = np.asarray(nodata_rgb, dtype=np.uint8)
    return rgb


def rgb_filters(filters):
    """The (red, green, blue) filters of a colour image: ``i, r, g`` when present, else the reddest,
    a middle and the bluest filter (a filter repeats when there are fewer than three)."""
    f = order_filters(filters)
    if not f:
        raise ValueError("no filter to make a colour image from")
    if {"g", "r", "i"} <= set(f):
        return ("i", "r", "g")
    return (f[-1], f[len(f) // 2], f[0])


# ----------------------------------------------------------------------------------- depth map files

def depth_maps_to_hdulist(maps, *, meta=None):
    """An HDUList holding :class:`DepthMaps`: per filter ``M5_<f>`` and ``NIMAGE_<f>`` image HDUs with the WCS."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    h = primary.header
    h["BINNING"] = (maps.factor, "tract pixels per map pixel (each axis)")
    h["NSIGMA"] = (maps.nsigma, "significance of the limiting magnitude")
    h["PIXSCALE"] = (maps.pixel_scale_arcsec, "map pixel scale (arcsec)")
    h["FILTERS"] = ",".join(maps.filters)
    for k, v in (meta or {}).items():
        h[k] = v
    hdus = [primary]
    wcs_header = maps.wcs.to_header()
    for f in maps.filters:
        hm = fits.ImageHDU(np.asarray(maps.m5[f], np.float32), header=wcs_header.copy(), name=f"M5_{f}")
        hm.header["BUNIT"] = "mag(AB)"
        med = maps.median_m5(f)
        if np.isfinite(med):  # no data: no median (FITS headers hold no NaN)
            hm.header["M5MED"] = (med, f"median {maps.nsigma:g}-sigma depth (AB mag)")
        hm.header["AREA"] = (maps.area_deg2(f), "area with data (deg2)")
        hm.header["FWHMS"] = (json_dumps(maps.fwhm.get(f, {})), "coadd FWHM (arcsec) per patch")
        hn = fits.ImageHDU(np.asarray(maps.nimage[f], np.float32), header=wcs_header.copy(), name=f"NIMAGE_{f}")
        hdus += [hm, hn]
    return fits.HDUList(hdus)


def depth_maps_from_hdulist(hdul):
    """:class:`DepthMaps` from :func:`depth_maps_to_hdulist`'s HDUList."""
    import json

    h = hdul[0].header
    filters = [f for f in str(h.get("FILTERS", "")).split(",") if f]
    wcs = WCS(hdul[f"M5_{filters[0]}"].header) if filters else WCS(naxis=2)
    out = DepthMaps(wcs=wcs, factor=int(h["BINNING"]), pixel_scale_arcsec=float(h["PIXSCALE"]),
                    nsigma=float(h["NSIGMA"]))
    for f in filters:
        out.m5[f] = np.asarray(hdul[f"M5_{f}"].data, dtype=float)
        out.nimage[f] = np.asarray(hdul[f"NIMAGE_{f}"].data, dtype=float)
        out.fwhm[f] = json.loads(hdul[f"M5_{f}"].header.get("FWHMS", "{}"))
    return out


def json_dumps(obj):
    import json

    return json.dumps(obj, sort_keys=True)
