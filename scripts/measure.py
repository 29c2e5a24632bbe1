"""Measure the merged peaks on one filter's coadd.

Inputs: ``coadd``, ``merged``. Outputs: measurements (parquet).
Config: ``multiband.aperture_radii_arcsec``, ``multiband.psf_aperture_arcsec``.
"""

from skysnake import multiband
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_exposure, read_table, write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.multiband
coadd = read_exposure(sm.input.coadd)
background = 0.0 if coadd.meta.get("BKGSUB") else None  # the coadd job subtracted it
merged = read_table(sm.input.merged)
meas = multiband.measure(coadd, merged, filter=sm.wildcards.filter,
                         aperture_radii_arcsec=tuple(cfg["aperture_radii_arcsec"]),
                         psf_aperture_arcsec=cfg["psf_aperture_arcsec"], background=background)
write_table(sm.output[0], meas, meta={"filter": sm.wildcards.filter, **{k: v for k, v in meas.attrs.items()
                                                                         if isinstance(v, (int, float, str))}},
            provenance=provenance(config=cfg, inputs=[sm.input.coadd, sm.input.merged]))
log.info("%d measurements", len(meas))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
