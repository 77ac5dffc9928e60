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
from digestguard.markdown import md_table
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
        f"## Pin {', '.join(i.repository for i in advisory.images)} to known-good digests",
        "",
        f"Incident `{incident}`: {advisory.title}.",
        "Tags are mutable and were overwritten in this attack; a digest names exactly one image. "
        "This change keeps the tag for readers and adds the digest that decides what is pulled.",
        "",
    ]
    rows = [{"file": f"`{c.path}`", "line": c.line, "before": f"`{c.before}`", "after": f"`{c.after}`"} for c in plan.changes]
    lines += md_table(rows, len(rows))
    if plan.needs_decision:
        lines += ["", "### Needs a decision (not changed)"]
        lines += [f"- `{d.path}`:{d.line or '-'} `{d.reference}`: {d.reason}" for d in plan.needs_decision]
    if refs:
        lines += ["", "### Advisory", *[f"- {r}" for r in refs]]
    lines += ["", "_Opened by digestguard. Review and merge by hand; nothing is merged automatically._"]
    return "\n".join(lines)


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
