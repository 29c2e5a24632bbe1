# Shared definitions: output path patterns, wildcard constraints, the processing
# plan (every data unit, known at parse time) and the input functions rules use.

import json
import math

from skysnake import plan as _plan
from skysnake.ingest import check_inputs, input_index, refcat_files

R = config["results"]


wildcard_constraints:
    visit=r"\d+",
    ccd=r"\d+",
    tract=r"\d+",
    patch=r"\d+_\d+",
    filter=r"[A-Za-z0-9_]+",


# --- file patterns, one per data unit ---------------------------------------------
RAW_SIM = f"{R}/sim/raw/{{visit}}/raw-{{visit}}-{{ccd}}.fits"
TRUTH_CCD = f"{R}/sim/truth/{{visit}}/truth-{{visit}}-{{ccd}}.json"
INDEX = f"{R}/ingest/index.parquet"
REFCAT = f"{R}/refcat/refcat-{{tract}}.parquet"
# one calibrate job per visit writes its CCDs' calexp, sources and summary files into one folder
CALEXP_DIR = f"{R}/calexp/{{visit}}"
CALEXP = f"{R}/calexp/{{visit}}/calexp-{{visit}}-{{ccd}}.fits"
SOURCES = f"{R}/calexp/{{visit}}/sources-{{visit}}-{{ccd}}.parquet"
SUMMARY = f"{R}/calexp/{{visit}}/summary-{{visit}}-{{ccd}}.json"
REGISTRY = f"{R}/registry.sqlite"
SKYMAP = f"{R}/skymap.json"
# one warp job per (tract, visit) writes the visit's warp on every patch it touches into one folder
WARP_DIR = f"{R}/warp/{{tract}}/{{visit}}"
WARP = f"{R}/warp/{{tract}}/{{visit}}/warp-{{tract}}-{{patch}}-{{visit}}.fits"
COADD = f"{R}/coadd/{{tract}}/{{patch}}/coadd-{{tract}}-{{patch}}-{{filter}}.fits"
DETECT = f"{R}/multiband/{{tract}}/{{patch}}/detect-{{tract}}-{{patch}}-{{filter}}.parquet"
MERGED = f"{R}/multiband/{{tract}}/{{patch}}/merged-{{tract}}-{{patch}}.parquet"
MEASURE = f"{R}/multiband/{{tract}}/{{patch}}/measure-{{tract}}-{{patch}}-{{filter}}.parquet"
REFERENCE = f"{R}/multiband/{{tract}}/{{patch}}/reference-{{tract}}-{{patch}}.parquet"
FORCED = f"{R}/multiband/{{tract}}/{{patch}}/forced-{{tract}}-{{patch}}-{{filter}}.parquet"
OBJECTS = f"{R}/objects/objects-{{tract}}.parquet"


def log_path(rule, ids=""):
    return f"{R}/logs/{rule}/{ids or rule}.log"


def bench_path(rule, ids=""):
    return f"{R}/benchmarks/{rule}/{ids or rule}.tsv"


# --- the plan: computed once per parse ----------------------------------------------
# Input paths are checked first: a missing file or a glob matching nothing stops the run
# before any job, naming the config key.
check_inputs(config)
_INDEX, INPUT_PROBLEMS = input_index(config, raw_sim_pattern=RAW_SIM.replace("{{", "{").replace("}}", "}"))
PLAN = _plan.make_plan(_INDEX, config["skymap"], margin_arcsec=config["skymap"]["overlap_margin_arcsec"])


def input_problems_records(wc=None):
    """CCDs of the inputs that cannot be calibrated (skipped files, CCDs missing from a visit), for the registry."""
    p = INPUT_PROBLEMS[INPUT_PROBLEMS["visit"] >= 0]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in p.to_dict(orient="records")]


SIM_CCDS = sorted(PLAN.index["ccd"].unique().tolist()) if config["inputs"]["source"] == "sim" else []


# --- input functions -------------------------------------------------------------------
def raws_of_visit(wc):
    """The visit's raw files, in CCD order (a file holding several CCDs once)."""
    return list(dict.fromkeys(PLAN.raw(wc.visit, c)["raw"] for c in PLAN.ccds_of_visit(wc.visit)))


def refcat_files_of_visit(wc):
    """The refcats the visit's CCDs are calibrated against (a visit may span tracts), each once."""
    return sorted(set(refcats_of_visit(wc)))


def calibrate_units(wc):
    """``{ccd: unit}``: what the visit's calibrate job needs per CCD, in plan order (``skysnake.calibrate_files``):
    the raw file and HDU, the refcat, the plan's filter, epoch and exposure time, and the three output files."""
    out = {}
    for c in PLAN.ccds_of_visit(wc.visit):
        row = PLAN.raw(wc.visit, c)
        ids = {"visit": int(wc.visit), "ccd": c}
        out[c] = {"raw": row["raw"], "refcat": REFCAT.format(tract=PLAN.refcat_tract[(int(wc.visit), c)]),
                  "hdu": int(row["hdu"]), **ids, "filter": str(row["filter"]), "mjd": float(row["mjd"]),
                  "exptime": float(row["exptime"]), "calexp": CALEXP.format(**ids),
                  "sources": SOURCES.format(**ids), "summary": SUMMARY.format(**ids)}
    return out


def ccds_of_visit(wc):
    return PLAN.ccds_of_visit(wc.visit)


def refcat_source(wc):
    """The refcat's input files: the simulated refcat, the files matching refcat.path, or none (gaia, none)."""
    if config["refcat"]["source"] == "sim":
        return [f"{R}/sim/refcat.parquet"]
    if config["refcat"]["source"] == "file":
        return refcat_files(config)
    return []


def all_calexp_dirs(wc=None):
    return [CALEXP_DIR.format(visit=v) for v in PLAN.visits]


def all_summaries(wc=None):
    """Every CCD's summary, inside :func:`all_calexp_dirs`."""
    return [SUMMARY.format(visit=v, ccd=c) for v, c in PLAN.index[["visit", "ccd"]].itertuples(index=False)]


def warp_units(wc):
    """``{patch: [ccd, ...]}``: the patches of the tract the visit may touch and the CCDs that may land on each."""
    return PLAN.patches_of_visit(wc.tract, wc.visit)


def calexps_of_warp(wc):
    """The visit's CCDs that may land on some patch of the tract (inside the visit's ``CALEXP_DIR``)."""
    ccds = sorted({c for cs in warp_units(wc).values() for c in cs})
    return [CALEXP.format(visit=wc.visit, ccd=c) for c in ccds]


def largest_warp(wc):
    """The CCDs of the warp job's patch with the most of them (the job holds one patch's CCDs at a time)."""
    return max(warp_units(wc).values(), key=len)


def summaries_of_visit(wc):
    """The summaries of the visit's CCDs, inside its ``CALEXP_DIR``."""
    return [SUMMARY.format(visit=wc.visit, ccd=c) for c in PLAN.ccds_of_visit(wc.visit)]


def warp_dirs_of_coadd(wc):
    """The warp folders of every visit of the filter that touches the patch (one per visit)."""
    return [WARP_DIR.format(tract=wc.tract, visit=v) for v in PLAN.visits_of_patch(wc.tract, wc.patch, wc.filter)]


def warps_of_coadd(wc):
    """The coadd's warp files, inside :func:`warp_dirs_of_coadd`."""
    return [
        WARP.format(tract=wc.tract, patch=wc.patch, visit=v)
        for v in PLAN.visits_of_patch(wc.tract, wc.patch, wc.filter)
    ]


def tract_geometry(wc):
    return PLAN.skymap[int(wc.tract)].to_dict()


def patch_geometry(wc):
    return {"tract": tract_geometry(wc), "patch": wc.patch}


def per_filter(pattern):
    """Input function: the pattern for every filter that covers the patch."""

    def fn(wc):
        return {
            f: pattern.format(tract=wc.tract, patch=wc.patch, filter=f)
            for f in PLAN.filters_of_patch(wc.tract, wc.patch)
        }

    return fn


def forced_units(wc):
    """(patch, filter) of every forced-photometry table of the tract, in input order."""
    return [(p, f) for p in PLAN.patches(wc.tract) for f in PLAN.filters_of_patch(wc.tract, p)]


def forced_of_tract(wc):
    return [FORCED.format(tract=wc.tract, patch=p, filter=f) for p, f in forced_units(wc)]


def references_of_tract(wc):
    return [REFERENCE.format(tract=wc.tract, patch=p) for p in PLAN.patches(wc.tract)]


def all_targets():
    targets = [REGISTRY, SKYMAP, INDEX]
    targets += [OBJECTS.format(tract=t) for t in PLAN.tracts]
    targets += qa_targets()  # rules/qa.smk
    return targets


# --- QA (rules/qa.smk): figures for the report ----------------------------------------------
QA = f"{R}/qa"
QA_ASTROMETRY = f"{QA}/visit/{{visit}}/astrometry-{{visit}}.png"
QA_FOCAL_PLANE = f"{QA}/visit/{{visit}}/focalplane-{{visit}}.png"
QA_COLOR = f"{QA}/tract/{{tract}}/color/color-{{tract}}-{{patch}}.png"
QA_DEPTH_MAPS = f"{QA}/tract/{{tract}}/depth-{{tract}}.fits"
QA_TRACT_FIGURES = ["depth", "coverage", "counts", "colorcolor", "colormag"]
QA_TRUTH_FIGURES = ["truth-completeness", "truth-photometry"]


def qa_tract_png(name):
    return f"{QA}/tract/{{tract}}/{name}-{{tract}}.png"


def qa_targets():
    """Every QA figure of the plan (the truth comparison only for the simulated survey)."""
    out = [QA_ASTROMETRY.format(visit=v) for v in PLAN.visits]
    out += [QA_FOCAL_PLANE.format(visit=v) for v in PLAN.visits]
    names = QA_TRACT_FIGURES + (QA_TRUTH_FIGURES if config["inputs"]["source"] == "sim" else [])
    for t in PLAN.tracts:
        out += [QA_COLOR.format(tract=t, patch=p) for p in PLAN.patches(t)]
        out += [qa_tract_png(n).format(tract=t) for n in names]
    return out


def refcats_of_visit(wc):
    """The refcat each CCD of the visit was calibrated against, CCD by CCD (as sources_of_visit)."""
    return [REFCAT.format(tract=PLAN.refcat_tract[(int(wc.visit), c)]) for c in PLAN.ccds_of_visit(wc.visit)]


def sources_of_visit(wc):
    return [SOURCES.format(visit=wc.visit, ccd=c) for c in PLAN.ccds_of_visit(wc.visit)]


def visit_footprints(wc):
    """Approximate CCD corners from the raw headers: where a failed CCD (no fitted WCS) is drawn."""
    rows = (PLAN.raw(wc.visit, c) for c in PLAN.ccds_of_visit(wc.visit))
    return {int(r["ccd"]): [[float(r[f"ra_c{i}"]), float(r[f"dec_c{i}"])] for i in range(4)] for r in rows}


def coadds_of_tract(wc):
    return [COADD.format(tract=wc.tract, patch=p, filter=f) for p, f in coadd_units(wc)]


def coadd_units(wc):
    """(patch, filter) of every coadd of the tract, in input order."""
    return [(p, f) for p in PLAN.patches(wc.tract) for f in PLAN.filters_of_patch(wc.tract, p)]


def multiband_options(*keys):
    """Only the multiband options given, for params: a change to any other option does not rerun the job."""
    return {k: config["multiband"][k] for k in keys}


# --- resources: sized from the data ------------------------------------------------------
# Megapixels of one CCD and of one patch (outer box). For files on disk the CCD size is taken as
# 4096 x 4096 (an LSST CCD, the largest common one), which only over-asks for smaller cameras.
CCD_MPIX = (config["sim"]["ccd_nx"] * config["sim"]["ccd_ny"] / 1e6 if config["inputs"]["source"] == "sim"
            else 4096 * 4096 / 1e6)
PATCH_MPIX = (config["skymap"]["patch_inner_px"] + 2 * config["skymap"]["patch_border_px"]) ** 2 / 1e6
# Bytes per pixel of a calibrated CCD read by a job: image f4 + variance f4 + mask i2.
PLANE_BYTES = 10
MEM_HEADROOM = 1.5


def _n_inputs(inputs, wc):
    return len(inputs(wc)) if inputs is not None else 0


def mem_mb(base, per_mpix=0.0, mpix=0.0, *, per_input=0.0, inputs=None):
    """Memory request (MB) sized from the data and growing with the attempt.

    ``MEM_HEADROOM x (base + per_mpix x mpix + per_input x n_inputs) x (1 + 0.5 (attempt - 1))``:
    ``base`` is the process (Python, imports, tables), ``per_mpix`` the MB per megapixel of the
    image the job makes (a CCD or a patch: ``CCD_MPIX``, ``PATCH_MPIX``), ``per_input`` the MB per
    input image it holds (``inputs`` is the rule's input function: a coadd of 20 visits holds 20
    warps), fitted to the peak RSS the benchmark files record (README "Running on a cluster").
    A job killed for memory is retried with 50% more.
    """

    def fn(wc, attempt):
        need = base + per_mpix * mpix + per_input * _n_inputs(inputs, wc)
        return int(MEM_HEADROOM * need * (1 + 0.5 * (attempt - 1)))

    return fn


def runtime(base, per_mpix=0.0, mpix=0.0, *, per_input=0.0, inputs=None):
    """Wall-time request (minutes) sized like ``mem_mb``; doubled on each retry (a job killed at its
    wall-time limit comes back with twice as long)."""

    def fn(wc, attempt):
        need = base + per_mpix * mpix + per_input * _n_inputs(inputs, wc)
        return int(math.ceil(need * 2 ** (attempt - 1)))

    return fn
