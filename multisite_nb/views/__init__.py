"""What the operator sees: the read model of a campaign, its figures, its pages and the dashboard.

* :mod:`.status` — where each site stands, read live on every call (:func:`collect`);
* :mod:`.figures` — Matplotlib figures: sky by site, steps grid, transfer progress, wiring;
* :mod:`.html` — the dashboard's HTML from the Jinja2 templates in ``templates/``;
* :mod:`.report` — the run page ``index.html`` and the rendered notebooks;
* :mod:`.dashboard` — the :class:`Dashboard` (live widgets or a batch snapshot);
* :mod:`.history` — the dashboard's transfer history;
* :mod:`.style` — the colours and formats every figure and page shares;
* :mod:`.tables` — the tables the notebooks show, shaped from the library's records.

The views read the typed records and summaries of the domain, the live systems through their
adapters, and the phases' records; they never import the run layer or the CLI. The dashboard's
last reading is itself a phase (:func:`.dashboard.run`, the chain's last page).
"""

from __future__ import annotations

from multisite_nb.views.dashboard import Dashboard, is_batch, resolve_auto_refresh, resolve_run_dir
from multisite_nb.views.figures import plot_sky, plot_wiring, progress_figure, sky_figure, steps_figure
from multisite_nb.views.history import history_file, read_history
from multisite_nb.views.html import card_html, snapshot_html
from multisite_nb.views.report import render_index, render_notebook_html
from multisite_nb.views.status import CampaignStatus, SiteStatus, collect, site_state

__all__ = [
    "CampaignStatus",
    "Dashboard",
    "SiteStatus",
    "card_html",
    "collect",
    "history_file",
    "is_batch",
    "plot_sky",
    "plot_wiring",
    "progress_figure",
    "read_history",
    "render_index",
    "render_notebook_html",
    "resolve_auto_refresh",
    "resolve_run_dir",
    "site_state",
    "sky_figure",
    "snapshot_html",
    "steps_figure",
]
