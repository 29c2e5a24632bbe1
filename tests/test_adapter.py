"""The script adapters' helpers: a crash leaves its traceback in the job's log."""

import subprocess
import sys


def test_an_uncaught_exception_is_logged_with_its_traceback_and_still_fails_the_job(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = (
        "from skysnake.adapter import setup_logging\n"
        f"log = setup_logging({str(log)!r})\n"
        "log.info('started')\n"
        "def broken():\n"
        "    raise ValueError('a bug in the stage')\n"
        "broken()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1  # the job still fails, so Snakemake sees it
    text = log.read_text()
    assert "started" in text
    assert "job failed with an uncaught ValueError: a bug in the stage" in text
    assert "Traceback" in text and "in broken" in text
    assert "a bug in the stage" in proc.stderr  # and it is still on stderr, once
    assert proc.stderr.count("Traceback") == 1


def test_the_job_log_ends_with_the_process_cpu_time_and_peak_memory(tmp_path):
    """The exact CPU time of the job's process is logged at exit (Snakemake's benchmark samples it every
    0.5 s and misses the end of short jobs); a job that spins for ~0.4 s of CPU and holds ~200 MB says so."""
    import os
    import re

    log = tmp_path / "job.log"
    script = (
        "import time, numpy as np\n"
        "from skysnake.adapter import setup_logging\n"
        f"log = setup_logging({str(log)!r})\n"
        "a = np.ones(25_000_000)\n"  # 200 MB, touched
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.4:\n"
        "    pass\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    text = log.read_text()
    start = re.search(r"process start-up (\d+\.\d+) s", text)
    usage = re.search(r"process cpu (\d+\.\d+) s, peak rss (\d+) MB, wall (\d+\.\d+) s", text)
    assert start and usage, text
    cpu, rss, wall = float(usage.group(1)), float(usage.group(2)), float(usage.group(3))
    assert 0.0 < float(start.group(1)) < wall
    # at least the spin; at most every core for the whole wall (numpy's BLAS threads start with it; 10 ms ticks)
    assert cpu >= 0.4 and cpu <= wall * (os.cpu_count() or 1) + 0.05
    assert 200 <= rss < 400
    assert text.count("process cpu") == 1


def test_finish_exits_zero_with_everything_flushed_and_a_failure_still_fails(tmp_path):
    """``finish`` ends a job without the interpreter's teardown: the log (with its usage line), standard output
    and the outputs written before it are complete; a job that raises before it still exits 1."""
    log = tmp_path / "job.log"
    out = tmp_path / "out.txt"
    script = (
        "import sys\n"
        "from skysnake.adapter import finish, setup_logging\n"
        f"log = setup_logging({str(log)!r})\n"
        f"with open({str(out)!r}, 'w') as fh:\n"
        "    fh.write('x' * 100000)\n"
        "log.info('wrote it')\n"
        "print('to stdout', end='')\n"
        "sys.stdout.write(' still buffered')\n"
        "if len(sys.argv) > 1:\n"
        "    raise RuntimeError('a bug before the end')\n"
        "finish(log)\n"
        "log.info('never reached')\n"
    )
    ok = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "to stdout still buffered"
    assert out.read_text() == "x" * 100000
    text = log.read_text()
    assert "wrote it" in text and "never reached" not in text
    assert text.count("process cpu") == 1 and text.rstrip().endswith("(the whole job process)")
    bad = subprocess.run([sys.executable, "-c", script, "fail"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "a bug before the end" in log.read_text()
