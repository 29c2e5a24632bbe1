"""Shared fixtures: the repository, the shared real data, and a real run of the demo workflow."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(sub=""):
    """Path to ../shared/data/<sub>. Skips with a reason where absent, but FAILS in CI (CI=true)."""
    path = SHARED_DATA / sub
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared data {path} is missing: the real-data tests must run in CI")
        pytest.skip(f"shared data {path} not present (it sits beside the repository in CI)")
    return path


def run_snakemake(workdir, *args, timeout=900, check=True):
    """Run the real workflow in ``workdir`` (outputs there), under a timeout, and return the CompletedProcess."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(REPO / "config" / "config.yaml"),
           *args]
    proc = subprocess.run(["timeout", str(timeout), *cmd], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def jobs_of_dry_run(text):
    """{(rule, frozenset(outputs))} of every job a ``snakemake -n`` lists."""
    jobs, rule = set(), None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if m:
            rule = m.group(1)
        elif rule and line.startswith("    output: "):
            jobs.add((rule, frozenset(o.strip() for o in line[12:].split(", "))))
            rule = None
    return jobs


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """Run the demo exactly as the README does (default config), in a temporary folder, once per session.

    Every workflow test module that reads the demo's outputs uses this fixture (test_workflow.py,
    test_qa_workflow.py): the demo runs once. SKYSNAKE_DEMO_DIR=<folder of a finished demo run>
    reuses that run (for developing the tests).
    """
    if os.environ.get("SKYSNAKE_DEMO_DIR"):
        work = Path(os.environ["SKYSNAKE_DEMO_DIR"])
        return {"dir": work, "results": work / "results",
                "dry": run_snakemake(work, "-n", "--cores", "2", "--forceall").stdout}
    work = tmp_path_factory.mktemp("demo")
    dry = run_snakemake(work, "-n", "--cores", "2")
    run_snakemake(work, "--cores", "2", timeout=1500)
    return {"dir": work, "results": work / "results", "dry": dry.stdout}
