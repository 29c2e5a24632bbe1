"""Tests of skysnake.photocal: reference magnitudes with colour terms and the zeropoint fit."""

import galsim
import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from skysnake import ccdproc, detection, photocal
from skysnake.errors import DataError

BETA = 4.765


def test_reference_magnitudes_plain_and_colour_term():
    ref = pd.DataFrame({"g_mag": [18.0, 19.5, np.nan], "g_magerr": [0.01, 0.02, 0.01],
                        "r_mag": [17.5, 19.6, 18.0], "r_magerr": [0.02, 0.01, 0.01]})
    m, e = photocal.reference_magnitudes(ref, "g")
    np.testing.assert_array_equal(m, ref["g_mag"])
    np.testing.assert_array_equal(e, ref["g_magerr"])
    terms = {"g": {"primary": "g", "secondary": "r", "coeffs": [0.02, -0.1, 0.01]}}
    m, e = photocal.reference_magnitudes(Table.from_pandas(ref), "g", colour_terms=terms)
    c = np.array([0.5, -0.1])
    np.testing.assert_allclose(m[:2], np.array([18.0, 19.5]) + 0.02 - 0.1 * c + 0.01 * c**2, atol=1e-12)
    assert np.isnan(m[2])
    d = -0.1 + 0.02 * c  # d poly / d colour
    np.testing.assert_allclose(e[:2], np.hypot((1 + d) * np.array([0.01, 0.02]), d * np.array([0.02, 0.01])), atol=1e-12)
    # a filter measured through another band's colour term
    m_i, _ = photocal.reference_magnitudes(ref, "x", colour_terms={"x": {"primary": "r", "secondary": "g",
                                                                          "coeffs": [0.1]}})
    np.testing.assert_allclose(m_i[:2], ref["r_mag"][:2] + 0.1)
    assert np.isnan(m_i[2])  # a colour term needs both magnitudes
    with pytest.raises(DataError) as err:
        photocal.reference_magnitudes(ref, "i")
    assert err.value.code == "no_refmags" and "i_mag" in str(err.value)
    with pytest.raises(DataError):
        photocal.reference_magnitudes(ref, "g", colour_terms={"g": {"primary": "g", "secondary": "z", "coeffs": [0]}})


def _star_list(rng, n, zp, *, sky_noise=200.0, n_bad=0):
    mag = rng.uniform(16.5, 21.0, n)
    magerr = np.hypot(0.003, 0.02 * 10 ** (0.4 * (mag - 21.0)))
    true_flux = 10 ** (-0.4 * (mag - zp))
    fluxerr = np.sqrt(true_flux / 1.5 + sky_noise**2)
    flux = true_flux + rng.normal(0, 1, n) * fluxerr
    ref = mag + rng.normal(0, 1, n) * magerr
    flux[:n_bad] *= 10 ** (0.4 * rng.uniform(0.2, 1.0, n_bad))  # blended with a neighbour
    return flux, fluxerr, ref, magerr


def test_fit_zeropoint_accuracy_outliers_and_errors():
    rng = np.random.default_rng(11)
    zp = 28.3
    res = photocal.fit_zeropoint(*_star_list(rng, 120, zp, n_bad=12))
    assert abs(res.zp - zp) < 0.005 and abs(res.zp - zp) < 3 * res.zp_err
    assert res.used[12:].mean() > 0.95 and res.used[:12].mean() < 0.3
    assert res.n == res.used.sum()
    # the quoted error describes the scatter of repeated experiments, and the estimate is unbiased
    zps, errs = [], []
    for _ in range(150):
        r = photocal.fit_zeropoint(*_star_list(rng, 60, zp, n_bad=5), sys_err=0.0)
        zps.append(r.zp)
        errs.append(r.zp_err)
    zps = np.array(zps)
    assert abs(np.mean(zps) - zp) < 0.25 * np.std(zps) + 1e-4
    assert 0.75 < np.mean(errs) / np.std(zps) < 1.35


def test_fit_zeropoint_too_few():
    rng = np.random.default_rng(12)
    flux, fluxerr, ref, magerr = _star_list(rng, 8, 28.0)
    ref[:5] = np.nan
    with pytest.raises(DataError) as e:
        photocal.fit_zeropoint(flux, fluxerr, ref, magerr, min_stars=5)
    assert e.value.code == "few_photstars" and "only 3" in str(e.value)
    flux[:] = -1.0
    with pytest.raises(DataError):
        photocal.fit_zeropoint(flux, fluxerr, ref, magerr)


@pytest.mark.parametrize("fwhm", [3.0, 6.0])
def test_zeropoint_from_image_with_aperture_correction(fwhm):
    """Noiseless-ish Moffat stars: aperture flux x aperture correction gives the zeropoint to < 0.005."""
    rng = np.random.default_rng(13)
    zp = 28.5
    shape = (700, 700)
    g = 14
    gx, gy = np.meshgrid((np.arange(g) + 0.5) * 660 / g + 20, (np.arange(g) + 0.5) * 660 / g + 20)
    x = gx.ravel() + rng.uniform(-2, 2, g * g)
    y = gy.ravel() + rng.uniform(-2, 2, g * g)
    mag = rng.uniform(16.5, 20.0, g * g)
    flux = 10 ** (-0.4 * (mag - zp))
    img = galsim.ImageF(shape[1], shape[0], xmin=0, ymin=0)
    psf = galsim.Moffat(beta=BETA, fwhm=fwhm)
    for xi, yi, fi in zip(x, y, flux):
        b = galsim.BoundsI(int(xi) - 45, int(xi) + 45, int(yi) - 45, int(yi) + 45) & img.bounds
        psf.withFlux(fi).drawImage(image=img[b], scale=1.0, center=galsim.PositionD(xi, yi), add_to_image=True,
                                   method="no_pixel")
    gain = 100.0  # nearly noiseless
    sky = 40.0
    data = ((rng.poisson((img.array + sky) * gain) + rng.normal(0, 5, shape)) / gain).astype(np.float32)
    bkg = detection.estimate_background(data, mesh=64)
    sub = data - bkg.back
    var = ccdproc.variance_plane(data, bkg.back, gain=gain, read_noise=5.0)
    sky_var = ccdproc.variance_plane(bkg.back, bkg.back, gain=gain, read_noise=5.0)
    objs = detection.detect_sources(sub, variance=sky_var, thresh=5.0)
    r_cal = 10.0
    cat = detection.measure_sources(sub, objs, variance=var, aper_radii=[r_cal], aper_names=["calib"])
    stars = detection.select_psf_stars(cat, min_snr=50, isolation=20.0)
    psf_fit = detection.measure_psf_fwhm(sub, cat, stars, variance=var)
    r_tot = 3 * psf_fit["fwhm"]
    ee = detection.moffat_encircled_energy(r_tot, psf_fit["alpha"], psf_fit["beta"])
    apc = detection.aperture_correction(sub, cat, stars, variance=sky_var, radius=r_cal, total_radius=r_tot,
                                        total_fraction=ee)
    from scipy.spatial import cKDTree
    d, j = cKDTree(np.column_stack([x, y])).query(np.column_stack([cat["x"], cat["y"]]))
    ok = d < 1
    assert ok.sum() > 0.9 * g * g
    f = cat["flux_calib"].to_numpy()[ok]
    fe = cat["fluxerr_calib"].to_numpy()[ok]
    res = photocal.fit_zeropoint(f * apc["apcorr"], fe * apc["apcorr"], mag[j[ok]], np.full(ok.sum(), 0.003))
    assert abs(res.zp - zp) < 0.005, (res.zp - zp, apc)
    # without the aperture correction the zeropoint is off at 1.2" seeing (the correction matters)
    res0 = photocal.fit_zeropoint(f, fe, mag[j[ok]], np.full(ok.sum(), 0.003))
    if fwhm >= 6:
        assert abs(res0.zp - zp) > 0.015

    # the zeropoint stars' 2-FWHM aperture: the Moffat model's aperture correction is within its quoted
    # uncertainty of the truth, agrees with the stars, and the averaged correction gives the zeropoint
    r2 = 2.0 * psf_fit["fwhm"]
    alpha_true = fwhm / (2 * np.sqrt(2 ** (1 / BETA) - 1))
    apc_true = 1 / detection.moffat_encircled_energy(r2, alpha_true, BETA)
    model, model_err = photocal.model_aperture_correction(
        detection.moffat_encircled_energy(r2, psf_fit["alpha"], psf_fit["beta"]))
    assert abs(model - apc_true) < model_err < 0.005 * model
    emp = detection.aperture_correction(sub, cat, stars, variance=sky_var, radius=r2, total_radius=r_tot,
                                        total_fraction=ee)
    comb = photocal.combine_aperture_correction(emp["apcorr"], emp["apcorr_err"], model=model, model_err=model_err)
    assert comb["method"] == "combined" and comb["apcorr_err"] < min(model_err, emp["apcorr_err"])
    assert abs(comb["apcorr"] / apc_true - 1) < 0.002
    f2, fe2 = detection.fixed_aperture_flux(sub, cat["x"].to_numpy()[ok], cat["y"].to_numpy()[ok], r2, variance=var)
    res2 = photocal.fit_zeropoint(f2 * comb["apcorr"], fe2 * comb["apcorr"], mag[j[ok]], np.full(ok.sum(), 0.003))
    assert abs(res2.zp - zp) < 0.005, (res2.zp - zp, comb)


def test_model_and_combined_aperture_correction():
    # model: 1/EE, uncertainty a fraction of the extrapolated light (with a floor)
    apc, err = photocal.model_aperture_correction(0.98, wing_err=0.3)
    assert apc == pytest.approx(1 / 0.98) and err == pytest.approx(apc * 0.3 * 0.02 / 0.98)
    apc, err = photocal.model_aperture_correction(1.0, wing_err=0.3, floor=2e-4)
    assert apc == 1.0 and err == pytest.approx(2e-4)
    with pytest.raises(ValueError):
        photocal.model_aperture_correction(0.0)
    # equal errors: the midpoint, error / sqrt(2)
    c = photocal.combine_aperture_correction(1.010, 0.002, model=1.008, model_err=0.002)
    assert c["method"] == "combined" and c["apcorr"] == pytest.approx(1.009)
    assert c["apcorr_err"] == pytest.approx(0.002 / np.sqrt(2))
    assert c["tension"] == pytest.approx(0.002 / np.hypot(0.002, 0.002))
    # the more precise value dominates
    c = photocal.combine_aperture_correction(1.010, 0.004, model=1.000, model_err=0.001)
    assert c["apcorr"] == pytest.approx((1.010 / 16 + 1.000) / (1 / 16 + 1))
    # a model that disagrees with the stars is rejected; no empirical value: the model
    c = photocal.combine_aperture_correction(1.030, 0.003, model=1.001, model_err=0.001)
    assert c["method"] == "empirical" and c["apcorr"] == 1.030 and c["apcorr_err"] == 0.003 and c["tension"] > 3
    for bad in (np.nan, 0.0):
        c = photocal.combine_aperture_correction(1.01, bad, model=1.001, model_err=0.001)
        assert c["method"] == "psf_model" and c["apcorr"] == 1.001 and c["apcorr_err"] == 0.001
    # repeated noisy empirical measurements around a correct model: the average is unbiased and its quoted
    # error is an upper bound of the real scatter (the model's uncertainty is a prior, not noise)
    rng = np.random.default_rng(5)
    true, s_e, s_m = 1.012, 0.003, 0.002
    vals = [photocal.combine_aperture_correction(true + rng.normal(0, s_e), s_e, model=true, model_err=s_m)
            for _ in range(400)]
    a = np.array([v["apcorr"] for v in vals])
    assert abs(a.mean() - true) < 3 * a.std() / np.sqrt(len(a))
    assert a.std() < vals[0]["apcorr_err"] < s_e
