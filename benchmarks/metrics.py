"""Measuring functions of the benchmark: timing, accuracy metrics, verdicts, tables.

Pure functions on numpy arrays and plain records (no Snakemake, no peer tools), so that
``tests/test_bench.py`` checks them on analytic inputs.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def timed_runs(fn, *, repeat=3, warmup=0):
    """Call ``fn()`` ``warmup`` times untimed, then ``repeat`` times timed.

    Returns
    -------
    dict
        ``median, min, times`` (wall seconds, ``time.perf_counter``) and ``result`` (the last call's).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(int(repeat), 1)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "times": times, "result": result}


def robust_sigma(values):
    """1.4826 x median absolute deviation of the finite values (NaN if there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def sky_pixels(image, *, valid=None, clip=5.0, grow=3):
    """Boolean map of source-free sky pixels: within ``clip`` robust sigma of the median, with every
    pixel above ``clip`` sigma (and invalid pixels) grown by ``grow`` pixels excluded."""
    img = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(img) if valid is None else (np.asarray(valid, bool) & np.isfinite(img))
    med = float(np.median(img[ok]))
    sig = robust_sigma(img[ok][:: max(1, ok.sum() // 2_000_000)])
    bad = ~ok | (np.abs(img - med) > clip * sig)
    if grow > 0:
        bad = ndimage.binary_dilation(bad, iterations=int(grow))
    return ~bad


def noise_stats(image, *, valid=None, clip=5.0, grow=3):
    """Pixel-noise statistics of the sky of an image.

    Parameters
    ----------
    image : ndarray
        2-D image (sources allowed: pixels beyond ``clip`` sigma, grown by ``grow``, are left out).
    valid : ndarray of bool, optional
        Pixels that hold data (e.g. a warp's covered area).

    Returns
    -------
    dict
        ``rms`` (standard deviation of the sky pixels), ``corr_x, corr_y`` (correlation
        coefficient of horizontally / vertically adjacent sky pixels: 0 for white noise),
        ``n`` (sky pixels used).
    """
    img = np.asarray(image, dtype=np.float64)
    sky = sky_pixels(img, valid=valid, clip=clip, grow=grow)
    vals = img[sky]
    if vals.size < 100:
        return {"rms": float("nan"), "corr_x": float("nan"), "corr_y": float("nan"), "n": int(vals.size)}
    mean = float(vals.mean())
    rms = float(vals.std())
    d = img - mean

    def corr(a, b, ma, mb):
        both = ma & mb
        if both.sum() < 100:
            return float("nan")
        return float(np.mean(a[both] * b[both]) / rms**2)

    return {"rms": rms, "corr_x": corr(d[:, :-1], d[:, 1:], sky[:, :-1], sky[:, 1:]),
            "corr_y": corr(d[:-1, :], d[1:, :], sky[:-1, :], sky[1:, :]), "n": int(vals.size)}


def aperture_sums(image, x, y, radius):
    """Sum of ``image`` within ``radius`` pixels of each (x, y) (0-based pixel centres; whole pixels whose
    centre lies inside). NaN where the aperture leaves the image."""
    img = np.asarray(image)
    ny, nx = img.shape
    r = float(radius)
    ir = int(math.ceil(r))
    oy, ox = np.mgrid[-ir:ir + 1, -ir:ir + 1]
    out = np.full(len(x), np.nan)
    for k, (xc, yc) in enumerate(zip(np.asarray(x, float), np.asarray(y, float))):
        ix, iy = int(round(xc)), int(round(yc))
        if ix - ir < 0 or iy - ir < 0 or ix + ir >= nx or iy + ir >= ny:
            continue
        inside = (ox + ix - xc) ** 2 + (oy + iy - yc) ** 2 <= r * r
        out[k] = float(img[iy - ir:iy + ir + 1, ix - ir:ix + ir + 1][inside].sum(dtype=np.float64))
    return out


def flux_ratio(in_image, in_xy, out_image, out_xy, *, radius, min_flux=0.0):
    """Flux conservation of a resampling: median over sources of (aperture sum in the output) /
    (aperture sum in the input), with the same sky positions given as pixel coordinates in each.

    Returns
    -------
    dict
        ``median`` (NaN if no source qualifies), ``n`` (sources used: both apertures inside and the
        input sum above ``min_flux``), ``mad`` (median absolute deviation of the ratios).
    """
    a = aperture_sums(in_image, in_xy[0], in_xy[1], radius)
    b = aperture_sums(out_image, out_xy[0], out_xy[1], radius)
    ok = np.isfinite(a) & np.isfinite(b) & (a > min_flux)
    if not ok.any():
        return {"median": float("nan"), "n": 0, "mad": float("nan")}
    r = b[ok] / a[ok]
    med = float(np.median(r))
    return {"median": med, "n": int(ok.sum()), "mad": float(np.median(np.abs(r - med)))}


def match_positions(x1, y1, x2, y2, *, radius):
    """Nearest-neighbour match of two position lists within ``radius`` (one-to-one: each point of the
    second list is used once, closest pair first). Returns index arrays ``(i1, i2)``."""
    p1 = np.column_stack([np.asarray(x1, float), np.asarray(y1, float)])
    p2 = np.column_stack([np.asarray(x2, float), np.asarray(y2, float)])
    if len(p1) == 0 or len(p2) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d, j = cKDTree(p2).query(p1, distance_upper_bound=radius)
    i = np.flatnonzero(np.isfinite(d))
    order = i[np.argsort(d[i], kind="stable")]
    used, i1, i2 = set(), [], []
    for k in order:
        if j[k] not in used:
            used.add(int(j[k]))
            i1.append(int(k))
            i2.append(int(j[k]))
    return np.asarray(i1, int), np.asarray(i2, int)


def catalog_agreement(ours, peer, *, radius=1.0, min_snr=20.0):
    """Compare two detection catalogs of the same image.

    ``ours`` and ``peer`` are dicts of arrays with ``x, y`` (0-based), ``flux`` and ``fluxerr``
    (same aperture). Returns ``n_ours, n_peer``, ``frac_peer_matched`` (peer detections with
    S/N >= ``min_snr`` that we also detect), ``frac_ours_matched`` (ours with S/N >= ``min_snr``
    the peer also detects), ``flux_ratio`` (median ours / peer over matched pairs with S/N >=
    ``min_snr`` in both), ``n_flux``.
    """
    i1, i2 = match_positions(ours["x"], ours["y"], peer["x"], peer["y"], radius=radius)

    def snr(c):
        f, e = np.asarray(c["flux"], float), np.asarray(c["fluxerr"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(e > 0, f / e, 0.0)

    s1, s2 = snr(ours), snr(peer)
    m1 = np.zeros(len(s1), bool)
    m1[i1] = True
    m2 = np.zeros(len(s2), bool)
    m2[i2] = True
    bright1, bright2 = s1 >= min_snr, s2 >= min_snr
    both = (s1[i1] >= min_snr) & (s2[i2] >= min_snr)
    f1, f2 = np.asarray(ours["flux"], float)[i1][both], np.asarray(peer["flux"], float)[i2][both]
    return {"n_ours": int(len(s1)), "n_peer": int(len(s2)),
            "frac_peer_matched": float(m2[bright2].mean()) if bright2.any() else float("nan"),
            "frac_ours_matched": float(m1[bright1].mean()) if bright1.any() else float("nan"),
            "flux_ratio": float(np.median(f1 / f2)) if both.any() else float("nan"), "n_flux": int(both.sum())}


def cpu_efficiency(jobs, *, wall, cores):
    """Sum of the jobs' CPU time over the cores' capacity during ``wall`` seconds.

    ``jobs`` is a sequence of dicts with ``cpu_time`` (s). Returns a fraction (1 = every core busy)."""
    if wall <= 0 or cores <= 0:
        raise ValueError(f"wall ({wall}) and cores ({cores}) must be positive")
    return float(sum(float(j["cpu_time"]) for j in jobs) / (wall * cores))


def overhead_share(jobs, *, wall, cores):
    """Share of the cores' capacity not spent in the jobs' science steps.

    ``jobs``: dicts with ``s`` (the job's wall, from its Snakemake benchmark file) and ``compute``
    (seconds its log's timed steps add up to). Per job, ``s - compute`` is process start-up,
    imports and unlogged glue; ``cores x wall - sum(s)`` is time no job ran on a core
    (scheduling, DAG building, idle). Returns ``startup, idle, total`` as fractions of
    ``cores x wall``.
    """
    cap = float(wall) * float(cores)
    s = sum(float(j["s"]) for j in jobs)
    startup = sum(max(float(j["s"]) - float(j["compute"]), 0.0) for j in jobs)
    idle = max(cap - s, 0.0)
    return {"startup": startup / cap, "idle": idle / cap, "total": (startup + idle) / cap}


def linear_fit(x, y):
    """Least-squares line y = a + b x. Returns ``slope, intercept`` and ``max_rel_resid`` (largest
    |residual| / y): how far from linear the growth is."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    return {"slope": float(b), "intercept": float(a), "max_rel_resid": float(np.max(np.abs(resid) / np.abs(y)))}


def verdict(value, target, op):
    """"PASS" / "FAIL" of ``value op target`` (op one of "<=", ">="), "n/a" when the value is missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if op == "<=":
        return "PASS" if value <= target else "FAIL"
    if op == ">=":
        return "PASS" if value >= target else "FAIL"
    raise ValueError(f"unknown comparison {op!r}")


def fmt(v, digits=3):
    """A table cell: numbers to ``digits`` significant digits, None as "-", strings as is."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"


def markdown_table(headers, rows):
    """A GitHub-flavoured markdown table (cells through :func:`fmt`; ``|`` escaped)."""
    def cell(v):
        return fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
