"""Side-by-side benchmark of skysnake against SExtractor and SWarp, stage by stage (issue 6).

Usage::

    .venv/bin/python benchmarks/bench.py [--quick] [--only a,b,...] [--repeat N] [--out benchmarks/results.md]
                                         [--work DIR] [--demo-dir DIR]

Makes realistic CCDs with skysnake's simulated survey through the workflow (2048x4096 float32, ~2,300
stars and galaxies, 0.2"/px, sky ~1000 ADU, TAN WCS; 20 dithered visits; in ``--work``, reused when
present), then measures each stage and its peer on the same files in the same run (medians of
``--repeat`` runs) and prints a table of medians, ratios and PASS/FAIL against the targets of issue 6,
also written as markdown to ``--out``. The peers (``source-extractor``, ``SWarp``) are used when on
PATH and never installed; without them their columns say "not installed".

Stages: a detection + photometry (in-process, and the calibrate job as Snakemake runs it: one job per
visit, timed on a second small survey in ``--work``/mosaic, one visit of 8 such CCDs), b warp one
CCD onto a 4000x4000 patch (Lanczos3, 1 thread), c coadd 8 CCDs (2 threads), d CPU efficiency of the
demo on 2 cores (``--demo-dir`` reads a finished demo, else one is run: several minutes, and its data
products, ~4 GB, are deleted at the end, its logs and benchmark files kept), e dry-run
wall of synthetic 1k/3k/10k-CCD surveys, f memory of every demo job vs its mem_mb and the peak RSS of
a 20-visit coadd onto 4200x4200. ``--quick``: 1 repeat, (e) at 1k and 3k CCDs only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import metrics
import peers
import stages
import workflow_stages
import workload

NI = peers.NOT_INSTALLED


def machine_info():
    """Machine, date, load average and versions, for the report header."""
    import astropy
    import numba
    import numpy
    import sep
    import snakemake

    try:
        commit = subprocess.run(["git", "-C", str(workload.REPO), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        commit = "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_gb, 1),
            "load": os.getloadavg(), "python": platform.python_version(), "commit": commit,
            "versions": {"numpy": numpy.__version__, "numba": numba.__version__, "astropy": astropy.__version__,
                         "sep": sep.__version__, "snakemake": snakemake.__version__}}


def _ratio(a, b):
    return a / b if a is not None and b else None


def build_rows(res, found):
    """Table rows: stage, measure, skysnake, peer, ratio, target, verdict."""
    rows = []
    sx = "" if found["sextractor"] else NI
    sw = "" if found["swarp"] else NI
    if "a" in res:
        a = res["a"]
        r1 = _ratio(a["inproc"], a["peer"])
        rows.append(["a", "detect + photometry, 1 CCD, in-process, same depth and measurements (s)",
                     a["inproc"], a["peer"] or sx, r1, "<= 0.6x", metrics.verdict(r1, 0.6, "<=")])
        if a.get("peer_thresh5"):
            rows.append(["a", f"  (information) SExtractor at DETECT_THRESH 5, same measurements ({a['n_peer_thresh5']} "
                              "detections) (s)", a["inproc"], a["peer_thresh5"], _ratio(a["inproc"], a["peer_thresh5"]),
                         "-", "-"])
            rows.append(["a", f"  (information) SExtractor at DETECT_THRESH 5, X, Y and one aperture only "
                              f"({a['n_peer_minimal']} detections) (s)", a["inproc"], a["peer_minimal"],
                         _ratio(a["inproc"], a["peer_minimal"]), "-", "-"])
        if "mosaic_job_s" in a:  # one calibrate job per visit
            n = a["mosaic_nccd"]
            r2 = _ratio(a["mosaic_job_s"], a["mosaic_peer"])
            what = f"calibrate job as Snakemake runs it, 1 visit of {n} CCDs; peer: SExtractor on the {n} CCDs (benchmark s)"
            rows.append(["a", what, a["mosaic_job_s"], a["mosaic_peer"] or sx, r2, "<= 1.5x",
                         metrics.verdict(r2, 1.5, "<=")])
            rows.append(["a", "  per CCD (s)", a["mosaic_job_s"] / n, a["mosaic_peer"] / n if a["mosaic_peer"] else sx,
                         r2, "-", "-"])
            rows.append(["a", "  whole `snakemake` process for that job (s)", a["mosaic_snakemake_process"],
                         a["mosaic_peer"] or sx, _ratio(a["mosaic_snakemake_process"], a["mosaic_peer"]), "-", "-"])
            rows.append(["a", "  (information) calibrate job of a 1-CCD visit (benchmark s)", a["job_s"],
                         a["peer"] or sx, _ratio(a["job_s"], a["peer"]), "-", "-"])
        else:  # results saved before: one calibrate job per CCD
            r2 = _ratio(a["job_s"], a["peer"])
            rows.append(["a", "calibrate job as Snakemake runs it (benchmark s)", a["job_s"], a["peer"] or sx, r2,
                         "<= 1.5x", metrics.verdict(r2, 1.5, "<=")])
            rows.append(["a", "  whole `snakemake` process for that job (s)", a["snakemake_process"],
                         a["peer"] or sx, _ratio(a["snakemake_process"], a["peer"]), "-", "-"])
        if a.get("agreement"):
            g = a["agreement"]
            rows.append(["a", f"  detections: ours {g['n_ours']}, SExtractor {g['n_peer']}; S/N>=20 SExtractor "
                              f"matched within 1 px", g["frac_peer_matched"], "", "", ">= 0.95",
                         metrics.verdict(g["frac_peer_matched"], 0.95, ">=")])
            rows.append(["a", f"  aperture flux r={stages.SEX_APER_PX:g} px, median ours/SExtractor ({g['n_flux']})",
                         f"{g['flux_ratio']:.4f}", "", "", "1 +- 0.01",
                         metrics.verdict(abs(g["flux_ratio"] - 1.0), 0.01, "<=")])
    if "b" in res:
        b = res["b"]
        r = _ratio(b["throughput"], b.get("peer_throughput"))
        rows.append(["b", "warp 1 CCD -> 4000x4000, Lanczos3, 1 thread (s)", b["wall"], b["peer"] or sw,
                     _ratio(b["wall"], b["peer"]), "-", "-"])
        rows.append(["b", "  throughput (input Mpix/s; ratio = ours/peer)", b["throughput"],
                     b.get("peer_throughput") or sw, r, ">= 3x", metrics.verdict(r, 3.0, ">=")])
        rows.append(["b", f"  flux of {b['flux']['n']} isolated stars (r = 12 px), median out/in",
                     f"{b['flux']['median']:.5f}", f"{b['peer_flux']['median']:.5f}" if b.get("peer_flux") else sw, "",
                     "1 +- 0.001",
                     metrics.verdict(abs(b["flux"]["median"] - 1.0), 0.001, "<=")])
        nin = b["noise_in"]["rms"]
        ours_rr = b["noise"]["rms"] / nin
        peer_rr = b["peer_noise"]["rms"] / nin if b.get("peer_noise") else None
        rows.append(["b", "  sky noise rms out/in", ours_rr, peer_rr or sw, _ratio(ours_rr, peer_rr), "= SWarp +- 2%",
                     metrics.verdict(abs(ours_rr / peer_rr - 1.0), 0.02, "<=") if peer_rr else "n/a"])
        oc = (b["noise"]["corr_x"] + b["noise"]["corr_y"]) / 2
        pc = (b["peer_noise"]["corr_x"] + b["peer_noise"]["corr_y"]) / 2 if b.get("peer_noise") else None
        rows.append(["b", "  neighbour-pixel noise correlation (mean of x, y)", oc, pc if pc is not None else sw, "",
                     "= SWarp +- 0.02", metrics.verdict(abs(oc - pc), 0.02, "<=") if pc is not None else "n/a"])
    if "c" in res:
        c = res["c"]
        r = _ratio(c["wall"], c["peer"])
        rows.append(["c", f"coadd {c['nccd']} CCDs -> 4000x4000 (warp + combine), 2 threads (s)", c["wall"],
                     c["peer"] or sw, r, "<= 0.5x", metrics.verdict(r, 0.5, "<=")])
    if "d" in res:
        d = res["d"]
        rows.append(["d", f"demo ({d['n_jobs']} jobs, {d['cores']} cores): wall (s)", d["wall"], "", "", "-", "-"])
        rows.append(["d", "  CPU efficiency sum(job CPU) / (wall x cores); job CPU as each job's process logs it at exit"
                     + (f" ({d['n_cpu_from_log']} of {d['n_jobs']} jobs; the others: Snakemake's)"
                        if d.get("n_cpu_from_log", d["n_jobs"]) != d["n_jobs"] else ""),
                     d["cpu_efficiency"], "", "", ">= 0.85", metrics.verdict(d["cpu_efficiency"], 0.85, ">=")])
        if "cpu_efficiency_sampled" in d:
            rows.append(["d", "    (information) the same from Snakemake's benchmark cpu_time (sampled every 0.5 s)",
                         d["cpu_efficiency_sampled"], "", "", "-", "-"])
        if "overhead_share_logged" in d:
            rows.append(["d", "  scheduling + start-up share: idle cores + per job (job wall - what its process did after "
                         f"its imports, as it logs them; {d['n_work_logged']} of {d['n_jobs']} jobs)",
                         d["overhead_share_logged"], "", "", "<= 0.15",
                         metrics.verdict(d["overhead_share_logged"], 0.15, "<=")])
            rows.append(["d", "    of which per-job spawning, interpreter and imports", d["startup_share_logged"], "", "",
                         "-", "-"])
            rows.append(["d", "      of which interpreter + imports (each job's process logs its age at start)",
                         d["process_startup_share"], "", "", "-", "-"])
            rows.append(["d", "    (information) the same with per-job start-up = job wall - its log's timed steps "
                         "(untimed I/O counts as start-up, untimed jobs as a bare import)", d["overhead_share"], "", "",
                         "-", "-"])
        else:  # results saved before the jobs logged their own start-up
            rows.append(["d", "  scheduling + start-up share (idle cores + per-job start-up)", d["overhead_share"], "", "",
                         "<= 0.15", metrics.verdict(d["overhead_share"], 0.15, "<=")])
            rows.append(["d", "    of which per-job start-up (job wall - logged compute)", d["startup_share"], "", "",
                         "-", "-"])
    if "e" in res:
        e = res["e"]
        for row in e["rows"]:
            rows.append(["e", f"dry run, {row['ccds']} CCDs, {row.get('patches')} patches, {row.get('jobs')} jobs (s)"
                         + (f" {row['note']}" if row["note"] else ""), row["wall"], "", "",
                         "<= 60" if row is e["rows"][-1] else "-",
                         metrics.verdict(row["wall"], 60.0, "<=") if row is e["rows"][-1] else "-"])
        if e["fit"]:
            n_ok = sum(1 for r in e["rows"] if r["wall"] == r["wall"])
            rows.append(["e", f"  slope (s per 1000 CCDs); worst deviation from a line ({n_ok} sizes)",
                         e["fit"]["slope"] * 1000, "", e["fit"]["max_rel_resid"] if n_ok >= 3 else "-", "linear", "-"])
    if "f" in res:
        f = res["f"]
        if "n_jobs" in f:
            w = f["worst"]
            rows.append(["f", f"demo jobs over their mem_mb ({f['n_jobs']} jobs)", f["n_over"], "", "", "0",
                         metrics.verdict(f["n_over"], 0, "<=")])
            if w:
                rows.append(["f", f"  highest max_rss / mem_mb: {w['rule']} {w['ids']} (MB)", w["max_rss"], "",
                             w["max_rss"] / w["mem_mb"], "<= 1", "-"])
        c20 = f["coadd20"]
        rows.append(["f", f"coadd of {c20['nwarps']} visits onto {c20['shape'][0]}x{c20['shape'][1]}: peak RSS (MB)",
                     c20["peak_rss_mb"], "", "", "<= 1536", metrics.verdict(c20["peak_rss_mb"], 1536.0, "<=")])
    return rows


HEADERS = ["stage", "measure", "skysnake", "peer", "ratio", "target", "verdict"]

#: what each side of (a) computes, printed under the table
A_WORK = (
    "(a) both sides read the raw CCD, estimate a 128-px-mesh background (3x3 mesh median filter), detect "
    "(minarea 5, 3x3 pyramid filter, 32 deblending levels, contrast 0.005, cleaning) and measure every "
    "detection. skysnake, as calibrate does (`detection.estimate_background` with its source-masked second "
    "pass and mean correction, `ccdproc.sky_variance` and `variance_plane`, `detect_sources` at 5 sigma of "
    "the filtered image, `measure_sources(kron=True)`), computes windowed centroids, half-light radii, 5 "
    "circular apertures (r = 5, 10, 15, 30, 10 px) with errors, Kron radius and flux with error, and flags. "
    "The compared SExtractor run (1 thread, ASCII catalog) detects as deep: DETECT_THRESH is in units of the "
    "unfiltered noise, so 5 sigma of the filtered image is DETECT_THRESH = 5 x sqrt(sum k^2) / sum k = 1.875 "
    "for this kernel; it is asked for X/Y_IMAGE, XWIN/YWIN_IMAGE, FLUX_APER and FLUXERR_APER in the same 5 "
    "apertures, FLUX_AUTO, FLUXERR_AUTO, KRON_RADIUS, FLUX_RADIUS, FLAGS and FLAGS_WIN. The information rows "
    "run SExtractor at DETECT_THRESH 5 (a shallower catalog), with the same measurements and with X/Y_IMAGE, "
    "one aperture and FLAGS only (the comparison of the first benchmark).")


def markdown(info, found, rows, res):
    ld = ", ".join(f"{x:.2f}" for x in info["load"])
    lines = [
        "# skysnake against SExtractor and SWarp",
        "",
        f"Measured {info['date']} on {info['host']} ({info['cpu']}, {info['cores']} cores, {info['mem_gb']} GB), "
        f"skysnake commit {info['commit']}, Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
        f"Peers: SExtractor {found['sextractor']['version'] if found['sextractor'] else NI}, "
        f"SWarp {found['swarp']['version'] if found['swarp'] else NI}.",
        f"**Load average at start: {ld}** (1, 5, 15 min; the machine is shared: numbers under load are noisy, "
        "ratios less so).",
        "",
        metrics.markdown_table(HEADERS, rows),
        "",
    ]
    if "a" in res:
        lines.append(A_WORK)
        lines.append("(a) in-process steps (s): " + ", ".join(f"{k} {v:.3f}" for k, v in res["a"]["inproc_steps"].items())
                     + (f"; calibrate job's logged steps, summed over its {res['a']['mosaic_nccd']} CCDs (s): "
                        if "mosaic_nccd" in res["a"] else "; calibrate job's logged steps (s): ")
                     + ", ".join(f"{k} {v:.3f}" for k, v in res["a"]["job_steps"].items()) + ".")
    if "b" in res:
        lines.append(f"(b) first call in a fresh process (numba cache load): {res['b']['first_call']:.2f} s.")
    if "d" in res:
        d = res["d"]
        lines.append("(d) per rule (jobs, sum of job wall s, sum of CPU s, sum of logged compute s, sum of process "
                     "start-up s): "
                     + "; ".join(f"{k} {v['n']}, {v['s']:.0f}, {v['cpu']:.0f}, {v['compute']:.0f}, {v.get('startup', 0):.0f}"
                                 for k, v in sorted(d["by_rule"].items(), key=lambda kv: -kv[1]["s"])) + ".")
    if "f" in res:
        c20 = res["f"]["coadd20"]
        lines.append("(f) 20-visit coadd steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in c20["steps"].items())
                     + (". Right after the coadd: RSS {rss_mb:.0f} MB, of which shared (file-backed, e.g. memory-mapped "
                        "warp pages) {shared_mb:.0f} MB; peak so far {peak_so_far_mb:.0f} MB".format(**c20["after_coadd"])
                        if "after_coadd" in c20 else "") + ".")
    return "\n".join(lines) + "\n"


def render_saved(paths, out):
    """Re-render the markdown table from saved ``.json`` results (no measurement)."""
    saved = [json.loads(Path(p).read_text()) for p in paths]
    info, found, res = saved[0]["info"], saved[0].get("found"), {}
    for s in saved:
        res.update(s["results"])
        found = {k: v or (s.get("found") or {}).get(k) for k, v in (found or s.get("found") or {}).items()}
    found = found or {p: peers.find(p) for p in ("sextractor", "swarp")}
    md = markdown(info, found, build_rows(res, found), res)
    print(md)
    Path(out).write_text(md)
    Path(out).with_suffix(".json").write_text(json.dumps({"info": info, "found": found, "results": res}, indent=1,
                                                         default=str))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat; (e) at 1k and 3k CCDs only")
    ap.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated stages (default all: a,b,c,d,e,f)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats per measure (default 5; --quick 1)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.md")), help="markdown output")
    ap.add_argument("--work", default=None, help="folder for the benchmark CCDs (default: a folder under /tmp, kept)")
    ap.add_argument("--demo-dir", default=None, help="folder of a finished demo run for (d) and (f)")
    ap.add_argument("--e-sizes", default="1000,3000,10000", help="(e): survey sizes in CCDs (--quick: 1000,3000)")
    ap.add_argument("--e-timeout", type=float, default=900.0, help="(e): give up a dry run after this many s")
    ap.add_argument("--from-json", nargs="+", default=None, metavar="JSON",
                    help="measure nothing: re-render --out from saved results (.json beside a results .md; stages of "
                         "later files win, the first file's machine header is kept)")
    ap.add_argument("--demo-wall", type=float, default=None, help="that demo run's wall (s), if known")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set("abcdef")
    if unknown:
        ap.error(f"--only: unknown stages {sorted(unknown)} (choose from a,b,c,d,e,f)")
    repeat = args.repeat or (1 if args.quick else 5)
    e_sizes = (1000, 3000) if args.quick else tuple(int(x) for x in args.e_sizes.split(","))
    if args.from_json:
        return render_saved(args.from_json, args.out)
    info = machine_info()
    found = {p: peers.find(p) for p in ("sextractor", "swarp")}
    print(f"load average at start: {info['load']}; peers: " + ", ".join(
        f"{k} {v['version'] if v else NI}" for k, v in found.items()), flush=True)
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "skysnake-bench")
    ctx = {"work": work, "peers": found, "demo_dir": Path(args.demo_dir) if args.demo_dir else None,
           "demo_wall": args.demo_wall}
    if set(only) & set("abcf"):
        ctx["config"] = workload.prepare(work)
    res = {}
    t_all = time.perf_counter()
    runners = {"a": lambda: stages.stage_a(ctx, repeat=repeat), "b": lambda: stages.stage_b(ctx, repeat=repeat),
               "c": lambda: stages.stage_c(ctx, repeat=max(1, min(repeat, 3))),
               "d": lambda: workflow_stages.stage_d(ctx),
               "e": lambda: workflow_stages.stage_e(ctx, sizes=e_sizes, timeout=args.e_timeout),
               "f": lambda: workflow_stages.stage_f(ctx)}
    try:
        for s in "abcdef":
            if s in only:
                t0 = time.perf_counter()
                res[s] = runners[s]()
                print(f"stage {s}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        if args.demo_dir is None and ctx["demo_dir"] is not None:
            workflow_stages.drop_demo_products(ctx["demo_dir"])
    rows = build_rows(res, found)
    md = markdown(info, found, rows, res)
    print(md)
    Path(args.out).write_text(md)
    raw = {k: {kk: vv for kk, vv in v.items() if kk != "jobs"} for k, v in res.items()}
    Path(args.out).with_suffix(".json").write_text(json.dumps({"info": info, "found": found, "results": raw}, indent=1,
                                                              default=str))
    print(f"written {args.out} (and .json) in {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
