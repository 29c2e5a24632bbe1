import numpy as np
import pytest

from skysnake.skymap import SkyMap, make_tract, parse_patch, tract_for_footprint


def test_patch_boxes_tile_the_tract_and_outer_boxes_overlap():
    t = make_tract(id=0, ra=150.0, dec=2.0, size_deg=0.3, pixel_scale=0.2, patch_inner=2000, patch_border=100)
    assert t.npatch_x == 3  # 0.3 deg = 5400 px -> 3 patches of 2000
    ny, nx = t.shape
    covered = np.zeros((ny // 100, nx // 100), int)
    for p in t.patches:
        x0, y0, x1, y1 = t.inner_box(p)
        covered[y0 // 100:y1 // 100, x0 // 100:x1 // 100] += 1
    assert (covered == 1).all()  # inner boxes tile the tract exactly once
    a, b = t.outer_box("0_0"), t.outer_box("1_0")
    assert a[2] - b[0] == 200  # neighbours' outer boxes overlap by twice the border
    assert t.patch_shape("1_1") == (2200, 2200)


def test_patch_wcs_is_tract_wcs_shifted():
    t = make_tract(id=3, ra=10.0, dec=-30.0, size_deg=0.2)
    w, wp = t.wcs(), t.patch_wcs("1_1")
    x0, y0, _, _ = t.outer_box("1_1")
    ra, dec = w.all_pix2world([2500.0], [2600.0], 0)
    xp, yp = wp.all_world2pix(ra, dec, 0)
    np.testing.assert_allclose([xp[0] + x0, yp[0] + y0], [2500.0, 2600.0], atol=1e-6)


def test_is_primary_assigns_each_position_to_exactly_one_patch():
    t = make_tract(id=0, ra=150.0, dec=2.0, size_deg=0.25, patch_inner=1000, patch_border=100)
    sm = SkyMap([t])
    rng = np.random.default_rng(1)
    ny, nx = t.shape
    x = rng.uniform(-0.49, nx - 0.51, 5000)
    y = rng.uniform(-0.49, ny - 0.51, 5000)
    ra, dec = t.wcs().all_pix2world(x, y, 0)
    counts = sum(sm.is_primary(0, p, ra, dec).astype(int) for p in t.patches)
    assert (counts == 1).all()


def test_nearest_tract_decides_primary_between_overlapping_tracts():
    a = make_tract(id=0, ra=150.0, dec=2.0, size_deg=0.4, patch_inner=4000)
    b = make_tract(id=1, ra=150.3, dec=2.0, size_deg=0.4, patch_inner=4000)
    sm = SkyMap([a, b])
    ra, dec = np.array([150.1, 150.2]), np.array([2.0, 2.0])
    pa = np.any([sm.is_primary(0, p, ra, dec) for p in a.patches], axis=0)
    pb = np.any([sm.is_primary(1, p, ra, dec) for p in b.patches], axis=0)
    assert list(pa) == [True, False] and list(pb) == [False, True]


def test_patches_touching_and_auto_tract():
    ra = np.array([150.0, 150.05, 150.05, 150.0])
    dec = np.array([2.0, 2.0, 2.1, 2.1])
    t = tract_for_footprint(ra, dec, patch_inner=1000)
    sm = SkyMap([t])
    x, y = t.wcs().all_world2pix(ra, dec, 0)
    assert x.min() >= 0 and y.min() >= 0 and x.max() < t.shape[1] and y.max() < t.shape[0]
    touched = sm.patches_touching(ra[:1] + [0, 0.001, 0.001, 0][:1], dec[:1], margin_arcsec=1.0)
    assert len(touched) >= 1
    # a polygon far away touches nothing
    assert sm.patches_touching(np.array([30.0, 30.1, 30.1, 30.0]), np.array([-40.0, -40, -39.9, -39.9])) == []


def test_parse_patch_rejects_bad_names():
    assert parse_patch("1_2") == (1, 2) == parse_patch("1,2")  # the HSC-style name is still read
    with pytest.raises(ValueError, match="x_y"):
        parse_patch("12")
