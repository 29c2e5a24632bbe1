"""The pins agree: pyproject.toml, envs/skysnake.yaml and what is installed."""

import re
import tomllib
from importlib.metadata import version

import yaml

from conftest import REPO


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;]+)\s*", line)
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_env_file_pins_equal_pyproject_pins_equal_installed():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    py_pins = _pins(project["dependencies"])
    env = yaml.safe_load((REPO / "envs" / "skysnake.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = _pins(pip)
    assert env_pins == py_pins
    installed = {name: version(name) for name in py_pins}
    assert installed == py_pins
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_test_extra_pins_are_installed():
    """The executor plugins of the cluster profiles (and pytest) are pinned and installed at those versions."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = _pins(extra)
    assert {"snakemake-executor-plugin-slurm", "snakemake-executor-plugin-cluster-generic"} <= set(pins)
    assert {name: version(name) for name in pins} == pins
