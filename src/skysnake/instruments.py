"""Reading raw CCDs of a camera through an instrument definition.

An instrument definition (the ``instrument`` config block) maps a camera's FITS
headers to skysnake's fields. ``instrument.name`` selects a preset
(:mod:`skysnake.cameras`: ``generic``, ``sdss``, ``decam``) and every key of the
block overrides the preset's (a null key keeps it). The ``generic`` camera has one
CCD per file (or per HDU), with keywords for filter, exposure time, epoch, gain,
read noise, saturation, visit and CCD number, all configurable; the simulated
survey writes files of exactly this kind.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from . import cameras
from .errors import ConfigError, DataError
from .io import truncation_is_an_error

_SAFE_NAME = re.compile(r"[A-Za-z0-9_]+")

#: Defaults of the ``instrument`` config block: null means "the preset's value".
DEFAULTS = {
    "name": "generic",
    "image_hdu": None,
    "bpm_hdu": None,
    "inherit_primary": None,
    "filter_first_word": None,
    "weight_file": None,
    "mask_file": None,
    "complete_visits": None,
    "keywords": {k: None for k in ("filter", "exptime", "mjd", "gain", "read_noise", "saturation", "visit", "ccd",
                                   "zeropoint", "fwhm")},
    "defaults": {"gain": None, "read_noise": None, "saturation": None},
}


@dataclass
class RawCCD:
    image: np.ndarray  # float32 ADU
    bpm: np.ndarray | None  # nonzero = camera defect
    meta: dict  # visit, ccd, filter, exptime, mjd, gain, read_noise, saturation, zeropoint (hint or None)
    wcs: WCS | None  # header WCS (approximate), None if the header has none
    variance: np.ndarray | None = None  # ADU^2 from the camera's inverse-variance weight (inf where weight 0)


def merged_instrument(cfg):
    """The instrument definition: the preset named by ``cfg["name"]``, overridden by every non-null key of ``cfg``."""
    cfg = dict(cfg or {})
    name = cfg.get("name") or "generic"
    if name not in cameras.PRESETS:
        raise ConfigError(f"instrument.name: unknown instrument {name!r} (presets: {', '.join(cameras.PRESETS)}); "
                          "use 'generic' and set instrument.keywords for another camera")
    preset = cameras.PRESETS[name]
    out = {**{k: v for k, v in DEFAULTS.items() if k not in ("keywords", "defaults")},
           **{k: v for k, v in preset.items() if k not in ("keywords", "defaults")}}
    out.update({k: v for k, v in cfg.items() if k not in ("keywords", "defaults") and v is not None})
    out["name"] = name
    if out.get("image_hdu") is None:
        out["image_hdu"] = 0
    for block in ("keywords", "defaults"):
        out[block] = {**DEFAULTS[block], **preset.get(block, {}),
                      **{k: v for k, v in (cfg.get(block) or {}).items() if v is not None}}
    return out


def image_hdus(hdul, instrument):
    """HDU indices (or names) holding a CCD: every image HDU with 2-D data when ``image_hdu`` is "all"."""
    inst = merged_instrument(instrument)
    if inst["image_hdu"] != "all":
        return [inst["image_hdu"]]
    return [i for i, h in enumerate(hdul) if h.header.get("NAXIS", 0) == 2 and h.is_image]


def ccd_header(hdul, hdu, instrument):
    """The CCD's header: its HDU's, under the primary header's cards when the camera splits them."""
    inst = merged_instrument(instrument)
    header = hdul[hdu].header
    if inst.get("inherit_primary") and hdul.index_of(hdu) != 0:
        merged = hdul[0].header.copy()
        merged.strip()
        for card in header.cards:
            if card.keyword not in ("", "COMMENT", "HISTORY"):
                merged[card.keyword] = (card.value, card.comment)
        return merged
    return header


def header_meta(header, instrument, *, path="?"):
    """skysnake's fields from a raw header; DataError naming the keyword when one is missing."""
    inst = merged_instrument(instrument)
    kw = inst["keywords"]
    derived = {}
    cameras.derive_meta(inst["name"], header, derived)
    meta = {}
    for field in ("visit", "ccd", "filter", "exptime", "mjd", "gain", "read_noise", "saturation"):
        key = kw[field]
        if field in derived and (field in ("visit", "mjd") or key not in header):
            meta[field] = derived[field]
        elif key in header:
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
    if inst.get("filter_first_word") and meta["filter"]:
        meta["filter"] = meta["filter"].split()[0]
    zp = header.get(kw["zeropoint"]) if kw.get("zeropoint") else None
    try:
        meta["zeropoint"] = float(zp) if zp is not None and np.isfinite(float(zp)) and float(zp) > 0 else None
    except (TypeError, ValueError):
        meta["zeropoint"] = None
    fwhm = header.get(kw["fwhm"]) if kw.get("fwhm") else None
    try:
        meta["fwhm_px"] = float(fwhm) if fwhm is not None and float(fwhm) > 0 else None
    except (TypeError, ValueError):
        meta["fwhm_px"] = None
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
    """Read one raw CCD. Every problem becomes a DataError that names the file.

    Camera presets add their steps (:mod:`skysnake.cameras`): SDSS frames are turned back into
    counts (with a zeropoint hint), DECam's inverse-variance weight and data-quality mask are read
    from their companion files (``instrument.weight_file``, ``instrument.mask_file``).
    """
    inst = merged_instrument(instrument)
    hdu = inst["image_hdu"] if hdu is None else hdu
    if hdu == "all":
        hdu = 0
    zp_hint = None
    variance = None
    try:
        with truncation_is_an_error(), fits.open(path, memmap=False) as hdul:
            h = hdul[hdu]
            header = ccd_header(hdul, hdu, inst)
            data = h.data
            if data is None:
                raise DataError(f"{path}[{hdu}]: HDU has no image data", code="no_data")
            image = np.asarray(data, dtype=np.float32)
            if inst["name"] == "sdss":
                counts, zp_hint = cameras.sdss_counts(hdul)
                if counts is not None:
                    image = counts
            bpm = None
            if inst.get("bpm_hdu") is not None and inst["bpm_hdu"] in hdul:
                bpm = np.asarray(hdul[inst["bpm_hdu"]].data) != 0
            extname = h.name
        if inst.get("mask_file"):
            bpm = _companion_plane(path, inst["mask_file"], hdu, extname, "mask")
            bpm = bpm != 0
        if inst.get("weight_file"):
            w = _companion_plane(path, inst["weight_file"], hdu, extname, "weight").astype(np.float64)
            with np.errstate(divide="ignore"):
                variance = np.where(w > 0, 1.0 / w, np.inf).astype(np.float32)
    except DataError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as err:
        raise DataError(f"{path}: not a readable FITS file or truncated ({type(err).__name__}: {err}); "
                        "re-copy or re-download it", code="unreadable") from err
    if image.ndim != 2:
        raise DataError(f"{path}[{hdu}]: image has {image.ndim} dimensions, expected 2", code="bad_shape")
    for name, plane in (("bad-pixel mask", bpm), ("weight", variance)):
        if plane is not None and plane.shape != image.shape:
            raise DataError(f"{path}: {name} shape {plane.shape} differs from image {image.shape}", code="bad_shape")
    if bpm is not None and variance is not None:
        bpm = bpm | ~np.isfinite(variance)
    meta = header_meta(header, inst, path=path)
    if zp_hint is not None:
        meta["zeropoint"] = zp_hint
    return RawCCD(image=image, bpm=bpm, meta=meta, wcs=header_wcs(header), variance=variance)


def _companion_plane(path, replace, hdu, extname, what):
    other = cameras.companion(path, replace)
    if other is None:
        raise DataError(f"{path}: the file name has no {replace[0]!r}, so its {what} file cannot be found "
                        f"(instrument.{what}_file = {replace})", code="no_companion")
    try:
        with truncation_is_an_error(), fits.open(other, memmap=False) as hdul:
            key = extname if extname and extname != "PRIMARY" and extname in hdul else hdu
            return np.asarray(hdul[key].data)
    except FileNotFoundError as err:
        raise DataError(f"{path}: its {what} file {other} does not exist; copy it beside the image "
                        f"(instrument.{what}_file = {replace})", code="no_companion") from err
    except (OSError, ValueError, TypeError, IndexError, KeyError) as err:
        raise DataError(f"{other}: {what} file not readable ({type(err).__name__}: {err}); re-copy it",
                        code="unreadable") from err
