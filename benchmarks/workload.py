"""The benchmark's data: realistic CCDs made by skysnake's own simulated survey, through the workflow.

One camera of a single 2048x4096 CCD at 0.2"/px, plain TAN WCS (no distortion, so that SWarp,
which does not read SIP, sees the same mapping as skysnake), sky ~1000 ADU, gain 1.5, read
noise 6 e-, Poisson noise, cosmic rays, ~2,300 stars and galaxies per CCD, 20 dithered visits in
one filter. Deterministic from the seed. The raw files are made by running the workflow's own
``simulate_sky``/``simulate_visit``/``refcat`` rules in a work folder, so that the calibrate job of
stage (a) runs on exactly these files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.wcs import WCS

REPO = Path(__file__).resolve().parents[1]

#: sim config overrides of the benchmark survey (merged over config/config.yaml)
BENCH_CONFIG = {
    "results": "results",
    "inputs": {"source": "sim"},
    "sim": {
        "seed": 2026, "ra": 150.1, "dec": 2.2, "filters": ["r"], "visits_per_filter": 20,
        "ccd_nx": 2048, "ccd_ny": 4096, "ccd_cols": 1, "ccd_rows": 1, "distortion_k": 0.0,
        # zeropoint 32 with r sky 21 mag/arcsec^2: sky = 10^(0.4 x 11) x 0.04 = 1005 ADU per pixel
        "zeropoint": {"r": 32.0}, "sky_mag": {"r": 21.0}, "dither_arcmin": 1.5,
    },
    "skymap": {"pixel_scale": 0.2, "patch_inner_px": 4000, "patch_border_px": 100},
}
VISITS = list(range(1000, 1020))
CCD = 1

#: a second, small survey (in the folder ``MOSAIC_DIR`` of the work folder) for the calibrate job of stage (a):
#: one visit of a 4 x 2 mosaic of the same 2048x4096 CCDs, same sky, noise and source density
MOSAIC_DIR = "mosaic"
MOSAIC_CONFIG = {**BENCH_CONFIG, "sim": {**BENCH_CONFIG["sim"], "visits_per_filter": 1, "ccd_cols": 4, "ccd_rows": 2}}
MOSAIC_VISIT = 1000
MOSAIC_CCDS = list(range(1, 9))


def snakemake_cmd(workdir, *args, configfiles=()):
    """The snakemake command line of the workflow in ``workdir`` (config: the repo's, then ``configfiles``)."""
    return [sys.executable, "-m", "snakemake", *map(str, args), "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(REPO / "config" / "config.yaml"), *map(str, configfiles)]


def raw_path(workdir, visit, ccd=CCD):
    return Path(workdir) / "results" / "sim" / "raw" / str(visit) / f"raw-{visit}-{ccd}.fits"


def truth_path(workdir, visit, ccd=CCD):
    return Path(workdir) / "results" / "sim" / "truth" / str(visit) / f"truth-{visit}-{ccd}.json"


def prepare(workdir, *, cores=2, log=print):
    """Make the benchmark survey's raw CCDs and tract refcat in ``workdir`` with the workflow (skipped when
    they exist). Returns the config file path."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "bench-config.yaml"
    cfg.write_text(yaml.safe_dump(BENCH_CONFIG, sort_keys=False))
    targets = [str(raw_path(workdir, v).relative_to(workdir)) for v in VISITS] + ["results/refcat/refcat-0.parquet"]
    if all((workdir / t).exists() for t in targets):
        return cfg
    t0 = time.perf_counter()
    p = subprocess.run(snakemake_cmd(workdir, *targets, "--cores", str(cores), configfiles=[cfg]),
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"making the benchmark CCDs failed:\n{p.stderr[-4000:]}")
    log(f"made {len(VISITS)} raw CCDs and the refcat in {time.perf_counter() - t0:.1f} s")
    return cfg


def prepare_mosaic(workdir, *, cores=2, log=print):
    """Make the mosaic survey's raw CCDs and refcats in ``workdir / MOSAIC_DIR`` with the workflow (skipped when
    they exist). Returns ``(folder, config file)``."""
    folder = Path(workdir) / MOSAIC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "mosaic-config.yaml"
    cfg.write_text(yaml.safe_dump(MOSAIC_CONFIG, sort_keys=False))
    raws = [raw_path(folder, MOSAIC_VISIT, c) for c in MOSAIC_CCDS]
    done = folder / ".prepared"  # the refcats' tracts come from the plan: the run itself says they were made
    if all(p.exists() for p in raws) and done.exists():
        return folder, cfg
    t0 = time.perf_counter()
    p = subprocess.run(snakemake_cmd(folder, "--until", "simulate_visit", "refcat", "--cores", str(cores),
                                     configfiles=[cfg]), capture_output=True, text=True, timeout=1800)
    if p.returncode != 0 or not all(r.exists() for r in raws):
        raise RuntimeError(f"making the mosaic benchmark CCDs failed:\n{p.stderr[-4000:]}")
    done.write_text("")
    log(f"made the {len(raws)} raw CCDs of the mosaic visit and its refcats in {time.perf_counter() - t0:.1f} s")
    return folder, cfg


def load_ccd(workdir, visit):
    """One raw CCD: ``image`` (float32 ADU, sky included), ``header``, ``wcs`` (the header's, what every tool
    uses), ``true_wcs``, ``sky`` (ADU), ``gain``, ``read_noise``, ``path``."""
    path = raw_path(workdir, visit)
    with fits.open(path, memmap=False) as h:
        image = np.asarray(h[0].data, dtype=np.float32)
        header = h[0].header.copy()
    truth = json.loads(truth_path(workdir, visit).read_text())
    return {"image": image, "header": header, "wcs": WCS(header), "path": path,
            "true_wcs": WCS(fits.Header.fromstring(truth["true_wcs"])), "sky": float(truth["sky_adu"]),
            "gain": float(truth["gain"]), "read_noise": float(truth["read_noise"]),
            "saturation": float(truth["saturation"])}


def sky_variance(ccd):
    """Per-pixel sky variance (ADU^2)."""
    return ccd["sky"] / ccd["gain"] + (ccd["read_noise"] / ccd["gain"]) ** 2


def as_exposure(ccd):
    """The CCD as a calibrated-exposure-like :class:`skysnake.io.Exposure`: true sky subtracted, constant
    sky variance, empty mask, header WCS."""
    from skysnake.io import Exposure

    img = ccd["image"] - np.float32(ccd["sky"])
    var = np.full(img.shape, sky_variance(ccd), dtype=np.float32)
    return Exposure(image=img, mask=np.zeros(img.shape, np.int32), variance=var, wcs=ccd["wcs"],
                    meta={"FILTER": "r", "FWHM": 0.9})


def write_sky_subtracted(ccd, path):
    """The sky-subtracted CCD as a FITS file with the header WCS (SWarp's input)."""
    hdr = ccd["wcs"].to_header()
    fits.PrimaryHDU(ccd["image"] - np.float32(ccd["sky"]), header=hdr).writeto(path, overwrite=True)
    return Path(path)


def patch_grid(n, *, ra=BENCH_CONFIG["sim"]["ra"], dec=BENCH_CONFIG["sim"]["dec"], scale=0.2):
    """An ``n x n`` plain TAN grid at ``scale`` arcsec/px centred on (ra, dec): (astropy WCS, FITS header)."""
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"] = n
    hdr["NAXIS2"] = n
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRVAL1"], hdr["CRVAL2"] = float(ra), float(dec)
    hdr["CRPIX1"], hdr["CRPIX2"] = (n + 1) / 2.0, (n + 1) / 2.0
    hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = -scale / 3600.0, 0.0, 0.0, scale / 3600.0
    hdr["EQUINOX"], hdr["RADESYS"] = 2000.0, "ICRS"
    return WCS(hdr), hdr


def isolated_stars(workdir, ccd, *, mag=(18.0, 21.0), isolation_px=25.0, edge_px=30):
    """Pixel positions (x, y; 0-based, in the CCD) of true isolated, unsaturated stars, from the truth
    table through the CCD's true WCS."""
    import pandas as pd

    truth = pd.read_parquet(Path(workdir) / "results" / "sim" / "truth.parquet")
    x, y = ccd["true_wcs"].all_world2pix(truth["ra"].to_numpy(), truth["dec"].to_numpy(), 0)
    ny, nx = ccd["image"].shape
    on = (x > -50) & (x < nx + 50) & (y > -50) & (y < ny + 50)
    x, y, t = x[on], y[on], truth[on].reset_index(drop=True)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    m = t["mag_r"].to_numpy()
    sel = (t["is_star"].to_numpy() & (m > mag[0]) & (m < mag[1]) & (d[:, 1] > isolation_px)
           & (x > edge_px) & (x < nx - edge_px) & (y > edge_px) & (y < ny - edge_px))
    return x[sel], y[sel]
