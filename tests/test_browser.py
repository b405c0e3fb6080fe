"""The dashboard in a real browser: Voilà serves ``00_dashboard.ipynb``, Chromium reads the cards.

Debian's Chromium (``/usr/bin/chromium``, ``apt-get install chromium``) is driven by
Playwright's Python API; Playwright's own browser download is never used. The world is the
session fixture's; the run folder comes from the real phases 1-3, one site gets a real STUCK
rule, and the chain runs the dashboard notebook in batch (papermill) so the run folder has an
``index.html`` whose links the browser follows. Voilà is stopped by its process group, and
any kernel it left behind by PID.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

# helpers shared with the dashboard tests (tests/ is on sys.path: no package, rootdir conftest)
from test_dashboard import Cards, clean_env, prepare_run, stuck_rule

from multisite_nb.adapters.results import load_result
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.params import repo_root
from multisite_nb.run.chain import run_chain
from multisite_nb.views.status import collect

pytestmark = [pytest.mark.slow, pytest.mark.world, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = repo_root() / "test-artifacts"
TROUBLED = "LANCS"  # the site that gets a STUCK rule here

if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) for the browser test",
        allow_module_level=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernels_of(runtime_dir: Path) -> list[int]:
    """PIDs of kernels whose connection file lives in ``runtime_dir`` (started for our Voilà)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(runtime_dir) in cmd and "kernel" in cmd:
            pids.append(int(proc.name))
    return pids


@contextlib.contextmanager
def voila(env: dict[str, str], tmp: Path) -> Iterator[str]:
    """Voilà serving the dashboard on 127.0.0.1 (free port); yields the URL; stops it by PID."""
    port = free_port()
    runtime = tmp / "jupyter-runtime"
    runtime.mkdir()
    log_path = tmp / "voila.log"
    cmd = [
        str(Path(sys.executable).parent / "voila"),
        "notebooks/00_dashboard.ipynb",
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
    ]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=repo_root(),
            env={**env, "JUPYTER_RUNTIME_DIR": str(runtime)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"voila exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert time.monotonic() < deadline, f"voila not listening after 60 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # voila shuts its kernels down on SIGTERM
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _kernels_of(runtime):  # kernels live in their own sessions: by PID, if any is left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """A plain static HTTP server for a folder (what sharing a run folder amounts to)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium through Playwright, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1920, "height": 1200},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def scene(world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Phases 1-3 done, a STUCK rule to LANCS, and the chain's batch run of the dashboard notebook."""
    campaign: Campaign = world.campaign
    t0 = time.monotonic()
    run_dir = prepare_run(campaign, tmp_path_factory.mktemp("runs"))
    with stuck_rule(campaign, TROUBLED) as rule_id:
        outcome = run_chain(
            ["dashboard"],
            run_dir,
            {"campaign_file": str(campaign.path)},
            repo_root() / "notebooks",
            campaign=campaign.name,
            log=lambda m: None,
        )
        assert outcome.passed, outcome.reason
        print(f"\nbrowser scene (phases 1-3, STUCK rule, chain of the dashboard): {time.monotonic() - t0:.1f} s")
        yield {"campaign": campaign, "run_dir": run_dir, "rule": rule_id, "index": outcome.index}


def test_voila_dashboard_shows_each_site_state(world, scene: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    campaign, run_dir = scene["campaign"], scene["run_dir"]
    env = clean_env({**world.env(), "MSNB_RUN_DIR": str(run_dir)})
    t0 = time.monotonic()
    with voila(env, tmp_path) as url:
        page = browser.new_page()
        page.goto(url, timeout=120_000)
        page.wait_for_selector(f"[data-site={TROUBLED}][data-state]", timeout=120_000)
        shown = time.monotonic() - t0
        truth = collect(campaign, run_dir, butler=False).states()  # what the systems say now
        seen = {
            el.get_attribute("data-site"): el.get_attribute("data-state")
            for el in page.query_selector_all(".msnb-card[data-site]")
        }
        assert seen == truth, (seen, truth)
        assert set(seen) == set(campaign.all_sites)
        assert seen[TROUBLED] == "trouble" and "ok" in seen.values()
        for site, state in truth.items():
            assert page.locator(f"[data-site={site}][data-state={state}]").count() == 1
        card = page.locator(f"[data-site={TROUBLED}]").inner_text()
        assert "STUCK" in card and "Last error" in card
        assert page.locator("img").count() >= 3  # sky, steps, transfers

        # Refresh reads the systems again: the header's reading time moves on
        header = page.locator(".msnb-top .meta")
        before = header.inner_text()
        time.sleep(1.1)
        page.locator("button.widget-button", has_text="Refresh").click()
        page.wait_for_function(
            "b => document.querySelector('.msnb-top .meta').innerText !== b", arg=before, timeout=30_000
        )

        # Auto-refresh from the page: every 2 s, no click needed after the toggle
        field = page.locator(".widget-text input").first
        field.fill("2")
        field.press("Enter")
        page.locator("button.widget-toggle-button", has_text="Auto-refresh").click()
        page.wait_for_function("() => document.body.innerText.includes('auto-refresh every 2 s')", timeout=15_000)
        before = header.inner_text()
        page.wait_for_function(
            "b => document.querySelector('.msnb-top .meta').innerText !== b", arg=before, timeout=20_000
        )

        ARTIFACTS.mkdir(exist_ok=True)
        height = page.evaluate(
            "() => Math.ceil(document.querySelector('.msnb-dash').getBoundingClientRect().bottom + window.scrollY + 24)"
        )
        page.set_viewport_size({"width": 1920, "height": max(1080, int(height))})
        page.wait_for_timeout(300)
        shot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 50_000
        page.close()
    print(
        f"\nvoila: cards shown {shown:.1f} s after start; whole test {time.monotonic() - t0:.1f} s; screenshot {shot}"
    )


def test_run_index_links_resolve_and_show_the_snapshot(scene: dict[str, Any], browser: Any) -> None:
    run_dir: Path = scene["run_dir"]
    assert scene["index"] == run_dir / "index.html"
    res = load_result(run_dir, "dashboard")
    assert res is not None and res.passed and res.summary.states[TROUBLED] == "trouble"
    with serve(run_dir) as base:
        page = browser.new_page()
        index = urljoin(base, "index.html")
        assert page.goto(index).ok
        assert "dashboard" in page.locator("body").inner_text()
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        assert len(hrefs) >= 8, hrefs  # run.json, log, per phase: notebook, .ipynb, result, artifacts
        for href in hrefs:
            parts = urlsplit(href)
            assert not parts.scheme and not parts.netloc and not href.startswith("/"), f"not relative: {href}"
            response = page.request.get(urljoin(index, href))
            assert response.status == 200, f"{href}: HTTP {response.status}"
        for rel in ("artifacts/dashboard/snapshot.html", "results/dashboard.json", "html/00_dashboard.html"):
            assert rel in hrefs, rel

        # the executed notebook, rendered: the static snapshot (cards + plots) without a kernel
        page.goto(urljoin(index, "html/00_dashboard.html"))
        states = Cards(page.content()).states
        assert states == res.summary.states and states[TROUBLED] == "trouble"
        assert page.locator("img").count() >= 3
        assert "← run index" in page.locator("body").inner_text()
        page.close()
