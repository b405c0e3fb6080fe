"""Alerts for what needs a person: kept once per key in the run folder, sent once, shown on top.

A real HTTP listener on 127.0.0.1 (``http.server`` in a thread) stands for the chat's webhook; a
small Python command for a ``notify.command``. Backoffs are hundredths of a second.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from multisite_nb.adapters.alerts import alert_path, load_alerts, open_alerts, raise_alert, resolve_alert
from multisite_nb.adapters.notify import send
from multisite_nb.adapters.results import record_result
from multisite_nb.domain.alerts import Alert, AlertKind, redact_credentials
from multisite_nb.domain.config import Campaign, Notify
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign, load_manifest, repo_root
from multisite_nb.domain.results import PhaseResult
from multisite_nb.run.secrets import scan_for_secrets
from multisite_nb.views.html import header_html, snapshot_html
from multisite_nb.views.model import CampaignStatus
from multisite_nb.views.report import render_index
from multisite_nb.views.status import collect

pytestmark = pytest.mark.timeout(60)

TOKEN = "T0KEN-s3cr3t-9f8e7d6c5b4a"
CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"
MANIFEST = repo_root() / "parameters" / "sites" / "embedded.yaml"


class Listener:
    """A webhook on 127.0.0.1: answers each POST with the next status of ``codes`` (then 200)."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                listener.posts.append((self.path, dict(self.headers), body))
                code = listener.codes.pop(0) if listener.codes else 200
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/{TOKEN}"

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(body) for _, _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    hook = Listener()
    yield hook
    hook.close()


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hook(url: str, retries: int = 3) -> Notify:
    return Notify.model_validate({"webhook": url, "retries": retries, "backoff_s": 0.01, "timeout_s": 5})


def _alert(kind: str = "group_held", site: str = "RAL", subject: str = "step1/group-0003", **kw: object) -> Alert:
    fields: dict[str, object] = {
        "kind": kind,
        "site": site,
        "subject": subject,
        "cause": "group 0003 of step1 failed its 2 retries: isr exposure=903334: ValueError: bad",
        "blocked": "step1 at RAL, and step2 after it",
        "action": "multisite-nb run --resume (retries the group) or drop it from the plan",
    }
    return Alert.model_validate({**fields, **kw})


def test_one_post_per_alert_with_its_json(tmp_path: Path, listener: Listener) -> None:
    notify = _hook(listener.url)
    a, b = _alert(), _alert(kind="disk_full", site="LANCS", subject="LANCS_DISK", cause="LANCS_DISK is full")
    ea, eb = raise_alert(tmp_path, a, notify, log=print), raise_alert(tmp_path, b, notify, log=print)
    assert len(listener.posts) == 2
    path, headers, _ = listener.posts[0]
    assert path == f"/hook/{TOKEN}" and headers["Content-Type"] == "application/json"
    first, second = listener.bodies()
    assert first["text"] == a.text and second["text"] == b.text
    assert first["alert"] == json.loads(a.model_dump_json())
    assert a.key == "group_held/RAL/step1/group-0003"
    assert (ea.delivery.delivered, ea.delivery.attempts, ea.delivery.via) == (True, 1, "webhook")
    assert eb.delivery.delivered and alert_path(tmp_path, b.key).is_file()
    assert [e.key for e in load_alerts(tmp_path)] == [a.key, b.key]  # oldest first


def test_the_same_alert_twice_is_posted_once(tmp_path: Path, listener: Listener) -> None:
    notify = _hook(listener.url)
    first = raise_alert(tmp_path, _alert(), notify)
    again = raise_alert(tmp_path, _alert(raised=datetime.now(UTC) + timedelta(minutes=5), cause="other words"), notify)
    assert len(listener.posts) == 1
    assert again == first  # the entry already there, as it was
    resolve_alert(tmp_path, first.key, note="the group was dropped")
    back = raise_alert(tmp_path, _alert(raised=datetime.now(UTC) + timedelta(minutes=9)), notify)
    assert len(listener.posts) == 2 and back.open and back.raised_before == 1  # the trouble came back


def test_the_same_alert_from_several_threads_at_once_is_posted_once(tmp_path: Path, listener: Listener) -> None:
    notify = _hook(listener.url)
    threads = [threading.Thread(target=raise_alert, args=(tmp_path, _alert(), notify)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(listener.posts) == 1 and len(load_alerts(tmp_path)) == 1


def test_503_twice_then_200_is_three_posts_and_delivered(tmp_path: Path) -> None:
    hook = Listener([503, 503])
    try:
        entry = raise_alert(tmp_path, _alert(), _hook(hook.url, retries=3))
    finally:
        hook.close()
    assert len(hook.posts) == 3
    assert (entry.delivery.delivered, entry.delivery.attempts, entry.delivery.error) == (True, 3, "")


def test_a_4xx_is_not_tried_again(tmp_path: Path) -> None:
    hook = Listener([404])
    lines: list[str] = []
    try:
        entry = raise_alert(tmp_path, _alert(), _hook(hook.url, retries=3), log=lines.append)
    finally:
        hook.close()
    assert len(hook.posts) == 1
    assert (entry.delivery.delivered, entry.delivery.attempts) == (False, 1)
    assert entry.delivery.error.startswith("HTTP 404") and TOKEN not in lines[0]


def test_a_refused_webhook_is_tried_retries_plus_one_times_and_logged_without_its_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/hook/{TOKEN}"
    lines: list[str] = []
    entry = raise_alert(tmp_path, _alert(), _hook(url, retries=2), log=lines.append)
    assert (entry.delivery.delivered, entry.delivery.attempts) == (False, 3)
    assert "refused" in entry.delivery.error.lower()
    assert len(lines) == 1 and entry.key in lines[0] and "3 attempts" in lines[0]
    assert url not in lines[0] and TOKEN not in lines[0] and "/hook/" not in lines[0]
    stored = alert_path(tmp_path, entry.key).read_text()
    assert TOKEN not in stored and "/hook/" not in stored
    assert not scan_for_secrets([tmp_path], [TOKEN, url])
    # raised again once the chat is back: an alert nobody received is sent then (once)
    hook = Listener()
    try:
        again = raise_alert(tmp_path, _alert(), _hook(hook.url))
        raise_alert(tmp_path, _alert(), _hook(hook.url))
    finally:
        hook.close()
    assert len(hook.posts) == 1 and again.delivery.delivered and again.delivery.attempts == 4


def test_neither_payload_nor_alert_file_holds_the_webhooks_token(tmp_path: Path, listener: Listener) -> None:
    leaky = _alert(cause=f"the chat at {listener.url} said no", action="check the webhook")
    entry = raise_alert(tmp_path, leaky, _hook(listener.url))
    (_, _, body), stored = listener.posts[0], alert_path(tmp_path, entry.key).read_text()
    assert TOKEN.encode() not in body and TOKEN not in stored and "<webhook>" in entry.alert.cause
    assert not scan_for_secrets([tmp_path], [TOKEN, listener.url])


def test_a_credential_in_an_alerts_text_is_redacted(tmp_path: Path) -> None:
    alert = _alert(
        kind="credential_refused",
        site="USDF",
        subject="rucio",
        cause="Rucio said 401 for https://root:Tr0ub4dor-3@rucio.example/auth (password=Tr0ub4dor-3)\n"
        "X-Rucio-Auth-Token: root-root-webui-0123456789abcdef",
        action="renew the account's credentials, then multisite-nb run --resume",
    )
    assert "Tr0ub4dor" not in alert.cause and "0123456789abcdef" not in alert.cause and "\n" not in alert.cause
    assert redact_credentials("Authorization: Bearer abcdefghijkl") == "Authorization: Bearer [redacted]"
    raise_alert(tmp_path, alert, None)
    assert not scan_for_secrets([tmp_path], ["Tr0ub4dor-3", "root-root-webui-0123456789abcdef"])


def test_the_command_hook_gets_the_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"
    notify = Notify(command=[sys.executable, "-c", write, str(out)], backoff_s=0.01)
    alert = _alert()
    delivery = send(alert, notify)
    assert (delivery.delivered, delivery.attempts, delivery.via) == (True, 1, "command")
    got = json.loads(out.read_text())
    assert got["text"] == alert.text and got["alert"]["key"] == alert.key and got["alert"]["action"] == alert.action
    failing = Notify(command=[sys.executable, "-c", "import sys; sys.exit('no chat today')"], retries=2, backoff_s=0.01)
    lines: list[str] = []
    bad = send(alert, failing, log=lines.append)
    assert (bad.delivered, bad.attempts) == (False, 3) and "no chat today" in bad.error and alert.key in lines[0]
    assert send(alert, None).attempts == 0  # no notify block: kept, not sent


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ({}, "exactly one of notify.command"),
        ({"command": ["true"], "webhook": "https://hooks.example/x"}, "exactly one of notify.command"),
        ({"webhook": "https://hooks.example/x", "timeout_s": 0}, "timeout_s"),
        ({"webhook": "https://hooks.example/x", "timeout_s": -1}, "timeout_s"),
        ({"webhook": "ftp://hooks.example/T0KEN"}, "notify.webhook is not an http(s) URL"),
    ],
)
def test_the_notify_block_is_refused_naming_its_key(given: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Notify.model_validate(given)


def _manifest(tmp_path: Path, notify: dict[str, object]) -> Path:
    data = yaml.safe_load(MANIFEST.read_text())
    data["notify"] = notify
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_manifests_webhook_comes_from_a_variable(tmp_path: Path) -> None:
    url = f"https://hooks.example/services/{TOKEN}"
    env = {"MSNB_WORLD": str(tmp_path / "world"), "MSNB_ALERT_WEBHOOK": url}
    manifest = load_manifest(_manifest(tmp_path, {"webhook": "${MSNB_ALERT_WEBHOOK}", "retries": 1}), env)
    assert manifest.notify is not None and manifest.notify.webhook is not None
    assert manifest.notify.webhook.get_secret_value() == url
    assert TOKEN not in repr(manifest) and TOKEN not in manifest.model_dump_json()  # shown as **********
    with pytest.raises(ConfigError) as err:
        load_manifest(_manifest(tmp_path, {"webhook": "${MSNB_ALERT_WEBHOOK}", "command": ["x"]}), env)
    assert "notify" in str(err.value) and "exactly one" in str(err.value) and TOKEN not in str(err.value)


def test_load_resolve_and_unreadable_files(tmp_path: Path) -> None:
    older = _alert(subject="g1", raised=datetime(2026, 1, 1, tzinfo=UTC))
    newer = _alert(subject="g2", raised=datetime(2026, 1, 2, tzinfo=UTC))
    raise_alert(tmp_path, newer, None)
    raise_alert(tmp_path, older, None)
    (tmp_path / "alerts" / "0000000000000000.json").write_text("{not json")
    (tmp_path / "alerts" / "1111111111111111.json").write_text('{"alert": {"kind": "nonsense"}}')
    assert [e.alert.subject for e in load_alerts(tmp_path)] == ["g1", "g2"]
    done = resolve_alert(tmp_path, older.key, note="dropped from the plan")
    assert done is not None and not done.open and done.note == "dropped from the plan"
    assert [e.key for e in open_alerts(tmp_path)] == [newer.key] and len(load_alerts(tmp_path)) == 2
    again = raise_alert(tmp_path, older.model_copy(update={"raised": datetime(2026, 1, 3, tzinfo=UTC)}), None)
    assert again.open and again.raised_before == 1  # resolved, then raised again: the trouble is back
    assert [e.key for e in open_alerts(tmp_path)] == [newer.key, older.key]
    assert raise_alert(tmp_path, older, None) == again  # open again: not raised twice
    assert resolve_alert(tmp_path, "phase_failed/-/nothing") is None
    assert load_alerts(tmp_path / "no-such-run") == []


def test_naive_times_and_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        _alert(raised=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="kind"):
        _alert(kind="coffee_empty")
    assert {k.value for k in AlertKind} >= {"no_good_copy", "site_down", "placement_collision", "phase_failed"}


@pytest.fixture
def campaign(tmp_path: Path) -> Campaign:
    """The 3x3 campaign on a world that is not there (no Rucio config, no repositories)."""
    return load_campaign(CAMPAIGN, env={"MSNB_WORLD": str(tmp_path / "no-world")})


def test_the_dashboard_shows_open_alerts_on_top(campaign: Campaign, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    quiet = collect(campaign, run_dir, butler=False)
    assert quiet.alerts == [] and 'class="msnb-alerts"' not in snapshot_html(quiet)
    disk = _alert(kind="disk_full", site="LANCS", subject="LANCS_DISK", cause="LANCS_DISK <full>", action="free 2 TB")
    raise_alert(run_dir, disk, None)
    resolve_alert(run_dir, raise_alert(run_dir, _alert(subject="gone"), None).key)
    status = collect(campaign, run_dir, butler=False)
    assert [e.key for e in status.alerts] == [disk.key]  # open ones only
    html = snapshot_html(status)
    box = html.index('class="msnb-alerts"')
    assert box < html.index('class="msnb-card"')  # above the site cards
    for text in ("disk_full", "LANCS", "LANCS_DISK &lt;full&gt;", "free 2 TB", "not sent"):
        assert text in html[box:]
    assert 'data-alert-key="disk_full/LANCS/LANCS_DISK"' in header_html(status)  # the live header too
    assert json.loads(status.to_json())["alerts"][0]["alert"]["kind"] == "disk_full"


def test_the_run_page_lists_open_alerts_on_top(tmp_path: Path) -> None:
    record_result(tmp_path, PhaseResult(phase="alpha", passed=False, reason="by hand"))
    text = render_index(tmp_path).read_text()
    assert 'class="msnb-alerts"' not in text
    held = _alert()
    raise_alert(tmp_path, held, None)
    text = render_index(tmp_path).read_text()
    assert text.index('class="msnb-alerts"') < text.index("<h2>Phases</h2>")
    assert held.action in text and "group_held" in text
    resolve_alert(tmp_path, held.key)
    text = render_index(tmp_path).read_text()
    assert 'class="msnb-alerts"' not in text and "1 alert resolved" in text


def test_a_status_without_a_run_folder_has_no_alerts() -> None:
    status = CampaignStatus(campaign="c", central="USDF", run_dir=None, collected_at="2026-01-01T00:00:00Z")
    assert 'class="msnb-alerts"' not in header_html(status)


def test_the_alerts_command_lists_resolves_and_exits_1_while_one_is_open(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from multisite_nb.cli import main

    held = raise_alert(tmp_path, _alert(), None)
    disk = raise_alert(tmp_path, _alert(kind="disk_full", site="LANCS", subject="LANCS_DISK", action="free 2 TB"), None)
    run = CliRunner()
    listed = run.invoke(main, ["alerts", str(tmp_path)])
    assert listed.exit_code == 1 and "2 open alert(s)" in listed.output
    assert f"key:     {held.key}" in listed.output and "do:      free 2 TB" in listed.output
    bad = run.invoke(main, ["alerts", str(tmp_path), "--resolve", "group_held/RAL/nothing"])
    assert bad.exit_code == 2 and "no alert of key 'group_held/RAL/nothing'" in bad.output
    assert len(open_alerts(tmp_path)) == 2  # nothing was touched
    one = run.invoke(main, ["alerts", str(tmp_path), "--resolve", held.key, "--note", "the group was dropped"])
    assert one.exit_code == 1 and f"resolved: {held.key}" in one.output and "1 open alert(s)" in one.output
    two = run.invoke(main, ["alerts", str(tmp_path), "--resolve", disk.key, "--json"])
    assert two.exit_code == 0 and json.loads(two.output[two.output.index("[") :]) == []
    every = run.invoke(main, ["alerts", str(tmp_path), "--all", "--json"])
    entries = json.loads(every.output)
    assert every.exit_code == 0 and [e["note"] for e in entries] == ["the group was dropped", ""]


def test_the_supervisor_stops_waiting_on_what_a_person_resolved(campaign: Campaign, tmp_path: Path) -> None:
    from multisite_nb.run.supervise import _Supervisor

    lines: list[str] = []
    sup = _Supervisor(campaign, tmp_path / "runs", None, [], lines.append, True, lambda _: None)
    sup.adopt(tmp_path / "run")
    held, disk = (raise_alert(sup.alert_dir, a, None) for a in (_alert(), _alert(kind="disk_full", subject="RAL_DISK")))
    sup.record.waiting_for = [held.key, disk.key]
    sup.forget_resolved()
    assert sup.record.waiting_for == [held.key, disk.key]  # both still open
    resolve_alert(sup.alert_dir, held.key, note="dropped from the plan")
    sup.forget_resolved()
    assert sup.record.waiting_for == [disk.key]
    assert sup.record.rounds[-1].action == "resolved" and held.key in lines[-1]
    # one raised before the run existed is in the campaign's runs folder: still open, still waited on
    early = raise_alert(tmp_path / "runs" / campaign.name, _alert(kind="site_down", subject="RAL"), None)
    sup.record.waiting_for.append(early.key)
    sup.forget_resolved()
    assert sup.record.waiting_for == [disk.key, early.key]
