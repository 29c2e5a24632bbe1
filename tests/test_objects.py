import numpy as np
import pandas as pd

from skysnake.objects import build_object_catalog, catalog_columns
from skysnake.skymap import SkyMap, make_tract
from skysnake.units import mag_to_flux


def _ref(t, patch, xy, ids):
    w = t.patch_wcs(patch)
    ra, dec = w.all_pix2world(np.array(xy, float)[:, 0], np.array(xy, float)[:, 1], 0)
    return pd.DataFrame({"id": ids, "ra": ra, "dec": dec, "ref_filter": "r", "is_extended": [False, True][: len(ids)]})


def _forced(ids, mag):
    return pd.DataFrame({"id": ids, "psf_flux": mag_to_flux(mag) * np.ones(len(ids)), "psf_fluxerr": 1.0,
                         "kron_flux": 1.0, "kron_fluxerr": 1.0, "flags": 0})


def test_object_in_the_overlap_of_two_patches_appears_once():
    t = make_tract(id=0, ra=150.0, dec=2.0, size_deg=0.12, patch_inner=1000, patch_border=100)
    sm = SkyMap([t])
    # the same sky position seen in patch 0_0 (x = 1050 in its outer grid) and 1_0 (x = 50 in its grid):
    # tract x = 950, inside 0_0's inner box only.
    refs = {"0_0": _ref(t, "0_0", [(1050, 500), (300, 300)], [0, 1]), "1_0": _ref(t, "1_0", [(50, 500)], [0])}
    forced = {("0_0", "r"): _forced([0, 1], 20.0), ("1_0", "r"): _forced([0], 20.0)}
    cat = build_object_catalog(forced=forced, references=refs, skymap=sm, tract=0, filters=["g", "r"])
    assert len(cat) == 2 and set(cat["patch"]) == {"0_0"}
    assert cat["object_id"].is_unique
    np.testing.assert_allclose(cat["r_mag"], 20.0)
    assert cat["g_flux"].isna().all()  # g does not cover these patches
    assert list(cat["is_star"]) == [True, False]


def test_empty_catalog_has_the_columns():
    t = make_tract(id=0, ra=150.0, dec=2.0, size_deg=0.1)
    cat = build_object_catalog(forced={}, references={"0_0": pd.DataFrame(columns=["id", "ra", "dec"])},
                               skymap=SkyMap([t]), tract=0, filters=["g"])
    assert list(cat.columns) == catalog_columns(["g"]) and len(cat) == 0
