"""Restarts, determinism, reruns on a changed parameter, incremental processing, odd file names.

Each test runs the real workflow on a small simulated survey:

* ``reference`` and ``second``: two runs from scratch (sim inputs, 2 visits, 1 patch) -> identical bytes;
* ``interrupted``: the same survey, Snakemake killed with ``kill -9`` mid-run, restarted, then one of its
  jobs killed with ``kill -9``, then finished -> only the unfinished jobs rerun, same bytes as ``reference``;
* ``survey``: raw files on disk (inputs.source = files) in a folder with a hostile name, processed as a
  survey grows: 2 visits, then a third -> only the new CCDs and the patches they touch are processed, and
  the result is byte-identical to processing all 3 visits at once.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, jobs_of_dry_run, run_snakemake

from skysnake import status
from skysnake.io import read_table

pytestmark = pytest.mark.workflow

SMALL = {"filters": ["r"], "visits_per_filter": 2, "ccd_nx": 512, "ccd_ny": 1024, "star_density": 120000}
ODD_DIR = "night 1 'odd' $(touch INJECTED); `touch INJECTED2` [x] & touch INJECTED4; \"q\""
ODD_FILE = "raw {v}-{c} \"q\" ;touch INJECTED3; $HOME.fits"


def _write_config(path, **blocks):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for k, v in blocks.items():
        cfg[k] = {**cfg[k], **v} if isinstance(cfg.get(k), dict) else v
    path.write_text(yaml.safe_dump(cfg))
    return path


def _job_stats(text):
    """{rule: count} from the "Job stats" table Snakemake prints (empty when nothing is to be done)."""
    m = re.search(r"^Job stats:\n.*?\n-+\s+-+\n(.*?)^total\s+\d+", text, re.MULTILINE | re.DOTALL)
    if not m:
        return {}
    return {r: int(n) for r, n in re.findall(r"^(\w+)\s+(\d+)$", m.group(1), re.MULTILINE)}


def _outputs(results):
    """{relative path: bytes} of the science outputs (logs, benchmarks, QA figures and caches left out)."""
    out = {}
    for p in sorted(Path(results).rglob("*")):
        rel = p.relative_to(results).as_posix()
        if p.is_file() and not rel.startswith(("logs/", "benchmarks/", "qa/", "ingest/header-cache")) \
                and not p.name.startswith("."):
            out[rel] = p.read_bytes()
    return out


# --- processes --------------------------------------------------------------------------------------------------
def _start(work, cfg, *args, log):
    """Snakemake in the background, under `timeout`, in its own session (so its jobs can be found)."""
    cmd = ["timeout", "900", sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--configfile", str(REPO / "config" / "config.yaml"),
           "--configfile", str(cfg), "--cores", "2", *args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _procs():
    """{pid: (ppid, pgid, state, cmdline)} of every process."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(p.name)] = (int(fields[1]), int(fields[2]), fields[0], cmd)
    return out


def _wait(cond, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _snakemake_pid(timeout_proc):
    return _wait(lambda: next((pid for pid, (ppid, *_r) in _procs().items() if ppid == timeout_proc.pid), None),
                 60, "snakemake to start")


def _job_pids(snakemake_pid):
    """Job processes (Snakemake's copies of the rule scripts) started by ``snakemake_pid``."""
    procs = _procs()

    def descends(pid):
        for _ in range(4):
            pid = procs.get(pid, (0,))[0]
            if pid == snakemake_pid:
                return True
        return False

    return [pid for pid, (_, _, st, cmd) in procs.items() if ".snakemake/scripts/" in cmd and st != "Z"
            and descends(pid)]


def _wait_group_gone(pgid, timeout=300):
    """Wait until no live process of the session is left (orphaned jobs of a killed Snakemake finish)."""
    _wait(lambda: not [p for p, (_, g, st, _c) in _procs().items() if g == pgid and st != "Z"], timeout,
          "the killed run's orphaned jobs to end")


# --- two uninterrupted runs from scratch ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    return _write_config(tmp_path_factory.mktemp("cfg") / "small.yaml", sim=SMALL, skymap={"patch_inner_px": 4000})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_cfg):
    work = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(small_cfg), timeout=900)
    return {"dir": work, "results": work / "results", "seconds": time.monotonic() - t0,
            "jobs": _job_stats(proc.stdout + proc.stderr)}


@pytest.fixture(scope="module")
def second(tmp_path_factory, small_cfg):
    work = tmp_path_factory.mktemp("second")
    run_snakemake(work, "--cores", "2", "--configfile", str(small_cfg), timeout=900)
    return {"dir": work, "results": work / "results"}


def test_two_runs_from_scratch_are_byte_identical(reference, second):
    a, b = _outputs(reference["results"]), _outputs(second["results"])
    assert set(a) == set(b)
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"{len(differ)} of {len(a)} outputs differ between two runs from scratch: {differ[:10]}"
    assert "objects/objects-0.parquet" in a and len(read_table(reference["results"] / "objects/objects-0.parquet")) > 100
    print(f"{len(a)} outputs byte-identical; a run takes {reference['seconds']:.0f} s for {reference['jobs']}")


# --- kill -9 of Snakemake, then of one of its jobs ----------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, small_cfg):
    work = tmp_path_factory.mktemp("interrupted")
    cfg = status.load_config([small_cfg])
    logs = work / "runs.log"
    rec = {"dir": work, "results": work / "results"}
    with open(logs, "a") as log:
        # 1. kill -9 the Snakemake process while calibrations run
        run = _start(work, small_cfg, log=log)
        sm_pid = _snakemake_pid(run)

        def calibrating():
            done = list((work / "results" / "calexp").glob("*/summary-*.json"))
            inc = status.incomplete_outputs(work)
            return len(done) >= 2 and any("/calexp/" in p for p in inc) and _job_pids(sm_pid)
        _wait(calibrating, 600, "calibrations to be under way")
        rec["status_running"] = status.collect_status(work, cfg)
        os.kill(sm_pid, signal.SIGKILL)
        run.wait(timeout=60)
        _wait_group_gone(run.pid)
        rec["status_killed"] = status.collect_status(work, cfg)
        rec["incomplete"] = status.incomplete_outputs(work)
        # complete files: outside every output marked incomplete (a calibrate job's folder holds its visit's files)
        rec["done_before"] = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()
                              and not _under(os.path.relpath(p, work), rec["incomplete"]) and "/logs/" not in str(p)
                              and "/benchmarks/" not in str(p) and not p.name.startswith(".")}
        # 2. what Snakemake will rerun: the lock a killed Snakemake leaves must be removed first
        rec["locked"] = run_snakemake(work, "-n", "--configfile", str(small_cfg), check=False).stdout
        run_snakemake(work, "--unlock", "--configfile", str(small_cfg))
        rec["dry_after_kill"] = run_snakemake(work, "-n", "--configfile", str(small_cfg)).stdout
        # 3. restart (no automatic retry), and kill -9 the first job it starts
        run = _start(work, small_cfg, "--retries", "0", log=log)
        sm_pid = _snakemake_pid(run)
        job = _wait(lambda: _job_pids(sm_pid), 600, "a job of the restarted run")[0]
        rec["killed_rule"] = re.search(r"\.(\w+)\.py", _procs()[job][3]).group(1)
        time.sleep(0.3)
        os.kill(job, signal.SIGKILL)
        rec["rc_job_killed"] = run.wait(timeout=900)
        rec["status_job_killed"] = st = status.collect_status(work, cfg)
        rec["failed_outputs_left"] = [o for outs in st.failed().outputs for o in outs if (work / o).exists()]
        rec["dry_after_job_kill"] = run_snakemake(work, "-n", "--configfile", str(small_cfg)).stdout
    # 4. finish
    run_snakemake(work, "--cores", "2", "--configfile", str(small_cfg), timeout=900)
    rec["dry_final"] = run_snakemake(work, "-n", "--configfile", str(small_cfg)).stdout
    rec["log"] = logs.read_text()
    return rec


def _under(path, outputs):
    """True when ``path`` is one of ``outputs`` or inside one of them (a folder output)."""
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)


def test_status_works_while_the_run_is_in_progress(interrupted):
    st = interrupted["status_running"]
    assert st.snakemake["running"] and st.snakemake["pids"]
    c = st.counts().loc["calibrate"]
    assert c["running"] >= 1 and c["failed"] == c["interrupted"] == 0
    # the running visit's CCDs are running, those already calibrated included (its folder is not finished)
    n = st.ccd_counts()
    assert n["running"] >= 4 and n["failed"] == n["interrupted"] == 0 and n["total"] == 8
    assert "Snakemake is running" in status.format_status(st)


def test_after_kill_9_of_snakemake_status_names_the_interrupted_jobs(interrupted):
    st = interrupted["status_killed"]
    assert not st.snakemake["running"] and st.snakemake["locked"]
    inter = st.units[st.units.state == "interrupted"]
    assert len(inter) >= 1 and "calibrate" in set(inter.stage)
    assert {o for outs in inter.outputs for o in outs} == interrupted["incomplete"]
    text = status.format_status(st)
    assert "interrupted" in text and "snakemake --unlock" in text and "--rerun-incomplete" in text
    assert "Directory cannot be locked" in interrupted["locked"]


def test_the_restart_reruns_only_the_unfinished_jobs(interrupted):
    st = interrupted["status_killed"]
    todo = st.units[st.units.state != "done"]
    planned = jobs_of_dry_run(interrupted["dry_after_kill"])
    assert planned == {(r.stage, frozenset(r.outputs)) for r in todo.itertuples()}
    # the interrupted jobs are rerun although their orphaned processes may have written every output
    inter = st.units[st.units.state == "interrupted"]
    assert {(r.stage, frozenset(r.outputs)) for r in inter.itertuples()} <= planned
    # and nothing that was complete was touched by the restarts
    changed = [p for p, t in interrupted["done_before"].items() if not p.exists() or p.stat().st_mtime_ns != t]
    assert not changed and len(interrupted["done_before"]) > 5


def test_a_job_killed_with_kill_9_is_failed_and_only_it_and_its_consumers_rerun(interrupted):
    assert interrupted["rc_job_killed"] != 0
    st = interrupted["status_job_killed"]
    failed = st.failed()
    assert len(failed) == 1 and failed.stage.item() == interrupted["killed_rule"]
    assert "killed by signal SIGKILL (9)" in failed.reason.item()
    assert not interrupted["failed_outputs_left"]  # Snakemake removed whatever the killed job had written
    planned = jobs_of_dry_run(interrupted["dry_after_job_kill"])
    todo = st.units[st.units.state != "done"]
    assert planned == {(r.stage, frozenset(r.outputs)) for r in todo.itertuples()}
    assert (failed.stage.item(), frozenset(failed.outputs.item())) in planned


def test_the_interrupted_run_ends_identical_to_an_uninterrupted_one(interrupted, reference):
    assert "Nothing to be done" in interrupted["dry_final"]
    a, b = _outputs(reference["results"]), _outputs(interrupted["results"])
    assert set(a) == set(b)
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, differ[:10]


def test_a_write_killed_half_way_never_leaves_an_output(tmp_path):
    """Every output is written to a temporary name and renamed: kill -9 before the rename leaves nothing."""
    code = ("import os, sys, time, numpy as np\n"
            "from skysnake import io\n"
            "real = os.replace\n"
            "def slow(a, b):\n"
            "    open(sys.argv[2], 'w').close(); time.sleep(60); real(a, b)\n"
            "io.os.replace = slow\n"
            "img = np.ones((256, 256), np.float32)\n"
            "io.write_exposure(sys.argv[1], io.Exposure(img, img.astype(np.int32), img, None))\n")
    target, ready = tmp_path / "calexp.fits", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target), str(ready)])
    _wait(ready.exists, 60, "the writer to reach the rename")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the debris has a temporary name


# --- a changed science parameter reruns only what it affects -------------------------------------------------------
# the processing stages, each depending only on stages before it (skymap has no consumer)
CORE = ["simulate_sky", "simulate_visit", "ingest", "refcat", "skymap", "calibrate", "registry", "warp", "coadd",
        "detect", "merge_detections", "measure", "select_reference", "forced_photometry", "object_catalog"]


@pytest.mark.parametrize("block, key, value, rerun", [
    ("calibrate", "detect_thresh", 6.0, CORE[CORE.index("calibrate"):]),
    ("quality", "max_seeing_arcsec", 1.9, CORE[CORE.index("registry"):]),
    ("coadd", "reject_sigma", 4.0, CORE[CORE.index("coadd"):]),
    ("multiband", "detect_thresh", 6.0, CORE[CORE.index("detect"):]),
    ("multiband", "merge_radius_arcsec", 0.6, CORE[CORE.index("merge_detections"):]),
    ("multiband", "min_ref_snr", 12.0, CORE[CORE.index("select_reference"):]),
])
def test_a_changed_parameter_reruns_only_the_stages_it_affects(reference, small_cfg, tmp_path, block, key, value,
                                                                 rerun):
    cfg = yaml.safe_load(small_cfg.read_text())
    cfg[block] = {**cfg.get(block, {}), key: value}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    jobs = _job_stats(run_snakemake(reference["dir"], "-n", "--configfile", str(changed)).stdout)
    assert {r for r in jobs if r in CORE} == set(rerun)  # its stage and what depends on it, nothing upstream
    assert all(jobs[r] == reference["jobs"][r] for r in rerun)  # every unit of those stages
    assert set(jobs) - set(CORE) <= {"all", "qa_visit", "qa_color", "qa_tract", "qa_truth"}


# --- a survey growing night by night, in a folder with a hostile name ------------------------------------------------
@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Raw files of 3 visits made once; inputs in a folder whose name is full of shell syntax."""
    base = tmp_path_factory.mktemp("survey")
    (base / "sim").mkdir()
    sim_cfg = {**SMALL, "visits_per_filter": 3, "dither_arcmin": 5.0}
    simcfg = _write_config(base / "sim.yaml", sim=sim_cfg, skymap={"patch_inner_px": 2500})
    run_snakemake(base / "sim", "--cores", "2", "--configfile", str(simcfg), "--until", "simulate_visit")
    from skysnake.plan import make_plan, sim_index

    plan = make_plan(sim_index(sim_cfg, raw_pattern="{visit}-{ccd}"), {"patch_inner_px": 2500, "tracts": []})
    t = plan.skymap[0]
    tract = {"id": 0, "ra": t.ra, "dec": t.dec, "size_deg": 0.97 * t.npatch_x * t.patch_inner * t.pixel_scale / 3600}
    raw = base / "sim" / "results" / "sim" / "raw"

    def workdir(name, visits):
        work = base / name
        (work / ODD_DIR).mkdir(parents=True)
        add(work, visits)
        cfg = _write_config(work / "files.yaml",
                            inputs={"source": "files", "paths": [glob.escape(ODD_DIR) + "/*.fits"]},
                            refcat={"source": "file", "path": str(base / "sim" / "results" / "sim" / "refcat.parquet")},
                            skymap={"patch_inner_px": 2500, "tracts": [tract]})
        return work, cfg

    def add(work, visits):
        for v in visits:
            for c in range(1, 5):
                shutil.copy(raw / str(v) / f"raw-{v}-{c}.fits", work / ODD_DIR / ODD_FILE.format(v=v, c=c))

    return {"base": base, "workdir": workdir, "add": add}


@pytest.fixture(scope="module")
def grown(survey):
    work, cfg = survey["workdir"]("grown", [1000, 1001])
    run_snakemake(work, "--cores", "2", "--configfile", str(cfg), timeout=900)
    survey["add"](work, [1002])
    dry = run_snakemake(work, "-n", "--configfile", str(cfg)).stdout
    run_snakemake(work, "--cores", "2", "--configfile", str(cfg), timeout=900)
    return {"dir": work, "config": cfg, "dry": dry, "results": work / "results"}


@pytest.fixture(scope="module")
def all_at_once(survey):
    work, cfg = survey["workdir"]("all_at_once", [1000, 1001, 1002])
    run_snakemake(work, "--cores", "2", "--configfile", str(cfg), timeout=900)
    return {"dir": work, "results": work / "results"}


def test_new_exposures_process_only_new_ccds_and_the_patches_they_touch(grown, survey):
    from skysnake.ingest import index_files
    from skysnake.plan import make_plan

    cfg = status.load_config([grown["config"]])
    index, skipped = index_files([str(grown["dir"] / glob.escape(ODD_DIR) / "*.fits")], instrument=cfg["instrument"])
    assert len(index) == 12 and skipped.empty
    plan = make_plan(index, cfg["skymap"], margin_arcsec=cfg["skymap"]["overlap_margin_arcsec"])
    o = plan.overlaps
    touched = sorted(set(o.loc[o.visit == 1002, "patch"]))
    assert 0 < len(touched) < len(plan.patches(0))  # the test means something: some patches are untouched
    jobs = _job_stats(grown["dry"])
    assert jobs["calibrate"] == 1  # one job: the new visit and its 4 CCDs, none of the 2 old visits
    assert jobs["warp"] == len(o.loc[o.visit == 1002, ["tract"]].drop_duplicates())  # the new visit's only
    for rule in ("coadd", "detect", "merge_detections", "measure", "select_reference", "forced_photometry"):
        assert jobs[rule] == len(touched), rule
    assert jobs["object_catalog"] == 1 and jobs.get("refcat", 0) == 0
    assert jobs.get("qa_visit") == 1 and jobs.get("qa_color") == len(touched)
    # exactly which jobs: every job names a new CCD, a touched patch, the tract or a survey-wide table
    for rule, outs in jobs_of_dry_run(grown["dry"]):
        names = " ".join(outs)
        assert ("1002" in names or any(f"/{p}/" in names or f"-{p}." in names for p in touched)
                or rule in ("ingest", "registry", "skymap", "object_catalog", "qa_tract")), (rule, names)


def test_grown_survey_equals_the_survey_processed_at_once(grown, all_at_once):
    a, b = _outputs(grown["results"]), _outputs(all_at_once["results"])
    assert set(a) == set(b)
    differ = sorted(k for k in a if a[k] != b[k] and not k.startswith("ingest/"))
    assert not differ, differ[:10]
    assert len(read_table(grown["results"] / "objects/objects-0.parquet")) > 200


# --- hostile names: no shell, no escape from the results folder ---------------------------------------------------
def test_hostile_file_names_are_processed_and_run_nothing(grown):
    reg_files = list((grown["results"] / "calexp").glob("*/calexp-*.fits"))
    assert len(reg_files) == 12
    for base in (grown["dir"], grown["dir"].parent, Path.home(), Path.cwd()):
        assert not list(base.glob("INJECTED*")), base
    # everything the runs wrote is under results/ or .snakemake/ (the inputs and configs were there before)
    for p in grown["dir"].rglob("*"):
        rel = p.relative_to(grown["dir"]).parts
        assert rel[0] in ("results", ".snakemake", ODD_DIR, "files.yaml"), p


def test_rules_never_use_a_shell():
    for smk in sorted((REPO / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        text = smk.read_text()
        assert not re.search(r"^\s+(shell|run):", text, re.MULTILINE), f"{smk.name} has a shell or run block"
        assert "shell(" not in text and "os.system" not in text and "subprocess" not in text, smk.name


@pytest.mark.parametrize("target", [
    "results/calexp/1000;touch INJECTED",
    "results/calexp/$(touch INJECTED)",
    "results/calexp/../../outside/1000",
    "results/warp/0/0_0/../../../../outside/warp-0-0_0-1000.fits",
    "results/coadd/0/0_0/coadd-0-0_0-../../../x.fits",
    "/tmp/outside/results/calexp/1000/calexp-1000-1.fits",
])
def test_targets_outside_the_wildcard_patterns_match_no_rule(reference, small_cfg, target):
    proc = run_snakemake(reference["dir"], "-n", target, "--configfile", str(small_cfg), check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and ("MissingRuleException" in out or "No rule to produce" in out), out[-1500:]
    assert not list(reference["dir"].glob("INJECTED*")) and not (reference["dir"] / "outside").exists()


def test_a_file_name_snakemake_would_read_as_a_wildcard_is_skipped_saying_so(tmp_path, survey):
    src = next((survey["base"] / "sim" / "results" / "sim" / "raw" / "1000").glob("raw-1000-1.fits"))
    (tmp_path / "in").mkdir()
    shutil.copy(src, tmp_path / "in" / "raw {visit}.fits")
    shutil.copy(src.with_name("raw-1000-2.fits"), tmp_path / "in" / "raw-1000-2.fits")
    cfg = _write_config(tmp_path / "files.yaml", inputs={"source": "files", "paths": ["in/*.fits"]},
                        refcat={"source": "file", "path": str(survey["base"] / "sim/results/sim/refcat.parquet")})
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(cfg), timeout=120)
    assert "skipped in/raw {visit}.fits: braces" in proc.stdout
    assert re.search(r"^calibrate\s+1$", proc.stdout, re.MULTILINE)
