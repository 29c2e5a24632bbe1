"""The ``skysnake`` command: small helpers around a workflow's outputs.

``skysnake provenance FILE``  prints the code version, config hash and inputs
recorded in an output (FITS, parquet, JSON, the sqlite registry, PNG figures).

``skysnake status``  prints, per stage, how many units are done, failed (with the
reason), running or interrupted, and pending, and lists failed CCDs and patches with
their log paths. It reads the plan (from the same config files as the run), the
outputs, the registry and Snakemake's records in ``.snakemake/``; it works while a
run is in progress.
"""

from __future__ import annotations

import argparse
import json
import sys


def _provenance(path):
    from .repo import file_provenance  # FITS, parquet, JSON, sqlite and PNG outputs

    return file_provenance(path)


def _parse_overrides(items):
    """``key=value`` pairs as Snakemake's ``--config`` (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"skysnake status: --config {item!r} is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def _status(args):
    from pathlib import Path

    from .errors import ConfigError
    from .status import collect_status, format_status, load_config

    configfiles = args.configfile or []
    if not configfiles:
        default = Path(args.directory) / "config" / "config.yaml"
        if not default.exists():
            print(f"skysnake status: no --configfile given and {default} does not exist; pass the config "
                  "file(s) the run used", file=sys.stderr)
            return 2
        configfiles = [default]
    try:
        cfg = load_config(configfiles, overrides=_parse_overrides(args.config), schema=args.schema)
        st = collect_status(args.directory, cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"skysnake status: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(st.to_dict(), indent=1, default=str))
    else:
        print(format_status(st, max_list=args.max_list), end="")
    failed = (st.units.state == "failed").any() or (st.ccds.state == "failed").any() or len(st.problems)
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="skysnake", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("provenance", help="print the provenance recorded in an output file")
    p.add_argument("files", nargs="+")
    s = sub.add_parser("status", help="per stage: units done, failed (with reason), running and pending")
    s.add_argument("-d", "--directory", default=".", help="the run's working directory (snakemake --directory)")
    s.add_argument("--configfile", action="append", help="config file(s) of the run, in the same order as for "
                                                          "snakemake (default: DIRECTORY/config/config.yaml)")
    s.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="overrides, as snakemake --config")
    s.add_argument("--schema", help="config schema (default: config/schema.yaml of the skysnake source tree)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--max-list", type=int, default=50, help="longest list printed per section")
    args = parser.parse_args(argv)
    if args.cmd == "provenance":
        for f in args.files:
            try:
                print(json.dumps({"file": f, **_provenance(f)}, indent=1))
            except (OSError, ValueError) as err:
                print(f"skysnake: {f}: {err}", file=sys.stderr)
                return 1
    elif args.cmd == "status":
        return _status(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
