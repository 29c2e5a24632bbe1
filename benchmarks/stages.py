"""The measured stages (a)-(c) of the benchmark: skysnake in-process and as Snakemake runs it, against
the peers on the same files, with the accuracy checks. Each function returns a dict of results."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import metrics
import peers
import workload

SEX_APER_PX = 10.0  # aperture radius (px) compared between skysnake and SExtractor
DETECT_THRESH = 5.0  # calibrate's detect_thresh (sigma of the filtered image)
#: the apertures of (a), both sides: calibrate's catalog radii (1, 2, 3, 6" at 0.2"/px) and the compared one
#: (calibrate's 2" calibration aperture), last
APER_RADII_PX = [r / 0.2 for r in (1.0, 2.0, 3.0, 6.0)] + [SEX_APER_PX]


# ----------------------------------------------------------------------------- (a) detection + photometry


def detect_and_measure(path):
    """skysnake's detection and photometry of one raw CCD, step by step as calibrate does them (read,
    source-masked background, variance planes, sep detection, measurement: windowed centroids, half-light
    radii, the apertures ``APER_RADII_PX`` with errors, Kron fluxes, flags): returns (catalog, seconds per
    step)."""
    from astropy.io import fits

    from skysnake import ccdproc, detection

    t = {}
    t0 = time.perf_counter()
    with fits.open(path, memmap=False) as h:
        image = np.asarray(h[0].data, dtype=np.float32)
        gain, rn = float(h[0].header["GAIN"]), float(h[0].header["RDNOISE"])
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bkg = detection.estimate_background(image, mesh=128, filter_size=3)
    t["background"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sky_var = ccdproc.sky_variance(bkg.back, gain=gain, read_noise=rn)
    var = ccdproc.variance_plane(image, bkg.back, gain=gain, read_noise=rn, sky_var=sky_var)
    sub = image - bkg.back
    t["variance"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    objects = detection.detect_sources(sub, variance=sky_var, thresh=DETECT_THRESH, minarea=5)
    t["detect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat = detection.measure_sources(sub, objects, variance=var, aper_radii=APER_RADII_PX,
                                    aper_names=["1p0", "2p0", "3p0", "6p0", "cmp"], kron=True)
    t["measure"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return cat, t


def sextractor_runs():
    """The SExtractor runs of (a), by result key: the compared one detects as deep as skysnake (DETECT_THRESH is
    in units of the unfiltered noise, skysnake's threshold in units of the filtered image's) and makes the
    measurements calibrate makes; for information, the same measurements at DETECT_THRESH 5, and positions
    plus one aperture at DETECT_THRESH 5 (the comparison of the first benchmark)."""
    from skysnake import detection

    last = len(APER_RADII_PX) - 1
    return {"peer": dict(thresh=DETECT_THRESH * detection.filtered_noise(), aper_radii_px=APER_RADII_PX,
                         compare_aper=last, params=peers.SEX_CALIBRATE),
            "peer_thresh5": dict(thresh=DETECT_THRESH, aper_radii_px=APER_RADII_PX, compare_aper=last,
                                 params=peers.SEX_CALIBRATE),
            "peer_minimal": dict(thresh=DETECT_THRESH, aper_radii_px=[SEX_APER_PX], params=peers.SEX_MINIMAL)}


def stage_a(ctx, *, repeat):
    """(a) detection + photometry of one CCD in-process vs SExtractor; the calibrate job as Snakemake runs it,
    on a visit of 8 CCDs against SExtractor on the same 8 CCDs, and on a visit of 1 CCD."""
    work, cfg = ctx["work"], ctx["config"]
    path = workload.raw_path(work, workload.VISITS[0])
    peer = ctx["peers"]["sextractor"]
    runs = sextractor_runs() if peer is not None else {}
    out = {"peer": None}
    steps, walls, cats = [], {k: [] for k in runs}, {}
    detect_and_measure(path)  # warm: first-call costs (imports, sep's buffers) are not what is compared
    with tempfile.TemporaryDirectory(prefix="bench-sex-") as tmp:
        for _ in range(repeat):  # skysnake and the SExtractor runs alternate: all see the same machine load
            cat, t = detect_and_measure(path)
            steps.append(t)
            for k, kw in runs.items():
                r = peers.run_sextractor(peer, path, tmp, **kw)
                walls[k].append(r["wall"])
                cats[k] = r["catalog"]
    out["inproc_steps"] = {k: float(np.median([s[k] for s in steps])) for k in steps[0]}
    out["inproc"] = out["inproc_steps"]["total"]
    out["n_ours"] = len(cat)
    for k in runs:
        out[k] = float(np.median(walls[k]))
        out[f"n_{k}"] = len(cats[k]["x"])
    if runs:
        ours = {"x": cat["x"].to_numpy(), "y": cat["y"].to_numpy(), "flux": cat["flux_cmp"].to_numpy(),
                "fluxerr": cat["fluxerr_cmp"].to_numpy()}
        out["agreement"] = metrics.catalog_agreement(ours, cats["peer"], radius=1.0, min_snr=20.0)
    # the calibrate job as Snakemake runs it (one job per visit): a real snakemake call forcing that one job,
    # on the mosaic visit of 8 CCDs, alternating with SExtractor on the same 8 raw CCDs
    mosaic, mosaic_cfg = workload.prepare_mosaic(work)
    raws = [workload.raw_path(mosaic, workload.MOSAIC_VISIT, c) for c in workload.MOSAIC_CCDS]
    procs, jobs, logsteps, sex = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-sex-") as tmp:
        for _ in range(repeat):
            job = run_calibrate_job(mosaic, mosaic_cfg, workload.MOSAIC_VISIT)
            procs.append(job["process"])
            jobs.append(job["s"])
            logsteps.append(job["steps"])
            if peer is not None:
                sex.append(sum(peers.run_sextractor(peer, r, tmp, **runs["peer"])["wall"] for r in raws))
    out["mosaic_nccd"] = len(raws)
    out["mosaic_job_s"] = float(np.median(jobs))
    out["mosaic_peer"] = float(np.median(sex)) if sex else None
    out["mosaic_snakemake_process"] = float(np.median(procs))
    out["job_steps"] = {k: float(np.median([s.get(k, np.nan) for s in logsteps])) for k in logsteps[0]}
    # for information: the job of a visit of one CCD (the 20-visit survey's camera)
    one = [run_calibrate_job(work, cfg, workload.VISITS[0]) for _ in range(repeat)]
    out["job_s"] = float(np.median([j["s"] for j in one]))
    out["snakemake_process"] = float(np.median([j["process"] for j in one]))
    return out


def run_calibrate_job(work, cfg, visit):
    """Force the calibrate job of ``visit`` with ``snakemake --cores 1``: its benchmark wall ``s``, the wall of the
    whole ``snakemake`` ``process`` and the ``steps`` its log times (summed over its CCDs)."""
    bench = Path(work) / "results" / "benchmarks" / "calibrate" / f"{visit}.tsv"
    t0 = time.perf_counter()
    p = subprocess.run(workload.snakemake_cmd(work, f"results/calexp/{visit}", "--force", "--cores", "1",
                                              configfiles=[cfg]), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"snakemake calibrate failed:\n{p.stderr[-3000:]}")
    return {"s": read_benchmark(bench)["s"], "process": wall,
            "steps": log_steps(Path(work) / "results" / "logs" / "calibrate" / f"{visit}.log")}


def read_benchmark(path):
    """A Snakemake benchmark file's last row as a dict (``s, max_rss, cpu_time`` ...)."""
    lines = Path(path).read_text().strip().splitlines()
    head, last = lines[0].split("\t"), lines[-1].split("\t")
    row = {}
    for k, v in zip(head, last):
        try:
            row[k] = float(v)
        except ValueError:
            row[k] = v
    return row


_TIMED = re.compile(r"INFO skysnake: (?:visit \d+ ccd \d+: )?(.+?): (\d+\.\d+) s$")


def log_steps(path):
    """``{step: seconds}`` of the ``timed`` lines of a job's log (skysnake.adapter.timed), summed over the
    CCDs of a calibrate job (its lines start ``visit V ccd C: ``)."""
    out = {}
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        m = _TIMED.search(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


# ----------------------------------------------------------------------------- (b) warp one CCD


def _embed(exp, shape):
    """A warp's planes placed on the full patch grid: (image, covered-and-not-edge)."""
    from skysnake import masks

    img = np.zeros(shape, np.float32)
    good = np.zeros(shape, bool)
    if exp.is_empty:
        return img, good
    sl = (slice(exp.y0, exp.y0 + exp.image.shape[0]), slice(exp.x0, exp.x0 + exp.image.shape[1]))
    img[sl] = exp.image
    good[sl] = (exp.mask & (masks.NO_DATA | masks.EDGE)) == 0
    return img, good


def stage_b(ctx, *, repeat):
    """(b) one CCD onto a 4000x4000 patch, Lanczos3, 1 thread: throughput, flux conservation, noise."""
    import numba

    from skysnake import warp

    work = ctx["work"]
    ccd = workload.load_ccd(work, workload.VISITS[0])
    exp = workload.as_exposure(ccd)
    n = 4000
    twcs, thdr = workload.patch_grid(n)
    mpix = ccd["image"].size / 1e6
    numba.set_num_threads(1)
    t0 = time.perf_counter()
    warp.warp_exposures([exp], target_wcs=twcs, target_shape=(n, n))  # first call: numba cache load
    first = time.perf_counter() - t0
    r = metrics.timed_runs(lambda: warp.warp_exposures([exp], target_wcs=twcs, target_shape=(n, n)), repeat=repeat)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    ours_img, ours_good = _embed(r["result"], (n, n))
    out = {"first_call": first, "wall": r["median"], "mpix": mpix, "throughput": mpix / r["median"]}
    # accuracy: isolated stars' aperture flux in and out, sky noise in and out
    xs, ys = workload.isolated_stars(work, ccd)
    sky = ccd["wcs"].all_pix2world(xs, ys, 0)
    xo, yo = twcs.all_world2pix(sky[0], sky[1], 0)
    src = exp.image
    out["n_stars"] = int(len(xs))
    out["flux"] = metrics.flux_ratio(src, (xs, ys), ours_img, (xo, yo), radius=12.0)
    noise_in = metrics.noise_stats(src)
    out["noise_in"] = noise_in
    peer = ctx["peers"]["swarp"]
    out["peer"] = None
    with tempfile.TemporaryDirectory(prefix="bench-swarp-") as tmp:
        good = ours_good
        if peer is not None:
            f = workload.write_sky_subtracted(ccd, Path(tmp) / "in.fits")
            walls = []
            for _ in range(repeat):
                pr = peers.run_swarp(peer, [f], Path(tmp) / "out.fits", thdr, nthreads=1)
                walls.append(pr["wall"])
            out["peer"] = float(np.median(walls))
            out["peer_throughput"] = mpix / out["peer"]
            good = good & (pr["image"] != 0)
            good = ~ndimage_grow(~good, 6)
            out["peer_flux"] = metrics.flux_ratio(src, (xs, ys), pr["image"], (xo, yo), radius=12.0)
            out["peer_noise"] = metrics.noise_stats(pr["image"], valid=good)
        else:
            good = ~ndimage_grow(~good, 6)
        out["noise"] = metrics.noise_stats(ours_img, valid=good)
    return out


def ndimage_grow(mask, n):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=int(n))


# ----------------------------------------------------------------------------- (c) coadd 8 CCDs


def stage_c(ctx, *, repeat, nccd=8):
    """(c) 8 overlapping CCDs warped and combined into a 4000x4000 patch, 2 threads, vs SWarp (2 threads)."""
    import numba

    from skysnake import coadd, warp

    work = ctx["work"]
    ccds = [workload.load_ccd(work, v) for v in workload.VISITS[:nccd]]
    exps = [workload.as_exposure(c) for c in ccds]
    n = 4000
    twcs, thdr = workload.patch_grid(n)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))

    def run():
        warps = [warp.warp_exposures([e], target_wcs=twcs, target_shape=(n, n)) for e in exps]
        return coadd.coadd_warps(warps, shape=(n, n), wcs=twcs, reject_sigma=5.0)

    r = metrics.timed_runs(run, repeat=repeat, warmup=1)
    out = {"wall": r["median"], "nccd": nccd, "peer": None}
    peer = ctx["peers"]["swarp"]
    if peer is not None:
        with tempfile.TemporaryDirectory(prefix="bench-swarp8-") as tmp:
            files = [workload.write_sky_subtracted(c, Path(tmp) / f"in{i}.fits") for i, c in enumerate(ccds)]
            walls = []
            for _ in range(repeat):
                walls.append(peers.run_swarp(peer, files, Path(tmp) / "coadd.fits", thdr, nthreads=2)["wall"])
            out["peer"] = float(np.median(walls))
    return out
