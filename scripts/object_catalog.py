"""Assemble the tract's object catalog from every patch's forced photometry.

Inputs: ``forced`` (one parquet per (patch, filter)), ``references`` (one per patch).
Outputs: the object catalog (parquet): object_id, ra, dec, tract, patch, per filter
{f}_flux, {f}_fluxerr (nJy), {f}_mag (AB), and is_star; each object once.
Params: the tract geometry, the (patch, filter) of each forced table, the survey's filters.
"""

from skysnake import objects
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_table, write_table
from skysnake.skymap import SkyMap

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
skymap = SkyMap.from_dict(sm.params.skymap)
tract = skymap[int(sm.wildcards.tract)]
forced = {(p, f): read_table(path) for (p, f), path in zip(sm.params.units, sm.input.forced)}
refs = {p: read_table(path) for p, path in zip(sm.params.patches, sm.input.references)}
cat = objects.build_object_catalog(forced=forced, references=refs, skymap=skymap, tract=tract.id,
                                   filters=list(sm.params.filters))
write_table(sm.output[0], cat, meta={"tract": tract.id, "filters": list(sm.params.filters)},
            provenance=provenance(config=sm.params.multiband,
                                  inputs=[*sm.input.forced, *sm.input.references]))
log.info("tract %d: %d objects (%d stars)", tract.id, len(cat), int(cat["is_star"].sum()) if len(cat) else 0)
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
