"""Matplotlib figures: the sky by site, the steps grid, transfer progress, the step wiring.

Every figure colours a site with :func:`~multisite_nb.views.style.site_colours` and a state
with :data:`~multisite_nb.views.style.STATE_COLOURS`. The dashboard's figures are built as
``matplotlib.figure.Figure`` objects, never through pyplot, so they can be drawn in a
background thread and are never shown twice by the inline backend; :func:`plot_sky` and
:func:`plot_wiring` draw on pyplot axes for the phase notebooks when given none.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.tables import load_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.naming import plan_path
from multisite_nb.domain.records import StepState
from multisite_nb.views.style import STATE_COLOURS, STATE_LABELS, STEP_COLOURS, site_colours, step_text_colour

if TYPE_CHECKING:
    from lsst.daf.butler import Butler
    from lsst.sphgeom import ConvexPolygon
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from multisite_nb.domain.plan import PlacementPlan
    from multisite_nb.domain.qa import QAReport
    from multisite_nb.domain.wiring import Wiring
    from multisite_nb.views.history import HistoryRow
    from multisite_nb.views.status import CampaignStatus

__all__ = [
    "message_figure",
    "plot_sky",
    "plot_wiring",
    "png_bytes",
    "polygon_lonlat",
    "progress_figure",
    "qa_figure",
    "sky_figure",
    "steps_figure",
]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (no pyplot state involved: safe in a thread)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _message(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="#57606a", transform=ax.transAxes)
    ax.set_axis_off()


def message_figure(text: str, width: float = 7.2, height: float = 2.0) -> Figure:
    """A figure that only says ``text`` (a picture that could not be drawn says why)."""
    fig = _figure(width, height)
    _message(fig.add_subplot(), text[:200])
    return fig


# -- the sky ----------------------------------------------------------------------------------


def polygon_lonlat(region: ConvexPolygon) -> list[tuple[float, float]]:
    """Vertices of a sphgeom ConvexPolygon as (RA, Dec) degrees, closed."""
    from lsst.sphgeom import LonLat

    pts = []
    for v in region.getVertices():
        ll = LonLat(v)
        pts.append((ll.getLon().asDegrees(), ll.getLat().asDegrees()))
    return pts + pts[:1]


def _tracts(campaign: Campaign) -> list[int]:
    return sorted({u.tract for s in campaign.remote_sites for u in campaign.sky_units(s)})


#: Up to this many tracts the sky is drawn tract by tract (patches, visits); beyond, as one overview.
MAX_TRACT_PANELS = 8


def sky_panels(campaign: Campaign) -> int:
    """How many axes :func:`plot_sky` draws for this campaign."""
    n = len(_tracts(campaign))
    return n if n <= MAX_TRACT_PANELS else 1


def plot_sky(
    campaign: Campaign,
    plan: PlacementPlan | None = None,
    butler: Butler | None = None,
    axes: Sequence[Axes] | None = None,
    states: Mapping[str, str] | None = None,
) -> Axes:
    """Draw every patch of the campaign's tracts, filled by owning site, and the planned visits.

    Parameters
    ----------
    campaign
        The campaign (its sky units say which site owns which patch).
    plan
        The placement plan: its visits are outlined in their site's colour (boundary visits dashed black).
    butler
        The central Butler (opened here if not given).
    axes
        :func:`sky_panels` axes (made with pyplot if not given): one per tract, or a single
        overview of every tract filled by its site when there are more than
        :data:`MAX_TRACT_PANELS` (a data release has thousands; no visit is drawn there).
    states
        Site → state ("ok", "busy", "trouble", "idle"): a site's patches get an edge in the
        state's colour, each panel names its site and state, the legend too.

    Returns
    -------
    Axes
        The first panel.

    Raises
    ------
    ConfigError
        If ``axes`` does not hold one axis per tract.
    """
    tracts = _tracts(campaign)
    n = sky_panels(campaign)
    if axes is None:
        import matplotlib.pyplot as plt

        size = (3.6 * n + 1, 3.8) if n > 1 or len(tracts) == 1 else (9.0, 5.0)
        _, grid = plt.subplots(1, n, figsize=size, squeeze=False)
        axes = list(grid[0])
    elif len(axes) != n:
        raise ConfigError(f"plot_sky: {len(tracts)} tracts need {n} axes, got {len(axes)}")
    if len(tracts) > MAX_TRACT_PANELS:
        if butler is None:
            with open_site_butler(campaign, campaign.central) as own:
                _draw_overview(campaign, plan, own, axes[0], states or {})
        else:
            _draw_overview(campaign, plan, butler, axes[0], states or {})
        return axes[0]
    if butler is None:
        with open_site_butler(campaign, campaign.central) as own:
            _draw_sky(campaign, plan, own, dict(zip(tracts, axes, strict=True)), states or {})
    else:
        _draw_sky(campaign, plan, butler, dict(zip(tracts, axes, strict=True)), states or {})
    return axes[0]


def _draw_sky(
    campaign: Campaign, plan: PlacementPlan | None, butler: Butler, panel: dict[int, Axes], states: Mapping[str, str]
) -> None:
    skymap = campaign.config.skymap
    colour = site_colours(campaign.central, campaign.remote_sites)
    owner = {u.key: site for site in campaign.remote_sites for u in campaign.sky_units(site)}
    owned: dict[int, dict[str, int]] = {t: {} for t in panel}
    for rec in butler.query_dimension_records(
        "patch", where=f"skymap = '{skymap}' AND tract IN ({', '.join(map(str, panel))})", limit=None, explain=False
    ):
        site = owner.get((rec.tract, rec.id)) or owner.get((rec.tract, None))
        xs, ys = zip(*polygon_lonlat(rec.region), strict=True)
        a = panel[rec.tract]
        edge, width = (STATE_COLOURS[states[site]], 2.6) if site is not None and site in states else ("grey", 0.6)
        a.fill(
            xs,
            ys,
            color=colour.get(site, "#eeeeee") if site else "#eeeeee",
            alpha=0.45 if site else 0.5,
            lw=width,
            ec=edge,
        )
        a.text(
            sum(xs[:-1]) / (len(xs) - 1),
            sum(ys[:-1]) / (len(ys) - 1),
            f"patch {rec.id}",
            ha="center",
            va="center",
            fontsize=7,
            color="#333",
        )
        if site:
            owned[rec.tract][site] = owned[rec.tract].get(site, 0) + 1
    visits = sorted({v for vs in plan.visits.values() for v in vs}) if plan is not None else []
    if plan is not None and visits:
        for rec in butler.query_dimension_records(
            "visit",
            where="visit IN (v)",
            bind={"v": visits},
            instrument=campaign.config.instrument,
            limit=None,
            explain=False,
        ):
            sites = [s for s, vs in plan.visits.items() if rec.id in vs]
            xs, ys = zip(*polygon_lonlat(rec.region), strict=True)
            for a in panel.values():
                if len(sites) > 1:
                    a.plot(xs, ys, color="black", lw=1.2, ls="--")
                else:
                    a.plot(xs, ys, color=colour.get(sites[0], "grey"), lw=0.6, alpha=0.8)
    for tract, a in panel.items():  # zoom on the tract: its patches set the limits (visits elsewhere fall outside)
        verts = [
            polygon_lonlat(r.region)
            for r in butler.query_dimension_records(
                "tract", where=f"skymap = '{skymap}' AND tract = {tract}", limit=None, explain=False
            )
        ]
        ras = [x for v in verts for x, _ in v]
        decs = [y for v in verts for _, y in v]
        pad = 0.05 * max(max(ras) - min(ras), max(decs) - min(decs))
        a.set_xlim(max(ras) + pad, min(ras) - pad)  # RA grows to the left
        a.set_ylim(min(decs) - pad, max(decs) + pad)
        a.set_aspect(1.0 / max(0.05, math.cos(math.radians((min(decs) + max(decs)) / 2))))
        a.set_xlabel("RA [deg]", fontsize=8)
        a.tick_params(labelsize=7)
        site = max(owned[tract], key=owned[tract].__getitem__) if owned[tract] else None
        if site is not None and site in states:
            state = states[site]
            a.set_title(
                f"tract {tract} · {site} {STATE_LABELS.get(state, state)}",
                fontsize=10,
                fontweight="bold",
                color=STATE_COLOURS.get(state, "#1f2328"),
            )
        else:
            a.set_title(f"tract {tract}", fontsize=9)
    axes = list(panel.values())
    axes[0].set_ylabel("Dec [deg]")
    for site in campaign.remote_sites:
        label = site + (f" ({states[site]})" if site in states else "")
        axes[-1].fill([], [], color=colour[site], alpha=0.45, label=label)
    legend = axes[-1].legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        title="site (state)" if states else None,
        title_fontsize=9,
    )
    for text, site in zip(legend.get_texts(), campaign.remote_sites, strict=False):
        if site in states:
            text.set_color(STATE_COLOURS[states[site]])
            text.set_fontweight("bold")
    fig = axes[0].get_figure(root=True)
    assert fig is not None
    title = f"{campaign.name}: sky units by site" + (" and planned visits" if plan is not None else "")
    if states:
        c = campaign.central
        title += f" — edge colour = state; {c} (central) {STATE_LABELS.get(states.get(c, 'idle'), '')}"
    fig.suptitle(title, fontsize=11 if states else 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout notes
        fig.tight_layout()


def _draw_overview(
    campaign: Campaign, plan: PlacementPlan | None, butler: Butler, ax: Axes, states: Mapping[str, str]
) -> None:
    """Every tract of the campaign as one polygon filled by its site (most of its units), edges by state."""
    from matplotlib.collections import PolyCollection

    colour = site_colours(campaign.central, campaign.remote_sites)
    units: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for site in campaign.remote_sites:
        for u in campaign.sky_units(site):
            units[u.tract][site] += 1
    owner = {t: max(by, key=by.__getitem__) for t, by in units.items()}
    polys, faces, edges = [], [], []
    for rec in butler.query_dimension_records(
        "tract", where=f"skymap = '{campaign.config.skymap}' AND tract IN (t)", bind={"t": sorted(owner)},
        limit=None, explain=False,
    ):  # fmt: skip
        site = owner[rec.id]
        polys.append(polygon_lonlat(rec.region))
        faces.append(colour.get(site, "#eeeeee"))
        edges.append(STATE_COLOURS[states[site]] if site in states else "grey")
    ax.add_collection(PolyCollection(polys, facecolors=faces, edgecolors=edges, linewidths=0.3, alpha=0.6))
    ras = [x for poly in polys for x, _ in poly]
    decs = [y for poly in polys for _, y in poly]
    if ras:
        ax.set_xlim(max(ras), min(ras))  # RA grows to the left
        ax.set_ylim(min(decs), max(decs))
        ax.set_aspect(1.0 / max(0.05, math.cos(math.radians((min(decs) + max(decs)) / 2))))
    ax.set_xlabel("RA [deg]")
    ax.set_ylabel("Dec [deg]")
    counts = {s: sum(1 for o in owner.values() if o == s) for s in campaign.remote_sites}
    for site in campaign.remote_sites:
        label = f"{site}: {counts[site]} tracts" + (f" ({states[site]})" if site in states else "")
        ax.fill([], [], color=colour[site], alpha=0.6, label=label)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    what = f"{campaign.name}: {len(owner)} tracts by site"
    if plan is not None:
        visits = {v for vs in plan.visits.values() for v in vs}
        what += f"; {len(visits)} planned visits, {len(plan.boundary_visits)} at boundaries"
    ax.set_title(what, fontsize=10)
    fig = ax.get_figure(root=True)
    assert fig is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def sky_figure(campaign: Campaign, status: CampaignStatus, run_dir: str | os.PathLike[str] | None = None) -> Figure:
    """The sky map of :func:`plot_sky` for the dashboard: site fills, state edges, the run's plan if any."""

    plan = None
    path = plan_path(run_dir) if run_dir else None
    if path is not None and path.is_file():
        try:
            plan = load_plan(path)
        except (OSError, ValueError):  # the sky map still shows the sky units
            plan = None
    n = sky_panels(campaign)
    fig = _figure(3.6 * n + 1, 3.8) if n > 1 or len(_tracts(campaign)) == 1 else _figure(9.0, 5.0)
    fig.set_layout_engine(None)
    axes = fig.subplots(1, n, squeeze=False)[0]
    plot_sky(campaign, plan, axes=list(axes), states=status.states())
    return fig


# -- steps and transfers --------------------------------------------------------------------


def steps_figure(status: CampaignStatus) -> Figure:
    """Sites × steps grid, coloured by step state, with succeeded/total quanta."""
    from matplotlib.patches import Patch, Rectangle

    sites = list(status.sites)
    steps = list(status.steps) or ["(no steps)"]
    steps += sorted({st for s in status.sites.values() for st in s.steps if st not in steps})
    fig = _figure(max(7.2, 0.8 * len(steps) + 1.8), max(3.6, 0.62 * len(sites) + 1.6))
    ax = fig.add_subplot()
    for i, site in enumerate(sites):
        s = status.sites[site]
        for j, step in enumerate(steps):
            rec = s.steps.get(step)
            if step not in s.site_steps and rec is None:
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor="white", edgecolor="#eaeef2", lw=1))
                ax.text(j + 0.5, i + 0.5, "·", ha="center", va="center", color="#c9d1d9", fontsize=12)
                continue
            state = rec.state if rec else StepState.NOT_STARTED
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=STEP_COLOURS[state], edgecolor="white", lw=2))
            if rec and (rec.total or rec.groups):
                label = f"{rec.succeeded}/{rec.total}" + (f"\n{rec.failed} ✗" if rec.failed else "")
                g = rec.groups
                if g is not None and g.total > 1:  # the groups by state, never one cell per group
                    label += f"\n{g.done}/{g.total} groups" + (f", {g.held} held" if g.held else "")
                ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=10, color=step_text_colour(state))
    ax.set_xlim(0, len(steps))
    ax.set_ylim(len(sites), 0)
    ax.set_xticks([j + 0.5 for j in range(len(steps))], steps, rotation=30, ha="right", fontsize=10)
    ax.set_yticks([i + 0.5 for i in range(len(sites))], [f"{s} ({status.sites[s].state})" for s in sites], fontsize=11)
    for tick, site in zip(ax.get_yticklabels(), sites, strict=True):
        tick.set_color(STATE_COLOURS.get(status.sites[site].state, "#1f2328"))
        tick.set_fontweight("bold")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [
        Patch(color=STEP_COLOURS[k], label=k.value.replace("_", " "))
        for k in (
            StepState.SUCCEEDED,
            StepState.RUNNING,
            StepState.PENDING,
            StepState.FAILED,
            StepState.STOPPED,
            StepState.DIED,
            StepState.HELD,
            StepState.NOT_STARTED,
        )
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=8, fontsize=9, frameon=False)
    ax.set_title("Steps by site (succeeded / total quanta; groups done / groups)", fontsize=11)
    return fig


def progress_figure(history: Sequence[HistoryRow], status: CampaignStatus) -> Figure:
    """Files at each site over time (locks OK solid, replicating dashed, stuck red crosses)."""
    import matplotlib.dates as mdates

    fig = _figure(7.2, 3.6)
    ax = fig.add_subplot()
    colours = site_colours(status.central, status.remote_sites)
    by_site: dict[str, list[tuple[datetime, HistoryRow]]] = {}
    for row in history:
        try:
            when = datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
        except ValueError:
            continue
        by_site.setdefault(row["site"], []).append((when, row))
    if not any(by_site.values()):
        _message(ax, "no transfer history yet: it grows with each refresh")
        return fig
    drawn = False
    markers = dict(zip(status.sites, "osD^vP*X", strict=False))
    for site, points in by_site.items():
        points.sort(key=lambda p: p[0])
        xs = [float(mdates.date2num(p[0])) for p in points]
        ok = [p[1]["ok"] for p in points]
        rep = [p[1]["replicating"] for p in points]
        stuck = [p[1]["stuck"] for p in points]
        if not any(ok) and not any(rep) and not any(stuck):
            continue
        drawn = True
        colour = colours.get(site, "#57606a")
        ax.plot(
            xs,
            ok,
            color=colour,
            lw=2,
            alpha=0.85,
            marker=markers.get(site, "o") if len(xs) < 40 else None,
            ms=6,
            mfc="white",
            mew=1.5,
            label=f"{site} OK",
        )
        if any(rep):
            ax.plot(xs, rep, color=colour, lw=1.2, ls="--", label=f"{site} replicating")
        if any(stuck):
            ax.scatter(
                [x for x, n in zip(xs, stuck, strict=True) if n],
                [n for n in stuck if n],
                color=STATE_COLOURS["trouble"],
                marker="x",
                s=40,
                zorder=5,
                label=f"{site} stuck",
            )
    if not drawn:
        _message(ax, "no transfers to any site yet")
        return fig
    times = [p[0] for points in by_site.values() for p in points]
    first, last = min(times), max(times)
    if last - first < timedelta(minutes=2):  # a few readings: a readable window, not ± years
        middle = first + (last - first) / 2
        ax.set_xlim(
            float(mdates.date2num(middle - timedelta(minutes=1))), float(mdates.date2num(middle + timedelta(minutes=1)))
        )
    locator = mdates.AutoDateLocator(tz=UTC, minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_ylabel("files (locks)")
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    ax.set_title("Transfer progress per site (files at the site)", fontsize=11)
    return fig


# -- the wiring -----------------------------------------------------------------------------


def plot_wiring(wiring: Wiring, ax: Axes | None = None) -> Axes:
    """The step graph in execution order: site steps above, central steps below the site
    boundary, and the dataset types that cross it written on the crossing arrows."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    steps = [(st, step) for st in wiring.stages for step in st.steps]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8, 1.3 * len(steps)), 4.2))
    ypos = {"sites": 1.0, "central": 0.0}
    xy = {}
    for i, (st, step) in enumerate(steps):
        x, y = float(i), ypos[st.where]
        xy[step] = (x, y)
        colour = "#cfe3f6" if st.where == "sites" else "#f8d9b0"
        ax.add_patch(Rectangle((x - 0.4, y - 0.16), 0.8, 0.32, fc=colour, ec="#444", lw=0.8))
        ax.text(x, y + 0.03, step, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.09, f"{len(wiring.tasks_of_step.get(step, []))} tasks", ha="center", va="center", fontsize=7)
    for (a_st, a), (b_st, b) in zip(steps, steps[1:], strict=False):
        (x0, y0), (x1, y1) = xy[a], xy[b]
        crossing = a_st.where != b_st.where
        ax.annotate(
            "",
            xy=(x1 - 0.4, y1),
            xytext=(x0 + 0.4, y0),
            arrowprops={"arrowstyle": "->", "color": "#c0392b" if crossing else "#555", "lw": 1.6 if crossing else 0.8},
        )
        if crossing:
            gather = b_st.where == "central"  # gather labels left of their arrow, redistribution right
            names = wiring.gathered_before(b_st.name) if gather else wiring.redistributed_after(a_st.name)
            ax.text(
                (x0 + x1) / 2 + (-0.12 if gather else 0.12),
                0.5,
                f"{'gather' if gather else 'redistribute'}:\n" + "\n".join(names),
                fontsize=7,
                color="#c0392b",
                ha="right" if gather else "left",
                va="center",
                bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1.5},
            )
    ax.axhline(0.5, color="#c0392b", ls="--", lw=0.8)
    ax.text(-0.45, 0.53, "site boundary", color="#c0392b", fontsize=8, va="bottom")
    ax.text(-0.45, 1.25, "at every remote site", fontsize=8, color="#1f4e79")
    ax.text(-0.45, -0.3, "at the central site", fontsize=8, color="#8a5a00")
    ax.set_xlim(-0.6, len(steps) - 0.4)
    ax.set_ylim(-0.4, 1.4)
    ax.axis("off")
    return ax


def qa_figure(report: QAReport) -> Figure:
    """Per site: products expected, at the site, gathered centrally, and compared with the reference."""
    fig = _figure(7.0, 3.5)
    ax = fig.subplots()
    sites = [m.site for m in report.metrics]
    bars = (
        ("expected", [m.expected_products for m in report.metrics]),
        ("at site", [m.products_at_site for m in report.metrics]),
        ("gathered", [m.products_gathered for m in report.metrics]),
        ("compared", [m.compared for m in report.metrics]),
    )
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        ax.bar([x + i * width for x in range(len(sites))], values, width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(sites))], sites)
    ax.set_ylabel("validation products")
    ax.set_title("Per site: expected vs produced vs gathered; compared with the reference")
    ax.legend(fontsize=8)
    return fig
