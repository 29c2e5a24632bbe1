"""Shared fixtures: the repository, the shared real data, and a real run of the demo workflow."""

import os
import re
import shutil
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


# Disk: a workflow run writes 0.3-2 GB (the demo 3.7 GB); the suite holds at most one module's runs plus the
# demo at a time, and nothing once it has passed (tmp_path_retention_policy = "failed" in pyproject.toml).
_FAILED_MODULES = set()  # paths of test modules with a failed test: their folders are kept for inspection
_SESSION_DIRS = set()  # folders of session-scoped fixtures, used by several modules


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _FAILED_MODULES.add(item.path)
    return report


@pytest.fixture(scope="module", autouse=True)
def _free_module_folders(request, tmp_path_factory):
    """Remove the temporary folders a module's tests made once they are done, unless one of them failed."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.path in _FAILED_MODULES:
        return
    for path in set(base.iterdir()) - before - _SESSION_DIRS:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


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
    test_workflow_qa.py, run one after the other so that the demo's 3.7 GB are on disk only then): the demo
    runs once. SKYSNAKE_DEMO_DIR=<folder of a finished demo run>
    reuses that run (for developing the tests).
    """
    if os.environ.get("SKYSNAKE_DEMO_DIR"):
        work = Path(os.environ["SKYSNAKE_DEMO_DIR"])
        return {"dir": work, "results": work / "results",
                "dry": run_snakemake(work, "-n", "--cores", "2", "--forceall").stdout}
    work = tmp_path_factory.mktemp("demo")
    _SESSION_DIRS.add(work)
    dry = run_snakemake(work, "-n", "--cores", "2")
    run_snakemake(work, "--cores", "2", timeout=1500)
    return {"dir": work, "results": work / "results", "dry": dry.stdout}
