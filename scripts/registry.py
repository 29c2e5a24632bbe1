"""Gather every CCD's calibration summary into the sqlite registry.

Inputs: the summary sidecars (JSON) of every CCD.
Outputs: registry.sqlite (table ``ccd``).
Config: ``quality.*`` (cuts deciding which CCDs enter warps and coadds).
"""

from skysnake.adapter import setup_logging
from skysnake.io import read_json
from skysnake.registry import rows_from_summaries, write_registry

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
summaries = [read_json(p) for p in sm.input]
rows = rows_from_summaries(summaries, cuts=sm.params.quality)
write_registry(sm.output[0], rows)
n_ok = sum(r["status"] == "ok" for r in rows)
n_sel = sum(r["selected"] for r in rows)
log.info("%d CCDs: %d calibrated, %d failed, %d selected for coadds", len(rows), n_ok, len(rows) - n_ok, n_sel)
for r in rows:
    if not r["selected"]:
        log.info("visit %s ccd %s left out: %s", r["visit"], r["ccd"], r["reject_reason"])
