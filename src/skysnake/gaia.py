"""Gaia DR3 reference stars through astroquery, one cone per tract, cached on disk as parquet.

:func:`gaia_refcat` returns the stars of a cone in skysnake's columns
(:func:`skysnake.refcat.gaia_columns`). The first call for a cone queries the Gaia archive
(``astroquery.gaia.Gaia.cone_search_async``) and writes the result to
``{cache}/gaia-{table}-{ra}-{dec}-{radius}.parquet``; every later call reads that file, so a
region is fetched once and a cached run is fully offline. The workflow queries in the refcat
job of each tract (never per CCD), and an exclusive lock on the cache folder keeps two jobs from
querying at the same time.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .io import write_table
from .refcat import gaia_columns

#: Columns fetched from ``gaia_source``.
GAIA_COLUMNS = ["source_id", "ra", "dec", "ra_error", "dec_error", "pmra", "pmra_error", "pmdec", "pmdec_error",
                "ref_epoch", "phot_g_mean_mag", "phot_g_mean_flux_over_error", "phot_bp_mean_mag",
                "phot_bp_mean_flux_over_error", "phot_rp_mean_mag", "phot_rp_mean_flux_over_error"]


def cache_path(cache, *, ra, dec, radius_deg, table="gaiadr3.gaia_source"):
    """The cache file of one cone (coordinates rounded to 1e-4 deg)."""
    return Path(cache) / f"gaia-{table.replace('.', '_')}-{ra:.4f}-{dec:+.4f}-{radius_deg:.4f}.parquet"


def query_cone(*, ra, dec, radius_deg, table="gaiadr3.gaia_source", mag_limit=21.0):
    """Query the Gaia archive for one cone (network). Returns an astropy Table of :data:`GAIA_COLUMNS`."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astroquery.gaia import Gaia

    Gaia.ROW_LIMIT = -1
    job = Gaia.cone_search_async(SkyCoord(ra, dec, unit="deg"), radius=radius_deg * u.deg, table_name=table,
                                 columns=GAIA_COLUMNS)
    t = job.get_results()
    if "phot_g_mean_mag" in t.colnames and mag_limit is not None:
        g = np.asarray(t["phot_g_mean_mag"].filled(np.nan) if hasattr(t["phot_g_mean_mag"], "filled")
                       else t["phot_g_mean_mag"], float)
        t = t[np.isfinite(g) & (g <= mag_limit)]
    return t


def gaia_refcat(*, ra, dec, radius_deg, cache, table="gaiadr3.gaia_source", mag_limit=21.0, log=None):
    """Gaia stars within ``radius_deg`` of (ra, dec) in skysnake's columns, from the cache or the archive.

    Raises
    ------
    DataError
        ``code="no_refcat"`` when the cone is not cached and the archive cannot be reached, saying
        how to get a reference catalog offline.
    """
    path = cache_path(cache, ra=ra, dec=dec, radius_deg=radius_deg, table=table)
    if path.exists():
        return pd.read_parquet(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one query at a time, whichever jobs run
        try:
            if path.exists():  # another job fetched it while we waited
                return pd.read_parquet(path)
            if log:
                log.info("querying %s: cone of %.4f deg at (%.5f, %+.5f)", table, radius_deg, ra, dec)
            try:
                t = query_cone(ra=ra, dec=dec, radius_deg=radius_deg, table=table, mag_limit=mag_limit)
            except Exception as err:  # noqa: BLE001 - network, HTTP or service errors alike
                raise DataError(
                    f"cannot query Gaia ({table}) for the cone at RA {ra:.4f} Dec {dec:+.4f} radius {radius_deg:.3f} "
                    f"deg ({type(err).__name__}: {err}), and {path} is not cached. Run once where the network is "
                    "reachable (the result is cached in refcat.cache), or use refcat.source 'file' with a "
                    "catalog on disk", code="no_refcat") from err
            df = gaia_columns(t)
            write_table(path, df)
            return df
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
