"""The workflow on a REAL Slurm (and PBS through Slurm's Torque wrappers), started on localhost.

``pytest -m slurm`` runs these alone. A session fixture installs (Debian packages, if missing) and
starts munged, MariaDB, slurmdbd, slurmctld and slurmd with ``tests/cluster/slurm.sh`` and stops
every daemon by the PID in its pidfile at the end, also when a test fails. Needs root and apt (as
CI has); elsewhere the tests skip saying why, and FAIL under CI=true.

One module fixture runs a reduced survey (2 filters x 1 visit, 4 small CCDs, 1 tract of 2 patches)
three ways at once, each through ``conftest.run_snakemake`` (under ``timeout``):

* locally (``--cores 1``): the reference;
* with ``profiles/slurm``, where the per-visit QA job is given ``mem_mb=30`` so Slurm kills it for
  memory (and no retry): the run must report it and finish everything else; a rerun with the plain
  profile then completes only what is missing;
* with ``profiles/pbs`` (cluster-generic executor: qsub, qstat, qdel).

The catalogs and every other data product must be byte-identical to the local run's.
"""

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

SLURM_SH = REPO / "tests" / "cluster" / "slurm.sh"
REDUCED = {"sim": {"filters": ["g", "r"], "visits_per_filter": 1, "ccd_nx": 512, "ccd_ny": 1024,
                   "star_density": 120000},
           "skymap": {"patch_inner_px": 4000}}
VISITS = (1000, 1001)
OBJECTS = "results/objects/objects-0.parquet"
QA_VISIT = [f"results/qa/visit/{v}/{kind}-{v}.png" for v in VISITS for kind in ("astrometry", "focalplane")]
# Data products compared byte for byte (logs, benchmarks and figures are not outputs to compare)
NOT_COMPARED = ("logs/", "benchmarks/", "qa/")
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "2"]


def _need_root_and_apt():
    why = None
    if os.geteuid() != 0:
        why = "the Slurm tests start daemons and install Debian packages: they need root"
    elif not (shutil.which("apt-get") or shutil.which("slurmctld")):
        why = "the Slurm tests need Debian's apt-get (or Slurm already installed)"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm with slurmdbd; stopped (every daemon by PID) at the end of the session."""
    _need_root_and_apt()
    # not under pytest's 0700 tmp folders: MariaDB runs as user mysql and must reach its data dir
    state = Path(tempfile.mkdtemp(prefix="skysnake-slurm-", dir="/tmp"))
    try:
        proc = subprocess.run(["timeout", "600", "bash", str(SLURM_SH), "start", str(state)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                             for p in sorted(state.rglob("*.log")))
            pytest.fail(f"could not start Slurm ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{logs}")
        yield state
    finally:
        subprocess.run(["timeout", "120", "bash", str(SLURM_SH), "stop", str(state)], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _submitted(text):
    """Cluster jobs submitted, as Snakemake logs them (Slurm and cluster-generic executors)."""
    return len(re.findall(r"has been submitted with SLURM jobid|^Submitted (?:group )?job .* with external jobid",
                          text, flags=re.M))


def _job_total(dry):
    return int(re.search(r"^total\s+(\d+)", dry, flags=re.M).group(1))


def _files(results):
    return {str(p.relative_to(results)): p for p in results.rglob("*")
            if p.is_file() and not str(p.relative_to(results)).startswith(NOT_COMPARED)}


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for k, v in REDUCED.items():
        cfg[k] = {**cfg[k], **v}
    cfgfile = base / "reduced.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    work = {name: base / name for name in ("local", "slurm", "pbs")}
    for w in work.values():
        w.mkdir()
    conf = ["--configfile", str(cfgfile)]
    slurm = ["--profile", str(REPO / "profiles" / "slurm"), *FAST_STATUS]
    pbs = ["--profile", str(REPO / "profiles" / "pbs")]
    rec = {"work": work}
    rec["dry_local"] = run_snakemake(work["local"], *conf, "-n", "--cores", "1", OBJECTS, *QA_VISIT).stdout
    rec["dry_slurm"] = run_snakemake(work["slurm"], *conf, *slurm, "-n", OBJECTS, *QA_VISIT).stdout
    calls = {
        "local": (work["local"], *conf, "--cores", "1", OBJECTS),
        # the QA job gets 30 MB: Slurm kills it for memory; no retry, so the run reports it
        # (--set-resources takes several values: an option must follow it, not the targets)
        "slurm": (work["slurm"], *conf, *slurm, "--set-resources", "qa_visit:mem_mb=30", "--retries", "0",
                  OBJECTS, *QA_VISIT),
        "pbs": (work["pbs"], *conf, *pbs, OBJECTS),
    }
    with ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(run_snakemake, *a, timeout=900, check=False) for k, a in calls.items()}
        rec.update({k: f.result() for k, f in futures.items()})
    # what the run with the killed job left, before the rerun
    rec["after_kill"] = {t: (work["slurm"] / t).exists() for t in (OBJECTS, *QA_VISIT)}
    rec["slurm_rerun"] = run_snakemake(work["slurm"], *conf, *slurm, OBJECTS, *QA_VISIT, timeout=600, check=False)
    rec["dry_after"] = run_snakemake(work["slurm"], *conf, *slurm, "-n", OBJECTS, *QA_VISIT).stdout
    return rec


def _out(proc):
    return proc.stdout + proc.stderr


def test_local_and_pbs_runs_succeed(runs):
    for name in ("local", "pbs"):
        assert runs[name].returncode == 0, f"{name} run failed:\n{_out(runs[name])[-6000:]}"
        assert (runs["work"][name] / OBJECTS).stat().st_size > 0


def test_slurm_run_reports_the_job_killed_for_memory_and_finishes_the_others(runs):
    proc, work = runs["slurm"], runs["work"]["slurm"]
    text = _out(proc)
    assert proc.returncode != 0, "a job was killed: the run must fail"
    assert "Error in group visit_qa" in text or "Error in rule qa_visit" in text
    # Slurm's own log of the killed job says why
    slurm_logs = "".join(p.read_text(errors="replace") for p in (work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert "exceeded memory limit" in slurm_logs.lower() or "oom" in slurm_logs.lower()
    # every other job finished: the catalog was made; the killed job left no output
    after = runs["after_kill"]
    assert after[OBJECTS]
    assert not any(after[q] for q in QA_VISIT)


def test_slurm_rerun_completes_only_what_was_missing(runs):
    proc, work = runs["slurm_rerun"], runs["work"]["slurm"]
    assert proc.returncode == 0, _out(proc)[-6000:]
    assert all((work / q).stat().st_size > 0 for q in QA_VISIT)
    assert _submitted(_out(proc)) == 1  # the two qa_visit jobs, one group job
    assert "Nothing to be done" in runs["dry_after"]


def test_cluster_outputs_are_byte_identical_to_the_local_run(runs):
    ref = _files(runs["work"]["local"] / "results")
    assert OBJECTS.removeprefix("results/") in ref and len(ref) > 30
    for name in ("slurm", "pbs"):
        got = _files(runs["work"][name] / "results")
        assert set(ref) <= set(got), f"{name}: missing {sorted(set(ref) - set(got))[:5]}"
        differ = [k for k, p in ref.items() if p.read_bytes() != got[k].read_bytes()]
        assert differ == [], f"{name}: {len(differ)} of {len(ref)} files differ from the local run, e.g. {differ[:5]}"


def test_grouping_submits_fewer_cluster_jobs(runs):
    jobs = _job_total(runs["dry_local"])
    slurm_jobs = _submitted(_out(runs["slurm"])) + _submitted(_out(runs["slurm_rerun"]))
    pbs_jobs = _submitted(_out(runs["pbs"]))
    n_qa = 2
    # 2 simulated visits, their 2 calibrate jobs and their warps -> 1 job; 1 patch's warps, coadds, measurement -> 1 job each
    assert slurm_jobs <= jobs - 10, (slurm_jobs, jobs)
    assert pbs_jobs <= jobs - n_qa - 10, (pbs_jobs, jobs)


def test_every_job_stays_within_its_declared_memory(runs):
    """Peak RSS of every job of the local run (benchmark files) <= the mem_mb its rule declares."""
    declared = {}
    for block in re.split(r"\n(?=\[|rule |localrule )", runs["dry_local"]):
        bench = re.search(r"benchmark: (\S+)", block)
        mem = re.search(r"mem_mb=(\d+)", block)
        if bench and mem:
            declared[bench.group(1)] = int(mem.group(1))
    work = runs["work"]["local"]
    checked = 0
    for bench, mem_mb in declared.items():
        path = work / bench
        if not path.exists():
            continue
        header, row = path.read_text().splitlines()[:2]
        max_rss = float(dict(zip(header.split("\t"), row.split("\t")))["max_rss"])
        assert max_rss <= mem_mb, f"{bench}: peak RSS {max_rss:.0f} MB > declared mem_mb {mem_mb}"
        checked += 1
    assert checked >= 15
