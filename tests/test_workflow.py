"""Workflow tests: run Snakemake for real on the simulated demo and check every stage against the truth.

The demo runs once per test session (a few minutes on 2 cores); the tests below read its outputs.
"""

import json
import re

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
import astropy.units as u

from conftest import REPO, run_snakemake
from skysnake import sim
from skysnake.io import read_exposure, read_table
from skysnake.registry import read_registry
from skysnake.units import mag_to_flux

pytestmark = pytest.mark.workflow

STAGES = ["simulate_sky", "simulate_visit", "ingest", "refcat", "calibrate", "registry", "skymap", "warp",
          "coadd", "detect", "merge_detections", "measure", "select_reference", "forced_photometry",
          "object_catalog"]


# the `demo` fixture (one run of the demo per test session) is in conftest.py


def test_dry_run_lists_every_stage_before_anything_runs(demo):
    for rule in STAGES:
        assert re.search(rf"^{rule}\s+\d+", demo["dry"], re.M), f"rule {rule} missing from the dry run"


def test_nothing_to_do_after_a_complete_run(demo):
    proc = run_snakemake(demo["dir"], "-n", "--cores", "2")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _calexps(results):
    return sorted((results / "calexp").glob("*/calexp-*.fits"))


def test_registry_has_every_ccd_calibrated_and_selected(demo):
    reg = read_registry(demo["results"] / "registry.sqlite")
    design = sim.survey_design(None)
    assert len(reg) == len(design.visits) * len(design.ccds)
    assert (reg["status"] == "ok").all(), reg.loc[reg.status != "ok", ["visit", "ccd", "reason"]]
    assert reg["selected"].all()
    assert reg[["seeing_arcsec", "zeropoint", "astrom_rms_arcsec", "n_astrom"]].notna().all().all()


def test_calibrated_wcs_matches_true_wcs_over_each_ccd(demo):
    res = demo["results"]
    worst = 0.0
    for path in _calexps(res):
        exp = read_exposure(path, planes=("IMAGE",))
        visit, ccd = exp.meta["VISIT"], exp.meta["CCD"]
        truth = json.loads((res / "sim" / "truth" / str(visit) / f"truth-{visit}-{ccd}.json").read_text())
        true = WCS(fits.Header.fromstring(truth["true_wcs"]))
        ny, nx = exp.image.shape
        x, y = np.meshgrid(np.linspace(0, nx - 1, 20), np.linspace(0, ny - 1, 40))
        a = SkyCoord(*exp.wcs.all_pix2world(x.ravel(), y.ravel(), 0), unit="deg")
        b = SkyCoord(*true.all_pix2world(x.ravel(), y.ravel(), 0), unit="deg")
        rms = np.sqrt(np.mean(a.separation(b).arcsec ** 2))
        worst = max(worst, rms)
        assert rms <= 0.03, f"visit {visit} ccd {ccd}: WCS rms {rms:.4f} arcsec vs truth"
    print(f"worst WCS rms vs truth: {worst:.4f} arcsec")


def test_zeropoints_match_truth(demo):
    res = demo["results"]
    reg = read_registry(res / "registry.sqlite")
    deltas = []
    for r in reg.itertuples():
        truth = json.loads((res / "sim" / "truth" / str(r.visit) / f"truth-{r.visit}-{r.ccd}.json").read_text())
        deltas.append(r.zeropoint - truth["zp"])
    deltas = np.array(deltas)
    print(f"zeropoint - truth: max |d| {np.abs(deltas).max():.4f}, mean {deltas.mean():+.4f}")
    assert np.abs(deltas).max() <= 0.01


@pytest.fixture(scope="session")
def matched(demo):
    """The tract catalog matched to the truth (truth moved to the mean epoch of the visits)."""
    res = demo["results"]
    cat = read_table(res / "objects" / "objects-0.parquet")
    truth = read_table(res / "sim" / "truth.parquet")
    design = sim.survey_design(None)
    truth = sim.truth_at_epoch(truth, float(design.visits["mjd"].mean()))
    truth = truth.to_pandas() if hasattr(truth, "to_pandas") else truth
    c_cat = SkyCoord(cat["ra"].to_numpy(), cat["dec"].to_numpy(), unit="deg")
    c_tru = SkyCoord(truth["ra"].to_numpy(), truth["dec"].to_numpy(), unit="deg")
    idx, sep, _ = c_tru.match_to_catalog_sky(c_cat)
    idx_c, sep_c, _ = c_cat.match_to_catalog_sky(c_tru)
    return {"cat": cat, "truth": truth, "t2c": idx, "t2c_sep": sep.arcsec, "c2t": idx_c, "c2t_sep": sep_c.arcsec,
            "filters": design.cfg["filters"]}


def _expected_snr(res, truth, band):
    """Point-source S/N each truth object would have in the band's coadd: flux / (sigma_pix sqrt(4 pi s^2))."""
    snr = np.full(len(truth), np.nan)
    for path in sorted((res / "coadd").glob(f"*/*/coadd-*-{band}.fits")):
        co = read_exposure(path)
        x, y = co.wcs.all_world2pix(truth["ra"].to_numpy(), truth["dec"].to_numpy(), 0)
        xi, yi = np.round(x).astype(int), np.round(y).astype(int)
        ny, nx = co.image.shape
        ok = (xi >= 0) & (yi >= 0) & (xi < nx) & (yi < ny)
        var = np.zeros(len(truth))
        var[ok] = co.variance[yi[ok], xi[ok]]
        ok &= var > 0
        sigma = co.meta["FWHM"] / 2.3548 / 0.2
        flux = mag_to_flux(truth[f"mag_{band}"].to_numpy())
        snr[ok] = flux[ok] / np.sqrt(var[ok] * 4 * np.pi * sigma ** 2)
    return snr


def test_completeness_of_point_sources_with_snr_above_10(demo, matched):
    truth = matched["truth"]
    snr = _expected_snr(demo["results"], truth, "i")
    stars = truth["is_star"].to_numpy() & (snr >= 10)
    found = matched["t2c_sep"] < 0.5
    completeness = found[stars].mean()
    print(f"completeness of {stars.sum()} point sources with S/N >= 10: {completeness:.4f}")
    assert stars.sum() > 200
    assert completeness >= 0.95


def test_spurious_detections_with_snr_above_10(matched):
    cat = matched["cat"]
    snr = np.nanmax(np.stack([cat[f"{f}_flux"] / cat[f"{f}_fluxerr"] for f in matched["filters"]]), axis=0)
    bright = snr >= 10
    spurious = (matched["c2t_sep"] > 1.0) & bright
    frac = spurious.sum() / bright.sum()
    print(f"spurious among {bright.sum()} detections with S/N >= 10: {frac:.4f}")
    assert frac <= 0.01


def _isolated(truth, *, radius_arcsec=2.5, dmag=2.5):
    """True for objects with no other truth object within the radius brighter than (own r mag + dmag).

    Blends are a deblending question, not an astrometric or photometric one: the accuracy
    tests below are about isolated stars.
    """
    c = SkyCoord(truth["ra"].to_numpy(), truth["dec"].to_numpy(), unit="deg")
    i, j, _, _ = c.search_around_sky(c, radius_arcsec * u.arcsec)
    mag = truth["mag_r"].to_numpy()
    bad = (i != j) & (mag[j] < mag[i] + dmag)
    out = np.ones(len(truth), bool)
    out[i[bad]] = False
    return out


def _bright_star_pairs(matched):
    cat, truth = matched["cat"], matched["truth"]
    ok = (matched["t2c_sep"] < 0.5) & truth["is_star"].to_numpy() & _isolated(truth)
    # one truth object per catalog object (the nearest)
    t_idx = np.flatnonzero(ok)
    c_idx = matched["t2c"][t_idx]
    keep = matched["c2t"][c_idx] == t_idx
    return truth.iloc[t_idx[keep]].reset_index(drop=True), cat.iloc[c_idx[keep]].reset_index(drop=True)


def test_bright_star_photometry_and_colours(matched):
    tru, cat = _bright_star_pairs(matched)
    for f in matched["filters"]:
        snr = cat[f"{f}_flux"] / cat[f"{f}_fluxerr"]
        sel = (snr > 100) & (tru[f"mag_{f}"] > 17.0)  # below saturation
        dmag = (cat[f"{f}_mag"] - tru[f"mag_{f}"])[sel]
        print(f"{f}: {sel.sum()} bright stars, median |dmag| {np.median(np.abs(dmag)):.4f}, "
              f"median dmag {np.median(dmag):+.4f}")
        assert sel.sum() >= 20
        assert np.median(np.abs(dmag)) <= 0.01
    for a, b in zip(matched["filters"][:-1], matched["filters"][1:]):
        snr = np.minimum(cat[f"{a}_flux"] / cat[f"{a}_fluxerr"], cat[f"{b}_flux"] / cat[f"{b}_fluxerr"])
        sel = snr > 100
        dcol = ((cat[f"{a}_mag"] - cat[f"{b}_mag"]) - (tru[f"mag_{a}"] - tru[f"mag_{b}"]))[sel]
        print(f"{a}-{b}: median colour bias {np.median(dcol):+.4f} from {sel.sum()} stars")
        assert abs(np.median(dcol)) <= 0.01


def test_astrometry_of_bright_stars(matched):
    tru, cat = _bright_star_pairs(matched)
    snr = cat["r_flux"] / cat["r_fluxerr"]
    sel = snr > 100
    sep = SkyCoord(cat["ra"][sel], cat["dec"][sel], unit="deg").separation(
        SkyCoord(tru["ra"][sel], tru["dec"][sel], unit="deg")).arcsec
    rms = np.sqrt(np.mean(sep ** 2))
    print(f"astrometry rms of {sel.sum()} bright stars: {rms:.4f} arcsec")
    assert rms <= 0.02


def test_objects_in_patch_overlaps_appear_once(demo, matched):
    skymap = json.loads((demo["results"] / "skymap.json").read_text())
    from skysnake.skymap import SkyMap

    sm = SkyMap.from_dict(skymap)
    tract = sm[0]
    truth = matched["truth"]
    x, y = tract.wcs().all_world2pix(truth["ra"].to_numpy(), truth["dec"].to_numpy(), 0)
    n_outer = np.zeros(len(truth), int)
    for p in tract.patches:
        x0, y0, x1, y1 = tract.outer_box(p)
        n_outer += (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    overlap = (n_outer >= 2) & truth["is_star"].to_numpy() & (truth["mag_r"].to_numpy() < 22)
    found = matched["t2c_sep"] < 0.5
    sel = overlap & found
    assert sel.sum() > 20
    # each such star is matched by exactly one catalog object within 1"
    cat = matched["cat"]
    c_cat = SkyCoord(cat["ra"].to_numpy(), cat["dec"].to_numpy(), unit="deg")
    c_tru = SkyCoord(truth["ra"].to_numpy()[sel], truth["dec"].to_numpy()[sel], unit="deg")
    idx_t, idx_c, _, _ = c_cat.search_around_sky(c_tru, 1.0 * u.arcsec)
    counts = np.bincount(idx_t, minlength=sel.sum())
    assert (counts == 1).all(), f"{(counts > 1).sum()} overlap stars appear more than once"
    assert cat["object_id"].is_unique


def test_snakemake_lint_is_clean():
    proc = run_snakemake(REPO, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for" not in out, out
