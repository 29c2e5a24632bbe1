"""Reading and writing skysnake's file formats.

This is the only module of the core that touches the file system; everything
else works on arrays, WCS objects and tables.

Exposure files (calibrated CCDs, warps, coadds) are multi-extension FITS:

* HDU 0: empty primary holding metadata (``meta``) and provenance;
* ``IMAGE``: float32 pixels in nJy, with the WCS;
* ``MASK``: int32 bit mask (bits in :mod:`skysnake.masks`);
* ``VARIANCE``: float32 variance in nJy^2;
* optional extra image HDUs (e.g. ``NIMAGE`` for coadds).

An *empty* exposure (a warp whose visit does not land on the patch, or whose
CCDs all failed) has ``image is None``; it is written with data-less HDUs and
``NPIX = 0`` in the primary header.

Tables are parquet files written with pyarrow; table metadata (``meta``) is
stored as JSON in the parquet schema metadata under ``b"skysnake"``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from . import masks
from .errors import DataError


@dataclass
class Exposure:
    """Image, mask and variance planes on one pixel grid with its WCS.

    ``x0, y0`` place the array in a parent grid (a patch's outer box for warps
    and coadds; 0 for CCDs). ``extra`` holds additional named planes.
    """

    image: np.ndarray | None
    mask: np.ndarray | None
    variance: np.ndarray | None
    wcs: WCS | None
    meta: dict = field(default_factory=dict)
    x0: int = 0
    y0: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def is_empty(self):
        return self.image is None or self.image.size == 0


def _atomic_path(path):
    """A temporary file name beside ``path``: write there, then ``os.replace``.

    A job killed mid-write leaves a stray temp file, never a truncated output
    that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def _meta_to_header(meta, header):
    for key, value in meta.items():
        if isinstance(value, (list, tuple, dict)):
            value = json.dumps(value)
        if value is None:
            continue
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            value = str(value)
        key = key.upper()
        if len(key) > 8:
            header[f"HIERARCH {key}"] = value
        else:
            header[key] = value


def add_provenance(header, provenance):
    """Record provenance in a FITS header: PROVVER, PROVCFG and one PRVINnnn card per input file."""
    header["PROVVER"] = (str(provenance.get("version", "")), "skysnake version (git commit)")
    header["PROVCFG"] = (str(provenance.get("config_hash", "")), "hash of the config")
    for i, p in enumerate(provenance.get("inputs", [])):
        header[f"PRVIN{i:03d}"] = str(p)


def read_provenance(header):
    """Provenance record from a FITS header written by :func:`add_provenance`."""
    inputs = [header[k] for k in header if k.startswith("PRVIN")]
    return {"version": header.get("PROVVER"), "config_hash": header.get("PROVCFG"), "inputs": inputs}


def write_exposure(path, exp: Exposure, *, provenance: dict | None = None):
    """Write an :class:`Exposure` atomically to ``path`` (multi-extension FITS)."""
    primary = fits.PrimaryHDU()
    hdr = primary.header
    _meta_to_header(exp.meta, hdr)
    hdr["X0"] = (int(exp.x0), "x offset of pixel (0,0) in the parent grid")
    hdr["Y0"] = (int(exp.y0), "y offset of pixel (0,0) in the parent grid")
    hdr["NPIX"] = (0 if exp.is_empty else int(exp.image.size), "number of pixels (0: empty)")
    for key, value, comment in masks.header_cards():
        hdr[key] = (value, comment)
    if provenance:
        add_provenance(hdr, provenance)
    wcs_header = exp.wcs.to_header(relax=True) if exp.wcs is not None else fits.Header()
    if exp.wcs is not None and exp.wcs.sip is not None:
        # astropy drops the -SIP suffix from CTYPE in to_header unless relax; make it explicit
        wcs_header["CTYPE1"] = "RA---TAN-SIP"
        wcs_header["CTYPE2"] = "DEC--TAN-SIP"
    hdus = [primary]
    planes = [("IMAGE", exp.image, np.float32), ("MASK", exp.mask, np.int32), ("VARIANCE", exp.variance, np.float32)]
    planes += [(name, arr, arr.dtype if arr is not None else np.float32) for name, arr in exp.extra.items()]
    for name, arr, dtype in planes:
        data = None if arr is None else np.ascontiguousarray(arr, dtype=dtype)
        hdu = fits.ImageHDU(data=data, header=wcs_header.copy(), name=name)
        hdus.append(hdu)
    tmp = _atomic_path(path)
    try:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def truncation_is_an_error():
    """Turn astropy's "File may have been truncated" warning into an OSError (a partial file is not data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
        try:
            yield
        except AstropyUserWarning as w:
            raise OSError(str(w)) from None


def read_exposure(path, *, planes=("IMAGE", "MASK", "VARIANCE", "NIMAGE"), memmap=False) -> Exposure:
    """Read an exposure written by :func:`write_exposure`.

    With ``memmap=True`` the planes stay memory-mapped (big-endian, as stored):
    a consumer that reads them block by block (the coadd) never holds them whole.
    Raises :class:`DataError` naming the file if it is unreadable.
    """
    try:
        with truncation_is_an_error(), fits.open(path, memmap=memmap) as hdul:
            meta = dict(hdul[0].header)
            data = {}
            for name in planes:
                if name in hdul:
                    arr = hdul[name].data
                    if arr is not None and not memmap:
                        arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("="))
                    data[name] = arr
            wcs = None
            if "IMAGE" in hdul and hdul["IMAGE"].header.get("CTYPE1"):
                wcs = WCS(hdul["IMAGE"].header, relax=True)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{path}: cannot read exposure ({err}); delete it and rerun the rule that makes it",
                        code="unreadable") from err
    extra = {k: v for k, v in data.items() if k not in ("IMAGE", "MASK", "VARIANCE")}
    return Exposure(image=data.get("IMAGE"), mask=data.get("MASK"), variance=data.get("VARIANCE"), wcs=wcs,
                    meta=meta, x0=int(meta.get("X0", 0)), y0=int(meta.get("Y0", 0)), extra=extra)


def write_table(path, table, *, meta: dict | None = None, provenance: dict | None = None):
    """Write an astropy Table or pandas DataFrame atomically as parquet.

    ``meta`` (JSON-serialisable) is stored in the parquet schema metadata.
    An empty table keeps its columns and dtypes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from astropy.table import Table

    if isinstance(table, Table):
        table = table.to_pandas()  # astropy Table -> pandas, preserves dtypes
    at = pa.Table.from_pandas(table, preserve_index=False)
    md = dict(at.schema.metadata or {})
    md.pop(b"pandas", None)
    md[b"skysnake"] = json.dumps(meta or {}, default=_json_default).encode()
    if provenance:
        md[b"skysnake_provenance"] = json.dumps(provenance, default=_json_default).encode()
    at = at.replace_schema_metadata(md)
    tmp = _atomic_path(path)
    try:
        pq.write_table(at, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_table(path, *, columns=None):
    """Read a parquet table as a pandas DataFrame; ``df.attrs["meta"]`` holds its metadata."""
    import pyarrow.parquet as pq

    try:
        at = pq.read_table(path, columns=columns)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read table ({err})", code="unreadable") from err
    df = at.to_pandas()
    md = at.schema.metadata or {}
    df.attrs["meta"] = json.loads(md.get(b"skysnake", b"{}"))
    df.attrs["provenance"] = json.loads(md.get(b"skysnake_provenance", b"{}"))
    return df


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_json(path, obj):
    """Write ``obj`` as JSON atomically (sidecars, truth records)."""
    tmp = _atomic_path(path)
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True, default=_json_default)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path):
    with open(path) as fh:
        return json.load(fh)


def write_hdulist(path, hdul):
    """Write an astropy HDUList atomically."""
    tmp = _atomic_path(path)
    try:
        hdul.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
