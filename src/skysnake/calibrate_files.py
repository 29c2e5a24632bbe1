"""Calibrate one CCD from its files to its files: the body of the calibrate job, once per CCD of a visit.

:func:`calibrate_file` reads the raw CCD and its reference catalog, runs
:func:`skysnake.calibrate.calibrate_ccd` and writes the calibrated exposure, the source table and the
summary sidecar. A data problem (:class:`~skysnake.errors.DataError`: unreadable file, no WCS, blank or
saturated image, too few reference stars) is recorded for that CCD (empty calexp, empty source table,
summary with status ``"failed"`` and the reason naming the file) and the function returns normally, so
the job goes on with the visit's next CCD; any other exception (a bug) propagates and fails the job.
"""

from __future__ import annotations

import pandas as pd

from . import calibrate
from .adapter import timed
from .errors import DataError
from .instruments import check_saturation, read_raw
from .io import Exposure, read_table, write_exposure, write_json, write_table

#: keys of a CCD unit (the calibrate rule's ``params.units[ccd]``, rules/common.smk ``calibrate_units``)
UNIT_KEYS = ("raw", "refcat", "hdu", "visit", "ccd", "filter", "mjd", "exptime", "calexp", "sources", "summary")


def calibrate_file(unit, *, calibrate_config, instrument, provenance, log, log_path, refcats=None):
    """Calibrate the CCD ``unit`` describes and write its three outputs.

    Parameters
    ----------
    unit : dict
        :data:`UNIT_KEYS`: ``raw`` (raw file), ``refcat`` (the reference catalog of the tract the CCD is
        calibrated against), ``hdu``, ``visit``, ``ccd``, ``filter``, ``mjd``, ``exptime`` (the plan's
        values, used when the header has none), and the output paths ``calexp``, ``sources``, ``summary``.
    calibrate_config, instrument : dict
        The ``calibrate`` and ``instrument`` config blocks.
    provenance : dict
        Provenance record of the CCD's outputs (:func:`skysnake.adapter.provenance`).
    log : logging.Logger
        Where the steps are logged; every line names the CCD.
    log_path : str
        The job's log file, recorded in the summary.
    refcats : dict, optional
        ``{path: table}`` of the reference catalogs already read, shared by the CCDs of one job: a visit's
        CCDs are mostly calibrated against the same tract's catalog, read once (it is not modified).

    Returns
    -------
    dict
        The summary as written (``status`` ``"ok"`` or ``"failed"``).
    """
    ids = {"visit": int(unit["visit"]), "ccd": int(unit["ccd"])}
    who = f"visit {ids['visit']} ccd {ids['ccd']}"
    raw_path, refcat_path = unit["raw"], unit["refcat"]
    paths = {"raw_path": raw_path, "calexp_path": unit["calexp"], "log_path": log_path}
    meta = {}
    try:
        with timed(log, f"{who}: read raw"):
            raw = read_raw(raw_path, instrument=instrument, hdu=unit["hdu"])
            meta = raw.meta
            check_saturation(raw.image, meta["saturation"], path=raw_path)
            refcat = _read_refcat(refcat_path, refcats)
            if len(refcat) == 0 and not calibrate_config.get("header_fallback"):
                raise DataError(f"the reference catalog of this CCD's tract ({refcat_path}) has no star: the "
                                "reference catalog file (refcat.path) does not cover the field", code="empty_refcat")
        with timed(log, f"{who}: calibrate"):
            result = calibrate.calibrate_ccd(
                raw.image, header_wcs=raw.wcs, refcat=refcat, filter=meta["filter"], mjd=meta["mjd"],
                exptime=meta["exptime"], gain=meta["gain"], read_noise=meta["read_noise"],
                saturation=meta["saturation"], bpm=raw.bpm, config=calibrate_config, variance=raw.variance,
                header_zeropoint=meta.get("zeropoint"), header_fwhm_px=meta.get("fwhm_px"))
        del raw, refcat  # one CCD's arrays at a time: the raw planes go before the outputs are written
        result.exposure.meta.update({"VISIT": ids["visit"], "CCD": ids["ccd"]})
        with timed(log, f"{who}: write"):
            write_exposure(unit["calexp"], result.exposure, provenance=provenance)
            write_table(unit["sources"], result.sources, meta=ids, provenance=provenance)
        summary = {**result.summary, **ids, **paths}
        del result
        # step timings go to the log, not the summary: outputs are byte-identical from run to run
        log.info("%s: step timings (s): %s", who, summary.pop("timing", {}))
        if summary.get("calib_method") == "header":
            log.warning("%s: header calibration (calibrate.header_fallback): %s", who, summary["fallback_reason"])
        log.info("%s calibrated: seeing %.2f\", zp %.3f, astrometric rms %.3f\" from %d stars", who,
                 summary["seeing_arcsec"], summary["zeropoint"], summary["astrom_rms_arcsec"], summary["n_astrom"])
    except DataError as err:
        summary = {**calibrate.failure_summary(err, **ids), **paths}
        if raw_path not in summary["reason"]:  # say where: the file (and HDU) the problem is in
            summary["reason"] = f"{raw_path}[{unit['hdu']}]: {summary['reason']}"
        log.error("%s failed (%s): %s", who, summary.get("code"), summary["reason"])
        write_exposure(unit["calexp"], Exposure(None, None, None, None, meta={**ids, "STATUS": "failed"}),
                       provenance=provenance)
        write_table(unit["sources"], pd.DataFrame(columns=calibrate.SOURCE_COLUMNS), meta=ids, provenance=provenance)
    for k in ("filter", "mjd", "exptime"):  # header values, else the plan's
        summary[k] = meta.get(k, unit[k])
    summary = {**summary, "provenance": provenance}
    write_json(unit["summary"], summary)
    return summary


def _read_refcat(path, cache):
    """The reference catalog at ``path``, read once per ``cache`` (every time without one)."""
    if cache is None:
        return read_table(path)
    if path not in cache:
        cache[path] = read_table(path)
    return cache[path]
