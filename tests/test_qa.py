"""Unit tests of the QA measures (skysnake.qa) and figures (skysnake.qaplots) on small synthetic inputs."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from skysnake import qa, qaplots
from skysnake.astrometry import inverse_gnomonic, propagate_refcat
from skysnake.io import Exposure
from skysnake.repo import file_provenance
from skysnake.skymap import Tract
from skysnake.units import AB_NJY_ZP, mag_to_flux


def _gaussian_psf(fwhm_px, half=15):
    s = fwhm_px / qa.FWHM_PER_SIGMA
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    p = np.exp(-(x**2 + y**2) / (2 * s**2))
    return p / p.sum()


# --------------------------------------------------------------------------------------------- depth

def test_limiting_magnitude_is_five_sigma_for_optimal_psf_photometry():
    """A star at the predicted 5-sigma magnitude is measured at S/N 5 by PSF-weighted photometry (simulated)."""
    rng = np.random.default_rng(1)
    fwhm_arcsec, scale, sigma_pix = 0.9, 0.2, 30.0  # nJy per pixel
    m5 = qa.limiting_magnitude(sigma_pix**2, fwhm_arcsec=fwhm_arcsec, pixel_scale_arcsec=scale)
    flux = mag_to_flux(m5)
    psf = _gaussian_psf(fwhm_arcsec / scale)
    n = 4000
    stamps = flux * psf[None] + rng.normal(0.0, sigma_pix, (n, *psf.shape))
    est = (stamps * psf[None]).sum(axis=(1, 2)) / (psf**2).sum()  # optimal (PSF-weighted) flux
    snr = flux / est.std()
    assert abs(est.mean() / flux - 1) < 0.02  # unbiased
    assert snr == pytest.approx(5.0, rel=0.04)
    # 10-sigma is 2.5 log10(2) brighter; non-positive variance has no depth
    m10 = qa.limiting_magnitude(sigma_pix**2, fwhm_arcsec=fwhm_arcsec, pixel_scale_arcsec=scale, nsigma=10)
    assert m5 - m10 == pytest.approx(2.5 * np.log10(2))
    assert np.isnan(qa.limiting_magnitude(np.array([0.0, -1.0]), fwhm_arcsec=1, pixel_scale_arcsec=0.2)).all()


def test_block_mean_with_and_without_a_valid_mask():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(13, 17))
    valid = rng.random(a.shape) > 0.4
    valid[:4, :4] = False  # one block without any valid pixel
    mean, n = qa.block_mean(a, 4, valid=valid)
    assert mean.shape == (3, 4)
    for j in range(3):
        for i in range(4):
            blk, v = a[4 * j:4 * j + 4, 4 * i:4 * i + 4], valid[4 * j:4 * j + 4, 4 * i:4 * i + 4]
            assert n[j, i] == v.sum()
            if v.any():
                assert mean[j, i] == pytest.approx(blk[v].mean())
            else:
                assert np.isnan(mean[j, i])
    assert np.allclose(qa.block_mean(a, 4)[0], a[:12, :16].reshape(3, 4, 4, 4).mean(axis=(1, 3)))


def test_binned_wcs_puts_each_map_pixel_at_the_centre_of_its_block():
    tract = Tract(id=0, ra=150.0, dec=2.0, pixel_scale=0.2, patch_inner=60, patch_border=5, npatch_x=2, npatch_y=1)
    w, f = tract.wcs(), 6
    wb = qa.binned_wcs(w, f)
    i, j = np.array([0, 3, 19]), np.array([0, 7, 9])
    a = np.array(wb.all_pix2world(i, j, 0))
    b = np.array(w.all_pix2world(f * i + (f - 1) / 2, f * j + (f - 1) / 2, 0))
    assert np.allclose(a, b, atol=1e-10, rtol=0)
    assert qa.choose_bin_factor(3000, (9000, 6000), max_pixels=600) == 15
    assert 3000 % qa.choose_bin_factor(3000, (9000, 6000), max_pixels=400) == 0


def _coadd(tract, patch, *, var, nimage, fwhm, nodata=None):
    shape = tract.patch_shape(patch)
    v = np.full(shape, var, np.float32)
    n = np.full(shape, nimage, np.int16)
    if nodata is not None:
        v[nodata], n[nodata] = 0.0, 0
    return Exposure(np.zeros(shape, np.float32), np.zeros(shape, np.int32), v, tract.patch_wcs(patch),
                    meta={"FWHM": fwhm}, extra={"NIMAGE": n})


def test_depth_maps_place_each_patch_and_follow_the_analytic_depth():
    tract = Tract(id=0, ra=150.0, dec=2.0, pixel_scale=0.2, patch_inner=60, patch_border=5, npatch_x=2, npatch_y=1)
    b = tract.patch_border
    nodata = (slice(b, b + 30), slice(b, b + 60))  # lower half of patch 0_0's inner box: no data
    coadds = {("0_0", "r"): _coadd(tract, "0_0", var=100.0, nimage=2, fwhm=0.8, nodata=nodata),
              ("1_0", "r"): _coadd(tract, "1_0", var=400.0, nimage=3, fwhm=1.2),
              ("1_0", "g"): _coadd(tract, "1_0", var=50.0, nimage=1, fwhm=1.0)}
    maps = qa.depth_maps(coadds, tract, factor=6)
    assert maps.filters == ["g", "r"]
    m5 = maps.m5["r"]
    assert m5.shape == (10, 20)
    expect0 = qa.limiting_magnitude(100.0, fwhm_arcsec=0.8, pixel_scale_arcsec=0.2)
    expect1 = qa.limiting_magnitude(400.0, fwhm_arcsec=1.2, pixel_scale_arcsec=0.2)
    assert np.isnan(m5[:5, :10]).all()  # the no-data half
    assert np.allclose(m5[5:, :10], expect0)
    assert np.allclose(m5[:, 10:], expect1)  # patch 1_0 is the right half (x increases with the patch column)
    assert expect0 - expect1 == pytest.approx(2.5 * np.log10(2 * 1.5))  # twice the noise, 1.5x the FWHM
    assert np.allclose(maps.nimage["r"][5:, :10], 2) and np.allclose(maps.nimage["r"][:5, :10], 0)
    assert np.isnan(maps.m5["g"][:, :10]).all()  # g covers only patch 1_0
    assert maps.area_deg2("r") == pytest.approx(1.5 * 60 * 60 * (0.2 / 3600) ** 2)
    assert maps.median_m5("g") == pytest.approx(qa.limiting_magnitude(50.0, fwhm_arcsec=1.0,
                                                                      pixel_scale_arcsec=0.2))
    # sky positions: the centre of each patch's inner box
    for patch, expected in (("0_0", False), ("1_0", True)):
        x0, y0, x1, y1 = tract.inner_box(patch)
        ra, dec = tract.wcs().all_pix2world([(x0 + x1) / 2 - 0.5], [(y0 + y1) / 2 + 10], 0)
        assert maps.covered("g", ra, dec)[0] == expected
    # the FITS form keeps everything
    back = qa.depth_maps_from_hdulist(qa.depth_maps_to_hdulist(maps, meta={"TRACT": 0}))
    assert back.factor == 6 and back.filters == maps.filters
    assert np.allclose(back.m5["r"], m5, equal_nan=True)
    assert back.fwhm["r"] == {"0_0": 0.8, "1_0": 1.2}
    assert np.allclose(back.wcs.all_pix2world([[3, 4]], 0), maps.wcs.all_pix2world([[3, 4]], 0))


# ---------------------------------------------------------------------------------------- astrometry

def test_astrometric_residuals_recover_injected_offsets_after_proper_motion():
    rng = np.random.default_rng(3)
    n = 50
    refcat = pd.DataFrame({"ra": 150 + rng.uniform(-0.1, 0.1, n), "dec": 2 + rng.uniform(-0.1, 0.1, n),
                           "pmra": rng.normal(0, 30, n), "pmdec": rng.normal(0, 30, n), "epoch": 2016.0})
    mjd = 60400.0  # 2024.3: proper motions move stars by ~250 mas
    ra_ep, dec_ep = propagate_refcat(refcat, mjd=mjd)
    de, dn = rng.normal(0, 20, n), rng.normal(0, 20, n)  # injected offsets (mas)
    ra_src, dec_src = inverse_gnomonic(de / 3.6e6, dn / 3.6e6, ra_ep, dec_ep)
    # sources in a different order, with unmatched ones (ref_index -1) in between
    order = rng.permutation(n)
    sources = pd.DataFrame({"ra": np.r_[ra_src[order], 150.0], "dec": np.r_[dec_src[order], 2.0],
                            "ref_index": np.r_[order, -1], "astrom_used": np.r_[np.arange(n) % 5 != 0, False],
                            "mag": 20.0, "snr": 50.0})
    res = qa.astrometric_residuals(sources, refcat, mjd=mjd, ccd=3)
    assert len(res) == n and (res["ccd"] == 3).all()
    assert np.allclose(res["dra_mas"], de[order], atol=1e-4)
    assert np.allclose(res["ddec_mas"], dn[order], atol=1e-4)
    st = qa.residual_stats(res)
    used = np.arange(n) % 5 != 0
    assert st["n"] == used.sum()
    assert st["rms"] == pytest.approx(np.sqrt(np.mean(de[order][used] ** 2 + dn[order][used] ** 2)))
    # without the proper motions the residuals would be off by ~pm x 8 yr: the epoch matters
    res0 = qa.astrometric_residuals(sources, refcat.assign(pmra=0.0, pmdec=0.0), mjd=mjd)
    assert np.sqrt(np.mean(res0["dra_mas"] ** 2)) > 100
    assert len(qa.astrometric_residuals(sources.iloc[:0], refcat, mjd=mjd)) == 0


def test_focal_plane_coordinates_are_east_and_north_arcmin():
    centre = qa.sky_center([359.9, 0.1], [10.0, 10.0])
    assert centre[0] == pytest.approx(0.0, abs=1e-9) or centre[0] == pytest.approx(360.0)
    xi, eta = qa.focal_plane([150 + 0.1 / np.cos(np.radians(2.0)), 150.0], [2.0, 2.1], center=(150.0, 2.0))
    assert xi[0] == pytest.approx(6.0, rel=1e-3) and abs(eta[0]) < 0.01  # east: +xi
    assert eta[1] == pytest.approx(6.0, rel=1e-3) and abs(xi[1]) < 1e-9  # north: +eta


# ------------------------------------------------------------------------------------------ catalogs

def test_number_counts_recover_slope_and_density():
    rng = np.random.default_rng(4)
    slope, lo, hi, n = 0.35, 18.0, 25.0, 20000  # dN/dm ~ 10^(slope m)
    u = rng.random(n)
    mags = np.log10(10 ** (slope * lo) + u * (10 ** (slope * hi) - 10 ** (slope * lo))) / slope
    area = 0.25
    nc = qa.number_counts(mags, area_deg2=area, bins=np.arange(lo, hi + 0.01, 0.5))
    assert (nc["density"] * 0.5 * area).sum() == pytest.approx(n)
    fit = np.polyfit(nc["mag"], np.log10(nc["density"]), 1, w=1 / (nc["density_err"] / nc["density"]))
    assert fit[0] == pytest.approx(slope, abs=0.02)
    assert (nc["density_err"] == np.sqrt(nc["n"]) / (area * 0.5)).all()


def test_completeness_and_the_fifty_percent_magnitude():
    rng = np.random.default_rng(5)
    mag = rng.uniform(18, 26, 40000)
    p = 1 / (1 + np.exp((mag - 23.0) / 0.25))  # logistic: 50% at 23
    found = rng.random(mag.size) < p
    t = qa.completeness(mag, found, bins=np.arange(18, 26.01, 0.25))
    assert t["n"].sum() == mag.size
    assert (t["completeness"][t["mag"] < 21] > 0.98).all() and (t["completeness"][t["mag"] > 25] < 0.02).all()
    assert qa.magnitude_at_completeness(t, 0.5) == pytest.approx(23.0, abs=0.06)
    assert np.isnan(qa.magnitude_at_completeness(t, 1.5))


def test_match_to_truth_finds_shifted_objects_and_ignores_spurious_ones():
    rng = np.random.default_rng(6)
    n = 300
    truth = pd.DataFrame({"ra": 150 + rng.uniform(0, 0.05, n), "dec": 2 + rng.uniform(0, 0.05, n)})
    keep = rng.random(n) < 0.7
    cat = pd.DataFrame({"ra": truth["ra"][keep] + 0.2 / 3600, "dec": truth["dec"][keep]})
    cat = pd.concat([cat, pd.DataFrame({"ra": [150.2], "dec": [2.2]})], ignore_index=True)  # spurious
    t2c, (ti, ci) = qa.match_to_truth(cat, truth, radius_arcsec=0.5)
    assert ((t2c >= 0) == keep).all()
    assert set(ti) == set(np.flatnonzero(keep)) and len(cat) - 1 not in set(ci)
    assert np.allclose(cat["dec"].to_numpy()[ci], truth["dec"].to_numpy()[ti])
    assert (qa.match_to_truth(cat.iloc[:0], truth)[0] == -1).all()


def test_snr_cut_and_filter_order():
    cat = pd.DataFrame({"g_flux": [10.0, 100.0, np.nan], "g_fluxerr": [1.0, 1.0, 1.0],
                        "r_flux": [100.0, 2.0, 100.0], "r_fluxerr": [1.0, 1.0, 1.0]})
    assert qa.snr_cut(cat, ("g", "r"), 5).tolist() == [True, False, False]
    assert qa.order_filters(["i", "z", "g", "N921", "r"]) == ["g", "r", "i", "z", "N921"]
    assert qa.rgb_filters(["g", "r", "i", "z"]) == ("i", "r", "g")
    assert qa.rgb_filters(["z", "y"]) == ("y", "y", "z")


def test_color_composite_colours_and_no_data():
    rng = np.random.default_rng(7)
    shape = (64, 64)
    red, green, blue = (rng.normal(0, 1.0, shape).astype(np.float32) for _ in range(3))
    blue[30:34, 10:14] += 500.0  # a blue source
    red[30:34, 50:54] += 500.0  # a red source
    for im in (red, green, blue):
        im[:8, :] = 0.0  # no data in any filter
    rgb = qa.color_composite(red, green, blue, factor=2)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    b_src, r_src = rgb[15:17, 5:7].reshape(-1, 3).mean(axis=0), rgb[15:17, 25:27].reshape(-1, 3).mean(axis=0)
    assert b_src[2] > 200 and b_src[0] < 60 and b_src[1] < 60
    assert r_src[0] > 200 and r_src[2] < 60
    assert (rgb[:4] == 150).all()  # no data: grey
    sky = rgb[10:, 30:40].astype(float)
    assert sky.mean() < 60  # the noise stays dark


# ------------------------------------------------------------------------------------------- figures

def _render(fig):
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.tell() > 1000
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def _ccds():
    def box(x0, y0):
        return [[150 + x0, 2 + y0], [150 + x0 + 0.05, 2 + y0], [150 + x0 + 0.05, 2 + y0 + 0.1], [150 + x0, 2 + y0 + 0.1]]

    return pd.DataFrame([
        {"ccd": 1, "corners": box(0, 0), "status": "ok", "selected": True, "zeropoint": 28.2, "seeing_arcsec": 0.9,
         "astrom_rms_arcsec": 0.03, "code": None},
        {"ccd": 2, "corners": json.dumps(box(0.06, 0)), "status": "ok", "selected": False, "zeropoint": 27.5,
         "seeing_arcsec": 1.9, "astrom_rms_arcsec": 0.05, "code": None},
        {"ccd": 3, "corners": box(0, 0.11), "status": "failed", "selected": False, "zeropoint": None,
         "seeing_arcsec": None, "astrom_rms_arcsec": None, "code": "no_wcs"},
    ])


def test_visit_figures_mark_failed_and_rejected_ccds():
    ccds = _ccds()
    texts = _render(qaplots.plot_focal_plane(ccds, center=(150.05, 2.1), title="visit 1"))
    joined = " ".join(texts)
    assert "failed" in joined and "no_wcs" in joined and "rejected" in joined and "28.200" in joined
    rng = np.random.default_rng(8)
    n = 60
    res = pd.DataFrame({"ccd": np.repeat([1, 2], n // 2), "ra": 150 + rng.uniform(0, 0.1, n),
                        "dec": 2 + rng.uniform(0, 0.1, n), "dra_mas": rng.normal(0, 20, n),
                        "ddec_mas": rng.normal(0, 20, n), "mag": rng.uniform(17, 22, n), "snr": 50.0, "used": True})
    texts = _render(qaplots.plot_astrometry(res, ccds=ccds, center=(150.05, 2.1)))
    assert any(t.startswith("ccd 1:") for t in texts)
    texts = _render(qaplots.plot_astrometry(qa.empty_residuals(), ccds=ccds, center=(150.05, 2.1)))
    assert "no matched reference stars" in texts


def _catalog(n=400, seed=9):
    rng = np.random.default_rng(seed)
    cat = pd.DataFrame({"ra": 150 + rng.uniform(0, 0.1, n), "dec": 2 + rng.uniform(0, 0.1, n),
                        "is_star": rng.random(n) < 0.5})
    r = rng.uniform(17, 24, n)
    for f, c in (("g", 0.6), ("r", 0.0), ("i", -0.3)):
        flux = mag_to_flux(r + c + rng.normal(0, 0.02, n))
        cat[f"{f}_flux"], cat[f"{f}_fluxerr"] = flux, np.full(n, mag_to_flux(25.0))
        cat[f"{f}_mag"] = AB_NJY_ZP - 2.5 * np.log10(flux)
    return cat


def test_catalog_and_truth_figures_render_with_data_and_without():
    cat = _catalog()
    filters = ["i", "g", "r"]
    texts = _render(qaplots.plot_number_counts(cat, filters=filters, areas={f: 0.01 for f in filters},
                                               m5={"g": 24.0, "r": 24.0, "i": 23.5}))
    assert any(t.startswith("g:") for t in texts) and texts.index(next(t for t in texts if t.startswith("g:"))) < \
        texts.index(next(t for t in texts if t.startswith("i:")))  # blue to red
    _render(qaplots.plot_color_color(cat, filters=filters))
    _render(qaplots.plot_color_magnitude(cat, filters=filters))
    empty = cat.iloc[:0]
    assert "no objects" in _render(qaplots.plot_color_color(empty, filters=filters))
    assert "needs three filters" in _render(qaplots.plot_color_color(cat, filters=["g", "r"]))
    _render(qaplots.plot_number_counts(empty, filters=filters, areas={}))
    t = qa.completeness(np.linspace(18, 25, 200), np.linspace(18, 25, 200) < 23, bins=np.arange(18, 25.1, 0.5))
    _render(qaplots.plot_completeness({"g": {"point sources": t, "extended": t}}, m5={"g": 23.1}))
    pairs = pd.DataFrame({"true_mag": np.linspace(17, 24, 100), "mag": np.linspace(17, 24, 100) + 0.001,
                          "magerr": np.linspace(0.001, 0.3, 100)})
    texts = _render(qaplots.plot_delta_mag({"r": pairs, "g": pairs.iloc[:0]}))
    assert "no data" in texts


def test_tract_figures_and_png_provenance(tmp_path):
    tract = Tract(id=0, ra=150.0, dec=2.0, pixel_scale=0.2, patch_inner=60, patch_border=5, npatch_x=2, npatch_y=1)
    maps = qa.depth_maps({("0_0", "r"): _coadd(tract, "0_0", var=100.0, nimage=2, fwhm=0.8),
                          ("1_0", "r"): _coadd(tract, "1_0", var=400.0, nimage=3, fwhm=1.2)}, tract, factor=6)
    texts = _render(qaplots.plot_depth(maps, tract=tract))
    assert any(t.startswith("r: median") for t in texts) and "1_0" in texts
    _render(qaplots.plot_coverage(maps, tract=tract))
    # a tract whose coadds are all empty (every CCD failed): maps without data, figures that say so
    empty = qa.depth_maps({("0_0", "r"): Exposure(None, None, None, None)}, tract, factor=6)
    assert np.isnan(empty.m5["r"]).all() and empty.area_deg2("r") == 0
    assert np.isnan(qa.depth_maps_from_hdulist(qa.depth_maps_to_hdulist(empty)).m5["r"]).all()
    assert "no data" in _render(qaplots.plot_depth(empty, tract=tract))
    _render(qaplots.plot_coverage(empty, tract=tract))
    rgb = np.zeros((20, 30, 3), np.uint8)
    fig = qaplots.plot_color_composite(rgb, wcs=tract.patch_wcs("0_0"), factor=2, inner_box=(5, 5, 65, 65))
    prov = {"version": "9.9", "config_hash": "abc", "inputs": ["a.fits", "b.fits"]}
    qaplots.save_png(fig, tmp_path / "c.png", provenance=prov)
    assert file_provenance(tmp_path / "c.png") == prov
