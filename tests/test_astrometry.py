"""Tests of skysnake.astrometry: epoch propagation, projection, matching and the TAN-SIP fit."""

import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS

from skysnake import astrometry as A
from skysnake.errors import DataError

NX, NY = 1024, 2048
SCALE = 0.2 / 3600.0
K = 2.0e-9  # cubic radial distortion (px^-2), ~5" at 2300 px from the axis
MJD_2024 = 51544.5 + 24 * 365.25


def _true_wcs(rot_deg=0.3, axis=(-30.0, 2100.0), crval=(150.1, 2.2)):
    """TAN-SIP truth: cubic radial distortion about an optical axis outside the CCD (FITS crpix)."""
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cd = SCALE * np.array([[-c, s], [s, c]])
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[3, 0] = a[1, 2] = K
    b[2, 1] = b[0, 3] = K
    return A.make_tan_sip_wcs(crpix=axis, crval=crval, cd=cd, a=a, b=b, ap=np.zeros((4, 4)), bp=np.zeros((4, 4)),
                              shape=(NY, NX))


def _header_wcs(truth, *, offset_arcsec=(8.0, -6.5), rot_deg=0.1):
    """Plain TAN at the CCD centre: shifted by ~10", rotated by 0.1 deg, no distortion."""
    cx, cy = (NX - 1) / 2.0, (NY - 1) / 2.0
    ra, dec = (float(v[0]) for v in truth.all_pix2world([cx], [cy], 0))
    ra, dec = A.inverse_gnomonic(offset_arcsec[0] / 3600, offset_arcsec[1] / 3600, ra, dec)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cd = np.array([[c, -s], [s, c]]) @ truth.wcs.cd
    return A.make_tan_sip_wcs(crpix=(cx + 1, cy + 1), crval=(float(ra), float(dec)), cd=cd)


def _stars(truth, n, rng, *, margin=5.0):
    x = rng.uniform(margin, NX - 1 - margin, n)
    y = rng.uniform(margin, NY - 1 - margin, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    return x, y, np.asarray(ra), np.asarray(dec)


def _perturb_sky(ra, dec, sigma_arcsec, rng):
    xi, eta = rng.normal(0, sigma_arcsec / 3600, (2, len(ra)))
    out = [A.inverse_gnomonic(a, b, r, d) for a, b, r, d in zip(xi, eta, ra, dec)]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


# ------------------------------------------------------------------------------------------- basics

def test_julian_year():
    assert A.julian_year(51544.5) == 2000.0
    assert abs(A.julian_year(MJD_2024) - 2024.0) < 1e-12


def test_gnomonic_matches_astropy_tan_and_inverts():
    rng = np.random.default_rng(1)
    ra0, dec0 = 33.0, -71.0
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cd = np.eye(2)  # 1 deg per "pixel": pixel - 1 = intermediate world coordinates (deg)
    ra = ra0 + rng.uniform(-3, 3, 100) / np.cos(np.radians(dec0))
    dec = dec0 + rng.uniform(-3, 3, 100)
    px, py = w.wcs_world2pix(ra, dec, 1)
    xi, eta = A.gnomonic(ra, dec, ra0, dec0)
    np.testing.assert_allclose(xi, px - 1, atol=1e-10)
    np.testing.assert_allclose(eta, py - 1, atol=1e-10)
    ra2, dec2 = A.inverse_gnomonic(xi, eta, ra0, dec0)
    np.testing.assert_allclose(((ra2 - ra + 180) % 360) - 180, 0, atol=1e-10)
    np.testing.assert_allclose(dec2, dec, atol=1e-10)


@pytest.mark.parametrize("dec", [30.0, 89.99])
def test_propagate_refcat(dec):
    dt = 8.0
    mjd = 51544.5 + (2016.0 + dt - 2000.0) * 365.25
    ref = pd.DataFrame({"ra": [10.0, 10.0, 10.0], "dec": [dec, dec, dec], "pmra": [100.0, np.nan, 0.0],
                        "pmdec": [-50.0, 20.0, 0.0], "epoch": [2016.0, 2016.0, 2016.0]})
    ra, dec_out = A.propagate_refcat(ref, mjd=mjd)
    # the motion, seen in the tangent plane of the original position: exactly (pmra, pmdec) * dt
    xi, eta = A.gnomonic(ra, dec_out, 10.0, dec)
    np.testing.assert_allclose(np.array(xi) * 3.6e6, [100.0 * dt, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.array(eta) * 3.6e6, [-50.0 * dt, 20.0 * dt, 0.0], atol=1e-6)
    # no proper-motion columns: positions unchanged
    ra2, dec2 = A.propagate_refcat(ref[["ra", "dec"]], mjd=mjd)
    np.testing.assert_array_equal(ra2, ref["ra"])
    np.testing.assert_array_equal(dec2, ref["dec"])
    with pytest.raises(DataError):
        A.propagate_refcat(ref[["ra", "dec", "pmra"]], mjd=mjd)  # motions but no epoch


def test_find_offset_and_mutual_matching():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 400, (150, 2))
    true_off = np.array([7.3, -4.1])
    src = ref + true_off + rng.normal(0, 0.3, ref.shape) + 0.004 * (ref - 200)  # scale error smears the peak
    src = np.vstack([src[:110], rng.uniform(0, 400, (60, 2))])  # 40 refs undetected, 60 spurious sources
    off, info = A.find_offset(src, ref, search_radius=20.0, bin_size=1.0)
    assert off is not None and np.hypot(*(off - true_off)) < 0.5, (off, info)
    assert info["npeak"] >= 90
    ia, ib = A.match_nearest(src - off, ref, radius=2.0)
    assert len(set(ia)) == len(ia) and len(set(ib)) == len(ib)
    assert np.mean(ia == ib) > 0.97 and len(ia) >= 100
    # unrelated lists: no significant peak
    off2, _ = A.find_offset(rng.uniform(0, 400, (150, 2)), ref, search_radius=20.0)
    assert off2 is None


# ------------------------------------------------------------------------------------------- fitting

def test_fit_tan_sip_recovers_truth():
    rng = np.random.default_rng(3)
    truth = _true_wcs()
    x, y, ra, dec = _stars(truth, 200, rng)
    xs = x + rng.normal(0, 0.02, x.size)  # 4 mas centroids
    ys = y + rng.normal(0, 0.02, y.size)
    ra_n, dec_n = _perturb_sky(ra, dec, 0.001, rng)
    wcs, info = A.fit_tan_sip(xs, ys, ra_n, dec_n, shape=(NY, NX), order=3, sigma=np.full(x.size, 0.005))
    rms, mx = A.wcs_separation_rms(wcs, truth, (NY, NX))
    assert rms < 0.003 and mx < 0.015, (rms, mx)
    assert 0.004 < info["rms"] < 0.01  # residuals of the matched stars ~ sqrt(2) * 4 mas
    assert list(wcs.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    assert wcs.wcs.crpix[0] == (NX + 1) / 2 and wcs.wcs.crpix[1] == (NY + 1) / 2
    # header round trip, and the inverse polynomials (what FITS readers use) are accurate
    w2 = WCS(wcs.to_header(relax=True), relax=True)
    gx, gy = np.meshgrid(np.linspace(0, NX - 1, 15), np.linspace(0, NY - 1, 30))
    r1 = np.array(wcs.all_pix2world(gx.ravel(), gy.ravel(), 0))
    r2 = np.array(w2.all_pix2world(gx.ravel(), gy.ravel(), 0))
    assert np.max(np.abs(r1 - r2)) * 3600 < 1e-6
    px, py = A.sip_world2pix(w2, *r1)
    assert np.max(np.hypot(px - gx.ravel(), py - gy.ravel())) < 0.01
    assert info["inv_maxerr"] < 0.01
    # a linear (order 1) fit cannot follow the distortion: the test discriminates
    lin, _ = A.fit_tan_sip(xs, ys, ra_n, dec_n, shape=(NY, NX), order=1)
    assert A.wcs_separation_rms(lin, truth, (NY, NX))[0] > 0.1


def test_radial_model_for_sparse_fields():
    """14 stars: too few for a general cubic (20 parameters), enough for the radial model (9)."""
    rng = np.random.default_rng(7)
    truth = _true_wcs(rot_deg=-0.7)
    x, y, ra, dec = _stars(truth, 14, rng)
    xs = x + rng.normal(0, 0.02, x.size)
    ys = y + rng.normal(0, 0.02, y.size)
    assert A.choose_model(14) == "radial" and A.choose_model(25) == 3 and A.choose_model(9) == 1
    assert A.choose_model(14, radial_min_stars=0) == 2
    wcs, info = A.fit_tan_sip(xs, ys, ra, dec, shape=(NY, NX), order="radial", sigma=np.full(14, 0.004))
    rms, mx = A.wcs_separation_rms(wcs, truth, (NY, NX))
    assert rms < 0.01 and mx < 0.03, (rms, mx)
    assert list(wcs.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"] and wcs.sip.a_order == 3
    # a quadratic polynomial with as many stars misses the cubic distortion
    q, _ = A.fit_tan_sip(xs, ys, ra, dec, shape=(NY, NX), order=2)
    assert A.wcs_separation_rms(q, truth, (NY, NX))[0] > 3 * rms


def test_fit_tan_sip_clips_outliers():
    rng = np.random.default_rng(4)
    truth = _true_wcs()
    x, y, ra, dec = _stars(truth, 150, rng)
    xs = x + rng.normal(0, 0.03, x.size)
    ys = y + rng.normal(0, 0.03, y.size)
    xs[:10] += rng.choice([-1, 1], 10) * rng.uniform(2, 5, 10)  # 0.4-1" outliers (blends)
    wcs, info = A.fit_tan_sip(xs, ys, ra, dec, shape=(NY, NX), order=3)
    assert not info["used"][:10].any() and info["used"][10:].mean() > 0.97
    assert A.wcs_separation_rms(wcs, truth, (NY, NX))[0] < 0.005


def test_fit_astrometry_from_offset_rotated_header():
    rng = np.random.default_rng(5)
    truth = _true_wcs()
    header = _header_wcs(truth)  # ~10" off, 0.1 deg rotated, no distortion
    x, y, ra, dec = _stars(truth, 200, rng)
    # the header alone is off by several arcsec over the CCD
    assert A.wcs_separation_rms(header, truth, (NY, NX))[0] > 8.0
    n_det = 140  # 30% of the reference stars are not detected ...
    xs = x[:n_det] + rng.normal(0, 0.02, n_det)
    ys = y[:n_det] + rng.normal(0, 0.02, n_det)
    n_spur = 60  # ... and 30% of the detections have no reference star
    xs = np.concatenate([xs, rng.uniform(0, NX - 1, n_spur)])
    ys = np.concatenate([ys, rng.uniform(0, NY - 1, n_spur)])
    flux = rng.uniform(1, 100, xs.size)
    perm = rng.permutation(xs.size)
    xs, ys, flux = xs[perm], ys[perm], flux[perm]
    ra_n, dec_n = _perturb_sky(ra, dec, 0.001, rng)
    res = A.fit_astrometry(xs, ys, ra_n, dec_n, header_wcs=header, shape=(NY, NX), src_rank=flux,
                           src_err=np.full(xs.size, 0.004), ref_err=0.001)
    rms, mx = A.wcs_separation_rms(res.wcs, truth, (NY, NX))
    assert rms < 0.01 and mx < 0.03, (rms, mx)
    # matches are the right pairs: source index (before permutation) == reference index
    orig = perm[res.src_index]
    assert np.all(orig[res.used] == res.ref_index[res.used])
    assert res.n_used >= 0.95 * n_det
    assert res.rms < 0.02 and res.info["order"] == 3


def test_fit_astrometry_data_errors():
    rng = np.random.default_rng(6)
    truth = _true_wcs()
    header = _header_wcs(truth)
    x, y, ra, dec = _stars(truth, 100, rng)
    # unrelated detections: no consistent offset
    with pytest.raises(DataError) as e:
        A.fit_astrometry(rng.uniform(0, NX, 100), rng.uniform(0, NY, 100), ra, dec, header_wcs=header,
                         shape=(NY, NX))
    assert e.value.code == "no_match"
    assert "search radius" in str(e.value) and "20" in str(e.value)
    # too few reference stars on the CCD
    with pytest.raises(DataError) as e:
        A.fit_astrometry(x, y, ra[:6], dec[:6], header_wcs=header, shape=(NY, NX))
    assert e.value.code == "few_refstars" and "reference stars fall on the CCD" in str(e.value)
    # refcat of another field
    with pytest.raises(DataError) as e:
        A.fit_astrometry(x, y, ra + 1.0, dec, header_wcs=header, shape=(NY, NX))
    assert e.value.code == "few_refstars"
    # header off by more than the search radius
    far = _header_wcs(truth, offset_arcsec=(40.0, 0.0))
    with pytest.raises(DataError) as e:
        A.fit_astrometry(x, y, ra, dec, header_wcs=far, shape=(NY, NX), search_radius=20.0)
    assert e.value.code in ("no_match", "few_refstars")
    res = A.fit_astrometry(x, y, ra, dec, header_wcs=far, shape=(NY, NX), search_radius=60.0)
    assert A.wcs_separation_rms(res.wcs, truth, (NY, NX))[0] < 0.01
