"""Status of a skysnake run: per stage, how many units are done, failed, running and pending.

``skysnake status`` answers "where is my run, what broke, and what do I do?" from what is on disk,
while a run is in progress or after it stopped:

* the **plan** (every data unit: CCDs, warps, patches, tracts), recomputed from the same config the
  run used, exactly as the workflow computes it when Snakemake parses it;
* the **outputs** under the results folder, and each CCD's calibration summary (``status``,
  ``code``, ``reason``) and the **registry** (quality-cut decisions);
* **Snakemake's own records** in ``.snakemake/``: ``incomplete/`` markers (a job started and has not
  finished: running now, or interrupted by a crash or kill), ``locks/`` and the run logs in ``log/``
  (``Error in rule ...`` blocks name the outputs of failed jobs), and the live processes of the
  working directory (``/proc``), to tell a running job from an interrupted one.

A unit is ``done`` when all its outputs exist and none is marked incomplete; ``failed`` when its job
failed (Snakemake logged an error and the outputs are missing); ``running`` or ``interrupted`` when an
output is marked incomplete (with or without a live Snakemake); ``pending`` otherwise. The calibrate job
is a visit, but its data unit is the CCD: each CCD of the plan also gets a state (:attr:`Status.ccds`),
its visit's job state until that job is done, then ``done`` or ``failed`` from the CCD's summary (a
CCD whose data could not be calibrated says ``failed``, with the reason). Whether an existing
output is out of date (changed parameters or code) is Snakemake's decision: ``snakemake -n`` says.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: Stages in workflow order, each with its output patterns and log pattern (relative to ``results``),
#: the same paths as rules/common.smk (a test checks them against ``snakemake -n``).
STAGES = {
    "simulate_sky": (["sim/truth.parquet", "sim/refcat.parquet"], "logs/simulate_sky/simulate_sky.log"),
    "simulate_visit": ([], "logs/simulate_visit/{visit}.log"),  # outputs: every CCD of the visit
    "ingest": (["ingest/index.parquet"], "logs/ingest/ingest.log"),
    "refcat": (["refcat/refcat-{tract}.parquet"], "logs/refcat/{tract}.log"),
    "calibrate": (["calexp/{visit}"], "logs/calibrate/{visit}.log"),  # a folder: the files of the visit's CCDs
    "registry": (["registry.sqlite"], "logs/registry/registry.log"),
    "skymap": (["skymap.json"], "logs/skymap/skymap.log"),
    "warp": (["warp/{tract}/{visit}"], "logs/warp/{tract}-{visit}.log"),  # a folder: the visit on each patch
    "coadd": (["coadd/{tract}/{patch}/coadd-{tract}-{patch}-{filter}.fits"],
              "logs/coadd/{tract}-{patch}-{filter}.log"),
    "detect": (["multiband/{tract}/{patch}/detect-{tract}-{patch}-{filter}.parquet"],
               "logs/detect/{tract}-{patch}-{filter}.log"),
    "merge_detections": (["multiband/{tract}/{patch}/merged-{tract}-{patch}.parquet"],
                         "logs/merge_detections/{tract}-{patch}.log"),
    "measure": (["multiband/{tract}/{patch}/measure-{tract}-{patch}-{filter}.parquet"],
                "logs/measure/{tract}-{patch}-{filter}.log"),
    "select_reference": (["multiband/{tract}/{patch}/reference-{tract}-{patch}.parquet"],
                         "logs/select_reference/{tract}-{patch}.log"),
    "forced_photometry": (["multiband/{tract}/{patch}/forced-{tract}-{patch}-{filter}.parquet"],
                          "logs/forced_photometry/{tract}-{patch}-{filter}.log"),
    "object_catalog": (["objects/objects-{tract}.parquet"], "logs/object_catalog/{tract}.log"),
    # quality assurance (rules/qa.smk)
    "qa_visit": (["qa/visit/{visit}/astrometry-{visit}.png", "qa/visit/{visit}/focalplane-{visit}.png"],
                 "logs/qa_visit/{visit}.log"),
    "qa_color": (["qa/tract/{tract}/color/color-{tract}-{patch}.png"], "logs/qa_color/{tract}-{patch}.log"),
    "qa_tract": (["qa/tract/{tract}/depth-{tract}.fits"] + [f"qa/tract/{{tract}}/{n}-{{tract}}.png" for n in
                 ("depth", "coverage", "counts", "colorcolor", "colormag")], "logs/qa_tract/{tract}.log"),
    "qa_truth": ([f"qa/tract/{{tract}}/{n}-{{tract}}.png" for n in ("truth-completeness", "truth-photometry")],
                 "logs/qa_truth/{tract}.log"),
}
#: the files of one CCD in its visit's calibrate folder (rules/common.smk CALEXP, SOURCES, SUMMARY)
CCD_FILES = ["calexp/{visit}/calexp-{visit}-{ccd}.fits", "calexp/{visit}/sources-{visit}-{ccd}.parquet",
             "calexp/{visit}/summary-{visit}-{ccd}.json"]
SIM_RAW = "sim/raw/{visit}/raw-{visit}-{ccd}.fits"
SIM_TRUTH = "sim/truth/{visit}/truth-{visit}-{ccd}.json"
STATES = ["done", "failed", "running", "interrupted", "pending"]
UNIT_COLUMNS = ["stage", "unit", "state", "code", "reason", "log", "visit", "ccd", "tract", "patch", "filter",
                "outputs"]
CCD_COLUMNS = ["visit", "ccd", "state", "code", "reason", "log", "summary"]


@dataclass
class Status:
    """What :func:`collect_status` found. ``units`` has :data:`UNIT_COLUMNS`, one row per job of the plan;
    ``ccds`` has :data:`CCD_COLUMNS`, one row per CCD of the plan (the calibrate job is a visit)."""

    workdir: str
    results: str
    units: pd.DataFrame
    ccds: pd.DataFrame
    problems: pd.DataFrame  # input problems (skysnake.ingest.PROBLEM_COLUMNS): never scheduled
    snakemake: dict  # running (bool), pids, locked (bool), incomplete (list of paths), logs (list)
    notes: list = field(default_factory=list)  # empty patches, stale registry, quality rejections, temp files

    def counts(self):
        """Units per stage (rows, workflow order) and state (columns), with a total."""
        c = pd.crosstab(self.units["stage"], self.units["state"]).reindex(columns=STATES, fill_value=0)
        c = c.reindex([s for s in STAGES if s in c.index])
        c.insert(0, "total", c.sum(axis=1))
        return c

    def ccd_counts(self):
        """CCDs per state (the calibrate stage's data units), with a total."""
        c = self.ccds["state"].value_counts().reindex(STATES, fill_value=0)
        return {"total": int(c.sum()), **{k: int(v) for k, v in c.items()}}

    def failed(self):
        """Failed jobs."""
        return self.units[self.units["state"] == "failed"]

    def failed_ccds(self):
        """CCDs that could not be calibrated (their summary says why) or whose visit's job failed."""
        return self.ccds[self.ccds["state"] == "failed"]

    def to_dict(self):
        """JSON-ready record: counts per stage and state, every unit, input problems, notes."""

        def records(df):
            return df.astype(object).where(df.notna(), None).to_dict(orient="records")

        return {"workdir": self.workdir, "results": self.results, "snakemake": self.snakemake,
                "counts": {s: {k: int(v) for k, v in row.items()} for s, row in self.counts().iterrows()},
                "ccd_counts": self.ccd_counts(), "units": records(self.units.drop(columns=["outputs"])),
                "ccds": records(self.ccds), "problems": records(self.problems),
                "notes": self.notes}


# --- configuration ------------------------------------------------------------------------------------------
def default_schema_path():
    """config/schema.yaml of the source tree this package is installed from (editable install)."""
    return Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def fill_defaults(cfg, schema):
    """``cfg`` with every missing key of a JSON schema set to its default (as Snakemake's ``validate``)."""
    out = copy.deepcopy(cfg)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and sub.get("properties"):
            out[key] = fill_defaults(out[key], sub)
    return out


def _update(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _update(a[k], v)
        else:
            a[k] = copy.deepcopy(v)
    return a


def load_config(configfiles, *, overrides=None, schema=None):
    """The run's config: ``configfiles`` merged in order (as ``--configfile``), then ``overrides``
    (``{key: value}`` as ``--config``), then the schema's defaults."""
    import yaml

    cfg = {}
    for f in configfiles:
        _update(cfg, yaml.safe_load(Path(f).read_text()) or {})
    _update(cfg, overrides or {})
    schema = Path(schema) if schema else default_schema_path()
    if not schema.exists():
        raise FileNotFoundError(f"config schema {schema} not found: pass --schema (config/schema.yaml of skysnake)")
    return fill_defaults(cfg, yaml.safe_load(schema.read_text()))


# --- the plan's units ---------------------------------------------------------------------------------------
def expected_units(config, plan):
    """One row per job of the plan: ``stage, unit, log, visit, ccd, tract, patch, filter, outputs``.

    Paths are as Snakemake writes them: ``{results}/...`` relative to the working directory.
    """
    r = os.path.normpath(config["results"])
    rows = []

    def add(stage, label, ids, outputs=None):
        outs, log = STAGES[stage]
        outs = outputs if outputs is not None else [o.format(**ids) for o in outs]
        rows.append({"stage": stage, "unit": label, "log": os.path.join(r, log.format(**ids)),
                     "outputs": [os.path.join(r, o) for o in outs], **ids})

    idx = plan.index
    sim = config["inputs"]["source"] == "sim"
    if sim:
        add("simulate_sky", "sky", {})
        ccds = sorted(idx["ccd"].unique().tolist())
        for v in plan.visits:
            add("simulate_visit", f"visit {v}", {"visit": v},
                [p.format(visit=v, ccd=c) for p in (SIM_RAW, SIM_TRUTH) for c in ccds])
    add("ingest", "index", {})
    for t in sorted(set(plan.refcat_tract.values())):
        add("refcat", f"tract {t}", {"tract": t})
    for v in plan.visits:
        add("calibrate", f"visit {v}", {"visit": int(v)})
    add("registry", "registry", {})
    add("skymap", "skymap", {})
    for t, v in plan.warp_jobs():
        add("warp", f"tract {t} visit {v}", {"tract": int(t), "visit": int(v)})
    for t in plan.tracts:
        for p in plan.patches(t):
            filters = plan.filters_of_patch(t, p)
            for stage in ("coadd", "detect", "measure", "forced_photometry"):
                for f in filters:
                    add(stage, f"tract {t} patch {p} filter {f}", {"tract": int(t), "patch": p, "filter": f})
            for stage in ("merge_detections", "select_reference"):
                add(stage, f"tract {t} patch {p}", {"tract": int(t), "patch": p})
        add("object_catalog", f"tract {t}", {"tract": int(t)})
        for p in plan.patches(t):
            add("qa_color", f"tract {t} patch {p}", {"tract": int(t), "patch": p})
        add("qa_tract", f"tract {t}", {"tract": int(t)})
        if sim:
            add("qa_truth", f"tract {t}", {"tract": int(t)})
    for v in plan.visits:
        add("qa_visit", f"visit {v}", {"visit": int(v)})
    df = pd.DataFrame(rows)
    for col in ("visit", "ccd", "tract", "patch", "filter"):
        if col not in df:
            df[col] = None
    df["visit"] = df["visit"].astype("Int64")
    df["ccd"] = df["ccd"].astype("Int64")
    df["tract"] = df["tract"].astype("Int64")
    return df


# --- Snakemake's records ------------------------------------------------------------------------------------
def _decode_record_path(root, path):
    """The output path a ``.snakemake/incomplete`` (or ``metadata``) record stands for."""
    parts = Path(path).relative_to(root).parts
    b64 = "".join(p.lstrip("@") for p in parts)
    return base64.urlsafe_b64decode(b64.encode()).decode()


def incomplete_outputs(workdir):
    """Outputs Snakemake marked incomplete: their job started and did not finish (running or interrupted)."""
    root = Path(workdir) / ".snakemake" / "incomplete"
    out = set()
    if root.is_dir():
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f == "migration_underway":
                    continue
                try:
                    out.add(os.path.normpath(_decode_record_path(root, Path(dirpath) / f)))
                except (ValueError, UnicodeDecodeError):
                    continue
    return out


_JOB_START = re.compile(r"^(?:local)?rule (\w+):\s*$")
_JOB_ERROR = re.compile(r"^Error in rule (\w+):\s*$")


def job_events(workdir):
    """Last event of every output named in Snakemake's run logs (oldest log first).

    Returns ``({output: (event, rule, snakemake_log, exit)}, [logs])`` with ``event`` ``"started"`` or
    ``"error"`` and ``exit`` how the failed job's process ended (signal or exit status, else ''): an output
    whose last event is an error (and that is missing) belongs to a failed job.
    """
    logs = sorted((Path(workdir) / ".snakemake" / "log").glob("*.snakemake.log"))
    events = {}
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        current, command = None, ""
        for line in lines:
            m = _JOB_START.match(line) or _JOB_ERROR.match(line)
            if m:
                error = line.startswith("Error")
                current = ("error" if error else "started", m.group(1), command if error else "")
                command = ""
                continue
            c = _COMMAND.match(line)
            if c:
                command = _describe_exit(c.group(1))
            if current and line.startswith("    output: "):
                for o in line[len("    output: "):].split(", "):
                    events[os.path.normpath(o.strip())] = (current[0], current[1], str(log), current[2])
                current = None
            elif current and not line.startswith("    "):
                current = None
    return events, [str(p) for p in logs]


_COMMAND = re.compile(r"^Command '.*' (died with <Signals\.\w+: \d+>|returned non-zero exit status \d+)\.?\s*$")


def _describe_exit(text):
    m = re.match(r"died with <Signals\.(\w+): (\d+)>", text)
    if m:
        return f"the job's process was killed by signal {m.group(1)} ({m.group(2)})"
    return f"the job's process {text}"


def snakemake_processes(workdir):
    """Live processes working in ``workdir`` (Linux ``/proc``; none found elsewhere).

    Returns ``(snakemake, jobs)``: PIDs of Snakemake processes (dry runs excluded) and of job processes
    (Snakemake's ``.snakemake/scripts/`` copies), which outlive a Snakemake killed with ``kill -9``.
    """
    pids, jobs = [], []
    wd = os.path.realpath(workdir)
    proc = Path("/proc")
    if not proc.is_dir():
        return pids, jobs
    for p in proc.iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if os.path.realpath(p / "cwd") != wd:
                continue
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if any("/.snakemake/scripts/" in a or a.startswith(".snakemake/scripts/") for a in argv[:3]):
            jobs.append(int(p.name))
        elif (any(a.endswith("/snakemake") or a == "snakemake" for a in argv[:2])
              or any(pair == ("-m", "snakemake") for pair in itertools.pairwise(argv))) \
                and not ({"-n", "--dry-run", "--dryrun", "--summary", "--unlock"} & set(argv)):
            pids.append(int(p.name))
    return sorted(pids), sorted(jobs)


def _log_reason(path, *, max_len=300):
    """The last error message in a job's log (a logged ERROR or an exception line), or ''."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        s = line.strip()
        if " ERROR " in s or " CRITICAL " in s:
            return s.split(": ", 1)[-1][:max_len] if ": " in s else s[:max_len]
        if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", s):
            return s[:max_len]
    return ""


# --- status ---------------------------------------------------------------------------------------------------
def _existing_files(results_dir, results_rel):
    """Set of existing files and folders (a folder is the output of a job that writes many files, e.g. a
    warp job) under the results folder (paths as Snakemake names them), and temp files."""
    existing, temps = set(), []
    for dirpath, _, files in os.walk(results_dir):
        rel = os.path.relpath(dirpath, results_dir)
        existing.add(os.path.normpath(os.path.join(results_rel, rel)))
        for f in files:
            p = os.path.normpath(os.path.join(results_rel, rel, f))
            if f.startswith(".") and f.endswith(".tmp"):
                temps.append(p)
            existing.add(p)
    return existing, temps


def collect_status(workdir, config):
    """Status of the run in ``workdir`` (Snakemake's ``--directory``) made with ``config`` (:func:`load_config`).

    Returns
    -------
    Status
    """
    from .ingest import check_inputs, empty_problems, input_index
    from .plan import make_plan

    workdir = os.path.abspath(workdir)
    results = os.path.normpath(config["results"])
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        check_inputs(config)
        index, problems = input_index(config, raw_sim_pattern=os.path.join(results, SIM_RAW))
        plan = make_plan(index, config["skymap"], margin_arcsec=config["skymap"]["overlap_margin_arcsec"])
    units = expected_units(config, plan)
    existing, temps = _existing_files(os.path.join(workdir, results), results)
    incomplete = incomplete_outputs(workdir)
    events, logs = job_events(workdir)
    pids, job_pids = snakemake_processes(workdir)
    locked = (Path(workdir) / ".snakemake" / "locks").is_dir() and any((Path(workdir) / ".snakemake" / "locks").iterdir())
    states, codes, reasons = [], [], []
    for u in units.itertuples(index=False):
        state, code, reason = "pending", None, None
        if any(o in incomplete for o in u.outputs):
            state = "running" if pids else "interrupted"
        elif all(o in existing for o in u.outputs):
            state = "done"
        else:
            ev = [events.get(o) for o in u.outputs if o not in existing]
            err = next((e for e in ev if e and e[0] == "error"), None)
            if err:
                state, code = "failed", "job_failed"
                why = "; ".join(w for w in (_log_reason(os.path.join(workdir, u.log)), err[3]) if w)
                reason = (why or "the job failed") + f" (Snakemake's log: {os.path.relpath(err[2], workdir)})"
        states.append(state)
        codes.append(code)
        reasons.append(reason)
    units["state"], units["code"], units["reason"] = states, codes, reasons
    units = units[UNIT_COLUMNS]
    if problems is None:
        problems = empty_problems()
    ccds = _ccd_states(units, plan, results=results, workdir=workdir, existing=existing)
    st = Status(workdir=workdir, results=results, units=units, ccds=ccds, problems=problems,
                snakemake={"running": bool(pids), "pids": pids, "job_pids": job_pids, "locked": bool(locked),
                           "incomplete": sorted(incomplete), "logs": logs})
    st.notes = _notes(st, workdir, existing, temps)
    return st


def _ccd_states(units, plan, *, results, workdir, existing):
    """One row per CCD of the plan (:data:`CCD_COLUMNS`): its visit's calibrate job state until that job is
    done (a failed job fails all its CCDs, with the job's reason), then the outcome its summary records."""
    jobs = {int(u.visit): u for u in units[units.stage == "calibrate"].itertuples(index=False)}
    rows = []
    for v, c in plan.index[["visit", "ccd"]].itertuples(index=False):
        job = jobs[int(v)]
        summary = os.path.join(results, CCD_FILES[2].format(visit=int(v), ccd=int(c)))
        state, code, reason = job.state, job.code, job.reason
        if state == "done":
            state, code, reason = _calibrate_outcome(os.path.join(workdir, summary), rel=summary,
                                                     exists=summary in existing, folder=job.outputs[0])
        rows.append({"visit": int(v), "ccd": int(c), "state": state, "code": code, "reason": reason, "log": job.log,
                     "summary": summary})
    df = pd.DataFrame(rows, columns=CCD_COLUMNS)
    df["visit"] = df["visit"].astype("Int64")
    df["ccd"] = df["ccd"].astype("Int64")
    return df


def _calibrate_outcome(summary_path, *, rel, exists, folder):
    """A CCD of a finished calibrate job: ``(state, code, reason)`` from its summary."""
    redo = f"delete {folder} and rerun to calibrate the visit again"
    if not exists:
        return "failed", "missing", f"{rel}: no summary in the finished calibrate folder; {redo}"
    try:
        s = json.loads(Path(summary_path).read_text())
    except (OSError, ValueError):
        return "failed", "unreadable", f"{rel}: summary unreadable; {redo}"
    if s.get("status") == "ok":
        return "done", None, None
    return "failed", s.get("code") or "data_error", s.get("reason")


def _notes(st, workdir, existing, temps):
    """Things worth knowing that are not failures: empty patches, quality rejections, stale registry, temp files."""
    notes = []
    u = st.units
    for r in u[(u.stage == "refcat") & (u.state == "done")].itertuples(index=False):
        if _parquet_rows(os.path.join(workdir, r.outputs[0])) == 0:
            notes.append({"kind": "empty_refcat", "unit": r.unit, "log": r.log,
                          "text": f"{r.unit}: the reference catalog has no star in the tract, so every CCD "
                                  "calibrated against it fails: check that refcat.path covers the field"})
    for r in u[(u.stage == "coadd") & (u.state == "done")].itertuples(index=False):
        if _coadd_is_empty(os.path.join(workdir, r.outputs[0])):
            notes.append({"kind": "empty_coadd", "unit": r.unit, "log": r.log,
                          "text": f"{r.unit}: coadd has no data (every CCD on it failed, was rejected or "
                                  "missed the patch)"})
    for r in u[(u.stage == "detect") & (u.state == "done")].itertuples(index=False):
        if _parquet_rows(os.path.join(workdir, r.outputs[0])) == 0:
            notes.append({"kind": "no_detections", "unit": r.unit, "log": r.log,
                          "text": f"{r.unit}: no detections"})
    reg = os.path.join(st.results, "registry.sqlite")
    if reg in existing:
        from .registry import read_registry

        try:
            table = read_registry(os.path.join(workdir, reg))
        except Exception as err:  # noqa: BLE001 - a registry being replaced or broken is reported, not fatal
            notes.append({"kind": "registry", "text": f"registry unreadable ({err})"})
            table = None
        if table is not None:
            rej = table[(table.status == "ok") & (table.selected == 0)]
            for r in rej.itertuples(index=False):
                notes.append({"kind": "rejected", "unit": f"visit {r.visit} ccd {r.ccd}", "log": r.log_path,
                              "text": f"visit {r.visit} ccd {r.ccd}: calibrated but left out of coadds: "
                                      f"{r.reject_reason}"})
            summaries = [os.path.join(workdir, p) for p in st.ccds["summary"] if p in existing]
            t_reg = os.path.getmtime(os.path.join(workdir, reg))
            newer = sum(os.path.getmtime(p) > t_reg for p in summaries)
            if newer or len(table) < len(summaries):
                notes.append({"kind": "registry", "text": f"registry.sqlite is older than {max(newer, 1)} CCD "
                                                          "summaries: the registry job will rebuild it"})
    # a running job writes its temp files beside its outputs, or inside its output folder
    live = {os.path.join(d, "") for o in st.snakemake["incomplete"] for d in (os.path.dirname(o), o)}
    stray = [t for t in temps if not (st.snakemake["running"] and os.path.join(os.path.dirname(t), "") in live)]
    if stray:
        notes.append({"kind": "temp_files", "text": f"{len(stray)} temporary file(s) left by interrupted jobs "
                                                    f"(never used as outputs; safe to delete), e.g. {stray[0]}"})
    return notes


def _coadd_is_empty(path):
    """True for a coadd made from no input (NINPUT = 0) or without pixels (NPIX = 0)."""
    from astropy.io import fits

    try:
        h = fits.getheader(path, 0)
    except (OSError, ValueError):
        return False
    return h.get("NINPUT", 1) == 0 or h.get("NPIX", 1) == 0


def _parquet_rows(path):
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except (OSError, ValueError):
        return -1


# --- report ---------------------------------------------------------------------------------------------------
def format_status(st, *, max_list=50):
    """The report ``skysnake status`` prints."""
    out = [f"skysnake status of {st.workdir} (results: {st.results})"]
    sm = st.snakemake
    n_inc = int((st.units.state.isin(["running", "interrupted"])).sum())
    if sm["running"]:
        out.append(f"Snakemake is running (pid {', '.join(map(str, sm['pids']))}); {n_inc} job(s) in progress.")
    elif sm["job_pids"]:
        out.append(f"Snakemake is not running, but {len(sm['job_pids'])} job process(es) it started are "
                   f"(pid {', '.join(map(str, sm['job_pids']))}): wait for them to end (or kill them) before "
                   "restarting; their outputs are marked incomplete and will be remade.")
    if not sm["running"] and (n_inc or sm["locked"]):
        out.append(f"Snakemake is not running, but {n_inc} job(s) were interrupted (killed or crashed) and the "
                   "working directory is " + ("still locked" if sm["locked"] else "not locked") + ".")
        out.append("  To resume: " + ("snakemake --unlock, then " if sm["locked"] else "")
                   + "snakemake --rerun-incomplete (the default profile does this): only the interrupted and "
                     "pending jobs run.")
    elif not sm["running"] and not sm["job_pids"]:
        out.append("Snakemake is not running.")
    out.append("")
    counts = st.counts()
    cols = ["total"] + STATES
    out.append(f"{'stage':<18}" + "".join(f"{c:>12}" for c in cols))
    for stage, row in counts.iterrows():
        out.append(f"{stage:<18}" + "".join(f"{int(row[c]):>12}" for c in cols))
        if stage == "calibrate":  # one job per visit; its data units are the CCDs
            n = st.ccd_counts()
            out.append(f"{'  CCDs':<18}" + "".join(f"{n[c]:>12}" for c in cols))
    out.append("")
    fails = st.failed()
    ccd = st.failed_ccds()
    ccd = ccd[ccd.code != "job_failed"]  # a failed calibrate job is listed with the failed jobs
    probs = st.problems
    if len(ccd) or len(probs):
        out.append(f"Failed CCDs ({len(ccd) + len(probs)}):")
        for r in ccd.head(max_list).itertuples(index=False):
            out.append(f"  visit {r.visit} ccd {r.ccd} [{r.code}] {r.reason}")
            out.append(f"      log: {r.log}")
        for r in probs.head(max_list).itertuples(index=False):
            who = f"visit {r.visit} ccd {r.ccd}" if r.visit >= 0 else "input file"
            out.append(f"  {who} [{r.code}] {r.reason}")
            out.append("      never calibrated (found when the inputs were indexed)")
        out.append("")
    jobs = fails
    if len(jobs):
        out.append(f"Failed jobs ({len(jobs)}):")
        for r in jobs.head(max_list).itertuples(index=False):
            out.append(f"  {r.stage} {r.unit}: {r.reason}")
            out.append(f"      log: {r.log}")
        out.append("  Fix the cause, then rerun snakemake: only these jobs and what depends on them run.")
        out.append("")
    inc = st.units[st.units.state.isin(["running", "interrupted"])]
    if len(inc):
        out.append(f"{'Running' if sm['running'] else 'Interrupted'} jobs ({len(inc)}):")
        for r in inc.head(max_list).itertuples(index=False):
            out.append(f"  {r.stage} {r.unit}    log: {r.log}")
        out.append("")
    for kind, title in (("empty_refcat", "Tracts without reference stars"), ("empty_coadd", "Patches without data"),
                        ("no_detections", "Patches without detections"),
                        ("rejected", "CCDs left out by the quality cuts")):
        items = [n for n in st.notes if n["kind"] == kind]
        if items:
            out.append(f"{title} ({len(items)}):")
            out += [f"  {n['text']}" + (f"    log: {n['log']}" if n.get("log") else "") for n in items[:max_list]]
            out.append("")
    for n in st.notes:
        if n["kind"] in ("registry", "temp_files"):
            out.append(f"Note: {n['text']}")
    return "\n".join(out).rstrip() + "\n"
