"""Background, source detection and measurement, PSF size and aperture correction (sep based).

These functions work on any image with a variance and mask plane (a CCD in ADU or a coadd in
nJy): pixel coordinates are 0-based with the centre of the first pixel at ``(0, 0)``.

Source flags (``flags`` column) combine sep's bits with skysnake's:

=====  ======================  ==========================================================
bit    name                    meaning
=====  ======================  ==========================================================
1      ``MERGED``              sep: object was deblended from a blend
2      ``TRUNC``               sep: object footprint touches the image edge
4      ``DOVERFLOW``           sep: numerical overflow
8      ``SINGU``               sep: singular moments
16     ``APER_TRUNC``          an aperture (or the flag disk) extends beyond the image
32     ``APER_HASMASKED``      an aperture contains masked pixels (flux corrected for area)
64     ``APER_ALLMASKED``      every pixel of an aperture is masked
128    ``APER_NONPOSITIVE``    an aperture flux is <= 0
256    ``NEAR_SAT``            a SAT pixel lies within ``flag_radius``
512    ``NEAR_CR``             a CR pixel lies within ``flag_radius``
1024   ``NEAR_BAD``            a BAD or NO_DATA pixel lies within ``flag_radius``
2048   ``WINPOS_FAILED``       windowed centroid failed; x, y are the isophotal barycentre
=====  ======================  ==========================================================
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sep
from scipy import ndimage, optimize

from . import masks
from .ccdproc import _row_blocks
from .errors import DataError

__all__ = [
    "FLAGS", "NEAR_MASKED", "DEFAULT_KERNEL", "BackgroundModel", "estimate_background", "filtered_noise",
    "detect_sources", "measure_sources",
    "mask_bits_near", "local_background", "select_psf_stars", "measure_psf_fwhm", "aperture_correction",
    "moffat_encircled_energy", "fixed_aperture_flux", "clipped_mean",
]

FLAGS = {
    "MERGED": int(sep.OBJ_MERGED), "TRUNC": int(sep.OBJ_TRUNC), "DOVERFLOW": int(sep.OBJ_DOVERFLOW),
    "SINGU": int(sep.OBJ_SINGU), "APER_TRUNC": int(sep.APER_TRUNC), "APER_HASMASKED": int(sep.APER_HASMASKED),
    "APER_ALLMASKED": int(sep.APER_ALLMASKED), "APER_NONPOSITIVE": int(sep.APER_NONPOSITIVE),
    "NEAR_SAT": 1 << 8, "NEAR_CR": 1 << 9, "NEAR_BAD": 1 << 10, "WINPOS_FAILED": 1 << 11,
}
#: any of these flags: the source is close to a pixel that cannot be trusted
NEAR_MASKED = FLAGS["NEAR_SAT"] | FLAGS["NEAR_CR"] | FLAGS["NEAR_BAD"]


@dataclass
class BackgroundModel:
    """Smooth background of an image.

    Attributes
    ----------
    back : ndarray
        Background level, full-size float32.
    globalback, globalrms : float
        Global level (including the mean correction) and sep's global rms (median over the meshes).
    rms : ndarray
        Background rms, full-size float32, evaluated on first use (most callers only need ``back``).
    """

    back: np.ndarray
    globalback: float
    globalrms: float
    _sep: object = field(default=None, repr=False)
    _rms: np.ndarray = field(default=None, repr=False)

    @property
    def rms(self):
        if self._rms is None:
            if self._sep is None:
                raise ValueError("this BackgroundModel has no rms map (made without a sep background)")
            self._rms = self._sep.rms(dtype=np.float32)
        return self._rms


def _sep_ready(arr, dtype=np.float32):
    arr = np.asarray(arr, dtype=dtype)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))


def _bool_mask(mask):
    """``mask != 0`` as a C-contiguous boolean array (``mask`` itself if it already is one)."""
    m = np.asarray(mask)
    return m if m.dtype == bool and m.flags.c_contiguous else np.ascontiguousarray(m != 0)


def _bin(arr, b, op):
    """``op``-reduction (``np.add`` or ``np.bitwise_or``) of ``b x b`` blocks of ``arr`` (cropped to multiples of ``b``).

    Strided slices added in place: several times faster than a reshape reduction over short axes.
    """
    ny, nx = (arr.shape[0] // b) * b, (arr.shape[1] // b) * b
    rows = op(arr[0:ny:b, :nx], arr[1:ny:b, :nx]) if b > 1 else arr[:ny, :nx].copy()
    for k in range(2, b):
        op(rows, arr[k:ny:b, :nx], out=rows)
    if b == 1:
        return rows
    out = op(rows[:, 0::b], rows[:, 1::b])
    for k in range(2, b):
        op(out, rows[:, k::b], out=out)
    return out


def _source_mask(data, bad, *, mesh, filter_size, nsigma, grow):
    """Pixels of significant sources, grown by about ``grow`` pixels, found on a 4x4-binned copy of the image.

    The binned image (noise / 4) gets a first sep background; blocks more than ``nsigma`` times its
    rms above it, or whose 3x3-block neighbourhood mean is more than ``nsigma`` times that mean's
    noise above it (faint extended light), are sources. Binning does the smoothing a filter would
    do, and the statistics, thresholding and growth all run on 16x fewer pixels.
    """
    b = int(max(1, min(4, mesh // 16)))
    ny, nx = data.shape
    if ny < 4 * b or nx < 4 * b:
        b = 1
    binned = _bin(data, b, np.add)
    binned *= np.float32(1.0 / (b * b))
    bbad = _bin(bad, b, np.bitwise_or)
    if bbad.all():
        return np.zeros(data.shape, bool)
    bmesh = max(4, int(round(mesh / b)))
    bkg = sep.Background(binned, mask=bbad if bbad.any() else None, bw=bmesh, bh=bmesh, fw=filter_size,
                         fh=filter_size)
    binned -= bkg.back(dtype=np.float32)
    rms = bkg.rms(dtype=np.float32)
    # compact sources: a block above nsigma; faint extended light (galaxy wings): the mean of 3x3 blocks
    # (noise / 3) above nsigma of its own noise
    np.copyto(binned, np.float32(0), where=bbad)
    src = binned > np.float32(nsigma) * rms
    src |= ndimage.uniform_filter(binned, size=3) > np.float32(nsigma / 3.0) * rms
    src &= ~bbad
    # grow by whole blocks: a block already reaches (b - 1) / 2 px beyond its pixels on average
    g = int(round(max(grow - (b - 1) / 2.0, 0.0) / b))
    if g > 0 and src.any():
        src = ndimage.binary_dilation(src, structure=np.ones((3, 3), bool), iterations=g)
    full = np.repeat(np.repeat(src, b, axis=0), b, axis=1)
    if full.shape != data.shape:  # rows and columns beyond the last whole block: as their neighbours
        full = np.pad(full, [(0, data.shape[0] - full.shape[0]), (0, data.shape[1] - full.shape[1])], mode="edge")
    return full


def estimate_background(image, *, mask=None, mesh=128, filter_size=3, mask_sources=True, source_nsigma=4.0,
                        source_grow=7, mean_correction=True):
    """Smooth sky background with sep, excluding masked pixels and (optionally) sources.

    With ``mask_sources`` the sources are found first on the image binned 4x4 (noise / 4; 2x2 or
    none for meshes under 64 or 32 px): blocks more than ``source_nsigma`` times the binned noise
    above a first sep background of the binned image, grown by ``source_grow`` pixels, are
    excluded from the full-resolution sep estimate. This removes most of the bias that galaxy and
    star wings put in the sky level.

    Parameters
    ----------
    image : ndarray
        Image (sky included).
    mask : ndarray, optional
        Non-zero pixels are excluded.
    mesh : int, optional
        Mesh (box) size in pixels.
    filter_size : int, optional
        Median filter size in meshes.
    mask_sources : bool, optional
        Exclude the sources found on the binned image.
    source_nsigma, source_grow : float, int, optional
        Threshold (in units of the binned image's noise) and growth (pixels) of the source mask.
    mean_correction : bool, optional
        sep's per-mesh statistic estimates the *mode* of the sky, which for Poisson-skewed sky lies
        ~0.4 e- (``0.4 * sky_e / var_e``) below the mean; photometry needs the mean. If True, the
        clipped mean of the residual sky pixels is added back as a constant.

    Returns
    -------
    BackgroundModel
    """
    data = _sep_ready(image)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if bad.all():
        raise DataError("every pixel is masked: cannot estimate the background", code="no_data")
    # masked pixels (NaN included) are skipped by sep's statistics and left out of the mean correction below
    mesh = int(min(mesh, max(16, min(data.shape))))
    kw = dict(bw=mesh, bh=mesh, fw=filter_size, fh=filter_size)
    if mask_sources:
        src = _source_mask(data, bad, mesh=mesh, filter_size=filter_size, nsigma=source_nsigma, grow=source_grow)
        src |= bad
        # keep at least ~25% of the pixels of the image for the estimate
        if np.count_nonzero(src) < 0.75 * data.size:
            bad = src
    bkg = sep.Background(data, mask=bad if bad.any() else None, **kw)
    back = bkg.back(dtype=np.float32)
    offset = 0.0
    if mean_correction:
        # sep's mesh statistic is a mode estimate (2.5 median - 1.5 mean), which sits below the mean by
        # ~0.4 * skewness * sigma for Poisson-skewed sky; photometry needs the mean: add the clipped
        # mean of the residual sky pixels (a global constant).
        offset = _clipped_mean_masked(data, back, bad)
        back += np.float32(offset)
    return BackgroundModel(back=back, globalback=float(bkg.globalback) + offset, globalrms=float(bkg.globalrms),
                           _sep=bkg)


def _clipped_mean_masked(data, back, bad, *, clip=4.0, max_iter=3, nsample=50_000):
    """Mean of ``data - back`` over the pixels not ``bad``, within ``clip`` x (MAD-based) sigma of their
    median (0 if 100 or fewer).

    The clipping bounds come from a regular subsample of ``nsample`` values (they need only be
    approximate); the mean uses every good value inside them, summed a block of rows at a time (no
    image-sized temporaries).
    """
    n = data.size - np.count_nonzero(bad)
    if n <= 100:
        return 0.0
    step = max(1, data.size // nsample)
    flat_d, flat_b, flat_bad = data.reshape(-1), back.reshape(-1), bad.reshape(-1)
    keep = ~flat_bad[::step]
    samp = (flat_d[::step][keep] - flat_b[::step][keep]).astype(np.float64)
    lo, hi = -np.inf, np.inf
    for _ in range(max_iter):
        cur = samp[(samp >= lo) & (samp <= hi)]
        if cur.size == 0:
            return 0.0
        med = np.median(cur)
        sig = 1.4826 * np.median(np.abs(cur - med))
        lo, hi = med - clip * sig, med + clip * sig
    total, k = 0.0, 0
    lo32, hi32 = np.float32(lo), np.float32(hi)
    for rows in _row_blocks(data):
        d = np.subtract(data[rows], back[rows])
        sel = d >= lo32
        sel &= d <= hi32
        sel &= ~bad[rows]
        k += int(np.count_nonzero(sel))
        total += float(np.sum(d, where=sel, dtype=np.float64))
    return total / k if k else 0.0


#: sep's (and SExtractor's) default detection kernel: a 3x3 pyramid, ~2 px FWHM
DEFAULT_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32)


def filtered_noise(kernel=None):
    """Noise of a white-noise image filtered with ``kernel`` normalised to unit sum (|k| summed, as sep and
    SExtractor normalise it), in units of the pixel noise: ``sqrt(sum k^2) / sum |k|`` (0.375 for
    :data:`DEFAULT_KERNEL`).

    SExtractor's ``DETECT_THRESH`` (and sep's ``thresh`` with ``filter_type="conv"``) is in units of
    the *unfiltered* pixel noise: :func:`detect_sources` with ``thresh=t`` detects what they detect at
    ``t * filtered_noise(kernel)``.
    """
    k = np.asarray(DEFAULT_KERNEL if kernel is None else kernel, dtype=np.float64)
    return float(np.sqrt(np.sum(k**2)) / np.sum(np.abs(k)))


def detect_sources(image, *, variance, mask=None, thresh=5.0, minarea=5, deblend_nthresh=32,
                   deblend_cont=0.005, clean=True, filter_kernel=None, segmentation_map=False):
    """Detect sources with :func:`sep.extract` on a background-subtracted image.

    The image is convolved with ``filter_kernel`` and pixels whose filtered value exceeds
    ``thresh`` times the *filtered* image's noise are detected: for white noise this is the
    matched-filter S/N, ``sum(k d) / (sigma sqrt(sum k^2)) > thresh``. It is passed to sep as a
    per-pixel threshold ``thresh *`` :func:`filtered_noise` in units of the unfiltered noise with
    ``filter_type="conv"``, so that deblending and cleaning use the same threshold as the
    detection (sep's "matched" mode detects on the S/N but cleans and deblends at ``thresh`` times
    the unfiltered noise, which merges or discards faint neighbours of bright sources; it is also
    three times slower).

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    variance : ndarray or float
        Variance used for the threshold (sky variance is the usual choice).
    mask : ndarray of bool, optional
        Pixels to ignore (treated as zero signal, infinite noise).
    thresh : float, optional
        Detection threshold in units of the filtered image's noise.
    minarea : int, optional
        Minimum number of connected pixels.
    deblend_nthresh, deblend_cont, clean : optional
        sep deblending parameters.
    filter_kernel : ndarray, optional
        Detection kernel (default :data:`DEFAULT_KERNEL`, sep's 3x3).
    segmentation_map : bool, optional
        Also return the segmentation map.

    Returns
    -------
    objects : structured ndarray
        sep objects (possibly empty), and the segmentation map if requested.
    """
    data = _sep_ready(image)
    var = _sep_ready(variance) if np.ndim(variance) else float(variance)
    kernel = DEFAULT_KERNEL if filter_kernel is None else np.asarray(filter_kernel, dtype=np.float32)
    pix_thresh = float(thresh) * filtered_noise(kernel)
    kw = dict(var=var, mask=None if mask is None else np.ascontiguousarray(mask, dtype=bool), minarea=minarea,
              filter_kernel=kernel, filter_type="conv", deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont,
              clean=clean, segmentation_map=segmentation_map)
    # sep's pixel stack is a library-wide buffer, allocated and linked up in full on every call: start at
    # 1/16 of the image (plenty for a CCD of sky-limited data) and enlarge it only if it overflows
    if sep.get_extract_pixstack() < data.size // 16:
        sep.set_extract_pixstack(int(data.size // 16))
    for _attempt in range(3):
        try:
            return sep.extract(data, pix_thresh, **kw)
        except Exception as err:  # sep raises plain Exception for buffer overflows
            msg = str(err)
            if "pixel buffer full" in msg or "object deblending overflow" in msg:
                sep.set_extract_pixstack(sep.get_extract_pixstack() * 4)
                sep.set_sub_object_limit(max(sep.get_sub_object_limit() * 2, 2048))
                continue
            raise
    raise DataError("source extraction overflowed sep's buffers even after enlarging them; the image is "
                    "probably dominated by artefacts (check the background and the saturation level)",
                    code="extraction_overflow")


def _disk_offsets(r_out, r_in=-1.0):
    g = np.arange(-int(np.ceil(r_out)), int(np.ceil(r_out)) + 1)
    dy, dx = np.meshgrid(g, g, indexing="ij")
    r2 = dx**2 + dy**2
    sel = (r2 <= r_out**2) & (r2 > (r_in**2 if r_in >= 0 else -1))
    return dy[sel], dx[sel]


def _gather(arr, x, y, dy, dx, fill):
    """Values of ``arr`` at ``(round(y)+dy, round(x)+dx)`` (shape ``(n, len(dy))``); ``fill`` outside."""
    ny, nx = arr.shape
    iy = np.rint(np.asarray(y)).astype(np.int64)[:, None] + dy[None, :]
    ix = np.rint(np.asarray(x)).astype(np.int64)[:, None] + dx[None, :]
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    vals = arr[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)]
    return np.where(inside, vals, fill), inside


def mask_bits_near(mask, x, y, radius):
    """OR of the mask bits within ``radius`` pixels of each position (pixels off the image count as 0)."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int32)
    dy, dx = _disk_offsets(radius)
    vals, _ = _gather(np.asarray(mask, dtype=np.int32), x, y, dy, dx, 0)
    return np.bitwise_or.reduce(vals, axis=1).astype(np.int32)


def local_background(image, x, y, *, r_in, r_out, mask=None):
    """Sky level around each position: 3-sigma clipped mean of the unmasked pixels in an annulus.

    The clipping (about the median, MAD-based sigma, three passes) rejects neighbours; NaN where
    fewer than 10 pixels are usable.
    """
    if len(x) == 0:
        return np.zeros(0)
    dy, dx = _disk_offsets(r_out, r_in)
    img = np.asarray(image, dtype=np.float32)
    if mask is not None:
        img = np.where(np.asarray(mask) != 0, np.float32(np.nan), img)
    vals, _ = _gather(img, x, y, dy, dx, np.nan)
    vals = vals.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(3):
            med = np.nanmedian(vals, axis=1, keepdims=True)
            sig = 1.4826 * np.nanmedian(np.abs(vals - med), axis=1, keepdims=True)
            vals = np.where(np.abs(vals - med) <= 3.0 * sig, vals, np.nan)
        n = np.sum(np.isfinite(vals), axis=1)
        return np.where(n >= 10, np.nanmean(vals, axis=1), np.nan)


def _flags_from_mask(bits):
    flags = np.zeros(len(bits), dtype=np.int32)
    flags[(bits & masks.SAT) != 0] |= FLAGS["NEAR_SAT"]
    flags[(bits & masks.CR) != 0] |= FLAGS["NEAR_CR"]
    flags[(bits & (masks.BAD | masks.NO_DATA)) != 0] |= FLAGS["NEAR_BAD"]
    return flags


def _empty_catalog(aper_names, kron):
    cols = ["id", "x", "y", "x_iso", "y_iso", "npix", "peak", "a", "b", "theta", "flux_iso", "flux_radius"]
    for name in aper_names:
        cols += [f"flux_{name}", f"fluxerr_{name}"]
    if kron:
        cols += ["kron_radius", "flux_kron", "fluxerr_kron"]
    cols += ["snr", "maskbits", "flags"]
    df = pd.DataFrame({c: np.zeros(0, dtype=float) for c in cols})
    for c in ("id", "npix", "maskbits", "flags"):
        df[c] = df[c].astype(np.int32)
    return df


def measure_sources(image, objects, *, variance, mask=None, aper_radii=(3.0, 5.0, 8.0), aper_names=None,
                    bad_bits=masks.UNUSABLE, flag_radius=None, kron=False):
    """Measure sep ``objects`` on a background-subtracted image.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    objects : structured ndarray
        Output of :func:`detect_sources`.
    variance : ndarray
        Per-pixel variance (including the sources' Poisson noise) for the flux errors.
    mask : ndarray of int, optional
        Mask plane; pixels with any of ``bad_bits`` are excluded from apertures (sep corrects the
        aperture sums for the masked area) and from the windowed centroids.
    aper_radii : sequence of float, optional
        Aperture radii in pixels.
    aper_names : sequence of str, optional
        Column suffixes for the apertures (default ``aper0, aper1, ...``).
    bad_bits : int, optional
        Mask bits that make a pixel unusable.
    flag_radius : float, optional
        Radius (pixels) within which masked pixels set the NEAR_* flags (default: the largest
        aperture radius).
    kron : bool, optional
        Also measure Kron radius and flux (2.5 Kron radii, minimum 3.5 px).

    Returns
    -------
    pandas.DataFrame
        One row per object: ``id`` (row index in ``objects``), ``x, y`` (windowed centroid,
        0-based), ``x_iso, y_iso`` (barycentre), ``npix``, ``peak``, ``a, b, theta``,
        ``flux_iso``, ``flux_radius`` (half-light radius, px), ``flux_<name>, fluxerr_<name>``
        per aperture, optional Kron columns, ``snr`` (first aperture), ``maskbits`` (OR of mask
        bits within ``flag_radius``) and ``flags`` (see module docstring).
    """
    aper_radii = [float(r) for r in aper_radii]
    if aper_names is None:
        aper_names = [f"aper{i}" for i in range(len(aper_radii))]
    if len(objects) == 0:
        return _empty_catalog(aper_names, kron)
    data = _sep_ready(image)
    var = _sep_ready(variance)
    ny, nx = data.shape
    bad = None
    if mask is not None:
        bad = np.ascontiguousarray((np.asarray(mask) & bad_bits) != 0)
        if not bad.any():
            bad = None
    x0 = objects["x"].astype(float)
    y0 = objects["y"].astype(float)
    a = objects["a"].astype(float)
    b = objects["b"].astype(float)
    # float32 pi/2 is > pi/2 in double precision and sep rejects it
    theta = np.clip(objects["theta"].astype(float), -np.pi / 2, np.pi / 2)
    flags = objects["flag"].astype(np.int32)

    rmax = np.clip(6.0 * a, 3.0, 50.0)
    # 3x3 sub-pixels (sep's default is 5x5, and every pixel of the radius is sub-sampled): for r50 < 3 px
    # the radii differ from 11x11's by -0.003 px on average, 0.044 px at the 99th percentile (benchmark CCD)
    r50, fl = sep.flux_radius(data, x0, y0, rmax, 0.5, mask=bad, subpix=3)
    flags |= fl.astype(np.int32)
    r50 = np.where(np.isfinite(r50) & (r50 > 0), r50, 1.0)
    sig = 2.0 * r50 / 2.3548
    # whole pixels on the window's edge (sep's and SExtractor's default is 11x11 sub-pixels, 1.5x the
    # cost): the centroids move by < 0.001 px at the 99th percentile (benchmark CCD), far below the noise
    # of the brightest stars'
    xw, yw, fw = sep.winpos(data, x0, y0, sig, mask=bad, subpix=1)
    wbad = (fw != 0) | ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x0, yw - y0) > np.maximum(2.0, r50))
    x = np.where(wbad, x0, xw)
    y = np.where(wbad, y0, yw)
    flags[wbad] |= FLAGS["WINPOS_FAILED"]

    cols = {
        "id": np.arange(len(objects), dtype=np.int32), "x": x, "y": y, "x_iso": x0, "y_iso": y0,
        "npix": objects["npix"].astype(np.int32), "peak": objects["peak"].astype(float),
        "a": a, "b": b, "theta": theta, "flux_iso": objects["flux"].astype(float), "flux_radius": r50,
    }
    done = {}  # apertures of equal radii are measured once
    for r, name in zip(aper_radii, aper_names):
        if r not in done:
            f, fe, fl = sep.sum_circle(data, x, y, r, var=var, mask=bad, subpix=5)
            flags |= fl.astype(np.int32)
            done[r] = f, fe
        cols[f"flux_{name}"], cols[f"fluxerr_{name}"] = done[r]  # (the DataFrame copies the columns)
    if kron:
        kr, fl = sep.kron_radius(data, x, y, a, b, theta, 6.0, mask=bad)
        kr = np.where(np.isfinite(kr) & (kr > 0), kr, 0.0)
        small = kr * np.sqrt(a * b) < 1.75
        rk = 2.5 * kr
        f, fe, fl2 = sep.sum_ellipse(data, x, y, a, b, theta, np.where(small, 1.0, rk), var=var, mask=bad, subpix=1)
        fc, fec, fl3 = sep.sum_circle(data, x, y, 3.5, var=var, mask=bad, subpix=1)
        cols["kron_radius"] = kr
        cols["flux_kron"] = np.where(small, fc, f)
        cols["fluxerr_kron"] = np.where(small, fec, fe)
        flags |= (fl | np.where(small, fl3, fl2)).astype(np.int32)
    f0, fe0 = cols[f"flux_{aper_names[0]}"], cols[f"fluxerr_{aper_names[0]}"]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["snr"] = np.where(fe0 > 0, f0 / fe0, 0.0)
    if mask is not None:
        bits = mask_bits_near(mask, x, y, flag_radius if flag_radius is not None else max(aper_radii))
    else:
        bits = np.zeros(len(x), dtype=np.int32)
    # positions whose flag disk leaves the image
    rr = flag_radius if flag_radius is not None else max(aper_radii)
    off = (x - rr < -0.5) | (y - rr < -0.5) | (x + rr > nx - 0.5) | (y + rr > ny - 0.5)
    flags[off] |= FLAGS["APER_TRUNC"]
    cols["maskbits"] = bits
    cols["flags"] = flags | _flags_from_mask(bits)
    return pd.DataFrame(cols)


def select_psf_stars(cat, *, min_snr=50.0, max_peak=None, isolation=15.0, bad_flags=None, size_tol=0.15,
                     max_stars=100):
    """Choose bright, unsaturated, isolated point sources for PSF and aperture-correction work.

    Stars are the tight clump at the smallest ``flux_radius`` among bright, clean sources: the
    clump centre is the ``flux_radius`` with the most neighbours within ``size_tol`` (relative),
    searched among the smaller half of the candidates.

    Parameters
    ----------
    cat : DataFrame
        Output of :func:`measure_sources`.
    min_snr : float, optional
        Minimum ``snr``.
    max_peak : float, optional
        Reject sources whose (background-subtracted) peak exceeds this (non-linearity).
    isolation : float, optional
        Reject sources with another detection closer than this (pixels).
    bad_flags : int, optional
        Reject sources with any of these flags (default: everything except TRUNC/APER_TRUNC
        handling: all flags).
    size_tol : float, optional
        Relative half-width of the stellar locus in ``flux_radius``.
    max_stars : int, optional
        Keep at most this many (the brightest).

    Returns
    -------
    ndarray of bool
        True for selected stars.
    """
    n = len(cat)
    sel = np.zeros(n, bool)
    if n == 0:
        return sel
    flags = cat["flags"].to_numpy()
    if bad_flags is None:
        bad_flags = ~0
    ok = ((flags & bad_flags) == 0) & (cat["snr"].to_numpy() >= min_snr)
    if max_peak is not None:
        ok &= cat["peak"].to_numpy() < max_peak
    x, y = cat["x"].to_numpy(), cat["y"].to_numpy()
    if isolation > 0 and n > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        ok &= d[:, 1] > isolation
    r50 = cat["flux_radius"].to_numpy()
    ok &= np.isfinite(r50) & (r50 > 0.3)
    idx = np.flatnonzero(ok)
    if len(idx) < 3:
        return sel
    lr = np.log(r50[idx])
    # density of the locus: number of candidates within size_tol (in log) of each one
    dens = (np.abs(lr[:, None] - lr[None, :]) < size_tol).sum(axis=1)
    small = lr <= np.quantile(lr, 0.6)
    centre_i = np.argmax(np.where(small, dens, -1))
    near = np.abs(lr - lr[centre_i]) < size_tol
    centre = np.median(lr[near])
    near = np.abs(lr - centre) < size_tol
    chosen = idx[near]
    if len(chosen) > max_stars:
        order = np.argsort(-cat["snr"].to_numpy()[chosen])
        chosen = chosen[order[:max_stars]]
    sel[chosen] = True
    return sel


def _moffat_pix(r2s, alpha, beta):
    """Pixel-integrated (sub-sampled) normalised Moffat; r2s has a trailing sub-sample axis."""
    norm = (beta - 1) / (np.pi * alpha**2)
    return norm * np.mean((1 + r2s / alpha**2) ** (-beta), axis=-1)


def measure_psf_fwhm(image, cat, stars, *, mask=None, variance=None, gain=None, fwhm_guess=None, max_stars=40,
                     subsample=1):
    """PSF FWHM (pixels) from a joint circular-Moffat fit to the selected stars.

    Each star's stamp (radius ~2.5 FWHM) is fitted with ``F_i * Moffat(r; alpha, beta)``
    sampled at the pixel centres, with the fluxes ``F_i`` solved linearly and ``alpha, beta``
    shared. Positions are the windowed centroids. The result is the FWHM of the *effective*
    (pixel-convolved) PSF, i.e. what the image shows; ``subsample > 1`` integrates the model over
    the pixels instead and measures the PSF before pixel convolution.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    cat : DataFrame
        Catalog from :func:`measure_sources`.
    stars : ndarray of bool
        Selection (e.g. :func:`select_psf_stars`).
    mask, variance : ndarray, optional
        Masked (non-zero) pixels are ignored; variance weights the fit.
    gain : float, optional
        If given, the weights' variance is ``variance`` (then the sky's) plus the sources' Poisson
        term ``max(3x3 mean of the image, 0) / gain``, smoothed so that it does not follow each
        pixel's own noise.
    fwhm_guess : float, optional
        Starting FWHM (default: ``1.8 * median(flux_radius)``).
    max_stars : int, optional
        Use at most this many stars (highest S/N).
    subsample : int, optional
        Sub-pixel sampling of the model (1: point sampling).

    Returns
    -------
    dict
        ``fwhm`` (px), ``alpha``, ``beta``, ``n`` (stars used), ``fwhm_r50`` (1.8 x median
        half-light radius, a fallback estimate).
    """
    idx = np.flatnonzero(stars)
    if len(idx) == 0:
        raise DataError("no isolated, unsaturated bright star found to measure the PSF; check the detection "
                        "threshold, the saturation level and the focus of the exposure", code="no_psf_stars")
    if len(idx) > max_stars:
        idx = idx[np.argsort(-cat["snr"].to_numpy()[idx])[:max_stars]]
    r50 = float(np.median(cat["flux_radius"].to_numpy()[idx]))
    fwhm_r50 = 1.8 * r50
    guess = fwhm_guess or fwhm_r50
    h = int(np.clip(np.ceil(2.5 * guess), 4, 30))
    x = cat["x"].to_numpy()[idx]
    y = cat["y"].to_numpy()[idx]
    dy, dx = _disk_offsets(h + 0.5)
    dy, dx = dy[np.abs(dy) <= h], dx[np.abs(dx) <= h]
    # gather the stamps first: whole-image conversions and masking cost more than the fit
    img = np.asarray(image)
    vals, inside = _gather(img, x, y, dy, dx, np.nan)
    vals = vals.astype(np.float64)
    if mask is not None:
        mvals, _ = _gather(np.asarray(mask), x, y, dy, dx, 0)
        vals[mvals != 0] = np.nan
    if variance is not None:
        var, _ = _gather(np.asarray(variance), x, y, dy, dx, np.nan)
        var = var.astype(np.float64)
    else:
        var = np.ones_like(vals)
    if gain is not None:
        # the sources' Poisson term from the 3x3 mean of the image around each pixel, not from the pixel
        # itself: weights computed from each pixel's own noisy value favour low pixels and bias the
        # Moffat beta high (wings too faint by ~0.1%)
        smooth = np.zeros(vals.shape)
        for sy in (-1, 0, 1):
            for sx in (-1, 0, 1):
                smooth += _gather(img, x, y, dy + sy, dx + sx, 0)[0]
        var = var + np.maximum(smooth / 9.0, 0.0) / float(gain)
    good = inside & np.isfinite(vals) & np.isfinite(var) & (var > 0)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    vals = np.where(good, vals, 0.0)
    ix = np.rint(x)[:, None] + dx[None, :]
    iy = np.rint(y)[:, None] + dy[None, :]
    ns = max(1, int(subsample))
    sub = (np.arange(ns) + 0.5) / ns - 0.5
    sx = (sub[:, None] + 0 * sub[None, :]).ravel()
    sy = (0 * sub[:, None] + sub[None, :]).ravel()
    r2s = (ix - x[:, None])[..., None] + sx
    r2s = r2s**2 + ((iy - y[:, None])[..., None] + sy) ** 2

    def resid(p):
        alpha, beta = np.exp(p[0]), 1.0 + np.exp(p[1])
        m = _moffat_pix(r2s, alpha, beta)
        amp = np.sum(w * m * vals, axis=1) / np.maximum(np.sum(w * m * m, axis=1), 1e-300)
        return (np.sqrt(w) * (vals - amp[:, None] * m)).ravel()

    beta0 = 3.5
    alpha0 = guess / (2 * np.sqrt(2 ** (1 / beta0) - 1))
    res = optimize.least_squares(resid, [np.log(alpha0), np.log(beta0 - 1)], method="lm", x_scale=[0.1, 0.3])
    alpha, beta = float(np.exp(res.x[0])), float(1 + np.exp(res.x[1]))
    fwhm = 2 * alpha * np.sqrt(2 ** (1 / beta) - 1)
    if not (np.isfinite(fwhm) and 0.3 * fwhm_r50 < fwhm < 3 * fwhm_r50):
        fwhm = fwhm_r50
    return {"fwhm": float(fwhm), "alpha": alpha, "beta": beta, "n": int(len(idx)), "fwhm_r50": float(fwhm_r50)}


def aperture_correction(image, cat, stars, *, variance, mask=None, radius, total_radius, clip=3.0,
                        bkg_annulus=None, total_fraction=1.0):
    """Ratio of "total" (large-aperture) to fixed-aperture flux of point sources.

    Both fluxes are measured around the windowed centroids, optionally after subtracting a local
    sky level (clipped mean of the annulus ``bkg_annulus``), which makes the ratio insensitive to
    errors of the global background but is noisier and, in crowded fields, biased by the wings of
    neighbours. The result is the inverse-variance
    weighted, ``clip``-sigma clipped mean of the per-star ratios, divided by
    ``total_fraction``, the fraction of a point source's light inside ``total_radius`` (from a
    PSF model, see :func:`moffat_encircled_energy`; 1 by default). A moderate total radius
    (~3 FWHM) plus this small model correction is much less noisy than a huge aperture.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    cat : DataFrame
        Catalog from :func:`measure_sources`.
    stars : ndarray of bool
        Stars to use.
    variance : ndarray
        Per-pixel variance for the weights; it should not depend on the pixels' own noise
        (e.g. the sky variance), or the weighted mean is biased.
    mask : ndarray, optional
        Non-zero pixels are excluded.
    radius, total_radius : float
        Fixed and total aperture radii (pixels).
    clip : float, optional
        Sigma clipping threshold.
    bkg_annulus : (float, float), optional
        Local-sky annulus radii (pixels); None (default): no local sky (trust the image's
        background).
    total_fraction : float, optional
        Encircled energy of the PSF within ``total_radius``.

    Returns
    -------
    dict
        ``apcorr`` (multiply fixed-aperture fluxes by this), ``apcorr_err``, ``n``.
    """
    idx = np.flatnonzero(stars)
    if len(idx) == 0:
        raise DataError("no star available for the aperture correction", code="no_psf_stars")
    x = cat["x"].to_numpy()[idx]
    y = cat["y"].to_numpy()[idx]
    if bkg_annulus is None:
        sky = np.zeros(len(x))
    else:
        r_in, r_out = bkg_annulus
        sky = local_background(image, x, y, r_in=r_in, r_out=r_out, mask=mask)
        sky = np.where(np.isfinite(sky), sky, 0.0)
    f1, e1 = fixed_aperture_flux(image, x, y, radius, variance=variance, mask=mask, sky=sky)
    f2, e2 = fixed_aperture_flux(image, x, y, total_radius, variance=variance, mask=mask, sky=sky)
    ok = (f1 > 0) & (f2 > 0) & np.isfinite(f1) & np.isfinite(f2)
    if not ok.any():
        raise DataError("no star with a positive aperture flux for the aperture correction", code="no_psf_stars")
    ratio = f2[ok] / f1[ok]
    # ratio - 1 = (flux between the two radii) / f1: its noise is that of the annulus pixels, and
    # the weights must not depend on that noise (else the mean is biased): annulus variance from
    # ``variance`` (use a noise-free one, e.g. the sky variance) over f1 (independent pixels)
    err = np.sqrt(np.maximum(e2[ok] ** 2 - e1[ok] ** 2, 0) + (1e-4 * f1[ok]) ** 2) / f1[ok]
    mean, merr, used = clipped_mean(ratio, err, clip=clip)
    return {"apcorr": float(mean / total_fraction), "apcorr_err": float(merr / total_fraction),
            "n": int(used.sum()), "total_fraction": float(total_fraction)}


def moffat_encircled_energy(radius, alpha, beta):
    """Fraction of a Moffat profile's light within ``radius``: ``1 - (1 + r^2/alpha^2)^(1 - beta)``."""
    return 1.0 - (1.0 + (np.asarray(radius, float) / alpha) ** 2) ** (1.0 - beta)


def fixed_aperture_flux(image, x, y, radius, *, variance=None, mask=None, sky=None):
    """Circular-aperture flux (and error) with an optional per-source sky level subtracted."""
    data = _sep_ready(image)
    bad = None if mask is None else _bool_mask(mask)
    var = None if variance is None else _sep_ready(variance)
    f, fe, _ = sep.sum_circle(data, np.asarray(x, float), np.asarray(y, float), float(radius), var=var, mask=bad,
                              subpix=5)
    if sky is not None:
        f = f - np.asarray(sky) * np.pi * radius**2
    return f, fe


def clipped_mean(values, errors, *, clip=3.0, max_iter=10, floor=0.0):
    """Inverse-variance weighted mean with iterative sigma clipping.

    Outliers are judged against a robust scatter (1.4826 MAD of the normalised residuals,
    never below 1), so that underestimated errors do not clip good points.

    Returns
    -------
    mean, error, used : float, float, ndarray of bool
        ``error`` is the formal error scaled up by ``sqrt(reduced chi^2)`` when that exceeds 1.
    """
    v = np.asarray(values, float)
    e = np.sqrt(np.asarray(errors, float) ** 2 + floor**2)
    used = np.isfinite(v) & np.isfinite(e) & (e > 0)
    if not used.any():
        return np.nan, np.nan, used
    w = 1.0 / e**2
    mean = np.median(v[used])
    for _ in range(max_iter):
        z = (v - mean) / e
        scale = max(1.0, 1.4826 * np.median(np.abs(z[used] - np.median(z[used]))))
        new = np.isfinite(v) & np.isfinite(e) & (e > 0) & (np.abs(z) <= clip * scale)
        if new.sum() < 2:
            break
        converged = np.array_equal(new, used)
        used = new
        mean = np.sum(w[used] * v[used]) / np.sum(w[used])
        if converged:
            break
    mean = np.sum(w[used] * v[used]) / np.sum(w[used])
    err = np.sqrt(1.0 / np.sum(w[used]))
    n = int(used.sum())
    if n > 1:
        chi2 = np.sum(w[used] * (v[used] - mean) ** 2) / (n - 1)
        err *= np.sqrt(max(chi2, 1.0))
    return float(mean), float(err), used
