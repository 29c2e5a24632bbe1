"""Combine the warps of one filter on a patch into a coadd.

The coadd is a weighted mean with ONE scalar weight per warp and a conservative
outlier rejection that only acts on pixels whose neighbourhood is empty sky.

Why one weight per warp (``1 / median(variance)``) rather than per-pixel
inverse variance: a warp's variance plane includes the Poisson noise of the
sources themselves. On a star, the warps in which the star happens to be
fainter (a downward noise fluctuation, or a worse transparency before
calibration) have a smaller variance and so a larger inverse-variance weight;
the weighted mean is then biased low, by an amount that grows with the source
brightness. A single weight per warp, set by its typical (sky-dominated)
variance, keeps the optimal noise weighting for faint sources while leaving
every source's flux unbiased, and keeps the coadd PSF a fixed linear
combination of the input PSFs.

Memory: the output planes live on the full patch grid; the inputs are read in
blocks of rows (``warp.image[r0:r1]`` etc.), so warps whose planes are read from
their files on demand (``io.read_exposure(path, lazy=True)``: each indexing reads
just those rows and keeps nothing resident) are never loaded whole, and the job
holds one block at a time whatever the number of warps. Each block holds the
values of all overlapping warps (the rejection needs them) and its statistics
and rejection maps (~50 bytes a pixel), about ``block_bytes`` together, plus a
few rows of context above and below (``protect_radius + 2``), so that the result
does not depend on where the blocks start. (Memory maps, ``memmap=True``, would
work too, but every page read stays in the process's resident memory until the
maps are closed: all the warps, in the end.)
"""

from __future__ import annotations

import json
import math

import numba
import numpy as np
from numba import prange
from scipy import ndimage

from . import masks
from .errors import DataError
from .io import Exposure

__all__ = ["coadd_warps", "warp_weights"]

_SAMPLE_PIXELS = 2_000_000  # pixels sampled per warp for the median variance
_INPUT_BYTES = 12  # bytes per pixel of one input in a block: value f4, variance f4, mask i4
_MAP_BYTES = 50  # bytes per pixel of a block's statistics and rejection maps (_stats_pass, _rejectable)


def _meta_get(meta, key):
    for k, v in meta.items():
        if str(k).upper() == key:
            return v
    return None


def _median_variance(w, unusable):
    """Median variance over a warp's good pixels, from a deterministic row subsample."""
    ny, nx = w.image.shape
    step = max(1, int(ny * nx // _SAMPLE_PIXELS))
    vals = []
    for r0 in range(0, ny, 256 * step):
        rows = slice(r0, min(r0 + 256 * step, ny), step)
        var = np.asarray(w.variance[rows], dtype=np.float32)
        msk = np.asarray(w.mask[rows])
        good = ((msk & unusable) == 0) & np.isfinite(var) & (var > 0) & np.isfinite(w.image[rows])
        vals.append(var[good])
    vals = np.concatenate(vals) if vals else np.empty(0, np.float32)
    return float(np.median(vals)) if vals.size else math.nan


def warp_weights(warps, *, weights="median_variance", unusable=masks.UNUSABLE):
    """One scalar weight per warp.

    Parameters
    ----------
    warps : list of Exposure
        Non-empty warps.
    weights : {"median_variance", "equal"} or sequence of float
        ``"median_variance"``: ``1 / median(variance)`` over the warp's good
        pixels; ``"equal"``: 1 for every warp; or explicit weights.
    unusable : int
        Mask bits that exclude a pixel from the median.

    Returns
    -------
    numpy.ndarray
        Weights (float64, >= 0; 0 for a warp without any good pixel).
    """
    n = len(warps)
    if isinstance(weights, str):
        if weights == "equal":
            return np.ones(n)
        if weights != "median_variance":
            raise ValueError(f"unknown weights {weights!r}: use 'median_variance', 'equal' or a list of floats")
        med = np.array([_median_variance(w, unusable) for w in warps])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isfinite(med) & (med > 0), 1.0 / med, 0.0)
    out = np.asarray(weights, dtype=float)
    if out.shape != (n,) or not np.all(np.isfinite(out)) or np.any(out < 0):
        raise ValueError(f"weights must be {n} finite non-negative numbers, got {weights!r}")
    return out


# --------------------------------------------------------------------------- numba kernels


@numba.njit(cache=True, inline="always")
def _good(v, s, m, unusable):
    return (m & unusable) == 0 and np.isfinite(v) and np.isfinite(s) and s > 0.0


@numba.njit(cache=True, inline="always")
def _median_sorted(buf, a, b):
    k = b - a
    h = a + k // 2
    return buf[h] if k % 2 else 0.5 * (buf[h - 1] + buf[h])


@numba.njit(cache=True, inline="always")
def _rank_sort(vals, k, out):
    """Sort ``vals[:k]`` into ``out[:k]`` by counting ranks: O(k^2) but branch-free and
    vectorised, twice as fast as insertion sort for the ~3-50 values of a pixel."""
    for j in range(k):
        v = vals[j]
        r = 0
        for m in range(k):
            r += (vals[m] < v) | ((vals[m] == v) & (m < j))
        out[r] = v


@numba.njit(cache=True, parallel=True)
def _stats_pass(img, var, msk, unusable, med, smed2, lo, hi, slo2, ngood):
    """Per-pixel statistics of the good inputs.

    ``med``/``smed2``: median and its variance, ``(pi / 2) / sum(1 / var)``.
    An input is an outlier if ``|v - med| > reject_sigma * sqrt(var + smed2)``:
    the median's own noise matters with few inputs (with 3 inputs and one
    outlier, the median is the larger of the two good values).
    ``lo``/``hi``: median of the good inputs without the highest/lowest one,
    with variance ``slo2 = smed2 * k / (k - 1)`` (k good inputs). A single
    positive (negative) transient cannot raise ``lo`` (lower ``hi``), while a
    real source, present in every input, does: unlike the median, they tell
    reliably whether a pixel is empty sky even where a transient lies.
    """
    n, hb, W = img.shape
    for r in prange(hb):
        # gather the good values of each pixel of the row into contiguous buffers (input-major
        # loops stream through each input row), then sort each pixel's few values in cache
        vals = np.empty((W, max(n, 1)), dtype=np.float32)
        buf = np.empty(max(n, 1), dtype=np.float32)
        cnt = np.zeros(W, dtype=np.int64)
        sinv = np.zeros(W)
        for i in range(n):
            for c in range(W):
                v = img[i, r, c]
                s = var[i, r, c]
                if _good(v, s, msk[i, r, c], unusable):
                    vals[c, cnt[c]] = v
                    cnt[c] += 1
                    sinv[c] += 1.0 / s
        for c in range(W):
            k = cnt[c]
            ngood[r, c] = k
            if k == 0:
                med[r, c] = 0.0
                smed2[r, c] = 0.0
                lo[r, c] = 0.0
                hi[r, c] = 0.0
                slo2[r, c] = 0.0
                continue
            _rank_sort(vals[c], k, buf)
            m = _median_sorted(buf, 0, k)
            med[r, c] = m
            sm2 = 0.5 * math.pi / sinv[c]
            smed2[r, c] = sm2
            if k >= 2:
                lo[r, c] = _median_sorted(buf, 0, k - 1)
                hi[r, c] = _median_sorted(buf, 1, k)
                slo2[r, c] = sm2 * k / (k - 1)
            else:
                lo[r, c] = m
                hi[r, c] = m
                slo2[r, c] = sm2


def _rejectable(lo, hi, slo2, ngood, *, sky_sigma, core_sigma, protect_radius):
    """Pixels where outlier rejection may act: empty sky, away from any source.

    A pixel is rejectable if it has >= 3 good inputs, is consistent with
    empty sky (``lo < sky_sigma * sigma`` and ``hi > -sky_sigma * sigma``,
    ``sigma**2 = slo2``), and no pixel within ``protect_radius`` belongs to a
    source core: a pixel where the 3x3-smoothed ``lo`` is significantly
    positive or ``hi`` significantly negative (at ``core_sigma``, in units of
    the smoothed ``sigma``). Smoothing makes the core map extend far into the
    faint wings of stars and galaxies, where warps taken in different seeing
    differ the most; ``lo``/``hi`` keep a transient in one input (e.g. a
    satellite trail, including its wings below the rejection threshold) from
    masquerading as a source.
    """
    sigma = np.sqrt(slo2)
    sky = (lo < sky_sigma * sigma) & (hi > -sky_sigma * sigma)
    s_sig = np.sqrt(ndimage.uniform_filter(slo2, size=3, mode="nearest")) / 3.0
    s_lo = ndimage.uniform_filter(lo, size=3, mode="nearest")
    s_hi = ndimage.uniform_filter(hi, size=3, mode="nearest")
    core = ((s_lo > core_sigma * s_sig) | (s_hi < -core_sigma * s_sig)).astype(np.uint8)
    if protect_radius > 0:
        core = ndimage.maximum_filter(core, size=2 * protect_radius + 1, mode="nearest")
    return (sky & (core == 0) & (ngood >= 3)).astype(np.uint8)


@numba.njit(cache=True, inline="always")
def _is_outlier(img, var, msk, unusable, med, smed2, rejectable, reject_sigma, i, r, c):
    """Sign (+1/-1) of input ``i``'s rejectable deviation at (r, c), 0 if not rejected there."""
    v = img[i, r, c]
    s = var[i, r, c]
    if rejectable[r, c] == 0 or not _good(v, s, msk[i, r, c], unusable):
        return 0
    d = v - med[r, c]
    if abs(d) > reject_sigma * math.sqrt(s + smed2[r, c]):
        return 1 if d > 0 else -1
    return 0


@numba.njit(cache=True, parallel=True)
def _combine(img, var, msk, wts, unusable, reject_sigma, grow_sigma, med, smed2, rejectable, halo,
             out_img, out_var, out_msk, out_n, nodata, clipped, rejected):
    """Weighted mean with rejection; an input is also rejected where it deviates by more than
    ``grow_sigma`` (same sign) next to a pixel where it was rejected (grows trails' wings).

    Loops run input-major within each row (streaming through each input row) and keep
    per-column running sums.
    """
    n, hb, W = img.shape
    nrow = out_img.shape[0]
    for r in prange(nrow):
        rr = r + halo
        rej = np.zeros((W, max(n, 1)), dtype=np.bool_)
        ngood = np.zeros(W, dtype=np.int64)
        nrej = np.zeros(W, dtype=np.int64)
        # pass 1: outliers, only at rejectable pixels
        for i in range(n):
            for c in range(W):
                if rejectable[rr, c] == 0:
                    continue
                v = img[i, rr, c]
                s = var[i, rr, c]
                if not _good(v, s, msk[i, rr, c], unusable):
                    continue
                ngood[c] += 1
                d = v - med[rr, c]
                sd = math.sqrt(s + smed2[rr, c])
                if abs(d) > reject_sigma * sd:
                    rej[c, i] = True
                elif abs(d) > grow_sigma * sd:
                    sign = 1 if d > 0 else -1
                    for dy in range(-1, 2):
                        y = rr + dy
                        if y < 0 or y >= hb:
                            continue
                        for dx in range(-1, 2):
                            x = c + dx
                            if (dy == 0 and dx == 0) or x < 0 or x >= W:
                                continue
                            if _is_outlier(img, var, msk, unusable, med, smed2, rejectable, reject_sigma,
                                           i, y, x) == sign:
                                rej[c, i] = True
                if rej[c, i]:
                    nrej[c] += 1
        for c in range(W):
            if nrej[c] > 0 and nrej[c] >= ngood[c]:  # never reject everything
                nrej[c] = 0
                for i in range(n):
                    rej[c, i] = False
        # pass 2: weighted sums of the remaining good inputs
        sw = np.zeros(W)
        swv = np.zeros(W)
        sw2v = np.zeros(W)
        ncontrib = np.zeros(W, dtype=np.int64)
        bits = np.zeros(W, dtype=np.int32)
        dropped = np.zeros(W, dtype=np.int32)
        clip = np.zeros(W, dtype=np.bool_)
        for i in range(n):
            w = wts[i]
            for c in range(W):
                v = img[i, rr, c]
                s = var[i, rr, c]
                mb = msk[i, rr, c]
                if not _good(v, s, mb, unusable):
                    if (mb & nodata) == 0:  # covered but unusable here
                        clip[c] = True
                        dropped[c] |= mb
                    continue
                if rej[c, i]:
                    continue
                sw[c] += w
                swv[c] += w * v
                sw2v[c] += w * w * s
                bits[c] |= mb
                ncontrib[c] += 1
        for c in range(W):
            b = bits[c]
            if ncontrib[c] == 0:
                out_img[r, c] = 0.0
                out_var[r, c] = 0.0
                b = nodata | dropped[c]
            else:
                out_img[r, c] = swv[c] / sw[c]
                out_var[r, c] = sw2v[c] / (sw[c] * sw[c])
            if clip[c]:
                b |= clipped
            if nrej[c] > 0:
                b |= rejected
            out_msk[r, c] = b
            out_n[r, c] = ncontrib[c]


# --------------------------------------------------------------------------- driver


def _check_placement(w, wcs, i):
    if w.image.ndim != 2 or w.mask.shape != w.image.shape or w.variance.shape != w.image.shape:
        raise ValueError(f"warp #{i}: image, mask and variance must be 2-D arrays of one shape")
    if w.wcs is not None and wcs is not None:
        # the warp's WCS must be the patch WCS shifted by (x0, y0)
        crpix = np.asarray(w.wcs.wcs.crpix) + [w.x0, w.y0]
        same = (np.allclose(crpix, wcs.wcs.crpix, atol=1e-6) and np.allclose(w.wcs.wcs.crval, wcs.wcs.crval)
                and np.allclose(w.wcs.pixel_scale_matrix, wcs.pixel_scale_matrix, rtol=1e-9, atol=0))
        if not same:
            raise DataError(f"warp #{i} is not on this patch's pixel grid (its WCS differs from the patch WCS "
                            f"shifted by x0={w.x0}, y0={w.y0}); rerun its warp for this patch", code="wrong_grid")


def coadd_warps(warps, *, shape, wcs, reject_sigma=5.0, unusable=masks.UNUSABLE, weights="median_variance",
                sky_sigma=4.0, core_sigma=5.0, protect_radius=3, grow_sigma=2.0, block_bytes=256 * 2**20):
    """Coadd the warps of one filter on a patch.

    Parameters
    ----------
    warps : list of Exposure
        Warps of ONE filter onto the same patch grid, each on its own sub-box
        (``x0, y0``); empty warps are skipped. Planes may be arrays, memory maps
        or :class:`skysnake.io.FitsPlane` (read block by block).
    shape : tuple of int
        ``(ny, nx)`` of the patch grid.
    wcs : astropy.wcs.WCS
        WCS of the patch grid (the warps' WCS shifted by their ``x0, y0``).
    reject_sigma : float or None
        An input is rejected where it deviates from the per-pixel median of
        the good inputs by more than ``reject_sigma * sqrt(var + var_median)``
        (``var_median = (pi/2) / sum(1/var)``: with 3 inputs the median is
        itself noisy), only where at least 3 inputs are good and the pixel is
        empty sky, away from any source (see :func:`_rejectable`): the median
        of the inputs without the highest (lowest) one is below ``sky_sigma``
        (above ``-sky_sigma``) sigma, and no source core lies within
        ``protect_radius`` pixels. So transients on sky (cosmic-ray remnants,
        satellite trails, asteroids) are removed, while stars and galaxies,
        whose profiles differ between warps taken in different seeing, are
        never clipped, faint wings included. ``None`` disables rejection.
    unusable : int
        Input pixels with any of these bits (or NO_DATA, or a zero/non-finite
        variance or value) get zero weight.
    weights : {"median_variance", "equal"} or sequence of float
        One scalar weight per warp (see :func:`warp_weights` and the module
        docstring for why not per-pixel inverse variance). An explicit
        sequence has one entry per element of ``warps`` (empty ones included).
    sky_sigma : float
        Per-pixel threshold (in sigma of the mean) of the empty-sky test.
    core_sigma : float
        Threshold of the smoothed significance that marks source cores.
    protect_radius : int
        Pixels within this radius (a square) of a source core are never rejected.
    grow_sigma : float
        Next to a pixel where an input was rejected, that input is also
        rejected if it deviates (same sign) by more than ``grow_sigma`` sigma:
        this removes the low-level wings of trails. ``inf`` disables it.
    block_bytes : int
        Approximate memory of one block of rows: the stack of input values
        (12 bytes a pixel per input) and the block's statistics maps.

    Returns
    -------
    Exposure
        On the full patch grid (``x0 = y0 = 0``, ``wcs``): ``image`` (float32,
        weighted mean), ``variance`` (float32, ``sum(w^2 var) / sum(w)^2``),
        ``mask`` (int32: OR of the contributing inputs' bits; ``REJECTED``
        where an input was rejected as an outlier; ``CLIPPED`` where a warp
        covering the pixel was dropped for an unusable bit; where no input
        contributed: ``NO_DATA`` plus the dropped inputs' bits, with image
        and variance 0), and ``extra["NIMAGE"]`` (int16, inputs contributing
        per pixel). ``meta``: ``NINPUT``, ``VISITS`` (the inputs' ``VISIT``) and
        ``WEIGHTS`` (normalised to sum 1) as JSON lists, ``FILTER``, ``BUNIT``, ``FWHM`` (weighted
        mean of the inputs' ``FWHM``) and ``EXPTIME`` (sum) when the inputs
        carry them. With no usable warp, every pixel is ``NO_DATA`` and
        ``NINPUT = 0``.

    Raises
    ------
    DataError
        If the warps mix filters or a warp is not on the patch grid.
    """
    ny, nx = (int(s) for s in shape)
    all_warps = list(warps)
    if not isinstance(weights, str):
        weights = list(weights)
        if len(weights) != len(all_warps):
            raise ValueError(f"got {len(weights)} weights for {len(all_warps)} warps")
        keep = [i for i, w in enumerate(all_warps) if w is not None and not w.is_empty]
        weights = [weights[i] for i in keep]
    use = [w for w in all_warps if w is not None and not w.is_empty]
    for i, w in enumerate(use):
        _check_placement(w, wcs, i)
    filters = {str(f).strip() for f in (_meta_get(w.meta, "FILTER") for w in use) if f is not None}
    if len(filters) > 1:
        raise DataError(f"the warps of one coadd mix filters {sorted(filters)}; coadd each filter separately",
                        code="mixed_filters")
    unusable = int(unusable) | masks.NO_DATA
    wts = warp_weights(use, weights=weights, unusable=unusable)
    sel = [i for i in range(len(use)) if wts[i] > 0]
    use = [use[i] for i in sel]
    wts = wts[sel]

    out_img = np.zeros((ny, nx), dtype=np.float32)
    out_var = np.zeros((ny, nx), dtype=np.float32)
    out_msk = np.full((ny, nx), masks.NO_DATA, dtype=np.int32)
    out_n = np.zeros((ny, nx), dtype=np.int16)

    # rows of context a block needs: the rejectable map of row r depends on rows r +- (protect_radius + 1)
    # (3x3 smoothing, then the protection filter), and the grow step reads it on rows r +- 1
    halo = int(protect_radius) + 2 if reject_sigma is not None else 0
    rsig = float(reject_sigma) if reject_sigma is not None else np.inf
    # row extents of the warps on the patch grid
    ext = [(max(w.y0, 0), min(w.y0 + w.image.shape[0], ny)) for w in use]
    nmax = max(len(use), 1)
    block = max(8, int(block_bytes // (nx * (nmax * _INPUT_BYTES + _MAP_BYTES))))
    # the stack of input values, allocated once for all blocks (fresh arrays would be paged in again each time)
    cap = nmax * min(block + 2 * halo, ny) * nx
    stack = (np.empty(cap, np.float32), np.empty(cap, np.float32), np.empty(cap, np.int32))
    for r0 in range(0, ny, block):
        r1 = min(r0 + block, ny)
        h0, h1 = max(r0 - halo, 0), min(r1 + halo, ny)
        idx = [i for i, (a, b) in enumerate(ext) if a < h1 and b > h0]
        if not idx:
            continue
        n = len(idx)
        # values are only read where the mask is not NO_DATA: fill just the uncovered parts
        img, var, msk = (a[: n * (h1 - h0) * nx].reshape(n, h1 - h0, nx) for a in stack)
        for k, i in enumerate(idx):
            w = use[i]
            wy, wx = w.image.shape
            ya, yb = max(h0, w.y0), min(h1, w.y0 + wy)
            xa, xb = max(0, w.x0), min(nx, w.x0 + wx)
            if ya >= yb or xa >= xb:
                msk[k] = masks.NO_DATA
                continue
            src = (slice(ya - w.y0, yb - w.y0), slice(xa - w.x0, xb - w.x0))
            dst = (k, slice(ya - h0, yb - h0), slice(xa, xb))
            img[dst] = w.image[src]
            var[dst] = w.variance[src]
            msk[dst] = w.mask[src]
            msk[k, : ya - h0] = masks.NO_DATA
            msk[k, yb - h0 :] = masks.NO_DATA
            msk[k, ya - h0 : yb - h0, :xa] = masks.NO_DATA
            msk[k, ya - h0 : yb - h0, xb:] = masks.NO_DATA
        bw = np.ascontiguousarray(wts[idx])
        med = np.zeros((h1 - h0, nx), dtype=np.float32)
        smed2 = np.zeros((h1 - h0, nx), dtype=np.float32)
        if reject_sigma is not None and n >= 3:
            lo = np.empty((h1 - h0, nx), dtype=np.float32)
            hi = np.empty((h1 - h0, nx), dtype=np.float32)
            slo2 = np.empty((h1 - h0, nx), dtype=np.float32)
            ngood = np.empty((h1 - h0, nx), dtype=np.int16)
            _stats_pass(img, var, msk, unusable, med, smed2, lo, hi, slo2, ngood)
            ok = _rejectable(lo, hi, slo2, ngood, sky_sigma=sky_sigma, core_sigma=core_sigma,
                             protect_radius=int(protect_radius))
            del lo, hi, slo2, ngood
        else:
            ok = np.zeros((h1 - h0, nx), dtype=np.uint8)
        rows = slice(r0, r1)
        _combine(img, var, msk, bw, unusable, rsig, float(grow_sigma), med, smed2, ok, r0 - h0,
                 out_img[rows], out_var[rows], out_msk[rows], out_n[rows],
                 masks.NO_DATA, masks.CLIPPED, masks.REJECTED)
        del img, var, msk

    meta = {"NINPUT": len(use)}
    visits = [_meta_get(w.meta, "VISIT") for w in use]
    meta["VISITS"] = json.dumps([v.item() if hasattr(v, "item") else v for v in visits])
    meta["WEIGHTS"] = json.dumps([round(float(x), 6) for x in (wts / wts.sum() if len(wts) else wts)])
    if filters:
        meta["FILTER"] = filters.pop()
    bunit = {str(_meta_get(w.meta, "BUNIT")) for w in use if _meta_get(w.meta, "BUNIT") is not None}
    if len(bunit) == 1:
        meta["BUNIT"] = bunit.pop()
    fwhm = np.array([_float_or_nan(_meta_get(w.meta, "FWHM")) for w in use])
    ok = np.isfinite(fwhm) & (fwhm > 0)
    if ok.any():
        meta["FWHM"] = float(np.sum(wts[ok] * fwhm[ok]) / np.sum(wts[ok]))
    exptime = np.array([_float_or_nan(_meta_get(w.meta, "EXPTIME")) for w in use])
    if use and np.all(np.isfinite(exptime)):
        meta["EXPTIME"] = float(exptime.sum())
    return Exposure(image=out_img, mask=out_msk, variance=out_var, wcs=wcs, meta=meta, x0=0, y0=0,
                    extra={"NIMAGE": out_n})


def _float_or_nan(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
