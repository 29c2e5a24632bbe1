"""The benchmark harness's own measuring functions (benchmarks/), on analytic inputs; no peer is run."""

import numpy as np
import pytest

from conftest import REPO


@pytest.fixture()
def bench(monkeypatch):
    """The benchmark's modules, imported as ``python benchmarks/bench.py`` imports them (its folder first)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench as b
    import metrics
    import peers

    return {"bench": b, "metrics": metrics, "peers": peers}


def _star(shape, x, y, flux, sigma=2.0):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def test_noise_stats_white_and_correlated(bench):
    m = bench["metrics"]
    rng = np.random.default_rng(1)
    white = rng.normal(0.0, 10.0, (600, 601))
    img = white.copy()
    img += _star(img.shape, 300.0, 300.0, 2e6)  # a bright source: left out of the sky pixels
    s = m.noise_stats(img)
    assert s["rms"] == pytest.approx(10.0, rel=0.02)
    assert abs(s["corr_x"]) < 0.01 and abs(s["corr_y"]) < 0.01
    # pair-averaging along x: rms sigma/sqrt(2), lag-1 correlation exactly 0.5 along x, 0 along y
    smooth = 0.5 * (white[:, :-1] + white[:, 1:])
    s2 = m.noise_stats(smooth)
    assert s2["rms"] == pytest.approx(10.0 / np.sqrt(2.0), rel=0.02)
    assert s2["corr_x"] == pytest.approx(0.5, abs=0.02)
    assert abs(s2["corr_y"]) < 0.01
    # a mask of valid pixels: zeros outside (no data) must not count as sky
    padded = np.zeros((700, 700))
    padded[50:650, 50:651] = white
    valid = padded != 0
    assert m.noise_stats(padded, valid=valid)["rms"] == pytest.approx(10.0, rel=0.02)


def test_flux_ratio_detects_a_flux_error(bench):
    m = bench["metrics"]
    shape = (200, 220)
    xs, ys = np.array([40.3, 120.7, 170.1]), np.array([50.2, 100.9, 150.5])
    img = sum(_star(shape, x, y, 1e4) for x, y in zip(xs, ys))
    moved = np.roll(img, (7, -5), axis=(0, 1))  # an exact resampling: whole-pixel shift
    r = m.flux_ratio(img, (xs, ys), moved, (xs - 5, ys + 7), radius=10.0)
    assert r["n"] == 3 and r["median"] == pytest.approx(1.0, abs=1e-9)
    r = m.flux_ratio(img, (xs, ys), 1.002 * moved, (xs - 5, ys + 7), radius=10.0)
    assert r["median"] == pytest.approx(1.002, abs=1e-9)  # a 0.2% error is seen
    # apertures leaving the image are not used
    assert m.flux_ratio(img, (np.array([2.0]), np.array([2.0])), img, (np.array([2.0]), np.array([2.0])),
                        radius=10.0)["n"] == 0


def test_catalog_agreement_and_matching(bench):
    m = bench["metrics"]
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 1000, 200), rng.uniform(0, 1000, 200)
    flux = rng.uniform(100, 1e4, 200)
    peer = {"x": x, "y": y, "flux": flux, "fluxerr": np.full(200, 10.0)}
    ours = {"x": x[:180] + 0.1, "y": y[:180] - 0.1, "flux": 1.01 * flux[:180], "fluxerr": np.full(180, 10.0)}
    g = m.catalog_agreement(ours, peer, radius=1.0, min_snr=20.0)
    bright = flux >= 200.0
    assert g["frac_peer_matched"] == pytest.approx(bright[:180].sum() / bright.sum())
    assert g["frac_ours_matched"] == 1.0
    assert g["flux_ratio"] == pytest.approx(1.01)
    i1, i2 = m.match_positions([0.0, 0.2], [0.0, 0.0], [0.1], [0.0], radius=1.0)  # one-to-one, closest first
    assert list(i1) == [0] and list(i2) == [0]


def test_efficiency_overhead_fit_and_verdicts(bench):
    m = bench["metrics"]
    jobs = [{"s": 10.0, "compute": 8.0, "cpu_time": 9.0}, {"s": 6.0, "compute": 6.0, "cpu_time": 5.0}]
    assert m.cpu_efficiency(jobs, wall=10.0, cores=2) == pytest.approx(0.7)
    o = m.overhead_share(jobs, wall=10.0, cores=2)
    assert o["startup"] == pytest.approx(0.1) and o["idle"] == pytest.approx(0.2) and o["total"] == pytest.approx(0.3)
    f = m.linear_fit([1000, 3000, 10000], [2.0, 6.0, 20.0])
    assert f["slope"] == pytest.approx(0.002) and f["max_rel_resid"] < 1e-9
    assert m.verdict(0.5, 0.6, "<=") == "PASS" and m.verdict(0.7, 0.6, "<=") == "FAIL"
    assert m.verdict(3.1, 3.0, ">=") == "PASS" and m.verdict(float("nan"), 3.0, ">=") == "n/a"
    t = m.timed_runs(lambda: 42, repeat=3)
    assert t["result"] == 42 and len(t["times"]) == 3 and t["median"] >= 0


def test_peer_missing_path(bench, tmp_path):
    """Without the peers on PATH, find() says so and the table shows "not installed", with no verdict."""
    p, b = bench["peers"], bench["bench"]
    assert p.find("sextractor", path=str(tmp_path)) is None and p.find("swarp", path=str(tmp_path)) is None
    found = {"sextractor": None, "swarp": None}
    res = {"b": {"wall": 1.0, "throughput": 8.4, "peer": None, "first_call": 1.5, "mpix": 8.4,
                 "flux": {"median": 1.0001, "n": 10, "mad": 1e-4}, "noise_in": {"rms": 10.0, "corr_x": 0, "corr_y": 0},
                 "noise": {"rms": 8.9, "corr_x": 0.12, "corr_y": 0.12}},
           "c": {"wall": 5.0, "nccd": 8, "peer": None}}
    rows = b.build_rows(res, found)
    assert any(r[3] == p.NOT_INSTALLED for r in rows)
    assert [r[-1] for r in rows if r[5] == ">= 3x"] == ["n/a"]
    assert [r[-1] for r in rows if r[5] == "<= 0.5x"] == ["n/a"]
    assert [r[-1] for r in rows if r[5] == "1 +- 0.001"] == ["PASS"]  # no peer needed for flux conservation
    md = bench["metrics"].markdown_table(b.HEADERS, rows)
    assert "not installed" in md and md.count("\n") == len(rows) + 1


def test_demo_jobs_take_cpu_and_start_up_from_the_jobs_own_logs(bench, tmp_path, monkeypatch):
    """(d) reads each job's exact CPU time and start-up from its log (skysnake.adapter), falls back to the
    sampled benchmark file when the log lacks them, and counts as overhead only spawning + imports."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import workflow_stages as ws

    res = tmp_path / "results"
    (res / "benchmarks" / "detect").mkdir(parents=True)
    (res / "logs" / "detect").mkdir(parents=True)
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (res / "benchmarks" / "detect" / "a.tsv").write_text(head + "3.0\t0:00:03\t100\t1\t1\t1\t0\t0\t50\t1.5\n")
    (res / "logs" / "detect" / "a.log").write_text(
        "2026-11-22T00:00:00 INFO skysnake: process start-up 0.900 s (interpreter and imports, before this line)\n"
        "2026-11-22T00:00:01 INFO skysnake: detect: 1.200 s\n"
        "2026-11-22T00:00:02 INFO skysnake: process cpu 2.400 s, peak rss 100 MB, wall 2.700 s (the whole job process)\n")
    (res / "benchmarks" / "detect" / "b.tsv").write_text(head + "2.0\t0:00:02\t100\t1\t1\t1\t0\t0\t50\t1.1\n")
    jobs = {j["ids"]: j for j in ws.demo_jobs(res)}
    a, b = jobs["a"], jobs["b"]
    assert a["cpu_time"] == 2.4 and a["cpu_sampled"] == 1.5 and a["cpu_from_log"]
    assert a["startup"] == 0.9 and abs(a["work"] - 1.8) < 1e-12 and a["compute"] == 1.2
    assert b["cpu_time"] == 1.1 and not b["cpu_from_log"] and b["startup"] is None and b["work"] is None
    # overhead of job a: 3.0 s of job wall - 1.8 s of work after its imports
    share = bench["metrics"].overhead_share([{"s": a["s"], "compute": a["work"]}], wall=3.0, cores=1)
    assert abs(share["startup"] - 0.4) < 1e-12


def test_a_demo_run_by_the_benchmark_keeps_only_its_logs_and_benchmark_files(bench, tmp_path, monkeypatch):
    """The benchmark's own demo run is ~4 GB of products: they go, what (d) and (f) read stays."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import workflow_stages as ws

    res = tmp_path / "results"
    for sub in ("logs/detect", "benchmarks/detect", "coadd/0/1_1", "calexp/1000"):
        (res / sub).mkdir(parents=True)
    (res / "logs" / "detect" / "a.log").write_text("log")
    (res / "benchmarks" / "detect" / "a.tsv").write_text("tsv")
    (res / "coadd" / "0" / "1_1" / "c.fits").write_bytes(b"x" * 100)
    (res / "registry.sqlite").write_bytes(b"db")
    ws.drop_demo_products(tmp_path)
    assert sorted(p.name for p in res.iterdir()) == ["benchmarks", "logs"]
    assert (res / "logs" / "detect" / "a.log").read_text() == "log"
    assert (res / "benchmarks" / "detect" / "a.tsv").read_text() == "tsv"
