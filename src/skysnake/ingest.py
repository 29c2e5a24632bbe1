"""The input index: one row per (visit, ccd), known when the workflow is parsed.

For the simulated survey the index comes from the survey design (its raw files
are made by the workflow). For files on disk it comes from their headers; a
header cache keyed on (path, size, mtime) makes re-parsing thousands of files
fast.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from .errors import ConfigError, DataError
from .instruments import header_meta, header_wcs, merged_instrument

INDEX_COLUMNS = ["visit", "ccd", "filter", "mjd", "exptime", "raw", "hdu"] + \
    [f"ra_c{i}" for i in range(4)] + [f"dec_c{i}" for i in range(4)]


def input_index(config, *, raw_sim_pattern):
    """The index for the configured inputs (``inputs.source``: ``sim`` or ``files``)."""
    source = config["inputs"]["source"]
    if source == "sim":
        from .plan import sim_index

        return sim_index(config["sim"], raw_pattern=raw_sim_pattern)
    if source == "files":
        cache = Path(config["results"]) / "ingest" / "header-cache.json"
        index, skipped = index_files(config["inputs"]["paths"], instrument=config["instrument"], cache=cache)
        for path, why in skipped:
            print(f"skysnake ingest: skipped {path}: {why}")
        if index.empty:
            raise ConfigError(f"no usable input CCDs in inputs.paths {config['inputs']['paths']} "
                              f"({len(skipped)} files skipped; see the messages above)")
        return index
    raise ConfigError(f"inputs.source must be 'sim' or 'files', not {source!r}")


def _corners(wcs, shape):
    ny, nx = shape
    x = np.array([0, nx - 1, nx - 1, 0], dtype=float)
    y = np.array([0, 0, ny - 1, ny - 1], dtype=float)
    ra, dec = wcs.all_pix2world(x, y, 0)
    return ra, dec


def header_rows(path, *, instrument):
    """Index rows of one file (one per CCD HDU) from its headers only."""
    inst = merged_instrument(instrument)
    rows = []
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            hdus = [inst["image_hdu"]]
            for h in hdus:
                header = hdul[h].header
                meta = header_meta(header, inst, path=path)
                wcs = header_wcs(header)
                if wcs is None:
                    raise DataError(f"{path}: header has no WCS", code="no_wcs")
                shape = (header["NAXIS2"], header["NAXIS1"])
                ra, dec = _corners(wcs.celestial, shape)
                row = {k: meta[k] for k in ("visit", "ccd", "filter", "mjd", "exptime")}
                row.update(raw=str(path), hdu=h)
                row.update({f"ra_c{i}": float(ra[i]) for i in range(4)})
                row.update({f"dec_c{i}": float(dec[i]) for i in range(4)})
                rows.append(row)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"{path}: cannot read header ({type(err).__name__}: {err})", code="unreadable") from err
    return rows


def index_files(patterns, *, instrument, cache=None):
    """Index the files matching ``patterns`` (globs). Returns (DataFrame, [(path, reason), ...] skipped)."""
    paths = sorted({p for pat in patterns for p in glob.glob(os.path.expanduser(pat), recursive=True)})
    cached = {}
    key_of = {}
    if cache is not None and Path(cache).exists():
        try:
            cached = json.loads(Path(cache).read_text())
        except (OSError, ValueError):
            cached = {}
    rows, skipped, fresh = [], [], {}
    inst_key = json.dumps(merged_instrument(instrument), sort_keys=True)
    for p in paths:
        st = os.stat(p)
        key = f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|{hashlib.sha1(inst_key.encode()).hexdigest()[:12]}"
        key_of[p] = key
        entry = cached.get(key)
        if entry is None:
            try:
                entry = {"rows": header_rows(p, instrument=instrument)}
            except DataError as err:
                entry = {"skip": str(err)}
        fresh[key] = entry
        if "skip" in entry:
            skipped.append((p, entry["skip"]))
        else:
            rows.extend(entry["rows"])
    if cache is not None and fresh != cached:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache).with_suffix(".tmp")
        tmp.write_text(json.dumps(fresh))
        os.replace(tmp, cache)
    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    dup = df.duplicated(["visit", "ccd"], keep="first")
    for p in df.loc[dup, "raw"]:
        skipped.append((p, "duplicate (visit, ccd) of an earlier file"))
    df = df[~dup].sort_values(["visit", "ccd"]).reset_index(drop=True)
    return df, skipped
