"""Colours, labels and number formats shared by every figure and page of the views.

One site palette: the central site is dark grey, the remote sites take the colours of
:data:`SITE_PALETTE` in campaign order. None of them is a state colour (no green, amber,
red or grey), so a site's colour and its state can be shown side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from multisite_nb.domain.records import StepState

__all__ = [
    "CENTRAL_COLOUR",
    "REPLICATING_COLOUR",
    "SITE_PALETTE",
    "STATE_COLOURS",
    "STATE_LABELS",
    "STATE_TINTS",
    "STEP_COLOURS",
    "fmt_bytes",
    "fmt_duration",
    "fmt_time",
    "plural",
    "site_colours",
    "step_text_colour",
]

#: Site state → colour (card head, figure labels).
STATE_COLOURS = {"ok": "#1a7f37", "busy": "#b76e00", "trouble": "#cf222e", "idle": "#6e7781"}
#: Site state → light background (the card's reason line).
STATE_TINTS = {"ok": "#dafbe1", "busy": "#fff8c5", "trouble": "#ffebe9", "idle": "#f6f8fa"}
STATE_LABELS = {"ok": "OK", "busy": "BUSY", "trouble": "TROUBLE", "idle": "IDLE"}
#: Step state → colour (chips on the cards, the steps grid).
STEP_COLOURS: dict[StepState, str] = {
    StepState.SUCCEEDED: "#2da44e",
    StepState.RUNNING: "#d4a72c",
    StepState.PENDING: "#eed27c",
    StepState.FAILED: "#cf222e",
    StepState.STOPPED: "#e16f24",
    StepState.DIED: "#82071e",
    StepState.HELD: "#8250df",
    StepState.NOT_STARTED: "#d8dee4",
}
#: Files replicating (transfer bars).
REPLICATING_COLOUR = "#d4a72c"
CENTRAL_COLOUR = "#444c56"
SITE_PALETTE = ("#1f6feb", "#8250df", "#0e8a9c", "#a0522d", "#bf3989", "#0a3069", "#6639ba")

_DARK_STEPS = (StepState.SUCCEEDED, StepState.FAILED, StepState.STOPPED, StepState.DIED, StepState.HELD)


def site_colours(central: str, remote_sites: Sequence[str]) -> dict[str, str]:
    """Site → colour: dark grey for the central site, the palette for the remote sites in order."""
    out = {central: CENTRAL_COLOUR}
    out.update({s: SITE_PALETTE[i % len(SITE_PALETTE)] for i, s in enumerate(remote_sites)})
    return out


def step_text_colour(state: StepState) -> str:
    """Text colour that reads on :data:`STEP_COLOURS` ``[state]``."""
    return "#ffffff" if state in _DARK_STEPS else "#1f2328"


def fmt_bytes(n: int | None) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units); ``None`` → ``"—"``."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def fmt_duration(seconds: float | None) -> str:
    """``75.2`` → ``"75.2 s"``, ``4000`` → ``"1 h 06 min"``; ``None`` → ``"—"``."""
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def fmt_time(value: datetime | str | None) -> str:
    """A UTC time as ``2026-01-01 12:00:00 UTC`` (an ISO string with ``Z`` too); ``None`` → ``"—"``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        return value.replace("T", " ").replace("Z", " UTC")
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def plural(n: int, one: str, many: str | None = None) -> str:
    """``plural(1, "file")`` → ``"1 file"``; ``plural(2, "quantum", "quanta")`` → ``"2 quanta"``."""
    return f"{n} {one if n == 1 else (many or one + 's')}"
