"""Tracts and patches: the sky tessellation coadds and catalogs live on.

Modelled on ``lsst.skymap``'s discrete sky map: each tract is a TAN projection
about its own centre with a fixed pixel scale; a tract is cut into a grid of
patches. A patch has an *inner* box (the pixels it owns: an object is primary in
the patch whose inner box holds it) and an *outer* box (inner box plus a border
on every side, so objects near the inner edge are measured whole). Outer boxes of
neighbouring patches overlap by twice the border.

Patch names are ``"x_y"`` (column, row) strings (``"x,y"`` in the LSST/HSC pipelines; see ``patch_name``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS


@dataclass(frozen=True)
class Tract:
    """One tract: a TAN projection about (ra, dec), cut into npatch_x x npatch_y patches."""

    id: int
    ra: float
    dec: float
    pixel_scale: float  # arcsec/px
    patch_inner: int  # px
    patch_border: int  # px
    npatch_x: int
    npatch_y: int

    @property
    def shape(self):
        """(ny, nx) of the tract's inner grid (all patches' inner boxes)."""
        return (self.npatch_y * self.patch_inner, self.npatch_x * self.patch_inner)

    def wcs(self):
        """The tract WCS: pixel (0, 0) is the lower-left corner of patch 0,0's inner box."""
        ny, nx = self.shape
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.ra, self.dec]
        # FITS 1-based: the tract centre is at 0-based ((nx-1)/2, (ny-1)/2)
        w.wcs.crpix = [(nx - 1) / 2 + 1, (ny - 1) / 2 + 1]
        s = self.pixel_scale / 3600.0
        w.wcs.cd = [[-s, 0.0], [0.0, s]]
        return w

    @property
    def patches(self):
        """All patch names of the tract, row-major."""
        return [patch_name(x, y) for y in range(self.npatch_y) for x in range(self.npatch_x)]

    def inner_box(self, patch):
        """(x0, y0, x1, y1) of the patch's inner box in tract pixels (x1, y1 exclusive)."""
        px, py = parse_patch(patch)
        if not (0 <= px < self.npatch_x and 0 <= py < self.npatch_y):
            raise ValueError(f"patch {patch!r} is not in tract {self.id} ({self.npatch_x}x{self.npatch_y} patches)")
        n = self.patch_inner
        return (px * n, py * n, (px + 1) * n, (py + 1) * n)

    def outer_box(self, patch):
        """(x0, y0, x1, y1) of the patch's outer box (inner box grown by the border)."""
        x0, y0, x1, y1 = self.inner_box(patch)
        b = self.patch_border
        return (x0 - b, y0 - b, x1 + b, y1 + b)

    def patch_wcs(self, patch):
        """WCS of the patch's outer box: its pixel (0, 0) is the outer box's lower-left corner."""
        x0, y0, _, _ = self.outer_box(patch)
        w = self.wcs()
        w.wcs.crpix = [w.wcs.crpix[0] - x0, w.wcs.crpix[1] - y0]
        return w

    def patch_shape(self, patch):
        """(ny, nx) of the patch's outer box."""
        x0, y0, x1, y1 = self.outer_box(patch)
        return (y1 - y0, x1 - x0)

    def to_dict(self):
        return {
            "id": self.id, "ra": self.ra, "dec": self.dec, "pixel_scale": self.pixel_scale,
            "patch_inner": self.patch_inner, "patch_border": self.patch_border,
            "npatch_x": self.npatch_x, "npatch_y": self.npatch_y,
        }


def patch_name(x, y):
    """(x, y) -> the patch name ``"x_y"`` used in data ids, file names and catalogs.

    Not ``"x,y"`` (the HSC convention): Snakemake cannot hand a wildcard value containing a comma
    to a cluster job (its ``--target-jobs`` argument is split at commas), so patch-level jobs
    would fail on Slurm and PBS. ``parse_patch`` still accepts ``"x,y"``.
    """
    return f"{int(x)}_{int(y)}"


def parse_patch(patch):
    """``"x_y"`` (or the older ``"x,y"``) -> (x, y) integers."""
    try:
        x, y = (int(v) for v in str(patch).replace(",", "_").split("_"))
    except ValueError:
        raise ValueError(f"patch name {patch!r} is not of the form 'x_y' (e.g. '1_2')") from None
    return x, y


def make_tract(*, id, ra, dec, size_deg, pixel_scale=0.2, patch_inner=2000, patch_border=100, size_y_deg=None):
    """A tract centred on (ra, dec) covering at least ``size_deg`` (x) by ``size_y_deg`` (y, default the same)."""
    size_y_deg = size_deg if size_y_deg is None else size_y_deg
    nx = max(1, math.ceil(size_deg * 3600.0 / pixel_scale / patch_inner))
    ny = max(1, math.ceil(size_y_deg * 3600.0 / pixel_scale / patch_inner))
    return Tract(id=int(id), ra=float(ra), dec=float(dec), pixel_scale=float(pixel_scale),
                 patch_inner=int(patch_inner), patch_border=int(patch_border), npatch_x=nx, npatch_y=ny)


def tract_for_footprint(ra, dec, *, id=0, pixel_scale=0.2, patch_inner=2000, patch_border=100, margin_arcmin=1.0):
    """One tract centred on a set of sky positions (e.g. all CCD corners), just large enough to hold them."""
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    # centre: mean unit vector (robust to RA wrap)
    v = np.stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                  np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))]).mean(axis=1)
    ra0 = math.degrees(math.atan2(v[1], v[0])) % 360.0
    dec0 = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    probe = make_tract(id=id, ra=ra0, dec=dec0, size_deg=0.0, pixel_scale=pixel_scale,
                       patch_inner=patch_inner, patch_border=patch_border)
    x, y = probe.wcs().all_world2pix(ra, dec, 0)
    cx, cy = probe.wcs().wcs.crpix - 1
    # centre the tract on the middle of the footprint's bounding box in the projection
    xm, ym = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    ra0, dec0 = (float(v[0]) for v in probe.wcs().all_pix2world([xm], [ym], 0))
    scale = pixel_scale / 3600.0
    margin = 2 * margin_arcmin / 60.0
    return make_tract(id=id, ra=ra0 % 360.0, dec=dec0, size_deg=(x.max() - x.min()) * scale + margin,
                      size_y_deg=(y.max() - y.min()) * scale + margin,
                      pixel_scale=pixel_scale, patch_inner=patch_inner, patch_border=patch_border)


class SkyMap:
    """A set of tracts. An object belongs to the tract whose centre is nearest (LSST's convention)."""

    def __init__(self, tracts):
        self.tracts = {t.id: t for t in tracts}

    def __getitem__(self, tract_id):
        return self.tracts[int(tract_id)]

    def __iter__(self):
        return iter(self.tracts.values())

    def to_dict(self):
        return {"tracts": [t.to_dict() for t in self.tracts.values()]}

    @classmethod
    def from_dict(cls, d):
        return cls([Tract(**t) for t in d["tracts"]])

    def nearest_tract(self, ra, dec):
        """Id of the nearest tract centre for each (ra, dec) (arrays)."""
        ra = np.atleast_1d(np.asarray(ra, dtype=float))
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        ids = np.array(list(self.tracts))
        centres = np.array([[t.ra, t.dec] for t in self.tracts.values()])
        d = _angsep(ra[:, None], dec[:, None], centres[None, :, 0], centres[None, :, 1])
        return ids[np.argmin(d, axis=1)]

    def patches_touching(self, ra, dec, *, margin_arcsec=30.0):
        """(tract, patch) pairs whose outer box overlaps the polygon with corners (ra, dec), grown by a margin.

        The polygon's bounding box in tract pixels is used: generous, never misses an overlap.
        One polygon of :meth:`overlaps`.
        """
        _, tracts, patches = self.overlaps([ra], [dec], margin_arcsec=margin_arcsec)
        return list(zip(tracts, patches))

    def overlaps(self, ra, dec, *, margin_arcsec=30.0):
        """(tract, patch) pairs whose outer box overlaps each of N polygons (corners ``ra, dec``: (N, K)
        arrays), grown by a margin: the polygon's bounding box in tract pixels is used (generous, never
        misses an overlap). All polygons are projected at once per tract.

        Returns ``(i, tract, patch)`` lists: polygon ``i`` may touch ``patch`` of ``tract``, ordered
        by polygon, then tract, then patch (row-major).
        """
        ra = np.atleast_2d(np.asarray(ra, float))
        dec = np.atleast_2d(np.asarray(dec, float))
        found = []  # (i, order, tract, patch)
        order = 0
        for t in self.tracts.values():
            x, y = t.wcs().all_world2pix(ra.ravel(), dec.ravel(), 0)
            x, y = x.reshape(ra.shape), y.reshape(ra.shape)
            ok = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(y), axis=1)
            # a polygon on the far side of the sky projects to nonsense; require it to be near the tract
            ok &= np.min(_angsep(ra, dec, t.ra, t.dec), axis=1) <= 60.0
            m = margin_arcsec / t.pixel_scale
            with np.errstate(invalid="ignore"):
                xmin, xmax = x.min(axis=1) - m, x.max(axis=1) + m
                ymin, ymax = y.min(axis=1) - m, y.max(axis=1) + m
            for p in t.patches:
                x0, y0, x1, y1 = t.outer_box(p)
                hit = ok & (xmin < x1) & (xmax > x0) & (ymin < y1) & (ymax > y0)
                found += [(int(i), order, t.id, p) for i in np.flatnonzero(hit)]
                order += 1
        found.sort(key=lambda r: (r[0], r[1]))
        return [r[0] for r in found], [r[2] for r in found], [r[3] for r in found]

    def is_primary(self, tract_id, patch, ra, dec):
        """True where (ra, dec) lies in the patch's inner box AND the tract is the nearest one."""
        t = self[tract_id]
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        x, y = t.wcs().all_world2pix(ra, dec, 0)
        x0, y0, x1, y1 = t.inner_box(patch)
        # pixel centres are at integers; the inner box owns [x0 - 0.5, x1 - 0.5)
        inside = (x >= x0 - 0.5) & (x < x1 - 0.5) & (y >= y0 - 0.5) & (y < y1 - 0.5)
        if len(self.tracts) > 1 and ra.size:
            inside &= self.nearest_tract(ra, dec) == t.id
        return inside


def _angsep(ra1, dec1, ra2, dec2):
    """Angular separation in degrees (haversine)."""
    ra1, dec1, ra2, dec2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1))))


def skymap_from_config(cfg, *, footprints=None):
    """Build the SkyMap from the ``skymap`` config block.

    ``cfg["tracts"]`` lists tracts ``{id, ra, dec, size_deg}``; when it is empty,
    one tract is centred on the inputs' ``footprints`` (a DataFrame with corner
    columns ``ra_c0..3, dec_c0..3``).
    """
    common = dict(pixel_scale=cfg.get("pixel_scale", 0.2), patch_inner=cfg.get("patch_inner_px", 2000),
                  patch_border=cfg.get("patch_border_px", 100))
    tracts = cfg.get("tracts") or []
    if tracts:
        return SkyMap([make_tract(id=t["id"], ra=t["ra"], dec=t["dec"], size_deg=t["size_deg"], **common)
                       for t in tracts])
    if footprints is None or len(footprints) == 0:
        raise ValueError("skymap.tracts is empty and there are no input footprints to centre a tract on: "
                         "list tracts in config (skymap.tracts) or check the inputs")
    ra = np.concatenate([footprints[f"ra_c{i}"].to_numpy() for i in range(4)])
    dec = np.concatenate([footprints[f"dec_c{i}"].to_numpy() for i in range(4)])
    return SkyMap([tract_for_footprint(ra, dec, id=0, **common)])
