"""Resource requests are sized from the data: pixels of the CCD or patch and the number of inputs."""

import re

import yaml
from conftest import run_snakemake


def _requests(dry, rule):
    """(number of inputs, mem_mb, runtime) of every job of ``rule`` in a dry run's output."""
    out = []
    for block in re.split(r"\n(?=\[|rule |localrule )", dry):
        if not block.startswith(f"rule {rule}:"):
            continue
        inputs = re.search(r"input: (.*)", block).group(1).split(", ")
        res = re.search(r"resources: .*", block).group(0)
        out.append((len(inputs), int(re.search(r"mem_mb=(\d+)", res).group(1)),
                    int(re.search(r"runtime=(\d+)", res).group(1))))
    return out


def test_coadd_requests_grow_with_its_warps_and_patch_pixels(tmp_path):
    def dry(visits, patch_px=3000):
        cfg = tmp_path / f"cfg-{visits}-{patch_px}.yaml"  # layered over config/config.yaml
        cfg.write_text(yaml.safe_dump({"sim": {"visits_per_filter": visits, "filters": ["r"]},
                                       "skymap": {"patch_inner_px": patch_px}}))
        return run_snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(cfg), timeout=300).stdout

    few = _requests(dry(1), "coadd")
    many = _requests(dry(3), "coadd")
    big = _requests(dry(3, patch_px=6000), "coadd")
    assert few and many and big
    by_n = {}
    for n, mem, rt in few + many:
        by_n.setdefault(n, set()).add((mem, rt))
    sizes = sorted(by_n)
    assert len(sizes) >= 2, f"need coadds with different numbers of warps, got {by_n}"
    for lo, hi in zip(sizes, sizes[1:]):  # one request per number of warps, strictly growing with it
        (mem_lo, rt_lo), = by_n[lo]
        (mem_hi, rt_hi), = by_n[hi]
        assert mem_hi > mem_lo and rt_hi >= rt_lo
    # a 4x bigger patch asks for more memory at the same number of warps
    n_big = {n: mem for n, mem, _ in big}
    assert any(n in by_n and n_big[n] > max(m for m, _ in by_n[n]) for n in n_big)


def test_retries_ask_for_more_memory_and_time():
    # the same functions the rules use, evaluated outside Snakemake
    src = (__import__("pathlib").Path(__file__).resolve().parents[1] / "rules" / "common.smk").read_text()
    start = src.index("def _n_inputs")
    end = src.index("\n# ---", start) if "\n# ---" in src[start:] else len(src)
    ns = {"MEM_HEADROOM": 1.5, "math": __import__("math")}
    exec(src[start:end], ns)  # noqa: S102 - our own rules file
    mem = ns["mem_mb"](100, per_mpix=10, mpix=2, per_input=5, inputs=lambda wc: [1, 2, 3])
    rt = ns["runtime"](4, per_input=1, inputs=lambda wc: [1, 2])
    assert mem(None, 1) == int(1.5 * (100 + 20 + 15))
    assert mem(None, 2) == int(1.5 * (100 + 20 + 15) * 1.5)
    assert (rt(None, 1), rt(None, 2), rt(None, 3)) == (6, 12, 24)
