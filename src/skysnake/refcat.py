"""Reference catalogs: loading from files into skysnake's columns, cutting to a tract.

skysnake's reference columns: ``ra``, ``dec`` (deg, at ``epoch``), ``pmra``,
``pmdec`` (mas/yr, pmra includes cos dec; 0 when unknown), ``epoch`` (Julian
year), and per filter ``{f}_mag`` and ``{f}_magerr`` (AB).

Files are read as they come from the survey with ``refcat.format``:

* ``columns`` (default): the file's columns renamed by ``refcat.columns``;
* ``sdss_calibobj``: an SDSS calibObj star file: ``RA, DEC, PMRA, PMDEC``, and ``PSFFLUX[5]``,
  ``PSFFLUX_IVAR[5]`` (nanomaggies, ugriz) turned into ``{u,g,r,i,z}_mag`` (AB, ``22.5 - 2.5 log10``)
  and errors;
* ``gaia``: Gaia DR2/DR3 ``gaia_source`` columns (a Legacy Surveys Gaia chunk, or a query's
  result): ``G_mag, BP_mag, RP_mag`` with errors from the flux S/N, ``ref_epoch`` as ``epoch``,
  position and proper-motion errors (mas). Map Gaia bands to the camera's with
  ``calibrate.colour_terms``.

Positions are moved to each CCD's epoch with the proper motions when it is calibrated
(:func:`skysnake.astrometry.propagate_refcat`). Gaia DR3 can also be queried per tract
(:mod:`skysnake.gaia`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .skymap import Tract

#: Defaults of the ``refcat`` config block.
DEFAULTS = {"source": "sim", "path": None, "format": "columns", "columns": {}, "epoch": 2016.0, "margin_deg": 0.1,
            "cache": "refcat-cache", "gaia_table": "gaiadr3.gaia_source", "gaia_mag_limit": 21.0}

SDSS_BANDS = "ugriz"
_MAGERR = 2.5 / np.log(10)


def _sdss_calibobj(t):
    """skysnake columns from an SDSS calibObj table (astropy Table)."""
    df = pd.DataFrame({"ra": np.asarray(t["RA"], float), "dec": np.asarray(t["DEC"], float)})
    for c in ("PMRA", "PMDEC"):
        df[c.lower()] = np.asarray(t[c], float) if c in t.colnames else 0.0
    flux = np.asarray(t["PSFFLUX"], float)
    ivar = np.asarray(t["PSFFLUX_IVAR"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, b in enumerate(SDSS_BANDS):
            f, iv = flux[:, i], ivar[:, i]
            good = (f > 0) & (iv > 0)
            df[f"{b}_mag"] = np.where(good, 22.5 - 2.5 * np.log10(np.where(good, f, 1.0)), np.nan)
            df[f"{b}_magerr"] = np.where(good, _MAGERR / (f * np.sqrt(np.where(good, iv, 1.0))), np.nan)
    return df


def gaia_columns(t):
    """skysnake columns from Gaia ``gaia_source`` columns (astropy Table or DataFrame)."""
    names = list(getattr(t, "colnames", None) or t.columns)

    def col(name, default=np.nan):
        return np.asarray(t[name], float) if name in names else np.full(len(t), default)

    df = pd.DataFrame({"ra": col("ra"), "dec": col("dec"), "pmra": np.nan_to_num(col("pmra", 0.0)),
                       "pmdec": np.nan_to_num(col("pmdec", 0.0)), "ra_err": col("ra_error", 1.0),
                       "dec_err": col("dec_error", 1.0), "pmra_err": col("pmra_error", 0.0),
                       "pmdec_err": col("pmdec_error", 0.0), "epoch": col("ref_epoch", 2016.0)})
    if "source_id" in names:
        df.insert(0, "source_id", np.asarray(t["source_id"], np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):
        for band, name in (("G", "g"), ("BP", "bp"), ("RP", "rp")):
            df[f"{band}_mag"] = col(f"phot_{name}_mean_mag")
            df[f"{band}_magerr"] = _MAGERR / col(f"phot_{name}_mean_flux_over_error")
    return df


def load_refcat(path, *, columns=None, epoch=2016.0, format="columns"):
    """Read a reference catalog file (parquet, FITS or CSV) into skysnake's columns.

    ``format`` is ``columns`` (rename with ``columns``, which maps skysnake names to the file's, e.g.
    ``{"ra": "RA"}``), ``sdss_calibobj`` or ``gaia`` (see the module docstring); ``columns`` renames
    after a named format too. Missing proper motions become 0; a missing epoch column takes ``epoch``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"reference catalog {path} does not exist: set refcat.path in the config", code="no_refcat")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith(".parquet"):
            df = pd.read_parquet(path)
        elif suffixes.endswith(".csv"):
            df = pd.read_csv(path)
        else:
            from astropy.table import Table

            t = Table.read(path)
            if format == "sdss_calibobj":
                df = _sdss_calibobj(t)
            else:
                names = [n for n in t.colnames if len(t[n].shape) <= 1]
                df = t[names].to_pandas()
        if format == "gaia":
            df = gaia_columns(df)
    except (OSError, ValueError) as err:
        raise DataError(f"reference catalog {path}: cannot read ({err})", code="no_refcat") from err
    except KeyError as err:
        raise DataError(f"reference catalog {path}: column {err} missing for refcat.format {format!r}; "
                        "check the file or use refcat.format 'columns' with refcat.columns", code="no_refcat") from err
    rename = {src: dst for dst, src in (columns or {}).items()}
    df = df.rename(columns=rename)
    for need in ("ra", "dec"):
        if need not in df:
            raise DataError(f"reference catalog {path} has no {need!r} column; map it with refcat.columns.{need}",
                            code="no_refcat")
    for c in ("pmra", "pmdec"):
        if c not in df:
            df[c] = 0.0
        df[c] = df[c].fillna(0.0)
    if "epoch" not in df:
        df["epoch"] = float(epoch)
    return df


def cut_to_tract(refcat, tract: Tract, *, margin_deg=0.1):
    """Reference stars inside the tract's patches' outer boxes grown by ``margin_deg``."""
    if len(refcat) == 0:
        return refcat.copy()
    w = tract.wcs()
    x, y = w.all_world2pix(refcat["ra"].to_numpy(float), refcat["dec"].to_numpy(float), 0)
    ny, nx = tract.shape
    m = tract.patch_border + margin_deg * 3600.0 / tract.pixel_scale
    # gnomonic projection of the far hemisphere is meaningless: keep only stars within 30 deg
    d = np.degrees(np.arccos(np.clip(
        np.sin(np.radians(refcat["dec"])) * np.sin(np.radians(tract.dec))
        + np.cos(np.radians(refcat["dec"])) * np.cos(np.radians(tract.dec))
        * np.cos(np.radians(refcat["ra"] - tract.ra)), -1, 1)))
    keep = (d < 30) & (x > -m) & (x < nx + m) & (y > -m) & (y < ny + m)
    return refcat[np.asarray(keep)].reset_index(drop=True)
