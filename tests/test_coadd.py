"""Tests of skysnake.coadd against simulated truth."""

import json
import tracemalloc

import numpy as np
import pytest
from astropy.wcs import WCS

from skysnake import masks
from skysnake.coadd import coadd_warps, warp_weights
from skysnake.errors import DataError
from skysnake.io import Exposure, FitsPlane, read_exposure, write_exposure

SHAPE = (240, 260)


def make_wcs(shape, *, crval=(150.0, 2.0), scale=0.2):
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.cd = scale / 3600.0 * np.array([[-1.0, 0.0], [0.0, 1.0]])
    w.array_shape = shape
    return w


PATCH_WCS = make_wcs(SHAPE)


def warp(image, *, sigma=1.0, mask=None, x0=0, y0=0, meta=None, variance=None):
    """A warp on a sub-box of the patch grid (WCS shifted accordingly)."""
    image = np.asarray(image, dtype=np.float32)
    wcs = PATCH_WCS.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix - [x0, y0]
    return Exposure(image=image, wcs=wcs, x0=x0, y0=y0, meta=meta or {},
                    mask=np.zeros(image.shape, np.int32) if mask is None else mask,
                    variance=np.full(image.shape, sigma**2, np.float32) if variance is None else variance)


def gaussian(shape, x0, y0, fwhm, flux):
    s = fwhm / 2.3548
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux / (2 * np.pi * s**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s**2))


def trail(shape, *, amp, width=1.5, slope=0.5, icpt=20.0):
    """A satellite trail along y = slope * x + icpt with a Gaussian cross-profile; also returns the distance."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = (yy - slope * xx - icpt) / np.hypot(1, slope)
    return amp * np.exp(-(d**2) / (2 * width**2)), d


def coadd(warps, **kw):
    return coadd_warps(warps, shape=SHAPE, wcs=PATCH_WCS, **kw)


def test_identical_warps_return_the_input():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 2.0, SHAPE) + gaussian(SHAPE, 120.3, 100.6, 4.0, 5e4)
    var = rng.uniform(3.5, 4.5, SHAPE).astype(np.float32)
    ws = [warp(img, variance=var, meta={"VISIT": v, "FWHM": 0.8}) for v in (10, 11, 12)]
    out = coadd(ws)
    np.testing.assert_allclose(out.image, img.astype(np.float32), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out.variance, var / 3, rtol=1e-6)
    assert np.all(out.mask == 0)
    assert out.extra["NIMAGE"].dtype == np.int16 and np.all(out.extra["NIMAGE"] == 3)
    assert out.image.dtype == np.float32 and out.variance.dtype == np.float32 and out.mask.dtype == np.int32
    assert (out.x0, out.y0) == (0, 0) and out.wcs is PATCH_WCS
    assert out.meta["NINPUT"] == 3
    assert json.loads(out.meta["VISITS"]) == [10, 11, 12]
    np.testing.assert_allclose(json.loads(out.meta["WEIGHTS"]), [1 / 3] * 3, atol=1e-6)
    assert out.meta["FWHM"] == pytest.approx(0.8)


def test_scalar_weights_from_median_variance():
    rng = np.random.default_rng(1)
    star = gaussian(SHAPE, 130, 120, 4.0, 1e6)
    s1, s2 = 1.0, 2.0
    # the variance planes include the star's Poisson noise: a per-warp median ignores it
    v1 = (s1**2 + star / 100).astype(np.float32)
    v2 = (s2**2 + star / 100).astype(np.float32)
    w1 = warp(star + rng.normal(0, s1, SHAPE), variance=v1, meta={"FWHM": 0.6})
    w2 = warp(star + rng.normal(0, s2, SHAPE), variance=v2, meta={"FWHM": 1.1})
    wts = warp_weights([w1, w2])
    np.testing.assert_allclose(wts, [1 / s1**2, 1 / s2**2], rtol=1e-3)
    out = coadd([w1, w2])
    a, b = 0.8, 0.2  # normalised weights
    np.testing.assert_allclose(out.image, a * w1.image + b * w2.image, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.variance, a**2 * v1 + b**2 * v2, rtol=1e-5)
    np.testing.assert_allclose(json.loads(out.meta["WEIGHTS"]), [a, b], atol=1e-3)
    assert out.meta["FWHM"] == pytest.approx(a * 0.6 + b * 1.1, rel=1e-3)
    # one weight per warp keeps the star's flux a fixed combination (no per-pixel reweighting)
    ap = np.hypot(*np.mgrid[: SHAPE[0], : SHAPE[1]] - np.array([120, 130])[:, None, None]) < 15
    assert out.image[ap].sum() == pytest.approx(a * w1.image[ap].sum() + b * w2.image[ap].sum(), rel=1e-5)
    # other weighting options
    np.testing.assert_allclose(coadd([w1, w2], weights="equal").image, 0.5 * (w1.image + w2.image), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(coadd([w1, w2], weights=[1.0, 3.0]).image, 0.25 * w1.image + 0.75 * w2.image,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        coadd([w1, w2], weights="ivar")


def test_satellite_trail_in_one_of_three_warps_is_removed():
    rng = np.random.default_rng(2)
    sigma = 10.0
    tr, d = trail(SHAPE, amp=30 * sigma)
    ws = [warp(rng.normal(0, sigma, SHAPE) + (tr if i == 1 else 0), sigma=sigma) for i in range(3)]
    out = coadd(ws)
    core = np.abs(d) < 2.5  # where the trail is > 7 sigma
    rejected = (out.mask & masks.REJECTED) != 0
    assert rejected[core].mean() > 0.995
    # the coadd along the trail is consistent with noise: its mean and its worst pixel
    sig_coadd = sigma / np.sqrt(2)  # 2 inputs remain where the trail was rejected
    band = np.abs(d) < 4
    assert abs(out.image[band].mean()) < 5 * sig_coadd / np.sqrt(band.sum()) + 0.1 * sigma
    assert np.abs(out.image[core]).max() < 5 * sig_coadd
    assert np.all(out.extra["NIMAGE"][rejected] == 2)
    # without rejection the trail would be there at a third of its amplitude
    plain = coadd(ws, reject_sigma=None)
    assert plain.image[np.abs(d) < 0.5].mean() > 8 * sigma
    # nothing is rejected away from the trail (pure noise)
    assert rejected[np.abs(d) > 8].mean() < 1e-4


def test_star_in_different_seeing_keeps_its_flux():
    rng = np.random.default_rng(3)
    sigma = 10.0
    # 0.6", 0.9", 1.2" seeing at 0.2"/px: the cores differ by x4; peak S/N 5000 in the best seeing
    flux = 5000 * sigma * 2 * np.pi * (3.0 / 2.3548) ** 2
    truth = [gaussian(SHAPE, 130.4, 110.7, fwhm, flux) for fwhm in (3.0, 4.5, 6.0)]
    ws = [warp(t + rng.normal(0, sigma, SHAPE), sigma=sigma, meta={"FILTER": "i"}) for t in truth]
    out = coadd(ws)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    ap = np.hypot(xx - 130.4, yy - 110.7) < 35
    assert not np.any(out.mask[ap] & masks.REJECTED)
    measured = out.image[ap].astype(float).sum()
    assert abs(measured / flux - 1) < 2e-3
    assert out.meta["FILTER"] == "i"
    # and a star that is fainter than the rejection threshold in one warp is untouched too
    # (its median is not sky, whatever the seeing): plain mean == rejected mean
    np.testing.assert_array_equal(out.image[ap], coadd(ws, reject_sigma=None).image[ap])


def test_no_data_clipped_and_masks():
    rng = np.random.default_rng(4)
    base = rng.normal(0, 1, SHAPE)
    # warp A covers the left 150 columns, B the right 150 (overlap 40), C the top half
    a = warp(base[:, :150] + 1, x0=0)
    b = warp(base[:, 110:] + 2, x0=110)
    c = warp(base[120:, :] + 3, y0=120)
    c.mask[50, 60] = masks.CR  # patch pixel (170, 60): C dropped there
    a.mask[10, 20] = masks.EDGE  # patch pixel (10, 20): usable bit, propagates
    a.mask[5, 5] = masks.SAT  # patch pixel (5, 5): only A covers it -> nothing left
    a.image[7, 7] = np.nan  # non-finite value: zero weight
    b.variance[30, 30] = 0.0  # patch pixel (30, 140): zero variance -> zero weight
    empty = Exposure(image=None, mask=None, variance=None, wcs=None, meta={"NCCD": 0})
    out = coadd([a, empty, b, c], weights="equal")
    n = out.extra["NIMAGE"]
    assert out.meta["NINPUT"] == 3
    # coverage counts
    assert n[0, 0] == 1 and n[0, 120] == 2 and n[0, 200] == 1 and n[200, 0] == 2 and n[200, 130] == 3
    np.testing.assert_allclose(out.image[200, 130], base[200, 130] + 2, rtol=1e-5)  # (1 + 2 + 3) / 3 = 2
    np.testing.assert_allclose(out.variance[200, 130], 1 / 3, rtol=1e-5)
    # C dropped for a CR at (170, 60): the others remain, CLIPPED is set, CR is not propagated
    assert n[170, 60] == 1 and out.mask[170, 60] == masks.CLIPPED
    np.testing.assert_allclose(out.image[170, 60], base[170, 60] + 1, rtol=1e-5)
    assert out.mask[10, 20] == masks.EDGE and n[10, 20] == 1
    # nothing usable at (5, 5): NO_DATA, with the reason, image and variance 0
    assert out.mask[5, 5] == masks.NO_DATA | masks.SAT | masks.CLIPPED
    assert out.image[5, 5] == 0 and out.variance[5, 5] == 0 and n[5, 5] == 0
    assert out.mask[7, 7] & masks.NO_DATA and n[7, 7] == 0
    assert n[30, 140] == 1 and out.mask[30, 140] == masks.CLIPPED
    np.testing.assert_allclose(out.image[30, 140], base[30, 140] + 1, rtol=1e-5)
    # a pixel no warp covers, and a warp hanging over the patch edge
    d = warp(np.ones((50, 50)), x0=230, y0=-20)
    out = coadd([warp(np.ones((100, 100)), x0=10, y0=10), d], weights="equal")
    assert out.mask[150, 150] == masks.NO_DATA and out.image[150, 150] == 0 and out.extra["NIMAGE"][150, 150] == 0
    assert out.extra["NIMAGE"][0:30, 230:260].min() == 1 and out.extra["NIMAGE"][30:, 240:].max() == 0


def test_empty_inputs_and_errors():
    out = coadd([Exposure(image=None, mask=None, variance=None, wcs=None)])
    assert out.image.shape == SHAPE and np.all(out.mask == masks.NO_DATA) and np.all(out.image == 0)
    assert out.meta["NINPUT"] == 0 and np.all(out.extra["NIMAGE"] == 0)
    with pytest.raises(DataError):
        coadd([warp(np.zeros(SHAPE), meta={"FILTER": "g"}), warp(np.zeros(SHAPE), meta={"FILTER": "r"})])
    bad = warp(np.zeros((10, 10)), x0=5)
    bad.x0 = 6  # WCS no longer matches its placement
    with pytest.raises(DataError):
        coadd([bad])


def test_row_blocks_do_not_change_the_result(tmp_path):
    rng = np.random.default_rng(5)
    sigma = 5.0
    tr, _ = trail(SHAPE, amp=20 * sigma, slope=3.0, icpt=-150)  # steep: crosses many row blocks
    star = [gaussian(SHAPE, 60, 200, f, 3e5) for f in (3.0, 4.0, 5.0, 6.0)]
    ws = [warp(star[i] + rng.normal(0, sigma, SHAPE) + (tr if i == 2 else 0), sigma=sigma) for i in range(4)]
    ref = coadd(ws)
    small = coadd(ws, block_bytes=1)  # 8-row blocks (the fewest)
    assert (ref.mask & masks.REJECTED).any()
    np.testing.assert_array_equal(small.image, ref.image)
    np.testing.assert_array_equal(small.mask, ref.mask)
    np.testing.assert_array_equal(small.extra["NIMAGE"], ref.extra["NIMAGE"])
    # planes as read from FITS memory maps (big-endian) are streamed block by block, same result
    big = [Exposure(image=w.image.astype(">f4"), mask=w.mask.astype(">i4"), variance=w.variance.astype(">f4"),
                    wcs=w.wcs, meta=w.meta) for w in ws]
    np.testing.assert_array_equal(coadd(big, block_bytes=1).image, ref.image)
    # warps read lazily from their files (io.FitsPlane: rows read per block, nothing left mapped), on sub-boxes
    boxes = [(0, 0, 260, 200), (7, 11, 237, 211), (30, 20, 230, 240), (0, 25, 180, 240)]  # x0, y0, x1, y1
    sub = []
    for i, (w, (x0, y0, x1, y1)) in enumerate(zip(ws, boxes)):
        s = np.s_[y0:y1, x0:x1]
        sub.append(warp(w.image[s], sigma=sigma, x0=x0, y0=y0, mask=w.mask[s].copy(), meta={"VISIT": i}))
        write_exposure(tmp_path / f"w{i}.fits", sub[-1])
    lazy = [read_exposure(tmp_path / f"w{i}.fits", lazy=True) for i in range(4)]
    assert isinstance(lazy[1].image, FitsPlane)
    want, got = coadd(sub), coadd(lazy, block_bytes=1)
    assert (want.mask & masks.REJECTED).any() and (want.mask & masks.NO_DATA).any()
    for a, b in ((got.image, want.image), (got.variance, want.variance), (got.mask, want.mask),
                 (got.extra["NIMAGE"], want.extra["NIMAGE"])):
        np.testing.assert_array_equal(a, b)
    assert got.meta == want.meta


def test_any_row_blocks_give_the_one_block_result_in_a_crowded_field():
    # block edges must not change which inputs are rejected: the grow step reads the rejectable map one
    # row beyond a block, which needs protect_radius + 2 rows of context (one row less missed 1-3
    # pixels here, and 15 of 17.6 million in the 20-visit benchmark coadd)
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        stars = [(rng.uniform(0, SHAPE[1]), rng.uniform(0, SHAPE[0]), rng.uniform(300, 3e4)) for _ in range(60)]
        ws = []
        for i in range(5):
            img = rng.normal(0, 5.0, SHAPE) + sum(gaussian(SHAPE, x, y, 3.0 + 0.7 * i, f) for x, y, f in stars)
            for _ in range(40):  # sharp transients
                img += gaussian(SHAPE, rng.uniform(0, SHAPE[1]), rng.uniform(0, SHAPE[0]), 1.5, rng.uniform(100, 2000))
            ws.append(warp(img, sigma=5.0))
        ref = coadd(ws)  # one block
        assert (ref.mask & masks.REJECTED).any()
        for rows in range(8, 13):
            got = coadd(ws, block_bytes=rows * SHAPE[1] * (5 * 12 + 50))
            np.testing.assert_array_equal(got.image, ref.image)
            np.testing.assert_array_equal(got.mask, ref.mask)


def test_a_block_with_its_maps_stays_within_block_bytes():
    # few inputs make tall blocks, whose statistics and rejection maps (~50 bytes a pixel) outweigh the
    # stack of input values (12 bytes a pixel per input): block_bytes bounds both
    shape = (600, 500)
    wcs = make_wcs(shape)
    rng = np.random.default_rng(0)
    ws = [Exposure(image=rng.normal(0, 1, shape).astype(np.float32), mask=np.zeros(shape, np.int32),
                   variance=np.ones(shape, np.float32), wcs=wcs) for _ in range(3)]
    block = 2 * 2**20
    coadd_warps(ws, shape=shape, wcs=wcs, block_bytes=block)  # warm-up (numba cache load)
    tracemalloc.start()
    try:
        out = coadd_warps(ws, shape=shape, wcs=wcs, block_bytes=block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = out.image.nbytes + out.variance.nbytes + out.mask.nbytes + out.extra["NIMAGE"].nbytes
    assert (out.mask & masks.NO_DATA).sum() == 0
    assert peak - outputs < 1.3 * block, (peak - outputs) / block
