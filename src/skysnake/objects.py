"""The tract object catalog: one row per object, fluxes from forced photometry.

Each patch measures every object in its outer box, so objects near patch edges
are measured twice; an object is kept only from the patch whose inner box holds
its reference position (``is_primary``), so each appears exactly once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .skymap import parse_patch
from .units import flux_to_mag, magerr_from_flux

#: Columns taken from each filter's forced table, renamed ``{filter}_{name}``.
FORCED_COLUMNS = {
    "psf_flux": "flux",
    "psf_fluxerr": "fluxerr",
    "kron_flux": "kron_flux",
    "kron_fluxerr": "kron_fluxerr",
    "flags": "flags",
}


def object_ids(tract, patch, ids):
    """Deterministic 64-bit object ids from (tract, patch, id within the patch)."""
    px, py = parse_patch(patch)
    base = ((int(tract) * 1000 + px) * 1000 + py) * 10_000_000
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and ids.max() >= 10_000_000:
        raise ValueError("more than 10 million objects in one patch: object ids would collide")
    return base + ids


def catalog_columns(filters):
    cols = ["object_id", "ra", "dec", "tract", "patch", "ref_filter", "is_star"]
    for f in filters:
        cols += [f"{f}_flux", f"{f}_fluxerr", f"{f}_mag", f"{f}_magerr", f"{f}_kron_flux", f"{f}_kron_fluxerr",
                 f"{f}_flags"]
    return cols


def build_object_catalog(*, forced, references, skymap, tract, filters):
    """Join forced photometry across filters and keep primary objects.

    Parameters
    ----------
    forced : dict
        ``{(patch, filter): DataFrame}`` of forced photometry (``id``, ``psf_flux``, ...).
    references : dict
        ``{patch: DataFrame}`` of reference tables (``id``, ``ra``, ``dec``, ``ref_filter``, ``is_extended``).
    skymap : SkyMap
        Needed to decide which patch (and tract) each object is primary in.
    tract : int
    filters : list of str
        Every filter of the survey: a filter that does not cover a patch gives NaN fluxes there.

    Returns
    -------
    pandas.DataFrame
        Columns of :func:`catalog_columns`, sorted by ``object_id``; empty (with those columns) if there are
        no objects.
    """
    parts = []
    for patch, ref in references.items():
        if len(ref) == 0:
            continue
        primary = skymap.is_primary(tract, patch, ref["ra"].to_numpy(), ref["dec"].to_numpy())
        ref = ref[primary]
        if len(ref) == 0:
            continue
        cat = pd.DataFrame({
            "object_id": object_ids(tract, patch, ref["id"].to_numpy()),
            "id": ref["id"].to_numpy(),
            "ra": ref["ra"].to_numpy(float),
            "dec": ref["dec"].to_numpy(float),
            "tract": np.full(len(ref), int(tract), dtype=np.int64),
            "patch": patch,
            "ref_filter": ref["ref_filter"].astype(str).to_numpy(),
            "is_star": ~ref["is_extended"].to_numpy(bool),
        })
        for f in filters:
            table = forced.get((patch, f))
            if table is None or len(table) == 0:
                for dst in FORCED_COLUMNS.values():
                    cat[f"{f}_{dst}"] = np.nan if dst != "flags" else -1
                continue
            sub = table[["id", *FORCED_COLUMNS]].rename(columns={k: f"{f}_{v}" for k, v in FORCED_COLUMNS.items()})
            cat = cat.merge(sub, on="id", how="left")
            cat[f"{f}_flags"] = cat[f"{f}_flags"].fillna(-1).astype(np.int64)
        parts.append(cat)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in catalog_columns(filters)})
    cat = pd.concat(parts, ignore_index=True)
    for f in filters:
        cat[f"{f}_mag"] = flux_to_mag(cat[f"{f}_flux"])
        cat[f"{f}_magerr"] = magerr_from_flux(cat[f"{f}_flux"], cat[f"{f}_fluxerr"])
    cat = cat[catalog_columns(filters)].sort_values("object_id").reset_index(drop=True)
    return cat


def _dtype(col):
    if col in ("object_id", "tract") or col.endswith("_flags"):
        return "int64"
    if col in ("patch", "ref_filter"):
        return "object"
    if col == "is_star":
        return "bool"
    return "float64"
