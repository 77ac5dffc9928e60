"""Nothing secret leaves in an error (issue 15, point 4).

A registry stand-in (``tests/fakes/hostile_registry.py``, fault ``echo-secret``: the OCI distribution wire
protocol with basic auth) quotes the password it was sent in every error body, the way some vendors echo a
credential. The whole incident flow runs (dry run) with Slack played by the drill's Slack Web API stand-in
(``flows/drill/servers/slack.py``); the value must be found nowhere: not in the flow's summary, the findings,
any log record, the journal's database file, the HTML report or any Slack message or file.
"""

from __future__ import annotations

import json
import logging

import yaml
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from flows.drill.servers.slack import SlackServer
from integrations import registry
from tests.fakes.hostile_registry import start_hostile_registry

PASSWORD = "Pw-4f9c2e1b-echo-me-9d1"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _QuickRetries(registry.RegistryClient):
    """The same client with short waits between its retries: every retry still runs (and still echoes the secret)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"backoff": 0.01, "max_backoff": 0.05, **kwargs})


def test_an_echoed_secret_is_found_nowhere(tmp_path, monkeypatch):
    from digestguard.advisory import load_advisory
    from flows.incident_response import incident_response

    monkeypatch.setattr(registry, "RegistryClient", _QuickRetries)
    monkeypatch.setenv("DG_REG_USER", "bob")
    monkeypatch.setenv("DG_REG_PW", PASSWORD)
    reg = start_hostile_registry("echo-secret")
    slack = SlackServer().start()
    monkeypatch.setenv("DG_SLACK_TOKEN", slack.token)
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump({
        "registries": [{"name": "hostile", "url": reg.base_url, "username": "env:DG_REG_USER",
                        "password": "env:DG_REG_PW"}],
        "slack": {"channel": "#sec-incident", "token": "env:DG_SLACK_TOKEN", "api_url": slack.api_url},
    }))
    capture = _Capture()
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    for lg in loggers:
        lg.addHandler(capture)
    try:
        # this shared 2-core machine can take longer than Prefect's default 20 s to start the embedded server
        with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
            summary = incident_response(advisory=load_advisory("kics-2026-04").id, inventory=str(inv), mode="dry-run",
                                        triggered_by="oncall", report_path=str(tmp_path / "report.html"))
    finally:
        for lg in loggers:
            lg.removeHandler(capture)
        reg.stop()
        slack.stop()
    # the echo happened, and was masked where the error was made
    from digestguard.journal import Journal

    assert summary["coverage_note"].startswith("1 of 1 sources not checked: hostile (partial")
    places = {
        "summary": json.dumps(summary, default=str),
        "logs": "\n".join(capture.lines),
        "report": (tmp_path / "report.html").read_text(),
        "slack": json.dumps([[m.text, m.blocks] for m in slack.messages.values()], default=str)
        + json.dumps(slack.files, default=str) + json.dumps([c.params for c in slack.calls], default=str),
    }
    db = tmp_path / ".digestguard"
    places["journal"] = "".join(p.read_bytes().decode("latin-1") for p in db.rglob("*") if p.is_file())
    rows = Journal(next(db.rglob("journal.sqlite"))).entries(summary["incident"])
    places["journal rows"] = json.dumps([r.as_dict() for r in rows], default=str)
    assert "[redacted]" in places["report"]  # the echo happened, and was masked where the error was made
    for where, text in places.items():
        assert PASSWORD not in text, where
