"""Tests of skysnake.multiband / skysnake.measure on simulated coadds with known truth.

The simulated patch (600x600 px at 0.2"/px, three bands) has Moffat (beta 4.765) stars whose FWHM is 0.7"
on the left half and 1.1" on the right (scaled a little per band), exponential galaxies, Gaussian noise
with a spatially varying, known variance plane, a residual background tilt, and a NO_DATA strip.
"""

import time

import galsim
import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from skysnake import masks
from skysnake.errors import DataError
from skysnake.io import Exposure
from skysnake.measure import FLAG_EDGE, FLAG_MASKED, FLAG_NO_DATA, FLAG_SATURATED, prepare
from skysnake.multiband import (DETECT_COLUMNS, REFERENCE_COLUMNS, detect, forced_columns, forced_photometry,
                                measure, measure_columns, merge_detections, select_reference)

PIXSCALE = 0.2
BETA = 4.765
FWHM_LEFT, FWHM_RIGHT = 0.7, 1.1
BAND_SEEING = {"g": 1.08, "r": 1.0, "i": 0.93}  #: per-band scale of the FWHM
SIGMA0 = 4.0  #: nJy per pixel at the patch centre
STRIP = (520, 545)  #: NO_DATA rows


def make_wcs(n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    w.wcs.cd = np.array([[-PIXSCALE / 3600, 0.0], [0.0, PIXSCALE / 3600]])
    return w


def psf_fwhm(x, band, n):
    return np.where(x < n / 2, FWHM_LEFT, FWHM_RIGHT) * BAND_SEEING[band]


def point_snr(flux, fwhm, sigma):
    """Optimal (PSF-weighted) S/N of a point source of the given Moffat FWHM on white noise ``sigma``."""
    img = galsim.Moffat(beta=BETA, fwhm=float(fwhm)).drawImage(nx=64, ny=64, scale=PIXSCALE).array
    return flux * np.sqrt((img ** 2).sum()) / sigma


def make_truth(seed=1, n=600, grid=8, nfaint=60, ngal=40):
    """Truth catalog: bright stars on a jittered grid (calibrators), faint stars and galaxies in between."""
    rng = np.random.default_rng(seed)
    step = n / grid
    gx, gy = np.meshgrid((np.arange(grid) + 0.5) * step, (np.arange(grid) + 0.5) * step)
    bright = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.2 * step, 0.2 * step, (grid * grid, 2))
    tree = cKDTree(bright)

    def scatter(count, avoid_px):
        pts = []
        while len(pts) < count:
            p = rng.uniform(12, n - 12, 2)
            if tree.query(p)[0] > avoid_px:
                pts.append(p)
        return np.array(pts)

    faint, gals = scatter(nfaint, 15.0), scatter(ngal, 25.0)
    unit = point_snr(1.0, 0.9, SIGMA0)  # r-band S/N per nJy for a 0.9" PSF
    snr = np.concatenate([10 ** rng.uniform(np.log10(50), np.log10(5000), len(bright)),
                          10 ** rng.uniform(np.log10(4), np.log10(60), nfaint),
                          10 ** rng.uniform(np.log10(20), np.log10(500), ngal)])
    xy = np.vstack([bright, faint, gals])
    truth = pd.DataFrame({"kind": ["star"] * (len(bright) + nfaint) + ["galaxy"] * ngal,
                          "x": xy[:, 0], "y": xy[:, 1], "flux_r": snr / unit})
    truth["flux_g"] = truth["flux_r"] * 10 ** (-0.4 * rng.uniform(-0.2, 1.2, len(truth)))
    truth["flux_i"] = truth["flux_r"] * 10 ** (0.4 * rng.uniform(-0.2, 0.8, len(truth)))
    star = truth["kind"] == "star"
    truth["hlr"] = np.where(star, 0.0, rng.uniform(0.3, 1.0, len(truth)))
    e, ang = rng.uniform(0.0, 0.5, len(truth)), rng.uniform(0, np.pi, len(truth))
    truth["e1"], truth["e2"] = e * np.cos(2 * ang), e * np.sin(2 * ang)
    return truth


def sigma_map(n):
    yy, xx = np.mgrid[0:n, 0:n]
    return (SIGMA0 * (1.0 + 0.25 * np.cos(2 * np.pi * xx / n) * np.sin(np.pi * yy / n))).astype(np.float32)


def make_coadd(truth, band, *, n=600, seed=0, strip=STRIP, fwhm_meta=True):
    """A simulated coadd in nJy with its variance and mask planes."""
    img = galsim.ImageF(n, n, xmin=0, ymin=0, scale=PIXSCALE)
    fwhm = psf_fwhm(truth["x"].to_numpy(), band, n)
    half = 40
    for row, f in zip(truth.itertuples(), fwhm):
        psf = galsim.Moffat(beta=BETA, fwhm=float(f))
        flux = getattr(row, f"flux_{band}")
        if row.kind == "star":
            prof = psf.withFlux(flux)
        else:
            gal = galsim.Exponential(half_light_radius=row.hlr, flux=flux).shear(e1=row.e1, e2=row.e2)
            prof = galsim.Convolve(gal, psf)
        ix, iy = int(round(row.x)), int(round(row.y))
        bounds = galsim.BoundsI(ix - half, ix + half, iy - half, iy + half) & img.bounds
        prof.drawImage(image=img[bounds], center=galsim.PositionD(row.x, row.y), add_to_image=True)
    rng = np.random.default_rng(seed)
    sig = sigma_map(n)
    yy, xx = np.mgrid[0:n, 0:n]
    residual_bkg = 0.4 * SIGMA0 * (xx / n - 0.3) + 0.2 * SIGMA0 * (yy / n)
    image = (img.array + rng.normal(0.0, 1.0, (n, n)) * sig + residual_bkg).astype(np.float32)
    var = sig ** 2
    mask = np.zeros((n, n), np.int32)
    if strip is not None:
        mask[strip[0]:strip[1], :] = masks.NO_DATA
        image[strip[0]:strip[1], :] = 0.0
        var[strip[0]:strip[1], :] = 0.0
    meta = {"FILTER": band}
    if fwhm_meta:
        meta["FWHM"] = 0.9 * BAND_SEEING[band]
    return Exposure(image=image, mask=mask, variance=var.astype(np.float32), wcs=make_wcs(n), meta=meta)


def match(x1, y1, x2, y2, radius):
    """Nearest neighbour of each (x1, y1) among (x2, y2) within radius: index or -1."""
    if len(x2) == 0:
        return np.full(len(x1), -1)
    d, idx = cKDTree(np.column_stack([x2, y2])).query(np.column_stack([x1, y1]), distance_upper_bound=radius)
    return np.where(np.isfinite(d), idx, -1)


def true_snr(truth, band, n=600):
    """Optimal S/N of each truth object as a point source at its position (local noise)."""
    fwhm = psf_fwhm(truth["x"].to_numpy(), band, n)
    sig = sigma_map(n)[truth["y"].round().astype(int).clip(0, n - 1), truth["x"].round().astype(int).clip(0, n - 1)]
    unit = {f: point_snr(1.0, f, 1.0) for f in np.unique(fwhm)}
    return truth[f"flux_{band}"].to_numpy() * np.array([unit[f] for f in fwhm]) / sig


def isolation(truth, radius_px):
    """True for truth objects with no other truth object within radius."""
    xy = truth[["x", "y"]].to_numpy()
    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1] > radius_px


def in_strip(y, margin=0.0):
    return (y > STRIP[0] - 0.5 - margin) & (y < STRIP[1] - 0.5 + margin)


# ----------------------------------------------------------------------------------------------------------

BANDS = ("g", "r", "i")


@pytest.fixture(scope="module")
def sim():
    truth = make_truth()
    coadds = {b: make_coadd(truth, b, seed=k + 10) for k, b in enumerate(BANDS)}
    return truth, coadds


@pytest.fixture(scope="module")
def pipeline(sim):
    truth, coadds = sim
    t0 = time.perf_counter()
    dets = {b: detect(c) for b, c in coadds.items()}
    merged = merge_detections(dets, wcs=coadds["r"].wcs)
    meas = {b: measure(coadds[b], merged, filter=b) for b in BANDS}
    ref = select_reference(meas)
    forced = {b: forced_photometry(coadds[b], ref, filter=b) for b in BANDS}
    return {"dets": dets, "merged": merged, "meas": meas, "ref": ref, "forced": forced,
            "seconds": time.perf_counter() - t0}


def bright_isolated_stars(truth, table, *, radius_px=2.0, isolation_px=20.0):
    """Truth stars with no other truth object within ``isolation_px`` matched to ``table`` rows.

    Returns (truth subset, table rows in the same order)."""
    star = (truth["kind"] == "star").to_numpy()
    j = match(truth["x"], truth["y"], table["x"], table["y"], radius_px)
    ok = star & isolation(truth, isolation_px) & (j >= 0)
    return truth[ok].reset_index(drop=True), table.iloc[j[ok]].reset_index(drop=True)


# --- detection ---------------------------------------------------------------------------------------------

def test_detect_noise_only_gives_no_significant_detection():
    n = 1000
    truth = make_truth().iloc[:0]
    for seed in (1, 2):
        coadd = make_coadd(truth, "r", n=n, seed=seed, strip=None)
        det = detect(coadd)
        assert list(det.columns) == DETECT_COLUMNS
        assert (det["snr"] >= 10).sum() == 0
        assert len(det) <= 2  # ~0 expected at 5 sigma over 1e6 pixels
        # the detector does respond to noise at a low threshold: the test above is not vacuous
        assert len(detect(coadd, thresh=3.0)) > 20


def test_detect_completeness_and_purity(sim, pipeline):
    truth, coadds = sim
    star = (truth["kind"] == "star").to_numpy()
    clear = ~in_strip(truth["y"].to_numpy(), margin=5)
    n_true = n_found = n_bright = n_spurious = 0
    for band in BANDS:
        det = pipeline["dets"][band]
        # completeness: point sources with optimal S/N >= 10 outside the NO_DATA strip
        sel = star & clear & (true_snr(truth, band) >= 10)
        found = match(truth["x"], truth["y"], det["x"], det["y"], 3.0) >= 0
        n_true, n_found = n_true + sel.sum(), n_found + (found & sel).sum()
        assert (found & sel).sum() >= 0.9 * sel.sum(), band
        # purity: detections with S/N >= 10 (not cut by the NO_DATA strip) must match a truth object
        good = (det["snr"].to_numpy() >= 10) & ((det["flags"].to_numpy() & FLAG_EDGE) == 0)
        spurious = match(det["x"], det["y"], truth["x"], truth["y"], 3.0) < 0
        n_bright, n_spurious = n_bright + good.sum(), n_spurious + (good & spurious).sum()
    assert n_true > 250 and n_found >= 0.95 * n_true
    assert n_bright > 300 and n_spurious <= 0.01 * n_bright


def test_detect_measures_fwhm_without_meta(sim):
    truth, _ = sim
    coadd = make_coadd(truth, "r", seed=10, fwhm_meta=False)
    det = detect(coadd)
    assert det.attrs["fwhm_source"] == "measured"
    # the PSF is 0.7" on the left and 1.1" on the right: the estimate must fall between
    assert 0.7 < det.attrs["fwhm_arcsec"] < 1.1
    assert len(det) > 100


# --- merging -----------------------------------------------------------------------------------------------

def _det_table(x, y, snr, wcs, fwhm=0.9):
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    df = pd.DataFrame({"x": x, "y": y, "ra": ra, "dec": dec, "snr": snr})
    df.attrs["fwhm_arcsec"] = fwhm
    return df


def test_merge_detections_rules():
    wcs = make_wcs(600)
    # source A in all bands with small offsets (best S/N in g), B only in i, a close pair C1/C2 (1.2" apart)
    # resolved in i and r and blended into one peak in g, D only in g
    i = _det_table([100.0, 300.0, 400.0, 406.0], [100.0, 300.0, 200.0, 200.0], [50, 8, 30, 20], wcs)
    r = _det_table([100.8, 400.3, 405.6], [99.6, 200.2, 199.8], [40, 25, 18], wcs)
    g = _det_table([99.5, 402.5, 50.0], [100.3, 200.0, 500.0], [80, 40, 12], wcs)
    merged = merge_detections({"g": g, "r": r, "i": i}, wcs=wcs)
    assert len(merged) == 5
    assert merged["id"].tolist() == list(range(5))
    assert np.all(np.diff(merged["y"].to_numpy()) >= 0)  # ids follow (y, x)
    a = merged.iloc[np.argmin(np.hypot(merged["x"] - 100, merged["y"] - 100))]
    assert a[["detected_g", "detected_r", "detected_i"]].all() and a["n_detected"] == 3
    assert a["pos_filter"] == "g" and abs(a["x"] - 99.5) < 1e-6 and abs(a["y"] - 100.3) < 1e-6
    pair = merged[(merged["y"] > 150) & (merged["y"] < 250)]
    assert len(pair) == 2  # the two i peaks stay separate; g's blended peak joins one of them
    assert pair["detected_i"].all() and pair["detected_r"].all() and pair["detected_g"].sum() == 1
    d = merged.iloc[np.argmin(np.hypot(merged["x"] - 50, merged["y"] - 500))]
    assert d["detected_g"] and not d["detected_i"] and d["pos_filter"] == "g"
    # an empty band adds a False column; no band at all gives an empty table
    empty = _det_table([], [], [], wcs)
    merged2 = merge_detections({"g": g, "z": empty}, wcs=wcs)
    assert not merged2["detected_z"].any() and len(merged2) == len(g)
    none = merge_detections({}, wcs=wcs)
    assert len(none) == 0 and {"id", "x", "y", "ra", "dec"} <= set(none.columns)


def test_merged_catalog_has_each_source_once(sim, pipeline):
    truth, coadds = sim
    merged = pipeline["merged"]
    assert merged["id"].tolist() == list(range(len(merged)))
    # no truth object is claimed by two merged entries
    owner = match(merged["x"], merged["y"], truth["x"], truth["y"], 3.0)
    # a source without a truth neighbour within 2" appears once: no merged entry within 1" of another one
    lone = isolation(truth, 10.0) & ~in_strip(truth["y"].to_numpy(), 10)
    tree = cKDTree(merged[["x", "y"]].to_numpy())
    n_near = np.array([len(v) for v in tree.query_ball_point(truth[["x", "y"]].to_numpy(), 5.0)])
    assert lone.sum() > 100 and n_near[lone].max() == 1
    # every merged source is a real one (away from the NO_DATA strip, which cuts sources in pieces)
    assert ((owner < 0) & ~in_strip(merged["y"].to_numpy(), margin=8)).sum() <= 0.02 * len(merged)
    # bright isolated stars: detected in all three bands, merged position within 0.03" of the truth
    tr, mm = bright_isolated_stars(truth, merged)
    bright = (true_snr(tr, "r") > 50) & ~in_strip(tr["y"].to_numpy(), 10)
    assert bright.sum() > 30
    assert mm.loc[bright, ["detected_g", "detected_r", "detected_i"]].all(axis=None)
    offset = np.hypot(mm["x"] - tr["x"], mm["y"] - tr["y"])[bright] * PIXSCALE
    assert np.sqrt(np.mean(offset ** 2)) < 0.03


# --- measurement -------------------------------------------------------------------------------------------

def test_psf_flux_of_bright_stars_in_both_psf_halves(sim, pipeline):
    truth, _ = sim
    for band in BANDS:
        for table in (pipeline["meas"][band], pipeline["forced"][band].assign(
                x=pipeline["ref"]["x"].to_numpy(), y=pipeline["ref"]["y"].to_numpy())):
            tr, mm = bright_isolated_stars(truth, table)
            ok = (mm["snr"].to_numpy() > 200) & (mm["flags"].to_numpy() == 0)
            ratio = mm["psf_flux"].to_numpy() / tr[f"flux_{band}"].to_numpy()
            left = tr["x"].to_numpy() < 300
            for half in (left, ~left):
                assert (ok & half).sum() >= 4
                assert abs(np.median(ratio[ok & half]) - 1.0) < 0.005, (band, np.median(ratio[ok & half]))
            # and without the aperture correction the 1.1" half would be ~2% low: the correction matters
            raw = mm["ap_flux_2p0"].to_numpy() / tr[f"flux_{band}"].to_numpy()
            assert np.median(raw[ok & ~left]) < 0.995


def with_sky_pedestal(coadd, seed, *, skew=0.2, faint_per_px=0.004):
    """``coadd`` (made by :func:`make_coadd` with ``seed``) with the positive sky pedestal of real coadds.

    Real sky noise is Poisson, hence skewed: its mean lies above the median that background estimators
    find, by ``skew * sigma / 6`` (a Cornish-Fisher transform of make_coadd's own Gaussian noise gives
    that skewness). Undetected faint stars (S/N 0.5-3) add more light. Together ~0.035 sigma/px, which
    adds ~1.4% to the 5" flux of a star with S/N 300 in the 2" aperture (in the simulated survey's
    coadds, 0.3-1.2 nJy/px or ~0.01 sigma, ~1% for its S/N 100-200 calibration stars).
    """
    n = coadd.image.shape[0]
    sig = sigma_map(n)
    noise = np.random.default_rng(seed).normal(0.0, 1.0, (n, n))  # the noise make_coadd drew
    extra = skew / 6.0 * (noise ** 2 - 1.0) * sig
    rng = np.random.default_rng(seed + 1000)
    nfaint = int(faint_per_px * n * n)
    delta = np.zeros((n, n))
    flux = 10 ** rng.uniform(np.log10(0.5), np.log10(3.0), nfaint) / point_snr(1.0, 0.9, SIGMA0)
    np.add.at(delta, (rng.integers(0, n, nfaint), rng.integers(0, n, nfaint)), flux)
    psf = galsim.Moffat(beta=BETA, fwhm=0.9).drawImage(nx=41, ny=41, scale=PIXSCALE, method="no_pixel").array
    extra += fftconvolve(delta, psf, mode="same")
    image = coadd.image + np.where(coadd.variance > 0, extra, 0.0).astype(np.float32)
    return Exposure(image=image, mask=coadd.mask, variance=coadd.variance, wcs=coadd.wcs, meta=coadd.meta)


def test_aperture_correction_unbiased_by_sky_pedestal(sim, pipeline):
    truth, coadds = sim
    clean = coadds["r"]
    ped = with_sky_pedestal(clean, 11)  # coadds["r"] was made with seed 11
    merged, ref = pipeline["merged"], pipeline["ref"]
    # the pedestal left after the residual-background subtraction, measured far from every catalogued source
    yy, xx = np.mgrid[0:600, 0:600]
    d, _ = cKDTree(truth[["x", "y"]].to_numpy()).query(np.column_stack([xx.ravel(), yy.ravel()]))
    far = (d.reshape(xx.shape) > 30) & (clean.variance > 0)
    true_pedestal = float(np.mean(prepare(ped).data[far]) - np.mean(prepare(clean).data[far]))
    assert 0.02 * SIGMA0 < true_pedestal < 0.06 * SIGMA0
    results = {"measure": (pipeline["meas"]["r"], measure(ped, merged, filter="r"),
                           measure(ped, merged, filter="r", pedestal=False))}
    forced = [forced_photometry(c, ref, filter="r", pedestal=p) for c, p in ((clean, True), (ped, True), (ped, False))]
    results["forced"] = tuple(f.assign(x=ref["x"].to_numpy(), y=ref["y"].to_numpy()) for f in forced)
    for what, (m0, m1, m_old) in results.items():
        assert abs(m1.attrs["sky_pedestal"] - true_pedestal) < 0.25 * true_pedestal, (what, m1.attrs)
        assert abs(m0.attrs["sky_pedestal"]) < 0.005 * SIGMA0  # Gaussian noise: no pedestal
        tr, r0 = bright_isolated_stars(truth, m0)
        r1, r_old = (t.set_index("id").loc[r0["id"]] for t in (m1, m_old))
        ok = (r0["snr"].to_numpy() > 200) & (r0["flags"].to_numpy() == 0)
        left = tr["x"].to_numpy() < 300
        for half in (left, ~left):
            s = ok & half
            assert s.sum() >= 8
            # the aperture correction of the coadd with the pedestal is that of the clean coadd to 0.2%
            change = np.median(r1["apcorr"].to_numpy()[s] / r0["apcorr"].to_numpy()[s]) - 1.0
            assert abs(change) < 0.002, (what, change)
            flux_change = np.median(r1["psf_flux"].to_numpy()[s] / r0["psf_flux"].to_numpy()[s]) - 1.0
            assert abs(flux_change) < 0.002, (what, flux_change)
            ratio = r1["psf_flux"].to_numpy()[s] / tr["flux_r"].to_numpy()[s]
            assert abs(np.median(ratio) - 1.0) < 0.005, (what, np.median(ratio))
            # without the pedestal correction, the 5" apertures of the calibration stars inflate it
            old = np.median(r_old["apcorr"].to_numpy()[s] / r0["apcorr"].to_numpy()[s]) - 1.0
            assert old > 0.0025, (what, old)


def test_measure_attrs_and_errors(sim, pipeline):
    truth, _ = sim
    m = pipeline["meas"]["r"]
    assert list(m.columns) == measure_columns((1.0, 1.5, 2.0, 3.0, 5.0))
    assert m.attrs["apcorr_method"] == "concentration_fit" and m.attrs["apcorr_nstars"] >= 20
    assert 0.995 < m.attrs["apcorr"] < 1.03 and m.attrs["apcorr_scatter"] < 0.03
    # flux errors follow the variance plane: the scatter of bright stars' psf fluxes about the truth,
    # in units of their errors, is ~1
    tr, mm = bright_isolated_stars(truth, m)
    ok = (mm["snr"] > 20).to_numpy() & (mm["flags"] == 0).to_numpy() & (mm["snr"] < 300).to_numpy()
    pull = (mm["psf_flux"] - tr["flux_r"]).to_numpy()[ok] / mm["psf_fluxerr"].to_numpy()[ok]
    assert ok.sum() >= 15
    assert 0.7 < np.std(pull) < 1.5
    # sources on or next to the NO_DATA strip are flagged
    on_strip = in_strip(m["y"].to_numpy(), margin=10)
    assert on_strip.any() and np.all((m["flags"].to_numpy()[on_strip] & FLAG_EDGE) != 0)


def test_centroids_of_bright_point_sources(sim, pipeline):
    truth, _ = sim
    for band in BANDS:
        tr, mm = bright_isolated_stars(truth, pipeline["meas"][band])
        ok = (mm["snr"].to_numpy() > 100) & (mm["flags"].to_numpy() == 0)
        dx, dy = (mm["x"] - tr["x"]).to_numpy()[ok], (mm["y"] - tr["y"]).to_numpy()[ok]
        assert ok.sum() >= 15
        assert np.sqrt(np.mean(dx ** 2 + dy ** 2)) * PIXSCALE < 0.01  # arcsec (target 0.02")
        assert abs(dx.mean()) < 0.01 and abs(dy.mean()) < 0.01  # pixels: no convention offset
        # ra/dec agree with x/y through the WCS
        ra, dec = make_wcs(600).all_pix2world(tr["x"].to_numpy()[ok], tr["y"].to_numpy()[ok], 0)
        dra = (mm["ra"].to_numpy()[ok] - ra) * np.cos(np.radians(dec)) * 3600
        assert np.sqrt(np.mean(dra ** 2 + ((mm["dec"].to_numpy()[ok] - dec) * 3600) ** 2)) < 0.01


def test_star_galaxy_separation(sim, pipeline):
    truth, _ = sim
    star = (truth["kind"] == "star").to_numpy()
    clean = isolation(truth, 15.0)
    right, galaxies_right, n_sel, n_gal = 0, 0, 0, 0
    for band in BANDS:
        m = pipeline["meas"][band]
        j = match(truth["x"], truth["y"], m["x"], m["y"], 2.0)
        ok = (j >= 0) & clean
        mm = m.iloc[j[ok]]
        sel = (mm["snr"].to_numpy() > 50) & ((mm["flags"].to_numpy() & (FLAG_EDGE | FLAG_NO_DATA)) == 0)
        correct = mm["is_extended"].to_numpy() == ~star[ok]
        right, n_sel = right + (correct & sel).sum(), n_sel + sel.sum()
        galaxies_right, n_gal = galaxies_right + (correct & sel & ~star[ok]).sum(), n_gal + (sel & ~star[ok]).sum()
        assert correct[sel].mean() >= 0.9, band
    assert n_sel > 120 and right >= 0.95 * n_sel
    assert n_gal >= 12 and galaxies_right >= 0.8 * n_gal  # galaxies are a minority: check them separately
    # the reference catalog carries the decision of the reference band
    ref = pipeline["ref"]
    j = match(truth["x"], truth["y"], ref["x"], ref["y"], 2.0)
    ok = (j >= 0) & clean & (true_snr(truth, "i") > 100) & ~in_strip(truth["y"].to_numpy(), 10)
    assert ok.sum() > 30 and (ref["is_extended"].to_numpy()[j[ok]] == ~star[ok]).mean() >= 0.9


def test_forced_colours_unbiased(sim, pipeline):
    truth, _ = sim
    ref, forced = pipeline["ref"], pipeline["forced"]
    tr, rr = bright_isolated_stars(truth, ref)
    for b1, b2 in (("g", "r"), ("r", "i")):
        f1 = forced[b1].set_index("id").loc[rr["id"]]
        f2 = forced[b2].set_index("id").loc[rr["id"]]
        ok = ((f1["snr"] > 100) & (f2["snr"] > 100) & (f1["flags"] == 0) & (f2["flags"] == 0)).to_numpy()
        colour = -2.5 * np.log10(f1["psf_flux"].to_numpy()[ok] / f2["psf_flux"].to_numpy()[ok])
        true = -2.5 * np.log10(tr[f"flux_{b1}"].to_numpy()[ok] / tr[f"flux_{b2}"].to_numpy()[ok])
        assert ok.sum() >= 15
        assert abs(np.median(colour - true)) < 0.01, (b1, b2, np.median(colour - true))
        # the same apertures in every band: identical positions
        assert np.allclose(f1["x"], f2["x"], atol=1e-6) and np.allclose(f1["y"], rr["y"], atol=1e-6)


def test_select_reference_rules():
    def table(snr, ext):
        n = len(snr)
        return pd.DataFrame({"id": np.arange(n), "snr": snr, "x": np.arange(n, dtype=float),
                             "y": np.zeros(n), "ra": np.zeros(n), "dec": np.zeros(n), "a": np.ones(n),
                             "b": np.ones(n), "theta": np.zeros(n), "kron_radius": np.full(n, 3.5),
                             "is_extended": ext})
    meas = {"g": table([50.0, 5.0, 3.0, np.nan], [True, True, False, False]),
            "r": table([20.0, 8.0, 9.0, np.nan], [False, False, True, False]),
            "i": table([12.0, 11.0, 2.0, np.nan], [False, True, False, True])}
    ref = select_reference(meas)
    assert list(ref.columns) == REFERENCE_COLUMNS
    # 0: i passes min_snr first; 1: i passes; 2: none passes -> highest snr (r); 3: all NaN -> first band
    assert ref["ref_filter"].tolist() == ["i", "i", "r", "i"]
    assert ref["is_extended"].tolist() == [False, True, True, True]
    assert ref["is_extended"].dtype == bool


# --- empty and bad inputs ----------------------------------------------------------------------------------

def test_empty_inputs_give_empty_tables_with_columns():
    wcs = make_wcs(100)
    empty = Exposure(image=None, mask=None, variance=None, wcs=wcs, meta={"FILTER": "r"})
    det = detect(empty)
    assert len(det) == 0 and list(det.columns) == DETECT_COLUMNS
    merged = merge_detections({"r": det}, wcs=wcs)
    assert len(merged) == 0 and "detected_r" in merged.columns
    meas = measure(empty, merged, filter="r")
    assert len(meas) == 0 and list(meas.columns) == measure_columns((1.0, 1.5, 2.0, 3.0, 5.0))
    ref = select_reference({"r": meas})
    assert len(ref) == 0 and list(ref.columns) == REFERENCE_COLUMNS
    forced = forced_photometry(empty, ref, filter="r")
    assert len(forced) == 0 and list(forced.columns) == forced_columns((1.0, 1.5, 2.0, 3.0, 5.0))


def test_band_without_data(sim, pipeline):
    truth, coadds = sim
    n = 600
    blank = Exposure(image=np.zeros((n, n), np.float32), mask=np.full((n, n), masks.NO_DATA, np.int32),
                     variance=np.zeros((n, n), np.float32), wcs=make_wcs(n), meta={"FILTER": "z"})
    assert len(detect(blank)) == 0
    m = measure(blank, pipeline["merged"], filter="z")
    assert len(m) == len(pipeline["merged"]) and m["psf_flux"].isna().all()
    assert np.all(m["flags"] & FLAG_NO_DATA)
    f = forced_photometry(blank, pipeline["ref"], filter="z")
    assert len(f) == len(pipeline["ref"]) and f["psf_flux"].isna().all() and np.all(f["flags"] & FLAG_NO_DATA)


def test_missing_wcs_is_a_data_error(sim):
    _, coadds = sim
    c = coadds["r"]
    bad = Exposure(image=c.image, mask=c.mask, variance=c.variance, wcs=None, meta=c.meta)
    with pytest.raises(DataError) as err:
        detect(bad)
    assert err.value.code == "no_wcs" and "WCS" in str(err.value)


def test_pipeline_runtime(pipeline):
    assert pipeline["seconds"] < 15  # three 600x600 bands, all steps (typically ~2 s)


def test_saturated_star_is_flagged_and_not_a_calibrator(sim, pipeline):
    truth, coadds = sim
    c = coadds["r"]
    merged = pipeline["merged"]
    tr, mm = bright_isolated_stars(truth, merged)
    k = int(np.argmax(tr["flux_r"].to_numpy() * ~in_strip(tr["y"].to_numpy(), 30)))
    ix, iy = int(round(tr["x"][k])), int(round(tr["y"][k]))
    mask = c.mask.copy()
    mask[iy - 2:iy + 3, ix - 2:ix + 3] |= masks.SAT
    sat = Exposure(image=c.image, mask=mask, variance=c.variance, wcs=c.wcs, meta=c.meta)
    m = measure(sat, merged, filter="r")
    row = m.set_index("id").loc[mm["id"][k]]
    assert row["flags"] & FLAG_SATURATED and row["flags"] & FLAG_MASKED
    others = m["id"].to_numpy() != mm["id"][k]
    assert np.all((m["flags"].to_numpy()[others] & FLAG_SATURATED) == 0)
    # the other bright sources' PSF fluxes hardly change (the saturated star is not used as a calibrator)
    ref = pipeline["meas"]["r"]
    ok = others & (ref["snr"].to_numpy() > 100)
    change = np.abs(m["psf_flux"].to_numpy()[ok] / ref["psf_flux"].to_numpy()[ok] - 1.0)
    assert ok.sum() > 20 and np.median(change) < 1e-3 and change.max() < 0.01
