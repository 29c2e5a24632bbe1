"""Instrument presets, reference-catalog formats and the Gaia query cache (network mocked)."""


import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import REPO, shared_data
from skysnake import cameras, gaia
from skysnake.errors import ConfigError, DataError
from skysnake.ingest import index_files
from skysnake.instruments import merged_instrument, read_raw
from skysnake.refcat import load_refcat

RECORDED = REPO / "tests" / "data" / "gaia-cone-decam-testcase4.ecsv"


def test_presets_are_overridden_key_by_key():
    inst = merged_instrument({"name": "decam", "keywords": {"gain": "GAINB", "filter": None},
                              "defaults": {"saturation": 30000.0}})
    assert inst["image_hdu"] == "all" and inst["weight_file"] == ["_ooi_", "_oow_"]
    assert inst["keywords"]["gain"] == "GAINB" and inst["keywords"]["filter"] == "FILTER"
    assert inst["defaults"]["saturation"] == 30000.0 and inst["defaults"]["gain"] == 4.0
    assert merged_instrument({"name": "generic", "image_hdu": None})["image_hdu"] == 0
    with pytest.raises(ConfigError, match="instrument.name"):
        merged_instrument({"name": "hsc"})


def test_sdss_frame_back_to_counts_and_visit_per_filter():
    path = shared_data("sdss-4510-4-0030") / "frame-g-004510-4-0030.fits.bz2"
    raw = read_raw(path, instrument={"name": "sdss"})
    with fits.open(path) as hdul:
        frame, calib, hframe = hdul[0].data, hdul[1].data, hdul[0].header["FRAME"]
        counts, zp = cameras.sdss_counts(hdul)
    # counts - sky, times the calibration vector, is the frame again; the sky is ~100 counts
    sky = counts - frame / calib[None, :]
    assert 20 < np.median(sky) < 1000 and np.ptp(sky) < 0.5 * np.median(sky)
    assert np.allclose(raw.image, counts)
    m = raw.meta
    # FRAME is the frame sequence of the filter's CCD (38 for g in field 30: the filters scan the sky in turn)
    assert m["visit"] == (4510 * 1000 + hframe) * 10 + 1 and m["ccd"] == 4 and m["filter"] == "g"
    assert m["gain"] == cameras.SDSS_GAIN[4][1] and m["exptime"] == pytest.approx(53.907456)
    assert m["mjd"] == pytest.approx(53081.357568, abs=1e-5)  # TAI / 86400: 2004-03-17
    assert m["zeropoint"] == pytest.approx(22.5 - 2.5 * np.log10(np.median(calib)))


def test_decam_triplets_one_ccd_per_hdu():
    data = shared_data("decam-testcase4")
    index, skipped = index_files([str(data / "images/decam/CP/*/*/*_ooi_*.fits")], instrument={"name": "decam"})
    assert skipped.empty and len(index) == 9 and (index["hdu"] == 1).all()
    assert sorted(index["filter"]) == sorted("ggrrrzzzz")
    path = index.loc[index["visit"] == 630780, "raw"].item()
    raw = read_raw(path, instrument={"name": "decam"}, hdu=1)
    w = fits.getdata(path.replace("_ooi_", "_oow_"), 1)
    dq = fits.getdata(path.replace("_ooi_", "_ood_"), 1)
    good = w > 0
    assert np.allclose(raw.variance[good], 1.0 / w[good], rtol=1e-6)
    assert (raw.bpm == ((dq != 0) | ~good)).all()
    assert raw.meta["zeropoint"] == 29.915 and raw.meta["ccd"] == 33 and raw.meta["filter"] == "z"
    assert raw.meta["gain"] == pytest.approx(fits.getheader(path, 1)["GAINA"])
    assert raw.wcs.has_celestial  # TPV read through astropy


def test_calibobj_psf_fluxes_become_ab_magnitudes():
    path = shared_data("sdss-4510-4-0030") / "calibObj-004510-4-star.fits.gz"
    t = Table.read(path)
    ref = load_refcat(path, format="sdss_calibobj", epoch=2004.2)
    i = int(np.flatnonzero(t["PSFFLUX"][:, 2] > 100)[0])
    assert ref["r_mag"][i] == pytest.approx(22.5 - 2.5 * np.log10(t["PSFFLUX"][i, 2]))
    assert ref["r_magerr"][i] == pytest.approx(1.0857 / (t["PSFFLUX"][i, 2] * np.sqrt(t["PSFFLUX_IVAR"][i, 2])),
                                               rel=1e-3)
    assert len(ref) == 5232 and (ref["epoch"] == 2004.2).all()


class _Job:
    def __init__(self, table):
        self.table = table

    def get_results(self):
        return self.table


def test_gaia_cone_is_fetched_once_then_read_offline(tmp_path, monkeypatch):
    from astroquery.gaia import Gaia

    calls = []

    def recorded(coord, radius=None, table_name=None, columns=None, **kw):
        calls.append((coord.ra.deg, coord.dec.deg, radius.to("deg").value, table_name))
        return _Job(Table.read(RECORDED))

    monkeypatch.setattr(Gaia, "cone_search_async", recorded)
    kw = dict(ra=186.744, dec=25.462, radius_deg=0.2, cache=tmp_path / "cache")
    ref = gaia.gaia_refcat(**kw)
    assert len(calls) == 1 and calls[0][3] == "gaiadr3.gaia_source"
    n_bright = int((Table.read(RECORDED)["phot_g_mean_mag"] <= 21.0).sum())  # gaia_mag_limit
    assert 100 < len(ref) == n_bright and {"G_mag", "BP_mag", "RP_mag", "pmra", "epoch"} <= set(ref.columns)
    assert gaia.cache_path(kw["cache"], ra=186.744, dec=25.462, radius_deg=0.2).exists()

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(Gaia, "cone_search_async", offline)
    again = gaia.gaia_refcat(**kw)  # from the cache: no query
    assert len(calls) == 1 and again.equals(ref)
    with pytest.raises(DataError, match="cannot query Gaia.*not cached.*refcat.source 'file'") as err:
        gaia.gaia_refcat(**{**kw, "ra": 10.0})
    assert err.value.code == "no_refcat"


def test_gaia_colour_terms_map_g_bp_rp_to_a_camera_band():
    from skysnake.photocal import reference_magnitudes
    from skysnake.refcat import gaia_columns

    ref = gaia_columns(Table.read(RECORDED))
    term = {"g": {"primary": "G", "colour": ["BP", "RP"], "coeffs": [0.1, 0.5]}}
    mag, err = reference_magnitudes(ref, "g", colour_terms=term)
    c = ref["BP_mag"] - ref["RP_mag"]
    assert np.allclose(mag, ref["G_mag"] + 0.1 + 0.5 * c, equal_nan=True)
    ok = np.isfinite(mag)
    assert (err[ok] >= ref["G_magerr"][ok]).all()
