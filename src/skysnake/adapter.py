"""Helpers for the thin script adapters (scripts/*.py): logging and provenance.

Nothing here knows about Snakemake; scripts pass plain paths and dicts.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from . import __version__


def setup_logging(logfile, *, name="skysnake"):
    """Log to ``logfile`` (and stderr) with timestamps; Python warnings go to the log too."""
    Path(logfile).parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    fh = logging.FileHandler(logfile, mode="w")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    root.addHandler(fh)
    root.addHandler(sh)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    log = logging.getLogger(name)
    _log_uncaught_exceptions(log)
    started = process_age()
    if started is not None:
        log.info("process start-up %.3f s (interpreter and imports, before this line)", started)
    if not _AT_EXIT:  # once per process, however often logging is set up
        _AT_EXIT.append(atexit.register(_log_process_usage, log))
    return log


_AT_EXIT = []


def process_age():
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks since boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def finish(log):
    """End a job's process now that its outputs are written: log its usage, flush the logs and standard
    streams, and exit with status 0 without the interpreter's teardown.

    Tearing down the modules a job imports (numpy, astropy, pandas, scipy ...) takes 0.15-0.3 s, as long
    as a small job's work. Call this as the script's last statement, after every output is written and
    closed (skysnake's writers close their files, the registry its database); anything still buffered
    elsewhere, or left to other exit handlers, is lost. A job that fails never gets here: it raises, and
    Python exits with status 1 as usual.
    """
    _log_process_usage(log)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing left to save
            pass
    os._exit(0)


def _log_process_usage(log):
    """At exit: the job process's own CPU time and peak memory, exact (Snakemake's benchmark samples them
    every 0.5 s and so misses the end of short jobs)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime + kids.ru_utime + kids.ru_stime
    age = process_age()
    rss_mb = ru.ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)  # bytes on macOS, kB on Linux
    log.info("process cpu %.3f s, peak rss %.0f MB, wall %s (the whole job process)", cpu, rss_mb,
             "?" if age is None else f"{age:.3f} s")


def _log_uncaught_exceptions(log):
    """A crash (a bug, not a data problem) leaves its traceback in the job's log, where status points."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):
            log.critical("job failed with an uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, tb))
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.FileHandler):
                    h.flush()
            return  # the StreamHandler already printed it to stderr
        previous(kind, value, tb)

    sys.excepthook = hook


def set_threads(n):
    """Let compiled kernels (numba) use exactly the job's ``threads``, no more."""
    import numba

    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


@contextmanager
def timed(log, what):
    """Log how long a step took."""
    t0 = time.perf_counter()
    yield
    log.info("%s: %.3f s", what, time.perf_counter() - t0)


@lru_cache(maxsize=1)
def code_version():
    """skysnake's version, with the git commit of the source tree when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def config_hash(cfg):
    """Short stable hash of a config (or config block)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(*, config, inputs=()):
    """Provenance record for an output: code version, config hash, input files."""
    return {
        "version": code_version(),
        "config_hash": config_hash(config),
        "inputs": [str(p) for p in inputs],
    }
