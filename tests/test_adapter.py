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
