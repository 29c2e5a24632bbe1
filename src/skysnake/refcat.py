"""Reference catalogs: loading from files into skysnake's columns, cutting to a tract.

skysnake's reference columns: ``ra``, ``dec`` (deg, at ``epoch``), ``pmra``,
``pmdec`` (mas/yr, pmra includes cos dec; 0 when unknown), ``epoch`` (Julian
year), and per filter ``{f}_mag`` and ``{f}_magerr`` (AB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .skymap import Tract

#: Defaults of the ``refcat`` config block.
DEFAULTS = {"source": "sim", "path": None, "columns": {}, "epoch": 2016.0, "margin_deg": 0.1}


def load_refcat(path, *, columns=None, epoch=2016.0):
    """Read a reference catalog file (parquet, FITS or CSV) and rename its columns.

    ``columns`` maps skysnake names to the file's names (e.g. ``{"ra": "RA"}``).
    Missing proper motions become 0; a missing epoch column takes ``epoch``.
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
            names = [n for n in t.colnames if len(t[n].shape) <= 1]
            df = t[names].to_pandas()
    except (OSError, ValueError) as err:
        raise DataError(f"reference catalog {path}: cannot read ({err})", code="no_refcat") from err
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
