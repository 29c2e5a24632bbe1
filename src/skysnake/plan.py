"""The processing plan: every data unit and how units depend on each other.

Computed when Snakemake parses the workflow, from the config and the input
index, so ``snakemake -n`` lists every job before anything runs:

* the input index: one row per (visit, ccd) with filter, epoch, raw file and an
  approximate sky footprint (from the raw header WCS, before calibration);
* the sky map (tracts and patches);
* which CCDs land on which patches (approximate footprints grown by a margin,
  so a CCD is never missed; a warp that turns out empty is written as such).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .skymap import SkyMap, skymap_from_config


@dataclass
class Plan:
    index: pd.DataFrame  # visit, ccd, filter, mjd, exptime, raw, hdu, ra_c0..3, dec_c0..3
    skymap: SkyMap
    overlaps: pd.DataFrame  # visit, ccd, tract, patch
    refcat_tract: dict = field(default_factory=dict)  # (visit, ccd) -> tract whose refcat calibrates it

    # --- data ids -----------------------------------------------------------------
    @property
    def visits(self):
        return sorted(self.index["visit"].unique().tolist())

    def ccds_of_visit(self, visit):
        return sorted(self.index.loc[self.index["visit"] == int(visit), "ccd"].tolist())

    def filter_of_visit(self, visit):
        return str(self.index.loc[self.index["visit"] == int(visit), "filter"].iloc[0])

    @property
    def filters(self):
        return sorted(self.index["filter"].unique().tolist())

    def raw(self, visit, ccd):
        row = self.index[(self.index["visit"] == int(visit)) & (self.index["ccd"] == int(ccd))]
        return row.iloc[0]

    @property
    def tracts(self):
        return sorted(self.overlaps["tract"].unique().tolist())

    def patches(self, tract):
        o = self.overlaps[self.overlaps["tract"] == int(tract)]
        return sorted(o["patch"].unique().tolist(), key=_patch_key)

    def visits_of_patch(self, tract, patch, filter=None):
        o = self.overlaps[(self.overlaps["tract"] == int(tract)) & (self.overlaps["patch"] == patch)]
        visits = sorted(o["visit"].unique().tolist())
        if filter is not None:
            visits = [v for v in visits if self.filter_of_visit(v) == filter]
        return visits

    def filters_of_patch(self, tract, patch):
        return sorted({self.filter_of_visit(v) for v in self.visits_of_patch(tract, patch)})

    def ccds_of_warp(self, tract, patch, visit):
        o = self.overlaps
        sel = (o["tract"] == int(tract)) & (o["patch"] == patch) & (o["visit"] == int(visit))
        return sorted(o.loc[sel, "ccd"].tolist())

    def warps(self):
        """All (tract, patch, visit) warp units."""
        w = self.overlaps[["tract", "patch", "visit"]].drop_duplicates()
        return [tuple(r) for r in w.itertuples(index=False)]


def _patch_key(p):
    x, y = p.split("_")
    return (int(y), int(x))


def corners_columns():
    return [f"ra_c{i}" for i in range(4)] + [f"dec_c{i}" for i in range(4)]


def make_plan(index, skymap_cfg, *, margin_arcsec=30.0):
    """Build the :class:`Plan` from an input index and the ``skymap`` config block."""
    index = index.sort_values(["visit", "ccd"]).reset_index(drop=True)
    skymap = skymap_from_config(skymap_cfg, footprints=index)
    rows = []
    refcat_tract = {}
    for r in index.itertuples(index=False):
        ra = np.array([getattr(r, f"ra_c{i}") for i in range(4)])
        dec = np.array([getattr(r, f"dec_c{i}") for i in range(4)])
        for tract, patch in skymap.patches_touching(ra, dec, margin_arcsec=margin_arcsec):
            rows.append((int(r.visit), int(r.ccd), int(tract), patch))
        cra, cdec = _mean_position(ra, dec)
        refcat_tract[(int(r.visit), int(r.ccd))] = int(skymap.nearest_tract(cra, cdec)[0])
    overlaps = pd.DataFrame(rows, columns=["visit", "ccd", "tract", "patch"])
    return Plan(index=index, skymap=skymap, overlaps=overlaps, refcat_tract=refcat_tract)


def _mean_position(ra, dec):
    v = np.stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                  np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))]).mean(axis=1)
    return (np.degrees(np.arctan2(v[1], v[0])) % 360.0, np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1]))))


def sim_index(sim_cfg, *, raw_pattern):
    """Input index of the simulated survey (its raw files are made by the workflow itself).

    ``raw_pattern`` is a format string with ``{visit}`` and ``{ccd}``.
    """
    from . import sim

    design = sim.survey_design(sim_cfg)
    fp = sim.nominal_footprints(design).copy()
    fp["raw"] = [raw_pattern.format(visit=v, ccd=c) for v, c in zip(fp["visit"], fp["ccd"])]
    fp["hdu"] = 0
    return fp

