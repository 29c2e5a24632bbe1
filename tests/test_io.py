from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skysnake.errors import DataError
from skysnake.io import Exposure, FitsPlane, read_exposure, read_provenance, read_table, write_exposure, write_table


def _sip_wcs():
    h = fits.Header()
    h.update(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=10.0, CRPIX2=20.0,
             CD1_1=-5.5e-5, CD1_2=0.0, CD2_1=0.0, CD2_2=5.5e-5, A_ORDER=3, B_ORDER=3, A_3_0=1e-9, B_0_3=1e-9)
    return WCS(h)


def test_exposure_roundtrip_keeps_pixels_wcs_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 40)).astype(np.float32)
    exp = Exposure(img, (np.arange(1200, dtype=np.int32) % 256).reshape(30, 40), np.ones((30, 40), np.float32), _sip_wcs(),
                   meta={"FILTER": "r", "ZEROPOINT": 28.1, "CCDS": [1, 2]}, x0=5, y0=7)
    path = tmp_path / "e.fits"
    write_exposure(path, exp, provenance={"version": "x", "config_hash": "abc", "inputs": ["a.fits", "b.fits"]})
    back = read_exposure(path)
    np.testing.assert_array_equal(back.image, img)
    np.testing.assert_array_equal(back.mask, exp.mask)
    assert (back.x0, back.y0) == (5, 7) and back.meta["FILTER"] == "r"
    x, y = np.array([0.0, 39.0]), np.array([0.0, 29.0])
    np.testing.assert_allclose(back.wcs.all_pix2world(x, y, 0), exp.wcs.all_pix2world(x, y, 0), atol=1e-12)
    assert back.wcs.sip is not None
    assert read_provenance(fits.getheader(path))["inputs"] == ["a.fits", "b.fits"]


def test_empty_exposure_roundtrip(tmp_path):
    path = tmp_path / "empty.fits"
    write_exposure(path, Exposure(None, None, None, None, meta={"NCCD": 0}))
    back = read_exposure(path)
    assert back.is_empty and back.meta["NPIX"] == 0


@pytest.mark.filterwarnings("ignore:Error validating header")  # astropy warns, read_exposure raises
def test_truncated_fits_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "e.fits"
    write_exposure(path, Exposure(np.zeros((50, 50), np.float32), np.zeros((50, 50), np.int32),
                                  np.zeros((50, 50), np.float32), _sip_wcs()))
    data = path.read_bytes()
    # cut anywhere: inside a header, at an HDU boundary, inside a plane's data
    for cut in [*range(2880, len(data), 720), len(data) - 1]:
        path.write_bytes(data[:cut])
        for kw in ({}, {"lazy": True}):
            with pytest.raises(DataError, match="e.fits"):
                read_exposure(path, **kw)


def test_mask_takes_a_byte_per_pixel_on_disk_and_int32_once_read(tmp_path):
    exp = Exposure(np.zeros((20, 30), np.float32), np.full((20, 30), 0b1010_0101, np.int32),
                   np.ones((20, 30), np.float32), _sip_wcs())
    path = tmp_path / "m.fits"
    write_exposure(path, exp)
    with fits.open(path) as h:
        assert h["MASK"].header["BITPIX"] == 8 and h["IMAGE"].header["BITPIX"] == -32
    for kw in ({}, {"lazy": True}):
        back = read_exposure(path, **kw)
        assert back.mask.dtype == np.int32
        np.testing.assert_array_equal(back.mask[:], exp.mask)
    # a file from before (32-bit mask plane) reads the same
    with fits.open(path) as h:
        h["MASK"].data = h["MASK"].data.astype(np.int32)
        h.writeto(tmp_path / "old.fits")
    old = read_exposure(tmp_path / "old.fits")
    assert old.mask.dtype == np.int32
    np.testing.assert_array_equal(old.mask, exp.mask)


@pytest.mark.parametrize("bad", [256, -1])
def test_mask_bits_beyond_a_byte_are_refused_naming_the_file(tmp_path, bad):
    mask = np.zeros((5, 6), np.int32)
    mask[2, 3] = bad
    path = tmp_path / "big.fits"
    with pytest.raises(ValueError, match="big.fits: mask values must lie in 0..255"):
        write_exposure(path, Exposure(np.zeros((5, 6), np.float32), mask, np.ones((5, 6), np.float32), None))
    assert not path.exists() and not list(tmp_path.iterdir())


def _exposure_file(tmp_path, shape=(37, 23)):
    rng = np.random.default_rng(3)
    exp = Exposure(rng.normal(size=shape).astype(np.float32), rng.integers(0, 256, shape, dtype=np.int32),
                   rng.uniform(1, 2, shape).astype(np.float32), _sip_wcs(), meta={"FILTER": "r"}, x0=4, y0=9,
                   extra={"NIMAGE": rng.integers(0, 30, shape).astype(np.int16)})
    path = tmp_path / "lazy.fits"
    write_exposure(path, exp)
    return path, exp


@pytest.mark.parametrize("key", [np.s_[:], np.s_[5:17], np.s_[3:30:4], np.s_[::-3], np.s_[30:2:-5], np.s_[40:],
                                 np.s_[7], np.s_[-1], np.s_[2:9, 4:11], np.s_[::2, ::-3], np.s_[6, 3:],
                                 np.s_[..., 5], np.s_[4:6, ...], np.s_[1:3, [0, 5, 22]], np.s_[-37]])
def test_lazy_planes_read_what_numpy_indexing_gives(tmp_path, key):
    path, exp = _exposure_file(tmp_path)
    lazy = read_exposure(path, lazy=True)
    assert isinstance(lazy.image, FitsPlane) and not lazy.is_empty
    assert (lazy.x0, lazy.y0, lazy.meta["FILTER"]) == (4, 9, "r") and lazy.wcs.sip is not None
    for got, want in ((lazy.image, exp.image), (lazy.mask, exp.mask), (lazy.variance, exp.variance),
                      (lazy.extra["NIMAGE"], exp.extra["NIMAGE"])):
        assert got.shape == want.shape and got.dtype == want.dtype and got.size == want.size
        out = got[key]
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, want[key])
    np.testing.assert_array_equal(np.asarray(lazy.variance), exp.variance)


def test_lazy_plane_index_errors(tmp_path):
    path, _ = _exposure_file(tmp_path)
    plane = read_exposure(path, lazy=True).image
    for key in (37, -38, [1, 2], np.s_[1, 2, 3], (np.array([1, 2]), Ellipsis)):
        with pytest.raises(IndexError):
            plane[key]
    with pytest.raises(ValueError, match="without a copy"):
        np.asarray(plane, copy=False)


def _mapped(path):
    """Whether ``path`` is memory-mapped in this process (Linux)."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_lazy_planes_leave_nothing_mapped(tmp_path):
    path, exp = _exposure_file(tmp_path, shape=(400, 300))
    mapped = read_exposure(path, memmap=True)
    mapped.image[10:20].sum()
    assert _mapped(path)  # a long-lived map: its pages stay in the resident memory once read
    del mapped
    lazy = read_exposure(path, lazy=True)
    blocks = [lazy.image[r:r + 50] for r in range(0, 400, 50)]
    assert not _mapped(path)
    np.testing.assert_array_equal(np.concatenate(blocks), exp.image)
    with pytest.raises(ValueError, match="not both"):
        read_exposure(path, lazy=True, memmap=True)


def test_lazy_read_of_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.fits"
    write_exposure(empty, Exposure(None, None, None, None, meta={"NCCD": 0}))
    assert read_exposure(empty, lazy=True).is_empty
    path, _ = _exposure_file(tmp_path)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 2880 + 1000):  # in the middle; in the last plane (NIMAGE)
        path.write_bytes(data[:size])
        with pytest.raises(DataError, match="lazy.fits"):
            read_exposure(path, lazy=True)


def test_table_roundtrip_keeps_empty_columns_and_meta(tmp_path):
    df = pd.DataFrame({"a": pd.Series(dtype="float64"), "b": pd.Series(dtype="int64")})
    write_table(tmp_path / "t.parquet", df, meta={"filter": "g"})
    back = read_table(tmp_path / "t.parquet")
    assert list(back.columns) == ["a", "b"] and len(back) == 0 and back.attrs["meta"] == {"filter": "g"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
