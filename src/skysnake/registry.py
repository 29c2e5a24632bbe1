"""The CCD registry: one sqlite table of every CCD, its calibration and status.

Built in one job from the per-CCD summary sidecars, so per-CCD jobs never write
the database concurrently. Columns follow the summaries; ``status`` is ``ok``,
``failed`` (calibration could not be done; ``reason`` says why) and
``selected`` says whether the quality cuts let the CCD into warps and coadds
(``reject_reason`` says why not).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from .quality import select_ccds

COLUMNS = [
    ("visit", "INTEGER NOT NULL"),
    ("ccd", "INTEGER NOT NULL"),
    ("filter", "TEXT"),
    ("mjd", "REAL"),
    ("exptime", "REAL"),
    ("status", "TEXT NOT NULL"),
    ("code", "TEXT"),
    ("reason", "TEXT"),
    ("selected", "INTEGER NOT NULL"),
    ("reject_reason", "TEXT"),
    ("calib_method", "TEXT"),  # "refcat" (fitted) or "header" (header WCS and camera zeropoint: header_fallback)
    ("seeing_arcsec", "REAL"),
    ("zeropoint", "REAL"),
    ("zeropoint_err", "REAL"),
    ("astrom_rms_arcsec", "REAL"),
    ("n_astrom", "INTEGER"),
    ("n_phot", "INTEGER"),
    ("sky_adu", "REAL"),
    ("n_sources", "INTEGER"),
    ("center_ra", "REAL"),
    ("center_dec", "REAL"),
    ("corners", "TEXT"),  # JSON [[ra, dec] x 4] from the fitted WCS
    ("raw_path", "TEXT"),
    ("calexp_path", "TEXT"),
    ("log_path", "TEXT"),
]


def rows_from_summaries(summaries, *, cuts=None):
    """Registry rows (dicts) from summaries, with the quality-cut decision of each CCD."""
    decisions = select_ccds(summaries, cuts=cuts)
    rows = []
    for s, d in zip(summaries, decisions):
        row = {name: s.get(name) for name, _ in COLUMNS}
        row["selected"] = int(d["selected"])
        row["reject_reason"] = d["reason"] or None
        if row["corners"] is not None and not isinstance(row["corners"], str):
            row["corners"] = json.dumps(row["corners"])
        rows.append(row)
    rows.sort(key=lambda r: (r["visit"], r["ccd"]))
    return rows


def write_registry(path, rows, *, provenance=None):
    """Write the registry atomically (a new database replaces the old one whole).

    ``provenance`` (:func:`skysnake.adapter.provenance`) goes in a ``provenance`` table of
    ``(key, value)`` rows: ``version``, ``config_hash`` and one ``input`` row per input file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    con = sqlite3.connect(tmp)
    try:
        cols = ", ".join(f"{n} {t}" for n, t in COLUMNS)
        con.execute(f"CREATE TABLE ccd ({cols}, PRIMARY KEY (visit, ccd))")
        names = [n for n, _ in COLUMNS]
        con.executemany(f"INSERT INTO ccd ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        [[r.get(n) for n in names] for r in rows])
        if provenance:
            con.execute("CREATE TABLE provenance (key TEXT NOT NULL, value TEXT)")
            con.executemany("INSERT INTO provenance (key, value) VALUES (?, ?)",
                            [("version", str(provenance.get("version", ""))),
                             ("config_hash", str(provenance.get("config_hash", "")))]
                            + [("input", str(p)) for p in provenance.get("inputs", [])])
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)


def read_registry(path):
    """The ``ccd`` table as a pandas DataFrame."""
    import pandas as pd

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return pd.read_sql_query("SELECT * FROM ccd ORDER BY visit, ccd", con)
    finally:
        con.close()


def read_registry_provenance(path):
    """The provenance recorded by :func:`write_registry` (empty values if the registry has none)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='provenance'").fetchone():
            return {"version": None, "config_hash": None, "inputs": []}
        rows = con.execute("SELECT key, value FROM provenance ORDER BY rowid").fetchall()
    finally:
        con.close()
    one = {k: v for k, v in rows if k != "input"}
    return {"version": one.get("version"), "config_hash": one.get("config_hash"),
            "inputs": [v for k, v in rows if k == "input"]}
