"""Mask plane bit definitions shared by every stage.

A mask plane is an ``int32`` array in memory; each bit below flags one reason a pixel is
not to be trusted. Stages OR bits together when they propagate masks
(calibrate -> warp -> coadd). On disk the plane takes one byte per pixel
(:data:`FILE_DTYPE`): every bit fits in it.
"""

import numpy as np

BAD = 1 << 0  #: camera defect (bad column, dead pixel)
SAT = 1 << 1  #: at or above the saturation level
CR = 1 << 2  #: cosmic ray hit
EDGE = 1 << 3  #: too close to the CCD edge for reliable measurement
NO_DATA = 1 << 4  #: no input pixel contributed (outside every CCD, or all inputs rejected)
SUSPECT = 1 << 5  #: non-linear regime / near saturation
REJECTED = 1 << 6  #: coadd: at least one input was rejected as an outlier here
CLIPPED = 1 << 7  #: coadd: an input was dropped because it carried a bad bit here

PLANES = {
    "BAD": BAD,
    "SAT": SAT,
    "CR": CR,
    "EDGE": EDGE,
    "NO_DATA": NO_DATA,
    "SUSPECT": SUSPECT,
    "REJECTED": REJECTED,
    "CLIPPED": CLIPPED,
}

#: dtype of a mask plane in memory
DTYPE = np.dtype(np.int32)
#: dtype of a mask plane in files (FITS BITPIX 8): a quarter of the int32 plane's bytes
FILE_DTYPE = np.dtype(np.uint8)
if max(PLANES.values()) >= 1 << (8 * FILE_DTYPE.itemsize):
    raise ImportError("skysnake.masks: a mask bit does not fit in FILE_DTYPE; widen FILE_DTYPE")

#: Bits that make a pixel unusable as an input to warps and coadds.
UNUSABLE = BAD | SAT | CR | NO_DATA


def header_cards():
    """FITS header cards that document the mask bits (``MP_<NAME> = bit``)."""
    return [(f"HIERARCH MP_{name}", bit.bit_length() - 1, f"mask bit for {name}") for name, bit in PLANES.items()]
