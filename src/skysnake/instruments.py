"""Reading raw CCDs of a camera through an instrument definition.

An instrument definition (the ``instrument`` config block) maps a camera's FITS
headers to skysnake's fields. The ``generic`` camera has one CCD per file (or
per HDU), with keywords for filter, exposure time, epoch, gain, read noise,
saturation, visit and CCD number, all configurable; the simulated survey writes
files of exactly this kind.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .errors import DataError
from .io import truncation_is_an_error

_SAFE_NAME = re.compile(r"[A-Za-z0-9_]+")

#: Defaults of the ``instrument`` config block (the generic camera).
DEFAULTS = {
    "name": "generic",
    "image_hdu": 0,
    "bpm_hdu": None,
    "keywords": {
        "filter": "FILTER",
        "exptime": "EXPTIME",
        "mjd": "MJD-OBS",
        "gain": "GAIN",
        "read_noise": "RDNOISE",
        "saturation": "SATURATE",
        "visit": "EXPNUM",
        "ccd": "CCDNUM",
    },
    "defaults": {"gain": 1.0, "read_noise": 5.0, "saturation": 65000.0},
}


@dataclass
class RawCCD:
    image: np.ndarray  # float32 ADU
    bpm: np.ndarray | None  # nonzero = camera defect
    meta: dict  # visit, ccd, filter, exptime, mjd, gain, read_noise, saturation
    wcs: WCS | None  # header WCS (approximate), None if the header has none


def merged_instrument(cfg):
    cfg = dict(cfg or {})
    out = {**DEFAULTS, **cfg}
    out["keywords"] = {**DEFAULTS["keywords"], **(cfg.get("keywords") or {})}
    out["defaults"] = {**DEFAULTS["defaults"], **(cfg.get("defaults") or {})}
    return out


def header_meta(header, instrument, *, path="?"):
    """skysnake's fields from a raw header; DataError naming the keyword when one is missing."""
    inst = merged_instrument(instrument)
    kw = inst["keywords"]
    meta = {}
    for field in ("visit", "ccd", "filter", "exptime", "mjd", "gain", "read_noise", "saturation"):
        key = kw[field]
        if key in header:
            meta[field] = header[key]
        elif field in inst["defaults"]:
            meta[field] = inst["defaults"][field]
        else:
            raise DataError(f"{path}: header has no {key!r} keyword (skysnake field {field!r}); "
                            f"set instrument.keywords.{field} in the config to the keyword this camera uses",
                            code="missing_keyword")
    try:
        meta["visit"] = int(meta["visit"])
        meta["ccd"] = int(meta["ccd"])
        for f in ("exptime", "mjd", "gain", "read_noise", "saturation"):
            meta[f] = float(meta[f])
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: a header keyword has the wrong type ({err})", code="bad_keyword") from err
    meta["filter"] = str(meta["filter"]).strip()
    if not _SAFE_NAME.fullmatch(meta["filter"]):
        # the filter name becomes part of output file names: never let a header write elsewhere
        raise DataError(f"{path}: filter name {meta['filter']!r} (keyword {kw['filter']!r}) is not a plain name "
                        "(letters, digits, underscore); fix the header or map it with instrument.keywords.filter",
                        code="bad_keyword")
    return meta


def check_saturation(image, saturation, *, path="?", max_fraction=0.5):
    """Raise :class:`DataError` (``code="saturated"``) when most of a raw CCD is at or above saturation.

    Parameters
    ----------
    image : ndarray
        Raw pixels (ADU).
    saturation : float
        Saturation level (ADU) from the header or the instrument defaults.
    path : str
        File named in the message.
    max_fraction : float
        Largest tolerated fraction of saturated finite pixels (bright stars saturate a few percent).
    """
    finite = np.isfinite(image)
    n = int(np.count_nonzero(finite))
    if n == 0:
        return
    level = np.float32(saturation) * np.float32(1 - 1e-6)  # the image may be float32-rounded
    frac = np.count_nonzero(image[finite] >= level) / n
    if frac > max_fraction:
        raise DataError(f"{path}: {100 * frac:.0f}% of the pixels are at or above the saturation level "
                        f"{saturation:g} ADU; the exposure is overexposed (twilight, a lamp, a very bright "
                        "source) - exclude this CCD", code="saturated")


def header_wcs(header):
    """The header's celestial WCS, or None when it has none usable."""
    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header, relax=True)
        except Exception:  # astropy raises several types for malformed WCS
            return None
    if not w.has_celestial or w.naxis != 2:
        return None
    return w


def read_raw(path, *, instrument, hdu=None):
    """Read one raw CCD. Every problem becomes a DataError that names the file."""
    inst = merged_instrument(instrument)
    hdu = inst["image_hdu"] if hdu is None else hdu
    try:
        with truncation_is_an_error(), fits.open(path, memmap=False) as hdul:
            h = hdul[hdu]
            header = h.header
            data = h.data
            if data is None:
                raise DataError(f"{path}[{hdu}]: HDU has no image data", code="no_data")
            image = np.asarray(data, dtype=np.float32)
            bpm = None
            if inst.get("bpm_hdu") is not None and inst["bpm_hdu"] in hdul:
                bpm = np.asarray(hdul[inst["bpm_hdu"]].data) != 0
    except DataError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as err:
        raise DataError(f"{path}: not a readable FITS file or truncated ({type(err).__name__}: {err}); "
                        "re-copy or re-download it", code="unreadable") from err
    if image.ndim != 2:
        raise DataError(f"{path}[{hdu}]: image has {image.ndim} dimensions, expected 2", code="bad_shape")
    if bpm is not None and bpm.shape != image.shape:
        raise DataError(f"{path}: bad-pixel mask shape {bpm.shape} differs from image {image.shape}",
                        code="bad_shape")
    meta = header_meta(header, inst, path=path)
    return RawCCD(image=image, bpm=bpm, meta=meta, wcs=header_wcs(header))
