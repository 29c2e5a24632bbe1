"""Choose each object's reference band, position and shape.

Inputs: ``measurements`` (one parquet per filter of the patch).
Outputs: reference table (parquet). Config: ``multiband.priority``, ``multiband.min_ref_snr``.
"""

from skysnake import multiband
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_table, write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.multiband
meas = {f: read_table(p) for f, p in zip(sm.params.filters, sm.input.measurements)}
ref = multiband.select_reference(meas, priority=tuple(cfg["priority"]), min_snr=cfg["min_ref_snr"])
write_table(sm.output[0], ref, provenance=provenance(config=cfg, inputs=list(sm.input.measurements)))
log.info("%d reference objects; bands: %s", len(ref),
         ref["ref_filter"].value_counts().to_dict() if len(ref) else {})
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
