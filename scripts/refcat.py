"""Cut the reference catalog to one tract, in skysnake's columns.

Inputs: ``source`` (the simulated refcat, or the files matching refcat.path; none for the
sources ``gaia`` and ``none``).
Outputs: the tract's refcat (parquet).
Config: ``refcat.*`` (source, path, format, columns, epoch, margin_deg, cache, gaia_table,
gaia_mag_limit).

``source: gaia`` queries Gaia DR3 once for a cone covering the tract (cached as parquet in
refcat.cache; offline once cached). ``source: none`` writes an empty refcat (every CCD then
needs ``calibrate.header_fallback``).
"""

import numpy as np
import pandas as pd

from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import write_table
from skysnake.refcat import cut_to_tract, load_refcat
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.refcat
tract = Tract(**sm.params.tract)
source = cfg.get("source", "sim")
sources = list(sm.input.source) if source in ("sim", "file") else []
if source == "gaia":
    from skysnake.gaia import gaia_refcat

    ny, nx = tract.shape
    half = np.hypot(nx + 2 * tract.patch_border, ny + 2 * tract.patch_border) / 2 * tract.pixel_scale / 3600.0
    ref = gaia_refcat(ra=tract.ra, dec=tract.dec, radius_deg=half + cfg.get("margin_deg", 0.1),
                      cache=cfg.get("cache", "refcat-cache"), table=cfg.get("gaia_table", "gaiadr3.gaia_source"),
                      mag_limit=cfg.get("gaia_mag_limit", 21.0), log=log)
elif source == "none":
    ref = pd.DataFrame({c: np.zeros(0) for c in ("ra", "dec", "pmra", "pmdec", "epoch")})
else:
    parts = [load_refcat(p, columns=cfg.get("columns"), epoch=cfg.get("epoch", 2016.0),
                         format=cfg.get("format", "columns")) for p in sources]
    ref = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if "source_id" in ref:  # overlapping chunks list a star twice
        ref = ref.drop_duplicates("source_id").reset_index(drop=True)
cut = cut_to_tract(ref, tract, margin_deg=cfg.get("margin_deg", 0.1))
write_table(sm.output[0], cut, meta={"tract": tract.id}, provenance=provenance(config=cfg, inputs=sources))
log.info("tract %d: %d of %d reference stars (source %s)", tract.id, len(cut), len(ref), source)
if len(cut) == 0:
    log.warning("tract %d has no reference stars: every CCD will fail astrometric calibration"
                " unless calibrate.header_fallback is on", tract.id)
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
