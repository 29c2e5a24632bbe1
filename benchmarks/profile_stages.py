"""Where the time goes: cProfile of the calibrate, warp and coadd work on the benchmark CCDs, and the
import cost of each job script.

Usage: .venv/bin/python benchmarks/profile_stages.py [--work DIR] [--top N]

Needs the benchmark CCDs (``bench.py`` makes them in ``--work``). Prints, per stage, the functions
with the largest cumulative time (skysnake and library frames), and the heaviest imports of
``python -X importtime`` for the modules each script imports.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
from pathlib import Path

import workload

SCRIPT_IMPORTS = {
    "calibrate": "from skysnake.adapter import provenance, setup_logging; "
                 "from skysnake.calibrate_files import calibrate_file",
    "warp": "from skysnake import quality, warp; from skysnake.io import read_exposure; from skysnake.skymap import Tract",
    "coadd": "from skysnake import coadd, multiband; from skysnake.io import read_exposure",
}


def profile(fn, *, top):
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    total = st.total_tt
    st.sort_stats("cumulative").print_stats(top)
    return total, s.getvalue()


def importtime(stmt, *, top=12):
    """(total import seconds, the ``top`` heaviest cumulative imports) of a fresh ``python -X importtime``."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)) / 1e6, len(m.group(3)), m.group(4)))
    total = sum(r[0] for r in rows if r[1] == 1)
    heavy = sorted((r for r in rows if r[1] <= 3), key=lambda r: -r[0])[:top]
    return total, heavy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "skysnake-bench"))
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    work = Path(args.work)
    import numba
    import pandas as pd

    from skysnake import calibrate, coadd, instruments, warp

    ccd = workload.load_ccd(work, workload.VISITS[0])
    raw = instruments.read_raw(ccd["path"], instrument={"name": "generic", "image_hdu": 0, "bpm_hdu": None})
    refcat = pd.read_parquet(work / "results" / "refcat" / "refcat-0.parquet")
    m = raw.meta

    def cal():
        return calibrate.calibrate_ccd(raw.image, header_wcs=raw.wcs, refcat=refcat, filter=m["filter"], mjd=m["mjd"],
                                       exptime=m["exptime"], gain=m["gain"], read_noise=m["read_noise"],
                                       saturation=m["saturation"])

    res = cal()  # warm (numba caches, lazy imports)
    print("calibrate_ccd step timings (s):", {k: round(v, 3) for k, v in res.summary["timing"].items()})
    total, txt = profile(cal, top=args.top)
    print(f"\n=== calibrate_ccd: {total:.2f} s under cProfile ===\n{txt}")

    twcs, _ = workload.patch_grid(4000)
    exps = [workload.as_exposure(workload.load_ccd(work, v)) for v in workload.VISITS[:8]]
    numba.set_num_threads(1)
    warp.warp_exposures([exps[0]], target_wcs=twcs, target_shape=(4000, 4000))
    total, txt = profile(lambda: warp.warp_exposures([exps[0]], target_wcs=twcs, target_shape=(4000, 4000)),
                         top=args.top)
    print(f"\n=== warp 1 CCD (1 thread): {total:.2f} s ===\n{txt}")
    numba.set_num_threads(2)
    warps = [warp.warp_exposures([e], target_wcs=twcs, target_shape=(4000, 4000)) for e in exps]
    total, txt = profile(lambda: coadd.coadd_warps(warps, shape=(4000, 4000), wcs=twcs, reject_sigma=5.0),
                         top=args.top)
    print(f"\n=== coadd_warps of 8 warps (2 threads): {total:.2f} s ===\n{txt}")

    for name, stmt in SCRIPT_IMPORTS.items():
        total, heavy = importtime(stmt)
        print(f"\n=== imports of scripts/{name}.py: {total:.2f} s ===")
        for sec, depth, mod in heavy:
            print(f"  {sec:6.3f} s  {'  ' * (depth - 1)}{mod}")


if __name__ == "__main__":
    main()
