"""Child process of benchmark (f): coadd warps exactly as scripts/coadd.py does (memory-mapped warps,
coadd, residual background, write) and print its peak RSS and timings as one JSON line.

Usage: python benchmarks/coadd_child.py PATCH_HEADER OUT WARP...
"""

import json
import resource
import sys
import time

import numpy as np
import psutil
from astropy.io import fits
from astropy.wcs import WCS

from skysnake import coadd, multiband
from skysnake.io import read_exposure, write_exposure

hdr = fits.Header.fromstring(open(sys.argv[1]).read())
out, paths = sys.argv[2], sys.argv[3:]
shape = (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))
t = {}
t0 = time.perf_counter()
warps = [read_exposure(p, lazy=True) for p in paths]
t["read"] = time.perf_counter() - t0
t0 = time.perf_counter()
result = coadd.coadd_warps(warps, shape=shape, wcs=WCS(hdr), reject_sigma=5.0)
t["coadd"] = time.perf_counter() - t0


def peak_rss_mb():
    """This process's peak RSS (MB): the kernel's high-water mark of its own memory (VmHWM). Not
    ``ru_maxrss``: Linux carries into it the peak of the image replaced at exec, i.e. of the (v)forked
    parent, so a child of a big benchmark process would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


mi = psutil.Process().memory_info()  # file-backed (memory-mapped warp) pages are in rss and in shared
after_coadd = {"rss_mb": mi.rss / 2**20, "shared_mb": mi.shared / 2**20, "peak_so_far_mb": peak_rss_mb()}
t0 = time.perf_counter()
bkg = multiband.estimate_background(result)
result.image -= np.asarray(bkg, dtype=np.float32)
t["background"] = time.perf_counter() - t0
t0 = time.perf_counter()
write_exposure(out, result)
t["write"] = time.perf_counter() - t0
print(json.dumps({"nwarps": len(paths), "shape": list(shape), "steps": t, "after_coadd": after_coadd,
                  "peak_rss_mb": peak_rss_mb()}))
