#!/usr/bin/env python3
"""Job state for Snakemake's cluster-generic executor on PBS/Torque: prints running, success or failed.

Called as ``status.py JOBID`` (profiles/pbs/config.yaml, cluster-generic-status-cmd). Reads
``qstat -f -x JOBID`` (PBS Pro: -x includes finished jobs) or ``qstat -f JOBID`` (Torque):

* job_state Q, H, W, T, S, R, E, B (queued, held, waiting, moving, suspended, running, exiting) -> running
* job_state C or F (completed/finished) -> success if its exit status is 0, failed otherwise
  (PBS Pro: ``Exit_status``; Torque: ``exit_status``). Slurm's Torque wrappers (slurm-wlm-torque)
  report C without an exit status: then ``sacct`` gives the state where it exists.
* no exit status known at all (the job was purged from qstat's memory): success. Snakemake then
  checks that the job's outputs exist; skysnake writes every output under a temporary name and
  renames it when complete, so a job that died has no output and is reported failed.
"""

import re
import shutil
import subprocess
import sys

RUNNING = set("QHWTSREB")


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def qstat_fields(jobid):
    out = _run(["qstat", "-f", "-x", jobid])
    if "job_state" not in out:
        out = _run(["qstat", "-f", jobid])
    return dict(re.findall(r"^\s*([\w.]+)\s*=\s*(.*?)\s*$", out, flags=re.M))


def sacct_state(jobid):
    if not shutil.which("sacct"):
        return None
    out = _run(["sacct", "-X", "-n", "-P", "-j", jobid.split(".")[0], "-o", "State"]).split()
    return out[0] if out else None


def status(jobid):
    fields = qstat_fields(jobid)
    state = fields.get("job_state", "")
    if state and state[0] in RUNNING:
        return "running"
    code = fields.get("Exit_status", fields.get("exit_status"))
    if code is not None:
        return "success" if code.strip() == "0" else "failed"
    sacct = sacct_state(jobid)
    if sacct:
        if sacct in ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING"):
            return "running"
        return "success" if sacct == "COMPLETED" else "failed"
    return "success"


if __name__ == "__main__":
    print(status(sys.argv[1]))
