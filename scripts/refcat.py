"""Cut the reference catalog to one tract, in skysnake's columns.

Inputs: ``source`` (the simulated refcat, or the file named by refcat.path).
Outputs: the tract's refcat (parquet).
Config: ``refcat.*`` (source, path, columns, epoch, margin_deg).
"""

from skysnake.adapter import provenance, setup_logging
from skysnake.io import write_table
from skysnake.refcat import cut_to_tract, load_refcat
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.refcat
tract = Tract(**sm.params.tract)
ref = load_refcat(sm.input.source, columns=cfg.get("columns"), epoch=cfg.get("epoch", 2016.0))
cut = cut_to_tract(ref, tract, margin_deg=cfg.get("margin_deg", 0.1))
write_table(sm.output[0], cut, meta={"tract": tract.id}, provenance=provenance(config=cfg, inputs=[sm.input.source]))
log.info("tract %d: %d of %d reference stars", tract.id, len(cut), len(ref))
if len(cut) == 0:
    log.warning("tract %d has no reference stars: every CCD will fail astrometric calibration", tract.id)
