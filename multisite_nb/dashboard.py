"""The operator dashboard: one card per site, a sky map, a steps grid, transfer progress.

:class:`Dashboard` reads the campaign's status with :func:`multisite_nb.site_status.collect`
(never cached: every refresh reads Rucio, the Butlers and the run folder again) and shows it
either as live ipywidgets (a Refresh button, optional auto-refresh in a background thread)
or, for a notebook executed in batch, as one static snapshot (HTML cards plus the plots as
PNG images) that stays readable without a kernel.

Batch or live
-------------
:func:`is_batch` decides, in this order:

1. ``MSNB_DASHBOARD_MODE=batch`` or ``=live`` in the environment wins;
2. *live* when a frontend that renders widgets started the kernel: Voilà (its kernels get
   ``VOILA_BASE_URL`` / ``VOILA_KERNEL_ID`` / ``SERVER_SOFTWARE=voila/...``) or a Jupyter
   server session, i.e. JupyterLab / Notebook (``JPY_SESSION_NAME``);
3. *batch* otherwise: papermill, nbval, ``nbconvert --execute``, plain Python — none of them
   sets those variables.

Where the run folder comes from (:func:`resolve_run_dir`): the ``run_dir`` parameter; else
``$MSNB_RUN_DIR``; else, under Voilà, ``?run=<run id>`` in the page URL (a run id under
``runs/<campaign>/``, nothing else); else the newest run folder of the campaign under
``runs/<campaign>/``; else none (live systems only).  Auto-refresh: the ``auto_refresh_s``
parameter, else ``$MSNB_AUTO_REFRESH_S``, else ``?refresh=<seconds>`` (:func:`resolve_auto_refresh`).

Transfer history: a refresh appends one JSON line per site (``time``, ``site``, ``state``,
locks ``ok`` / ``replicating`` / ``stuck``, rules ``rules_ok`` / ``rules_replicating`` /
``rules_stuck``) to ``<run_dir>/artifacts/dashboard/history.jsonl`` when the site's figures
changed since this dashboard last wrote them, or :data:`HISTORY_EVERY_S` passed (a wall screen
refreshing every few seconds does not grow the file for nothing); the progress plot draws it
plus the current reading.  Without a run folder the history lives in memory.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

from .config import Campaign, load_campaign, repo_root
from .site_status import CampaignStatus, SiteStatus, collect

__all__ = [
    "STATE_COLOURS",
    "STEP_COLOURS",
    "Dashboard",
    "card_html",
    "history_file",
    "is_batch",
    "png_bytes",
    "progress_figure",
    "read_history",
    "resolve_auto_refresh",
    "resolve_run_dir",
    "sky_figure",
    "snapshot_html",
    "steps_figure",
]

STATE_COLOURS = {"ok": "#1a7f37", "busy": "#b76e00", "trouble": "#cf222e", "idle": "#6e7781"}
STATE_LABELS = {"ok": "OK", "busy": "BUSY", "trouble": "TROUBLE", "idle": "IDLE"}
STEP_COLOURS = {
    "succeeded": "#2da44e", "running": "#d4a72c", "pending": "#eed27c", "failed": "#cf222e", "stopped": "#e16f24",
    "not_started": "#d8dee4", "unknown": "#8c959f",
}
CENTRAL_COLOUR = "#444c56"
#: Site colours chosen apart from the state colours (no green, amber, red or grey).
DASH_SITE_COLOURS = ["#1f6feb", "#8250df", "#0e8a9c", "#a0522d", "#bf3989", "#0a3069", "#6639ba"]
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HISTORY_TAIL_BYTES = 1 << 20
#: A site's unchanged figures are written to the history at most this often (seconds).
HISTORY_EVERY_S = 60.0

# --------------------------------------------------------------------------- batch / live


def is_batch(env: Mapping[str, str] | None = None) -> bool:
    """True when no widget frontend is attached to this kernel (see the module docstring)."""
    env = os.environ if env is None else env
    mode = env.get("MSNB_DASHBOARD_MODE", "").strip().lower()
    if mode in ("batch", "static"):
        return True
    if mode in ("live", "widgets"):
        return False
    if env.get("VOILA_BASE_URL") or env.get("VOILA_KERNEL_ID") or env.get("SERVER_SOFTWARE", "").startswith("voila"):
        return False
    if env.get("JPY_SESSION_NAME"):
        return False
    return True


def _query(env: Mapping[str, str]) -> dict[str, str]:
    """Voilà's page query string (``QUERY_STRING`` in the kernel's environment)."""
    return {k: v[-1] for k, v in parse_qs(env.get("QUERY_STRING", "")).items() if v}


def resolve_run_dir(
    campaign: Campaign,
    run_dir: str | os.PathLike[str] | None = "",
    env: Mapping[str, str] | None = None,
    runs_root: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The run folder to show: parameter, ``$MSNB_RUN_DIR``, ``?run=<id>``, newest, or None.

    Parameters
    ----------
    campaign
        The campaign (its name is the folder under ``runs_root``).
    run_dir
        The notebook parameter; empty means "find one".
    env
        Environment (default ``os.environ``).
    runs_root
        Where run folders are (default ``<checkout>/runs``).
    """
    env = os.environ if env is None else env
    root = Path(runs_root) if runs_root else repo_root() / "runs"

    def absolute(p: str | os.PathLike[str]) -> Path:
        path = Path(p).expanduser()
        if not path.is_absolute() and not path.exists() and (repo_root() / path).exists():
            path = repo_root() / path
        return path.resolve()

    if run_dir:
        return absolute(run_dir)
    if env.get("MSNB_RUN_DIR"):
        return absolute(env["MSNB_RUN_DIR"])
    run_id = _query(env).get("run")
    if run_id and _RUN_ID.match(run_id) and (root / campaign.name / run_id).is_dir():
        return (root / campaign.name / run_id).resolve()
    folder = root / campaign.name
    if folder.is_dir():
        runs = sorted(p for p in folder.iterdir() if p.is_dir() and _RUN_ID.match(p.name)
                      and ((p / "results").is_dir() or (p / "run.json").is_file()))
        if runs:
            return runs[-1].resolve()
    return None


def resolve_auto_refresh(auto_refresh_s: float | int | str | None = 0, env: Mapping[str, str] | None = None) -> float:
    """Seconds between refreshes: the parameter, ``$MSNB_AUTO_REFRESH_S``, ``?refresh=``; 0 = off."""
    env = os.environ if env is None else env
    for value in (auto_refresh_s, env.get("MSNB_AUTO_REFRESH_S"), _query(env).get("refresh")):
        try:
            seconds = float(value or 0)
        except (TypeError, ValueError):
            continue
        if seconds > 0:
            return max(seconds, 2.0)
    return 0.0


# --------------------------------------------------------------------------- history


def history_file(run_dir: str | os.PathLike[str]) -> Path:
    """``<run_dir>/artifacts/dashboard/history.jsonl``."""
    return Path(run_dir) / "artifacts" / "dashboard" / "history.jsonl"


def history_rows(status: CampaignStatus) -> list[dict[str, Any]]:
    """One history line per site for this reading."""
    rows = []
    for s in status.sites.values():
        t = s.transfers
        rows.append({
            "time": status.collected_at, "site": s.site, "state": s.state,
            "ok": t.locks_ok if t else 0, "replicating": t.locks_replicating if t else 0,
            "stuck": t.locks_stuck if t else 0,
            "rules_ok": t.ok if t else 0, "rules_replicating": t.replicating if t else 0,
            "rules_stuck": t.stuck if t else 0,
        })
    return rows


def read_history(path: str | os.PathLike[str], max_bytes: int = _HISTORY_TAIL_BYTES) -> list[dict[str, Any]]:
    """The last ``max_bytes`` of a history file as rows (bad lines skipped; missing file: [])."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line may be cut
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "time" in row and "site" in row:
            rows.append(row)
    return rows


def _append_history(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with path.open("a", encoding="utf-8") as fh:  # one write: appends from several viewers interleave by line
        fh.write(text)


# --------------------------------------------------------------------------- HTML

_CSS = """
.msnb-dash,.msnb-card{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328}
.msnb-top{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 18px;padding:10px 16px;background:#0d1b2a;
 color:#e6edf3;border-radius:10px;margin-bottom:12px}
.msnb-top .title{font-size:24px;font-weight:700;letter-spacing:.01em}
.msnb-top .meta{font-size:13px;color:#9fb0c3}
.msnb-top .meta code{color:#cdd9e5;font-size:12px}
.msnb-phase{display:inline-block;font-size:12px;font-weight:600;padding:2px 9px;border-radius:999px;margin-right:4px}
.msnb-phase.pass{background:#1a7f37;color:#fff}.msnb-phase.fail{background:#cf222e;color:#fff}
.msnb-summary{margin-left:auto;font-size:14px}
.msnb-summary b{padding:2px 8px;border-radius:6px;color:#fff;margin-left:4px}
.msnb-cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:14px}
.msnb-card{background:#fff;border:1px solid #d0d7de;border-radius:10px;overflow:hidden;
 box-shadow:0 1px 3px rgba(27,31,36,.12);display:flex;flex-direction:column}
.msnb-head{display:flex;justify-content:space-between;align-items:center;padding:10px 14px;color:#fff}
.msnb-head .name{font-size:26px;font-weight:800;letter-spacing:.02em;line-height:1.1}
.msnb-head .role{font-size:12px;opacity:.9}
.msnb-badge{font-weight:800;font-size:14px;letter-spacing:.06em;background:rgba(255,255,255,.2);
 border:1px solid rgba(255,255,255,.5);padding:3px 12px;border-radius:999px}
.msnb-reason{padding:7px 14px;font-size:14px;font-weight:600;border-bottom:1px solid #eaeef2}
.msnb-body{padding:6px 14px 12px;flex:1}
.msnb-row{display:grid;grid-template-columns:92px 1fr;gap:8px;padding:6px 0;border-bottom:1px solid #f0f2f4}
.msnb-row:last-child{border-bottom:0}
.msnb-k{color:#57606a;font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.06em;padding-top:3px}
.msnb-v{font-size:15px}.msnb-v .sub{color:#57606a;font-size:12px}
.msnb-bar{display:flex;height:9px;border-radius:5px;overflow:hidden;background:#eaeef2;margin-top:5px}
.msnb-chip{display:inline-block;min-width:44px;text-align:center;padding:2px 6px;margin:2px 4px 2px 0;
 border-radius:5px;font-size:12px;font-weight:600}
.msnb-ok{color:#1a7f37;font-weight:700}.msnb-bad{color:#cf222e;font-weight:700}.msnb-muted{color:#8c959f}
.msnb-err{margin:0 14px 12px;background:#ffebe9;border:1px solid rgba(255,129,130,.5);border-radius:7px;
 padding:7px 9px;font-size:13px;color:#82071e}
.msnb-err .cause{display:block;margin-top:3px;font:12px ui-monospace,SFMono-Regular,Menlo,monospace;
 color:#57606a;word-break:break-word}
.msnb-err .more{margin:5px 0 0;padding-left:1.2em}
.msnb-note{font-size:13px;color:#57606a;margin:8px 2px}
.msnb-problems{background:#ffebe9;color:#82071e;border-radius:8px;padding:8px 12px;margin-bottom:12px;font-size:14px}
.msnb-figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:14px;margin-top:14px}
.msnb-figs img{width:100%;background:#fff;border:1px solid #d0d7de;border-radius:10px}
.msnb-figs img[data-figure=sky]{grid-column:1/-1;max-width:1400px;justify-self:center}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _row(key: str, value: str) -> str:
    return f'<div class="msnb-row"><div class="msnb-k">{_e(key)}</div><div class="msnb-v">{value}</div></div>'


def _bar(parts: list[tuple[int, str]]) -> str:
    total = sum(n for n, _ in parts)
    if not total:
        return ""
    segs = "".join(f'<span style="width:{100 * n / total:.2f}%;background:{c}"></span>' for n, c in parts if n)
    return f'<div class="msnb-bar">{segs}</div>'


def _placement_html(s: SiteStatus) -> str:
    p = s.placement
    if p is None:
        return '<span class="msnb-muted">source of the placed data</span>' if s.role == "central" \
            else '<span class="msnb-muted">not planned yet</span>'
    visits = f" · {p.visits} visits" if p.visits is not None else ""
    return f"<b>{p.files}</b> files · {_bytes(p.bytes)}{visits}"


def _transfers_html(s: SiteStatus) -> str:
    t = s.transfers
    if t is None:
        return '<span class="msnb-muted">not read</span>'
    if not t.read:
        return f'<span class="msnb-bad">Rucio unreachable</span> <span class="sub">{_e(t.error or "")}</span>'
    if not t.total:
        return f'<span class="msnb-muted">no rules to {_e(t.rse)}</span>'
    bits = [f'<span class="msnb-ok">{t.ok} OK</span>' if t.ok else "0 OK"]
    if t.replicating:
        bits.append(f'<b style="color:{STATE_COLOURS["busy"]}">{t.replicating} replicating</b>')
    if t.stuck:
        bits.append(f'<span class="msnb-bad">{t.stuck} STUCK</span>')
    if t.other:
        bits.append(f"{t.other} other")
    files = t.locks_ok + t.locks_replicating + t.locks_stuck
    return (f"rules {' · '.join(bits)}<div class='sub'>{t.locks_ok}/{files} files at {_e(t.rse)}</div>"
            + _bar([(t.locks_ok, STATE_COLOURS["ok"]), (t.locks_replicating, "#d4a72c"),
                    (t.locks_stuck, STATE_COLOURS["trouble"])]))


def _verification_html(s: SiteStatus) -> str:
    v = s.verification
    if not v.ran:
        return '<span class="msnb-muted">not run</span>'
    if v.ok:
        planned = f"{v.planned}/{v.planned} " if v.planned is not None else ""
        return f'<span class="msnb-ok">✓ {planned}in place</span> <span class="sub">Rucio · Butler · disk</span>'
    kinds = ", ".join(f"{n} {k}" for k, n in v.counts.items() if n) or "problems"
    return f'<span class="msnb-bad">✗ {_e(kinds)}</span>'


def _steps_html(s: SiteStatus) -> str:
    labels = list(s.site_steps) + [st for st in s.steps if st not in s.site_steps]
    if not labels:
        return '<span class="msnb-muted">none here</span>'
    if not s.steps:
        n = len(s.site_steps)
        return f'<span class="msnb-muted">not submitted ({n} step{"s" if n != 1 else ""})</span>'
    chips = []
    for label in labels:
        st = s.steps.get(label)
        state = st.state if st else "not_started"
        colour = STEP_COLOURS.get(state, STEP_COLOURS["unknown"])
        fg = "#fff" if state in ("succeeded", "failed", "stopped", "unknown") else "#1f2328"
        counts = f"{st.succeeded}/{st.total}" if st and st.total else ""
        tip = (f"{label}: {state}; {st.succeeded} succeeded, {st.failed} failed, {st.running} running, "
               f"{st.pending} pending" if st else f"{label}: not started")
        mark = " ✗" if st and st.failed else ""
        chips.append(f'<span class="msnb-chip" style="background:{colour};color:{fg}" title="{_e(tip)}" '
                     f'data-step="{_e(label)}" data-step-state="{_e(state)}">{_e(label)}'
                     f'{"<br><small>" + counts + mark + "</small>" if counts else ""}</span>')
    return "".join(chips)


def _butler_html(s: SiteStatus) -> str:
    b = s.butler
    if b.ok is None:
        return '<span class="msnb-muted">not checked</span>'
    if not b.ok:
        return '<span class="msnb-bad">✗ not answering</span>'
    return f'<span class="msnb-ok">✓</span> {b.datasets} datasets · {b.collections} collections'


def card_html(s: SiteStatus, colour: str | None = None) -> str:
    """One site's card; its root element carries ``data-site`` and ``data-state``."""
    head = STATE_COLOURS.get(s.state, STATE_COLOURS["idle"])
    reason_bg = {"ok": "#dafbe1", "busy": "#fff8c5", "trouble": "#ffebe9", "idle": "#f6f8fa"}.get(s.state, "#f6f8fa")
    role = "central site" if s.role == "central" else "remote site"
    stripe = f"border-left:6px solid {colour};" if colour else ""
    rows = [
        _row("Placement", _placement_html(s)),
        _row("Transfers", _transfers_html(s)),
        _row("Verified", _verification_html(s)),
        _row("Steps", _steps_html(s)),
        _row("Butler", _butler_html(s)),
    ]
    err = ""
    if s.last_error:
        cause = f'<span class="cause">{_e(s.last_error_cause)}</span>' if s.last_error_cause else ""
        more = ""
        if len(s.issues) > 1:
            items = "".join(f"<li>{_e(i.message)}</li>" for i in s.issues[1:4])
            extra = f"<li>… {len(s.issues) - 4} more</li>" if len(s.issues) > 4 else ""
            more = f'<ul class="more">{items}{extra}</ul>'
        err = f'<div class="msnb-err"><b>Last error:</b> {_e(s.last_error)}{cause}{more}</div>'
    return (
        f'<div class="msnb-card" data-site="{_e(s.site)}" data-state="{_e(s.state)}">'
        f'<div class="msnb-head" style="background:{head};{stripe}"><div><div class="name">{_e(s.site)}</div>'
        f'<div class="role">{role} · {_e(s.rse)} · {_e(s.compute_site)}</div></div>'
        f'<span class="msnb-badge">{STATE_LABELS.get(s.state, s.state.upper())}</span></div>'
        f'<div class="msnb-reason" style="background:{reason_bg}">{_e(s.reason)}</div>'
        f'<div class="msnb-body">{"".join(rows)}</div>{err}</div>'
    )


def site_colours(campaign_or_status: Campaign | CampaignStatus) -> dict[str, str]:
    """Site → colour (never a state colour): a palette for remote sites, dark grey for the central site."""
    if isinstance(campaign_or_status, Campaign):
        central, remotes = campaign_or_status.central, campaign_or_status.remote_sites
    else:
        central = campaign_or_status.central
        remotes = [s for s in campaign_or_status.sites if s != central]
    out = {central: CENTRAL_COLOUR}
    out.update({s: DASH_SITE_COLOURS[i % len(DASH_SITE_COLOURS)] for i, s in enumerate(remotes)})
    return out


def header_html(status: CampaignStatus) -> str:
    """The dark strip on top: campaign, run, phases passed, when read, counts per state."""
    phases = "".join(
        f'<span class="msnb-phase {"pass" if p["passed"] else "fail"}" title="{_e(p["reason"])}">'
        f'{"✓" if p["passed"] else "✗"} {_e(name)}</span>'
        for name, p in sorted(status.phases.items(), key=lambda kv: kv[1]["finished"])
    ) or '<span class="meta">no phase results yet</span>'
    counts = {st: sum(1 for s in status.sites.values() if s.state == st) for st in ("trouble", "busy", "ok", "idle")}
    summary = "".join(f'<b style="background:{STATE_COLOURS[st]}">{n} {st}</b>' for st, n in counts.items() if n)
    run = Path(status.run_dir).name if status.run_dir else "no run folder"
    when = status.collected_at.replace("T", " ").replace("Z", " UTC")
    rucio = "" if status.rucio_ok else f' · <b style="color:#ff8182">Rucio: {_e(status.rucio_error or "?")}</b>'
    return (
        f'<div class="msnb-top"><span class="title">{_e(status.campaign)}</span>'
        f'<span class="meta">run <code>{_e(run)}</code> · read {_e(when)} in {status.seconds:.1f} s{rucio}</span>'
        f'<span>{phases}</span><span class="msnb-summary">{summary}</span></div>'
    )


def snapshot_html(status: CampaignStatus, images: Mapping[str, bytes] | None = None) -> str:
    """Static HTML of the dashboard (header and cards; PNG ``images`` appended if given).

    Each card's root element has ``data-site`` and ``data-state``; the whole is one
    ``<div class="msnb-dash" data-collected-at=...>`` with its own ``<style>``.
    """
    colours = site_colours(status)
    problems = ""
    if status.problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in status.problems[:10])
        problems = f'<div class="msnb-problems"><b>Cannot read the run folder completely:</b><ul>{items}</ul></div>'
    cards = "".join(card_html(s, colours.get(s.site)) for s in status.sites.values())
    figs = ""
    if images:
        figs = '<div class="msnb-figs">' + "".join(
            f'<img alt="{_e(name)}" data-figure="{_e(name)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">' for name, png in images.items()) + "</div>"
    return (f'<style>{_CSS}</style><div class="msnb-dash" data-collected-at="{_e(status.collected_at)}">'
            f"{header_html(status)}{problems}<div class=\"msnb-cards\">{cards}</div>{figs}</div>")


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A Matplotlib figure as PNG bytes (no pyplot state involved: safe in a thread)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="#57606a",
            transform=ax.transAxes)
    ax.set_axis_off()


_SKY_LOCK = threading.Lock()


def sky_figure(campaign: Campaign, status: CampaignStatus, run_dir: str | os.PathLike[str] | None = None) -> Any:
    """The sky map of :func:`multisite_nb.sky.plot_sky`, recoloured: fill = site, thick edge = state.

    Each tract panel's title names its site and state in the state's colour.
    """
    import warnings

    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from .sky import SITE_COLOURS, plot_sky

    states = status.states()
    plan = None
    if run_dir:
        from .phases import plan_path

        path = plan_path(run_dir)
        if path.is_file():
            try:
                from .placement import PlacementPlan

                plan = PlacementPlan.load(path)
            except Exception:  # the sky map still shows the sky units
                plan = None
    with _SKY_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout notes
        before = set(plt.get_fignums())
        try:
            ax = plot_sky(campaign, plan, states=states)
            fig = ax.figure
        except Exception as exc:  # a status picture never raises
            fig = _figure(7.2, 3.0)
            _message(fig.add_subplot(), f"sky map unavailable: {type(exc).__name__}: {exc}"[:200])
            return fig
        finally:  # keep plot_sky's figure out of pyplot (the inline backend would show it again)
            for num in set(plt.get_fignums()) - before:
                plt.close(num)
        mine = site_colours(campaign)
        theirs = {tuple(round(c, 3) for c in to_rgb(SITE_COLOURS[i % len(SITE_COLOURS)])): site
                  for i, site in enumerate(campaign.remote_sites)}
        for a in fig.axes:
            owners: dict[str, int] = {}
            for patch in a.patches:
                site = theirs.get(tuple(round(c, 3) for c in patch.get_facecolor()[:3]))
                if site is None:
                    continue
                patch.set_facecolor((*to_rgb(mine[site]), 0.40))
                if site in states:
                    patch.set_edgecolor(STATE_COLOURS[states[site]])
                    patch.set_linewidth(2.6)
                if patch.get_path().vertices.size:
                    owners[site] = owners.get(site, 0) + 1
            for line in a.lines:  # visit outlines in the site's new colour
                site = theirs.get(tuple(round(c, 3) for c in to_rgb(line.get_color())))
                if site is not None:
                    line.set_color(mine[site])
            if owners:
                site = max(owners, key=owners.__getitem__)
                title = a.get_title()
                state = states.get(site, "idle")
                a.set_title(f"{title} · {site} {STATE_LABELS.get(state, state)}", fontsize=10, fontweight="bold",
                            color=STATE_COLOURS.get(state, "#1f2328"))
            legend = a.get_legend()
            if legend is not None:
                new = a.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, title="site (state)",
                               title_fontsize=9)
                for text in new.get_texts():
                    site = text.get_text().split(" ")[0]
                    if site in states:
                        text.set_color(STATE_COLOURS[states[site]])
                        text.set_fontweight("bold")
        c = campaign.central
        fig.suptitle(f"{campaign.name}: sky units by site — edge colour = state; "
                     f"{c} (central) {STATE_LABELS.get(states.get(c, 'idle'), '')}", fontsize=11)
        try:
            fig.tight_layout()  # make room for the re-made legend
        except Exception:  # pragma: no cover - layout is cosmetic
            pass
    return fig


def steps_figure(status: CampaignStatus) -> Any:
    """Sites × steps grid, coloured by step state, with succeeded/total quanta."""
    from matplotlib.patches import Patch, Rectangle

    sites = list(status.sites)
    steps = list(status.steps) or ["(no steps)"]
    extra = sorted({st for s in status.sites.values() for st in s.steps if st not in steps})
    steps += extra
    fig = _figure(max(7.2, 0.8 * len(steps) + 1.8), max(3.6, 0.62 * len(sites) + 1.6))
    ax = fig.add_subplot()
    for i, site in enumerate(sites):
        s = status.sites[site]
        for j, step in enumerate(steps):
            st = s.steps.get(step)
            here = step in s.site_steps or st is not None
            if not here:
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor="white", edgecolor="#eaeef2", lw=1))
                ax.text(j + 0.5, i + 0.5, "·", ha="center", va="center", color="#c9d1d9", fontsize=12)
                continue
            state = st.state if st else "not_started"
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=STEP_COLOURS.get(state, STEP_COLOURS["unknown"]),
                                   edgecolor="white", lw=2))
            if st and st.total:
                label = f"{st.succeeded}/{st.total}" + (f"\n{st.failed} ✗" if st.failed else "")
                ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=10,
                        color="white" if state in ("succeeded", "failed", "stopped") else "#1f2328")
    ax.set_xlim(0, len(steps))
    ax.set_ylim(len(sites), 0)
    ax.set_xticks([j + 0.5 for j in range(len(steps))], steps, rotation=30, ha="right", fontsize=10)
    ax.set_yticks([i + 0.5 for i in range(len(sites))],
                  [f"{s} ({status.sites[s].state})" for s in sites], fontsize=11)
    for tick, site in zip(ax.get_yticklabels(), sites, strict=True):
        tick.set_color(STATE_COLOURS.get(status.sites[site].state, "#1f2328"))
        tick.set_fontweight("bold")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [Patch(color=STEP_COLOURS[k], label=k.replace("_", " ")) for k in
               ("succeeded", "running", "pending", "failed", "stopped", "not_started")]
    fig.legend(handles=handles, loc="outside lower center", ncol=6, fontsize=9, frameon=False)
    ax.set_title("Steps by site (succeeded / total quanta)", fontsize=11)
    return fig


def progress_figure(history: list[dict[str, Any]], status: CampaignStatus) -> Any:
    """Files at each site over time (locks OK solid, replicating dashed, stuck red crosses)."""
    fig = _figure(7.2, 3.6)
    ax = fig.add_subplot()
    colours = site_colours(status)
    by_site: dict[str, list[tuple[datetime, dict[str, Any]]]] = {}
    for row in history:
        try:
            when = datetime.fromisoformat(str(row["time"]).replace("Z", "+00:00"))
        except ValueError:
            continue
        by_site.setdefault(str(row["site"]), []).append((when, row))
    if not any(by_site.values()):
        _message(ax, "no transfer history yet: it grows with each refresh")
        return fig
    drawn = False
    markers = dict(zip(status.sites, "osD^vP*X", strict=False))
    for site, points in by_site.items():
        points.sort(key=lambda p: p[0])
        xs = [p[0] for p in points]
        ok = [int(p[1].get("ok", 0)) for p in points]
        rep = [int(p[1].get("replicating", 0)) for p in points]
        stuck = [int(p[1].get("stuck", 0)) for p in points]
        if not any(ok) and not any(rep) and not any(stuck):
            continue
        drawn = True
        colour = colours.get(site, "#57606a")
        ax.plot(xs, ok, color=colour, lw=2, alpha=0.85, marker=markers.get(site, "o") if len(xs) < 40 else None,
                ms=6, mfc="white", mew=1.5, label=f"{site} OK")
        if any(rep):
            ax.plot(xs, rep, color=colour, lw=1.2, ls="--", label=f"{site} replicating")
        if any(stuck):
            ax.scatter([x for x, n in zip(xs, stuck, strict=True) if n], [n for n in stuck if n],
                       color=STATE_COLOURS["trouble"], marker="x", s=40, zorder=5, label=f"{site} stuck")
    if not drawn:
        _message(ax, "no transfers to any site yet")
        return fig
    import matplotlib.dates as mdates

    times = [p[0] for points in by_site.values() for p in points]
    first, last = min(times), max(times)
    if last - first < timedelta(minutes=2):  # a few readings: a readable window, not ± years
        middle = first + (last - first) / 2
        ax.set_xlim(middle - timedelta(minutes=1), middle + timedelta(minutes=1))
    locator = mdates.AutoDateLocator(tz=UTC, minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_ylabel("files (locks)")
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    ax.set_title("Transfer progress per site (files at the site)", fontsize=11)
    return fig


# --------------------------------------------------------------------------- the dashboard


class Dashboard:
    """Per-site status of a campaign as ipywidgets (live) or a static snapshot (batch).

    Parameters
    ----------
    campaign
        A :class:`~multisite_nb.config.Campaign` or a campaign file.
    run_dir
        The run folder to read phase results from and keep the history in; ``None``:
        live systems only, history in memory.
    butler
        Check each site's Butler on every refresh.
    """

    _instances: ClassVar[weakref.WeakSet[Dashboard]] = weakref.WeakSet()

    def __init__(self, campaign: Campaign | str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None,
                 *, butler: bool = True):
        self.campaign = campaign if isinstance(campaign, Campaign) else load_campaign(campaign)
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.history_path = history_file(self.run_dir) if self.run_dir else None
        self.butler = butler
        self.status: CampaignStatus | None = None
        self.batch: bool | None = None
        self._memory: list[dict[str, Any]] = []
        self._last_written: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self.interval_s = 0.0
        self._w: dict[str, Any] | None = None
        self.errors: list[str] = []
        self._syncing = False
        Dashboard._instances.add(self)

    # -- reading ------------------------------------------------------------------------
    def refresh(self) -> CampaignStatus:
        """Read every system now, record one history line per site, update the widgets."""
        with self._lock:
            if self._w is not None:
                self._w["status"].value = self._status_line("refreshing…")
            status = collect(self.campaign, self.run_dir, butler=self.butler)
            rows = self._new_history(history_rows(status))
            if rows and self.history_path is not None:
                try:
                    _append_history(self.history_path, rows)
                    rows = []
                except OSError as exc:  # a read-only run folder: keep the history in memory
                    self.errors.append(f"history not written: {exc}")
                    self.history_path = None
            self._memory.extend(rows)
            self.status = status
            if self._w is not None:
                self._update_widgets(status)
            return status

    def _new_history(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows worth writing: changed since last written here, or older than HISTORY_EVERY_S."""
        now = time.monotonic()
        out = []
        for row in rows:
            key = tuple(v for k, v in sorted(row.items()) if k != "time")
            last = self._last_written.get(row["site"])
            if last is None or last[0] != key or now - last[1] >= HISTORY_EVERY_S:
                out.append(row)
                self._last_written[row["site"]] = (key, now)
        return out

    def history(self) -> list[dict[str, Any]]:
        """Recorded transfer history (file tail, or the in-memory rows)."""
        if self.history_path is not None:
            return read_history(self.history_path)
        return list(self._memory)

    def figures(self, status: CampaignStatus | None = None) -> dict[str, Any]:
        """``{"sky", "steps", "transfers"}`` Matplotlib figures for a status (default: the last).

        A figure that cannot be drawn becomes a figure saying why (never an exception).
        """
        status = status or self.status or self.refresh()
        makers = {
            "sky": lambda: sky_figure(self.campaign, status, self.run_dir),
            "steps": lambda: steps_figure(status),
            "transfers": lambda: progress_figure(self.history() + history_rows(status), status),
        }
        out = {}
        for name, make in makers.items():
            try:
                out[name] = make()
            except Exception as exc:  # a status picture never raises
                self.errors.append(f"{name} figure: {type(exc).__name__}: {exc}")
                fig = _figure(7.2, 2.0)
                _message(fig.add_subplot(), f"{name} figure unavailable: {type(exc).__name__}: {exc}"[:200])
                out[name] = fig
        return out

    def images(self, status: CampaignStatus | None = None) -> dict[str, bytes]:
        """The figures as PNG bytes."""
        return {name: png_bytes(fig) for name, fig in self.figures(status).items()}

    # -- showing -------------------------------------------------------------------------
    def show(self, *, batch: bool | None = None, auto_refresh_s: float = 0) -> CampaignStatus:
        """Display the dashboard: live widgets, or one static snapshot when ``batch``.

        Parameters
        ----------
        batch
            Default :func:`is_batch`.
        auto_refresh_s
            Live mode: refresh every so many seconds in a background thread (0: only on click).
        """
        from IPython.display import HTML, Image, display

        self.batch = is_batch() if batch is None else batch
        if self.batch:  # HTML cards, then each plot as an image output (shown by every notebook viewer)
            status = self.refresh()
            display(HTML(snapshot_html(status)))
            for png in self.images(status).values():
                display(Image(data=png, format="png"))
            return status
        display(self.widget)
        status = self.refresh()
        if auto_refresh_s and auto_refresh_s > 0:
            self.start(auto_refresh_s)
        return status

    @property
    def widget(self) -> Any:
        """The live dashboard (an ``ipywidgets.VBox``), built on first use."""
        if self._w is None:
            self._build()
        assert self._w is not None
        return self._w["root"]

    def _build(self) -> None:
        import ipywidgets as w

        style = w.HTML(f"<style>{_CSS}"
                       ".msnb-live .widget-html-content{width:100%;line-height:1.4;font-size:15px}"
                       ".msnb-live .msnb-card{height:100%}</style>")
        header = w.HTML(layout=w.Layout(width="100%"))
        button = w.Button(description="Refresh", icon="refresh", button_style="primary",
                          tooltip="Read Rucio, the Butlers and the run folder again",
                          layout=w.Layout(width="110px"))
        auto = w.ToggleButton(value=False, description="Auto-refresh", icon="clock-o",
                              tooltip="Refresh in the background every N seconds", layout=w.Layout(width="130px"))
        every = w.BoundedIntText(value=30, min=2, max=3600, step=5, description="every (s)",
                                 layout=w.Layout(width="150px"), style={"description_width": "60px"})
        status_line = w.HTML(layout=w.Layout(margin="0 0 0 12px"))
        bar = w.HBox([button, auto, every, status_line], layout=w.Layout(align_items="center", margin="0 0 10px 0"))
        cards = {s: w.HTML(layout=w.Layout(width="auto")) for s in self.campaign.all_sites}
        grid = w.GridBox(list(cards.values()), layout=w.Layout(
            grid_template_columns=f"repeat({min(len(cards), 4)}, minmax(260px, 1fr))", grid_gap="14px",
            width="100%"))
        problems = w.HTML()
        imgs = {n: w.Image(format="png", layout=w.Layout(width="100%", height="auto"))
                for n in ("sky", "steps", "transfers")}
        imgs["sky"].layout.max_width = "1400px"
        imgs["sky"].layout.align_self = "center"
        pair = w.GridBox([imgs["steps"], imgs["transfers"]], layout=w.Layout(
            grid_template_columns="repeat(auto-fit, minmax(520px, 1fr))", grid_gap="14px", width="100%"))
        figs = w.VBox([imgs["sky"], pair], layout=w.Layout(width="100%", margin="14px 0 0 0", grid_gap="14px"))
        root = w.VBox([style, header, bar, problems, grid, figs], layout=w.Layout(width="100%"))
        root.add_class("msnb-dash")
        root.add_class("msnb-live")

        def on_click(_: Any) -> None:
            threading.Thread(target=self._refresh_quietly, name="msnb-dashboard-click", daemon=True).start()

        def on_auto(change: dict[str, Any]) -> None:
            if self._syncing:
                return
            if change["new"]:
                self.start(every.value)
            else:
                self.stop()

        def on_every(change: dict[str, Any]) -> None:
            if not self._syncing and self.running:
                self.start(change["new"])

        button.on_click(on_click)
        auto.observe(on_auto, names="value")
        every.observe(on_every, names="value")
        self._w = {"root": root, "header": header, "button": button, "auto": auto, "every": every,
                   "status": status_line, "cards": cards, "problems": problems, "images": imgs}

    def _status_line(self, note: str = "") -> str:
        s = self.status
        when = s.collected_at.replace("T", " ").replace("Z", " UTC") if s else "never"
        auto = f" · auto-refresh every {self.interval_s:.0f} s" if self._thread and self._thread.is_alive() else ""
        err = f' · <span style="color:#cf222e">{_e(self.errors[-1])}</span>' if self.errors else ""
        return f'<span style="color:#57606a;font-size:13px">{_e(note) or "updated " + _e(when)}{auto}{err}</span>'

    def _update_widgets(self, status: CampaignStatus) -> None:
        w = self._w
        assert w is not None
        colours = site_colours(status)
        w["header"].value = header_html(status)
        for site, card in w["cards"].items():
            s = status.sites.get(site)
            card.value = card_html(s, colours.get(site)) if s else ""
        w["problems"].value = (
            '<div class="msnb-problems"><b>Cannot read the run folder completely:</b><ul>'
            + "".join(f"<li>{_e(p)}</li>" for p in status.problems[:10]) + "</ul></div>"
            if status.problems else "")
        for name, png in self.images(status).items():
            w["images"][name].value = png
        w["status"].value = self._status_line()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # collect never raises; a widget or figure error must not kill the loop
            self.errors.append(f"refresh failed: {type(exc).__name__}: {exc}")
            if self._w is not None:
                self._w["status"].value = self._status_line()

    # -- auto-refresh --------------------------------------------------------------------
    def start(self, every_s: float) -> None:
        """Refresh every ``every_s`` seconds in a daemon thread (the kernel stays free)."""
        self._stop_thread()
        self.interval_s = max(float(every_s), 2.0)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval_s):
                self._refresh_quietly()

        self._stop_event = stop
        self._thread = threading.Thread(target=loop, name="msnb-dashboard-refresh", daemon=True)
        self._thread.start()
        self._sync_controls()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the auto-refresh thread (waits for a refresh in progress to finish)."""
        self._stop_thread(timeout)
        self._sync_controls()

    def _stop_thread(self, timeout: float = 30.0) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        thread, self._thread, self._stop_event = self._thread, None, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _sync_controls(self) -> None:
        """Make the toggle and interval show what the thread does (without re-triggering it)."""
        if self._w is None:
            return
        self._syncing = True
        try:
            self._w["auto"].value = self.running
            if self.running:
                self._w["every"].value = int(round(self.interval_s))
        finally:
            self._syncing = False
        self._w["status"].value = self._status_line()

    @property
    def running(self) -> bool:
        """Whether auto-refresh is on."""
        return self._thread is not None and self._thread.is_alive()

    @classmethod
    def stop_all(cls) -> None:
        """Stop the auto-refresh of every dashboard in this kernel (e.g. before re-running the cell)."""
        for d in list(cls._instances):
            d.stop()

    # -- batch record ---------------------------------------------------------------------
    def record_snapshot(self, run_dir: str | os.PathLike[str] | None = None) -> Any:
        """Record the last reading as ``results/dashboard.json`` and a static ``snapshot.html``.

        The dashboard is a view, so its result always passes; the reason lists each
        site's state, and ``summary["states"]`` holds them for the next reader.
        """
        from .results import PhaseResult, atomic_write_text, record_result, utcnow

        target = Path(run_dir).resolve() if run_dir else self.run_dir
        if target is None:
            raise ValueError("no run folder to record the snapshot in")
        status = self.status or self.refresh()
        page = target / "artifacts" / "dashboard" / "snapshot.html"
        atomic_write_text(page, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                          f"<title>{_e(status.campaign)} dashboard</title></head><body>"
                          f"{snapshot_html(status, self.images(status))}</body></html>\n")
        artifacts = [str(page)]
        if self.history_path is not None and self.history_path.is_file() \
                and target in self.history_path.resolve().parents:
            artifacts.append(str(self.history_path))
        states = status.states()
        result = PhaseResult(
            phase="dashboard", passed=True,
            reason="snapshot: " + ", ".join(
                f"{s} {st.state}" + (f" ({st.reason})" if st.state == "trouble" else "")
                for s, st in status.sites.items()),
            started=datetime.fromisoformat(status.collected_at.replace("Z", "+00:00")), finished=utcnow(),
            summary={"states": states, "reasons": {s: st.reason for s, st in status.sites.items()},
                     "collected_at": status.collected_at},
            artifacts=artifacts,
        )
        record_result(target, result)
        return result



# --------------------------------------------------------------------------- the notebook

NOTEBOOK = "notebooks/00_dashboard.ipynb"

_NB_INTRO = """# Campaign dashboard

Where each site stands, read **live** from Rucio, the site Butlers and the run folder: one card per
site (green *ok*, amber *busy*, red *trouble*, grey *idle*), the sky by site, the steps grid and the
transfer progress.

<details><summary>How to run it (Voilà wall screen, batch, parameters)</summary>

* **Wall screen, read-only, with Voilà** (from the checkout, world up):

  ```
  MSNB_WORLD=$PWD/world MSNB_RUN_DIR=runs/3x3/<run id> MSNB_AUTO_REFRESH_S=30 \\
    .venv/bin/voila notebooks/00_dashboard.ipynb --no-browser --port 8866 --Voila.ip=127.0.0.1
  ```

  then open <http://127.0.0.1:8866/>. Voilà takes no papermill parameters, so the run folder comes
  from `$MSNB_RUN_DIR` (or the page URL `?run=<run id>` of a folder under `runs/<campaign>/`, or else
  the newest run folder of the campaign) and auto-refresh from `$MSNB_AUTO_REFRESH_S` (or `?refresh=30`).
  The world folder comes from `$MSNB_WORLD`.
* **Interactively** (JupyterLab): live widgets with a *Refresh* button and an *Auto-refresh* toggle
  (a background thread: the kernel stays free).
* **Batch** (papermill, the chain, nbval): one static snapshot (HTML cards and the plots as images)
  so the executed notebook reads without a kernel; with a `run_dir` it is also recorded as
  `results/dashboard.json` and `artifacts/dashboard/snapshot.html`. Batch unless Voilà or a Jupyter
  server started the kernel; `MSNB_DASHBOARD_MODE=batch|live` forces either.
</details>
"""

_NB_PARAMS = """# Parameters (papermill overrides these; credentials never go here)
campaign_file = "parameters/campaign_3x3.yaml"
run_dir = ""  # empty: $MSNB_RUN_DIR, else the newest run folder of the campaign under runs/
auto_refresh_s = 0  # live mode: seconds between refreshes (0: $MSNB_AUTO_REFRESH_S, else off)"""

_NB_SHOW = """from multisite_nb.config import load_campaign
from multisite_nb.dashboard import Dashboard, resolve_auto_refresh, resolve_run_dir

Dashboard.stop_all()  # re-running this cell replaces an auto-refreshing dashboard
campaign = load_campaign(campaign_file)
dashboard = Dashboard(campaign, resolve_run_dir(campaign, run_dir))
status = dashboard.show(auto_refresh_s=resolve_auto_refresh(auto_refresh_s))"""

_NB_RECORD = """# A batch run with a run folder leaves the snapshot there (results/dashboard.json, snapshot.html).
if dashboard.batch and run_dir:
    dashboard.record_snapshot(run_dir)"""


def make_notebook() -> Any:
    """The dashboard notebook (no outputs; the parameters cell tagged ``parameters``)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    book = new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    params = new_code_cell(_NB_PARAMS)
    params.metadata["tags"] = ["parameters"]
    book.cells = [new_markdown_cell(_NB_INTRO), params, new_code_cell(_NB_SHOW), new_code_cell(_NB_RECORD)]
    for i, cell in enumerate(book.cells):  # stable ids: regenerating changes nothing
        cell["id"] = f"dashboard-{i}"
    nbformat.validate(book)
    return book


def write_notebook(path: str | os.PathLike[str] | None = None) -> Path:
    """Write :func:`make_notebook` to ``notebooks/00_dashboard.ipynb`` (or ``path``)."""
    import nbformat

    target = Path(path) if path else repo_root() / NOTEBOOK
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(make_notebook(), target)
    return target


if __name__ == "__main__":  # .venv/bin/python -m multisite_nb.dashboard  (re)writes the notebook
    print(write_notebook())
