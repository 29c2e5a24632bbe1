"""Reading and writing skysnake's file formats.

This is the only module of the core that touches the file system; everything
else works on arrays, WCS objects and tables.

Exposure files (calibrated CCDs, warps, coadds) are multi-extension FITS:

* HDU 0: empty primary holding metadata (``meta``) and provenance;
* ``IMAGE``: float32 pixels in nJy, with the WCS;
* ``MASK``: bit mask (bits in :mod:`skysnake.masks`), one byte per pixel in the file (BITPIX 8),
  ``int32`` once read (files with a 16- or 32-bit mask read the same);
* ``VARIANCE``: float32 variance in nJy^2;
* optional extra image HDUs (e.g. ``NIMAGE`` for coadds).

An *empty* exposure (a warp whose visit does not land on the patch, or whose
CCDs all failed) has ``image is None``; it is written with data-less HDUs and
``NPIX = 0`` in the primary header.

Tables are parquet files written with pyarrow; table metadata (``meta``) is
stored as JSON in the parquet schema metadata under ``b"skysnake"``.

A job that reads many large exposures a block of rows at a time (the coadd) opens them with
``read_exposure(path, lazy=True)``: each plane is then a :class:`FitsPlane`, which reads from the file
only the rows it is indexed with, so that nothing stays resident between blocks. A long-lived memory
map (``memmap=True``) does not do that: every page of it the job has touched stays counted in its
resident memory (RSS), which is what Slurm and cgroups limit.
"""

from __future__ import annotations

import json
import operator
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
    _check_mask_fits(path, exp.mask)
    planes = [("IMAGE", exp.image, np.float32), ("MASK", exp.mask, masks.FILE_DTYPE),
              ("VARIANCE", exp.variance, np.float32)]
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


def _check_mask_fits(path, mask):
    """Refuse a mask plane with values outside :data:`skysnake.masks.FILE_DTYPE` (they would wrap around)."""
    if mask is None:
        return
    m = np.asarray(mask)
    if m.dtype.kind not in "biu":
        raise ValueError(f"{path}: the mask plane must be integer bits, got dtype {m.dtype}")
    if m.dtype.itemsize > masks.FILE_DTYPE.itemsize or m.dtype.kind == "i":
        lo, hi = (int(m.min()), int(m.max())) if m.size else (0, 0)
        limit = np.iinfo(masks.FILE_DTYPE).max
        if lo < 0 or hi > limit:
            raise ValueError(f"{path}: mask values must lie in 0..{limit} (the bits of skysnake.masks), "
                             f"got {lo}..{hi}; clear the bits skysnake does not define before writing")


@contextmanager
def truncation_is_an_error():
    """Turn astropy's "File may have been truncated" warning into an OSError (a partial file is not data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
        try:
            yield
        except AstropyUserWarning as w:
            raise OSError(str(w)) from None


class FitsPlane:
    """A 2-D image plane of a FITS file, read from the file each time it is indexed.

    ``plane[rows]`` and ``plane[rows, cols]`` (``rows`` an int or a slice, with any step; ``cols`` any
    numpy index) memory-map just the rows spanned, copy the values asked for into a new array in native
    byte order, and unmap them: nothing of the file stays resident between two reads, so a consumer that
    reads block by block holds one block. ``numpy.asarray(plane)`` reads the whole plane.

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file.
    offset : int
        Byte offset of the plane's data in the file.
    shape : tuple of int
        ``(ny, nx)``.
    dtype : numpy.dtype
        dtype of the data as stored (big-endian, unscaled).
    """

    ndim = 2

    def __init__(self, path, *, offset, shape, dtype, as_dtype=None):
        self.path = os.fspath(path)
        self.offset = int(offset)
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 2:
            raise ValueError(f"{self.path}: FitsPlane needs a 2-D plane, got shape {self.shape}")
        self._stored = np.dtype(dtype)
        self.dtype = self._stored.newbyteorder("=") if as_dtype is None else np.dtype(as_dtype)

    @property
    def size(self):
        return self.shape[0] * self.shape[1]

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"FitsPlane({self.path!r}, offset={self.offset}, shape={self.shape}, dtype={self._stored})"

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError(f"{self!r} is read from its file: it cannot be viewed without a copy")
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        dots = [i for i, k in enumerate(key) if k is Ellipsis]
        if dots:
            i = dots[0]
            key = key[:i] + (slice(None),) * (3 - len(key)) + key[i + 1 :]
        if not key or len(key) > 2:
            raise IndexError(f"a FitsPlane takes 1 or 2 indices, got {key!r}")
        rows, cols = key[0], key[1:]
        ny, nx = self.shape
        if isinstance(rows, slice):
            start, stop, step = rows.indices(ny)
            span = range(start, stop, step)
            if not span:
                return np.empty((0, nx), self.dtype)[(slice(None),) + cols]
            lo, hi = min(span[0], span[-1]), max(span[0], span[-1]) + 1
            stop -= lo
            rel = slice(start - lo, stop if stop >= 0 else None, step)
        else:
            try:
                row = operator.index(rows)
            except TypeError:
                raise IndexError(f"a FitsPlane's rows are an int or a slice, got {rows!r}") from None
            if not -ny <= row < ny:
                raise IndexError(f"row {row} is out of range for a plane of {ny} rows")
            lo = row % ny
            hi, rel = lo + 1, 0
        itemsize = self._stored.itemsize
        mm = np.memmap(self.path, mode="r", dtype=self._stored, shape=(hi - lo, nx),
                       offset=self.offset + lo * nx * itemsize)
        try:
            return np.array(mm[(rel,) + cols], dtype=self.dtype)
        finally:
            del mm  # unmap now: its pages leave this process's resident memory


def _native(arr, dtype=None):
    """``arr`` in native byte order (and ``dtype`` if given), copied only if needed."""
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("=") if dtype is None else dtype)


def _lazy_plane(path, hdu, as_dtype=None):
    """A :class:`FitsPlane` on ``hdu``'s data, or its data read into memory when a plane cannot be mapped
    as stored (not 2-D, scaled by BSCALE/BZERO, or compressed); ``None`` for a data-less HDU. Reads give
    ``as_dtype`` (default: the stored dtype in native byte order)."""
    h = hdu.header
    if h.get("NAXIS", 0) == 0:
        return None
    if (h.get("NAXIS") != 2 or h.get("BSCALE", 1) != 1 or h.get("BZERO", 0) != 0
            or isinstance(hdu, fits.CompImageHDU)):
        return _native(hdu.data, as_dtype)
    info = hdu.fileinfo()
    stored = hdu.section.dtype.newbyteorder(">")
    shape = (h["NAXIS2"], h["NAXIS1"])
    if os.path.getsize(path) < info["datLoc"] + shape[0] * shape[1] * stored.itemsize:
        raise OSError(f"File may have been truncated: the {hdu.name} plane ends beyond the end of the file")
    return FitsPlane(path, offset=info["datLoc"], shape=shape, dtype=stored, as_dtype=as_dtype)


def read_exposure(path, *, planes=("IMAGE", "MASK", "VARIANCE", "NIMAGE"), memmap=False, lazy=False) -> Exposure:
    """Read an exposure written by :func:`write_exposure`.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    planes : sequence of str
        HDUs to read (those absent from the file are skipped).
    memmap : bool
        Leave the planes memory-mapped (big-endian, as stored; the mask as its file stores it). The pages
        read stay in the process's resident memory as long as the exposure lives.
    lazy : bool
        Make each plane a :class:`FitsPlane`, which reads only the rows it is indexed with and keeps
        nothing resident: for a consumer that reads many exposures block by block (the coadd).

    Returns
    -------
    Exposure

    Raises
    ------
    DataError
        If the file is unreadable or truncated (naming the file).
    """
    if memmap and lazy:
        raise ValueError("read_exposure: choose memmap=True or lazy=True, not both")
    try:
        with truncation_is_an_error(), fits.open(path, memmap=memmap) as hdul:
            meta = dict(hdul[0].header)
            data = {}
            for name in planes:
                if name in hdul:
                    as_dtype = masks.DTYPE if name == "MASK" else None
                    if lazy:
                        data[name] = _lazy_plane(path, hdul[name], as_dtype)
                        continue
                    arr = hdul[name].data
                    if arr is not None and not memmap:
                        arr = _native(arr, as_dtype)
                    data[name] = arr
            # every exposure file holds IMAGE, MASK and VARIANCE (data-less when empty): a missing one means
            # the file ends early (astropy only warns when a cut falls inside a header)
            missing = [name for name in planes if name in ("IMAGE", "MASK", "VARIANCE") and name not in data]
            if missing:
                raise OSError(f"no {', '.join(missing)} plane: the file is incomplete (truncated?) or was not "
                              "written by skysnake")
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
