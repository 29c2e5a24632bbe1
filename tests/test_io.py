import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skysnake.errors import DataError
from skysnake.io import Exposure, read_exposure, read_provenance, read_table, write_exposure, write_table


def _sip_wcs():
    h = fits.Header()
    h.update(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=10.0, CRPIX2=20.0,
             CD1_1=-5.5e-5, CD1_2=0.0, CD2_1=0.0, CD2_2=5.5e-5, A_ORDER=3, B_ORDER=3, A_3_0=1e-9, B_0_3=1e-9)
    return WCS(h)


def test_exposure_roundtrip_keeps_pixels_wcs_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 40)).astype(np.float32)
    exp = Exposure(img, np.arange(1200, dtype=np.int32).reshape(30, 40), np.ones((30, 40), np.float32), _sip_wcs(),
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


def test_truncated_fits_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "e.fits"
    write_exposure(path, Exposure(np.zeros((50, 50), np.float32), np.zeros((50, 50), np.int32),
                                  np.zeros((50, 50), np.float32), _sip_wcs()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="e.fits"):
        read_exposure(path)


def test_table_roundtrip_keeps_empty_columns_and_meta(tmp_path):
    df = pd.DataFrame({"a": pd.Series(dtype="float64"), "b": pd.Series(dtype="int64")})
    write_table(tmp_path / "t.parquet", df, meta={"filter": "g"})
    back = read_table(tmp_path / "t.parquet")
    assert list(back.columns) == ["a", "b"] and len(back) == 0 and back.attrs["meta"] == {"filter": "g"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
