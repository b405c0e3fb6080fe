"""The operator dashboard: one card per site, a sky map, a steps grid, transfer progress.

:class:`Dashboard` reads the campaign's status with :func:`~multisite_nb.views.status.collect`
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

Transfer history (:mod:`~multisite_nb.views.history`): a refresh appends one line per site
to ``<run_dir>/artifacts/dashboard/history.jsonl`` when the site's figures changed since this
dashboard last wrote them, or :data:`HISTORY_EVERY_S` passed (a wall screen refreshing every
few seconds does not grow the file for nothing); the progress plot draws it plus the current
reading. Without a run folder the history lives in memory.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict, cast
from urllib.parse import parse_qs

from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.results import record_result
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.naming import dashboard_dir
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import DashboardSummary
from multisite_nb.phases.spec import phase
from multisite_nb.views import figures
from multisite_nb.views.history import HistoryRow, append_history, history_file, history_rows, read_history
from multisite_nb.views.html import (
    card_html,
    header_html,
    live_style_html,
    problems_html,
    snapshot_html,
    snapshot_page,
    status_line_html,
)
from multisite_nb.views.status import CampaignStatus, collect
from multisite_nb.views.style import fmt_time, site_colours

if TYPE_CHECKING:
    import ipywidgets as w
    from matplotlib.figure import Figure

__all__ = [
    "HISTORY_EVERY_S",
    "Dashboard",
    "history_file",
    "is_batch",
    "read_history",
    "resolve_auto_refresh",
    "resolve_run_dir",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: A site's unchanged figures are written to the history at most this often (seconds).
HISTORY_EVERY_S = 60.0
_FIGURES = ("sky", "steps", "transfers")

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
    return not env.get("JPY_SESSION_NAME")


def _query(env: Mapping[str, str]) -> dict[str, str]:
    """Voilà's page query string (``QUERY_STRING`` in the kernel's environment)."""
    return {k: v[-1] for k, v in parse_qs(env.get("QUERY_STRING", "")).items() if v}


def _absolute(p: str | os.PathLike[str]) -> Path:
    """A path as given, or relative to the checkout when it only exists there."""
    path = Path(p).expanduser()
    if not path.is_absolute() and not path.exists() and (repo_root() / path).exists():
        path = repo_root() / path
    return path.resolve()


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
    folder = (Path(runs_root) if runs_root else repo_root() / "runs") / campaign.name
    if run_dir:
        return _absolute(run_dir)
    if env.get("MSNB_RUN_DIR"):
        return _absolute(env["MSNB_RUN_DIR"])
    run_id = _query(env).get("run")
    if run_id and _RUN_ID.match(run_id) and (folder / run_id).is_dir():
        return (folder / run_id).resolve()
    if folder.is_dir():
        runs = sorted(
            p
            for p in folder.iterdir()
            if p.is_dir() and _RUN_ID.match(p.name) and ((p / "results").is_dir() or (p / "run.json").is_file())
        )
        if runs:
            return runs[-1].resolve()
    return None


def resolve_auto_refresh(auto_refresh_s: float | str | None = 0, env: Mapping[str, str] | None = None) -> float:
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


# --------------------------------------------------------------------------- the dashboard


class _Widgets(TypedDict):
    """The live dashboard's widgets."""

    root: w.VBox
    header: w.HTML
    button: w.Button
    auto: w.ToggleButton
    every: w.BoundedIntText
    status: w.HTML
    cards: dict[str, w.HTML]
    problems: w.HTML
    images: dict[str, w.Image]


class Dashboard:
    """Per-site status of a campaign as ipywidgets (live) or a static snapshot (batch).

    Parameters
    ----------
    campaign
        A :class:`~multisite_nb.domain.config.Campaign` or a campaign file.
    run_dir
        The run folder to read phase results from and keep the history in; ``None``:
        live systems only, history in memory.
    butler
        Check each site's Butler on every refresh.
    """

    _instances: ClassVar[weakref.WeakSet[Dashboard]] = weakref.WeakSet()

    def __init__(
        self,
        campaign: Campaign | str | os.PathLike[str],
        run_dir: str | os.PathLike[str] | None = None,
        *,
        butler: bool = True,
    ):
        self.campaign = campaign if isinstance(campaign, Campaign) else load_campaign(campaign)
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.history_path = history_file(self.run_dir) if self.run_dir else None
        self.butler = butler
        self.status: CampaignStatus | None = None
        self.batch: bool | None = None
        self.interval_s = 0.0
        self.errors: list[str] = []
        self._memory: list[HistoryRow] = []
        self._last_written: dict[str, tuple[tuple[object, ...], float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self._w: _Widgets | None = None
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
                    append_history(self.history_path, rows)
                    rows = []
                except OSError as exc:  # a read-only run folder: keep the history in memory
                    self.errors.append(f"history not written: {exc}")
                    self.history_path = None
            self._memory.extend(rows)
            self.status = status
            if self._w is not None:
                self._update_widgets(status)
            return status

    def _new_history(self, rows: list[HistoryRow]) -> list[HistoryRow]:
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

    def history(self) -> list[HistoryRow]:
        """Recorded transfer history (file tail, or the in-memory rows)."""
        if self.history_path is not None:
            return read_history(self.history_path)
        return list(self._memory)

    def figures(self, status: CampaignStatus | None = None) -> dict[str, Figure]:
        """``{"sky", "steps", "transfers"}`` figures for a status (default: the last).

        A figure that cannot be drawn becomes a figure saying why (never an exception).
        """
        status = status or self.status or self.refresh()
        makers: dict[str, Callable[[], Figure]] = {
            "sky": lambda: figures.sky_figure(self.campaign, status, self.run_dir),
            "steps": lambda: figures.steps_figure(status),
            "transfers": lambda: figures.progress_figure(self.history() + history_rows(status), status),
        }
        out = {}
        for name, make in makers.items():
            try:
                out[name] = make()
            except Exception as exc:  # a status picture never raises
                self.errors.append(f"{name} figure: {type(exc).__name__}: {exc}")
                out[name] = figures.message_figure(f"{name} figure unavailable: {type(exc).__name__}: {exc}")
        return out

    def images(self, status: CampaignStatus | None = None) -> dict[str, bytes]:
        """The figures as PNG bytes."""
        return {name: figures.png_bytes(fig) for name, fig in self.figures(status).items()}

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
    def widget(self) -> w.VBox:
        """The live dashboard (an ``ipywidgets.VBox``), built on first use."""
        if self._w is None:
            self._w = self._build()
        return self._w["root"]

    def _build(self) -> _Widgets:
        import ipywidgets as w

        header = w.HTML(layout=w.Layout(width="100%"))
        button = w.Button(
            description="Refresh",
            icon="refresh",
            button_style="primary",
            tooltip="Read Rucio, the Butlers and the run folder again",
            layout=w.Layout(width="110px"),
        )
        auto = w.ToggleButton(
            value=False,
            description="Auto-refresh",
            icon="clock-o",
            tooltip="Refresh in the background every N seconds",
            layout=w.Layout(width="130px"),
        )
        every = w.BoundedIntText(
            value=30,
            min=2,
            max=3600,
            step=5,
            description="every (s)",
            layout=w.Layout(width="150px"),
            style={"description_width": "60px"},
        )
        status_line = w.HTML(layout=w.Layout(margin="0 0 0 12px"))
        bar = w.HBox([button, auto, every, status_line], layout=w.Layout(align_items="center", margin="0 0 10px 0"))
        cards = {s: w.HTML(layout=w.Layout(width="auto")) for s in self.campaign.all_sites}
        grid = w.GridBox(
            list(cards.values()),
            layout=w.Layout(
                grid_template_columns=f"repeat({min(len(cards), 4)}, minmax(260px, 1fr))", grid_gap="14px", width="100%"
            ),
        )
        problems = w.HTML()
        imgs = {n: w.Image(format="png", layout=w.Layout(width="100%", height="auto")) for n in _FIGURES}
        imgs["sky"].layout.max_width = "1400px"
        imgs["sky"].layout.align_self = "center"
        pair = w.GridBox(
            [imgs["steps"], imgs["transfers"]],
            layout=w.Layout(
                grid_template_columns="repeat(auto-fit, minmax(520px, 1fr))", grid_gap="14px", width="100%"
            ),
        )
        figs = w.VBox([imgs["sky"], pair], layout=w.Layout(width="100%", margin="14px 0 0 0", grid_gap="14px"))
        root = w.VBox([w.HTML(live_style_html()), header, bar, problems, grid, figs], layout=w.Layout(width="100%"))
        root.add_class("msnb-dash")
        root.add_class("msnb-live")

        def on_click(_: w.Button) -> None:
            threading.Thread(target=self._refresh_quietly, name="msnb-dashboard-click", daemon=True).start()

        def on_auto(change: Mapping[str, object]) -> None:
            if self._syncing:
                return
            if change["new"]:
                self.start(every.value)
            else:
                self.stop()

        def on_every(change: Mapping[str, object]) -> None:
            new = change["new"]
            if not self._syncing and self.running and isinstance(new, int):
                self.start(new)

        button.on_click(on_click)
        auto.observe(on_auto, names="value")
        every.observe(on_every, names="value")
        controls: dict[str, Any] = {"button": button, "auto": auto, "every": every, "status": status_line}
        views: dict[str, Any] = {"root": root, "header": header, "cards": cards, "problems": problems, "images": imgs}
        return cast(_Widgets, {**controls, **views})

    def _status_line(self, note: str = "") -> str:
        when = fmt_time(self.status.collected_at) if self.status else "never"
        return status_line_html(
            note or f"updated {when}",
            self.interval_s if self.running else 0.0,
            self.errors[-1] if self.errors else None,
        )

    def _update_widgets(self, status: CampaignStatus) -> None:
        w = self._w
        assert w is not None
        colours = site_colours(status.central, status.remote_sites)
        w["header"].value = header_html(status)
        for site, card in w["cards"].items():
            s = status.sites.get(site)
            card.value = card_html(s, colours.get(site)) if s else ""
        w["problems"].value = problems_html(status.problems)
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
    def record_snapshot(self, run_dir: str | os.PathLike[str] | None = None) -> PhaseResult:
        """Record the last reading as ``results/dashboard.json`` and a static ``snapshot.html``.

        The dashboard is a view, so its result always passes; the reason lists each
        site's state, and its summary's ``states`` hold them for the next reader.

        Raises
        ------
        ConfigError
            If there is no run folder (neither ``run_dir`` nor the dashboard's own).
        """
        target = Path(run_dir).resolve() if run_dir else self.run_dir
        if target is None:
            raise ConfigError("run_dir: no run folder to record the dashboard snapshot in")
        status = self.status or self.refresh()
        page = dashboard_dir(target) / "snapshot.html"
        atomic_write_text(page, snapshot_page(status, self.images(status)))
        artifacts = [str(page)]
        if (
            self.history_path is not None
            and self.history_path.is_file()
            and target in self.history_path.resolve().parents
        ):
            artifacts.append(str(self.history_path))
        result = PhaseResult(
            phase="dashboard",
            passed=True,
            reason="snapshot: "
            + ", ".join(
                f"{s} {st.state}" + (f" ({st.reason})" if st.state == "trouble" else "")
                for s, st in status.sites.items()
            ),
            started=datetime.fromisoformat(status.collected_at.replace("Z", "+00:00")),
            finished=utcnow(),
            summary=DashboardSummary(
                states=dict(status.states()),
                reasons={s: st.reason for s, st in status.sites.items()},
                collected_at=status.collected_at,
            ),
            artifacts=artifacts,
        )
        record_result(target, result)
        return result


@phase("dashboard", notebook="00_dashboard", summary=DashboardSummary, closes_chain=True)
def run(campaign: Campaign, run_dir: str | os.PathLike[str], view: Dashboard | None = None) -> PhaseResult:
    """The chain's last page: where every site stands, recorded as ``results/dashboard.json``.

    ``view`` is a :class:`Dashboard` already showing (its last reading is recorded); without one, a
    reading is taken now. (A phase of the views: registered through the ``multisite_nb.phases``
    entry points.)
    """
    return (view or Dashboard(campaign, run_dir)).record_snapshot(run_dir)
