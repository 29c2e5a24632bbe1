"""Access to a workflow's outputs by data id, as astropy objects.

>>> import skysnake
>>> repo = skysnake.Repo("results")                       # the run's results folder
>>> coadd = repo.get("coadd", tract=0, patch="1_1", filter="r")   # astropy CCDData (nJy)
>>> coadd.wcs, coadd.uncertainty.array, coadd.mask        # WCS, variance, unusable pixels
>>> objects = repo.get("objects", tract=0)                # astropy Table
>>> repo.ids("calexp")                                    # [{"visit": 1000, "ccd": 1}, ...]
>>> repo.provenance("coadd", tract=0, patch="1_1", filter="r")

Images (``calexp``, ``warp``, ``coadd``) come back as :class:`astropy.nddata.CCDData`: ``data`` in
nJy, ``uncertainty`` the variance (:class:`~astropy.nddata.VarianceUncertainty`), ``mask`` true
where a pixel is unusable (:data:`skysnake.masks.UNUSABLE`), ``flags`` the full bit mask
(:mod:`skysnake.masks`), ``wcs`` and ``meta`` (the primary header: provenance, ``FWHM``, ...).
:meth:`Repo.open` gives the file's :class:`~astropy.io.fits.HDUList` (e.g. a coadd's ``NIMAGE``).
Tables come back as :class:`astropy.table.Table` with fluxes in nJy and positions in degrees;
``table.meta`` holds the file's metadata and provenance. A missing output raises
:class:`FileNotFoundError` naming the file and the data ids that exist.

This module also reads the provenance recorded in any output (:func:`file_provenance`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

#: kind -> (path pattern under the results folder, how to read it, what it is).
#: The patterns are those of rules/common.smk and rules/qa.smk (a test checks they agree).
KINDS = {
    "index": ("ingest/index.parquet", "table", "input index: one row per input CCD"),
    "raw": ("sim/raw/{visit}/raw-{visit}-{ccd}.fits", "raw", "raw CCD (ADU); for file inputs, found via the index"),
    "truth": ("sim/truth.parquet", "table", "simulated survey: every true object"),
    "truth_ccd": ("sim/truth/{visit}/truth-{visit}-{ccd}.json", "json", "simulated CCD: true WCS, zeropoint"),
    "refcat": ("refcat/refcat-{tract}.parquet", "table", "reference stars of a tract"),
    "calexp": ("calexp/{visit}/calexp-{visit}-{ccd}.fits", "exposure", "calibrated CCD"),
    "sources": ("calexp/{visit}/sources-{visit}-{ccd}.parquet", "table", "sources of a calibrated CCD"),
    "summary": ("calexp/{visit}/summary-{visit}-{ccd}.json", "json", "calibration summary of a CCD"),
    "registry": ("registry.sqlite", "registry", "every CCD: status, seeing, zeropoint, selection"),
    "skymap": ("skymap.json", "skymap", "tracts and patches (skysnake.skymap.SkyMap)"),
    "tract": ("skymap.json", "tract", "one tract's geometry (skysnake.skymap.Tract)"),
    "warp": ("warp/{tract}/{visit}/warp-{tract}-{patch}-{visit}.fits", "exposure", "a visit resampled on a patch"),
    "coadd": ("coadd/{tract}/{patch}/coadd-{tract}-{patch}-{filter}.fits", "exposure", "coadd of a filter"),
    "detect": ("multiband/{tract}/{patch}/detect-{tract}-{patch}-{filter}.parquet", "table", "detections"),
    "merged": ("multiband/{tract}/{patch}/merged-{tract}-{patch}.parquet", "table", "peaks merged across filters"),
    "measure": ("multiband/{tract}/{patch}/measure-{tract}-{patch}-{filter}.parquet", "table", "measurements"),
    "reference": ("multiband/{tract}/{patch}/reference-{tract}-{patch}.parquet", "table", "reference band"),
    "forced": ("multiband/{tract}/{patch}/forced-{tract}-{patch}-{filter}.parquet", "table", "forced photometry"),
    "objects": ("objects/objects-{tract}.parquet", "table", "the tract's object catalog"),
    "depth": ("qa/tract/{tract}/depth-{tract}.fits", "hdulist", "binned 5-sigma depth and coverage maps"),
}

_ID_REGEX = {"visit": r"\d+", "ccd": r"\d+", "tract": r"\d+", "patch": r"\d+_\d+", "filter": r"[A-Za-z0-9_]+"}
_INT_IDS = ("visit", "ccd", "tract")


def _keys(pattern):
    return list(dict.fromkeys(re.findall(r"{(\w+)}", pattern)))


def _normalise(key, value):
    if key in _INT_IDS:
        return int(value)
    if key == "patch" and not isinstance(value, str):
        x, y = value
        return f"{int(x)}_{int(y)}"
    if key == "patch" and re.fullmatch(r"\s*\d+\s*,\s*\d+\s*", str(value)):  # the HSC-style "x,y"
        return str(value).replace(" ", "").replace(",", "_")
    return str(value).replace(" ", "")


class Repo:
    """The outputs of one workflow run, by data id.

    Parameters
    ----------
    root : path
        The run's results folder (config key ``results``, ``results`` by default).
    """

    def __init__(self, root="results"):
        self.root = Path(root)
        self._index_cache = None  # (mtime, input index) for raw files

    def __repr__(self):
        return f"Repo({str(self.root)!r})"

    @property
    def kinds(self):
        """Every kind of output :meth:`get` knows, with what it is."""
        return {k: v[2] for k, v in KINDS.items()}

    # --- paths and data ids --------------------------------------------------------------
    def _kind(self, kind):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
        return KINDS[kind]

    def _dataid(self, kind, dataid):
        pattern = self._kind(kind)[0]
        keys = _keys(pattern)
        if kind == "tract":
            keys = ["tract"]
        missing = [k for k in keys if k not in dataid]
        extra = [k for k in dataid if k not in keys]
        if missing or extra:
            need = ", ".join(keys) if keys else "no data id"
            raise TypeError(f"{kind} is identified by {need}; "
                            + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"))
        return {k: _normalise(k, dataid[k]) for k in keys}

    def path(self, kind, **dataid):
        """Path of an output (whether or not it exists)."""
        did = self._dataid(kind, dataid)
        if kind == "raw":
            found = self._raw_from_index(did)
            if found is not None:
                return found[0]
        if kind == "tract":
            did = {}
        return self.root / self._kind(kind)[0].format(**did)

    def ids(self, kind):
        """Data ids of the outputs of ``kind`` that exist, sorted: a list of dicts."""
        pattern = self._kind(kind)[0]
        if kind == "tract":
            sm = self.get("skymap") if (self.root / pattern).exists() else None
            return [{"tract": t.id} for t in sm] if sm is not None else []
        if kind == "raw" and (self.root / KINDS["index"][0]).exists():  # raw files can be anywhere: the index
            t = self._index_table(self.root / KINDS["index"][0])
            ids = [{"visit": int(v), "ccd": int(c)} for v, c in zip(t["visit"], t["ccd"])]
            return sorted((d for d in ids if self.path("raw", **d).exists()), key=lambda d: (d["visit"], d["ccd"]))
        keys = _keys(pattern)
        rx, done = "", set()
        for piece in re.split(r"({\w+})", pattern):  # literal text and {key} tokens, in turn
            key = piece[1:-1] if piece.startswith("{") else None
            if key is None:
                rx += re.escape(piece)
            elif key in done:
                rx += f"(?P={key})"
            else:
                rx += f"(?P<{key}>{_ID_REGEX[key]})"
                done.add(key)
        regex = re.compile(rx + "$")
        glob = re.sub(r"{\w+}", "*", pattern)
        out = []
        for p in self.root.glob(glob):
            m = regex.match(p.relative_to(self.root).as_posix())
            if m:
                out.append({k: _normalise(k, v) for k, v in m.groupdict().items()})
        return sorted(out, key=lambda d: [(_sort_key(d[k])) for k in keys])

    def _missing(self, kind, did, path):
        ids = self.ids(kind)
        if not ids:
            hint = ("" if self.root.exists() else f" (the folder {self.root} does not exist: is it the run's "
                    "results folder?)")
            return FileNotFoundError(f"{path} does not exist: there is no {kind} output in {self.root} yet{hint}; "
                                     f"run the workflow (snakemake --cores all) or check the folder")
        values = {k: sorted({d[k] for d in ids}, key=_sort_key) for k in ids[0]}
        avail = "; ".join(f"{k} {' '.join(str(v) for v in vs[:20])}{' ...' if len(vs) > 20 else ''}"
                          for k, vs in values.items())
        return FileNotFoundError(f"no {kind} for {_fmt(did)}: {path} does not exist. "
                                 f"{len(ids)} {kind} outputs exist ({avail}); repo.ids({kind!r}) lists them")

    def _existing(self, kind, dataid):
        did = self._dataid(kind, dataid)
        path = self.path(kind, **did)
        if not path.exists():
            raise self._missing(kind, did, path)
        return did, path

    # --- reading ----------------------------------------------------------------------------
    def get(self, kind, **dataid):
        """Read one output: CCDData for images, Table for tables, dict for JSON (see the module doc)."""
        did, path = self._existing(kind, dataid)
        how = self._kind(kind)[1]
        if how == "exposure":
            return _ccddata(path, kind=kind, dataid=did)
        if how == "table":
            return _table(path)
        if how == "json":
            with open(path) as fh:
                return json.load(fh)
        if how == "registry":
            from astropy.table import Table

            from .registry import read_registry, read_registry_provenance

            t = Table.from_pandas(read_registry(path))
            t.meta["provenance"] = read_registry_provenance(path)
            return t
        if how in ("skymap", "tract"):
            from .skymap import SkyMap

            with open(path) as fh:
                sm = SkyMap.from_dict(json.load(fh))
            if how == "skymap":
                return sm
            if did["tract"] not in sm.tracts:
                raise FileNotFoundError(f"tract {did['tract']} is not in {path}; tracts: {sorted(sm.tracts)}")
            return sm[did["tract"]]
        if how == "raw":
            return _raw(path, hdu=self._raw_hdu(did))
        if how == "hdulist":
            return self.open(kind, **did)
        raise AssertionError(how)

    def open(self, kind, **dataid):
        """The FITS file of an output as an :class:`~astropy.io.fits.HDUList` (use it in a ``with``)."""
        from astropy.io import fits

        _, path = self._existing(kind, dataid)
        if not str(path).endswith(".fits"):
            raise ValueError(f"{kind} is not a FITS file ({path}); use get()")
        return fits.open(path)

    def provenance(self, kind, **dataid):
        """The provenance recorded in an output: code version, config hash, input files."""
        _, path = self._existing(kind, dataid)
        return file_provenance(path)

    # --- raw files of file inputs -------------------------------------------------------------
    def _raw_from_index(self, did):
        index = self.root / KINDS["index"][0]
        if not index.exists():
            return None
        t = self._index_table(index)
        row = t[(t["visit"] == did["visit"]) & (t["ccd"] == did["ccd"])]
        if row.empty:
            return None
        raw = Path(str(row["raw"].iloc[0]))
        # paths in the index are relative to the run's working folder (the results folder's parent)
        for cand in (raw, self.root.parent / raw):
            if cand.exists():
                return cand, row["hdu"].iloc[0]
        return raw, row["hdu"].iloc[0]

    def _index_table(self, index):
        """The input index (visit, ccd, raw, hdu), read once per version of the file."""
        import pyarrow.parquet as pq

        stamp = index.stat().st_mtime_ns
        if self._index_cache is None or self._index_cache[0] != stamp:
            self._index_cache = (stamp, pq.read_table(index, columns=["visit", "ccd", "raw", "hdu"]).to_pandas())
        return self._index_cache[1]

    def _raw_hdu(self, did):
        found = self._raw_from_index(did)
        return 0 if found is None else _hdu(found[1])


def _hdu(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return str(v)


def _sort_key(v):
    if isinstance(v, str) and re.fullmatch(r"\d+_\d+", v):
        x, y = v.split("_")
        return (int(y), int(x))
    return (v,) if not isinstance(v, str) else (0, v)


def _fmt(did):
    return " ".join(f"{k}={v}" for k, v in did.items()) or "(no data id)"


def _ccddata(path, *, kind, dataid):
    import astropy.units as u
    from astropy.nddata import CCDData, VarianceUncertainty

    from . import masks
    from .errors import DataError
    from .io import read_exposure

    exp = read_exposure(path)
    if exp.is_empty:
        why = exp.meta.get("STATUS") or "no pixels"
        raise DataError(f"{kind} {_fmt(dataid)} ({path}) is empty ({why}): "
                        + ("the CCD failed calibration; its summary and the registry say why"
                           if kind == "calexp" else "no selected CCD of the visit lands on the patch"
                           if kind == "warp" else "no input covers it"), code="empty")
    meta = dict(exp.meta)
    meta["EXTRA_PLANES"] = ",".join(exp.extra)
    unit = u.Unit(str(meta.get("BUNIT", "nJy")))
    return CCDData(exp.image, unit=unit, wcs=exp.wcs, meta=meta,
                   uncertainty=VarianceUncertainty(exp.variance, unit=unit**2) if exp.variance is not None else None,
                   mask=(exp.mask & masks.UNUSABLE) != 0 if exp.mask is not None else None,
                   flags=exp.mask)


def _table(path):
    import astropy.units as u
    from astropy.table import Table

    from .io import read_table

    df = read_table(path)
    t = Table.from_pandas(df)
    t.meta.update(df.attrs.get("meta", {}))
    t.meta["provenance"] = df.attrs.get("provenance", {})
    for name in t.colnames:
        tokens = name.split("_")
        if ({"flux", "fluxerr"} & set(tokens)) and not ({"radius", "flags"} & set(tokens)):
            t[name].unit = u.nJy
        elif name in ("ra", "dec"):
            t[name].unit = u.deg
    return t


def _raw(path, *, hdu=0):
    import astropy.units as u
    from astropy.io import fits
    from astropy.nddata import CCDData
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        h = hdul[hdu].header
        data = np.asarray(hdul[hdu].data, dtype=np.float32)
    wcs = WCS(h) if h.get("CTYPE1") else None
    return CCDData(data, unit=u.adu, wcs=wcs, meta=dict(h))


# ------------------------------------------------------------------------------------------ provenance

def file_provenance(path):
    """The provenance recorded in an output file: ``{"version", "config_hash", "inputs"}``.

    Reads FITS headers (``PROVVER``, ``PROVCFG``, ``PRVINnnn``), parquet schema metadata, a
    ``provenance`` key of JSON files, the registry's ``provenance`` table and the
    ``skysnake_provenance`` text chunk of PNG figures. Values are ``None`` / empty when the
    file records none. Raises ``OSError`` if the file cannot be read and ``ValueError`` for a
    file type that holds no provenance.
    """
    p = str(path)
    if p.endswith(".parquet"):
        import pyarrow.parquet as pq

        md = pq.read_schema(p).metadata or {}
        return _complete(json.loads(md.get(b"skysnake_provenance", b"{}")))
    if p.endswith((".fits", ".fit", ".fits.gz", ".fits.fz")):
        from astropy.io import fits

        from .io import read_provenance

        return _complete(read_provenance(fits.getheader(p, 0)))
    if p.endswith(".json"):
        with open(p) as fh:
            d = json.load(fh)
        return _complete(d.get("provenance", {}) if isinstance(d, dict) else {})
    if p.endswith((".sqlite", ".db")):
        import sqlite3

        from .registry import read_registry_provenance

        if not Path(p).exists():
            raise FileNotFoundError(p)
        try:
            return read_registry_provenance(p)
        except sqlite3.DatabaseError as err:
            raise OSError(f"{p}: not a readable sqlite database ({err})") from err
    if p.endswith(".png"):
        from PIL import Image

        with Image.open(p) as im:
            text = getattr(im, "text", {}) or {}
        return _complete(json.loads(text.get("skysnake_provenance", "{}")))
    raise ValueError(f"{p}: provenance is recorded in FITS, parquet, JSON, sqlite and PNG outputs, not in this file")


def _complete(d):
    return {"version": d.get("version"), "config_hash": d.get("config_hash"), "inputs": list(d.get("inputs", []))}
