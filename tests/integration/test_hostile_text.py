"""Hostile text from outside is inert in every output (issue 15, point 5).

Outside values (CI job names and URLs, workflow, repository, branch and tag names, log lines, vendor error
text, advisory titles and references) carry the attacks a CI metadata field can hold: a Markdown link, raw
HTML, a Slack channel ping and link, a team mention, backticks that would close a code span, pipes that would
split a table cell, a newline that would start a heading. They go through each output the way a run sends
them, and the output is read back as its reader would see it:

* Slack: the ``slack_sdk`` client against the local Web API stand-in ``flows.drill.servers.slack`` (the
  vendor's wire protocol, unmodified SDK); every message text and block is checked;
* Markdown: the report (Prefect artifact), a rotate plan (the approval form), the exposure details, the pin
  plan and the pull-request body;
* HTML: the report page, parsed with ``html.parser`` for tags, attributes and link targets.

Only URLs whose origin the inventory names are links; every other URL is inert text.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from digestguard.advisory import Advisory
from digestguard.findings import ExposedJob
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.markdown import md_cell, mrkdwn
from digestguard.plan import Plan, PlanItem
from flows.drill.servers.slack import SlackServer
from tasks.assess import exposure_markdown
from tasks.notify import Notifier, markdown_to_mrkdwn
from tasks.pin import PinChange, PinPlan
from tasks.pull_requests import pull_request_body
from tasks.report.html import render_report_html
from tasks.report.model import PullRequestLink
from tests.report_fixtures import sample_report

EVIL = "https://evil.example/steal"
HOSTILE = [
    "[Open](https://evil.example/steal)",
    "<img src=x onerror=alert(1)>",
    "<!channel> <!here>",
    "@team please approve",
    "<https://evil.example/steal|click>",
    "`code` ``` fence",
    "a | b | c",
    "line1\n# line2 heading\n- [ ] fake todo",
]
ALL = " ".join(HOSTILE)
ALLOWED = "https://github.example"


def _hostile_report():
    r = sample_report()
    t = r.window.start
    jobs = [ExposedJob(source="gha", job=h, started_at=t + timedelta(minutes=5 + i), verdict="confirmed",
                       reason=f"reason {h}", reference=f"checkmarx/kics:{h}", evidence=[f"log {h}"], url=EVIL)
            for i, h in enumerate(HOSTILE)]
    exposure = r.exposure.model_copy(update={"jobs": jobs, "errors": [f"vendor said: {h}" for h in HOSTILE],
                                             "link_origins": [ALLOWED]})
    prs = [PullRequestLink(repository="acme/api", url="https://github.example/acme/api/pull/12", number=12,
                           title=ALL, state="open", changes=1),
           PullRequestLink(repository="evil/repo", url=EVIL, number=13, title="look here", state="open", changes=1)]
    return r.model_copy(update={"advisory_title": ALL, "exposure": exposure, "pull_requests": prs,
                                "needs_person": HOSTILE})


def _plan() -> Plan:
    return Plan(stage="rotate", incident="inc-1", advisory="kics-2026-04",
                items=[PlanItem(target=f"gha:{h}", action="rotate", kind="github", reason=h) for h in HOSTILE],
                evidence=HOSTILE, notes=HOSTILE)


# --------------------------------------------------------------------------- the checks


def _check_markdown(md: str) -> None:
    """What a Markdown renderer (GitHub, Prefect's UI) would make of ``md``: inside a fenced block or a code span
    everything is literal, so the checks read the prose around them; a hostile backtick can never end a span."""
    prose = re.sub(r"(?s)```.*?```", "", md)
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inside a code span nothing is a link, tag or mention
    assert "evil.example" not in prose.replace("evil[.]example", "")  # every hostile URL defanged
    links = re.findall(r"(?<!\\)\]\(([^)]*)\)", prose)  # a Markdown link target: an unescaped "](" opens one
    assert all(u.startswith((ALLOWED + "/", "http://127.0.0.1:4200/")) for u in links), links
    assert "<img" not in prose and "<!channel>" not in prose and "<https://" not in prose
    assert not re.search(r"(?<![\w.\-/+])@team", prose)  # no mention GitHub would resolve
    assert "`code`" not in re.sub(r"(?s)```.*?```", "", md)  # hostile backticks never open or close a code span
    for line in md.splitlines():
        assert not line.startswith(("# line2", "- [ ] fake")), line  # a newline never starts a line of its own
    for table in re.findall(r"(?m)(^\|.*\|$(?:\n^\|.*\|$)+)", md):
        rows = table.splitlines()
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in rows if not row.startswith("| …")}
        assert len(widths) == 1, rows  # no cell split by a hostile pipe


def _check_mrkdwn(text: str) -> None:
    # in Slack, only <...> makes a link, a mention or a ping: no hostile one survives, nor a bare evil URL
    for m in re.finditer(r"<([^>]*)>", text):
        target = m.group(1).split("|", 1)[0]
        assert target.startswith(("https://github.example/", "http://127.0.0.1")), m.group(0)
    assert "evil.example" not in text.replace("evil[.]example", "")
    assert not re.search(r"(?<![\w.\-/+])@(team|here|channel)", text)
    assert "`code`" not in re.sub(r"(?s)```.*?```", "", text)  # inside a fenced block backticks are literal


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _check_html(page: str) -> None:
    p = _Tags()
    p.feed(page)
    names = {t for t, _ in p.tags}
    assert "img" not in names and "script" not in names
    assert not any(k.startswith("on") for _, a in p.tags for k in a)
    hrefs = [a.get("href") for t, a in p.tags if t == "a"]
    assert hrefs and all(h.startswith((ALLOWED + "/", "http://127.0.0.1:4200/")) for h in hrefs), hrefs
    assert EVIL in page.replace("&amp;", "&") or "evil[.]example" in page  # shown, as text


# --------------------------------------------------------------------------- escapers themselves


@pytest.mark.parametrize("text", HOSTILE)
def test_each_escaper_makes_the_text_inert(text):
    cell = md_cell(text)
    bare = cell.replace("[:]", "").replace("[.]", "")  # the defanging brackets ("https[:]//evil[.]example") link nothing
    assert "\n" not in cell and "<" not in cell and not re.search(r"(?<!\\)[|\[\]`]", bare)
    assert "https://" not in cell and not re.search(r"(?<![\w.\-/+])@team", cell)
    slack = mrkdwn(text)
    assert "<" not in slack and ">" not in slack and "`" not in slack and "https://" not in slack


# --------------------------------------------------------------------------- Markdown outputs


def test_report_markdown_is_inert():
    md = _hostile_report().markdown()
    _check_markdown(md)
    assert "[acme/api#12](https://github.example/acme/api/pull/12)" in md  # the inventory's forge stays a link
    assert "evil/repo#13" in md and "evil[.]example" in md  # the other is shown, not linked


def test_approval_form_plan_is_inert():
    _check_markdown(_plan().markdown())


def test_exposure_details_are_inert():
    exp = _hostile_report().exposure
    md = exposure_markdown(exp)
    _check_markdown(md)
    assert "https://github.example" not in md  # no job URL on the inventory's forge here: no link at all
    ok = exp.model_copy(update={"jobs": [exp.jobs[0].model_copy(update={"url": "https://github.example/a/b/runs/1"})]})
    assert "](https://github.example/a/b/runs/1)" in exposure_markdown(ok)


def test_pull_request_body_and_pin_plan_are_inert():
    adv = Advisory.model_validate({
        "id": "kics-2026-04", "title": ALL, "window": {"start": "2026-04-22T10:00:00Z", "source": ALL},
        "images": [{"repository": "checkmarx/kics", "malicious": [{"digest": "sha256:" + "1" * 64, "source": ALL}]}],
        "references": [{"kind": "url", "value": EVIL}]})
    changes = [PinChange(path=f"ci/{h}.yml", line=i + 1, col=1, before=f"checkmarx/kics:{h}",
                         after="checkmarx/kics:v2@sha256:" + "2" * 64, kind="image", context=h, target="checkmarx/kics",
                         digest="sha256:" + "2" * 64, reason=h, start=0, end=1, old="x", new="y", file_sha256="0" * 64)
               for i, h in enumerate(HOSTILE)]
    plan = PinPlan(advisory="kics-2026-04", root=".", changes=changes)
    _check_markdown(pull_request_body(plan, adv, "inc-1"))
    _check_markdown(plan.markdown())


# --------------------------------------------------------------------------- Slack


def test_slack_messages_are_inert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with SlackServer() as slack:
        monkeypatch.setenv("TEST_SLACK_TOKEN", slack.token)
        inv = parse_inventory({"slack": {"channel": "#sec-incident", "token": "env:TEST_SLACK_TOKEN",
                                         "api_url": slack.api_url},
                               "repositories": [{"name": "api", "path": ".", "api_url": "https://api.github.example"}]},
                              "inventory.yaml", Path("."))
        journal = Journal(tmp_path / "journal.sqlite")
        n = Notifier.from_inventory(inv, journal, "inc-1", advisory_id="kics-2026-04", title=ALL)
        assert n.open_incident().outcome == "done"
        rep = _hostile_report()
        n.stage_update("assess", "done", summary=ALL, details=exposure_markdown(rep.exposure))
        n.stage_update("rotate", "awaiting-approval", summary=ALL, details=_plan().markdown())
        n.request_approval(_plan())
        assert all(o.outcome == "done" for o in n.final_summary(rep))
        texts: list[str] = []

        def collect(obj):
            if isinstance(obj, dict):
                for k, v in obj.items():
                    texts.append(v) if k == "text" and isinstance(v, str) else collect(v)
            elif isinstance(obj, list):
                for v in obj:
                    collect(v)

        for m in slack.messages.values():
            texts.append(m.text)
            collect(m.blocks)
        journal.close()
    assert len(texts) > 5
    for t in texts:
        _check_mrkdwn(t)
    assert any("<https://github.example/acme/api/pull/12|" in t for t in texts)  # the inventory's forge: a link


def test_markdown_to_mrkdwn_links_only_allowed_origins():
    md = f"see [ours]({ALLOWED}/a/pull/1) and [{md_cell('x')}]({EVIL}) and {md_cell(HOSTILE[0])}"
    out = markdown_to_mrkdwn(md, origins=[ALLOWED])
    assert f"<{ALLOWED}/a/pull/1|ours>" in out
    _check_mrkdwn(out)


# --------------------------------------------------------------------------- HTML


def test_report_html_is_inert():
    page = render_report_html(_hostile_report())
    _check_html(page)


def test_inventory_names_the_link_origins():
    inv = parse_inventory({"ci_logs": [{"name": "gha", "kind": "github", "repo": "acme/api"}],
                           "repositories": [{"name": "web", "kind": "gitlab", "path": ".",
                                             "api_url": "https://gitlab.example:8443/api/v4"}],
                           "registries": [{"name": "mirror", "url": "http://127.0.0.1:5000"}]},
                          "inventory.yaml", Path("."))
    assert inv.link_origins() == ["http://127.0.0.1:5000", "https://api.github.com", "https://github.com",
                                  "https://gitlab.example:8443"], inv.link_origins()



