"""skysnake.calibrate_files: the calibrate job's per-CCD body, run CCD after CCD as a visit's job does.

A visit with one bad CCD among good ones: the good CCDs are calibrated, the bad one is recorded as failed
(empty calexp, empty source table, summary naming the file) and the loop goes on; a bug still fails the job.
"""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skysnake import calibrate, sim
from skysnake.calibrate_files import UNIT_KEYS, calibrate_file
from skysnake.io import read_exposure, read_json, read_table, write_hdulist, write_table

SIM_CFG = {"star_density": 150000.0, "seed": 77, "ccd_nx": 512, "ccd_ny": 1024, "filters": ["r"],
           "visits_per_filter": 1}
VISIT = 1000
INSTRUMENT = {"name": "generic", "bpm_hdu": "BPM"}


@pytest.fixture(scope="module")
def visit(tmp_path_factory):
    """The raw files of 3 CCDs of one visit (CCD 2 replaced by random bytes) and the refcat, on disk."""
    d = tmp_path_factory.mktemp("visit")
    design = sim.survey_design(SIM_CFG)
    truth, refcat = sim.make_sky(design)
    refcat = refcat.to_pandas() if isinstance(refcat, Table) else refcat
    write_table(d / "refcat-0.parquet", refcat)
    units, truths = {}, {}
    for ccd in (1, 2, 3):
        image, bpm, header, record = sim.render_ccd(design, truth, visit=VISIT, ccd=ccd)
        raw = d / "raw" / f"raw-{VISIT}-{ccd}.fits"
        write_hdulist(raw, fits.HDUList([fits.PrimaryHDU(data=image, header=header),
                                         fits.ImageHDU(data=bpm.astype("uint8"), name="BPM")]))
        truths[ccd] = record
        out = d / "calexp" / str(VISIT)
        units[ccd] = {"raw": str(raw), "refcat": str(d / "refcat-0.parquet"), "hdu": 0, "visit": VISIT, "ccd": ccd,
                      "filter": "r", "mjd": float(record["mjd"]), "exptime": float(header["EXPTIME"]),
                      "calexp": str(out / f"calexp-{VISIT}-{ccd}.fits"),
                      "sources": str(out / f"sources-{VISIT}-{ccd}.parquet"),
                      "summary": str(out / f"summary-{VISIT}-{ccd}.json")}
    (d / "raw" / f"raw-{VISIT}-2.fits").write_bytes(np.random.default_rng(3).bytes(60_000))
    (d / "calexp" / str(VISIT)).mkdir(parents=True)
    return {"dir": d, "units": units, "truth": truths}


def _run(units, log, refcats=None):
    prov = {"version": "test", "config_hash": "0", "inputs": []}
    return {c: calibrate_file(u, calibrate_config={}, instrument=INSTRUMENT, provenance=prov, log=log,
                              log_path="logs/calibrate/1000.log", refcats=refcats) for c, u in units.items()}


def test_one_bad_ccd_is_recorded_and_the_visits_other_ccds_are_calibrated(visit, caplog):
    assert set(visit["units"][1]) == set(UNIT_KEYS)
    refcats = {}
    with caplog.at_level(logging.INFO):
        out = _run(visit["units"], logging.getLogger("skysnake.test"), refcats=refcats)
    assert [out[c]["status"] for c in (1, 2, 3)] == ["ok", "failed", "ok"]
    assert list(refcats) == [visit["units"][1]["refcat"]]  # the shared tract refcat, read once for the job
    for c in (1, 3):  # the good CCDs: calibrated against the truth, with sources and a summary on disk
        u = visit["units"][c]
        s = read_json(u["summary"])
        assert s["status"] == "ok" and (s["visit"], s["ccd"]) == (VISIT, c)
        assert abs(s["zeropoint"] - visit["truth"][c]["zp"]) < 0.05
        assert len(read_table(u["sources"])) > 50 and not read_exposure(u["calexp"]).is_empty
        assert s["log_path"] == "logs/calibrate/1000.log" and s["provenance"]["version"] == "test"
    bad = visit["units"][2]  # the bad CCD: failed outputs, the reason names its file
    s = read_json(bad["summary"])
    assert (s["status"], s["code"]) == ("failed", "unreadable") and bad["raw"] in s["reason"]
    assert (s["filter"], s["mjd"]) == ("r", bad["mjd"])  # the plan's values: the header could not be read
    assert read_exposure(bad["calexp"]).is_empty
    assert len(read_table(bad["sources"])) == 0
    assert set(calibrate.SOURCE_COLUMNS) <= set(read_table(bad["sources"]).columns)
    # every log line names its CCD
    msgs = [r.getMessage() for r in caplog.records if r.name == "skysnake.test"]
    assert any(m.startswith(f"visit {VISIT} ccd 2 failed (unreadable)") for m in msgs)
    assert all(m.startswith(f"visit {VISIT} ccd ") for m in msgs), msgs


def test_a_bug_still_fails_the_job(visit, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(calibrate, "calibrate_ccd", broken)
    unit = {**visit["units"][1], "summary": str(tmp_path / "summary.json")}
    with pytest.raises(ZeroDivisionError, match="a bug"):
        _run({1: unit}, logging.getLogger("skysnake.test"))
    assert not (tmp_path / "summary.json").exists()
