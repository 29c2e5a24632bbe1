"""The workflow-level stages of the benchmark: (d) CPU efficiency of the demo, (e) dry-run scaling,
(f) memory of every job against its declared mem_mb and the peak of a 20-visit coadd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import metrics
import workload
from stages import log_steps, read_benchmark

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- (d) the demo on 2 cores


def run_demo(workdir, *, cores=2):
    """Run the demo (default config) in ``workdir``; returns its wall (s)."""
    t0 = time.perf_counter()
    p = subprocess.run(workload.snakemake_cmd(workdir, "--cores", str(cores)), capture_output=True, text=True,
                       timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"the demo failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


_CPU = re.compile(r"process cpu (\d+\.\d+) s, peak rss \d+ MB, wall (\d+\.\d+) s")
_STARTUP = re.compile(r"process start-up (\d+\.\d+) s")


def process_usage(logfile):
    """``(cpu, wall, startup)`` seconds a job's process logged about itself (skysnake.adapter: exact CPU time
    and the process's age at exit, its age when logging was set up), None for what the log lacks."""
    p = Path(logfile)
    text = p.read_text() if p.exists() else ""
    cpu, start = _CPU.search(text), _STARTUP.search(text)
    return ((float(cpu.group(1)) if cpu else None), (float(cpu.group(2)) if cpu else None),
            (float(start.group(1)) if start else None))


def demo_jobs(results):
    """Every job of a finished run: ``rule, ids, s, max_rss`` (benchmark file), ``cpu_time`` (the CPU time the
    job's process logged at exit; the benchmark file's sampled ``cpu_time`` where the log has none),
    ``cpu_sampled`` (the benchmark file's), ``startup`` (logged process start-up, or None), ``compute`` (sum
    of the log's timed steps), ``end`` (benchmark file mtime).

    Snakemake's benchmark samples a job's CPU time every 0.5 s, so it misses up to the last 0.5 s of every
    job: on jobs of 1-3 s that is a large under-count, hence the job's own figure."""
    jobs = []
    for tsv in sorted(Path(results, "benchmarks").glob("*/*.tsv")):
        row = read_benchmark(tsv)
        rule, ids = tsv.parent.name, tsv.stem
        logf = Path(results, "logs", rule, f"{ids}.log")
        steps = log_steps(logf)
        cpu, pwall, startup = process_usage(logf)
        sampled = float(row.get("cpu_time", 0.0))
        jobs.append({"rule": rule, "ids": ids, "s": row["s"], "cpu_time": sampled if cpu is None else cpu,
                     "cpu_sampled": sampled, "cpu_from_log": cpu is not None, "startup": startup,
                     # the work: everything the job's process did after its interpreter and imports
                     "work": pwall - startup if pwall is not None and startup is not None else None,
                     "max_rss": row.get("max_rss", float("nan")), "compute": sum(steps.values()),
                     "timed": bool(steps), "end": tsv.stat().st_mtime})
    return jobs


def bare_startup():
    """Wall (s) of a bare Python process importing what every job script imports (numpy, astropy.io.fits,
    skysnake.io, skysnake.adapter): a floor for any job's start-up."""
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy, astropy.io.fits, skysnake.io, skysnake.adapter"],
                       check=True, capture_output=True)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def drop_demo_products(demo):
    """Delete the data products of a demo run the benchmark made (~4 GB), keeping its logs and benchmark files."""
    results = Path(demo) / "results"
    if results.is_dir():
        for p in results.iterdir():
            if p.name in ("logs", "benchmarks"):
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    print(f"demo run: logs and benchmark files kept in {results}, its data products deleted", file=sys.stderr)


def stage_d(ctx, *, cores=2):
    """(d) CPU efficiency and scheduling + start-up share of the demo on ``cores`` cores."""
    demo = ctx.get("demo_dir")
    wall = ctx.get("demo_wall")
    if demo is None:
        demo = Path(tempfile.mkdtemp(prefix="bench-demo-"))
        wall = run_demo(demo, cores=cores)
        ctx["demo_dir"], ctx["demo_wall"] = demo, wall
    jobs = demo_jobs(Path(demo) / "results")
    span = max(j["end"] for j in jobs) - min(j["end"] - j["s"] for j in jobs)
    if wall is None:  # a finished run read from disk: the jobs' span (first start to last end)
        wall = span
    floor = bare_startup()
    for j in jobs:  # untimed jobs: count only the bare start-up as overhead
        if not j["timed"]:
            j["compute"] = max(j["s"] - floor, 0.0)
    share = metrics.overhead_share(jobs, wall=wall, cores=cores)
    # the same with each job's own account: overhead = Snakemake's spawning + the interpreter and imports
    # (job wall - what the process did after its imports), for every job whose log has it
    measured = [{"s": j["s"], "compute": j["work"] if j["work"] is not None else j["compute"]} for j in jobs]
    share_logged = metrics.overhead_share(measured, wall=wall, cores=cores)
    by_rule = {}
    for j in jobs:
        r = by_rule.setdefault(j["rule"], {"n": 0, "s": 0.0, "cpu": 0.0, "compute": 0.0, "startup": 0.0})
        r["n"] += 1
        r["s"] += j["s"]
        r["cpu"] += j["cpu_time"]
        r["compute"] += j["compute"]
        r["startup"] += j["startup"] or 0.0
    return {"wall": wall, "span": span, "n_jobs": len(jobs), "cores": cores,
            "cpu_efficiency": metrics.cpu_efficiency(jobs, wall=wall, cores=cores),
            "cpu_efficiency_sampled": metrics.cpu_efficiency([{"cpu_time": j["cpu_sampled"]} for j in jobs], wall=wall,
                                                             cores=cores),
            "n_cpu_from_log": sum(1 for j in jobs if j["cpu_from_log"]),
            "overhead_share_logged": share_logged["total"], "startup_share_logged": share_logged["startup"],
            "n_work_logged": sum(1 for j in jobs if j["work"] is not None),
            "process_startup_share": sum(j["startup"] or 0.0 for j in jobs) / (wall * cores),
            "startup_share": share["startup"], "idle_share": share["idle"], "overhead_share": share["total"],
            "bare_startup": floor, "by_rule": by_rule, "jobs": jobs}


# ----------------------------------------------------------------------------- (e) dry-run scaling


def synthetic_survey(nccd, *, patches=200):
    """Config of a synthetic survey of about ``nccd`` CCDs (20-CCD camera, 5 filters) with its patch size
    chosen for about ``patches`` patches over the footprint."""
    visits = max(1, round(nccd / 20 / 5))
    return {"results": "results", "inputs": {"source": "sim"},
            "sim": {"filters": ["g", "r", "i", "z", "y"], "visits_per_filter": visits, "ccd_cols": 5, "ccd_rows": 4,
                    "sky_mag": {"g": 22.0, "r": 21.0, "i": 20.3, "z": 19.5, "y": 18.5},
                    "zeropoint": {"g": 28.3, "r": 28.5, "i": 28.1, "z": 27.6, "y": 26.8}},
            "skymap": {"patch_inner_px": 700, "patch_border_px": 100}}


def stage_e(ctx, *, sizes=(1000, 3000, 10000), timeout=600):
    """(e) ``snakemake -n`` wall for synthetic surveys of ``sizes`` CCDs."""
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-dry{n}-") as tmp:
            cfg = Path(tmp) / "survey.yaml"
            survey = synthetic_survey(n)
            cfg.write_text(yaml.safe_dump(survey, sort_keys=False))
            per_visit = survey["sim"]["ccd_cols"] * survey["sim"]["ccd_rows"]
            t0 = time.perf_counter()
            try:
                p = subprocess.run(workload.snakemake_cmd(tmp, "-n", "--cores", "2", configfiles=[cfg]),
                                   capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                rows.append({"ccds": n, "wall": float("nan"), "jobs": None, "note": f"timed out after {timeout} s"})
                break
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                raise RuntimeError(f"dry run of {n} CCDs failed:\n{p.stderr[-3000:]}")
            counts = _job_counts(p.stdout)
            # one calibrate job per visit, every CCD of the camera in it
            rows.append({"ccds": counts.get("calibrate", 0) * per_visit, "visits": counts.get("calibrate"),
                         "wall": wall, "jobs": counts.get("total"),
                         "patches": counts.get("merge_detections"), "coadds": counts.get("coadd"), "warps": counts.get("warp"), "note": "", "counts": counts})
    ok = [r for r in rows if np.isfinite(r["wall"])]
    fit = metrics.linear_fit([r["ccds"] for r in ok], [r["wall"] for r in ok]) if len(ok) >= 2 else None
    return {"rows": rows, "fit": fit}


def _job_counts(stdout):
    """Job counts per rule from the 'Job stats' table of a dry run."""
    counts = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


# ----------------------------------------------------------------------------- (f) memory


def declared_mem(workdir, configfiles=()):
    """``{benchmark file (relative to workdir): mem_mb}`` of every job of a workflow, from a forced dry run."""
    p = subprocess.run(workload.snakemake_cmd(workdir, "-n", "--forceall", "--cores", "2", configfiles=configfiles),
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{p.stderr[-3000:]}")
    out, bench = {}, None
    for line in p.stdout.splitlines():
        s = line.strip()
        if s.startswith("rule ") or s.startswith("localrule "):
            bench = None
        elif s.startswith("benchmark:"):
            bench = s.split(":", 1)[1].strip()
        elif s.startswith("resources:") and bench:
            m = re.search(r"\bmem_mb=(\d+)", s)
            if m:
                out[bench] = int(m.group(1))
    return out


def stage_f(ctx, *, nvisits=20, n=4200):
    """(f) every demo job's max_rss vs its declared mem_mb; peak RSS of a 20-visit coadd onto n x n."""
    out = {}
    demo = ctx.get("demo_dir")
    if demo is not None:
        mem = declared_mem(demo)
        rows = []
        for j in demo_jobs(Path(demo) / "results"):
            key = f"results/benchmarks/{j['rule']}/{j['ids']}.tsv"
            if key in mem:
                rows.append({"rule": j["rule"], "ids": j["ids"], "max_rss": j["max_rss"], "mem_mb": mem[key]})
        over = [r for r in rows if r["max_rss"] > r["mem_mb"]]
        worst = max(rows, key=lambda r: r["max_rss"] / r["mem_mb"]) if rows else None
        out.update({"n_jobs": len(rows), "n_over": len(over), "over": over, "worst": worst})
    # the 20-visit coadd: warps written as the warp jobs write them, coadded in a fresh process
    from skysnake import warp
    from skysnake.io import write_exposure

    twcs, thdr = workload.patch_grid(n)
    with tempfile.TemporaryDirectory(prefix="bench-coadd20-") as tmp:
        paths = []
        for v in workload.VISITS[:nvisits]:
            exp = workload.as_exposure(workload.load_ccd(ctx["work"], v))
            w = warp.warp_exposures([exp], target_wcs=twcs, target_shape=(n, n))
            w.meta.update({"VISIT": v, "FILTER": "r", "FWHM": 0.9})
            paths.append(Path(tmp) / f"warp-{v}.fits")
            write_exposure(paths[-1], w)
        hdr_path = Path(tmp) / "patch.hdr"
        hdr_path.write_text(thdr.tostring())
        p = subprocess.run([sys.executable, str(HERE / "coadd_child.py"), str(hdr_path), str(Path(tmp) / "coadd.fits"),
                            *map(str, paths)], capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"coadd child failed:\n{p.stderr[-3000:]}")
        out["coadd20"] = json.loads(p.stdout.strip().splitlines()[-1])
    return out
