"""The peer C tools (SExtractor, SWarp): found on PATH if installed (never installed here), run
as whole processes the way astronomers run them, timed from outside.

Every ``run_*`` returns ``None``-free results or raises :class:`PeerError`; :func:`find` returns
``None`` when a tool is absent, and the benchmark then prints "not installed" in its columns.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

#: command names tried for each peer (Debian: source-extractor / sex, SWarp / swarp)
NAMES = {"sextractor": ("source-extractor", "sex"), "swarp": ("SWarp", "swarp")}
#: where Debian puts SExtractor's filter files
SEX_SHARE = Path("/usr/share/source-extractor")
NOT_INSTALLED = "not installed"


class PeerError(RuntimeError):
    """A peer tool ran but failed (its stderr is in the message)."""


def find(peer, *, path=None):
    """``{"exe", "version"}`` of an installed peer, or None. ``path`` overrides PATH (tests)."""
    for name in NAMES[peer]:
        exe = shutil.which(name, path=path)
        if exe:
            return {"exe": exe, "version": _version(exe)}
    return None


def _version(exe):
    try:
        p = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(r"version\s+([\w.]+)", p.stdout + p.stderr)
    return m.group(1) if m else "?"


def _run(cmd, cwd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise PeerError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall


#: SExtractor output parameters of a minimal run: isophotal position, one aperture, flags
SEX_MINIMAL = ("X_IMAGE", "Y_IMAGE", "FLUX_APER", "FLUXERR_APER", "FLAGS")
#: the measurements skysnake's calibrate makes (``detection.measure_sources(kron=True)``): isophotal and
#: windowed positions, every circular aperture with its error, the Kron (AUTO) flux with its error and
#: radius, the half-light radius, the flags
SEX_CALIBRATE = ("X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "FLUX_APER({n})", "FLUXERR_APER({n})", "FLUX_AUTO",
                 "FLUXERR_AUTO", "KRON_RADIUS", "FLUX_RADIUS", "FLAGS", "FLAGS_WIN")


def read_sextractor_ascii(path):
    """A SExtractor ``ASCII_HEAD`` catalog as ``{name: array}``; vector parameters (``FLUX_APER`` with
    several apertures) are 2-D, one column per element."""
    starts = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            parts = line.split()
            starts.append((int(parts[1]) - 1, parts[2]))
    data = np.loadtxt(path, comments="#", ndmin=2)
    ncol = data.shape[1] if data.size else (starts[-1][0] + 1 if starts else 0)
    if data.size == 0:
        data = np.zeros((0, ncol))
    out = {}
    for k, (i, name) in enumerate(starts):
        j = starts[k + 1][0] if k + 1 < len(starts) else ncol
        out[name] = data[:, i] if j - i == 1 else data[:, i:j]
    return out


def run_sextractor(peer, image, workdir, *, thresh=5.0, minarea=5, aper_radii_px=(10.0,), compare_aper=0,
                   params=SEX_MINIMAL, back_size=128, back_filtersize=3, deblend_nthresh=32, deblend_cont=0.005):
    """Detect and measure one image with SExtractor (whole process, ASCII catalog, 1 thread).

    ``params`` are the output parameters asked for (:data:`SEX_MINIMAL`, :data:`SEX_CALIBRATE`;
    ``{n}`` stands for the number of apertures), ``aper_radii_px`` the radii of the circular
    apertures (``PHOT_APERTURES`` takes diameters).

    Returns ``wall`` (s) and ``catalog``: every parameter asked for (``{name: array}``) plus ``x, y``
    (0-based: the windowed centroid if asked for, else the isophotal one), ``flux, fluxerr`` (aperture
    ``compare_aper``) and ``flags``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    radii = [float(r) for r in aper_radii_px]
    param = workdir / "bench.param"
    param.write_text("".join(p.format(n=len(radii)) + "\n" for p in params))
    cat = workdir / "sex.cat"
    conv = SEX_SHARE / "default.conv"
    cmd = [peer["exe"], str(image), "-c", str(SEX_SHARE / "default.sex") if (SEX_SHARE / "default.sex").exists()
           else os.devnull, "-CATALOG_NAME", str(cat), "-CATALOG_TYPE", "ASCII_HEAD", "-PARAMETERS_NAME", str(param),
           "-DETECT_THRESH", str(thresh), "-ANALYSIS_THRESH", str(thresh), "-DETECT_MINAREA", str(minarea),
           "-DEBLEND_NTHRESH", str(deblend_nthresh), "-DEBLEND_MINCONT", str(deblend_cont),
           "-FILTER", "Y" if conv.exists() else "N", "-FILTER_NAME", str(conv),
           "-PHOT_APERTURES", ",".join(f"{2.0 * r:g}" for r in radii), "-BACK_SIZE", str(back_size),
           "-BACK_FILTERSIZE", str(back_filtersize), "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET",
           "-NTHREADS", "1"]
    wall = _run(cmd, workdir)
    out = read_sextractor_ascii(cat)
    win = "XWIN_IMAGE" in out
    flux, fluxerr = out["FLUX_APER"], out["FLUXERR_APER"]
    if flux.ndim == 2:
        flux, fluxerr = flux[:, compare_aper], fluxerr[:, compare_aper]
    out.update({"x": out["XWIN_IMAGE" if win else "X_IMAGE"] - 1.0, "y": out["YWIN_IMAGE" if win else "Y_IMAGE"] - 1.0,
                "flux": flux, "fluxerr": fluxerr, "flags": out["FLAGS"].astype(int)})
    return {"wall": wall, "catalog": out}


def run_swarp(peer, images, out, target_header, *, nthreads=1, resampling="LANCZOS3"):
    """Resample and combine ``images`` onto the grid of ``target_header`` with SWarp.

    The output grid is imposed with a ``<out>.head`` file (SWarp's way to fix the output
    projection); ``SUBTRACT_BACK N``, ``COMBINE_TYPE WEIGHTED``, no weight maps, ``FSCALASTRO_TYPE
    NONE`` (same pixel scale: nothing to rescale). Returns ``wall`` (s) and ``image`` (float32).
    """
    out = Path(out)
    work = out.parent
    work.mkdir(parents=True, exist_ok=True)
    head = out.with_suffix(".head")
    hdr = fits.Header()
    for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
              "NAXIS1", "NAXIS2", "EQUINOX", "RADESYS"):
        if k in target_header:
            hdr[k] = target_header[k]
    head.write_text("\n".join(str(c) for c in hdr.cards) + "\nEND\n")
    resamp = work / "resamp"
    resamp.mkdir(exist_ok=True)
    cmd = [peer["exe"], *map(str, images), "-c", os.devnull, "-IMAGEOUT_NAME", str(out),
           "-WEIGHTOUT_NAME", str(out.with_suffix(".weight.fits")), "-WEIGHT_TYPE", "NONE",
           "-COMBINE", "Y", "-COMBINE_TYPE", "WEIGHTED", "-RESAMPLING_TYPE", resampling,
           "-SUBTRACT_BACK", "N", "-FSCALASTRO_TYPE", "NONE", "-NTHREADS", str(int(nthreads)),
           "-RESAMPLE_DIR", str(resamp), "-DELETE_TMPFILES", "Y", "-WRITE_XML", "N", "-VERBOSE_TYPE", "QUIET",
           "-COPY_KEYWORDS", "", "-HEADER_SUFFIX", ".head"]
    wall = _run(cmd, work)
    with fits.open(out) as h:
        image = np.asarray(h[0].data, dtype=np.float32)
    return {"wall": wall, "image": image}
