"""Pin pull requests: one branch, one commit, one pull (merge) request per repository.

The pin stage plans edits on the checkout (``tasks.pin``); this module carries
them to the forge. The branch is rebuilt from the remote base every time
(``integrations.git.commit_and_push``) and the pull request is looked up by its
head branch before one is opened, so a re-run updates the same branch and the
same pull request instead of opening another. Nothing is ever merged.
"""

from __future__ import annotations

import contextlib

from digestguard.advisory import Advisory
from digestguard.errors import DigestguardError, RateLimited
from digestguard.findings import ActionOutcome
from digestguard.inventory import Inventory, Repository
from digestguard.journal import Journal
from digestguard.markdown import md_cell, md_code, md_table
from digestguard.reference import public_mirror
from integrations import git
from integrations.github import open_or_update_pull_request
from integrations.gitlab import open_or_update_merge_request
from tasks.connect import Connections, forge_client

STAGE = "pin"


def branch_name(incident: str) -> str:
    """The head branch for an incident's pin pull requests (stable across re-runs)."""
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in incident)
    return f"digestguard/pin-{safe}"


def pull_request_body(plan, advisory: Advisory, incident: str) -> str:
    """Why, what, and where: the incident, each change with file and line, and the advisory's references."""
    refs = [r.value for r in advisory.references if r.kind in ("url", "ghsa", "cve")]
    lines = [
        f"## Pin {md_cell(', '.join(i.repository for i in advisory.images))} to known-good digests",
        "",
        f"Incident `{md_code(incident)}`: {md_cell(advisory.title)}.",
        "Tags are mutable and were overwritten in this attack; a digest names exactly one image. "
        "This change adds the digest that decides what is pulled and keeps the tag for readers, except where a tag "
        "the attacker wrote is replaced (see below).",
        "",
    ]
    rows = [{"file": c.path, "line": c.line, "before": c.before, "after": c.after} for c in plan.changes]
    lines += md_table(rows, len(rows), code=("file", "before", "after"))
    lines += _tag_changes(plan, advisory)
    lines += _mirrors(plan)
    if plan.needs_decision:
        lines += ["", "### Needs a decision (not changed)"]
        lines += [f"- `{md_code(d.path)}`:{d.line or '-'} `{md_code(d.reference)}`: {md_cell(d.reason)}"
                  + (f" Suggested: `{md_code(d.suggestion)}`." if d.suggestion else "") for d in plan.needs_decision]
    if refs:  # the advisory pack's references: outside text like any other, shown (URLs defanged), never linked
        lines += ["", "### Advisory", *[f"- {md_cell(r)}" for r in refs]]
    lines += ["", "_Opened by digestguard. Review and merge by hand; nothing is merged automatically._"]
    return "\n".join(lines)


def _tag_changes(plan, advisory: Advisory) -> list[str]:
    """Why a tag itself changes: the attacker wrote it and no clean image of it exists; where the digest comes from."""
    changed: dict[tuple[str, str, str], None] = {}
    for c in plan.changes:
        if c.tag_changed_from and c.tag:
            changed.setdefault((c.target, c.tag_changed_from, c.tag), None)
    if not changed:
        return []
    out = ["", "### The tag itself changes",
           "A tag the attacker created or overwrote has no clean image of its own: pinning it to the digest it shows "
           "now would pin the attack, and no earlier digest of it is safe. These references move to the last clean "
           "release instead, so the version you run changes; check it still does what you need before merging."]
    told: set[tuple[str, str]] = set()
    for target, old, new in changed:
        img = next((i for i in advisory.images if i.repository == target), None)
        how = "created" if img and old in img.tags_created and old not in img.tags_overwritten else "overwritten"
        out.append(f"- `{md_cell(target)}`: `{md_cell(old)}` → `{md_cell(new)}`: `{md_cell(old)}` was {how} by the "
                   f"attacker ({md_cell(advisory.id)}).")
    for target, old, new in changed:
        img = next((i for i in advisory.images if i.repository == target), None)
        kg = img.known_good_for(old) if img else None
        if kg is None or (target, new) in told:
            continue
        told.add((target, new))
        where = f" at `{md_cell(kg.repository)}`" if kg.repository else ""
        out += ["", f"Why `{md_cell(new)}` at `{md_cell(kg.digest)}`: it was established{where} by: {md_cell(kg.method)}",
                f"Source: {md_cell(kg.source)}." + (f" Note: {md_cell(kg.note)}" if kg.note else "")]
    return out


def _mirrors(plan) -> list[str]:
    """References through a public Docker Hub mirror: which form the pin keeps, and what nobody here can fix."""
    hosts = sorted({c.mirror for c in [*plan.changes, *plan.needs_decision] if getattr(c, "mirror", None)})
    if not hosts:
        return []
    out = ["", "### Pulled through a public mirror"]
    for host in hosts:
        pm = public_mirror(host)
        operator = f" ({md_cell(pm.operator)})" if pm else ""
        out.append(f"- `{md_cell(host)}`{operator} copies Docker Hub and can keep serving the attacker's image after "
                   "Docker Hub is fixed (it still served trivy 0.69.6 on 2026-03-25); nobody in this estate can purge it.")
    out.append("The pin keeps the mirror in the name as the file wrote it: a digest fixes the content, so the mirror "
               "can serve exactly that image or fail the pull, never a stale tag. Whether to keep pulling through the "
               "mirror, or switch to the canonical name, is the owner's decision (the incident report lists it).")
    return out


def open_pin_pull_request(repo: Repository, plan, advisory: Advisory, incident: str, inventory: Inventory,
                          journal: Journal, *, rendered: dict[str, bytes], connections: Connections | None = None) -> ActionOutcome:
    """Push the rendered files on the incident's branch and open or update its pull request (journaled).

    ``connections``: the run's pool, so every pull request of a run goes through one client per forge
    (one HTTP connection pool, one TLS context, one write budget); without it a client is built for this call.
    A forge that throttles us (or a spent client-side budget) is reported as a failed, ``throttled`` target."""
    target = repo.name
    if not rendered:
        return ActionOutcome(stage=STAGE, target=target, action="pull-request", outcome="skipped",
                             detail={"reason": "nothing to change"})
    checkout = inventory.resolve_path(repo.path)
    branch = branch_name(incident)
    title = f"Pin {', '.join(i.repository.split('/', 1)[1] for i in advisory.images)} to digests ({advisory.id})"
    body = pull_request_body(plan, advisory, incident)
    try:
        with journal.step(incident, STAGE, target, "pull-request") as rec:
            remote = repo.remote or "origin"
            base = repo.base_branch or _default_branch(repo, inventory, connections) or "main"
            before = git.current_branch(checkout) or git.head_sha(checkout)
            try:
                update = git.commit_and_push(checkout, branch=branch, base=base, files=rendered, remote=remote,
                                             message=f"Pin image references to digests ({advisory.id}, incident {incident})")
            finally:  # leave the working tree on the branch it was on; the pins live on the pushed branch
                if before and before != branch:
                    git.checkout(checkout, before)
            rec.note(branch=branch, base=base, commit=update.commit, pushed=update.pushed)
            if update.commit is None:
                rec.skipped(reason="the base already has these pins")
                return ActionOutcome(stage=STAGE, target=target, action="pull-request", outcome="skipped",
                                     detail={"reason": "the base already has these pins"})
            if repo.kind == "local":
                return ActionOutcome(stage=STAGE, target=target, action="pull-request", outcome="done",
                                     detail={"branch": branch, "commit": update.commit, "url": None})
            pr = _open(repo, inventory, branch, base, title, body, connections)
            rec.note(url=pr["url"], number=pr["number"])
    except RateLimited as e:
        return ActionOutcome(stage=STAGE, target=target, action="pull-request", outcome="failed", error=str(e),
                             detail={"throttled": True, "retry_after": e.retry_after, "branch": branch})
    except DigestguardError as e:
        return ActionOutcome(stage=STAGE, target=target, action="pull-request", outcome="failed", error=str(e))
    return ActionOutcome(stage=STAGE, target=target, action="pull-request", outcome="done",
                         detail={"branch": branch, "commit": update.commit, "url": pr["url"], "number": pr["number"],
                                 "changes": len(plan.changes)})


@contextlib.contextmanager
def _client(repo: Repository, inventory: Inventory, connections: Connections | None):
    """The forge client for ``repo``: the run's shared one (left open), or one built and closed for this call."""
    source = f"repository {repo.name}"
    if connections is not None:
        yield connections.forge(repo.kind, source=source, token=repo.token, api_url=repo.api_url)
        return
    with forge_client(repo.kind, inventory.backends, source=source, token=repo.token, api_url=repo.api_url) as forge:
        yield forge


def _open(repo: Repository, inventory: Inventory, branch: str, base: str | None, title: str, body: str,
          connections: Connections | None = None) -> dict:
    """Open or update the pull (merge) request; ``base`` None means the forge's default branch."""
    with _client(repo, inventory, connections) as forge:
        if repo.kind == "github":
            owner, name = repo.name.split("/", 1)
            pr = open_or_update_pull_request(forge, owner, name, head=branch, base=base, title=title, body=body)
        else:
            pr = open_or_update_merge_request(forge, repo.name, head=branch, base=base, title=title, body=body)
    return {"url": pr.html_url, "number": pr.number}


def _default_branch(repo: Repository, inventory: Inventory, connections: Connections | None = None) -> str | None:
    """The forge's default branch (the pull request's base when the inventory names none)."""
    if repo.kind == "local":
        return None
    try:
        with _client(repo, inventory, connections) as forge:
            if repo.kind == "github":
                owner, name = repo.name.split("/", 1)
                return forge.default_branch(owner, name)
            return forge.default_branch(repo.name)
    except DigestguardError:
        return None
