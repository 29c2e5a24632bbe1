"""Write the input index, read back from the raw files' headers.

Inputs: ``raws`` (every raw file of the plan).
Outputs: the index (parquet: visit, ccd, filter, mjd, exptime, raw, hdu, corners).
Params: ``index`` (the parse-time index), ``instrument`` (config block).
The parse-time plan and the headers must agree; a difference is logged as a warning.
"""

import pandas as pd

from skysnake.adapter import finish, provenance, setup_logging
from skysnake.errors import DataError
from skysnake.ingest import INDEX_COLUMNS, header_rows
from skysnake.io import write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
planned = pd.DataFrame(sm.params.index)
rows = []
for path, hdu in planned[["raw", "hdu"]].drop_duplicates().itertuples(index=False):
    try:
        rows.extend(header_rows(path, instrument={**sm.params.instrument, "image_hdu": int(hdu)}))
    except DataError as err:
        log.warning("skipped %s: %s", path, err)
index = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values(["visit", "ccd"]).reset_index(drop=True)
for col in ("visit", "ccd", "filter"):
    a, b = list(index[col]), list(planned.sort_values(["visit", "ccd"])[col])
    if a != b:
        log.warning("index column %s differs from the parse-time plan", col)
for p in pd.DataFrame(sm.params.problems).itertuples(index=False):
    log.warning("input problem (%s): %s", p.code, p.reason)
write_table(sm.output[0], index, provenance=provenance(config=sm.params.instrument, inputs=list(sm.input.raws)))
log.info("indexed %d CCDs in %d visits", len(index), index["visit"].nunique())
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
