"""Bad input never sinks the run: broken CCDs are recorded as failed, with the reason, and skipped."""

import numpy as np
import pytest
import yaml

from conftest import REPO, run_snakemake
from skysnake.io import read_table
from skysnake.registry import read_registry

pytestmark = pytest.mark.workflow

FAULTS = {  # (visit, ccd): (how it is broken, the registry code it must get)
    (1000, 1): ("nan", "no_data"),
    (1000, 2): ("zeros", "blank"),
    (1000, 3): ("no_wcs", "no_wcs"),
    (1001, 1): ("offset_far", None),  # no refcat match: code depends on how matching fails
    (1001, 2): ("truncated", "unreadable"),
    (1001, 3): ("random bytes", "unreadable"),
}


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["sim"].update(filters=["r"], visits_per_filter=2,
                      ccd_bad=[{"visit": v, "ccd": c, "kind": k} for (v, c), (k, _) in FAULTS.items()
                               if k in ("nan", "zeros", "no_wcs", "offset_far")])
    path = work / "faults.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_snakemake(work, "--cores", "2", "--configfile", str(path), "--until", "simulate_visit")
    raw = work / "results" / "sim" / "raw"
    data = (raw / "1001" / "raw-1001-2.fits").read_bytes()
    (raw / "1001" / "raw-1001-2.fits").write_bytes(data[: len(data) // 3])
    (raw / "1001" / "raw-1001-3.fits").write_bytes(np.random.default_rng(0).bytes(100_000))
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(path), timeout=900)
    return {"dir": work, "results": work / "results", "log": proc.stdout + proc.stderr}


def test_broken_ccds_are_failed_in_the_registry_with_their_reason(faulty_run):
    reg = read_registry(faulty_run["results"] / "registry.sqlite").set_index(["visit", "ccd"])
    for (visit, ccd), (kind, code) in FAULTS.items():
        row = reg.loc[(visit, ccd)]
        assert row.status == "failed", f"{kind} CCD {visit}/{ccd} was not failed"
        assert row.selected == 0 and row.reason
        if code:
            assert row.code == code, f"{kind}: code {row.code}, reason {row.reason}"
        assert f"raw-{visit}-{ccd}.fits" in row.reason  # the message names the file
        log = (faulty_run["dir"] / row.log_path).read_text()
        assert "failed" in log and row.reason.splitlines()[0][:40] in log
    healthy = reg[[k not in FAULTS for k in reg.index]]
    assert (healthy.status == "ok").all() and len(healthy) == 2


def test_the_run_goes_on_and_builds_the_catalog_from_the_good_ccds(faulty_run):
    cat = read_table(faulty_run["results"] / "objects" / "objects-0.parquet")
    assert len(cat) > 100
    assert np.isfinite(cat["r_mag"]).mean() > 0.9
