"""QA: colour image of one patch.

Inputs: the patch's coadds, one per filter (named by filter). Outputs: a PNG of the patch (i, r, g as
red, green, blue when available), binned by ``binning``, on RA/Dec axes; the inner box is dashed.
Params: ``geometry`` (tract and patch), ``binning``.
"""

import numpy as np

from skysnake import qa, qaplots
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.io import read_exposure
from skysnake.skymap import Tract

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
tract = Tract(**sm.params.geometry["tract"])
patch = sm.params.geometry["patch"]
paths = dict(sm.input.items())
red, green, blue = qa.rgb_filters(list(paths))
planes = {}
for f in {red, green, blue}:
    exp = read_exposure(paths[f], planes=("IMAGE",), memmap=True)
    planes[f] = exp.image if not exp.is_empty else None
shape = tract.patch_shape(patch)
for f, im in planes.items():
    if im is None:
        log.warning("the %s coadd of patch %s is empty", f, patch)
        planes[f] = np.zeros(shape, np.float32)
b = sm.params.binning
rgb = qa.color_composite(planes[red], planes[green], planes[blue], factor=b)
x0, y0, x1, y1 = tract.inner_box(patch)
border = tract.patch_border
fig = qaplots.plot_color_composite(rgb, wcs=tract.patch_wcs(patch), factor=b,
                                   inner_box=(border, border, border + x1 - x0, border + y1 - y0),
                                   title=f"tract {tract.id} patch {patch}: {red}, {green}, {blue} as red, green, blue")
qaplots.save_png(fig, sm.output[0],
                 provenance=provenance(config={"binning": b}, inputs=[paths[f] for f in (red, green, blue)]))
log.info("colour image of tract %d patch %s from %s", tract.id, patch, (red, green, blue))
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
