"""Calibrate the CCDs of one visit, one after the other: masks, variance, background, sources, WCS, zeropoint.

Inputs: the visit's raw files and the reference catalogs its CCDs are calibrated against.
Outputs: one folder, ``calexp/{visit}``, holding per CCD ``calexp-{visit}-{ccd}.fits`` (FITS: IMAGE in nJy,
MASK, VARIANCE, fitted TAN-SIP WCS), ``sources-{visit}-{ccd}.parquet`` and ``summary-{visit}-{ccd}.json``
(the sidecar the registry gathers).
Params: ``units`` ({ccd: {raw, refcat, hdu, filter, mjd, exptime, calexp, sources, summary, ...}}, in plan
order), ``calibrate``, ``instrument``.
Config: ``calibrate.*`` (detection, matching, fitting options; ``header_fallback``), ``instrument.*``
(the preset: how to read the raw file, its weight and mask files, the zeropoint and seeing hints).

One job per visit so that a visit pays one Python start-up, not one per CCD. A data problem on one CCD
(unreadable file, no WCS, blank or saturated image, too few reference stars) does not fail the job: that CCD
is written as failed (empty calexp, empty source table, summary with status "failed" and the reason) and
the visit's other CCDs are calibrated. A bug (any other exception) fails the job.
"""

from pathlib import Path

from skysnake.adapter import finish, provenance, setup_logging
from skysnake.calibrate_files import calibrate_file

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
Path(sm.output[0]).mkdir(parents=True, exist_ok=True)
config = {"calibrate": sm.params.calibrate, "instrument": sm.params.instrument}
failed, refcats = [], {}  # each tract's refcat read once for the visit's CCDs
for ccd, unit in sm.params.units.items():
    prov = provenance(config=config, inputs=[unit["raw"], unit["refcat"]])
    summary = calibrate_file(unit, calibrate_config=sm.params.calibrate, instrument=sm.params.instrument,
                             provenance=prov, log=log, log_path=sm.log[0], refcats=refcats)
    if summary["status"] != "ok":
        failed.append(ccd)
log.info("visit %s: %d CCDs calibrated, %d failed%s", sm.wildcards.visit, len(sm.params.units) - len(failed),
         len(failed), f" (CCDs {failed})" if failed else "")
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
