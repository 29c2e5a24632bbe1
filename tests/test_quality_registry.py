from skysnake.quality import select_ccds
from skysnake.registry import read_registry, rows_from_summaries, write_registry


def _ok(visit, ccd, **kw):
    s = dict(visit=visit, ccd=ccd, filter="r", status="ok", seeing_arcsec=0.9, astrom_rms_arcsec=0.02,
             n_astrom=80, zeropoint=28.5, corners=[[1, 2], [3, 4], [5, 6], [7, 8]])
    s.update(kw)
    return s


def test_cuts_give_a_reason_for_every_rejection():
    s = [_ok(1, 0), _ok(1, 1, seeing_arcsec=2.5), _ok(1, 2, astrom_rms_arcsec=0.3), _ok(1, 3, n_astrom=4),
         {"visit": 1, "ccd": 4, "status": "failed", "reason": "no WCS"}]
    d = select_ccds(s)
    assert [x["selected"] for x in d] == [True, False, False, False, False]
    assert "seeing" in d[1]["reason"] and "rms" in d[2]["reason"] and "matched" in d[3]["reason"]
    assert "no WCS" in d[4]["reason"]


def test_zeropoint_outlier_within_a_visit():
    s = [_ok(1, c, zeropoint=28.5 + 0.01 * c) for c in range(4)] + [_ok(1, 4, zeropoint=27.9)]
    d = select_ccds(s)
    assert [x["selected"] for x in d] == [True, True, True, True, False]
    assert "zeropoint" in d[4]["reason"]
    # another visit with a different transparency is not an outlier
    d2 = select_ccds([_ok(2, c, zeropoint=28.0) for c in range(4)])
    assert all(x["selected"] for x in d2)


def test_registry_roundtrip(tmp_path):
    rows = rows_from_summaries([_ok(2, 1), _ok(1, 0), {"visit": 1, "ccd": 1, "status": "failed",
                                                        "reason": "truncated FITS", "code": "unreadable"}])
    path = tmp_path / "registry.sqlite"
    write_registry(path, rows)
    df = read_registry(path)
    assert list(zip(df.visit, df.ccd)) == [(1, 0), (1, 1), (2, 1)]
    failed = df[df.status == "failed"].iloc[0]
    assert failed.reason == "truncated FITS" and failed.selected == 0 and "failed" in failed.reject_reason
    # rewriting replaces the database whole
    write_registry(path, rows[:1])
    assert len(read_registry(path)) == 1
