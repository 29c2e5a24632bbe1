"""The ``skysnake`` command: small helpers around a workflow's outputs.

``skysnake provenance FILE``  prints the code version, config hash and inputs
recorded in a FITS or parquet output.
"""

from __future__ import annotations

import argparse
import json
import sys


def _provenance(path):
    if str(path).endswith(".parquet"):
        from .io import read_table

        return read_table(path).attrs.get("provenance", {})
    from astropy.io import fits

    from .io import read_provenance

    return read_provenance(fits.getheader(path, 0))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="skysnake", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("provenance", help="print the provenance recorded in an output file")
    p.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "provenance":
        for f in args.files:
            try:
                print(json.dumps({"file": f, **_provenance(f)}, indent=1))
            except OSError as err:
                print(f"skysnake: {f}: {err}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
