"""End-to-end tests of skysnake.calibrate on simulated CCDs (skysnake.sim) against the truth."""

import json

import numpy as np
import pytest
from astropy.table import Table

from skysnake import astrometry, calibrate, io, masks, sim, units
from skysnake.errors import ConfigError, DataError

# The brief's regime: ~100-300 reference stars per CCD (the sim's default density gives ~10-20).
SIM_CFG = {"star_density": 150000.0, "seed": 77}


@pytest.fixture(scope="module")
def survey():
    design = sim.survey_design(SIM_CFG)
    truth, refcat = sim.make_sky(design)
    return design, truth, refcat


_cache = {}


def _render(survey, visit, ccd):
    key = (visit, ccd)
    if key not in _cache:
        design, truth, _ = survey
        _cache[key] = sim.render_ccd(design, truth, visit=visit, ccd=ccd)
    return _cache[key]


_results = {}


def _calibrate(survey, visit, ccd, **kw):
    """Calibrate a simulated CCD (results with the default options are cached for the module)."""
    if not kw and (visit, ccd) in _results:
        return _results[(visit, ccd)]
    design, truth, refcat = survey
    img, bpm, hdr, tr = _render(survey, visit, ccd)
    hw = sim.header_wcs(design, visit=visit, ccd=ccd)
    args = dict(header_wcs=hw, refcat=refcat, filter=tr["filter"], mjd=tr["mjd"], exptime=hdr["EXPTIME"],
                gain=tr["gain"], read_noise=tr["read_noise"], saturation=tr["saturation"], bpm=bpm)
    args.update(kw)
    out = calibrate.calibrate_ccd(img, **args), tr
    if not kw:
        _results[(visit, ccd)] = out
    return out


def _seeing(design, visit):
    return float(design.visits.set_index("visit").loc[visit, "seeing_arcsec"])


# first visit of each filter and a spread of seeing (0.6-1.2")
CASES = [(1002, 1), (1005, 4), (1007, 2)]


@pytest.mark.parametrize("visit,ccd", CASES)
def test_simulated_ccd_against_truth(survey, visit, ccd, tmp_path):
    design, truth, refcat = survey
    res, tr = _calibrate(survey, visit, ccd)
    s = res.summary
    ny, nx = design.cfg["ccd_ny"], design.cfg["ccd_nx"]
    true_wcs = sim.true_wcs(design, visit=visit, ccd=ccd)

    # astrometry: fitted WCS vs the true TAN-SIP over the whole CCD
    rms, mx = astrometry.wcs_separation_rms(res.exposure.wcs, true_wcs, (ny, nx))
    assert rms <= 0.03 and mx <= 0.1, (rms, mx)
    assert s["n_astrom"] >= 50 and s["astrom_model"] == "poly3" and 0.005 < s["astrom_rms_arcsec"] < 0.06
    # photometry: zeropoint, and its quoted error is meaningful
    dzp = s["zeropoint"] - tr["zp"]
    assert abs(dzp) <= 0.01, (dzp, s["zeropoint_err"])
    assert 0.0005 < s["zeropoint_err"] < 0.01 and s["n_phot"] >= 30
    # PSF size and sky level
    assert abs(s["seeing_arcsec"] / tr["seeing_arcsec"] - 1) < 0.03
    sky_true = tr["sky_adu"] * np.median(sim.pixel_area_map(design, ccd=ccd))
    assert abs(s["sky_adu"] / sky_true - 1) < 0.01
    beta, fwhm_px = design.cfg["psf_beta"], tr["seeing_arcsec"] / design.cfg["pixel_scale"]
    alpha = fwhm_px / (2 * np.sqrt(2 ** (1 / beta) - 1))
    apcorr_true = 1 / (1 - (1 + (2.0 / 0.2 / alpha) ** 2) ** (1 - beta))
    assert abs(s["apcorr"] / apcorr_true - 1) < 0.005
    # the zeropoint stars' aperture (phot_aper_fwhm = 2 FWHM) and its correction against the Moffat truth; the
    # quoted zeropoint error is honest
    assert s["phot_aper_px"] == pytest.approx(2.0 * s["psf_fwhm_px"])
    phot_apcorr_true = 1 / (1 - (1 + (s["phot_aper_px"] / alpha) ** 2) ** (1 - beta))
    assert abs(s["phot_apcorr"] / phot_apcorr_true - 1) < 0.003, (s["phot_apcorr"], phot_apcorr_true)
    assert s["apcorr_method"] in ("combined", "empirical") and s["phot_apcorr_method"] in ("combined", "empirical")
    assert abs(dzp) < 3 * s["zeropoint_err"], (dzp, s["zeropoint_err"])

    # summary: JSON-able, corners from the fitted WCS
    json.dumps(s)
    assert s["status"] == "ok" and set(s["timing"]) >= {"background", "cosmic_rays", "detect", "astrometry", "total"}
    cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    tra, tdec = true_wcs.all_pix2world(cx, cy, 0)
    for (ra, dec), r0, d0 in zip(s["corners"], tra, tdec):
        assert abs((ra - r0) * np.cos(np.radians(dec))) * 3600 < 0.1 and abs(dec - d0) * 3600 < 0.1

    # exposure planes
    exp = res.exposure
    assert exp.image.dtype == np.float32 and exp.mask.dtype == np.int32 and exp.variance.dtype == np.float32
    assert exp.image.shape == (ny, nx) and np.isfinite(exp.image).all() and (exp.variance > 0).all()
    img, bpm, hdr, _ = _render(survey, visit, ccd)
    assert np.all(exp.mask[bpm != 0] & masks.BAD)
    n_cr = s["n_cr_pixels"]
    assert 0.5 * tr["n_cosmic_rays"] < n_cr < 6 * tr["n_cosmic_rays"]  # 1-4 px tracks per hit
    np.testing.assert_allclose(exp.meta["NJY_ADU"], units.nJy_per_adu(s["zeropoint"]))
    for key in ("FILTER", "MJD-OBS", "EXPTIME", "ZP", "ZPERR", "FWHM", "SKY", "NJY_ADU", "ASTRMS", "NASTROM", "NPHOT",
                "APCORR"):
        assert key in exp.meta

    # catalog: calibrated magnitudes of the reference stars agree with the truth
    src = res.sources
    used = src[src["phot_used"]]
    sid = np.asarray(refcat["source_id"])[used["ref_index"].to_numpy()]
    tmag = np.asarray(truth[f"mag_{tr['filter']}"])[np.searchsorted(np.asarray(truth["id"]), sid)]
    bright = used["snr"].to_numpy() > 100
    assert bright.sum() >= 5
    assert abs(np.median(used["mag"].to_numpy()[bright] - tmag[bright])) < 0.01
    # catalog sky positions: matched stars sit on the (epoch-propagated) truth
    t_ep = sim.truth_at_epoch(truth, tr["mjd"])
    idx = np.searchsorted(np.asarray(t_ep["id"]), sid)
    sep_as = np.hypot((used["ra"].to_numpy() - np.asarray(t_ep["ra"])[idx]) * np.cos(np.radians(used["dec"])),
                      used["dec"].to_numpy() - np.asarray(t_ep["dec"])[idx]) * 3600
    assert np.median(sep_as[bright]) < 0.02
    assert src["ref_match"].sum() >= s["n_astrom"] == src["astrom_used"].sum()
    assert src["phot_used"].sum() == s["n_phot"] and src["psf_star"].sum() >= s["n_psf_stars"]
    assert list(src.columns) == calibrate.SOURCE_COLUMNS
    empty = calibrate.empty_sources()
    assert list(empty.columns) == calibrate.SOURCE_COLUMNS and len(empty) == 0
    assert dict(empty.dtypes) == dict(src.dtypes)

    # the WCS survives the FITS round trip (what warping will read)
    path = tmp_path / "calexp.fits"
    io.write_exposure(path, exp)
    back = io.read_exposure(path)
    assert astrometry.wcs_separation_rms(back.wcs, exp.wcs, (ny, nx))[0] < 1e-6
    assert s["timing"]["total"] < 5.0  # ~0.5 s on an idle core


def test_colour_terms_and_config(survey):
    visit, ccd = CASES[0]
    base, tr = _calibrate(survey, visit, ccd)
    f = tr["filter"]
    shifted, _ = _calibrate(survey, visit, ccd, config={"colour_terms": {f: {"primary": f, "secondary": "r",
                                                                              "coeffs": [0.05]}}})
    # a constant colour term shifts the reference magnitudes, hence the zeropoint, by exactly that much
    assert abs(shifted.summary["zeropoint"] - base.summary["zeropoint"] - 0.05) < 1e-6
    with pytest.raises(ConfigError):
        _calibrate(survey, visit, ccd, config={"no_such_option": 1})
    with pytest.raises(ConfigError):
        _calibrate(survey, visit, ccd, config={"cr_method": "magic"})
    for bad in (0.0, 4.0):  # the zeropoint aperture must lie inside the "total" aperture (3 FWHM)
        with pytest.raises(ConfigError):
            _calibrate(survey, visit, ccd, config={"phot_aper_fwhm": bad})
    # the other photometry paths: local annulus sky for the zeropoint stars, aperture corrections from the
    # PSF model alone (too few PSF stars to measure them)
    alt, _ = _calibrate(survey, visit, ccd, config={"phot_local_sky": True, "apcorr_min_stars": 10000})
    s = alt.summary
    assert s["apcorr_method"] == s["phot_apcorr_method"] == "psf_model"
    assert abs(s["zeropoint"] - tr["zp"]) < 0.01 and abs(s["zeropoint"] - tr["zp"]) < 3 * s["zeropoint_err"]


def test_lacosmic_option(survey):
    visit, ccd = CASES[1]
    fast, tr = _calibrate(survey, visit, ccd)
    lac, _ = _calibrate(survey, visit, ccd, config={"cr_method": "lacosmic"})
    assert lac.summary["n_cr_pixels"] > 0.5 * tr["n_cosmic_rays"]
    assert abs(lac.summary["zeropoint"] - fast.summary["zeropoint"]) < 0.005
    both = (fast.exposure.mask & masks.CR) & (lac.exposure.mask & masks.CR)
    assert np.count_nonzero(both) > 0.5 * fast.summary["n_cr_pixels"]


def test_partly_missing_data(survey):
    """NaN rows (a dead amplifier half) are NO_DATA, zero in the image, and calibration still works."""
    design, truth, refcat = survey
    visit, ccd = CASES[2]
    img, bpm, hdr, tr = _render(survey, visit, ccd)
    img = img.copy()
    img[:300] = np.nan
    res = calibrate.calibrate_ccd(img, header_wcs=sim.header_wcs(design, visit=visit, ccd=ccd), refcat=refcat,
                                  filter=tr["filter"], mjd=tr["mjd"], exptime=60.0, gain=tr["gain"],
                                  read_noise=tr["read_noise"], saturation=tr["saturation"], bpm=bpm)
    exp = res.exposure
    assert np.all(exp.mask[:300] & masks.NO_DATA) and not np.any(exp.mask[300:] & masks.NO_DATA)
    assert np.all(exp.image[:300] == 0) and np.isfinite(exp.image).all() and np.isfinite(exp.variance).all()
    assert res.sources["y"].min() > 290
    assert abs(res.summary["zeropoint"] - tr["zp"]) < 0.01
    rms, _ = astrometry.wcs_separation_rms(exp.wcs, sim.true_wcs(design, visit=visit, ccd=ccd), img.shape)
    assert rms < 0.03


def test_data_errors_and_failure_summary(survey):
    design, truth, refcat = survey
    visit, ccd = CASES[2]
    img, bpm, hdr, tr = _render(survey, visit, ccd)
    hw = sim.header_wcs(design, visit=visit, ccd=ccd)
    kw = dict(refcat=refcat, filter=tr["filter"], mjd=tr["mjd"], exptime=60.0, gain=tr["gain"],
              read_noise=tr["read_noise"], saturation=tr["saturation"])

    def code_of(image, **over):
        args = dict(kw, header_wcs=hw)
        args.update(over)
        with pytest.raises(DataError) as e:
            calibrate.calibrate_ccd(image, **args)
        return e.value

    assert code_of(np.full_like(img, np.nan)).code == "no_data"
    assert code_of(np.zeros_like(img)).code == "blank"
    assert code_of(img, header_wcs=None).code == "no_wcs"
    # a refcat of another field: nothing on the CCD
    far = Table(refcat, copy=True)
    far["dec"] = np.asarray(far["dec"]) + 1.0
    err = code_of(img, refcat=far)
    assert err.code == "few_refstars" and "reference catalog" in str(err)
    # reference stars on the CCD but unrelated to the detections
    rng = np.random.default_rng(0)
    scrambled = Table(refcat, copy=True)
    ra0, dec0 = hw.wcs.crval
    n = len(scrambled)
    scrambled["ra"] = ra0 + rng.uniform(-0.04, 0.04, n) / np.cos(np.radians(dec0))
    scrambled["dec"] = dec0 + rng.uniform(-0.08, 0.08, n)
    err = code_of(img, refcat=scrambled)
    assert err.code == "no_match" and "search radius" in str(err)
    # the header pointing is off by far more than the search radius
    bad_design = sim.survey_design(dict(SIM_CFG, ccd_bad=[{"visit": visit, "ccd": ccd, "kind": "offset_far"}]))
    err = code_of(img, header_wcs=sim.header_wcs(bad_design, visit=visit, ccd=ccd))
    assert err.code in ("few_refstars", "no_match")

    fs = calibrate.failure_summary(err, visit=np.int64(visit), ccd=ccd)
    assert fs["status"] == "failed" and fs["code"] == err.code and fs["reason"] == str(err)
    assert fs["visit"] == visit and fs["ccd"] == ccd
    json.dumps(fs)


def test_header_fallback_keeps_header_wcs_and_camera_zeropoint(survey):
    """No reference star: with header_fallback the CCD keeps its header WCS and the camera's zeropoint."""
    design, truth, refcat = survey
    visit, ccd = CASES[0]
    empty = refcat[:0]
    with pytest.raises(DataError) as err:
        _calibrate(survey, visit, ccd, refcat=empty)
    assert err.value.code == "empty_refcat"
    res, tr = _calibrate(survey, visit, ccd, refcat=empty, header_zeropoint=tr_zp(survey, visit, ccd) + 0.05,
                         config={"header_fallback": True})
    s = res.summary
    assert s["calib_method"] == "header" and "empty_refcat" in s["fallback_reason"]
    assert s["zeropoint"] == pytest.approx(tr["zp"] + 0.05)
    hw = sim.header_wcs(design, visit=visit, ccd=ccd)
    assert np.allclose(res.exposure.wcs.wcs.crval, hw.wcs.crval)
    assert res.exposure.image is not None and s["seeing_arcsec"] == pytest.approx(_seeing(design, visit), rel=0.1)


def test_header_fallback_zeropoint_from_few_stars_on_the_header_wcs(survey):
    """Too few stars to fit a WCS and no camera zeropoint: the zeropoint comes from the few matched stars."""
    design, truth, refcat = survey
    visit, ccd = CASES[0]
    good, tr = _calibrate(survey, visit, ccd)
    used = good.sources.loc[good.sources["phot_used"], "ref_index"].to_numpy()[:6]
    few = refcat[used]
    res, tr = _calibrate(survey, visit, ccd, refcat=few, config={"header_fallback": True, "min_phot_stars": 3})
    assert res.summary["calib_method"] == "header_wcs"
    assert res.summary["n_phot"] >= 3
    # the header WCS is off by a few arcsec: the 1.5" match radius still finds the stars, apertures are unaffected
    assert res.summary["zeropoint"] == pytest.approx(tr["zp"], abs=0.03)
    with pytest.raises(DataError, match="no camera zeropoint"):
        _calibrate(survey, visit, ccd, refcat=few[:1], config={"header_fallback": True, "min_phot_stars": 3})


def tr_zp(survey, visit, ccd):
    return _render(survey, visit, ccd)[3]["zp"]
