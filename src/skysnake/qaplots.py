"""QA figures: pure functions from measures (:mod:`skysnake.qa`) and tables to matplotlib Figures.

Figures are made with :class:`matplotlib.figure.Figure` directly (no pyplot, no global
state; rendering uses the Agg canvas). :func:`save_png` writes one with the output's
provenance in the PNG's text chunks.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from . import qa

STAR_COLOR = "tab:blue"
GALAXY_COLOR = "tab:orange"
FILTER_COLORS = {"u": "tab:purple", "g": "tab:green", "r": "tab:red", "i": "tab:brown", "z": "tab:gray",
                 "y": "black"}


def _figure(width, height):
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)  # render with Agg, whatever pyplot's backend
    return fig


def _no_data(ax, text="no data"):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4")


def _legend(ax, **kw):
    """A legend, if anything on the axes has a label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _fcolor(f):
    return FILTER_COLORS.get(f, "tab:cyan")


def save_png(fig, path, *, provenance=None, dpi=100):
    """Write ``fig`` as PNG; ``provenance`` (dict) goes in the PNG text chunk ``skysnake_provenance``."""
    meta = {"Software": "skysnake"}
    if provenance:
        meta["skysnake_provenance"] = json.dumps(provenance)
    fig.savefig(path, dpi=dpi, metadata=meta)


# ------------------------------------------------------------------------------------ focal plane

def _ccd_polygons(ccds, center):
    """{ccd: (N, 2) array of focal-plane corners (arcmin)} from a ``corners`` column of [[ra, dec] x 4]."""
    out = {}
    for ccd, corners in zip(ccds["ccd"], ccds["corners"]):
        if corners is None or (isinstance(corners, float) and np.isnan(corners)):
            continue
        c = np.asarray(json.loads(corners) if isinstance(corners, str) else corners, float)
        xi, eta = qa.focal_plane(c[:, 0], c[:, 1], center=center)
        out[int(ccd)] = np.column_stack([xi, eta])
    return out


def _setup_focal_plane_axis(ax, polys):
    allp = np.concatenate(list(polys.values())) if polys else np.zeros((1, 2))
    pad = 0.04 * max(np.ptp(allp[:, 0]), np.ptp(allp[:, 1]), 1.0)
    # east to the left, as on the sky
    ax.set_xlim(allp[:, 0].max() + pad, allp[:, 0].min() - pad)
    ax.set_ylim(allp[:, 1].min() - pad, allp[:, 1].max() + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("east offset (arcmin)")
    ax.set_ylabel("north offset (arcmin)")


def plot_focal_plane(ccds, *, center, title=""):
    """Zeropoint, seeing and astrometric rms of each CCD of a visit, as focal-plane maps.

    ``ccds``: one row per CCD with ``ccd, corners, status, code, selected, reject_reason,
    zeropoint, seeing_arcsec, astrom_rms_arcsec`` (the calibration summaries). Failed CCDs
    are hatched grey with their failure code; CCDs left out by the quality cuts are outlined
    in red.
    """
    fig = _figure(13, 5.6)
    axes = fig.subplots(1, 3)
    polys = _ccd_polygons(ccds, center)
    # (column, label, value format, colour map, smallest colour range)
    panels = [("zeropoint", "zeropoint (mag)", "{:.3f}", "viridis", 0.05),
              ("seeing_arcsec", "seeing FWHM (arcsec)", "{:.2f}\"", "magma_r", 0.2),
              ("astrom_rms_arcsec", "astrometric rms (mas)", "{:.0f}", "cividis", 20.0)]
    rows = ccds.reset_index(drop=True)
    ok = (rows["status"] == "ok").to_numpy()
    for ax, (col, label, fmt, cmap, min_range) in zip(axes, panels):
        scale = 1000.0 if col == "astrom_rms_arcsec" else 1.0
        vals = np.array([float(v) * scale if v is not None else np.nan for v in rows.get(col, [np.nan] * len(rows))])
        good = ok & np.isfinite(vals)
        if good.any():
            lo, hi = np.min(vals[good]), np.max(vals[good])
            if hi - lo < min_range:  # CCDs that agree should look alike: never stretch tiny differences
                mid = 0.5 * (lo + hi)
                lo, hi = mid - min_range / 2, mid + min_range / 2
        else:
            lo, hi = 0.0, 1.0
        norm = Normalize(lo, hi)
        for i, r in rows.iterrows():  # one polygon per CCD
            poly = polys.get(int(r["ccd"]))
            if poly is None:
                continue
            cx, cy = poly.mean(axis=0)
            if good[i]:
                p = Polygon(poly, closed=True, facecolor=_cmap(cmap)(norm(vals[i])), edgecolor="k", lw=0.8)
                txt = f"{int(r['ccd'])}\n{fmt.format(vals[i])}"
                tcolor = "white" if norm(vals[i]) < 0.5 and cmap in ("viridis", "cividis") else "black"
                if cmap == "magma_r":
                    tcolor = "white" if norm(vals[i]) > 0.5 else "black"
            elif ok[i]:  # calibrated, but this value is missing
                p = Polygon(poly, closed=True, facecolor="0.92", edgecolor="0.3", lw=0.8)
                txt, tcolor = f"{int(r['ccd'])}\nn/a", "black"
            else:
                p = Polygon(poly, closed=True, facecolor="0.85", edgecolor="0.3", hatch="//", lw=0.8)
                txt = f"{int(r['ccd'])}\nfailed\n{r.get('code') or ''}"
                tcolor = "black"
            ax.add_patch(p)
            if ok[i] and not bool(r.get("selected", True)):
                ax.add_patch(Polygon(poly, closed=True, fill=False, edgecolor="red", lw=2.5))
                txt += "\nrejected"
            ax.text(cx, cy, txt, ha="center", va="center", fontsize=9, color=tcolor)
        sm = ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax, label=label, shrink=0.85)
        _setup_focal_plane_axis(ax, polys)
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    return fig


def _nice(x):
    """1, 2 or 5 times a power of ten, near ``x``."""
    e = np.floor(np.log10(x))
    m = x / 10**e
    return float((1 if m < 1.5 else 2 if m < 3.5 else 5 if m < 7.5 else 10) * 10**e)


def _cmap(name):
    import matplotlib

    return matplotlib.colormaps[name]


def plot_astrometry(resid, *, ccds, center, title=""):
    """Astrometric residuals of one visit against the reference catalog.

    Three panels: histograms of the east and north residuals (mas) of the stars the fits
    used; residual size against magnitude; and the residual vectors over the focal plane,
    magnified, with each CCD's rms.
    """
    fig = _figure(15, 5.6)
    ax_h, ax_m, ax_q = fig.subplots(1, 3)
    used = resid[resid["used"].astype(bool)] if len(resid) else resid
    st = qa.residual_stats(resid)
    if len(used):
        lim = max(3.0 * max(st["rms_ra"], st["rms_dec"]), 10.0)
        bins = np.linspace(-lim, lim, 41)
        ax_h.hist(np.clip(used["dra_mas"], -lim, lim), bins=bins, histtype="step", lw=1.8,
                  label=f"east (RA cos dec): rms {st['rms_ra']:.1f} mas")
        ax_h.hist(np.clip(used["ddec_mas"], -lim, lim), bins=bins, histtype="step", lw=1.8,
                  label=f"north (Dec): rms {st['rms_dec']:.1f} mas")
        ax_h.axvline(0, color="0.5", lw=0.8)
        ax_h.legend(loc="upper left", fontsize=9, title=f"{st['n']} stars used in the fits", title_fontsize=9)
        ax_h.set_ylim(0, ax_h.get_ylim()[1] * 1.35)
        tot = np.hypot(resid["dra_mas"], resid["ddec_mas"])
        u = resid["used"].to_numpy(bool)
        ax_m.scatter(resid["mag"][~u], tot[~u], s=10, c="0.6", label="matched, not used")
        ax_m.scatter(resid["mag"][u], tot[u], s=10, c="tab:blue", label="used in the fit")
        ax_m.set_yscale("log")
        _legend(ax_m, fontsize=9)
    else:
        _no_data(ax_h, "no matched reference stars")
        _no_data(ax_m, "no matched reference stars")
    ax_h.set_xlabel("measured - reference (mas)" + (f"; beyond $\\pm${lim:.0f} in the end bins" if len(used) else ""))
    ax_h.set_ylabel("stars")
    ax_h.set_title("residual distribution")
    ax_m.set_xlabel("source magnitude (AB)")
    ax_m.set_ylabel("|residual| (mas)")
    ax_m.set_title("residual size vs magnitude")

    polys = _ccd_polygons(ccds, center)
    for ccd, poly in polys.items():
        ax_q.add_patch(Polygon(poly, closed=True, fill=False, edgecolor="0.4", lw=0.8))
        sub = used[used["ccd"] == ccd] if len(used) else used
        s = qa.residual_stats(sub) if len(sub) else {"rms": np.nan, "n": 0}
        ymax = poly[:, 1].max()
        ax_q.text(poly[:, 0].mean(), ymax, f"ccd {ccd}: {s['rms']:.0f} mas\n{s['n']} stars", ha="center",
                  va="top", fontsize=8, color="0.2", bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    if len(used):
        xi, eta = qa.focal_plane(used["ra"], used["dec"], center=center)
        span = max(np.ptp(xi), np.ptp(eta), 1.0)
        rms = max(st["rms"], 1e-3)
        scale = rms / (0.035 * span)  # an arrow of the rms is 3.5% of the field: about the spacing of the stars
        ref = _nice(2.0 * rms)  # key arrow: a round number near twice the rms
        # angles and lengths in data units: with east to the left, an east offset points left
        q = ax_q.quiver(xi, eta, used["dra_mas"], used["ddec_mas"], color="tab:blue", angles="xy",
                        scale_units="xy", scale=scale, width=0.006)
        ax_q.quiverkey(q, 0.12, 1.03, ref, f"{ref:g} mas", labelpos="E", coordinates="axes")
    else:
        _no_data(ax_q, "no matched reference stars")
    _setup_focal_plane_axis(ax_q, polys)
    ax_q.set_title("residual vectors over the focal plane", pad=18)
    if title:
        fig.suptitle(title)
    return fig


# -------------------------------------------------------------------------------------- tract maps

def _tract_axes(fig, n, wcs):
    axes = []
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1, projection=wcs)
        ax.coords[0].set_axislabel("RA")
        ax.coords[1].set_axislabel("Dec")
        ax.coords[0].set_major_formatter("d.dd")
        ax.coords[1].set_major_formatter("d.dd")
        ax.coords[0].set_ticks(number=4)
        if i:
            ax.coords[1].set_axislabel(" ")
        axes.append(ax)
    return axes


def _draw_patches(ax, tract, factor, patches=None):
    """Patch inner boxes (tract pixels) outlined and named on a binned tract map."""
    for p in patches if patches is not None else tract.patches:
        x0, y0, x1, y1 = (v / factor - 0.5 for v in tract.inner_box(p))
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="white", lw=0.8, alpha=0.8)
        ax.text(x0 + 0.04 * (x1 - x0), y1 - 0.04 * (y1 - y0), p, color="white", fontsize=8, va="top",
                bbox={"facecolor": "black", "alpha": 0.4, "lw": 0, "pad": 1})


def _filter_maps_figure(maps, planes):
    """A figure with one tract-map panel per filter, sized from the maps' shape.

    Returns ``(fig, axes)``; ``axes`` is empty (and the figure says "no coadds") without filters.
    """
    filters = maps.filters
    ny, nx = next(iter(planes.values())).shape if planes else (1, 1)
    fig = _figure(1.0 + 4.2 * max(len(filters), 1) * min(nx / max(ny, 1), 1.6), 5.8)
    if not filters:
        _no_data(fig.add_subplot(), "no coadds")
        return fig, []
    return fig, _tract_axes(fig, len(filters), maps.wcs)


def plot_depth(maps, *, tract, title=""):
    """The point-source limiting magnitude over the tract, one panel per filter."""
    fig, axes = _filter_maps_figure(maps, maps.m5)
    if not axes:
        return fig
    for ax, f in zip(axes, maps.filters):
        m5 = maps.m5[f]
        v = m5[np.isfinite(m5)]
        if v.size:
            lo, hi = np.percentile(v, [1, 99.5])
            lo = min(lo, hi - 0.2)
            im = ax.imshow(m5, origin="lower", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, orientation="horizontal", shrink=0.9, pad=0.09)
            cb.set_label(f"{maps.nsigma:g}-sigma point-source depth (AB mag)")
            ax.set_title(f"{f}: median {np.median(v):.2f} mag")
        else:
            _no_data(ax)
            ax.set_title(f)
        ax.set_facecolor("0.8")
        _draw_patches(ax, tract, maps.factor)
    if title:
        fig.suptitle(title)
    return fig


def plot_coverage(maps, *, tract, title=""):
    """Number of input visits contributing to each coadd pixel (binned mean), one panel per filter."""
    fig, axes = _filter_maps_figure(maps, maps.nimage)
    if not axes:
        return fig
    nmax = max(1, int(np.ceil(max(np.nanmax(v) for v in maps.nimage.values()))))
    cmap = _cmap("viridis").resampled(nmax)
    norm = BoundaryNorm(np.arange(0.5, nmax + 1.5), cmap.N)
    for ax, f in zip(axes, maps.filters):
        nim = np.ma.masked_less_equal(maps.nimage[f], 0)  # no data: the grey background
        im = ax.imshow(nim, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, orientation="horizontal", shrink=0.9, pad=0.09, ticks=np.arange(1, nmax + 1))
        cb.set_label("input visits (grey: none)")
        ax.set_facecolor("0.8")
        ax.set_title(f"{f}: {maps.area_deg2(f) * 3600:.0f} arcmin$^2$ covered")
        _draw_patches(ax, tract, maps.factor)
    if title:
        fig.suptitle(title)
    return fig


def plot_color_composite(rgb, *, wcs, factor, inner_box=None, title=""):
    """A colour image of a patch (from :func:`skysnake.qa.color_composite`) on sky axes.

    ``wcs`` is the patch's (outer box) WCS; ``factor`` the binning of ``rgb``; ``inner_box``
    (x0, y0, x1, y1 in the patch's pixels) is outlined.
    """
    ny, nx = rgb.shape[:2]
    fig = _figure(8.0, 8.0 * ny / nx + 0.3)
    ax = fig.add_subplot(projection=qa.binned_wcs(wcs, factor))
    ax.imshow(rgb, origin="lower", interpolation="nearest")
    ax.coords[0].set_axislabel("RA")
    ax.coords[1].set_axislabel("Dec")
    ax.coords[0].set_major_formatter("d.ddd")
    ax.coords[1].set_major_formatter("d.ddd")
    if inner_box is not None:
        x0, y0, x1, y1 = (v / factor - 0.5 for v in inner_box)
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="white", lw=0.8, ls="--", alpha=0.7)
    if title:
        ax.set_title(title)
    return fig


# ------------------------------------------------------------------------------------------ catalogs

def plot_number_counts(cat, *, filters, areas, m5=None, bins=None, min_snr=5.0, title=""):
    """Differential number counts of stars and galaxies per filter (per deg^2 per mag).

    Objects with S/N >= ``min_snr`` in the filter are counted. ``areas``: {filter: deg^2};
    ``m5``: {filter: median 5-sigma depth}, drawn as a dashed line.
    """
    filters = qa.order_filters(filters)
    fig = _figure(4.3 * max(len(filters), 1) + 0.5, 4.8)
    axes = np.atleast_1d(fig.subplots(1, max(len(filters), 1), sharey=True))
    bins = np.arange(16.0, 29.01, 0.5) if bins is None else bins
    for ax, f in zip(axes, filters):
        col = f"{f}_mag"
        if len(cat) == 0 or col not in cat:
            _no_data(ax)
            continue
        det = qa.snr_cut(cat, (f,), min_snr)
        star = cat["is_star"].to_numpy(bool)
        for sel, label, color in ((det, "all", "black"), (det & star, "point sources", STAR_COLOR),
                                  (det & ~star, "extended", GALAXY_COLOR)):
            nc = qa.number_counts(cat[col].to_numpy(float)[sel], area_deg2=areas.get(f, 0.0), bins=bins)
            nc = nc[nc["n"] > 0]
            ax.errorbar(nc["mag"], nc["density"], yerr=nc["density_err"], drawstyle="steps-mid", color=color,
                        lw=1.4 if label == "all" else 1.0, label=label, capsize=0)
        if m5 and np.isfinite(m5.get(f, np.nan)):
            ax.axvline(m5[f], color="0.4", ls="--", lw=1)
            ax.text(m5[f], 0.02, f" 5$\\sigma$ {m5[f]:.1f}", transform=ax.get_xaxis_transform(), fontsize=8,
                    color="0.3", rotation=90, va="bottom", ha="right")
        ax.set_yscale("log")
        ax.set_xlabel(f"{f} (AB mag, PSF)")
        ax.set_title(f"{f}: {int(det.sum())} objects with S/N $\\geq$ {min_snr:g}, "
                     f"{areas.get(f, 0.0) * 3600:.0f} arcmin$^2$", fontsize=10)
    axes[0].set_ylabel("objects / deg$^2$ / mag")
    _legend(axes[0], fontsize=9, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def _pairs(filters):
    f = qa.order_filters(filters)
    return list(itertools.pairwise(f))


def _scatter_by_class(ax, x, y, *, ok, star, size):
    """Extended objects, then point sources (drawn on top, one size larger), each labelled with its count."""
    gal, pts = ok & ~star, ok & star
    ax.scatter(x[gal], y[gal], s=size, c=GALAXY_COLOR, alpha=0.5, lw=0, label=f"extended ({gal.sum()})")
    ax.scatter(x[pts], y[pts], s=size + 1, c=STAR_COLOR, alpha=0.8, lw=0, label=f"point sources ({pts.sum()})")


def plot_color_color(cat, *, filters, min_snr=20.0, title=""):
    """Colour-colour diagrams of consecutive filter triples (e.g. g-r vs r-i), stars and galaxies."""
    f = qa.order_filters(filters)
    triples = [tuple(f[i:i + 3]) for i in range(len(f) - 2)]
    fig = _figure(5.4 * max(len(triples), 1), 5.2)
    if not triples or len(cat) == 0:
        _no_data(fig.add_subplot(), "needs three filters" if not triples else "no objects")
        return fig
    axes = np.atleast_1d(fig.subplots(1, len(triples)))
    for ax, (a, b, c) in zip(axes, triples):
        ok = qa.snr_cut(cat, (a, b, c), min_snr)
        star = cat["is_star"].to_numpy(bool)
        x = (cat[f"{b}_mag"] - cat[f"{c}_mag"]).to_numpy(float)
        y = (cat[f"{a}_mag"] - cat[f"{b}_mag"]).to_numpy(float)
        _scatter_by_class(ax, x, y, ok=ok, star=star, size=6)
        sel = ok & np.isfinite(x) & np.isfinite(y)
        if sel.any():
            ax.set_xlim(*np.percentile(x[sel], [0.5, 99.5]) + np.array([-0.2, 0.2]))
            ax.set_ylim(*np.percentile(y[sel], [0.5, 99.5]) + np.array([-0.2, 0.2]))
        ax.set_xlabel(f"{b} - {c}")
        ax.set_ylabel(f"{a} - {b}")
        ax.set_title(f"S/N >= {min_snr:g} in {a}, {b}, {c}")
        _legend(ax, fontsize=9, loc="upper left", markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


def plot_color_magnitude(cat, *, filters, min_snr=5.0, title=""):
    """Colour-magnitude diagrams (redder magnitude vs colour) of consecutive filter pairs."""
    pairs = _pairs(filters)
    fig = _figure(5.0 * max(len(pairs), 1), 5.6)
    if not pairs or len(cat) == 0:
        _no_data(fig.add_subplot(), "needs two filters" if not pairs else "no objects")
        return fig
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    for ax, (a, b) in zip(axes, pairs):
        ok = qa.snr_cut(cat, (a, b), min_snr)
        star = cat["is_star"].to_numpy(bool)
        col = (cat[f"{a}_mag"] - cat[f"{b}_mag"]).to_numpy(float)
        mag = cat[f"{b}_mag"].to_numpy(float)
        _scatter_by_class(ax, col, mag, ok=ok, star=star, size=5)
        sel = ok & np.isfinite(col) & np.isfinite(mag)
        if sel.any():
            ax.set_xlim(*np.percentile(col[sel], [0.5, 99.5]) + np.array([-0.3, 0.3]))
            ax.set_ylim(np.nanmax(mag[sel]) + 0.3, np.nanmin(mag[sel]) - 0.3)
        ax.set_xlabel(f"{a} - {b}")
        ax.set_ylabel(f"{b} (AB mag)")
        ax.set_title(f"S/N >= {min_snr:g} in {a} and {b}")
        _legend(ax, fontsize=9, loc="lower left", markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------- truth

def plot_completeness(tables, *, m5=None, title=""):
    """Completeness against true magnitude: ``tables[filter] = {"point sources": df, "extended": df}``.

    Each ``df`` is a :func:`skysnake.qa.completeness` table; ``m5`` the median depth per filter.
    """
    filters = qa.order_filters(list(tables))
    fig = _figure(4.4 * max(len(filters), 1) + 0.4, 4.6)
    axes = np.atleast_1d(fig.subplots(1, max(len(filters), 1), sharey=True))
    for ax, f in zip(axes, filters):
        for label, color in (("point sources", STAR_COLOR), ("extended", GALAXY_COLOR)):
            t = tables[f].get(label)
            if t is None or len(t) == 0:
                continue
            t = t[t["n"] > 0]
            ax.errorbar(t["mag"], t["completeness"], yerr=t["err"], color=color, marker="o", ms=3, lw=1.2,
                        label=label, capsize=0)
            m50 = qa.magnitude_at_completeness(t, 0.5)
            if np.isfinite(m50):
                ax.plot([m50], [0.5], marker="v", color=color, ms=8, ls="none")
        if m5 and np.isfinite(m5.get(f, np.nan)):
            ax.axvline(m5[f], color="0.4", ls="--", lw=1, label=f"median 5$\\sigma$ depth {m5[f]:.2f}")
        ax.plot([], [], marker="v", color="0.3", ls="none", label="50% completeness")
        _legend(ax, fontsize=8, loc="lower left")
        ax.axhline(1.0, color="0.7", lw=0.8)
        ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
        ax.set_ylim(-0.03, 1.08)
        ax.set_xlabel(f"true {f} (AB mag)")
        ax.set_title(f"{f}")
    axes[0].set_ylabel("fraction detected")
    if title:
        fig.suptitle(title)
    return fig


def plot_delta_mag(pairs, *, bins=None, title=""):
    """Measured minus true magnitude against true magnitude, for point sources, per filter.

    ``pairs[filter]``: DataFrame with ``true_mag, mag, magerr``. Top row: every star, with the
    running median and 16-84% spread and the expected +-1 sigma from the errors. Bottom row:
    the stars with S/N > 50 on a +-0.05 mag scale, where calibration errors show.
    """
    filters = qa.order_filters(list(pairs))
    ncol = max(len(filters), 1)
    fig = _figure(4.4 * ncol + 0.4, 7.6)
    axes = fig.subplots(2, ncol, sharey="row", squeeze=False, gridspec_kw={"height_ratios": [1.3, 1]})
    bins = np.arange(16.0, 28.01, 0.5) if bins is None else bins
    for ax, zoom, f in zip(axes[0], axes[1], filters):
        d = pairs[f]
        d = d[np.isfinite(d["mag"]) & np.isfinite(d["true_mag"])]
        if len(d) == 0:
            _no_data(ax)
            _no_data(zoom)
            continue
        dm = (d["mag"] - d["true_mag"]).to_numpy(float)
        tm, err = d["true_mag"].to_numpy(float), d["magerr"].to_numpy(float)
        ax.scatter(tm, np.clip(dm, -0.49, 0.49), s=3, c="0.5", alpha=0.5, lw=0)
        rm = qa.running_median(tm, dm, bins=bins)
        exp = qa.running_median(tm, err, bins=bins)
        ax.plot(rm["x"], rm["median"], color=_fcolor(f), lw=2, label="median")
        ax.fill_between(rm["x"], rm["median"] - rm["sigma"], rm["median"] + rm["sigma"], color=_fcolor(f),
                        alpha=0.25, label="16-84%")
        ax.plot(exp["x"], exp["median"], color="k", lw=0.8, ls="--", label="expected $\\pm1\\sigma$")
        ax.plot(exp["x"], -exp["median"], color="k", lw=0.8, ls="--")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylim(-0.5, 0.5)
        ax.set_title(f"{f}: {len(d)} point sources")
        bright = err < 2.5 / np.log(10) / 50  # S/N > 50
        zoom.axhline(0, color="0.3", lw=0.8)
        zoom.set_ylim(-0.05, 0.05)
        if bright.sum() >= 3:
            zoom.errorbar(tm[bright], np.clip(dm[bright], -0.049, 0.049), yerr=err[bright], fmt="o", ms=2.5,
                          color=_fcolor(f), ecolor="0.7", elinewidth=0.6, capsize=0)
            b100 = err < 2.5 / np.log(10) / 100
            if b100.sum() >= 3:
                zoom.text(0.03, 0.05, f"S/N > 100: median {np.median(dm[b100]):+.4f} mag ({b100.sum()} stars)",
                          transform=zoom.transAxes, fontsize=8,
                          bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
        else:
            _no_data(zoom, "no star with S/N > 50")
        zoom.set_xlabel(f"true {f} (AB mag)")
        zoom.set_title("S/N > 50", fontsize=10)
    axes[0, 0].set_ylabel("measured - true (mag)")
    axes[1, 0].set_ylabel("measured - true (mag)")
    _legend(axes[0, 0], fontsize=9, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig
