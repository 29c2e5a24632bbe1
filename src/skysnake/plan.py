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
from functools import cached_property
from typing import NamedTuple

import numpy as np
import pandas as pd

from .skymap import SkyMap, skymap_from_config


class _OverlapMaps(NamedTuple):
    patches: dict
    visits: dict
    warp_units: dict


@dataclass
class Plan:
    index: pd.DataFrame  # visit, ccd, filter, mjd, exptime, raw, hdu, ra_c0..3, dec_c0..3
    skymap: SkyMap
    overlaps: pd.DataFrame  # visit, ccd, tract, patch
    refcat_tract: dict = field(default_factory=dict)  # (visit, ccd) -> tract whose refcat calibrates it

    # --- data ids (lookups are dictionaries built once: input functions call them once per job) ----
    @cached_property
    def _by_visit(self):
        """visit -> (filter, sorted ccds)."""
        out = {}
        for v, grp in self.index.groupby("visit", sort=True):
            out[int(v)] = (str(grp["filter"].iloc[0]), sorted(int(c) for c in grp["ccd"]))
        return out

    @cached_property
    def _rows(self):
        """(visit, ccd) -> the index row as a dict."""
        cols = list(self.index.columns)
        return {(int(r[cols.index("visit")]), int(r[cols.index("ccd")])): dict(zip(cols, r))
                for r in self.index.itertuples(index=False, name=None)}

    @cached_property
    def _overlap_maps(self):
        """The overlaps as lookups: ``patches`` tract -> sorted patches; ``visits`` (tract, patch) ->
        sorted visits; ``warp_units`` (tract, visit) -> {patch: sorted ccds} in patch order."""
        patches, visits, ccds = {}, {}, {}
        for v, c, t, p in self.overlaps[["visit", "ccd", "tract", "patch"]].itertuples(index=False, name=None):
            t, v, c = int(t), int(v), int(c)
            patches.setdefault(t, set()).add(p)
            visits.setdefault((t, p), set()).add(v)
            ccds.setdefault((t, v, p), set()).add(c)
        warp_units = {}
        for t, v, p in sorted(ccds, key=lambda k: (k[0], k[1], _patch_key(k[2]))):
            warp_units.setdefault((t, v), {})[p] = sorted(ccds[(t, v, p)])
        return _OverlapMaps(patches={t: sorted(ps, key=_patch_key) for t, ps in patches.items()},
                            visits={k: sorted(vs) for k, vs in visits.items()}, warp_units=warp_units)

    @cached_property
    def _visits_by_filter(self):
        """(tract, patch, filter) -> sorted visits."""
        out = {}
        for (t, p), vs in self._overlap_maps.visits.items():
            for v in vs:
                out.setdefault((t, p, self.filter_of_visit(v)), []).append(v)
        return out

    @property
    def visits(self):
        return list(self._by_visit)

    def ccds_of_visit(self, visit):
        return list(self._by_visit[int(visit)][1]) if int(visit) in self._by_visit else []

    def filter_of_visit(self, visit):
        return self._by_visit[int(visit)][0]

    @property
    def filters(self):
        return sorted(self.index["filter"].unique().tolist())

    def raw(self, visit, ccd):
        return self._rows[(int(visit), int(ccd))]

    @property
    def tracts(self):
        return sorted(self._overlap_maps.patches)

    def patches(self, tract):
        return list(self._overlap_maps.patches.get(int(tract), []))

    def visits_of_patch(self, tract, patch, filter=None):
        if filter is not None:
            return list(self._visits_by_filter.get((int(tract), patch, filter), []))
        return list(self._overlap_maps.visits.get((int(tract), patch), []))

    def filters_of_patch(self, tract, patch):
        return sorted({self.filter_of_visit(v) for v in self.visits_of_patch(tract, patch)})

    def ccds_of_warp(self, tract, patch, visit):
        return list(self._overlap_maps.warp_units.get((int(tract), int(visit)), {}).get(patch, []))

    def warp_jobs(self):
        """All (tract, visit) warp jobs: one job warps a visit onto every patch of the tract it touches."""
        return sorted(self._overlap_maps.warp_units)

    def patches_of_visit(self, tract, visit):
        """``{patch: [ccd, ...]}`` of every patch of ``tract`` that the visit may touch, in patch order."""
        return {p: list(cs) for p, cs in self._overlap_maps.warp_units.get((int(tract), int(visit)), {}).items()}


def _patch_key(p):
    x, y = p.split("_")
    return (int(y), int(x))


def corners_columns():
    return [f"ra_c{i}" for i in range(4)] + [f"dec_c{i}" for i in range(4)]


def make_plan(index, skymap_cfg, *, margin_arcsec=30.0):
    """Build the :class:`Plan` from an input index and the ``skymap`` config block."""
    index = index.sort_values(["visit", "ccd"]).reset_index(drop=True)
    skymap = skymap_from_config(skymap_cfg, footprints=index)
    ra = index[[f"ra_c{i}" for i in range(4)]].to_numpy(float)
    dec = index[[f"dec_c{i}" for i in range(4)]].to_numpy(float)
    i, tracts, patches = skymap.overlaps(ra, dec, margin_arcsec=margin_arcsec)
    visits, ccds = index["visit"].to_numpy(int), index["ccd"].to_numpy(int)
    overlaps = pd.DataFrame({"visit": visits[i].tolist(), "ccd": ccds[i].tolist(), "tract": tracts, "patch": patches},
                            columns=["visit", "ccd", "tract", "patch"])
    cra, cdec = _mean_position(ra.T, dec.T)
    near = skymap.nearest_tract(cra, cdec) if len(index) else []
    refcat_tract = {(int(v), int(c)): int(t) for v, c, t in zip(visits, ccds, near)}
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

