"""Render the raw CCD images of one simulated visit.

Inputs: ``truth`` (parquet from simulate_sky).
Outputs: ``raw`` (one generic-camera FITS per CCD: HDU 0 image in ADU with the
approximate header WCS, HDU ``BPM`` the camera's defect mask) and ``truth``
(one JSON per CCD: true WCS, zeropoint, seeing).
Config: ``sim.*``.
"""

from astropy.io import fits
from astropy.table import Table

from skysnake import sim
from skysnake.adapter import finish, provenance, setup_logging, timed
from skysnake.io import add_provenance, read_table, write_hdulist, write_json

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
visit = int(sm.wildcards.visit)
design = sim.survey_design(sm.params.sim)
truth = Table.from_pandas(read_table(sm.input.truth))
prov = provenance(config=sm.params.sim, inputs=[sm.input.truth])
for ccd, raw_path, truth_path in zip(sm.params.ccds, sm.output.raw, sm.output.truth):
    with timed(log, f"render visit {visit} ccd {ccd}"):
        image, bpm, header, record = sim.render_ccd(design, truth, visit=visit, ccd=int(ccd))
    add_provenance(header, prov)
    hdul = fits.HDUList([fits.PrimaryHDU(data=image, header=header),
                         fits.ImageHDU(data=bpm.astype("uint8"), name="BPM")])
    write_hdulist(raw_path, hdul)
    write_json(truth_path, {**record, "provenance": prov})
finish(log)  # outputs written and closed: exit now, without the interpreter's teardown
