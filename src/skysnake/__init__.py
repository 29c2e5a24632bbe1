"""skysnake: CCD exposures to calibrated coadds and multi-band object catalogs.

The package is the workflow's shared core: pure functions on arrays, WCS and
tables. Snakemake rules (``rules/*.smk``) call thin adapters (``scripts/*.py``)
that read and write files and call into this package.
"""

__version__ = "0.1.0"
