"""``skysnake status``: the plan's units are Snakemake's jobs, and each unit's state is read right.

The states are checked on a working directory laid out by hand the way Snakemake and the jobs leave
it (outputs, a failed CCD's summary, an ``incomplete`` marker, a run log with a killed job); the
real interrupted and failed runs are in test_restart.py and test_faults.py.
"""

import base64
import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, jobs_of_dry_run, run_snakemake

from skysnake import status
from skysnake.io import write_json

SMALL = {"sim": {"filters": ["r"], "visits_per_filter": 3, "ccd_nx": 512, "ccd_ny": 1024},
         "skymap": {"patch_inner_px": 2000}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("status")
    (d / "small.yaml").write_text(yaml.safe_dump(SMALL))
    return d


def _config(work):
    return status.load_config([REPO / "config" / "config.yaml", work / "small.yaml"])


@pytest.mark.workflow
def test_status_units_are_exactly_snakemakes_jobs(work):
    proc = run_snakemake(work, "-n", "--forceall", "--configfile", str(work / "small.yaml"), timeout=300)
    jobs = jobs_of_dry_run(proc.stdout)
    units = status.expected_units(_config(work), _plan(work))
    mine = {(r.stage, frozenset(r.outputs)) for r in units.itertuples()}
    assert len(jobs) == len(units) > 30
    assert mine == jobs, (sorted(mine - jobs)[:5], sorted(jobs - mine)[:5])
    # every unit has the log path its rule writes
    logs = set(re.findall(r"^    log: (\S+)", proc.stdout, re.MULTILINE))
    assert set(units["log"]) == logs


def _plan(work):
    import contextlib

    from skysnake.ingest import input_index
    from skysnake.plan import make_plan

    cfg = _config(work)
    with contextlib.chdir(work):
        index, _ = input_index(cfg, raw_sim_pattern="results/" + status.SIM_RAW)
    return make_plan(index, cfg["skymap"], margin_arcsec=cfg["skymap"]["overlap_margin_arcsec"])


def _touch(work, path, text="x"):
    p = work / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _mark_incomplete(work, path):
    """An ``incomplete`` marker exactly as Snakemake's file persistence writes it."""
    key = base64.urlsafe_b64encode(path.encode()).decode()
    _touch(work, f".snakemake/incomplete/{key}", json.dumps({"external_jobid": None}))


@pytest.fixture(scope="module")
def laid_out(work):
    """A run stopped half way: what each unit's outputs and Snakemake's records look like."""
    units = status.expected_units(_config(work), _plan(work))
    by = {(r.stage, r.unit): r for r in units.itertuples()}
    done_stages = ("simulate_sky", "simulate_visit", "ingest", "refcat", "skymap")
    for r in units.itertuples():
        if r.stage in done_stages:
            for o in r.outputs:
                _touch(work, o)
    ok = {"status": "ok", "seeing_arcsec": 0.8}
    failed = {"status": "failed", "code": "no_wcs", "reason": "raw-1000-3.fits[0]: no usable header WCS"}
    # visit 1000's calibrate job finished: one folder, 3 CCDs calibrated and one recorded as failed
    for (v, c), summary in {(1000, 1): ok, (1000, 2): ok, (1000, 3): failed, (1000, 4): ok}.items():
        for o in status.CCD_FILES[:2]:
            _touch(work, "results/" + o.format(visit=v, ccd=c))
        write_json(work / "results" / status.CCD_FILES[2].format(visit=v, ccd=c), {**summary, "visit": v, "ccd": c})
    # visit 1001's job was running when Snakemake was killed: its folder is marked incomplete, though the
    # orphaned job wrote some of its CCDs' files
    inter = by[("calibrate", "visit 1001")]
    _mark_incomplete(work, inter.outputs[0])
    write_json(work / "results" / status.CCD_FILES[2].format(visit=1001, ccd=1), {**ok, "visit": 1001, "ccd": 1})
    _touch(work, "results/calexp/1001/.calexp-1001-2.fits.abc123.tmp")  # a stray temp file
    # a warp whose job was killed (the log Snakemake writes), with its job log
    warp = next(r for r in units.itertuples() if r.stage == "warp")
    log = (f"rule warp:\n    input: x\n    output: {warp.outputs[0]}\n    log: {warp.log}\n    jobid: 7\n"
           "RuleException:\nCalledProcessError in file \"rules/warp.smk\", line 27:\n"
           "Command 'set -euo pipefail;  python .snakemake/scripts/tmpab.warp.py' died with <Signals.SIGKILL: 9>.\n"
           f"[Sun Nov 22 09:38:37 2026]\nError in rule warp:\n    message: None\n    jobid: 7\n"
           f"    output: {warp.outputs[0]}\n    log: {warp.log} (check log file(s) for error details)\n")
    _touch(work, ".snakemake/log/2026-01-01T000000.000000.snakemake.log", log)
    _touch(work, warp.log, "2026-01-01T00:00:00 INFO skysnake: warp 2 CCDs\n")
    return {"units": units, "warp": warp}


def test_states_of_a_run_stopped_half_way(work, laid_out):
    st = status.collect_status(work, _config(work))
    u = st.units.set_index(["stage", "unit"])
    # job states: one calibrate job per visit (a folder)
    assert u.loc[("calibrate", "visit 1000"), "state"] == "done"
    assert u.loc[("calibrate", "visit 1001"), "state"] == "interrupted"  # no Snakemake alive
    assert u.loc[("calibrate", "visit 1002"), "state"] == "pending"
    w = u.loc[("warp", laid_out["warp"].unit)]
    assert w.state == "failed" and "SIGKILL" in w.reason and ".snakemake/log/" in w.reason
    counts = st.counts()
    assert counts.loc["calibrate"].to_dict() == {"total": 3, "done": 1, "failed": 0, "running": 0,
                                                 "interrupted": 1, "pending": 1}
    # CCD states: a finished visit's CCDs from their summaries, the others from their visit's job
    c = st.ccds.set_index(["visit", "ccd"])
    assert c.loc[(1000, 1), "state"] == "done"
    bad = c.loc[(1000, 3)]
    assert (bad.state, bad.code) == ("failed", "no_wcs") and "raw-1000-3.fits" in bad.reason
    assert bad.log == "results/logs/calibrate/1000.log"
    assert c.loc[(1001, 1), "state"] == "interrupted"  # its summary exists, but its job did not finish
    assert c.loc[(1002, 3), "state"] == "pending"
    assert st.ccd_counts() == {"total": 12, "done": 3, "failed": 1, "running": 0, "interrupted": 4, "pending": 4}
    assert counts.loc["simulate_visit", "done"] == 3 and counts.loc["object_catalog", "pending"] == 1
    assert (counts["total"] == counts[status.STATES].sum(axis=1)).all()
    assert not st.snakemake["running"]
    assert any(n["kind"] == "temp_files" for n in st.notes)


def test_report_lists_failures_with_reason_and_log_and_says_how_to_resume(work, laid_out):
    st = status.collect_status(work, _config(work))
    text = status.format_status(st)
    assert "visit 1000 ccd 3 [no_wcs] raw-1000-3.fits[0]: no usable header WCS" in text
    assert "log: results/logs/calibrate/1000.log" in text
    assert f"warp {laid_out['warp'].unit}: the job's process was killed by signal SIGKILL (9)" in text
    assert f"log: {laid_out['warp'].log}" in text
    assert "1 job(s) were interrupted" in text and "--rerun-incomplete" in text
    assert re.search(r"^calibrate\s+3\s+1\s+0\s+0\s+1\s+1$", text, re.MULTILINE)
    assert re.search(r"^  CCDs\s+12\s+3\s+1\s+0\s+4\s+4$", text, re.MULTILINE)


def test_cli_prints_json_and_exits_nonzero_on_failures(work, laid_out):
    cmd = [sys.executable, "-m", "skysnake.cli", "status", "-d", str(work), "--configfile",
           str(REPO / "config" / "config.yaml"), "--configfile", str(work / "small.yaml"), "--json"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ccd_counts"]["failed"] == 1 and data["counts"]["calibrate"]["done"] == 1
    failed = [u for u in data["units"] if u["state"] == "failed"]
    assert {(u["stage"], u["code"]) for u in failed} == {("warp", "job_failed")}
    assert [(c["visit"], c["ccd"], c["code"]) for c in data["ccds"] if c["state"] == "failed"] == [(1000, 3, "no_wcs")]
    # a --config override is applied as in snakemake: another results folder has nothing done
    proc = subprocess.run(cmd + ["--config", "results=elsewhere"], check=False, capture_output=True, text=True,
                          timeout=120)
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["counts"]["calibrate"]["pending"] == 3 and data["ccd_counts"]["pending"] == 12


def test_cli_without_config_says_what_to_pass(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "skysnake.cli", "status", "-d", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--configfile" in proc.stderr


def test_fill_defaults_matches_the_schema():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    cfg = status.fill_defaults({"skymap": {"patch_inner_px": 1234}}, schema)
    assert cfg["skymap"] == {"pixel_scale": 0.2, "patch_inner_px": 1234, "patch_border_px": 100,
                             "overlap_margin_arcsec": 30.0, "tracts": []}
    assert cfg["results"] == "results" and cfg["inputs"]["source"] == "sim"
