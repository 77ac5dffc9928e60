"""Who made a connection: the runner group (by host address, host name or address range) and the job running then.

A connection's source is an address (Zeek, Route 53, most Squid setups) or a
host name (Squid with ``log_fqdn``). :class:`Attributor` maps it to the runner
group the inventory names: an exact host first, then the most specific range.

:class:`JobIndex` holds the CI jobs (``digestguard.cilog.JobLog``: start, end,
runner and machine names, images pulled, actions downloaded). A connection
from a host at time t belongs to the job that ran on that host at t (the log
names the machine). For a range of ephemeral runners, where no log names an
address, the job is attributed only when exactly one job of that group ran at
t; otherwise the alert says how many could have made it.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from digestguard.cilog import JobLog
from digestguard.egress import RunnerGroup


@dataclass(frozen=True)
class Origin:
    """Where a connection came from: its group and, when the inventory names it, the host."""

    group: str
    host: str | None = None  # the runner host's name (inventory)
    by: str = "host"  # host | cidr


class Attributor:
    """Source address or name -> :class:`Origin` (``None``: not a CI runner), cached per source."""

    def __init__(self, groups: list[RunnerGroup]) -> None:
        self.by_addr: dict[str, Origin] = {}
        self.by_name: dict[str, Origin] = {}
        nets: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for g in groups:
            for h in g.hosts:
                self.by_name[h.name.lower()] = Origin(g.name, h.name, "host")
                if h.address:
                    self.by_addr[h.address] = Origin(g.name, h.name, "host")
            for c in g.cidrs:
                net = ipaddress.ip_network(c)
                nets.append((net.prefixlen, net, g.name))
        self.nets = sorted(nets, key=lambda x: -x[0])  # most specific first
        self.origin = lru_cache(maxsize=65536)(self._origin)

    def _origin(self, source: str) -> Origin | None:
        hit = self.by_addr.get(source)
        if hit:
            return hit
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return self.by_name.get(source.lower()) or self.by_name.get(source.lower().split(".", 1)[0])
        for _, net, group in self.nets:
            if addr.version == net.version and addr in net:
                return Origin(group, None, "cidr")
        return None


@dataclass
class JobContext:
    """The job a connection is attributed to, and what it used just before the connection."""

    job: str
    source: str
    workflow: str | None = None
    repository: str | None = None
    url: str | None = None
    runner: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    images: list[str] = field(default_factory=list)  # reference (@digest when the log shows one), before the connection
    actions: list[str] = field(default_factory=list)  # owner/name@ref (sha), before the connection
    digests: list[str] = field(default_factory=list)


@dataclass
class Attribution:
    """The job (or why none): ``candidates`` is how many jobs of the group were running."""

    job: JobContext | None
    candidates: int


def context_at(log: JobLog, at: datetime) -> JobContext:
    """What ``log``'s job had pulled and downloaded up to ``at``."""
    images: list[str] = []
    digests: list[str] = []
    for p in log.pulls:
        if p.at is not None and p.at > at:
            continue
        name = p.reference or p.name
        if not name:
            continue
        text = f"{name}@{p.digest}" if p.digest and "@" not in name else name
        if text not in images:
            images.append(text)
        if p.digest and p.name and (p.name, p.digest) not in digests:
            digests.append((p.name, p.digest))  # type: ignore[arg-type]
    actions = [f"{a.action}" + (f" ({a.sha})" if a.sha else "") for a in log.actions if a.at is None or a.at <= at]
    return JobContext(job=log.job, source=log.source, workflow=log.workflow, repository=log.repository, url=log.url,
                      runner=log.machine or log.runner, started_at=log.started_at, ended_at=log.ended_at,
                      images=images, actions=actions, digests=digests)  # type: ignore[arg-type]


class JobIndex:
    """CI jobs by runner group and host, as time intervals."""

    def __init__(self, jobs: list[JobLog], groups: list[RunnerGroup]) -> None:
        self.by_host: dict[str, list[tuple[float, float, JobLog]]] = {}
        self.by_group: dict[str, list[tuple[float, float, JobLog]]] = {}
        self.unplaced: list[str] = []
        host_group = {h.name.lower(): g.name for g in groups for h in g.hosts}
        for log in jobs:
            if log.started_at is None:
                continue
            end = (log.ended_at or log.started_at).timestamp()
            span = (log.started_at.timestamp(), end, log)
            names = list(dict.fromkeys(n for n in (log.machine, log.runner) if n))
            group = next((host_group[n.lower()] for n in names if n.lower() in host_group), None)
            if group is None:
                group = next((g.name for g in groups for n in names if g.names_job_runner(n)), None)
            if group is None:
                self.unplaced.append(log.job)
                continue
            for n in names:
                if n.lower() in host_group:
                    self.by_host.setdefault(n.lower(), []).append(span)
            self.by_group.setdefault(group, []).append(span)
        for table in (self.by_host, self.by_group):
            for spans in table.values():
                spans.sort(key=lambda s: s[0])
        self._starts = {k: [s[0] for s in v] for k, v in self.by_host.items()}
        self._gstarts = {k: [s[0] for s in v] for k, v in self.by_group.items()}

    @staticmethod
    def _running(spans: list[tuple[float, float, JobLog]], starts: list[float], t: float) -> list[JobLog]:
        i = bisect.bisect_right(starts, t)
        return [log for a, b, log in spans[max(0, i - 64):i] if a <= t <= b]

    def find(self, origin: Origin, t: float) -> tuple[JobLog | None, int]:
        """(the job that made a connection at ``t``, how many jobs could have): by host when known, else by group."""
        if origin.host and origin.host.lower() in self.by_host:
            key = origin.host.lower()
            running = self._running(self.by_host[key], self._starts[key], t)
            return (running[-1] if running else None), len(running)
        if origin.by == "cidr" and origin.group in self.by_group:
            running = self._running(self.by_group[origin.group], self._gstarts[origin.group], t)
            return (running[0] if len(running) == 1 else None), len(running)
        return None, 0

    def attribute(self, origin: Origin, t: float, at: datetime) -> Attribution:
        log, n = self.find(origin, t)
        return Attribution(context_at(log, at) if log else None, n)

    def workflow(self, origin: Origin, t: float) -> str | None:
        """The workflow (or, without one, the job name) a connection belongs to, when it can be told."""
        log, _ = self.find(origin, t)
        if log is None:
            return None
        return log.workflow or log.job
