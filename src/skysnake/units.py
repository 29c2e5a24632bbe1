"""Photometric unit conventions.

Calibrated images and catalogs carry fluxes in nanojansky (nJy), as the LSST
pipelines do. An AB magnitude relates to a flux in nJy by
``mag = AB_NJY_ZP - 2.5 log10(flux_nJy)`` with ``AB_NJY_ZP = 31.4``.

A CCD zeropoint ``zp`` (magnitudes) is defined for the *total* counts of a
source in the exposure: ``mag = zp - 2.5 log10(counts_ADU)``.
"""

import numpy as np

AB_NJY_ZP = 31.4  #: AB magnitude of a 1 nJy source


def nJy_per_adu(zp):
    """Scale that converts ADU (total counts in the exposure) to nJy for zeropoint ``zp``."""
    return 10.0 ** (-0.4 * (np.asarray(zp, dtype=float) - AB_NJY_ZP))


def flux_to_mag(flux_nJy):
    """AB magnitude of a flux in nJy; NaN where the flux is not positive."""
    flux = np.asarray(flux_nJy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, AB_NJY_ZP - 2.5 * np.log10(flux), np.nan)


def mag_to_flux(mag):
    """Flux in nJy of an AB magnitude."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_NJY_ZP))


def magerr_from_flux(flux, fluxerr):
    """1-sigma magnitude error of a flux measurement (NaN where the flux is not positive)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 2.5 / np.log(10) * np.asarray(fluxerr, dtype=float) / flux, np.nan)
