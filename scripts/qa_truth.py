"""QA of the simulated survey: the object catalog against the truth.

Inputs: ``truth`` (the simulation's objects), ``objects`` (the tract's catalog), ``depth_maps`` (from
qa_tract: which truth objects fall on data, and the median depth). Outputs: ``completeness`` (PNG:
fraction of truth objects detected vs true magnitude, point sources and extended, per filter) and
``photometry`` (PNG: measured minus true magnitude of point sources vs true magnitude).
Params: ``filters``, ``mjd`` (mean epoch of the visits: truth positions are moved there),
``match_radius_arcsec``.
"""

import numpy as np
import pandas as pd
from astropy.io import fits

from skysnake import qa, qaplots
from skysnake.adapter import finish, provenance, setup_logging
from skysnake.astrometry import propagate_refcat
from skysnake.io import read_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
with fits.open(sm.input.depth_maps) as hdul:
    maps = qa.depth_maps_from_hdulist(hdul)
cat = read_table(sm.input.objects)
truth = read_table(sm.input.truth)
ra, dec = propagate_refcat(truth, mjd=sm.params.mjd)
truth = truth.assign(ra=ra, dec=dec)
t2c, (ti, ci) = qa.match_to_truth(cat, truth, radius_arcsec=sm.params.match_radius_arcsec)
found = t2c >= 0
star = truth["is_star"].to_numpy(bool)
bins = np.arange(14.0, 28.01, 0.25)
tables, pairs = {}, {}
for f in qa.order_filters(sm.params.filters):
    if f not in maps.nimage or f"mag_{f}" not in truth:
        continue
    cov = maps.covered(f, truth["ra"], truth["dec"])
    mag = truth[f"mag_{f}"].to_numpy(float)
    tables[f] = {"point sources": qa.completeness(mag[cov & star], found[cov & star], bins=bins),
                 "extended": qa.completeness(mag[cov & ~star], found[cov & ~star], bins=bins)}
    s = star[ti]
    pairs[f] = pd.DataFrame({"true_mag": mag[ti][s], "mag": cat[f"{f}_mag"].to_numpy(float)[ci][s],
                             "magerr": cat[f"{f}_magerr"].to_numpy(float)[ci][s]})
    log.info("%s: 50%% completeness of point sources at %.2f mag (median 5-sigma depth %.2f)", f,
             qa.magnitude_at_completeness(tables[f]["point sources"], 0.5), maps.median_m5(f))
m5 = {f: maps.median_m5(f) for f in maps.filters}
prov = provenance(config={"match_radius_arcsec": sm.params.match_radius_arcsec, "mjd": sm.params.mjd},
                  inputs=[sm.input.truth, sm.input.objects, sm.input.depth_maps])
tract = sm.wildcards.tract
qaplots.save_png(qaplots.plot_completeness(tables, m5=m5, title=f"tract {tract}: completeness against the truth "
                                           f"(matched within {sm.params.match_radius_arcsec:g}\")"),
                 sm.output.completeness, provenance=prov)
qaplots.save_png(qaplots.plot_delta_mag(pairs, title=f"tract {tract}: PSF photometry of point sources against "
                                        "the truth"), sm.output.photometry, provenance=prov)
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
