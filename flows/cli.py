"""``digestguard``: the on-call's command line.

Thin on purpose: it parses arguments, calls the same functions the flows call
(``digestguard detect`` and the flow's detect stage are the same code), and
prints. Each command imports its stage inside the command, on purpose (the one
place in the product that does): ``--help`` and ``digestguard lint`` (the
pre-commit hook) answer without loading Prefect and the vendor SDKs, and
``check_own_packages`` runs before any of our generic top-level packages
(``flows``, ``tasks``, ``integrations``) is imported.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, List, Optional

import typer

from digestguard.errors import DigestguardError, InputError
from digestguard.install import check_own_packages
from digestguard.redact import install as install_redaction, redact

app = typer.Typer(help="Container-image supply-chain incident playbook (Prefect).", no_args_is_help=True, add_completion=False)
advisories_app = typer.Typer(help="IOC packs: list, show, validate.", no_args_is_help=True)
app.add_typer(advisories_app, name="advisories")
egress_app = typer.Typer(help="Egress baselines: CI runners' normal destinations, and the first new one.",
                         no_args_is_help=True)
app.add_typer(egress_app, name="egress")
server_app = typer.Typer(help="The one local Prefect server `respond` starts: status, stop.", no_args_is_help=True)
app.add_typer(server_app, name="server")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _fail(e: Exception, code: int = 2) -> None:
    typer.echo(f"error: {redact(str(e))}", err=True)
    raise typer.Exit(code)


def _coverage_first(coverage: list[Any]) -> None:
    """Say "N of M sources not checked" before anything else (on stderr, so ``--json`` stays one object)."""
    from digestguard.findings import coverage_summary

    missing = coverage_summary(coverage)
    if missing:
        typer.echo(f"INCOMPLETE: {missing}", err=True)


def _verdict_exit(verdict: str) -> None:
    """Exit 0 clean (every source checked), 1 found, 3 incomplete (exit 2 is bad input, raised earlier)."""
    from digestguard.findings import exit_code

    raise typer.Exit(exit_code(verdict))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- advisories
@advisories_app.command("list")
def advisories_list(as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """List the shipped advisory packs."""
    from digestguard.advisory import list_packs

    packs = list_packs()
    if as_json:
        _echo_json({"advisories": [{"id": a.id, "title": a.title, "images": [i.repository for i in a.images],
                                    "window_start": a.window.start, "window_end": a.window.end} for a in packs]})
        return
    for a in packs:
        imgs = ", ".join(i.repository for i in a.images)
        typer.echo(f"{a.id:16} {imgs:32} {a.title}")


@advisories_app.command("show")
def advisories_show(advisory_id: str = typer.Argument(..., metavar="ID"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one pack: images, tags, digests, window, indicators."""
    from digestguard.advisory import load_advisory

    try:
        a = load_advisory(advisory_id)
    except InputError as e:
        _fail(e)
    if as_json:
        _echo_json(a.model_dump(mode="json"))
        return
    typer.echo(f"{a.id}: {a.title}")
    end = a.window.end.isoformat() if a.window.end else "open (no official end)"
    typer.echo(f"window: {a.window.start.isoformat()} -> {end}  [{a.window.source}]")
    for r in a.references:
        typer.echo(f"ref: {r.kind} {r.value}")
    for img in a.images:
        typer.echo(f"\nimage {img.repository}  (also: {', '.join(img.spellings()[:4])} ...)")
        typer.echo(f"  tags overwritten: {', '.join(img.tags_overwritten) or '-'}; created: {', '.join(img.tags_created) or '-'}")
        for m in img.malicious:
            what = f"{m.kind} {m.platform or ''}".strip()
            tags = f" tags={','.join(m.tags)}" if m.tags else ""
            typer.echo(f"  malicious {m.digest} ({what}){tags}  [{m.source}]")
        for kg in img.known_good:
            typer.echo(f"  known good {kg.tag or '-'}: {kg.digest or 'digest unknown'}  [{kg.source}]")
            if kg.replaces:
                typer.echo(f"    replaces attacker tags: {', '.join(kg.replaces)}")
            if kg.method:
                typer.echo(f"    established by: {kg.method}")
    for ind in a.network:
        typer.echo(f"indicator {ind.kind:10} {ind.value}  [{ind.source}]")
    for act in a.actions:
        safe = ", ".join(f"{s.ref}={s.commit}" for s in act.safe) or "none known"
        typer.echo(f"action {act.repository}: malicious {', '.join(act.malicious_commits)}; safe {safe}")


@advisories_app.command("validate")
def advisories_validate(file: Path = typer.Argument(..., help="a pack file (YAML)")) -> None:
    """Validate a user's own pack; exits 2 with every problem named."""
    from digestguard.advisory import load_advisory_file

    try:
        a = load_advisory_file(file)
    except InputError as e:
        _fail(e)
    digests = sum(len(i.malicious) for i in a.images)
    typer.echo(f"{file}: ok ({a.id}, {len(a.images)} image(s), {digests} digest(s), {len(a.network)} indicator(s))")


@advisories_app.command("schema")
def advisories_schema() -> None:
    """Print the pack schema as JSON Schema."""
    from digestguard.advisory import json_schema

    _echo_json(json_schema())


# ---------------------------------------------------------------------------------- journal
@app.command("journal")
def journal_cmd(
    incident: str = typer.Argument(..., help="incident id"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="inventory file (its journal path)"),
    journal_path: Optional[str] = typer.Option(None, "--journal", help="journal: a SQLite path or a postgresql:// URL "
                                                                       "(default: $DIGESTGUARD_JOURNAL, else the inventory's)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print every side effect recorded for an incident."""
    from digestguard.journal import Journal, is_postgres_url

    path = _journal_path(inventory, journal_path, incident)
    if not is_postgres_url(path) and not Path(path).exists():
        _fail(InputError(path, "no journal here (pass --journal or --inventory, or set DIGESTGUARD_JOURNAL)"))
    j = Journal(path)
    rows = [e.as_dict() for e in j.entries(incident)]
    if as_json:
        _echo_json({"incident": incident, "actions": rows, "events": j.events(incident)})
        return
    if not rows:
        typer.echo(f"no actions journaled for {incident}")
    for r in rows:
        who = f" by {r['approver']}" if r["approver"] else ""
        err = f"  ! {r['error']}" if r["error"] else ""
        typer.echo(f"{r['started_at'] or '':29} {r['stage']:8} {r['action']:24} {r['status']:8} {r['target']}{who}{err}")


def _journal_path(inventory: Optional[Path], journal_path: Optional[str], incident: Optional[str] = None) -> str:
    """``--journal``, else the inventory's (``DIGESTGUARD_JOURNAL`` first), else ``$DIGESTGUARD_JOURNAL``, else the one
    `respond` recorded for the incident, else ./.digestguard."""
    from digestguard.journal import JOURNAL_ENV, check_location, is_postgres_url

    if journal_path:
        return check_location(journal_path, "--journal") if is_postgres_url(journal_path) else journal_path
    if inventory:
        from digestguard.inventory import load_inventory

        return load_inventory(inventory).journal_location()
    env = os.environ.get(JOURNAL_ENV, "").strip()
    if env:
        return check_location(env, JOURNAL_ENV) if is_postgres_url(env) else str(Path(env).resolve())
    if incident:
        from flows.local_server import journal_of

        found = journal_of(incident)
        if found:
            return str(found)
    return str(Path(".digestguard/journal.sqlite").resolve())


# ---------------------------------------------------------------------------------- stages
@app.command("detect")
def detect_cmd(
    advisory: str = typer.Option(..., "--advisory", "-a", help="advisory id or pack file"),
    inventory: Path = typer.Option(..., "--inventory", "-i", help="inventory file"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object with a findings list"),
) -> None:
    """Stage 1: find every compromised image by digest (registries, engines, pods, CI logs, configs)."""
    from digestguard.advisory import load_advisory
    from digestguard.inventory import load_inventory
    from tasks.detect import detect

    res = detect(load_advisory(advisory), load_inventory(inventory))
    _coverage_first(res.coverage)
    if as_json:
        _echo_json({"advisory": res.advisory, "verdict": res.verdict,
                    "coverage": [c.model_dump(mode="json") for c in res.coverage], "counts": res.counts(),
                    "findings": [f.model_dump(mode="json") for f in res.findings]})
    else:
        for f in sorted(res.findings, key=lambda f: ("compromised", "suspect", "unknown", "clean").index(f.verdict)):
            extra = f"  matches {f.matched} ({f.match_kind})" if f.matched else ""
            err = f"  ! {f.error}" if f.error else ""
            extra += f"  via public mirror {f.mirror}" if f.mirror else ""
            typer.echo(f"{f.verdict:12} {f.kind:16} {f.location}  {f.digest or '-'}{extra}{err}")
        typer.echo(f"\n{len(res.findings)} finding(s): " + ", ".join(f"{v} {k}" for k, v in res.counts().items()))
        checked = sum(1 for c in res.coverage if c.state == "checked")
        typer.echo(f"verdict: {res.verdict} ({checked} of {len(res.coverage)} sources checked)")
    _verdict_exit(res.verdict)


@app.command("assess")
def assess_cmd(
    advisory: str = typer.Option(..., "--advisory", "-a"),
    inventory: Path = typer.Option(..., "--inventory", "-i"),
    window_start: Optional[str] = typer.Option(None, "--window-start", help="override the window start (ISO 8601)"),
    window_end: Optional[str] = typer.Option(None, "--window-end", help="override the window end (ISO 8601)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stage 2: exposed CI jobs, the secrets they held, and network hits in the window."""
    from datetime import datetime, timezone

    from digestguard.advisory import load_advisory
    from digestguard.inventory import load_inventory
    from digestguard.journal import Journal, is_postgres_url
    from tasks.assess import assess, exposure_markdown

    inv = load_inventory(inventory)
    where = inv.journal_location()  # the watch's tag timelines live there (an absent file: none yet)
    journal = Journal(where) if is_postgres_url(where) or Path(where).exists() else None
    try:
        rep = assess(load_advisory(advisory), inv, detected_at=datetime.now(timezone.utc),
                     start_override=_when(window_start, "--window-start"),
                     end_override=_when(window_end, "--window-end"), journal=journal)
    finally:
        if journal is not None:
            journal.close()
    _coverage_first(rep.coverage)
    if as_json:
        _echo_json({"verdict": rep.verdict, **rep.model_dump(mode="json")})
    else:
        typer.echo(exposure_markdown(rep))
    _verdict_exit(rep.verdict)


def _when(value: Optional[str], name: str):
    if not value:
        return None
    from datetime import datetime, timezone

    try:
        d = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(name, f"{value!r} is not an ISO 8601 time") from None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


@app.command("sweep")
def sweep_cmd(
    paths: List[str] = typer.Argument(..., help="log files or folders (gzip read transparently); cloudwatch://GROUP too"),
    advisory: str = typer.Option(..., "--advisory", "-a"),
    log_format: Optional[str] = typer.Option(None, "--format", help="force a format (default: detect per file)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object with a hits list"),
) -> None:
    """Scan network and CI logs for the advisory's domains, IPs, URL paths and user agents."""
    from digestguard.advisory import load_advisory
    from tasks.sweep.run import sweep_paths

    adv = load_advisory(advisory)
    res = sweep_paths(paths, adv.network, adv.window, log_format=log_format)
    data = res.to_json_dict()
    _coverage_first(res.coverage())
    if as_json:
        _echo_json(data)
    else:
        for h in data["hits"]:
            flag = {True: "IN WINDOW", False: "outside", None: "no time"}[h["in_window"]]
            typer.echo(f"{h['path']}:{h['line']}  {h['kind']:10} {h['indicator']:40} {h['timestamp'] or '-':32} {flag}")
        for f in data.get("files", []):
            if f.get("unparsable"):
                typer.echo(f"{f['path']}: {f['unparsable']} line(s) could not be parsed", err=True)
        typer.echo(f"{len(data['hits'])} hit(s)")
    raise typer.Exit(1 if data["hits"] else (3 if data["verdict"] == "incomplete" else 0))


@app.command("pin")
def pin_cmd(
    advisory: str = typer.Option(..., "--advisory", "-a"),
    repo: Path = typer.Option(..., "--repo", help="repository checkout"),
    to: List[str] = typer.Option([], "--to", help="sha256:... for every affected reference, or TAG=sha256:... (repeat)"),
    digest_only: bool = typer.Option(False, "--digest-only", help="write name@sha256:... instead of name:tag@sha256:..."),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, change nothing"),
    as_json: bool = typer.Option(False, "--json"),
    open_pr: bool = typer.Option(False, "--open-pr", help="push a branch and open/update a pull request (needs --inventory)"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="inventory naming this repository (for --open-pr)"),
    incident: Optional[str] = typer.Option(None, "--incident", help="incident id (names the branch)"),
) -> None:
    """Stage 5: move every reference from a mutable tag to a known-good digest."""
    from digestguard.advisory import load_advisory
    from tasks.pin import apply_pins, plan_pins

    adv = load_advisory(advisory)
    plan = plan_pins(repo, adv, to=to or None, digest_only=digest_only)
    if as_json:
        _echo_json({"advisory": adv.id, "plan_hash": plan.plan_hash(), "dry_run": dry_run,
                    "changes": [{"path": c.path, "line": c.line, "before": c.before, "after": c.after} for c in plan.changes],
                    "skipped": [{"path": s.path, "line": s.line, "reason": s.reason} for s in plan.skipped],
                    "needs_decision": [d.model_dump(mode="json") for d in plan.needs_decision]})
    else:
        typer.echo(plan.markdown())
    if dry_run:
        return
    if open_pr:
        if inventory is None:
            raise InputError("--open-pr", "needs --inventory naming the repository (token, remote, forge)")
        from digestguard.inventory import load_inventory
        from digestguard.journal import Journal
        from flows.incident_response import new_incident_id
        from tasks.pin import render_pins
        from tasks.pull_requests import open_pin_pull_request

        inv = load_inventory(inventory)
        root = repo.resolve()
        entry = next((r for r in inv.repositories if inv.resolve_path(r.path) == root), None)
        if entry is None:
            raise InputError(str(inventory), f"no repositories[] entry has path {root}")
        out = open_pin_pull_request(entry, plan, adv, incident or new_incident_id(adv.id), inv, Journal(inv.journal_location()),
                                    rendered=render_pins(plan))
        typer.echo(f"pull request: {out.outcome} {out.detail.get('url') or ''} {out.error or ''}".rstrip(), err=as_json)
        raise typer.Exit(0 if out.outcome in ("done", "skipped") else 1)
    changed = apply_pins(plan)
    typer.echo(f"rewrote {len(changed)} file(s)", err=as_json)


@app.command("lint")
def lint_cmd(
    path: Path = typer.Argument(Path("."), help="checkout or file"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object with an offenders list"),
    exclude: List[str] = typer.Option([], "--exclude", help="glob of repository-relative paths to leave out (repeat)"),
    check_updates: Optional[str] = typer.Option(
        None, "--check-updates", metavar="BASE_REF",
        help="quarantine gate for pull requests: also fail a digest or action SHA changed against this git ref to one "
             "an advisory lists, or one pushed inside an advisory's window (unknown push time fails closed)"),
    allow: Optional[Path] = typer.Option(None, "--allow", help="YAML allow-list for --check-updates: [{digest, reason}]"),
    github_api: Optional[str] = typer.Option(
        None, "--github-api", help="GitHub API URL for action commit times (token from GITHUB_TOKEN)"),
    check_actions: bool = typer.Option(
        False, "--check-actions", help="action provenance through --github-api: impostor commits, version comments "
                                       "that do not match their tag, tags moved since first seen (--state)"),
    state: Optional[Path] = typer.Option(None, "--state", help="watch state file remembering action tags"
                                                                 " (and, for --check-updates, when each digest was first seen)"),
    dockerhub_api: str = typer.Option(
        "https://hub.docker.com", "--dockerhub-api",
        help="Docker Hub API for image push times in --check-updates (tag_last_pushed / last_pushed)"),
    registry_times: bool = typer.Option(
        True, "--registry-times/--no-registry-times",
        help="--check-updates: also read an image config's created time from its registry"),
) -> None:
    """Policy gate: fail when an image reference uses a tag without a digest, or a malicious digest."""
    import os

    from digestguard.advisory import list_packs
    from digestguard.findings import overall_verdict
    from tasks.lint import lint_tree_coverage

    packs = list_packs()
    found, cov = lint_tree_coverage(path, packs, exclude=exclude)
    offenders: list[Any] = list(found)
    allowed: list[Any] = []
    if check_updates:
        from contextlib import ExitStack

        from integrations.dockerhub import DockerHub
        from integrations.registry import RegistryClient
        from tasks.quarantine import ImagePushTimes, check_updates as check, github_pushed_at, load_allow_list, updates_since
        from tasks.watch.state import WatchState

        with ExitStack() as stack:
            clients: dict[str, RegistryClient] = {}

            def registry_for(host: str) -> RegistryClient:
                if host not in clients:
                    clients[host] = stack.enter_context(RegistryClient(host))
                return clients[host]

            images = ImagePushTimes(hub=stack.enter_context(DockerHub(api_url=dockerhub_api, max_retries=2, timeout=15)),
                                    registry=registry_for if registry_times else None,
                                    state=stack.enter_context(WatchState(state)) if state else None)
            actions = None
            if github_api:
                from integrations.github import GitHubClient

                actions = github_pushed_at(GitHubClient(os.environ.get("GITHUB_TOKEN", ""), api_url=github_api))

            def pushed_at(u: Any) -> Any:
                if u.kind == "action":
                    return actions(u) if actions else None
                return images.for_update(u)

            refused, allowed = check(updates_since(path, check_updates), packs,
                                     load_allow_list(allow) if allow else (), pushed_at)
        for err in images.errors:  # a push-time source that did not answer (the gate failed closed where it mattered)
            typer.echo(f"push time source: {redact(err)}", err=True)
        offenders += refused
    if check_actions:
        if not github_api:
            raise InputError("--check-actions", "needs --github-api (and GITHUB_TOKEN)")
        from integrations.github import GitHubClient
        from tasks.provenance import check_actions as provenance
        from tasks.watch.state import WatchState

        gh = GitHubClient(os.environ.get("GITHUB_TOKEN", ""), api_url=github_api)
        if state:
            with WatchState(state) as st:
                offenders += provenance(path, gh, st)
        else:
            offenders += provenance(path, gh)
    verdict = overall_verdict(bool(offenders), [cov])
    _coverage_first([cov])
    if as_json:
        _echo_json({"verdict": verdict, "coverage": [cov.model_dump(mode="json")], "offenders": [
            {"path": o.path, "line": o.line, "reference": o.reference, "reason": o.reason, "kind": o.kind,
             "suggestion": getattr(o, "suggestion", None)} for o in offenders],
                    "allowed": [{"path": u.path, "line": u.line, "digest": u.new, "reason": why} for u, why in allowed]})
    else:
        for o in offenders:
            sug = getattr(o, "suggestion", None)
            hint = f"\n    suggest: {sug}" if sug else ""
            typer.echo(f"{o.path}:{o.line}: {o.reference}: {o.reason}{hint}")
        for u, why in allowed:
            typer.echo(f"{u.path}:{u.line}: {u.reference}: allowed by the allow-list: {why}", err=True)
        typer.echo(f"{len(offenders)} offender(s)", err=True)
    _verdict_exit(verdict)


def _plan_stage(stage: str, advisory: str, inventory: Path, incident: Optional[str]):
    """The stage's plan and the coverage of the detect/assess answer it was planned from."""
    from datetime import datetime, timezone

    from digestguard.advisory import load_advisory
    from digestguard.inventory import load_inventory
    from flows.incident_response import new_incident_id
    from tasks.detect import detect

    adv, inv = load_advisory(advisory), load_inventory(inventory)
    inc = incident or new_incident_id(adv.id)
    if stage == "purge":
        from tasks.purge import plan_purge

        detected = detect(adv, inv)
        return plan_purge(inc, adv, detected, inv), detected.coverage
    from tasks.assess import assess
    from tasks.rotate.stage import plan_rotation

    exposure = assess(adv, inv, detected_at=datetime.now(timezone.utc))
    return plan_rotation(inc, adv, exposure, inv), exposure.coverage


def _print_plan(planned, as_json: bool) -> None:
    """The plan, after "N of M sources not checked" when its inputs were incomplete (then exit 3)."""
    from digestguard.findings import coverage_summary

    plan, coverage = planned
    note = coverage_summary(coverage)
    if as_json:
        _echo_json({"stage": plan.stage, "plan_hash": plan.hash, "verdict": "incomplete" if note else "complete",
                    "coverage": [c.model_dump(mode="json") for c in coverage],
                    "items": [i.model_dump(mode="json") for i in plan.items], "evidence": plan.evidence, "notes": plan.notes})
    else:
        if note:
            typer.echo(f"INCOMPLETE: {note}\nThis plan covers only the sources that were checked.\n")
        typer.echo(plan.markdown())
    if note:
        raise typer.Exit(3)


@app.command("rotate")
def rotate_cmd(
    advisory: str = typer.Option(..., "--advisory", "-a"),
    inventory: Path = typer.Option(..., "--inventory", "-i"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the rotation plan and change nothing"),
    incident: Optional[str] = typer.Option(None, "--incident"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stage 3 plan: every exposed credential and the places that use it. Executing needs an approval on a flow run."""
    if not dry_run:
        raise InputError("rotate", "rotation runs only after an approval on a flow run: use `digestguard respond --execute` "
                                   "(or --dry-run here to see the plan)")
    _print_plan(_plan_stage("rotate", advisory, inventory, incident), as_json)


@app.command("purge")
def purge_cmd(
    advisory: str = typer.Option(..., "--advisory", "-a"),
    inventory: Path = typer.Option(..., "--inventory", "-i"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the purge plan and change nothing"),
    incident: Optional[str] = typer.Option(None, "--incident"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stage 4 plan: every malicious digest and where it is. Executing needs an approval on a flow run."""
    if not dry_run:
        raise InputError("purge", "purging runs only after an approval on a flow run: use `digestguard respond --execute` "
                                  "(or --dry-run here to see the plan)")
    _print_plan(_plan_stage("purge", advisory, inventory, incident), as_json)


# ---------------------------------------------------------------------------------- the incident
@app.command("respond")
def respond_cmd(
    advisory: str = typer.Option(..., "--advisory", "-a", help="advisory id or pack file"),
    inventory: Path = typer.Option(..., "--inventory", "-i"),
    execute: bool = typer.Option(False, "--execute", help="act (after approvals); without it: a dry run that changes nothing"),
    dry_run: bool = typer.Option(False, "--dry-run", help="plan only, change nothing (the default; says so explicitly)"),
    incident: Optional[str] = typer.Option(None, "--incident", help="resume this incident id (default: a new one)"),
    known_good: List[str] = typer.Option([], "--known-good", "--to", help="sha256:... or TAG=sha256:... (repeat)"),
    window_start: Optional[str] = typer.Option(None, "--window-start"),
    window_end: Optional[str] = typer.Option(None, "--window-end"),
    report: Optional[Path] = typer.Option(None, "--report", help="where to write report.html"),
    as_json: bool = typer.Option(False, "--json", help="print the run's summary as JSON"),
) -> None:
    """Run the whole playbook; gates wait for `digestguard approve`, `confirm` or the Prefect UI.

    Without PREFECT_API_URL it starts (or reuses) one local Prefect server with its UI on loopback, recorded
    under $PREFECT_HOME so `approve`, `confirm`, `journal` and `report` find it. Prints
    `flow run <uuid>: <ui-url>` on stderr as the run starts.
    """
    import getpass
    import os

    from flows.local_server import ensure_server, remember_incident, use_server

    if dry_run and execute:
        _fail(InputError("respond", "--dry-run and --execute exclude each other", "--dry-run"))

    if not os.environ.get("PREFECT_API_URL"):
        use_server(ensure_server())
    from digestguard.advisory import load_advisory
    from digestguard.inventory import load_inventory
    from flows.incident_response import incident_response, new_incident_id

    incident = incident or new_incident_id(load_advisory(advisory).id)
    remember_incident(incident, load_inventory(inventory).journal_location())
    state = incident_response(advisory=advisory, inventory=str(inventory.resolve()), mode="execute" if execute else "dry-run",
                              incident_id=incident, known_good=known_good or None,
                              window_start=_when(window_start, "--window-start"), window_end=_when(window_end, "--window-end"),
                              triggered_by=getpass.getuser(), report_path=str(report) if report else None,
                              return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow raised: its error, as one line
        if isinstance(summary, DigestguardError):
            raise summary
        _fail(RuntimeError(f"the incident flow failed: {type(summary).__name__}: {str(summary)[:300]}"), 3)
    if summary.get("coverage_note"):
        typer.echo(f"INCOMPLETE: {summary['coverage_note']}", err=True)
    if as_json:
        _echo_json(summary)
    else:
        for k, v in summary.items():
            typer.echo(f"{k:16} {v}")
    verdict = summary.get("verdict", "incomplete")
    _verdict_exit(verdict if summary.get("ok", True) or verdict == "found" else "incomplete")


@app.command("approve")
def approve_cmd(
    run_id: str = typer.Argument(..., help="the paused flow run's id"),
    approver: str = typer.Option(..., "--approver", help="your handle (an approver listed in the inventory)"),
    reject: bool = typer.Option(False, "--reject", help="reject instead of approve"),
    reason: str = typer.Option("", "--reason"),
    sign: Optional[Path] = typer.Option(None, "--sign", help="your SSH private key: signs (plan hash, run id, decision) "
                                                              "so the gate verifies it is you"),
) -> None:
    """Answer a paused approval gate (the same as the resume form in the Prefect UI), in about a second."""
    from flows.answer import answer_gate

    h = answer_gate(run_id, approver=approver, reject=reject, reason=reason, sign_with=str(sign) if sign else None)
    how = " (signed)" if sign else ""
    typer.echo(f"{'rejected' if reject else 'approved'} plan {h} of flow run {run_id} as {approver}{how}; "
               "the gate checks the answer and asks again if it does not count")


@app.command("confirm")
def confirm_cmd(
    run_id: str = typer.Argument(..., help="the paused flow run's id"),
    who: str = typer.Option(..., "--who", help="your handle"),
    not_rotated: bool = typer.Option(False, "--not-rotated", help="the credential could NOT be rotated (stays a to-do)"),
    note: str = typer.Option("", "--note", help="where/how (no secret values)"),
    value_from_stdin: bool = typer.Option(False, "--value-from-stdin",
                                          help="read the new credential from stdin (never echoed) and put it in the "
                                               "secret's primary store; the run copies it everywhere and probes it"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i",
                                             help="with --value-from-stdin: the inventory (default: the run's own)"),
) -> None:
    """Answer a manual-rotation pause: the credential was rotated at its source by hand (or not)."""
    from flows.answer import confirm_manual, paused_manual_target

    if value_from_stdin:
        if not_rotated:
            raise InputError("--value-from-stdin", "cannot be combined with --not-rotated")
        _store_from_stdin(run_id, who, inventory, paused_manual_target(run_id))
    target = confirm_manual(run_id, who=who, rotated=not not_rotated, note=note)
    typer.echo(f"{'not rotated' if not_rotated else 'rotated'}: {target} (flow run {run_id}, by {who})")


def _store_from_stdin(run_id: str, who: str, inventory: Optional[Path], target: tuple[str, str | None]) -> None:
    """Read the new value from stdin (a terminal: without echo) and put it in the secret's primary store."""
    import getpass

    from digestguard.inventory import load_inventory
    from tasks.rotate.stage import store_manual_value

    name, run_inventory = target
    path = inventory or (Path(run_inventory) if run_inventory else None)
    if path is None:
        raise InputError("--inventory", "the run names no inventory: pass --inventory")
    inv = load_inventory(path)
    value = getpass.getpass(f"new value of {name} (not echoed): ") if sys.stdin.isatty() else sys.stdin.read()
    value = value.rstrip("\r\n")
    out = store_manual_value(inv, name.removeprefix("secret:"), value, who)
    value = ""
    typer.echo(f"stored the new value of {name} in {out['store']}" + (f" (version {out['version']})" if out.get("version") else ""))


@app.command("report")
def report_cmd(
    incident: str = typer.Argument(...),
    out: Path = typer.Option(Path("report.html"), "--out", "-o"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i"),
    journal_path: Optional[str] = typer.Option(None, "--journal", help="a SQLite path or a postgresql:// URL"),
) -> None:
    """Write the incident's self-contained HTML report (timeline + tables) from its journal."""
    import shutil

    from digestguard.journal import Journal, is_postgres_url

    path = _journal_path(inventory, journal_path, incident)
    journal = Journal(path)
    kept = journal.saved_report(incident)  # written by the run, on whichever worker: found on both backends
    if kept is not None:
        out.write_text(kept, encoding="utf-8")
        typer.echo(f"wrote {out} (the run's report, kept in the journal)")
        return
    saved = None if is_postgres_url(path) else Path(path).parent / "reports" / f"{incident}.html"
    if saved is not None and saved.exists():
        shutil.copyfile(saved, out)
        typer.echo(f"wrote {out} (from the run's report)")
        return
    from tasks.report.from_journal import report_from_journal
    from tasks.report.html import write_report

    rep = report_from_journal(journal, incident)
    write_report(rep, out)
    typer.echo(f"wrote {out} (rebuilt from the journal)")


@app.command("serve")
def serve_cmd(port: int = typer.Option(4200, "--port"),
              inventory: Optional[Path] = typer.Option(None, "--inventory", "-i",
                                                       help="schedule watch every 5 minutes over this inventory")) -> None:
    """Start a local Prefect server with its UI and serve the incident-response, watch and drill flows."""
    from flows.serve import NotOurs, serve_all

    if inventory is not None and not inventory.is_file():
        _fail(InputError(str(inventory), "no inventory file here"))
    try:
        serve_all(port=port, inventory=str(inventory) if inventory else None)
    except NotOurs as e:
        typer.echo(f"digestguard serve: {e}", err=True)
        raise typer.Exit(2) from None


@server_app.command("status")
def server_status_cmd(as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """Where the local Prefect server is (url, pid); exit 0 when it answers, 3 when it does not run or answer."""
    from flows.local_server import server_status

    st = server_status()
    env = os.environ.get("PREFECT_API_URL")
    if env:
        st["prefect_api_url"] = env  # the commands use this one instead of the local server
    if as_json:
        _echo_json(st)
    elif st["state"] == "not running":
        typer.echo(f"local Prefect server: not running (state file {st['state_file']})")
    else:
        typer.echo(f"local Prefect server: {st['state']}: {st['url']} (pid {st['pid']})")
    if env and not as_json:
        typer.echo(f"note: PREFECT_API_URL is set ({env}): the commands use that server, not the local one", err=True)
    raise typer.Exit(0 if st["state"] == "running" else 3)


@server_app.command("stop")
def server_stop_cmd() -> None:
    """Stop the local Prefect server (SIGTERM, then SIGKILL); does nothing, exit 0, when none runs."""
    from flows.local_server import stop_server

    out = stop_server()
    if out["stopped"]:
        how = " (killed: it did not stop on SIGTERM)" if out["killed"] else ""
        typer.echo(f"stopped the local Prefect server {out['url']} (pid {out['pid']}){how}")
    else:
        typer.echo("local Prefect server: not running (nothing to stop)")


# ---------------------------------------------------------------------------------- drill
@app.command("drill")
def drill_cmd(
    advisory: str = typer.Argument("kics-2026-04", help="the advisory to re-enact"),
    auto_approve: bool = typer.Option(False, "--auto-approve",
                                      help="approve every gate as 'drill' (else: UI or `digestguard approve`)"),
    scale: int = typer.Option(1, "--scale", min=1, help="N times the repositories, jobs and secrets"),
    keep: bool = typer.Option(False, "--keep", help="keep the sandbox folder for inspection"),
    as_json: bool = typer.Option(False, "--json", help="the scorecard as one JSON object"),
) -> None:
    """Tabletop exercise: build a sandbox, run the whole playbook against it, print a scorecard (exit 0 only if all passed)."""
    from flows.drill.services import quiet_prefect_server

    quiet_prefect_server()  # before Prefect loads: its settings are read at import
    from flows.drill.flow import render_scorecard, run_drill
    card = run_drill(advisory, auto_approve=auto_approve, scale=scale, keep=keep)
    if as_json:
        _echo_json(card)
    else:
        typer.echo(render_scorecard(card))
    raise typer.Exit(0 if card["ok"] else 1)


@app.command("sandbox")
def sandbox_cmd(
    advisory: str = typer.Argument("kics-2026-04", help="the advisory whose incident the sandbox plants"),
    scale: int = typer.Option(1, "--scale", min=1, help="N times the repositories, jobs and secrets"),
    as_json: bool = typer.Option(False, "--json", help="first stdout line: one JSON object (inventory, advisory, dir)"),
) -> None:
    """Practice: build the drill's estate and keep it up until Ctrl-C / SIGTERM, then tear it all down.

    Run `digestguard respond -a ADVISORY -i INVENTORY --execute` against it and answer the gates by hand.
    """
    from flows.drill.flow import run_sandbox

    def ready(sb) -> None:
        info = {"inventory": str(sb.inventory_path), "advisory": str(sb.advisory_path), "advisory_id": sb.advisory.id,
                "dir": str(sb.root)}
        if as_json:
            typer.echo(json.dumps(info))
        else:
            typer.echo(f"sandbox up in {sb.root}\n  inventory: {sb.inventory_path}\n  advisory:  {sb.advisory_path}\n"
                       f"try: digestguard respond -a {sb.advisory_path} -i {sb.inventory_path} --execute\n"
                       "Ctrl-C tears it down")
        sys.stdout.flush()

    run_sandbox(advisory, scale=scale, on_ready=ready)


@app.command("watch")
def watch_cmd(
    inventory: Path = typer.Option(..., "--inventory", "-i", help="inventory file (images, registries, network_logs, slack)"),
    cycles: int = typer.Option(1, "--cycles", min=0, help="cycles to run (0: until interrupted)"),
    interval: float = typer.Option(300.0, "--interval", min=0, help="seconds between cycles"),
    include_repositories: bool = typer.Option(False, "--include-repositories",
                                              help="also watch tagged, unpinned references in the inventory's repositories"),
    advisories_dir: Optional[Path] = typer.Option(None, "--advisories-dir", help="advisory packs (default: the shipped ones)"),
    state: Optional[Path] = typer.Option(None, "--state",
                                         help="state file (default .digestguard/watch.sqlite next to the inventory)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object at the end (events and per-cycle counts)"),
) -> None:
    """Watch image tags for digest drift, signatures and network indicators, and CI runners' egress for new
    destinations (inventory `runners`); alert Slack; start a dry-run incident on a match.

    Exit code 1 when any cycle raised an alert, 0 when all was quiet, 2 on bad input.
    """
    from flows.watch import run, summarize

    def show(rep) -> None:
        if as_json:
            return
        for ev in rep.events:
            typer.echo(f"{ev.severity:8} {ev.kind:16} {ev.summary()}")
        for note in rep.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"{rep.finished_at:%Y-%m-%d %H:%M:%S} cycle: {rep.references} reference(s), {rep.unchanged} unchanged, "
                   f"{rep.first_seen} first seen, {len(rep.allowed)} expected update(s), {len(rep.events)} alert(s), "
                   f"{rep.alerts_pending} undelivered")

    try:
        reports = run(str(inventory), cycles=cycles, interval=interval, include_repositories=include_repositories,
                      advisories_dir=str(advisories_dir) if advisories_dir else None,
                      state_path=str(state) if state else None, on_report=show)
    except InputError as e:
        _fail(e)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if as_json:
        _echo_json(summarize(reports))
    raise typer.Exit(1 if any(r.events for r in reports) else 0)


@app.command("timeline")
def timeline_cmd(
    reference: str = typer.Argument(..., metavar="IMAGE:TAG", help="the tag, e.g. checkmarx/kics:latest"),
    inventory: Path = typer.Option(..., "--inventory", "-i", help="inventory file (its journal and registries)"),
    live: bool = typer.Option(True, "--live/--no-live", help="also ask the registry and Docker Hub now (and store it)"),
    max_gap: float = typer.Option(15.0, "--max-gap", min=0.1,
                                  help="minutes: sightings further apart leave a hole (the tag may have moved and back)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object: the intervals and the notes"),
) -> None:
    """Which digest a watched tag served over time, from the watch's history, the registry, Docker Hub and CI pulls.

    Unknown stretches (holes) are printed as such. Exit 0 when every source asked answered, 3 when one did not
    (or nothing is known of the tag), 2 on bad input.
    """
    from datetime import timedelta

    from digestguard.inventory import load_inventory
    from digestguard.timeutil import fmt_utc
    from tasks.watch.timeline import current_timeline

    try:
        tl, notes = current_timeline(load_inventory(inventory), reference, live=live, max_gap=timedelta(minutes=max_gap))
    except InputError as e:
        _fail(e)
    incomplete = bool(notes) or not any(iv.known for iv in tl.intervals)
    if as_json:
        _echo_json({**tl.model_dump(mode="json"), "source_errors": notes, "complete": not incomplete})
    else:
        typer.echo(f"{tl.reference}  (holes where sightings are more than {max_gap:g} min apart; as of {fmt_utc(tl.as_of)})")
        if not tl.intervals:
            typer.echo("no evidence about this tag yet: unknown at every time")
        for iv in tl.intervals:
            what = iv.digest or f"UNKNOWN ({iv.reason})"
            typer.echo(f"{fmt_utc(iv.start)} .. {fmt_utc(iv.end)}  {what}")
            if iv.digest:
                typer.echo(f"    from: {iv.start_source}; to: {iv.end_source}; evidence: {'; '.join(iv.sources)}")
        for n in tl.notes:
            typer.echo(f"note: {n}")
        for n in notes:
            typer.echo(f"not answered: {n}", err=True)
    raise typer.Exit(3 if incomplete else 0)


# ---------------------------------------------------------------------------------- egress baselines
def _egress(mode: str, inventory: Path, journal_path: Optional[str], as_json: bool) -> None:
    from digestguard.inventory import load_inventory
    from digestguard.journal import LeaseHeld
    from tasks.egress.check import check_egress, journal_for

    inv = load_inventory(inventory)
    journal = journal_for(inv, journal_path)
    try:
        rep = check_egress(inv, journal, mode=mode, inventory_path=str(inventory.resolve()))
    except LeaseHeld as e:  # another check kept the baseline busy past the wait: no answer this time
        _fail(e, 3)
    finally:
        journal.close()
    _coverage_first(rep.coverage)
    if as_json:
        _echo_json(rep.to_json_dict())
    else:
        for ev in rep.events:
            typer.echo(f"{ev.severity:8} {ev.summary()}")
            typer.echo(f"         first connection: {ev.source}:{ev.line} from {ev.client}"
                       + (f" (host {ev.runner_host})" if ev.runner_host else " (address range)"))
            if ev.job:
                typer.echo(f"         job: {ev.job}" + (f" workflow {ev.workflow}" if ev.workflow else "")
                           + (f" {ev.job_url}" if ev.job_url else ""))
            else:
                typer.echo(f"         job: unknown ({ev.candidate_jobs} job(s) of the group running then)")
            for img in ev.images:
                typer.echo(f"         image used before: {img}")
            for act in ev.actions:
                typer.echo(f"         action used before: {act}")
            typer.echo(f"         destination {'YOUNG' if ev.young else 'not young'} (first seen in the estate "
                       f"{ev.estate_first_seen.isoformat() if ev.estate_first_seen else '?'}), "
                       f"{'RARE' if ev.rare else 'common'} ({ev.groups_seen} group(s))")
            typer.echo(f"         dry run: {ev.dry_run_command}" if ev.dry_run_command else f"         {ev.draft_error}")
        for note in rep.notes:
            typer.echo(f"note: {note}", err=True)
        for g, until in sorted(rep.learning.items()):
            typer.echo(f"note: runner group {g} is learning until {until}", err=True)
        typer.echo(f"{mode}: {rep.lines} line(s) in {len(rep.files)} file(s), {rep.malformed} malformed, "
                   f"{rep.connections} connection(s), {rep.attributed} from runners, {rep.learned} destination(s) "
                   f"learnt, {rep.allowed} allowed, {len(rep.suppressed)} suppressed, {len(rep.events)} new")
    _verdict_exit(rep.verdict)


@egress_app.command("check")
def egress_check_cmd(
    inventory: Path = typer.Option(..., "--inventory", "-i", help="inventory (runners, network_logs, ci_logs, egress)"),
    journal_path: Optional[str] = typer.Option(None, "--journal", help="journal (default: the inventory's)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Read what the network logs gained; flag each runner group's first connection to a new destination.

    Exit 0 clean and complete, 1 a new destination, 2 bad input, 3 a source could not be read.
    """
    _egress("check", inventory, journal_path, as_json)


@egress_app.command("learn")
def egress_learn_cmd(
    inventory: Path = typer.Option(..., "--inventory", "-i"),
    journal_path: Optional[str] = typer.Option(None, "--journal", help="journal (default: the inventory's)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """Take every destination in the logs read now as normal (seed a baseline from history). Exit 0, 2 or 3."""
    _egress("learn", inventory, journal_path, as_json)


@egress_app.command("alerts")
def egress_alerts_cmd(
    inventory: Path = typer.Option(..., "--inventory", "-i"),
    journal_path: Optional[str] = typer.Option(None, "--journal", help="journal (default: the inventory's)"),
) -> None:
    """Every new-destination alert raised so far (JSON)."""
    from digestguard.inventory import load_inventory
    from tasks.egress.baseline import BaselineStore
    from tasks.egress.check import journal_for

    inv = load_inventory(inventory)
    journal = journal_for(inv, journal_path)
    try:
        _echo_json(BaselineStore(journal).alerts())
    finally:
        journal.close()


def main() -> None:
    """Console entry point: typed errors become one clear line and exit code 2; any other exception one line
    naming the command, exit code 3 (no complete answer), with the traceback only under ``--debug``."""
    install_redaction()
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    try:
        check_own_packages()
        app()
    except DigestguardError as e:
        typer.echo(f"error: {redact(str(e))}", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - anything unexpected: one clear line, the traceback only under --debug
        if debug:
            traceback.print_exc()
        doing = " ".join(a for a in sys.argv[1:2]) or "digestguard"
        typer.echo(redact(f"error: unexpected {type(e).__name__} while running `digestguard {doing}`: {str(e)[:300]}; "
                          "the answer is incomplete" + ("" if debug else " (run again with --debug for the traceback)")),
                   err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
