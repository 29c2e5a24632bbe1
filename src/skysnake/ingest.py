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

from . import cameras
from .errors import ConfigError, DataError
from .instruments import ccd_header, header_meta, header_wcs, image_hdus, merged_instrument

INDEX_COLUMNS = ["visit", "ccd", "filter", "mjd", "exptime", "raw", "hdu"] + \
    [f"ra_c{i}" for i in range(4)] + [f"dec_c{i}" for i in range(4)]

#: Columns of the table of input problems: files skipped at ingest and CCDs missing from a visit.
#: ``visit``/``ccd`` are known when the header could be read (else -1: the file is not attributable).
PROBLEM_COLUMNS = ["visit", "ccd", "filter", "code", "reason", "raw"]


def check_inputs(config):
    """Check that the configured input paths exist, before any job runs.

    Raises :class:`ConfigError` naming the config key (``inputs.paths``, ``refcat.path``) and the path
    when a glob pattern of ``inputs.paths`` matches no file or the reference catalog file is missing.
    Relative paths are relative to the working directory (Snakemake's ``--directory``).
    """
    where = f"(relative paths are relative to the working directory {os.getcwd()})"
    inputs = config.get("inputs") or {}
    if inputs.get("source", "sim") == "files":
        patterns = inputs.get("paths") or []
        if not patterns:
            raise ConfigError("inputs.paths is empty but inputs.source is 'files': list the raw CCD files "
                              "(glob patterns such as raw/*/*.fits)")
        for pat in patterns:
            if not glob.glob(os.path.expanduser(pat), recursive=True):
                raise ConfigError(f"inputs.paths: {pat!r} matches no file {where}; fix the path or the pattern")
    refcat = config.get("refcat") or {}
    if refcat.get("source", "sim") == "file":
        path = refcat.get("path")
        if not path:
            raise ConfigError("refcat.path is not set but refcat.source is 'file': give the reference catalog "
                              "file (parquet, FITS or CSV)")
        if not refcat_files(config):
            raise ConfigError(f"refcat.path: reference catalog {str(path)!r} does not exist {where}")
        if "{" in str(path) or "}" in str(path):
            raise ConfigError(f"refcat.path: {str(path)!r} has braces {{ }}, which Snakemake reads as wildcards; "
                              "rename the file or its folder")


def refcat_files(config):
    """The files of ``refcat.path`` (a file or a glob pattern, e.g. Gaia chunks ``gaia/chunk-*.fits``), sorted."""
    path = os.path.expanduser(str((config.get("refcat") or {}).get("path") or ""))
    if not path:
        return []
    return sorted(p for p in glob.glob(path) if Path(p).is_file())


def input_index(config, *, raw_sim_pattern):
    """The index for the configured inputs (``inputs.source``: ``sim`` or ``files``).

    Returns ``(index, problems)``: the input index (:data:`INDEX_COLUMNS`) and a table of input problems
    (:data:`PROBLEM_COLUMNS`: files skipped because their header is unusable, and CCDs missing from a
    visit). Each problem is printed, so ``snakemake -n`` shows them before anything runs.
    Call :func:`check_inputs` first for a clear message when a configured path does not exist.
    """
    source = config["inputs"]["source"]
    if source == "sim":
        from .plan import sim_index

        return sim_index(config["sim"], raw_pattern=raw_sim_pattern), empty_problems()
    if source == "files":
        cache = Path(config["results"]) / "ingest" / "header-cache.json"
        index, skipped = index_files(config["inputs"]["paths"], instrument=config["instrument"], cache=cache)
        for r in skipped.itertuples(index=False):  # reasons name the file
            print(f"skysnake ingest: skipped {'' if r.reason.startswith(r.path) else r.path + ': '}{r.reason}")
        if index.empty:
            raise ConfigError(f"inputs.paths: no usable input CCDs in {config['inputs']['paths']} "
                              f"({len(skipped)} files skipped; see the messages above)")
        problems = input_problems(index, skipped,
                                  complete_visits=merged_instrument(config["instrument"]).get("complete_visits", True))
        for r in problems[problems["code"] == "missing"].itertuples(index=False):
            print(f"skysnake ingest: {r.reason}")
        return index, problems
    raise ConfigError(f"inputs.source must be 'sim' or 'files', not {source!r}")


def empty_problems():
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("visit", "ccd") else "object")
                         for c in PROBLEM_COLUMNS})


def input_problems(index, skipped, *, complete_visits=True):
    """CCDs that will not be calibrated, with the reason: skipped files and CCDs missing from a visit.

    Parameters
    ----------
    index : pandas.DataFrame
        The input index (:data:`INDEX_COLUMNS`).
    skipped : pandas.DataFrame
        Files skipped by :func:`index_files` (``path, code, reason, visit, ccd``; ``visit, ccd`` are -1 when
        the header could not be read).

    Returns
    -------
    pandas.DataFrame
        :data:`PROBLEM_COLUMNS`, one row per skipped file and one per (visit, ccd) missing on disk: the
        camera's CCDs are taken to be every CCD number seen in any visit, so a visit lacking one of them
        (deleted, not copied, or unreadable) gets ``code="missing"`` - unless ``complete_visits`` is
        False (the instrument's ``complete_visits``: e.g. DECam cutouts, one CCD of each exposure).
    """
    filt = dict(zip(index["visit"], index["filter"]))
    rows = []
    known = set()
    for r in skipped.itertuples(index=False):
        v, c = int(r.visit), int(r.ccd)
        rows.append({"visit": v, "ccd": c, "filter": filt.get(v), "code": r.code, "reason": r.reason,
                     "raw": r.path})
        if v >= 0:
            known.add((v, c))
    camera = set(index["ccd"]) | {c for _, c in known}
    have = set(zip(index["visit"], index["ccd"])) | known
    unreadable = [r.path for r in skipped.itertuples(index=False) if int(r.visit) < 0 and r.code != "duplicate"]
    for v in sorted(set(index["visit"]) | {v for v, _ in known}) if complete_visits else []:
        for c in sorted(camera):
            if (v, c) in have:
                continue
            n = int((index["visit"] == v).sum())
            why = (f"visit {v} ccd {c}: no raw file among inputs.paths (the visit has {n} other CCDs; "
                   f"the camera has CCDs {_ranges(camera)})")
            if unreadable:
                why += f"; {len(unreadable)} unreadable input file(s) were skipped, e.g. {unreadable[0]}"
            why += " - copy the file in (or replace the broken one) and rerun"
            rows.append({"visit": v, "ccd": c, "filter": filt.get(v), "code": "missing", "reason": why, "raw": None})
    if not rows:
        return empty_problems()
    return pd.DataFrame(rows, columns=PROBLEM_COLUMNS).sort_values(["visit", "ccd"]).reset_index(drop=True)


def _ranges(ids):
    ids = sorted(int(i) for i in ids)
    out, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i == len(ids) - 1 or ids[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)


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
            hdus = image_hdus(hdul, inst)
            if not hdus:
                raise DataError(f"{path}: no image HDU (instrument.image_hdu is 'all')", code="no_data")
            for h in hdus:
                header = ccd_header(hdul, h, inst)
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


SKIPPED_COLUMNS = ["path", "code", "reason", "visit", "ccd"]


def _check_name(path):
    """Snakemake reads ``{...}`` in a file name as a wildcard: such a file cannot be an input."""
    if "{" in str(path) or "}" in str(path):
        raise DataError(f"{path}: braces {{ }} in a file or folder name are read by Snakemake as wildcards; "
                        "rename it", code="bad_name")


def _ids_from_header(path, instrument):
    """(visit, ccd) from a file's header when it can be read at all, else (-1, -1)."""
    inst = merged_instrument(instrument)
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            header = ccd_header(hdul, image_hdus(hdul, inst)[0], inst)
            ids = {}
            cameras.derive_meta(inst["name"], header, ids)
            visit = ids["visit"] if "visit" in ids else header[inst["keywords"]["visit"]]
            return int(visit), int(header[inst["keywords"]["ccd"]])
    except Exception:  # noqa: BLE001 - any failure means the ids are unknown
        return -1, -1


def index_files(patterns, *, instrument, cache=None):
    """Index the files matching ``patterns`` (globs).

    Returns
    -------
    index : pandas.DataFrame
        :data:`INDEX_COLUMNS`, one row per usable CCD.
    skipped : pandas.DataFrame
        :data:`SKIPPED_COLUMNS`: files left out, with the error ``code`` and ``reason``; ``visit, ccd``
        from the header when it is readable (e.g. a header without WCS), else -1.
    """
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
        if "{" in p or "}" in p:  # checked on every parse: the cache may predate the check
            entry = None
        if entry is None:
            try:
                _check_name(p)
                entry = {"rows": header_rows(p, instrument=instrument)}
            except DataError as err:
                visit, ccd = _ids_from_header(p, instrument)
                entry = {"skip": str(err), "code": err.code, "visit": visit, "ccd": ccd}
        fresh[key] = entry
        if "skip" in entry:
            skipped.append((p, entry.get("code", "unreadable"), entry["skip"], entry.get("visit", -1),
                            entry.get("ccd", -1)))
        else:
            rows.extend(entry["rows"])
    if cache is not None and fresh != cached:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache).with_suffix(".tmp")
        tmp.write_text(json.dumps(fresh))
        os.replace(tmp, cache)
    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    dup = df.duplicated(["visit", "ccd"], keep="first")
    first = df[~dup].set_index(["visit", "ccd"])["raw"]
    for r in df[dup].itertuples(index=False):
        skipped.append((r.raw, "duplicate", f"{r.raw}: visit {r.visit} ccd {r.ccd} is also in "
                        f"{first.loc[(r.visit, r.ccd)]} (used instead); remove one of them", -1, -1))
    df = df[~dup].sort_values(["visit", "ccd"]).reset_index(drop=True)
    skipped = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).astype({"visit": "int64", "ccd": "int64"})
    return df, skipped
