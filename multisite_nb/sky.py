"""Sky pictures: sky units coloured by site, with visit footprints."""

from __future__ import annotations

from typing import Any

from .config import Campaign

__all__ = ["SITE_COLOURS", "polygon_lonlat", "plot_sky"]

SITE_COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def polygon_lonlat(region: Any) -> list[tuple[float, float]]:
    """Vertices of a sphgeom ConvexPolygon as (RA, Dec) degrees, closed."""
    from lsst.sphgeom import LonLat

    pts = []
    for v in region.getVertices():
        ll = LonLat(v)
        pts.append((ll.getLon().asDegrees(), ll.getLat().asDegrees()))
    return pts + pts[:1]


def plot_sky(campaign: Campaign, plan: Any = None, butler: Any = None, axes: Any = None,
             states: dict[str, str] | None = None):
    """Draw every patch of the campaign's tracts, filled by owning site, and the planned visits.

    One panel per tract (``axes``: one matplotlib axis per tract, made if not given); returns
    the first axis.

    Parameters
    ----------
    plan
        A ``PlacementPlan``: its visits are outlined in their site's colour (boundary visits dashed black).
    states
        Optional site -> state ("ok", "busy", "trouble") shown in the legend.
    """
    import matplotlib.pyplot as plt

    from .butler_ops import open_butler

    own = butler is None
    if own:
        butler = open_butler(campaign.butler_repo(campaign.central))
    try:
        skymap = campaign.config.skymap
        owner = {}
        colour = {}
        for i, site in enumerate(campaign.remote_sites):
            colour[site] = SITE_COLOURS[i % len(SITE_COLOURS)]
            for u in campaign.sky_units(site):
                owner[u.key] = site
        tracts = sorted({u.tract for s in campaign.remote_sites for u in campaign.sky_units(s)})
        if axes is None:
            _, grid = plt.subplots(1, len(tracts), figsize=(3.6 * len(tracts) + 1, 3.8), squeeze=False)
            axes = list(grid[0])
        elif len(axes) != len(tracts):
            raise ValueError(f"plot_sky: {len(tracts)} tracts need {len(tracts)} axes, got {len(axes)}")
        panel = dict(zip(tracts, axes))
        for rec in butler.query_dimension_records(
            "patch", where=f"skymap = '{skymap}' AND tract IN ({', '.join(map(str, tracts))})", limit=None, explain=False
        ):
            site = owner.get((rec.tract, rec.id)) or owner.get((rec.tract, None))
            xs, ys = zip(*polygon_lonlat(rec.region))
            a = panel[rec.tract]
            a.fill(xs, ys, color=colour.get(site, "#eeeeee"), alpha=0.45 if site else 0.5, lw=0.6, ec="grey")
            cx, cy = sum(xs[:-1]) / (len(xs) - 1), sum(ys[:-1]) / (len(ys) - 1)
            a.text(cx, cy, f"patch {rec.id}", ha="center", va="center", fontsize=7, color="#333")
        if plan is not None:
            visits = sorted({v for vs in plan.visits.values() for v in vs})
            if visits:
                for rec in butler.query_dimension_records(
                    "visit", where="visit IN (v)", bind={"v": visits}, instrument=campaign.config.instrument,
                    limit=None, explain=False,
                ):
                    sites = [s for s, vs in plan.visits.items() if rec.id in vs]
                    xs, ys = zip(*polygon_lonlat(rec.region))
                    for a in set(panel.values()):
                        if len(sites) > 1:
                            a.plot(xs, ys, color="black", lw=1.2, ls="--")
                        else:
                            a.plot(xs, ys, color=colour.get(sites[0], "grey"), lw=0.6, alpha=0.8)
        for tract, a in panel.items():
            # zoom on the tract: its patches set the limits (visits elsewhere fall outside)
            verts = [polygon_lonlat(r.region) for r in butler.query_dimension_records(
                "tract", where=f"skymap = '{skymap}' AND tract = {tract}", limit=None, explain=False)]
            xs = [x for v in verts for x, _ in v]
            ys = [y for v in verts for _, y in v]
            pad = 0.05 * max(max(xs) - min(xs), max(ys) - min(ys))
            a.set_xlim(max(xs) + pad, min(xs) - pad)  # RA grows to the left
            a.set_ylim(min(ys) - pad, max(ys) + pad)
            a.set_aspect(1.0 / max(0.05, __import__("math").cos(__import__("math").radians((min(ys) + max(ys)) / 2))))
            a.set_title(f"tract {tract}", fontsize=9)
            a.set_xlabel("RA [deg]", fontsize=8)
            a.tick_params(labelsize=7)
        axes[0].set_ylabel("Dec [deg]")
        for site in campaign.remote_sites:
            label = site + (f" ({states[site]})" if states and site in states else "")
            axes[-1].fill([], [], color=colour[site], alpha=0.45, label=label)
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
        axes[0].figure.suptitle(f"{campaign.name}: sky units by site" + (" and planned visits" if plan is not None else ""), fontsize=10)
        axes[0].figure.tight_layout()
        ax = axes[0]
        return ax
    finally:
        if own:
            butler.close()
