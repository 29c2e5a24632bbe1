"""skysnake: CCD exposures to calibrated coadds and multi-band object catalogs.

The package is the workflow's shared core: pure functions on arrays, WCS and
tables. Snakemake rules (``rules/*.smk``) call thin adapters (``scripts/*.py``)
that read and write files and call into this package.
"""

__version__ = "0.1.0"

__all__ = ["Repo"]


def __getattr__(name):
    # skysnake.Repo: access to a run's outputs by data id (imported on first use: the
    # workflow imports skysnake at parse time and should not pay for astropy.nddata)
    if name == "Repo":
        from .repo import Repo

        return Repo
    raise AttributeError(f"module 'skysnake' has no attribute {name!r}")
