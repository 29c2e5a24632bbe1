"""skysnake.Repo (outputs by data id, as astropy objects) and file_provenance, on a small synthetic results folder."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.table import Table
from conftest import REPO

import skysnake
from skysnake import masks
from skysnake.errors import DataError
from skysnake.io import (
    Exposure,
    add_provenance,
    write_exposure,
    write_hdulist,
    write_json,
    write_table,
)
from skysnake.registry import write_registry
from skysnake.repo import KINDS, file_provenance
from skysnake.skymap import Tract

PROV = {"version": "0.1.0+gabc", "config_hash": "0123456789abcdef", "inputs": ["results/warp/a.fits"]}
TRACT = Tract(id=0, ra=150.0, dec=2.0, pixel_scale=0.2, patch_inner=40, patch_border=4, npatch_x=2, npatch_y=2)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder with a few outputs of each format, as the workflow writes them."""
    root = tmp_path_factory.mktemp("run") / "results"
    rng = np.random.default_rng(0)
    for patch in ("0_0", "1_0", "1_1"):
        for f in ("g", "r"):
            shape = TRACT.patch_shape(patch)
            image = rng.normal(0, 1, shape).astype(np.float32)
            mask = np.zeros(shape, np.int32)
            mask[3, 5] = masks.SAT
            mask[4, 6] = masks.REJECTED  # informative, not unusable
            exp = Exposure(image, mask, np.full(shape, 4.0, np.float32), TRACT.patch_wcs(patch),
                           meta={"FILTER": f, "PATCH": patch, "FWHM": 0.8, "BUNIT": "nJy"},
                           extra={"NIMAGE": np.full(shape, 3, np.int16)})
            write_exposure(root / f"coadd/0/{patch}/coadd-0-{patch}-{f}.fits", exp, provenance=PROV)
    write_exposure(root / "warp/0/1001/warp-0-1_1-1001.fits", Exposure(None, None, None, None, meta={"NCCD": 0}),
                   provenance=PROV)
    cat = pd.DataFrame({"object_id": [1, 2], "ra": [150.0, 150.01], "dec": [2.0, 2.01], "patch": ["0_0", "1_0"],
                        "g_flux": [100.0, 200.0], "g_fluxerr": [1.0, 2.0], "g_mag": [26.4, 25.6],
                        "g_flags": [0, 0], "is_star": [True, False]})
    write_table(root / "objects/objects-0.parquet", cat, meta={"tract": 0}, provenance=PROV)
    write_table(root / "calexp/1001/sources-1001-2.parquet",
                pd.DataFrame({"ra": [150.0], "dec": [2.0], "flux": [5.0], "flux_radius": [2.0],
                              "flux_aper_1p0": [3.0]}), provenance=PROV)
    write_json(root / "calexp/1001/summary-1001-2.json", {"visit": 1001, "ccd": 2, "zeropoint": 28.2,
                                                          "provenance": PROV})
    write_json(root / "skymap.json", {"tracts": [TRACT.to_dict()], "overlaps": {}, "provenance": PROV})
    write_registry(root / "registry.sqlite", [{"visit": 1001, "ccd": 2, "status": "ok", "selected": 1,
                                               "zeropoint": 28.2}], provenance=PROV)
    raw = fits.HDUList([fits.PrimaryHDU(np.ones((8, 6), np.float32))])
    add_provenance(raw[0].header, PROV)
    write_hdulist(root / "sim/raw/1001/raw-1001-2.fits", raw)
    return root


def test_get_coadd_returns_ccddata_with_units_wcs_variance_and_mask(results):
    repo = skysnake.Repo(results)
    c = repo.get("coadd", tract=0, patch="1_0", filter="r")
    assert isinstance(c, CCDData)
    assert str(c.unit) == "nJy" and c.shape == TRACT.patch_shape("1_0")
    assert isinstance(c.uncertainty, VarianceUncertainty) and np.all(c.uncertainty.array == 4.0)
    assert c.mask[3, 5] and not c.mask[4, 6] and c.mask.sum() == 1  # SAT is unusable, REJECTED is not
    assert c.flags[4, 6] == masks.REJECTED
    ra, dec = c.wcs.all_pix2world([[10, 20]], 0)[0]
    assert np.allclose([ra, dec], TRACT.patch_wcs("1_0").all_pix2world([[10, 20]], 0)[0])
    assert c.meta["FWHM"] == 0.8 and c.meta["PROVCFG"] == PROV["config_hash"]
    # patch as a tuple, tract as a string: the same file
    assert np.array_equal(repo.get("coadd", tract="0", patch=(1, 0), filter="r").data, c.data)
    with repo.open("coadd", tract=0, patch="1_0", filter="r") as hdul:
        assert hdul["NIMAGE"].data[0, 0] == 3


def test_get_tables_json_registry_skymap_and_raw(results):
    repo = skysnake.Repo(results)
    t = repo.get("objects", tract=0)
    assert isinstance(t, Table) and len(t) == 2
    assert str(t["g_flux"].unit) == "nJy" and str(t["g_fluxerr"].unit) == "nJy" and str(t["ra"].unit) == "deg"
    assert t["g_mag"].unit is None and t["g_flags"].unit is None
    assert t.meta["tract"] == 0 and t.meta["provenance"] == PROV
    s = repo.get("sources", visit=1001, ccd=2)
    assert str(s["flux_aper_1p0"].unit) == "nJy" and s["flux_radius"].unit is None  # a radius is in pixels
    assert repo.get("summary", visit=1001, ccd=2)["zeropoint"] == 28.2
    reg = repo.get("registry")
    assert list(reg["visit"]) == [1001] and reg.meta["provenance"] == PROV
    assert repo.get("tract", tract=0) == TRACT
    assert repo.get("skymap")[0] == TRACT
    raw = repo.get("raw", visit=1001, ccd=2)
    assert str(raw.unit) == "adu" and raw.shape == (8, 6)


def test_ids_list_existing_outputs_in_order(results):
    repo = skysnake.Repo(results)
    ids = repo.ids("coadd")
    assert len(ids) == 6
    assert ids[0] == {"tract": 0, "patch": "0_0", "filter": "g"}
    assert [d["patch"] for d in ids[::2]] == ["0_0", "1_0", "1_1"]  # row-major: y, then x
    assert repo.ids("calexp") == [] and repo.ids("tract") == [{"tract": 0}]
    assert repo.ids("summary") == [{"visit": 1001, "ccd": 2}]


def test_errors_name_the_missing_file_and_the_ids_that_exist(results):
    repo = skysnake.Repo(results)
    with pytest.raises(FileNotFoundError) as e:
        repo.get("coadd", tract=0, patch="0_1", filter="r")
    msg = str(e.value)
    assert "coadd-0-0_1-r.fits does not exist" in msg and "6 coadd outputs exist" in msg
    assert "patch 0_0 1_0 1_1" in msg and "filter g r" in msg
    with pytest.raises(FileNotFoundError, match="no calexp output .* yet"):
        repo.get("calexp", visit=1001, ccd=2)
    with pytest.raises(TypeError, match="identified by tract, patch, filter; missing filter"):
        repo.get("coadd", tract=0, patch="0_0")
    with pytest.raises(TypeError, match="unexpected filter"):
        repo.get("summary", visit=1001, ccd=2, filter="r")
    with pytest.raises(ValueError, match="unknown kind 'coad'.*coadd"):
        repo.get("coad", tract=0)
    with pytest.raises(DataError, match="empty"):
        repo.get("warp", tract=0, patch="1_1", visit=1001)
    with pytest.raises(FileNotFoundError, match="does not exist: is it the run's results folder"):
        skysnake.Repo(results.parent / "nowhere").get("objects", tract=0)


def test_file_provenance_reads_every_format(results, tmp_path):
    for rel in ("coadd/0/0_0/coadd-0-0_0-g.fits", "objects/objects-0.parquet", "calexp/1001/summary-1001-2.json",
                "skymap.json", "registry.sqlite", "sim/raw/1001/raw-1001-2.fits"):
        assert file_provenance(results / rel) == PROV, rel
    # a registry written without provenance, and a table without: empty values, not an error
    write_registry(tmp_path / "r.sqlite", [])
    assert file_provenance(tmp_path / "r.sqlite") == {"version": None, "config_hash": None, "inputs": []}
    write_table(tmp_path / "t.parquet", pd.DataFrame({"a": [1]}))
    assert file_provenance(tmp_path / "t.parquet")["inputs"] == []
    with pytest.raises(ValueError, match="not in this file"):
        file_provenance(tmp_path / "notes.txt")
    (tmp_path / "bad.sqlite").write_text("not a database")
    with pytest.raises(OSError):
        file_provenance(tmp_path / "bad.sqlite")
    assert skysnake.Repo(results).provenance("objects", tract=0) == PROV


def test_provenance_command_prints_any_output(results):
    proc = subprocess.run([sys.executable, "-m", "skysnake.cli", "provenance", str(results / "registry.sqlite"),
                           str(results / "skymap.json")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(b) for b in re.split(r"(?<=})\n(?={)", proc.stdout.strip())]
    assert [r["config_hash"] for r in records] == [PROV["config_hash"]] * 2
    proc = subprocess.run([sys.executable, "-m", "skysnake.cli", "provenance", str(results / "nope.fits")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "nope.fits" in proc.stderr


def test_kinds_follow_the_workflow_path_patterns():
    """Repo's patterns are the rules' (rules/common.smk, rules/qa.smk): a renamed output would break Repo."""
    text = (REPO / "rules" / "common.smk").read_text() + (REPO / "rules" / "qa.smk").read_text()
    smk = {name: pat.replace("{{", "{").replace("}}", "}")
           for name, pat in re.findall(r'^(\w+) = f"\{(?:R|QA)\}/([^"]+)"', text, re.MULTILINE)}
    smk["QA_DEPTH_MAPS"] = "qa/" + smk["QA_DEPTH_MAPS"]
    names = {"raw": "RAW_SIM", "truth_ccd": "TRUTH_CCD", "index": "INDEX", "refcat": "REFCAT", "calexp": "CALEXP",
             "sources": "SOURCES", "summary": "SUMMARY", "registry": "REGISTRY", "skymap": "SKYMAP",
             "warp": "WARP", "coadd": "COADD", "detect": "DETECT", "merged": "MERGED", "measure": "MEASURE",
             "reference": "REFERENCE", "forced": "FORCED", "objects": "OBJECTS", "depth": "QA_DEPTH_MAPS"}
    for kind, name in names.items():
        assert KINDS[kind][0] == smk[name], kind
    assert re.search(r'f"\{R\}/sim/truth.parquet"', (REPO / "rules" / "sim.smk").read_text())
    assert KINDS["truth"][0] == "sim/truth.parquet"
