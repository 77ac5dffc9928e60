"""Plans and approvals: the contract between a person and a destructive step.

A plan is data: items, a Markdown rendering for the approval form, and a hash
of its canonical JSON. An apply function takes ``(plan, approval)`` and
refuses when the approval's hash is not the plan's, so what runs is exactly
what was shown: a plan that changed since it was approved must be approved again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from digestguard.errors import PlanNotApproved
from digestguard.markdown import md_cell, md_code


class PlanItem(BaseModel):
    """One thing a destructive stage will do."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="where: registry/repo@digest, engine/image, vault:path ...")
    action: str = Field(description="what: delete-manifest, remove-image, rotate-kv ...")
    kind: str = Field(description="which integration acts")
    reason: str = ""
    params: dict[str, Any] = Field(default_factory=dict, description="ids only, never values")


class Plan(BaseModel):
    """A stage's plan. ``hash`` covers stage, incident and items, not the free-text notes."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["rotate", "purge", "pin"]
    incident: str
    advisory: str
    items: list[PlanItem] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list, description="why: the findings/jobs behind the plan")
    notes: list[str] = Field(default_factory=list)

    def canonical_json(self) -> str:
        body = {"stage": self.stage, "incident": self.incident, "advisory": self.advisory,
                "items": [i.model_dump(mode="json") for i in self.items]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[7:19]

    def markdown(self, limit: int = 50) -> str:
        """What the approver reads: a per-system summary, a narrow table, then each item in full (where it lives,
        its copies and consumers, why), the evidence, and the hash. Nothing long sits in a table cell, so the
        Prefect UI's form never cuts it."""
        lines = [f"### {md_cell(self.stage.capitalize())} plan for incident `{md_code(self.incident)}` "
                 f"({md_cell(self.advisory)})", "",
                 f"{len(self.items)} action(s). Plan hash `{self.hash}`.", ""]
        if not self.items:
            lines.append("_Nothing to do._")
        else:
            by_system: dict[str, Counter[str]] = {}
            for it in self.items:
                by_system.setdefault(item_system(it), Counter())[it.action] += 1
            lines += ["**By system**", *[f"- {md_cell(sys_)}: " + ", ".join(f"{n} {md_cell(a)}" for a, n in c.most_common())
                                         for sys_, c in by_system.items()], ""]
            lines += ["| # | action | system | target |", "|---|---|---|---|"]
            for n, it in enumerate(self.items[:limit], 1):
                lines.append(f"| {n} | {md_cell(it.action)} | {md_cell(_narrow(item_system(it), 40))} | "
                             f"`{md_code(_narrow(_short(it.target), 48))}` |")
            if len(self.items) > limit:
                lines.append(f"| ... | | | {len(self.items) - limit} more |")
            lines += ["", "**Each item**", ""]
            for n, it in enumerate(self.items[:limit], 1):
                lines.append(f"{n}. **{md_cell(it.action)}** `{md_code(it.target)}`")
                lines += [f"   - {label}: {md_cell(text)}" for label, text in item_details(it)]
        if self.evidence:
            lines += ["", "**Evidence**", *[f"- {md_cell(e)}" for e in self.evidence[:limit]]]
        if self.notes:
            lines += ["", "**Notes**", *[f"- {md_cell(n)}" for n in self.notes]]
        return "\n".join(lines)


_DIGEST = re.compile(r"sha256:([0-9a-f]{12})[0-9a-f]{52}")


def _short(target: str) -> str:
    """A target with its digests cut to 12 hex (the full target is listed under the table)."""
    return _DIGEST.sub(lambda m: f"sha256:{m.group(1)}…", target)


def _narrow(text: str, width: int) -> str:
    """A table cell at most ``width`` characters (the full text is under the table)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def item_system(item: PlanItem) -> str:
    """The system an item acts on: registry host, engine, or secret backend (with its account, mount or project)."""
    p = item.params
    if p.get("system"):
        return str(p["system"])
    for key in ("registry", "engine", "cluster"):
        if p.get(key):
            return f"{item.kind} {p[key]}"
    ref = p.get("ref") if isinstance(p.get("ref"), dict) else {}
    account = next((str(ref[k]) for k in ("account", "mount", "vault", "project", "region") if ref.get(k)), "")
    return f"{p.get('backend') or item.kind}{' ' + account if account else ''}"


def item_details(item: PlanItem) -> list[tuple[str, str]]:
    """``(label, text)`` lines under an item: where it is (system, account/mount/project, the exact id), where
    copies live, who uses it, and why. Ids and names only: plans never hold values."""
    p, out = item.params, []
    if p.get("where"):
        out.append(("where", str(p["where"])))
    elif p.get("registry") and p.get("repository"):
        out.append(("where", f"registry {p['registry']}, repository {p['repository']}"
                             + (f", digest {p['digest']}" if p.get("digest") else "")))
    elif p.get("engine"):
        out.append(("where", f"engine {p['engine']}" + (f", image id {p['image_id']}" if p.get("image_id") else "")
                             + (f" (digest {p['digest']})" if p.get("digest") else "")))
    elif p.get("cluster"):
        out.append(("where", f"cluster {p['cluster']}, namespace {p.get('namespace') or '?'}, pod {p.get('pod') or '?'}"
                             + (f", workload {p['workload']}" if p.get("workload") else "")
                             + (f", node {p['node']}" if p.get("node") else "")))
    elif isinstance(p.get("ref"), dict) and p["ref"]:
        out.append(("where", f"{p.get('backend') or item.kind}: " + ", ".join(f"{k} {v}" for k, v in p["ref"].items())))
    if p.get("issued_by"):
        out.append(("issued by", str(p["issued_by"])))
    if "copies" in p or "used_by" in p:
        out.append(("copies", "; ".join(map(str, p.get("copies") or [])) or "none besides the one above"))
        out.append(("consumers", "; ".join(map(str, p.get("used_by") or [])) or "none listed in the inventory"))
    else:
        consumers = [str(c.get("id") or c.get("kind")) for c in p.get("consumers") or [] if isinstance(c, dict)]
        if consumers:
            out.append(("copies held by", ", ".join(consumers)))
    if p.get("exposed_by"):
        jobs = [str(j) for j in p["exposed_by"]]
        out.append(("exposed by", ", ".join(jobs[:10]) + (f" and {len(jobs) - 10} more" if len(jobs) > 10 else "")))
    out.append(("why", item.reason or item.action))
    return out


class Approval(BaseModel):
    """A person's decision on one plan, bound to that plan's hash."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    approvers: list[str] = Field(min_length=1)
    reason: str = ""
    plan_hash: str
    at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    flow_run_id: str | None = None
    identities: list[dict[str, str]] = Field(
        default_factory=list, description="per approver: name, via (prefect-ui, ssh, slack, drill), verified yes/no")
    expired: bool = Field(False, description="no acceptable decision came before the gate's timeout")

    @property
    def approved(self) -> bool:
        return self.decision == "approve"


def require_approved(plan: Plan, approval: Approval | None) -> Approval:
    """The gate every apply function passes: an approval for *this* plan, or ``PlanNotApproved``."""
    if approval is None:
        raise PlanNotApproved(f"{plan.stage} plan {plan.short_hash} has no approval")
    if not approval.approved:
        raise PlanNotApproved(f"{plan.stage} plan {plan.short_hash} was rejected by {', '.join(approval.approvers)}")
    if approval.plan_hash != plan.hash:
        raise PlanNotApproved(
            f"{plan.stage} plan changed since it was approved (approved {approval.plan_hash[7:19]}, now {plan.short_hash}); approve it again"
        )
    return approval
