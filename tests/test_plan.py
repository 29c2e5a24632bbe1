"""The processing plan: its dictionary lookups (what the input functions call once per job) agree
with plain table queries, and the vectorised overlap search with the CCD-by-CCD one."""

import numpy as np
from conftest import REPO

from skysnake import status
from skysnake.plan import make_plan, sim_index

CONFIG = status.load_config([REPO / "config" / "config.yaml"])  # with the schema's defaults


def _plan(**sim):
    cfg = {**CONFIG["sim"], **sim}
    index = sim_index(cfg, raw_pattern="raw-{visit}-{ccd}.fits")
    skymap = {**CONFIG["skymap"], "patch_inner_px": 1500}
    return make_plan(index, skymap, margin_arcsec=CONFIG["skymap"]["overlap_margin_arcsec"])


def test_lookups_agree_with_table_queries():
    plan = _plan(visits_per_filter=4)
    idx, o = plan.index, plan.overlaps
    assert len(o) > 50 and len(plan.patches(0)) > 4
    for v in plan.visits:
        assert plan.ccds_of_visit(v) == sorted(idx.loc[idx.visit == v, "ccd"])
        assert plan.filter_of_visit(v) == idx.loc[idx.visit == v, "filter"].iloc[0]
        for t in plan.tracts:
            units = plan.patches_of_visit(t, v)
            sel = o[(o.tract == t) & (o.visit == v)]
            assert list(units) == [p for p in plan.patches(t) if p in set(sel.patch)]  # patch order
            for p, ccds in units.items():
                assert ccds == sorted(sel.loc[sel.patch == p, "ccd"]) == plan.ccds_of_warp(t, p, v)
    assert plan.warp_jobs() == sorted({(t, v) for t, v in o[["tract", "visit"]].itertuples(index=False)})
    for t in plan.tracts:
        for p in plan.patches(t):
            for f in plan.filters:
                want = sorted({v for v in o.loc[(o.tract == t) & (o.patch == p), "visit"]
                               if plan.filter_of_visit(v) == f})
                assert plan.visits_of_patch(t, p, f) == want
    row = plan.raw(plan.visits[0], plan.ccds_of_visit(plan.visits[0])[0])
    assert row["raw"] == f"raw-{plan.visits[0]}-{row['ccd']}.fits"


def _touching_one_by_one(skymap, ra, dec, margin_arcsec):
    """The reference: one CCD's bounding box in each tract's pixels against each patch's outer box."""
    out = []
    for t in skymap.tracts.values():
        x, y = t.wcs().all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        m = margin_arcsec / t.pixel_scale
        for p in t.patches:
            x0, y0, x1, y1 = t.outer_box(p)
            if x.min() - m < x1 and x.max() + m > x0 and y.min() - m < y1 and y.max() + m > y0:
                out.append((t.id, p))
    return out


def test_vectorised_overlaps_match_the_ccd_by_ccd_search():
    plan = _plan(visits_per_filter=3, dither_arcmin=6.0)
    want = []
    for r in plan.index.itertuples(index=False):
        ra = [getattr(r, f"ra_c{i}") for i in range(4)]
        dec = [getattr(r, f"dec_c{i}") for i in range(4)]
        want += [(r.visit, r.ccd, t, p) for t, p in _touching_one_by_one(plan.skymap, ra, dec, 30.0)]
    got = list(plan.overlaps.itertuples(index=False, name=None))
    assert got == want and len(got) > len(plan.index)
