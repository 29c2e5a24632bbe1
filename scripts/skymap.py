"""Write the sky map and the CCD-to-patch assignment.

Inputs: none. Outputs: skymap.json. Params: ``skymap`` (tracts), ``overlaps``
(visit, ccd, tract, patch rows computed at parse time). Config: ``skymap.*``.
"""

from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import write_json

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
write_json(sm.output[0], {**sm.params.skymap, "overlaps": sm.params.overlaps,
                           "provenance": provenance(config=sm.params.skymap)})
log.info("%d tracts, %d CCD-patch overlaps", len(sm.params.skymap["tracts"]), len(sm.params.overlaps["visit"]))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
