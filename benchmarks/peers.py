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


def run_sextractor(peer, image, workdir, *, thresh=5.0, minarea=5, aper_radius_px=10.0, back_size=128,
                   back_filtersize=3, deblend_nthresh=32, deblend_cont=0.005):
    """Detect and measure one image with SExtractor (whole process, ASCII catalog).

    Returns ``wall`` (s) and ``catalog`` (dict of arrays: ``x, y`` 0-based, ``flux, fluxerr`` in a
    circular aperture of radius ``aper_radius_px``, ``flags``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    param = workdir / "bench.param"
    param.write_text("X_IMAGE\nY_IMAGE\nFLUX_APER\nFLUXERR_APER\nFLAGS\n")
    cat = workdir / "sex.cat"
    conv = SEX_SHARE / "default.conv"
    cmd = [peer["exe"], str(image), "-c", str(SEX_SHARE / "default.sex") if (SEX_SHARE / "default.sex").exists()
           else os.devnull, "-CATALOG_NAME", str(cat), "-CATALOG_TYPE", "ASCII_HEAD", "-PARAMETERS_NAME", str(param),
           "-DETECT_THRESH", str(thresh), "-ANALYSIS_THRESH", str(thresh), "-DETECT_MINAREA", str(minarea),
           "-DEBLEND_NTHRESH", str(deblend_nthresh), "-DEBLEND_MINCONT", str(deblend_cont),
           "-FILTER", "Y" if conv.exists() else "N", "-FILTER_NAME", str(conv),
           "-PHOT_APERTURES", str(2.0 * aper_radius_px), "-BACK_SIZE", str(back_size),
           "-BACK_FILTERSIZE", str(back_filtersize), "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET",
           "-NTHREADS", "1"]
    wall = _run(cmd, workdir)
    data = np.loadtxt(cat, comments="#", ndmin=2)
    if data.size == 0:
        data = np.zeros((0, 5))
    return {"wall": wall, "catalog": {"x": data[:, 0] - 1.0, "y": data[:, 1] - 1.0, "flux": data[:, 2],
                                      "fluxerr": data[:, 3], "flags": data[:, 4].astype(int)}}


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
