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


def plot_sky(campaign: Campaign, plan: Any = None, butler: Any = None, ax: Any = None, states: dict[str, str] | None = None):
    """Draw every patch of the campaign's tracts, filled by owning site, and the planned visits.

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
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 5))
        for rec in butler.query_dimension_records(
            "patch", where=f"skymap = '{skymap}' AND tract IN ({', '.join(map(str, tracts))})", limit=None, explain=False
        ):
            site = owner.get((rec.tract, rec.id)) or owner.get((rec.tract, None))
            xy = polygon_lonlat(rec.region)
            xs, ys = zip(*xy)
            ax.fill(xs, ys, color=colour.get(site, "#dddddd"), alpha=0.45 if site else 0.25, lw=0.5, ec="grey")
            cx, cy = sum(xs[:-1]) / (len(xs) - 1), sum(ys[:-1]) / (len(ys) - 1)
            ax.text(cx, cy, f"{rec.tract}.{rec.id}", ha="center", va="center", fontsize=6, color="black")
        if plan is not None:
            visits = sorted({v for vs in plan.visits.values() for v in vs})
            if visits:
                for rec in butler.query_dimension_records(
                    "visit", where="visit IN (v)", bind={"v": visits}, instrument=campaign.config.instrument,
                    limit=None, explain=False,
                ):
                    sites = [s for s, vs in plan.visits.items() if rec.id in vs]
                    xs, ys = zip(*polygon_lonlat(rec.region))
                    if len(sites) > 1:
                        ax.plot(xs, ys, color="black", lw=1.2, ls="--")
                    else:
                        ax.plot(xs, ys, color=colour.get(sites[0], "grey"), lw=0.6, alpha=0.7)
        for site in campaign.remote_sites:
            label = site + (f" ({states[site]})" if states and site in states else "")
            ax.fill([], [], color=colour[site], alpha=0.45, label=label)
        ax.set_xlabel("RA [deg]")
        ax.set_ylabel("Dec [deg]")
        ax.invert_xaxis()
        ax.set_title(f"{campaign.name}: sky units by site" + (" with planned visits" if plan is not None else ""))
        ax.legend(loc="best", fontsize=8)
        return ax
    finally:
        if own:
            butler.close()
