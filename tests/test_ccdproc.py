"""Tests of skysnake.ccdproc: input checks, mask plane, variance plane, cosmic rays."""


import galsim
import numpy as np
import pytest
from astropy.wcs import WCS
from scipy import ndimage

from skysnake import ccdproc, masks
from skysnake.errors import DataError

GAIN, RN = 1.5, 6.0


def _noise(model, rng):
    """Poisson (gain) + read noise realisation of a model image in ADU."""
    return (rng.poisson(np.clip(model, 0, None) * GAIN) + rng.normal(0, RN, model.shape)) / GAIN


def _stars(shape, x, y, flux, fwhm, beta=4.765):
    """Noiseless Moffat stars (sampled at pixel centres, like an effective PSF) at 0-based x, y."""
    img = galsim.ImageF(shape[1], shape[0], xmin=0, ymin=0)
    psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    for xi, yi, fi in zip(x, y, flux):
        b = galsim.BoundsI(int(xi) - 20, int(xi) + 20, int(yi) - 20, int(yi) + 20) & img.bounds
        psf.withFlux(fi).drawImage(image=img[b], scale=1.0, center=galsim.PositionD(xi, yi), add_to_image=True,
                                   method="no_pixel")
    return img.array.astype(np.float64)


# ------------------------------------------------------------------------------------------- checks

def test_check_image_errors():
    with pytest.raises(DataError) as e:
        ccdproc.check_image(np.full((20, 30), np.nan, np.float32))
    assert e.value.code == "no_data"
    with pytest.raises(DataError) as e:
        ccdproc.check_image(np.full((20, 30), np.inf, np.float32))
    assert e.value.code == "no_data"
    with pytest.raises(DataError) as e:
        ccdproc.check_image(np.zeros((20, 30), np.float32))
    assert e.value.code == "blank"
    img = np.full((20, 30), 7.0)
    img[0, 0] = np.nan  # constant apart from a NaN: still blank
    with pytest.raises(DataError) as e:
        ccdproc.check_image(img)
    assert e.value.code == "blank"
    with pytest.raises(DataError) as e:
        ccdproc.check_image(np.ones(10))
    assert e.value.code == "no_data"
    img[1, 1] = 8.0
    ccdproc.check_image(img)  # usable


def test_check_wcs():
    with pytest.raises(DataError) as e:
        ccdproc.check_wcs(None)
    assert e.value.code == "no_wcs"
    lin = WCS(naxis=2)
    lin.wcs.ctype = ["LINEAR", "LINEAR"]
    with pytest.raises(DataError) as e:
        ccdproc.check_wcs(lin)
    assert e.value.code == "no_wcs"
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, 20.0]
    w.wcs.cd = np.zeros((2, 2))  # singular
    with pytest.raises(DataError) as e:
        ccdproc.check_wcs(w)
    assert e.value.code == "no_wcs"
    w.wcs.cd = np.diag([-0.2, 0.2]) / 3600
    ccdproc.check_wcs(w)


# ------------------------------------------------------------------------------------------- masks

def test_saturation_mask_float32_clip_and_grow():
    sat = 51905.0175  # float32(sat) = 51905.015625 < sat: an image clipped at sat never reaches it
    img = np.full((50, 50), 100.0, np.float32)
    img[20:23, 30:32] = sat
    img = np.minimum(img, sat).astype(np.float32)
    assert float(img[20, 30]) < sat
    m = ccdproc.saturation_mask(img, saturation=sat, grow=1)
    expect = np.zeros_like(m)
    expect[19:24, 29:33] = True
    np.testing.assert_array_equal(m, expect)
    assert not ccdproc.saturation_mask(img, saturation=sat, grow=0)[19, 30]
    # growth is scipy's 8-connected binary dilation, at the edges too
    rng = np.random.default_rng(4)
    seeds = rng.random((37, 53)) > 0.995
    seeds[0, 5] = seeds[36, 52] = seeds[10, 0] = True
    for n in (1, 2, 3):
        img = np.where(seeds, np.float32(6e4), np.float32(100.0))
        np.testing.assert_array_equal(ccdproc.saturation_mask(img, saturation=5e4, grow=n),
                                      ndimage.binary_dilation(seeds, structure=np.ones((3, 3), bool), iterations=n))


def test_initial_mask_bits():
    img = np.full((40, 40), 10.0, np.float32)
    img[5, 5] = np.nan
    img[30, 30] = 1e6
    bpm = np.zeros((40, 40), np.uint8)
    bpm[:, 12] = 1
    m = ccdproc.initial_mask(img, saturation=5e4, bpm=bpm)
    assert m.dtype == np.int32
    assert m[5, 5] == masks.NO_DATA
    assert m[30, 30] == masks.SAT and m[31, 31] == masks.SAT and m[32, 32] == 0
    assert np.all(m[:, 12] & masks.BAD)
    assert np.count_nonzero(m) == 1 + 9 + 40
    with pytest.raises(DataError):
        ccdproc.initial_mask(img, saturation=5e4, bpm=np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------- variance

def test_variance_matches_noise():
    rng = np.random.default_rng(1)
    sky = 40.0
    shape = (300, 300)
    model = np.full(shape, sky)
    model[100:200, 100:200] += 500.0  # a flat "source" plateau
    img = _noise(model, rng)
    var = ccdproc.variance_plane(img, np.full(shape, sky, np.float32), gain=GAIN, read_noise=RN)
    # sky region: the model variance (noise-free sky level) except for rare > 3 sigma pixels
    sky_var = sky / GAIN + RN**2 / GAIN**2
    assert np.mean(np.isclose(var[:90], sky_var, rtol=1e-6)) > 0.995
    assert abs(np.mean(var[:90]) / sky_var - 1) < 0.002
    # empirical variance of the pixels agrees with the plane (sky and source plateau)
    for sl in (np.s_[:90, :], np.s_[110:190, 110:190]):
        emp = np.var(img[sl])
        assert abs(np.mean(var[sl]) / emp - 1) < 0.03
    # source pixels: sky + source Poisson
    assert abs(np.mean(var[110:190, 110:190]) - ((sky + 500) / GAIN + RN**2 / GAIN**2)) < 1.0
    with pytest.raises(DataError):
        ccdproc.variance_plane(img, sky, gain=0.0, read_noise=RN)


# ------------------------------------------------------------------------------------------- cosmic rays

def _cr_scene(seed, fwhm, nstar=150, ncr=120, shape=(512, 512), sky=40.0):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x = rng.uniform(15, nx - 15, nstar)
    y = rng.uniform(15, ny - 15, nstar)
    flux = 10 ** rng.uniform(3.0, 5.5, nstar)  # peaks up to ~3e4 ADU at FWHM 3 px
    model = sky + _stars(shape, x, y, flux, fwhm)
    img = _noise(model, rng)
    truth = np.zeros(shape, bool)
    for _ in range(ncr):  # sim-like: 1-4 px tracks of 300-5000 e- per pixel
        x0, y0, n, phi = rng.uniform(0, nx), rng.uniform(0, ny), rng.integers(1, 5), rng.uniform(0, 2 * np.pi)
        for k in range(n):
            px, py = int(x0 + k * np.cos(phi)), int(y0 + k * np.sin(phi))
            if 0 <= px < nx and 0 <= py < ny:
                img[py, px] += np.exp(rng.uniform(np.log(300), np.log(5000))) / GAIN
                truth[py, px] = True
    return img.astype(np.float32), truth, x, y, flux, sky


def _run_cr(img, sky, min_fwhm=3.0):
    back = np.full(img.shape, sky, np.float32)
    var = ccdproc.variance_plane(img, back, gain=GAIN, read_noise=RN)
    return ccdproc.find_cosmic_rays(img, background=back, variance=var, min_fwhm_px=min_fwhm), var


def test_cosmic_rays_found_and_star_cores_spared():
    img, truth, x, y, flux, sky = _cr_scene(2, fwhm=3.0)
    cr, var = _run_cr(img, sky)
    # detectable CR pixels (charge > 8 sigma on the sky, not on a star) are found
    on_star = _stars(img.shape, x, y, flux, 3.0) > 0.5 * np.sqrt(var)
    strong = truth & ((img - sky) > 8 * np.sqrt(var)) & ~on_star
    assert strong.sum() > 100
    recall = np.count_nonzero(cr & strong) / strong.sum()
    assert recall > 0.95, recall
    # false positives: flagged pixels away from any injected CR are rare
    from scipy import ndimage
    near_cr = ndimage.binary_dilation(truth, structure=np.ones((3, 3), bool), iterations=2)
    assert np.count_nonzero(cr & ~near_cr) <= 3
    # no star core is flagged (stars without a CR within 6 px), bright or faint
    clean = np.array([not truth[max(0, int(b) - 6):int(b) + 7, max(0, int(a) - 6):int(a) + 7].any() for a, b in zip(x, y)])
    cores = np.array([cr[int(round(b)) - 2:int(round(b)) + 3, int(round(a)) - 2:int(round(a)) + 3].any()
                      for a, b in zip(x, y)])
    assert clean.sum() > 100
    assert not np.any(cores & clean), flux[cores & clean]


def test_cosmic_rays_reject_undersampled_point_sources():
    # the same test is not vacuous: "stars" much sharper than min_fwhm (1 px FWHM) are flagged
    img, truth, x, y, flux, sky = _cr_scene(3, fwhm=1.0, ncr=0)
    cr, _ = _run_cr(img, sky)
    bright = flux > 3e4
    cores = np.array([cr[int(round(b)), int(round(a))] for a, b in zip(x, y)])
    assert cores[bright].mean() > 0.8


def test_cosmic_rays_ignore_masked_and_timing():
    rng = np.random.default_rng(4)
    shape = (2048, 1024)
    img = _noise(np.full(shape, 40.0), rng).astype(np.float32)
    img[:, 300] += 2000.0  # hot column, flagged BAD
    img[1000, 500] += 3000.0  # one CR
    mask = np.zeros(shape, np.int32)
    mask[:, 300] = masks.BAD
    back = np.full(shape, 40.0, np.float32)
    var = ccdproc.variance_plane(img, back, gain=GAIN, read_noise=RN)
    ccdproc.find_cosmic_rays(img, background=back, variance=var, mask=mask)  # warm-up
    cr = ccdproc.find_cosmic_rays(img, background=back, variance=var, mask=mask)
    assert cr[1000, 500]
    assert not cr[:, 300].any()
    assert np.count_nonzero(cr) < 5


def test_cr_contrast_limit_grows_with_sharpness():
    o3, d3 = ccdproc.cr_contrast_limit(3.0)
    o6, d6 = ccdproc.cr_contrast_limit(6.0)
    assert 1.0 < o6 < o3 < 2.0 and 1.0 < d6 < d3 < 3.0 and d3 > o3
