"""Tests of skysnake.detection: background, detection, measurement, PSF FWHM, aperture correction."""

import galsim
import numpy as np
import pytest
import sep
from scipy.spatial import cKDTree

from skysnake import ccdproc, detection, masks
from skysnake.errors import DataError

GAIN, RN, BETA = 1.5, 6.0, 4.765


def _noise(model, rng):
    return (rng.poisson(np.clip(model, 0, None) * GAIN) + rng.normal(0, RN, model.shape)) / GAIN


def _draw(shape, objs, fwhm, beta=BETA):
    """Noiseless image of Moffat stars (``hlr == 0``) and PSF-convolved exponential galaxies.

    ``objs``: iterable of (x, y, flux, hlr_px); x, y 0-based. The Moffat is the effective PSF
    (sampled at pixel centres, like the simulation).
    """
    img = galsim.ImageF(shape[1], shape[0], xmin=0, ymin=0)
    psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    for x, y, f, hlr in objs:
        obj = psf.withFlux(f) if hlr == 0 else galsim.Convolve(galsim.Exponential(half_light_radius=hlr, flux=f), psf)
        r = 40 if hlr == 0 else 60
        b = galsim.BoundsI(int(x) - r, int(x) + r, int(y) - r, int(y) + r) & img.bounds
        obj.drawImage(image=img[b], scale=1.0, center=galsim.PositionD(x, y), add_to_image=True, method="no_pixel")
    return img.array.astype(np.float64)


def _moffat_ee(r, fwhm, beta=BETA):
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    return 1 - (1 + (r / alpha) ** 2) ** (1 - beta)


def _scene(seed, fwhm, nstar=120, ngal=60, shape=(600, 600), sky=40.0):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    n = nstar + ngal
    # well separated positions (jittered grid)
    g = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid((np.arange(g) + 0.5) * (nx - 40) / g + 20, (np.arange(g) + 0.5) * (ny - 40) / g + 20)
    sel = rng.permutation(g * g)[:n]
    x = gx.ravel()[sel] + rng.uniform(-3, 3, n)
    y = gy.ravel()[sel] + rng.uniform(-3, 3, n)
    flux = 10 ** rng.uniform(3.3, 5.3, n)
    hlr = np.concatenate([np.zeros(nstar), rng.uniform(1.5, 4.0, ngal)])
    model = _draw(shape, zip(x, y, flux, hlr), fwhm) + sky
    img = _noise(model, rng).astype(np.float32)
    return img, x, y, flux, hlr, sky


def _pipeline(img, sky_guess=None, aper=(5.0, 10.0)):
    mask = ccdproc.initial_mask(img, saturation=5e4)
    bkg = detection.estimate_background(img, mask=mask, mesh=64)
    var = ccdproc.variance_plane(img, bkg.back, gain=GAIN, read_noise=RN)
    sub = img - bkg.back
    sky_var = ccdproc.variance_plane(bkg.back, bkg.back, gain=GAIN, read_noise=RN)
    objs = detection.detect_sources(sub, variance=sky_var, mask=(mask & masks.UNUSABLE) != 0, thresh=5.0)
    cat = detection.measure_sources(sub, objs, variance=var, mask=mask, aper_radii=aper, kron=True)
    return sub, var, mask, bkg, cat


def _match(cat, x, y, radius=1.5):
    d, j = cKDTree(np.column_stack([x, y])).query(np.column_stack([cat["x"], cat["y"]]))
    return d < radius, j


# ------------------------------------------------------------------------------------------- background

@pytest.mark.parametrize("sky", [30.0, 800.0])
def test_background_is_unbiased_mean(sky):
    rng = np.random.default_rng(5)
    shape = (1024, 1024)
    img = _noise(np.full(shape, sky), rng).astype(np.float32)
    raw = detection.estimate_background(img, mean_correction=False)
    cor = detection.estimate_background(img)
    sigma_e = np.sqrt(sky * GAIN + RN**2)
    mode_bias = -0.4 * sky * GAIN / sigma_e**2 / GAIN  # sep's mode estimate of a Poisson-skewed sky (ADU)
    # the uncorrected sep level sits ~at the mode; the corrected one at the mean (to < 0.02 ADU)
    assert np.mean(raw.back) - sky < 0.5 * mode_bias
    assert abs(np.mean(cor.back) - img.mean()) < 0.02
    assert abs(cor.globalrms / (sigma_e / GAIN) - 1) < 0.02
    assert cor.rms.shape == img.shape and abs(np.median(cor.rms) / cor.globalrms - 1) < 1e-3  # made on demand


def test_background_follows_gradient_with_sources_masked():
    rng = np.random.default_rng(6)
    shape = (512, 768)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    sky = 50.0 + 10.0 * xx / shape[1]  # 10 ADU gradient
    stars = _draw(shape, [(x, y, 3e5, 0) for x, y in rng.uniform(30, 480, (40, 2))], 5.0)
    img = _noise(sky + stars, rng).astype(np.float32)
    bkg = detection.estimate_background(img, mesh=64)
    far = stars < 0.01
    resid = (bkg.back - sky)[far]
    assert abs(np.mean(resid)) < 0.1
    assert np.sqrt(np.mean(resid**2)) < 0.3
    # without source masking the bright stars' wings bias the sky upwards
    nomask = detection.estimate_background(img, mesh=64, mask_sources=False, mean_correction=False)
    assert np.mean(bkg.back) < np.mean(nomask.back) + 0.5


def test_background_all_masked():
    img = np.ones((64, 64), np.float32)
    with pytest.raises(DataError):
        detection.estimate_background(img, mask=np.ones((64, 64), bool))


# ------------------------------------------------------------------------------------------- measurement

def test_centroids_fluxes_and_errors():
    fwhm = 4.0
    img, x, y, flux, hlr, sky = _scene(7, fwhm)
    sub, var, mask, bkg, cat = _pipeline(img)
    ok, j = _match(cat, x, y)
    star = ok & (hlr[j] == 0) & (cat["flags"].to_numpy() == 0)
    assert star.sum() > 90
    # windowed centroids: unbiased, rms consistent with the S/N (bright stars < 0.02 px)
    dx = cat["x"].to_numpy()[star] - x[j[star]]
    dy = cat["y"].to_numpy()[star] - y[j[star]]
    snr = cat["snr"].to_numpy()[star]
    bright = snr > 200
    assert bright.sum() > 10
    assert np.sqrt(np.mean(dx[bright] ** 2 + dy[bright] ** 2)) < 0.02
    assert abs(np.mean(dx)) < 0.01 and abs(np.mean(dy)) < 0.01
    # aperture fluxes: those of the noiseless image at the true positions (itself within 0.4% of
    # the analytic encircled energy: the image is sampled, not integrated), with honest errors
    model = _draw(img.shape, zip(x, y, flux, hlr), fwhm)
    for k, r in enumerate((5.0, 10.0)):
        f = cat[f"flux_aper{k}"].to_numpy()[star]
        fe = cat[f"fluxerr_aper{k}"].to_numpy()[star]
        expect = sep.sum_circle(model, x[j[star]], y[j[star]], r, subpix=5)[0]
        assert np.all(np.abs(expect / (flux[j[star]] * _moffat_ee(r, fwhm)) - 1) < 0.004)
        pull = (f - expect) / fe
        assert abs(np.median(pull)) < 0.3
        assert 0.8 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.25
        assert abs(np.median(f[bright] / expect[bright]) - 1) < 0.003
    # half-light radius of the stars: that of the Moffat (r50 = alpha sqrt(2^(1/(beta-1)) - 1))
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / BETA) - 1))
    r50 = alpha * np.sqrt(2 ** (1 / (BETA - 1)) - 1)
    assert abs(np.median(cat["flux_radius"].to_numpy()[star][bright]) / r50 - 1) < 0.03
    # Kron fluxes capture most of the light
    kf = cat["flux_kron"].to_numpy()[star][bright] / flux[j[star]][bright]
    assert 0.9 < np.median(kf) < 1.01


def test_detection_threshold_is_in_units_of_the_filtered_noise():
    """thresh=5 finds point sources at a matched-filter S/N of 10, whose filtered peak is only 3.75 sigma of the
    unfiltered noise (SExtractor's DETECT_THRESH units), and hardly any noise peak."""
    rng = np.random.default_rng(12)
    shape, s = (640, 640), 1.2  # Gaussian PSF sigma (px)
    assert detection.filtered_noise() == pytest.approx(6.0 / 16.0)
    k = detection.DEFAULT_KERNEL.astype(float)
    # peak pixel value of a centred source with matched-filter S/N 10 for unit white noise
    prof = np.exp(-(np.arange(-1, 2)[:, None] ** 2 + np.arange(-1, 2)[None, :] ** 2) / (2 * s**2))
    d0 = 10.0 * np.sqrt(np.sum(k**2)) / np.sum(k * prof)
    g = np.arange(40, 600, 40)
    x, y = [v.ravel() + 0.0 for v in np.meshgrid(g, g)]
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = rng.normal(0.0, 1.0, shape)
    for xi, yi in zip(x, y):
        img += d0 * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * s**2))
    objs = detection.detect_sources(img.astype(np.float32), variance=1.0, thresh=5.0)
    d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([objs["x"], objs["y"]]))
    assert np.mean(cKDTree(np.column_stack([objs["x"], objs["y"]])).query(np.column_stack([x, y]))[0] < 1.5) > 0.95
    assert np.sum(d > 3) <= 2  # noise peaks
    # the same sources are (mostly) missed at 5 sigma of the unfiltered noise
    assert len(detection.detect_sources(img.astype(np.float32), variance=1.0, thresh=5.0 / 0.375)) < 0.5 * len(x)


def test_theta_pi_over_2_and_empty():
    img = np.zeros((60, 60), np.float32)
    img[28:33, 29:31] = 100.0  # elongated along y: theta = +-pi/2
    var = np.ones_like(img)
    objs = detection.detect_sources(img, variance=var, thresh=5.0)
    assert len(objs) == 1
    objs["theta"] = np.float32(np.pi / 2)  # float32 pi/2 > pi/2 in double: sep.sum_ellipse would reject it
    cat = detection.measure_sources(img, objs, variance=var, aper_radii=[3.0], kron=True)
    assert np.isfinite(cat["flux_kron"]).all() and cat["theta"].iloc[0] <= np.pi / 2
    empty = detection.measure_sources(img, objs[:0], variance=var, aper_radii=[3.0, 5.0], kron=True)
    assert len(empty) == 0
    assert {"x", "y", "flux_aper0", "fluxerr_aper1", "flux_kron", "flags", "maskbits"} <= set(empty.columns)


def test_flags_near_masked_pixels():
    rng = np.random.default_rng(8)
    shape = (200, 300)
    pos = [(50.0, 50.0), (150.0, 50.0), (250.0, 50.0), (150.0, 150.0), (3.0, 150.0)]
    img = _noise(_draw(shape, [(x, y, 5e4, 0) for x, y in pos], 4.0) + 40, rng).astype(np.float32)
    mask = np.zeros(shape, np.int32)
    mask[50, 55] = masks.SAT
    mask[47, 150] = masks.CR
    mask[:, 245] = masks.BAD
    sub = img - 40.0
    var = ccdproc.variance_plane(img, 40.0, gain=GAIN, read_noise=RN)
    objs = detection.detect_sources(sub, variance=var, thresh=5.0)
    cat = detection.measure_sources(sub, objs, variance=var, mask=mask, aper_radii=[4.0], flag_radius=8.0)
    ok, j = _match(cat, *np.array(pos).T)
    assert ok.sum() == len(pos)
    flags = dict(zip(j, cat["flags"].to_numpy()))
    F = detection.FLAGS
    assert flags[0] & F["NEAR_SAT"] and not flags[0] & (F["NEAR_CR"] | F["NEAR_BAD"])
    assert flags[1] & F["NEAR_CR"] and not flags[1] & (F["NEAR_SAT"] | F["NEAR_BAD"])
    assert flags[2] & F["NEAR_BAD"] and flags[2] & F["APER_HASMASKED"]
    assert not flags[3] & (detection.NEAR_MASKED | F["APER_TRUNC"])
    assert flags[4] & F["APER_TRUNC"]


# ------------------------------------------------------------------------------------------- PSF

@pytest.mark.parametrize("fwhm", [3.0, 6.0])
def test_psf_fwhm_and_aperture_correction(fwhm):
    img, x, y, flux, hlr, sky = _scene(9, fwhm, nstar=100, ngal=80)
    sub, var, mask, bkg, cat = _pipeline(img, aper=(10.0,))
    stars = detection.select_psf_stars(cat, min_snr=50, isolation=15.0)
    ok, j = _match(cat, x, y)
    sel_true_star = ok[stars] & (hlr[j[stars]] == 0)
    assert stars.sum() >= 20
    assert sel_true_star.mean() > 0.9  # galaxies (hlr >= 1.5 px) are rejected
    psf = detection.measure_psf_fwhm(sub, cat, stars, mask=mask != 0, variance=var)
    assert abs(psf["fwhm"] / fwhm - 1) < 0.01, psf
    assert abs(psf["beta"] - BETA) < 0.5
    r_tot = 3.0 * psf["fwhm"]
    ee = detection.moffat_encircled_energy(r_tot, psf["alpha"], psf["beta"])
    sky_var = ccdproc.variance_plane(bkg.back, bkg.back, gain=GAIN, read_noise=RN)
    apc = detection.aperture_correction(sub, cat, stars, variance=sky_var, mask=mask != 0, radius=10.0,
                                        total_radius=r_tot, total_fraction=ee)
    truth = 1.0 / _moffat_ee(10.0, fwhm)
    assert abs(apc["apcorr"] / truth - 1) < max(0.002, 3 * apc["apcorr_err"]), (apc, truth)


def test_psf_no_stars():
    cat = detection.measure_sources(np.zeros((10, 10), np.float32), np.zeros(0, dtype=sep.extract(
        np.ones((5, 5), np.float32), 10).dtype), variance=np.ones((10, 10), np.float32), aper_radii=[2.0])
    stars = detection.select_psf_stars(cat)
    assert stars.size == 0
    with pytest.raises(DataError) as e:
        detection.measure_psf_fwhm(np.zeros((10, 10)), cat, stars)
    assert e.value.code == "no_psf_stars"


def test_clipped_mean_and_local_background():
    rng = np.random.default_rng(10)
    v = rng.normal(3.0, 0.1, 200)
    v[:20] += 5.0  # outliers
    mean, err, used = detection.clipped_mean(v, np.full(200, 0.1))
    assert not used[:20].any() and used[20:].mean() > 0.97
    assert abs(mean - np.mean(v[20:][used[20:]])) < 1e-12
    assert abs(mean - 3.0) < 4 * 0.1 / np.sqrt(180)
    assert 0.5 < err / (0.1 / np.sqrt(180)) < 1.5
    img = rng.normal(7.0, 1.0, (200, 200)).astype(np.float32)
    img[95:105, 120:130] = 500.0  # a neighbour inside the annulus
    sky = detection.local_background(img, np.array([100.0]), np.array([100.0]), r_in=15, r_out=30)
    assert abs(sky[0] - 7.0) < 0.1
