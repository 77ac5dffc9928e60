"""Egress baselines, the domain part: which CI runners exist, what they may reach, and what a destination is.

Why: the guide's step 6 ("log outbound connections from CI runners and flag new
or unexpected destinations") is how the 2025 tj-actions compromise was caught:
a job called an endpoint it had never called before. The watch could only
match destinations an advisory already names; this module describes what the
egress baseline (``tasks/egress/``) needs from the inventory to do better:

* :class:`RunnerGroup`: a group of CI runners, by host (name as CI logs print it,
  and its address) and by address ranges (ephemeral runners), with its own
  allow-list;
* :class:`EgressSettings`: the learning period, what counts as young or rare,
  suppressions (a known noisy destination muted, with a reason and an end);
* :func:`destination_key`: the registrable domain (public-suffix aware, ICANN
  section of the Public Suffix List bundled with ``publicsuffixlist``, never
  fetched) so ``d1234.cloudfront.net`` and ``d5678.cloudfront.net`` are one
  destination; addresses stay themselves.

Pure data and pure functions; the only file read is the Public Suffix List that ``publicsuffixlist`` bundles.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_HOST_RE = re.compile(r"^(?:[a-z0-9_*](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}\.?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _blank(v: str, what: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError(f"{what} must not be blank")
    return v


def normalise_destination(value: str) -> str:
    """A rule's destination: an address, a CIDR, a host name or ``*.domain`` (lowercase, no final dot)."""
    v = value.strip().lower().rstrip(".")
    if not v:
        raise ValueError("destination must not be blank")
    try:
        return str(ipaddress.ip_network(v, strict=False)) if "/" in v else str(ipaddress.ip_address(v))
    except ValueError:
        pass
    if not _HOST_RE.match(v) or ("*" in v and not v.startswith("*.")) or v.count("*") > 1:
        raise ValueError(f"{value!r} is not an address, a CIDR, a host name or *.domain")
    return v


class EgressRule(_Model):
    """An allowed or suppressed destination, always with the reason a person gave."""

    destination: str = Field(description="address, CIDR, host name (covers its subdomains) or *.domain")
    reason: str = Field(description="why: who decided, which ticket")
    groups: list[str] = Field(default_factory=list, description="runner groups it applies to (empty: all)")
    until: datetime | None = Field(None, description="suppressions: muted until then (UTC), alerting again after")

    @field_validator("destination")
    @classmethod
    def _dest(cls, v: str) -> str:
        return normalise_destination(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _blank(v, "reason")

    @field_validator("until")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=timezone.utc) if v is not None and v.tzinfo is None else v

    def applies(self, group: str, host: str, at: datetime | None = None) -> bool:
        """True when this rule covers ``host`` (a name or an address) for ``group`` at ``at``."""
        if self.groups and group not in self.groups:
            return False
        if self.until is not None and at is not None and at > self.until:
            return False
        return destination_matches(self.destination, host)


class RunnerHost(_Model):
    """One runner machine: its name as the CI logs print it (``Runner name``/``Machine name``) and its address."""

    name: str = Field(description="machine or runner name as the job log prints it")
    address: str | None = Field(None, description="the address its connections come from (IPv4 or IPv6)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _blank(v, "name")

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(ipaddress.ip_address(v.strip()))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None


class RunnerGroup(_Model):
    """CI runners that do the same work and so should reach the same places."""

    name: str
    hosts: list[RunnerHost] = Field(default_factory=list)
    cidrs: list[str] = Field(default_factory=list, description="address ranges of its (ephemeral) runners")
    runner_names: list[str] = Field(default_factory=list, description="glob patterns of runner names its jobs print "
                                                                      "(ephemeral runners without a fixed host)")
    allow: list[EgressRule] = Field(default_factory=list, description="destinations this group may always reach")
    learning_days: float | None = Field(None, gt=0, description="override of egress.learning_days for this group")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _blank(v, "name")

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for c in v:
            try:
                out.append(str(ipaddress.ip_network(c.strip(), strict=True)))
            except ValueError as e:
                raise ValueError(f"{c!r} is not an address range ({e})") from None
        return out

    def names_job_runner(self, runner: str | None) -> bool:
        """True when a job log's runner/machine name belongs to this group (a host's name or a pattern)."""
        if not runner:
            return False
        r = runner.strip().lower()
        return any(h.name.lower() == r for h in self.hosts) or any(fnmatch.fnmatchcase(r, p.lower()) for p in self.runner_names)


class EgressSettings(_Model):
    """How the baseline learns and judges (inventory ``egress:``)."""

    learning_days: float = Field(7.0, gt=0, description="days from a group's first connection during which it only learns")
    young_days: float = Field(7.0, ge=0, description="a destination first seen anywhere in the estate this recently is young")
    rare_groups: int = Field(1, ge=1, description="a destination seen by at most this many groups is rare")
    sources: list[str] = Field(default_factory=list, description="network_logs names to read (empty: every file source)")
    allow: list[EgressRule] = Field(default_factory=list, description="destinations every group (or the rule's groups) "
                                                                      "may reach")
    suppress: list[EgressRule] = Field(default_factory=list, description="destinations whose alerts are muted (with a "
                                                                         "reason, optionally until a time)")


def check_runner_groups(groups: list[RunnerGroup], settings: EgressSettings, log_names: list[str]) -> list[str]:
    """Problems across groups (one line each): duplicate names, a host or address in two groups, unknown references."""
    problems: list[str] = []
    names = [g.name for g in groups]
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"runners: duplicate group name {n!r}")
    seen_host: dict[str, str] = {}
    seen_addr: dict[str, str] = {}
    for i, g in enumerate(groups):
        for j, h in enumerate(g.hosts):
            key = h.name.lower()
            if key in seen_host and seen_host[key] != g.name:
                problems.append(f"runners.{i}.hosts.{j}.name: {h.name!r} is already a host of group {seen_host[key]!r}")
            seen_host.setdefault(key, g.name)
            if h.address:
                if h.address in seen_addr and seen_addr[h.address] != g.name:
                    problems.append(f"runners.{i}.hosts.{j}.address: {h.address} is already a host of group "
                                    f"{seen_addr[h.address]!r}")
                seen_addr.setdefault(h.address, g.name)
        if not g.hosts and not g.cidrs:
            problems.append(f"runners.{i}: group {g.name!r} needs hosts or cidrs (nothing could be attributed to it)")
    known = set(names)
    for where, rules in [("egress.allow", settings.allow), ("egress.suppress", settings.suppress)] + \
            [(f"runners.{i}.allow", g.allow) for i, g in enumerate(groups)]:
        for k, r in enumerate(rules):
            for gname in r.groups:
                if gname not in known:
                    problems.append(f"{where}.{k}.groups: {gname!r} is not a runner group")
    for k, s in enumerate(settings.sources):
        if s not in log_names:
            problems.append(f"egress.sources.{k}: {s!r} is not a network_logs name")
    return problems


# ---------------------------------------------------------------- destinations


@lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList  # deferred: parsing the bundled list takes ~50 ms

    return PublicSuffixList(only_icann=True)


def clean_host(raw: str | None) -> str | None:
    """A host as logs write it (``HOST:443``, ``[v6]:443``, ``http://HOST/path``, ``HOST.``) -> lowercase name or address."""
    if not raw:
        return None
    v = raw.lower()
    if ":" in v or "/" in v or "@" in v or "[" in v or " " in v:
        v = v.strip()
        if "://" in v:
            v = v.split("://", 1)[1]
        v = v.split("/", 1)[0].split("?", 1)[0]
        if "@" in v:
            v = v.rsplit("@", 1)[1]
        if v.startswith("["):
            v = v[1:].split("]", 1)[0]
        elif v.count(":") == 1:
            v = v.split(":", 1)[0]
    v = v.rstrip(".")
    if not v or v == "-":
        return None
    return v


_REGISTRABLE: dict[str, str | None] = {}
"""name -> its registrable domain (None: the name is itself a public suffix). Bounded: cleared past _CACHE_MAX."""
_CACHE_MAX = 500_000


def _registrable(host: str) -> str | None:
    try:
        return _REGISTRABLE[host]
    except KeyError:
        pass
    # a CDN hands out a fresh subdomain per lookup: the nearest known parent answers without the PSL walk
    dot = host.find(".")
    while dot > 0:
        parent = host[dot + 1:]
        known = _REGISTRABLE.get(parent, "")
        if known:
            return known
        dot = host.find(".", dot + 1)
    found = _psl().privatesuffix(host)
    if len(_REGISTRABLE) > _CACHE_MAX:
        _REGISTRABLE.clear()
    _REGISTRABLE[host] = found
    if found:
        _REGISTRABLE[found] = found
    return found


def destination_key(host: str) -> str:
    """The destination a baseline compares: an address as itself, a name as its registrable domain.

    ``d1234.cloudfront.net`` -> ``cloudfront.net``; ``files.pythonhosted.org`` -> ``pythonhosted.org``;
    ``a.b.example.co.uk`` -> ``example.co.uk`` (the ICANN section of the Public Suffix List: a CDN's customer
    subdomains group under the CDN). A name that is itself a public suffix, or a single label
    (``localhost``, ``metadata``), stays as it is.
    """
    if host[-1:].isdigit() or ":" in host:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
    if "." not in host:
        return host
    return _registrable(host) or host


def destination_matches(rule: str, host: str) -> bool:
    """Does a rule's destination cover ``host``? A name covers itself and its subdomains; ``*.d`` only the subdomains;
    a CIDR covers its addresses."""
    if "/" in rule:
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(rule)
        except ValueError:
            return False
    if rule.startswith("*."):
        return host.endswith(rule[1:])
    return host == rule or host.endswith("." + rule)
