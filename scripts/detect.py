"""Detect sources on one filter's coadd.

Inputs: ``coadd``. Outputs: detections (parquet).
Config: ``multiband.detect_thresh``, ``multiband.minarea``.
"""

from skysnake import multiband
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_exposure, write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.multiband
coadd = read_exposure(sm.input.coadd)
background = 0.0 if coadd.meta.get("BKGSUB") else None  # the coadd job subtracted it
det = multiband.detect(coadd, thresh=cfg["detect_thresh"], minarea=cfg["minarea"],
                       background=background)
write_table(sm.output[0], det, meta={"filter": sm.wildcards.filter},
            provenance=provenance(config=cfg, inputs=[sm.input.coadd]))
log.info("%d detections", len(det))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
