"""The README's on-call walkthrough stays true: it shows the three ways to answer a gate and the sandbox, and every
command and option it names there exists in the CLI (checked against the Typer app, not against the text)."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from flows.cli import app

README = (Path(__file__).parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    nxt = re.search(r"^#{2,3} ", README[start + len(title):], re.M)
    return README[start: start + len(title) + (nxt.start() if nxt else len(README))]


def _options(*path: str) -> set[str]:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return {o for p in cmd.params for o in getattr(p, "opts", [])}


def test_the_walkthrough_shows_three_ways_to_approve():
    walk = _section("## On call: the walkthrough")
    assert "**Three ways to answer**" in walk
    assert re.search(r"`digestguard approve RUN_ID --approver \w+ --sign [^`]+`", walk)  # terminal, signed
    assert "*Terminal, unsigned*" in walk and "*the Prefect UI*" in walk and "**asserted**" in walk
    assert "*Slack buttons (verified)*" in walk and "Socket Mode" in walk and "slack_user_id" in walk
    assert "what a Prefect OSS UI answer" in walk or "Prefect OSS has no user accounts" in walk  # what the UI proves
    assert "`digestguard confirm RUN_ID --who" in walk
    assert {"--approver", "--sign", "--reject", "--reason"} <= _options("approve")
    assert {"--who", "--not-rotated", "--note"} <= _options("confirm")


def test_the_walkthrough_names_the_sandbox_and_the_local_server_commands():
    sandbox = _section("### Practising: `digestguard sandbox`")
    assert "digestguard sandbox --json" in sandbox and "respond -a \"$ADV\" -i \"$INV\" --execute" in sandbox
    assert "--sign" in sandbox and "digestguard confirm <uuid> --who" in sandbox
    assert {"--json", "--scale"} <= _options("sandbox")
    walk = _section("## On call: the walkthrough")
    assert "`digestguard server status`" in walk and "`digestguard server stop`" in walk
    assert {"--json"} <= _options("server", "status") and "stop" in typer.main.get_command(app).commands["server"].commands


def test_the_readme_says_what_ci_runs_besides_the_main_suite():
    """Every marker the main run deselects is run by .ci/run on its own, and the README says so."""
    root = Path(__file__).parents[2]
    addopts = re.search(r'^addopts = "(.*)"$', (root / "pyproject.toml").read_text(), re.M).group(1)
    deselected = re.findall(r"not (\w+)", addopts)
    assert {"isolated", "image"} <= set(deselected)
    ci_run = (root / ".ci" / "run").read_text()
    section = _section("## The two commands")
    for marker in deselected:
        assert re.search(rf"pytest [^\n]*-m {marker}\b", ci_run), marker
        assert f"`{marker}`" in section and f"-m {marker}" in section, marker
