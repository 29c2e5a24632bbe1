"""Forced photometry of one filter's coadd at the reference positions and shapes.

Inputs: ``coadd``, ``reference``. Outputs: forced measurements (parquet).
Config: ``multiband.psf_aperture_arcsec``, ``multiband.aperture_radii_arcsec``.
"""

from skysnake import multiband
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_exposure, read_table, write_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
cfg = sm.params.multiband
coadd = read_exposure(sm.input.coadd)
background = 0.0 if coadd.meta.get("BKGSUB") else None  # the coadd job subtracted it
ref = read_table(sm.input.reference)
forced = multiband.forced_photometry(coadd, ref, filter=sm.wildcards.filter,
                                     psf_aperture_arcsec=cfg["psf_aperture_arcsec"],
                                     aperture_radii_arcsec=tuple(cfg["aperture_radii_arcsec"]),
                                     background=background)
write_table(sm.output[0], forced, meta={"filter": sm.wildcards.filter},
            provenance=provenance(config=cfg, inputs=[sm.input.coadd, sm.input.reference]))
log.info("%d forced measurements", len(forced))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
