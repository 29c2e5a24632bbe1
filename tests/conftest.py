"""Shared fixtures: the repository, the shared real data, and a real run of the demo workflow."""

import os
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
