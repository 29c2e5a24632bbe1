"""The config schema: defaults agree with the code, and bad configs stop the run before any job."""

import copy

import pytest
import yaml
from conftest import REPO, run_snakemake

from skysnake import calibrate, quality, sim

SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def _defaults(block):
    return {k: v["default"] for k, v in SCHEMA["properties"][block]["properties"].items()}


def _walk(schema, path="config"):
    """Every property of the schema, recursively."""
    for key, sub in schema.get("properties", {}).items():
        yield f"{path}.{key}", sub
        yield from _walk(sub, f"{path}.{key}")
        if "items" in sub and isinstance(sub["items"], dict):
            yield from _walk(sub["items"], f"{path}.{key}[]")


def test_every_key_has_a_description_and_a_default():
    missing = [p for p, sub in _walk(SCHEMA) if "description" not in sub or "default" not in sub]
    assert not missing, f"schema keys without description or default: {missing}"


def test_schema_defaults_are_the_code_defaults():
    assert _defaults("sim") == sim.DEFAULTS
    assert _defaults("quality") == quality.DEFAULTS
    cal = SCHEMA["properties"]["calibrate"]["properties"]
    assert {k: v["default"] for k, v in cal.items()} == calibrate.DEFAULTS


def _bad_config(tmp_path, mutate):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["skymap"].update(patch_inner=3), "patch_inner"),  # typo of patch_inner_px
    (lambda c: c["multiband"].update(detect_thresh="five"), "detect_thresh"),  # wrong type
    (lambda c: c.update(resluts="x"), "resluts"),  # unknown top-level key
    (lambda c: c["calibrate"].update(sip_ordr=3), "sip_ordr"),
])
def test_bad_config_is_rejected_before_any_job_naming_the_key(tmp_path, mutate, key):
    cfg = _bad_config(tmp_path, mutate)
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(cfg), check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key in out, out[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("mutate, key, what", [
    (lambda c: c.update(inputs={"source": "files", "paths": ["nowhere/raw-*.fits"]}), "inputs.paths",
     "nowhere/raw-*.fits"),
    (lambda c: c.update(inputs={"source": "files", "paths": []}), "inputs.paths", "is empty"),
    (lambda c: c.update(refcat={"source": "file", "path": "no/such/refcat.parquet"}), "refcat.path",
     "no/such/refcat.parquet"),
    (lambda c: c.update(refcat={"source": "file"}), "refcat.path", "is not set"),
])
def test_missing_input_path_is_rejected_before_any_job_naming_the_key(tmp_path, mutate, key, what):
    cfg = _bad_config(tmp_path, mutate)
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(cfg), check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key in out and what in out, out[-2000:]
    assert "Traceback" not in out  # a message for the user, not a crash
    assert not (tmp_path / "results").exists() and not (tmp_path / ".snakemake" / "log").exists()
