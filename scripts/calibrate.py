"""Calibrate one CCD: masks, variance, background, sources, WCS and zeropoint.

Inputs: ``raw`` (the raw CCD file), ``refcat`` (the tract's reference catalog).
Outputs: ``calexp`` (FITS: IMAGE in nJy, MASK, VARIANCE, fitted TAN-SIP WCS),
``sources`` (parquet), ``summary`` (JSON sidecar gathered by the registry).
Config: ``calibrate.*`` (detection, matching, fitting options; ``header_fallback``), ``instrument.*``
(the preset: how to read the raw file, its weight and mask files, the zeropoint and seeing hints).

A data problem (unreadable file, no WCS, blank or saturated image, too few reference stars)
does not fail the job: the CCD is written as failed (empty calexp, empty source
table, summary with status "failed" and the reason) and the run goes on.
"""

import pandas as pd

from skysnake import calibrate
from skysnake.adapter import provenance, setup_logging, timed
from skysnake.errors import DataError
from skysnake.instruments import check_saturation, read_raw
from skysnake.io import Exposure, read_table, write_exposure, write_json, write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
ids = {"visit": int(sm.wildcards.visit), "ccd": int(sm.wildcards.ccd)}
paths = {"raw_path": sm.input.raw, "calexp_path": sm.output.calexp, "log_path": sm.log[0]}
prov = provenance(config={"calibrate": sm.params.calibrate, "instrument": sm.params.instrument},
                  inputs=[sm.input.raw, sm.input.refcat])
meta = {}
try:
    with timed(log, "read raw"):
        raw = read_raw(sm.input.raw, instrument=sm.params.instrument, hdu=sm.params.raw["hdu"])
        meta = raw.meta
        check_saturation(raw.image, meta["saturation"], path=sm.input.raw)
        refcat = read_table(sm.input.refcat)
        if len(refcat) == 0 and not sm.params.calibrate.get("header_fallback"):
            raise DataError(f"the reference catalog of this CCD's tract ({sm.input.refcat}) has no star: the "
                            "reference catalog file (refcat.path) does not cover the field", code="empty_refcat")
    with timed(log, "calibrate"):
        result = calibrate.calibrate_ccd(
            raw.image, header_wcs=raw.wcs, refcat=refcat, filter=meta["filter"], mjd=meta["mjd"],
            exptime=meta["exptime"], gain=meta["gain"], read_noise=meta["read_noise"],
            saturation=meta["saturation"], bpm=raw.bpm, config=sm.params.calibrate, variance=raw.variance,
            header_zeropoint=meta.get("zeropoint"), header_fwhm_px=meta.get("fwhm_px"))
    result.exposure.meta.update({"VISIT": ids["visit"], "CCD": ids["ccd"]})
    with timed(log, "write"):
        write_exposure(sm.output.calexp, result.exposure, provenance=prov)
        write_table(sm.output.sources, result.sources, meta=ids, provenance=prov)
    summary = {**result.summary, **ids, **paths}
    # step timings go to the log, not the summary: outputs are byte-identical from run to run
    log.info("step timings (s): %s", summary.pop("timing", {}))
    if summary.get("calib_method") == "header":
        log.warning("header calibration (calibrate.header_fallback): %s", summary["fallback_reason"])
    log.info("calibrated: seeing %.2f\", zp %.3f, astrometric rms %.3f\" from %d stars",
             summary["seeing_arcsec"], summary["zeropoint"], summary["astrom_rms_arcsec"], summary["n_astrom"])
except DataError as err:
    summary = {**calibrate.failure_summary(err, **ids), **paths}
    if sm.input.raw not in summary["reason"]:  # say where: the file (and HDU) the problem is in
        summary["reason"] = f"{sm.input.raw}[{sm.params.raw['hdu']}]: {summary['reason']}"
    log.error("visit %d ccd %d failed (%s): %s", ids["visit"], ids["ccd"], summary.get("code"), summary["reason"])
    write_exposure(sm.output.calexp, Exposure(None, None, None, None, meta={**ids, "STATUS": "failed"}),
                   provenance=prov)
    write_table(sm.output.sources, pd.DataFrame(columns=calibrate.SOURCE_COLUMNS), meta=ids, provenance=prov)
for k in ("filter", "mjd", "exptime"):  # header values, else the plan's
    summary[k] = meta.get(k, sm.params.raw[k])
write_json(sm.output.summary, {**summary, "provenance": prov})
