"""Every page and piece of HTML of the views, from the Jinja2 templates in ``templates/``.

The templates autoescape: a site name, an error message or a gate reason is text, never
markup. They share one stylesheet (``msnb.css``) and one page (``page.html.j2``), so the
dashboard snapshot, the run page and a rendered notebook look like one product.

The dashboard pieces keep the attributes tests and browsers read: a card's root element has
``data-site`` and ``data-state``, a step chip ``data-step`` and ``data-step-state``, a
snapshot ``data-collected-at`` and each of its images ``data-figure``.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from multisite_nb.domain.records import StepState
from multisite_nb.views.status import STATES, CampaignStatus, SiteStatus
from multisite_nb.views.style import (
    REPLICATING_COLOUR,
    STATE_COLOURS,
    STATE_LABELS,
    STATE_TINTS,
    STEP_COLOURS,
    fmt_bytes,
    fmt_duration,
    fmt_time,
    plural,
    site_colours,
    step_text_colour,
)

__all__ = [
    "card_html",
    "header_html",
    "live_style_html",
    "problems_html",
    "render",
    "snapshot_html",
    "snapshot_page",
    "status_line_html",
]


@functools.cache
def environment() -> Environment:
    """The templates' environment (autoescaping, shared filters and colours)."""
    env = Environment(
        loader=PackageLoader("multisite_nb.views", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        fmt_bytes=fmt_bytes,
        fmt_duration=fmt_duration,
        fmt_time=fmt_time,
        plural=plural,
        basename=lambda p: Path(p).name,
    )
    palette = {"STATE_COLOURS": STATE_COLOURS, "STATE_LABELS": STATE_LABELS, "STATE_TINTS": STATE_TINTS}
    env.globals.update(palette, STATES=STATES, STEP_COLOURS=STEP_COLOURS, REPLICATING_COLOUR=REPLICATING_COLOUR)
    env.globals.update(NOT_STARTED=StepState.NOT_STARTED, step_text_colour=step_text_colour)
    return env


def render(template: str, **context: object) -> str:
    """Render one template of ``templates/`` with ``context``."""
    return environment().get_template(template).render(**context)


def _macro(name: str, *args: object) -> str:
    """Call one macro of ``_dashboard.html.j2``."""
    module = environment().get_template("_dashboard.html.j2").module
    return str(getattr(module, name)(*args)).strip()


def card_html(s: SiteStatus, colour: str | None = None) -> str:
    """One site's card; its root element carries ``data-site`` and ``data-state``."""
    return _macro("card", s, colour)


def header_html(status: CampaignStatus) -> str:
    """The dark strip on top: campaign, run, phases passed, when read, counts per state."""
    return _macro("header", status)


def problems_html(problems: list[str]) -> str:
    """The box listing what could not be read in the run folder (empty when nothing)."""
    return _macro("problems", problems)


def status_line_html(text: str, every_s: float = 0.0, error: str | None = None) -> str:
    """The live dashboard's one-line status (last reading, auto-refresh period, last error)."""
    return _macro("status_line", text, every_s, error)


def live_style_html() -> str:
    """The ``<style>`` element of the live dashboard."""
    return render("live_style.html.j2")


def _context(status: CampaignStatus, images: Mapping[str, bytes] | None, with_style: bool) -> dict[str, object]:
    return {
        "status": status,
        "with_style": with_style,
        "colours": site_colours(status.central, status.remote_sites),
        "images": {name: base64.b64encode(png).decode() for name, png in (images or {}).items()},
    }


def snapshot_html(status: CampaignStatus, images: Mapping[str, bytes] | None = None) -> str:
    """Static HTML of the dashboard (header and cards; PNG ``images`` appended if given).

    One ``<div class="msnb-dash" data-collected-at=...>`` preceded by its own ``<style>``:
    a notebook output that reads without a kernel.
    """
    return render("snapshot.html.j2", **_context(status, images, with_style=True))


def snapshot_page(status: CampaignStatus, images: Mapping[str, bytes] | None = None) -> str:
    """:func:`snapshot_html` as a whole page (``artifacts/dashboard/snapshot.html``)."""
    return render("snapshot_page.html.j2", **_context(status, images, with_style=False))
