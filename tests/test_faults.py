"""Bad input never sinks the run: broken units are recorded as failed, with the reason, and skipped.

Three real runs of the workflow on small simulated surveys:

* ``faulty_run`` (sim inputs): every CCD-level fault at once -- all-NaN, all-zero, fully saturated,
  no WCS, a header pointing 1 deg away (no refcat match), a truncated FITS, random bytes named .fits;
* ``files_run`` (the same raw files read from disk, inputs.source = files): a visit with one CCD
  missing on disk, a header without WCS and random bytes among the input files;
* ``no_refstars_run``: a reference catalog with no star in the field (every CCD fails, every patch
  is left without data and without detections, the object catalog is empty but well formed).
"""

import json
import shutil

import astropy.units as u
import numpy as np
import pytest
import yaml
from astropy.coordinates import SkyCoord
from conftest import REPO, run_snakemake

from skysnake import sim, status
from skysnake.errors import DataError
from skysnake.ingest import index_files, input_problems
from skysnake.instruments import header_meta
from skysnake.io import read_exposure, read_table, write_table
from skysnake.registry import read_registry

FAULTS = {  # (visit, ccd): (how it is broken, the registry codes it may get)
    (1000, 1): ("nan", {"no_data"}),
    (1000, 2): ("zeros", {"blank"}),
    (1000, 3): ("no_wcs", {"no_wcs"}),
    (1001, 1): ("offset_far", {"few_refstars", "no_match"}),  # the header points 1 deg away: nothing matches
    (1001, 2): ("truncated", {"unreadable"}),
    (1001, 3): ("random bytes", {"unreadable"}),
    (1001, 4): ("saturated", {"saturated"}),
}
HEALTHY = [(1000, 4), (1002, 1), (1002, 2), (1002, 3), (1002, 4)]
SMALL = {"filters": ["r"], "visits_per_filter": 3, "ccd_nx": 512, "ccd_ny": 1024, "star_density": 120000}


def _write_config(work, **blocks):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for k, v in blocks.items():
        cfg[k] = {**cfg[k], **v} if isinstance(cfg.get(k), dict) else v
    path = work / "test.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _status(work, cfgpath):
    return status.collect_status(work, status.load_config([cfgpath]))


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    bad = [{"visit": v, "ccd": c, "kind": k} for (v, c), (k, _) in FAULTS.items() if k in sim.FAULT_KINDS]
    path = _write_config(work, sim={**SMALL, "ccd_bad": bad}, skymap={"patch_inner_px": 4000})
    run_snakemake(work, "--cores", "2", "--configfile", str(path), "--until", "simulate_visit")
    raw = work / "results" / "sim" / "raw"
    data = (raw / "1001" / "raw-1001-2.fits").read_bytes()
    (raw / "1001" / "raw-1001-2.fits").write_bytes(data[: len(data) // 3])
    (raw / "1001" / "raw-1001-3.fits").write_bytes(np.random.default_rng(0).bytes(100_000))
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(path), timeout=900)
    return {"dir": work, "results": work / "results", "config": path, "log": proc.stdout + proc.stderr}


@pytest.mark.workflow
def test_broken_ccds_are_failed_in_the_registry_with_their_reason(faulty_run):
    reg = read_registry(faulty_run["results"] / "registry.sqlite").set_index(["visit", "ccd"])
    for (visit, ccd), (kind, codes) in FAULTS.items():
        row = reg.loc[(visit, ccd)]
        assert row.status == "failed", f"{kind} CCD {visit}/{ccd} was not failed"
        assert row.selected == 0 and row.reason
        assert row.code in codes, f"{kind}: code {row.code}, reason {row.reason}"
        assert f"raw-{visit}-{ccd}.fits" in row.reason  # the message names the file
        log = (faulty_run["dir"] / row.log_path).read_text()
        assert "failed" in log and row.reason.splitlines()[0][:40] in log
    assert "saturation level" in reg.loc[(1001, 4)].reason and "overexposed" in reg.loc[(1001, 4)].reason
    healthy = reg[[k not in FAULTS for k in reg.index]]
    assert sorted(healthy.index) == HEALTHY and (healthy.status == "ok").all() and healthy.selected.all()


@pytest.mark.workflow
def test_healthy_ccds_are_calibrated_as_if_nothing_happened(faulty_run):
    reg = read_registry(faulty_run["results"] / "registry.sqlite").set_index(["visit", "ccd"])
    for v, c in HEALTHY:
        truth = json.loads((faulty_run["results"] / "sim" / "truth" / str(v) / f"truth-{v}-{c}.json").read_text())
        assert abs(reg.loc[(v, c), "zeropoint"] - truth["zp"]) < 0.03, (v, c)
        assert reg.loc[(v, c), "astrom_rms_arcsec"] < 0.1


@pytest.mark.workflow
def test_the_run_goes_on_and_builds_the_catalog_from_the_good_ccds(faulty_run):
    res = faulty_run["results"]
    assert "(100%) done" in faulty_run["log"]
    cat = read_table(res / "objects" / "objects-0.parquet")
    truth = read_table(res / "sim" / "truth.parquet")
    coadd = read_exposure(next((res / "coadd").glob("*/*/coadd-*-r.fits")))
    nimage = coadd.extra["NIMAGE"]
    stars = truth[truth.is_star & (truth.mag_r < 20.0)]
    x, y = coadd.wcs.all_world2pix(stars.ra, stars.dec, 0)
    xi, yi = np.round(x).astype(int), np.round(y).astype(int)
    ny, nx = nimage.shape
    inside = (xi > 20) & (yi > 20) & (xi < nx - 20) & (yi < ny - 20)
    covered = np.zeros(len(stars), bool)
    covered[inside] = [nimage[b - 15:b + 16, a - 15:a + 16].min() >= 1 for a, b in zip(xi[inside], yi[inside])]
    on = stars[covered]
    assert len(on) > 30  # the good CCDs cover part of the patch
    t = SkyCoord(on.ra.to_numpy() * u.deg, on.dec.to_numpy() * u.deg)
    c = SkyCoord(cat.ra.to_numpy() * u.deg, cat.dec.to_numpy() * u.deg)
    idx, sep, _ = t.match_to_catalog_sky(c)
    found = sep.arcsec < 0.5
    assert found.mean() > 0.95, f"{found.sum()} of {len(on)} bright stars on good data found"
    dmag = cat.r_mag.to_numpy()[idx[found]] - on.mag_r.to_numpy()[found]
    assert np.median(np.abs(dmag)) < 0.03
    # nothing of the faulty CCDs leaks in: every object sits on good data
    ox, oy = coadd.wcs.all_world2pix(cat.ra, cat.dec, 0)
    assert (nimage[np.clip(np.round(oy).astype(int), 0, ny - 1), np.clip(np.round(ox).astype(int), 0, nx - 1)]
            >= 1).all()


@pytest.mark.workflow
def test_status_lists_every_failed_ccd_with_code_reason_and_log(faulty_run):
    st = _status(faulty_run["dir"], faulty_run["config"])
    counts = st.counts()
    assert (counts["done"] == counts["total"]).all()  # every job finished: the 3 calibrate jobs too
    assert counts.loc["calibrate", "total"] == 3
    assert st.ccd_counts() == {"total": 12, "done": 5, "failed": 7, "running": 0, "interrupted": 0, "pending": 0}
    text = status.format_status(st)
    assert f"Failed CCDs ({len(FAULTS)}):" in text
    for (visit, ccd), (_, codes) in FAULTS.items():
        line = next(li for li in text.splitlines() if li.startswith(f"  visit {visit} ccd {ccd} ["))
        assert line.split("[")[1].split("]")[0] in codes and f"raw-{visit}-{ccd}.fits" in line
        assert f"log: results/logs/calibrate/{visit}.log" in text


@pytest.mark.workflow
def test_one_job_per_visit_calibrates_its_good_ccds_beside_its_bad_ones(faulty_run):
    res = faulty_run["results"]
    assert sorted(p.name for p in (res / "benchmarks" / "calibrate").iterdir()) == ["1000.tsv", "1001.tsv", "1002.tsv"]
    # visit 1000: 3 broken CCDs and a good one, in one job: every CCD has its 3 files, the good one has data
    folder = res / "calexp" / "1000"
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == {
        f"{kind}-1000-{c}.{ext}" for c in (1, 2, 3, 4)
        for kind, ext in (("calexp", "fits"), ("sources", "parquet"), ("summary", "json"))}
    assert not read_exposure(folder / "calexp-1000-4.fits").is_empty
    assert len(read_table(folder / "sources-1000-4.parquet")) > 50
    assert read_exposure(folder / "calexp-1000-1.fits").is_empty
    log = (res / "logs" / "calibrate" / "1000.log").read_text()
    assert "visit 1000 ccd 4 calibrated" in log and "visit 1000 ccd 3 failed (no_wcs)" in log
    assert log.index("visit 1000 ccd 3 failed") < log.index("visit 1000 ccd 4 calibrated")  # went on after it


# --- input files on disk: a CCD missing, a header without WCS, random bytes ---------------------------------
@pytest.fixture(scope="module")
def files_run(faulty_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("files_faults")
    inputs = work / "inputs"
    inputs.mkdir()
    raw = faulty_run["results"] / "sim" / "raw"
    for v, c in [(1000, 1), (1000, 2), (1000, 3), (1000, 4), (1002, 1), (1002, 3), (1002, 4)]:  # 1002-2 missing
        shutil.copy(raw / str(v) / f"raw-{v}-{c}.fits", inputs)
    (inputs / "junk.fits").write_bytes(np.random.default_rng(1).bytes(50_000))
    tract = json.loads((faulty_run["results"] / "skymap.json").read_text())["tracts"][0]
    size = tract["npatch_x"] * tract["patch_inner"] * tract["pixel_scale"] / 3600.0
    path = _write_config(work, inputs={"source": "files", "paths": ["inputs/*.fits"]},
                         instrument={"bpm_hdu": "BPM"},
                         refcat={"source": "file", "path": str(faulty_run["results"] / "sim" / "refcat.parquet")},
                         skymap={"patch_inner_px": 4000,
                                 "tracts": [{"id": 0, "ra": tract["ra"], "dec": tract["dec"], "size_deg": size}]})
    dry = run_snakemake(work, "-n", "--configfile", str(path))
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(path), timeout=900)
    return {"dir": work, "results": work / "results", "config": path, "dry": dry.stdout + dry.stderr,
            "log": proc.stdout + proc.stderr}


@pytest.mark.workflow
def test_input_problems_are_named_before_any_job_runs(files_run):
    dry = files_run["dry"]
    assert "skipped inputs/junk.fits" in dry and "unreadable" in dry
    assert "skipped inputs/raw-1000-3.fits" in dry and "no WCS" in dry
    assert "visit 1002 ccd 2: no raw file among inputs.paths" in dry and "inputs/junk.fits" in dry


@pytest.mark.workflow
def test_input_problems_are_failed_in_the_registry_and_the_rest_is_processed(files_run):
    reg = read_registry(files_run["results"] / "registry.sqlite").set_index(["visit", "ccd"])
    assert len(reg) == 8  # every CCD of the camera in both visits, the missing one included
    assert (reg.loc[(1002, 2), "status"], reg.loc[(1002, 2), "code"]) == ("failed", "missing")
    assert (reg.loc[(1000, 3), "status"], reg.loc[(1000, 3), "code"]) == ("failed", "no_wcs")
    assert "raw-1000-3.fits" in reg.loc[(1000, 3), "reason"]
    assert (reg.loc[(1000, 1), "code"], reg.loc[(1000, 2), "code"]) == ("no_data", "blank")
    good = [(1000, 4), (1002, 1), (1002, 3), (1002, 4)]
    assert (reg.loc[good, "status"] == "ok").all() and reg.loc[good, "selected"].all()
    assert "(100%) done" in files_run["log"]
    cat = read_table(files_run["results"] / "objects" / "objects-0.parquet")
    assert len(cat) > 100 and np.isfinite(cat["r_mag"]).mean() > 0.9


@pytest.mark.workflow
def test_files_mode_calibrates_like_sim_mode(files_run, faulty_run):
    a = read_registry(files_run["results"] / "registry.sqlite").set_index(["visit", "ccd"])
    b = read_registry(faulty_run["results"] / "registry.sqlite").set_index(["visit", "ccd"])
    for key in [(1000, 4), (1002, 1), (1002, 3), (1002, 4)]:
        assert a.loc[key, "zeropoint"] == pytest.approx(b.loc[key, "zeropoint"], abs=1e-9)


@pytest.mark.workflow
def test_status_reports_input_problems(files_run):
    st = _status(files_run["dir"], files_run["config"])
    probs = st.problems.set_index(["visit", "ccd"])
    assert probs.loc[(1002, 2), "code"] == "missing" and probs.loc[(1000, 3), "code"] == "no_wcs"
    assert probs.loc[(-1, -1), "raw"] == "inputs/junk.fits"
    text = status.format_status(st)
    assert "visit 1002 ccd 2 [missing]" in text and "input file [unreadable]" in text


# --- a reference catalog with no star in the field: every CCD fails, patches are left empty ----------------
@pytest.fixture(scope="module")
def no_refstars_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("no_refstars")
    small = {**SMALL, "visits_per_filter": 1, "ccd_cols": 2, "ccd_rows": 1}
    _, refcat = sim.make_sky(sim.survey_design(small))
    refcat = refcat.to_pandas() if hasattr(refcat, "to_pandas") else refcat
    refcat["dec"] -= 20.0  # a valid catalog of another part of the sky
    write_table(work / "far_refcat.parquet", refcat)
    path = _write_config(work, sim=small, refcat={"source": "file", "path": "far_refcat.parquet"},
                         skymap={"patch_inner_px": 4000})
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(path), timeout=600)
    return {"dir": work, "results": work / "results", "config": path, "log": proc.stdout + proc.stderr}


@pytest.mark.workflow
def test_refcat_without_stars_fails_every_ccd_saying_so(no_refstars_run):
    res = no_refstars_run["results"]
    assert "has no reference stars" in (res / "logs" / "refcat" / "0.log").read_text()
    reg = read_registry(res / "registry.sqlite")
    assert len(reg) == 2 and (reg.status == "failed").all() and (reg.code == "empty_refcat").all()
    assert reg.reason.str.contains("refcat.path").all() and reg.reason.str.contains("raw-1000-").all()


@pytest.mark.workflow
def test_patch_without_data_or_detections_gives_an_empty_well_formed_catalog(no_refstars_run):
    res = no_refstars_run["results"]
    assert "(100%) done" in no_refstars_run["log"]
    det = read_table(next((res / "multiband").glob("*/*/detect-*.parquet")))
    assert len(det) == 0 and len(det.columns) > 3
    cat = read_table(res / "objects" / "objects-0.parquet")
    assert len(cat) == 0 and {"object_id", "ra", "dec", "r_flux", "r_mag"} <= set(cat.columns)
    st = _status(no_refstars_run["dir"], no_refstars_run["config"])
    kinds = {n["kind"] for n in st.notes}
    assert {"empty_refcat", "empty_coadd", "no_detections"} <= kinds
    text = status.format_status(st)
    assert "Patches without detections (1):" in text and "log: results/logs/detect/0-0_0-r.log" in text


# --- unit checks of the input guards -------------------------------------------------------------------------
def test_a_header_filter_name_that_is_a_path_is_refused():
    with pytest.raises(DataError, match="not a plain name") as err:
        header_meta({"FILTER": "../../etc/r", "EXPTIME": 1.0, "MJD-OBS": 6e4, "EXPNUM": 1, "CCDNUM": 1},
                    {}, path="x.fits")
    assert err.value.code == "bad_keyword"


def test_duplicate_and_missing_ccds_are_reported(tmp_path):
    from astropy.io import fits

    hdr = {"FILTER": "r", "EXPTIME": 30.0, "MJD-OBS": 60000.0, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
           "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 8.0, "CRPIX2": 8.0, "CD1_1": -5e-5, "CD2_2": 5e-5}
    for v, c, name in [(1, 1, "a"), (1, 2, "b"), (2, 1, "c"), (2, 1, "d")]:  # visit 2: ccd 1 twice, ccd 2 missing
        h = fits.Header({**hdr, "EXPNUM": v, "CCDNUM": c})
        fits.PrimaryHDU(np.zeros((16, 16), np.float32), header=h).writeto(tmp_path / f"{name}.fits")
    index, skipped = index_files([str(tmp_path / "*.fits")], instrument={})
    assert list(zip(index.visit, index.ccd)) == [(1, 1), (1, 2), (2, 1)]
    assert list(skipped.code) == ["duplicate"] and "c.fits" in skipped.reason[0]
    probs = input_problems(index, skipped)
    missing = probs[probs.code == "missing"]
    assert list(zip(missing.visit, missing.ccd)) == [(2, 2)] and missing["filter"].item() == "r"
