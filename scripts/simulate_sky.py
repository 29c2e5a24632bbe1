"""Simulate the sky of the demo survey.

Inputs: none.
Outputs: ``truth`` (parquet: every star and galaxy with true magnitudes),
``refcat`` (parquet: reference stars with Gaia-like errors).
Config: ``sim.*`` (seed, field, densities, magnitude limits; see config/schema.yaml).
"""

from skysnake import sim
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import write_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
design = sim.survey_design(sm.params.sim)
truth, refcat = sim.make_sky(design)
prov = provenance(config=sm.params.sim)
write_table(sm.output.truth, truth, meta={"kind": "truth"}, provenance=prov)
write_table(sm.output.refcat, refcat, meta={"kind": "refcat"}, provenance=prov)
log.info("simulated %d objects (%d stars), %d reference stars", len(truth), int(truth["is_star"].sum()), len(refcat))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
