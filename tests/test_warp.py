"""Tests of skysnake.warp against analytic and simulated truth."""

import numpy as np
import pytest
from astropy.wcs import WCS, Sip

from skysnake import masks
from skysnake.io import Exposure
from skysnake.warp import kernel_weights, map_pixels, warp_exposures


def make_wcs(shape, *, crval=(150.0, 2.0), crpix=None, scale=0.2, rot=0.0, sip=0.0):
    """TAN (or TAN-SIP with ~``sip`` px of distortion at the corners) WCS for a ``shape`` grid."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = crpix if crpix is not None else [(nx + 1) / 2, (ny + 1) / 2]
    t = np.deg2rad(rot)
    w.wcs.cd = scale / 3600.0 * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    if sip:
        n = max(nx, ny) / 2
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[1, 1], a[0, 2], a[3, 0] = sip / n**2, 0.5 * sip / n**2, 0.3 * sip / n**2, 0.5 * sip / n**3
        b[0, 2], b[1, 1], b[0, 3], b[2, 1] = sip / n**2, -0.4 * sip / n**2, 0.4 * sip / n**3, 0.3 * sip / n**3
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.array_shape = shape
    return w


def shifted_wcs(wcs, dx, dy):
    """The same WCS for a grid whose pixel (x, y) is the input's pixel (x + dx, y + dy)."""
    out = wcs.deepcopy()
    out.wcs.crpix = out.wcs.crpix - [dx, dy]
    return out


def exposure(image, wcs, *, variance=None, mask=None, meta=None):
    image = np.asarray(image, dtype=np.float32)
    return Exposure(image=image, wcs=wcs, meta=meta or {},
                    mask=np.zeros(image.shape, np.int32) if mask is None else mask,
                    variance=np.ones(image.shape, np.float32) if variance is None else variance)


def gaussian(shape, x0, y0, fwhm, flux):
    s = fwhm / 2.3548
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux / (2 * np.pi * s**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s**2))


def lanczos3(frac):
    """Analytic Lanczos3 weights of taps floor(x)-2 .. floor(x)+3, normalised to sum 1."""
    t = np.asarray(frac)[..., None] - np.arange(-2, 4)
    w = np.sinc(t) * np.sinc(t / 3)
    return w / w.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- kernel


def test_lanczos3_partition_of_unity_and_nodes():
    frac = np.linspace(0, 1, 4001)[:-1]
    w = kernel_weights(frac)
    assert w.shape == (frac.size, 6)
    # partition of unity: weights of a sub-pixel offset summed over the integer taps
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    # the lookup table reproduces the analytic (normalised) kernel
    np.testing.assert_allclose(w, lanczos3(frac), atol=2e-6)
    # the raw kernel is only approximately a partition of unity: normalisation matters at 0.1%
    t = frac[:, None] - np.arange(-2, 4)
    raw = (np.sinc(t) * np.sinc(t / 3)).sum(axis=1)
    assert 1e-3 < np.abs(raw - 1).max() < 1e-2
    # exact interpolation at the nodes: a delta at integer offsets
    np.testing.assert_array_equal(kernel_weights([0.0])[0], [0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(kernel_weights([0.3], kernel="bilinear")[0], [0.7, 0.3], atol=1e-12)
    np.testing.assert_array_equal(kernel_weights([0.3, 0.7], kernel="nearest"), [[1, 0], [0, 1]])


def test_smooth_function_interpolated_exactly_at_nodes_and_accurately_between():
    shape = (120, 160)
    wcs = make_wcs(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    f = lambda x, y: 100 + 30 * np.sin(2 * np.pi * x / 23.0) * np.cos(2 * np.pi * y / 31.0)  # noqa: E731
    exp = exposure(f(xx, yy), wcs)
    # integer shift: output pixels fall on input pixels (nodes)
    out = warp_exposures([exp], target_wcs=shifted_wcs(wcs, 7, -5), target_shape=(130, 170))
    ox, oy = np.meshgrid(np.arange(out.image.shape[1]) + out.x0, np.arange(out.image.shape[0]) + out.y0)
    inner = (out.mask & (masks.EDGE | masks.NO_DATA)) == 0
    assert inner.sum() > 0.7 * exp.image.size
    np.testing.assert_allclose(out.image[inner], f(ox + 7, oy - 5)[inner].astype(np.float32), rtol=1e-6)
    # sub-pixel shift: output (u, v) samples input (u + 7.37, v - 4.71) = taps around (u + 7, v - 5)
    out = warp_exposures([exp], target_wcs=shifted_wcs(wcs, 7.37, -4.71), target_shape=(130, 170))
    ox, oy = np.meshgrid(np.arange(out.image.shape[1]) + out.x0, np.arange(out.image.shape[0]) + out.y0)
    inner = (out.mask & (masks.EDGE | masks.NO_DATA)) == 0
    # reference: the analytic Lanczos3 sum written out with numpy
    wx, wy = lanczos3(0.37), lanczos3(0.29)
    ref = np.zeros(out.image.shape)
    for j in range(6):
        for i in range(6):
            yy = np.clip(oy - 5 + j - 2, 0, shape[0] - 1)
            xx = np.clip(ox + 7 + i - 2, 0, shape[1] - 1)
            ref += wy[j] * wx[i] * exp.image[yy, xx]
    np.testing.assert_allclose(out.image[inner], ref[inner], rtol=2e-6)
    # and Lanczos3 is accurate on a well-sampled function: 0.4% of the amplitude (30) here...
    err = out.image[inner] - f(ox + 7.37, oy - 4.71)[inner]
    assert np.abs(err).max() < 0.12
    # ...while bilinear is far worse on the same function
    outb = warp_exposures([exp], target_wcs=shifted_wcs(wcs, 7.37, -4.71), target_shape=(130, 170),
                          kernel="bilinear")
    assert np.abs(outb.image[inner] - f(ox + 7.37, oy - 4.71)[inner]).max() > 0.3


def test_identity_warp_returns_input():
    shape = (150, 200)
    wcs = make_wcs(shape, sip=1.0)
    rng = np.random.default_rng(3)
    img = rng.normal(0, 5, shape) + gaussian(shape, 80.3, 70.6, 3.5, 1e4)
    var = rng.uniform(20, 30, shape).astype(np.float32)
    exp = exposure(img, wcs, variance=var)
    # the patch grid is the CCD grid, SIP distortion and all
    out = warp_exposures([exp], target_wcs=wcs, target_shape=shape)
    assert (out.x0, out.y0) == (0, 0)
    assert out.image.shape == shape
    assert out.image.dtype == np.float32 and out.variance.dtype == np.float32 and out.mask.dtype == np.int32
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(out.image[inner], exp.image[inner], atol=1e-4)
    np.testing.assert_allclose(out.variance[inner], var[inner], rtol=1e-5)
    assert np.all(out.mask[inner] == 0)
    # the kernel footprint (taps -2..+3) leaves the CCD within 2-3 px of its edges (at exactly
    # integer positions, round-off decides whether the footprint starts at x - 2 or x - 3)
    edge = (out.mask & masks.EDGE) != 0
    assert edge[:2].all() and edge[-2:].all() and edge[:, :2].all() and edge[:, -2:].all()


# --------------------------------------------------------------------------- mapping and flux


def test_mapping_interpolation_error_below_a_milli_pixel():
    shape = (400, 600)
    ccd = make_wcs(shape, sip=1.5)
    target = make_wcs((700, 700), scale=0.21, rot=25, crval=(150.001, 2.002))
    x0, y0, box = 40, 30, (600, 620)
    x, y, det = map_pixels(ccd, target, x0=x0, y0=y0, shape=box, grid_step=64)
    vv, uu = np.mgrid[y0 : y0 + box[0], x0 : x0 + box[1]]
    ra, dec = target.all_pix2world(uu, vv, 0)
    xe, ye = ccd.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100)
    inside = (xe > -0.5) & (xe < shape[1] - 0.5) & (ye > -0.5) & (ye < shape[0] - 0.5)
    assert inside.mean() > 0.4
    err = np.hypot(x - xe, y - ye)[inside]
    assert err.max() < 1e-3
    # the distortion is real: the best affine mapping is off by > 0.5 px
    design = np.c_[np.ones(uu.size), uu.ravel(), vv.ravel()]
    resid = xe.ravel() - design @ np.linalg.lstsq(design, xe.ravel(), rcond=None)[0]
    assert np.abs(resid).max() > 0.5
    # |det J| agrees with finite differences of the exact mapping
    dxu, dxv = np.gradient(xe, axis=1), np.gradient(xe, axis=0)
    dyu, dyv = np.gradient(ye, axis=1), np.gradient(ye, axis=0)
    det_fd = np.abs(dxu * dyv - dxv * dyu)
    np.testing.assert_allclose(det[1:-1, 1:-1][inside[1:-1, 1:-1]], det_fd[1:-1, 1:-1][inside[1:-1, 1:-1]],
                               rtol=2e-5)
    # a grid too coarse for this distortion is refined automatically until it is accurate
    xc, yc, _ = map_pixels(ccd, target, x0=x0, y0=y0, shape=box, grid_step=512)
    assert np.hypot(xc - xe, yc - ye)[inside].max() < 1e-3
    # ...and the refinement is needed: a strong distortion on the default grid
    strong = make_wcs(shape, sip=8.0)
    xs, ys, _ = map_pixels(strong, target, x0=x0, y0=y0, shape=box, grid_step=64)
    xe, ye = strong.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100)
    inside = (xe > -0.5) & (xe < shape[1] - 0.5) & (ye > -0.5) & (ye < shape[0] - 0.5)
    assert np.hypot(xs - xe, ys - ye)[inside].max() < 1e-3


def test_flux_conserved_through_distorted_wcs_onto_rotated_grid():
    shape = (300, 400)
    ccd = make_wcs(shape, sip=2.0)
    stars = [(100.3, 80.7, 3.0, 2e5), (250.6, 200.2, 4.0, 1e5), (320.1, 90.5, 3.5, 5e4), (60.8, 230.4, 5.0, 8e4)]
    img = sum(gaussian(shape, x, y, f, fl) for x, y, f, fl in stars)
    exp = exposure(img, ccd)
    target = make_wcs((500, 500), scale=0.21, rot=30)  # rotated, 5% larger pixels
    out = warp_exposures([exp], target_wcs=target, target_shape=(500, 500))
    assert out.meta["NCCD"] == 1
    yy, xx = np.mgrid[: out.image.shape[0], : out.image.shape[1]]
    for x, y, fwhm, flux in stars:
        ra, dec = ccd.all_pix2world(x, y, 0)
        u, v = out.wcs.all_world2pix(ra, dec, 0)
        ap = np.hypot(xx - u, yy - v) < 5 * fwhm
        assert not np.any(out.mask[ap] & masks.NO_DATA)
        measured = out.image[ap].astype(float).sum()
        assert abs(measured / flux - 1) < 1e-3, (x, y, measured / flux)
        # and the star lands where the WCS says
        cu = (out.image[ap] * xx[ap]).sum() / measured
        cv = (out.image[ap] * yy[ap]).sum() / measured
        assert np.hypot(cu - u, cv - v) < 0.01


def test_noise_std_matches_lanczos3_weights():
    shape = (260, 260)
    wcs = make_wcs(shape)
    rng = np.random.default_rng(7)
    sigma = 3.0
    exp = exposure(rng.normal(0, sigma, shape), wcs, variance=np.full(shape, sigma**2, np.float32))
    ratios, predicted = [], []
    grid = (np.arange(4) + 0.5) / 4  # stratified sub-pixel shifts
    for dx, dy in np.array(np.meshgrid(grid, grid)).reshape(2, -1).T + rng.uniform(-0.1, 0.1, (16, 2)):
        out = warp_exposures([exp], target_wcs=shifted_wcs(wcs, dx, dy), target_shape=shape)
        inner = (out.mask & (masks.EDGE | masks.NO_DATA)) == 0
        pred = np.sqrt((lanczos3(dx) ** 2).sum() * (lanczos3(dy) ** 2).sum())
        ratios.append(out.image[inner].std() / sigma)
        predicted.append(pred)
        # the variance plane holds the per-pixel prediction
        np.testing.assert_allclose(out.variance[inner], (pred * sigma) ** 2, rtol=1e-4)
    ratios, predicted = np.array(ratios), np.array(predicted)
    np.testing.assert_allclose(ratios, predicted, rtol=0.02)
    # over uniformly random sub-pixel shifts the expected ratio is ~0.89 (as SWarp's Lanczos3)
    f = np.linspace(0, 1, 2001)[:-1]
    expected = np.mean(np.sqrt((lanczos3(f) ** 2).sum(axis=1))) ** 2
    assert abs(expected - 0.89) < 0.005
    assert abs(ratios.mean() - expected) < 0.01


# --------------------------------------------------------------------------- masks


def test_masks_propagate_and_unusable_pixels_do_not_spread():
    shape = (100, 120)
    wcs = make_wcs(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = 50 + 0.3 * xx + 0.2 * yy
    img = clean.copy()
    msk = np.zeros(shape, np.int32)
    img[40, 50] = 1e7
    msk[40, 50] = masks.CR  # unusable
    msk[60, 70] = masks.SUSPECT  # usable, propagates through the 2x2 footprint only
    img[20, 30] = np.nan  # unflagged NaN: treated as BAD
    var = np.ones(shape, np.float32)
    exp = exposure(img, wcs, variance=var, mask=msk)
    dx, dy = 0.5, 0.25
    out = warp_exposures([exp], target_wcs=shifted_wcs(wcs, dx, dy), target_shape=shape)
    assert (out.x0, out.y0) == (0, 0)
    assert np.all(np.isfinite(out.image)) and np.all(np.isfinite(out.variance))
    # output pixel (u, v) samples input (u + 0.5, v + 0.25)
    wx, wy = lanczos3(dx), lanczos3(dy)  # taps -2..3 around floor
    w2d = np.outer(wy, wx)
    for (r, c), bit in [((40, 50), masks.CR), ((20, 30), masks.BAD)]:
        # output pixels whose kernel footprint gives the bad pixel |w| > 1e-3
        expect = np.zeros(shape, bool)
        for j in range(6):
            for i in range(6):
                if abs(w2d[j, i]) > 1e-3:
                    expect[r - (j - 2), c - (i - 2)] = True
        got = (out.mask & bit) != 0
        np.testing.assert_array_equal(got[r - 8 : r + 8, c - 8 : c + 8], expect[r - 8 : r + 8, c - 8 : c + 8])
    # the unusable pixels were replaced by 0 before interpolation: neither 1e7 nor NaN spread
    zeroed = clean.copy()
    zeroed[40, 50] = zeroed[20, 30] = 0.0
    ref = warp_exposures([exposure(zeroed, wcs, variance=var)], target_wcs=shifted_wcs(wcs, dx, dy),
                         target_shape=shape)
    np.testing.assert_allclose(out.image, ref.image, rtol=1e-6)
    sus = (out.mask & masks.SUSPECT) != 0
    # bilinear footprint of output (u, v) is input [floor(v+0.25), +1] x [floor(u+0.5), +1]
    assert set(zip(*np.nonzero(sus))) == {(59, 69), (59, 70), (60, 69), (60, 70)}
    # far from the bad pixels the image is the interpolated ramp (Lanczos3 is exact for a linear
    # ramp only to ~0.02 px, hence the tolerance)
    far = out.mask == 0
    far[35:46, 45:56] = far[15:26, 25:36] = False  # zeroed pixels still enter with |w| < 1e-3
    ox, oy = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]))
    np.testing.assert_allclose(out.image[far], (50 + 0.3 * (ox + dx) + 0.2 * (oy + dy))[far], atol=0.01)


def test_edges_gaps_and_multiple_ccds():
    # two CCDs side by side with a 10-px gap, on one focal plane (same tangent point as the patch);
    # CCD pixel x maps to patch u = x + 95.3 (left) or x + 255.3 (right), y to v = y + 100.3
    shape = (200, 150)
    left = make_wcs(shape, crpix=[155.2, 100.2])
    right = make_wcs(shape, crpix=[-4.8, 100.2])
    meta = [{"FILTER": "r", "FWHM": 0.7, "VISIT": 12, "CCD": 1}, {"FILTER": "r", "FWHM": 0.9, "VISIT": 12, "CCD": 2}]
    exps = [exposure(np.full(shape, 10.0), left, meta=meta[0]), exposure(np.full(shape, 20.0), right, meta=meta[1])]
    target = make_wcs((400, 500))  # crpix (250.5, 200.5)
    out = warp_exposures(exps, target_wcs=target, target_shape=(400, 500))
    assert out.meta["NCCD"] == 2
    assert out.meta["FILTER"] == "r" and out.meta["VISIT"] == 12 and "CCD" not in out.meta
    assert out.meta["FWHM"] == pytest.approx(0.8)
    # covered: u in [95, 244] and [255, 404], v in [100, 299]
    assert (out.x0, out.y0) == (95, 100)
    assert out.image.shape == (200, 310)
    gap = np.zeros(out.image.shape, bool)
    gap[:, 150:160] = True
    assert np.all(out.mask[gap] == masks.NO_DATA)
    assert np.all(out.image[gap] == 0) and np.all(out.variance[gap] == 0)
    assert not np.any(out.mask[~gap] & masks.NO_DATA)
    # EDGE where the 6x6 footprint leaves the CCD: x = u - 95.3 < 2 or > 146 (3 low, 2 high columns)
    expect = np.zeros(shape, bool)
    expect[:3] = expect[-2:] = expect[:, :3] = expect[:, -2:] = True
    np.testing.assert_array_equal((out.mask[:, :150] & masks.EDGE) != 0, expect)
    np.testing.assert_array_equal((out.mask[:, 160:] & masks.EDGE) != 0, expect)
    # edge pixels keep the right level (kernel truncated to the CCD and renormalised: no ringing)
    np.testing.assert_allclose(out.image[:, :150], 10.0, rtol=1e-6)
    np.testing.assert_allclose(out.image[:, 160:], 20.0, rtol=1e-6)


def test_no_overlap_returns_empty_exposure():
    shape = (100, 100)
    exp = exposure(np.ones(shape), make_wcs(shape, crval=(151.0, 2.0)))
    target = make_wcs((200, 200), crval=(150.0, 2.0))
    for exps in ([exp], [], [exposure(np.ones(shape), make_wcs(shape, crval=(330.0, -2.0)))]):
        out = warp_exposures(exps, target_wcs=target, target_shape=(200, 200))
        assert out.is_empty and out.image is None and out.mask is None and out.variance is None and out.wcs is None
        assert out.meta == {"NCCD": 0}


def test_nearest_and_bilinear_kernels():
    shape = (60, 80)
    wcs = make_wcs(shape)
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1, shape)
    exp = exposure(img, wcs)
    out = warp_exposures([exp], target_wcs=shifted_wcs(wcs, 3.3, 2.7), target_shape=shape, kernel="nearest")
    # covered: u + 3.3 < 79.5, v + 2.7 < 59.5
    assert (out.x0, out.y0) == (0, 0) and out.image.shape == (57, 77)
    ok = out.mask == 0
    assert ok.sum() > 0.9 * ok.size
    # output (u, v) takes input (round(u + 3.3), round(v + 2.7)) = (u + 3, v + 3)
    v, u = np.mgrid[:57, :77]
    np.testing.assert_array_equal(out.image[ok], img[np.minimum(v + 3, 59), np.minimum(u + 3, 79)][ok]
                                  .astype(np.float32))
    out = warp_exposures([exp], target_wcs=shifted_wcs(wcs, 3.3, 2.7), target_shape=shape, kernel="bilinear")
    ok = out.mask == 0
    v, u = np.mgrid[: out.image.shape[0], : out.image.shape[1]]
    x, y = u + 3.3, v + 2.7
    ix, iy = np.floor(x).astype(int), np.floor(y).astype(int)
    sel = ok & (ix < shape[1] - 1) & (iy < shape[0] - 1)
    fx, fy = x - ix, y - iy
    ixc, iyc = np.clip(ix, 0, shape[1] - 2), np.clip(iy, 0, shape[0] - 2)
    bl = ((1 - fx) * (1 - fy) * img[iyc, ixc] + fx * (1 - fy) * img[iyc, ixc + 1]
          + (1 - fx) * fy * img[iyc + 1, ixc] + fx * fy * img[iyc + 1, ixc + 1])
    np.testing.assert_allclose(out.image[sel], bl[sel], atol=1e-5)
    with pytest.raises(ValueError):
        warp_exposures([exp], target_wcs=wcs, target_shape=shape, kernel="cubic")
