"""Gather every CCD's calibration summary into the sqlite registry.

Inputs: the calibrate folders of every visit.
Outputs: registry.sqlite (table ``ccd``).
Params: ``summaries`` (the summary sidecar, JSON, of every CCD, inside those folders), ``quality`` (cuts deciding
which CCDs enter warps and coadds), ``problems`` (input CCDs that
could not be scheduled: files skipped at ingest, CCDs missing from a visit), recorded as failed.
"""

from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_json
from skysnake.registry import rows_from_summaries, write_registry

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
summaries = [read_json(p) for p in sm.params.summaries]
have = {(s["visit"], s["ccd"]) for s in summaries}
for p in sm.params.problems:  # never calibrated: a failed row says why
    if (p["visit"], p["ccd"]) not in have:
        summaries.append({"visit": p["visit"], "ccd": p["ccd"], "filter": p.get("filter"), "status": "failed",
                          "code": p["code"], "reason": p["reason"], "raw_path": p.get("raw")})
rows = rows_from_summaries(summaries, cuts=sm.params.quality)
write_registry(sm.output[0], rows, provenance=provenance(config=sm.params.quality, inputs=list(sm.params.summaries)))
n_ok = sum(r["status"] == "ok" for r in rows)
n_sel = sum(r["selected"] for r in rows)
log.info("%d CCDs: %d calibrated, %d failed, %d selected for coadds", len(rows), n_ok, len(rows) - n_ok, n_sel)
for r in rows:
    if r["status"] != "ok":
        log.warning("visit %s ccd %s failed (%s): %s", r["visit"], r["ccd"], r["code"], r["reason"])
    elif not r["selected"]:
        log.info("visit %s ccd %s left out: %s", r["visit"], r["ccd"], r["reject_reason"])
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
