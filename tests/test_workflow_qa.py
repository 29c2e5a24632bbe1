"""Workflow tests of QA, the report, provenance and skysnake.Repo on the demo run (the session's `demo` fixture).

The demo runs once per test session (conftest.py); these tests read its outputs and run
`snakemake --report` on it.
"""

import doctest
import json
import re

import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.table import Table
from conftest import REPO, run_snakemake

import skysnake
from skysnake import qa
from skysnake.astrometry import propagate_refcat
from skysnake.io import read_exposure, read_table
from skysnake.repo import KINDS, file_provenance

pytestmark = pytest.mark.workflow

QA_RULES = ["qa_visit", "qa_color", "qa_tract", "qa_truth"]


def test_dry_run_lists_the_qa_rules(demo):
    for rule in QA_RULES:
        assert re.search(rf"^{rule}\s+\d+", demo["dry"], re.MULTILINE), f"rule {rule} missing from the dry run"


def _qa_figures(results):
    return sorted((results / "qa").rglob("*.png"))


def test_every_qa_figure_is_made(demo):
    res = demo["results"]
    repo = skysnake.Repo(res)
    visits = sorted({d["visit"] for d in repo.ids("calexp")})
    patches = sorted({d["patch"] for d in repo.ids("coadd")})
    names = {p.relative_to(res / "qa").as_posix() for p in _qa_figures(res)}
    expected = {f"visit/{v}/{k}-{v}.png" for v in visits for k in ("astrometry", "focalplane")}
    expected |= {f"tract/0/color/color-0-{p}.png" for p in patches}
    expected |= {f"tract/0/{k}-0.png" for k in ("depth", "coverage", "counts", "colorcolor", "colormag",
                                                 "truth-completeness", "truth-photometry")}
    assert names == expected


def test_report_holds_every_figure_with_its_caption(demo, tmp_path):
    report = tmp_path / "report.html"
    run_snakemake(demo["dir"], "--report", str(report), timeout=300)
    html = report.read_text()
    assert len(html) > 1_000_000  # the figures are embedded
    for png in _qa_figures(demo["results"]):
        assert png.name in html, f"{png.name} is not in the report"
    # every caption, rendered (Jinja wildcards filled in): its first words appear
    firsts = {"astrometry": "Astrometric residuals of visit 1001", "focal_plane": "Calibration of each CCD of visit",
              "color": "Colour image of patch 1_1 of tract 0", "depth": "Depth of the coadds of tract 0",
              "coverage": "Coverage of tract 0", "counts": "Differential number counts in tract 0",
              "colorcolor": "Colour-colour diagram of the objects of tract 0",
              "colormag": "Colour-magnitude diagrams of the objects of tract 0",
              "truth_completeness": "Completeness of the object catalog of tract 0",
              "truth_photometry": "Photometry of the point sources of tract 0"}
    assert set(firsts) == {p.stem for p in (REPO / "report").glob("*.rst")} - {"workflow"}
    for name, text in firsts.items():
        assert text in html, f"caption {name} missing from the report"
    assert "gathers the quality-assurance" in html  # the workflow description
    for category in ('"Visits"', '"Tract 0"', '"visit 1001"', '"colour images"', '"truth comparison (simulation)"'):
        assert category in html


def test_every_output_records_its_provenance(demo):
    """Every FITS, parquet, JSON, sqlite and PNG output records the code version, a config hash and its inputs."""
    work, res = demo["dir"], demo["results"]
    files = [p for ext in ("fits", "parquet", "json", "sqlite", "png") for p in res.rglob(f"*.{ext}")]
    kinds_seen = set()
    versions = set()
    no_inputs = {"truth.parquet", "refcat.parquet", "skymap.json"}  # made from the config alone
    for path in files:
        prov = file_provenance(path)
        rel = path.relative_to(res).as_posix()
        assert prov["version"] and prov["version"].startswith(skysnake.__version__), rel
        assert re.fullmatch(r"[0-9a-f]{16}", prov["config_hash"] or ""), rel
        if path.name not in no_inputs:
            assert prov["inputs"], f"{rel} records no input"
        for inp in prov["inputs"]:
            assert (work / inp).exists(), f"{rel}: input {inp} does not exist"
        versions.add(prov["version"])
        for kind, (pattern, _, _) in KINDS.items():
            if re.fullmatch(re.sub(r"\\{\w+\\}", "[^/]+", re.escape(pattern)), rel):
                kinds_seen.add(kind)
    assert versions and len(versions) == 1  # one run, one code version
    assert kinds_seen >= set(KINDS) - {"tract"}, set(KINDS) - kinds_seen
    # the coadd's inputs are its warps, the object catalog's its forced tables and references
    prov = file_provenance(res / "objects" / "objects-0.parquet")
    assert any("/forced-" in p for p in prov["inputs"]) and any("/reference-" in p for p in prov["inputs"])


def test_repo_reads_the_demo_outputs(demo):
    res = demo["results"]
    repo = skysnake.Repo(res)
    d = repo.ids("coadd")[0]
    c = repo.get("coadd", **d)
    assert isinstance(c, CCDData) and str(c.unit) == "nJy"
    raw = read_exposure(repo.path("coadd", **d))
    assert np.array_equal(c.data, raw.image) and np.array_equal(c.uncertainty.array, raw.variance)
    objects = repo.get("objects", tract=0)
    assert isinstance(objects, Table) and len(objects) == len(read_table(res / "objects" / "objects-0.parquet"))
    assert len(repo.ids("calexp")) == len(repo.get("registry"))
    calexp = repo.get("calexp", **repo.ids("calexp")[0])
    assert calexp.wcs.has_distortion  # the fitted TAN-SIP WCS
    tract = repo.get("tract", tract=0)
    assert {d["patch"] for d in repo.ids("coadd")} <= set(tract.patches)


def test_astrometric_residuals_agree_with_the_calibration(demo):
    """The QA residuals (refcat moved to each exposure's epoch) reproduce each CCD's fitted rms."""
    repo = skysnake.Repo(demo["results"])
    refcat = read_table(repo.path("refcat", tract=0))
    for d in repo.ids("summary"):
        s = repo.get("summary", **d)
        res = qa.astrometric_residuals(read_table(repo.path("sources", **d)), refcat, mjd=s["mjd"], ccd=d["ccd"])
        rms = qa.residual_stats(res)["rms"]
        assert rms == pytest.approx(s["astrom_rms_arcsec"] * 1000, rel=0.01), d


def test_depth_map_agrees_with_the_completeness_of_point_sources(demo):
    """Half the point sources at the 5-sigma depth are detected (matched-filter detection at 5 sigma)."""
    res = demo["results"]
    repo = skysnake.Repo(res)
    with repo.open("depth", tract=0) as hdul:
        maps = qa.depth_maps_from_hdulist(hdul)
    cat = read_table(res / "objects" / "objects-0.parquet")
    truth = read_table(res / "sim" / "truth.parquet")
    mjd = float(read_table(res / "ingest" / "index.parquet")["mjd"].mean())
    ra, dec = propagate_refcat(truth, mjd=mjd)
    truth = truth.assign(ra=ra, dec=dec)
    found = qa.match_to_truth(cat, truth, radius_arcsec=0.5)[0] >= 0
    star = truth["is_star"].to_numpy(bool)
    diffs = {}
    for f in maps.filters:
        cov = maps.covered(f, truth["ra"], truth["dec"]) & star
        t = qa.completeness(truth[f"mag_{f}"][cov], found[cov], bins=np.arange(16, 27.01, 0.25))
        diffs[f] = qa.magnitude_at_completeness(t, 0.5) - maps.median_m5(f)
    print("50% completeness - median 5-sigma depth:", json.dumps({f: round(v, 3) for f, v in diffs.items()}))
    assert all(abs(v) < 0.5 for v in diffs.values()), diffs
    assert abs(np.mean(list(diffs.values()))) < 0.3, diffs


def test_readme_python_example_runs_on_the_demo(demo, monkeypatch):
    """The README's Repo example, run as a doctest in the demo's folder."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(>>> import skysnake.*?)```", text, re.DOTALL)
    assert block, "README has no Repo example"
    monkeypatch.chdir(demo["dir"])
    test = doctest.DocTestParser().get_doctest(block.group(1), {}, "README", "README.md", 0)
    out = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
