"""CI job logs, read the way GitHub Actions and GitLab runners write them.

Why a parser of our own: the only durable record of *which digest a CI job
actually ran* is the job log. ``docker pull`` prints ``Digest: sha256:...``,
GitLab's runner prints ``Using docker image sha256:... for X with digest
X@sha256:...``, a BuildKit build prints ``FROM X@sha256:...``. Tags lie after
an overwrite; these lines do not. Both detect (where was the image seen?) and
assess (which jobs ran it, when?) read logs through :func:`parse_job_log`.

What it understands (each line may carry a timestamp prefix, which becomes the
event's ``at``; the first timestamp is the job's ``started_at``):

* GitHub Actions: ``2026-04-22T13:05:11.1234567Z <text>``, ``##[command]``,
  ``##[group]`` markers, a leading BOM;
* GitLab runner: ``2026-04-22T13:05:11.123456Z 00O <text>`` (``00O+`` continues
  the previous line), ANSI colour codes, ``section_start:...`` markers, plain
  lines without timestamps; Jenkins' Timestamper ``[2026-04-22T13:05:11.123Z]``;
* pull commands: ``docker pull X``, ``/usr/bin/docker pull X``, ``podman pull X``,
  ``Pull down action image 'X'``, ``Pulling docker image X ...``,
  ``Using Docker executor with image X ...``, ``Trying to pull X...`` (podman),
  ``Unable to find image 'X' locally`` (an implicit pull by ``docker run``);
* pull output: ``latest: Pulling from checkmarx/kics``, ``Digest: sha256:...``,
  ``Status: Downloaded newer image for X`` / ``Image is up to date for X``;
* runs: ``docker run ... X``, ``podman run ... X``, ``docker create ... X`` (a
  run without a digest inherits the digest of the job's earlier pull of X);
* GitLab: ``Using docker image sha256:<id> for X with digest X@sha256:<digest>``
  (the first hash is the local image id, not a manifest digest: ignored);
* BuildKit: ``#4 [1/2] FROM docker.io/x/y:tag@sha256:...``.

Every ``sha256:<64 hex>`` on any line is also kept (first occurrence) in
``JobLog.digests`` so a malicious digest in an unrecognised line is not lost.

Corrupt input never raises: a line with invalid UTF-8, binary junk, a broken
timestamp prefix or a pull line whose reference/digest does not parse is
counted in ``unparsable`` (first few line numbers in ``unparsable_lines``).
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import Field

from digestguard._model import Model
from digestguard.reference import ImageReference, parse_digest, try_parse_reference

PullKind = Literal["pull", "run", "executor", "build", "output"]

MAX_LINE_TEXT = 300
MAX_UNPARSABLE_LINES = 20


class PullEvent(Model):
    """One use of an image in a job: the reference as written, the tag, and the digest the log shows.

    ``line_no``/``line`` are the first line of the event (the command or the first pull
    output line); ``evidence`` holds every line that contributed, as ``(line_no, text)``.
    ``digest_source``: ``log`` (a ``Digest:``/``with digest`` line), ``reference`` (the
    reference itself was pinned ``@sha256:``) or ``inherited`` (a ``docker run`` of a
    reference this job pulled earlier).
    """

    reference: str | None = Field(None, description="as written in the log (familiar spelling), None for a bare Digest line")
    name: str | None = Field(None, description="canonical repository name, e.g. docker.io/checkmarx/kics")
    tag: str | None = None
    digest: str | None = None
    digest_source: Literal["log", "reference", "inherited"] | None = None
    kind: PullKind = "pull"
    line_no: int
    line: str
    at: datetime | None = None
    evidence: list[tuple[int, str]] = Field(default_factory=list)

    @property
    def effective_tag(self) -> str | None:
        """The tag a pull would use (``latest`` when the reference named neither tag nor digest)."""
        if self.tag:
            return self.tag
        if self.reference is None:
            return None
        return None if self.digest_source == "reference" else "latest"


class DigestMention(Model):
    """The first line a digest appears on (any context)."""

    digest: str
    line_no: int
    line: str
    at: datetime | None = None


class ActionUse(Model):
    """An action a GitHub job downloaded: ``Download action repository 'owner/name@ref' (SHA:...)``."""

    action: str = Field(description="owner/name[/path]@ref as the log names it")
    sha: str | None = None
    line_no: int
    at: datetime | None = None


class JobLog(Model):
    """One parsed job log. ``source``/``workflow``/``url``/``repository`` are set by the caller (metadata)."""

    job: str
    source: str = ""
    started_at: datetime | None = None
    pulls: list[PullEvent] = Field(default_factory=list)
    digests: list[DigestMention] = Field(default_factory=list)
    lines_read: int = 0
    unparsable: int = 0
    unparsable_lines: list[int] = Field(default_factory=list)
    workflow: str | None = Field(None, description="workflow/pipeline file that defined the job, when known")
    url: str | None = None
    repository: str | None = Field(None, description="inventory repository name the job belongs to, when known")
    ended_at: datetime | None = Field(None, description="the log's last timestamp (the job ran until then)")
    runner: str | None = Field(None, description="runner name the log prints (GitHub 'Runner name', GitLab 'Running on')")
    machine: str | None = Field(None, description="machine name the log prints (GitHub 'Machine name')")
    actions: list[ActionUse] = Field(default_factory=list, description="actions the job downloaded, in order")


# --------------------------------------------------------------------------- line cleaning

_TS = r"(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:?\d{2})?"
_GITLAB_PREFIX = re.compile(rf"^{_TS} ([0-9a-fA-F]{{2}})([OE])(\+?) ?")
_GITHUB_PREFIX = re.compile(rf"^{_TS} ")
_BRACKET_PREFIX = re.compile(rf"^\[{_TS}\] ?")
_BROKEN_TS = re.compile(r"^\[?\d{4}-\d{2}-\d{2}T")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]")
_SECTION = re.compile(r"section_(?:start|end):\d+:[A-Za-z0-9_.\-]+(?:\[[^\]]*\])?\r?")
_GH_MARKER = re.compile(r"^##\[(?:command|group|endgroup|section|debug|warning|error|notice|info)\]")
_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
_DIGEST_ANY = re.compile(r"\bsha256:([0-9a-fA-F]{64})(?![0-9a-fA-F])")


def _timestamp(m: re.Match[str]) -> datetime | None:
    date, hh, mm, ss, frac, tz = m.group(1, 2, 3, 4, 5, 6)
    try:
        base = datetime.fromisoformat(f"{date}T{hh}:{mm}:{ss}")
    except ValueError:
        return None
    if frac:
        base = base.replace(microsecond=int((frac + "000000")[:6]))
    if tz is None or tz == "Z":
        return base.replace(tzinfo=timezone.utc)
    sign = 1 if tz[0] == "+" else -1
    digits = tz[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4]))
    return base.replace(tzinfo=timezone(sign * offset)).astimezone(timezone.utc)


def _split_prefix(raw: str) -> tuple[datetime | None, str, bool, bool]:
    """(timestamp, rest, is_continuation, prefix_broken) for one physical line."""
    m = _GITLAB_PREFIX.match(raw)
    if m:
        return _timestamp(m), raw[m.end():], m.group(9) == "+", False
    m = _GITHUB_PREFIX.match(raw) or _BRACKET_PREFIX.match(raw)
    if m:
        return _timestamp(m), raw[m.end():], False, False
    if _BROKEN_TS.match(raw):
        return None, raw, False, True
    return None, raw, False, False


def _visible(text: str) -> str:
    """What a terminal would show: no ANSI codes, no section markers, the text after the last ``\\r``."""
    text = _SECTION.sub("", _ANSI.sub("", text))
    if "\r" in text:
        parts = [p for p in text.split("\r") if p.strip()]
        text = parts[-1] if parts else ""
    text = _GH_MARKER.sub("", text.strip())
    return text.strip()


def _is_junk(text: str) -> bool:
    if "\x00" in text:
        return True
    if not text:
        return False
    bad = len(_JUNK.findall(text)) + text.count("\ufffd")
    return bad > 0 and bad * 4 >= len(text)


def _trim(text: str) -> str:
    return text if len(text) <= MAX_LINE_TEXT else text[: MAX_LINE_TEXT - 1] + "…"


# --------------------------------------------------------------------------- reference helpers

_QUOTES = "'\"`"


def _ref(token: str) -> ImageReference | None:
    token = token.strip().strip(_QUOTES).rstrip(".,;)")
    if token.startswith("docker://"):
        token = token[len("docker://"):]
    if not token or token.startswith(("-", "$", "/", ".")) or "${" in token:
        return None
    return try_parse_reference(token)


# Options of docker/podman run/create/pull that take a separate value.
_VALUE_OPTS = {
    "-a", "--attach", "--add-host", "--annotation", "--blkio-weight", "--cap-add", "--cap-drop", "--cgroup-parent",
    "--cgroupns", "--cidfile", "--cpu-period", "--cpu-quota", "--cpu-shares", "-c", "--cpus", "--cpuset-cpus",
    "--cpuset-mems", "--device", "--dns", "--dns-option", "--dns-search", "--entrypoint", "-e", "--env",
    "--env-file", "--expose", "--gpus", "--group-add", "--health-cmd", "--health-interval", "--health-retries",
    "-h", "--hostname", "--ip", "--ip6", "--ipc", "--isolation", "--label", "-l", "--label-file", "--link",
    "--log-driver", "--log-opt", "--mac-address", "-m", "--memory", "--memory-swap", "--mount", "--name",
    "--network", "--net", "--network-alias", "--pid", "--platform", "-p", "--publish", "--pull", "--restart",
    "--runtime", "--security-opt", "--shm-size", "--stop-signal", "--stop-timeout", "--storage-opt", "--sysctl",
    "--tmpfs", "-u", "--user", "--ulimit", "--userns", "--uts", "-v", "--volume", "--volumes-from", "-w",
    "--workdir", "--arch", "--os", "--authfile", "--creds", "--cert-dir", "--variant", "--retry", "--retry-delay",
}


def _image_arg(rest: str) -> str | None:
    """The image argument of ``run``/``create``/``pull`` arguments: the first non-option token."""
    try:
        tokens = shlex.split(rest, posix=True)
    except ValueError:
        tokens = rest.split()
    skip = False
    for tok in tokens:
        if skip:
            skip = False
            continue
        if tok.startswith("-"):
            if "=" not in tok and tok in _VALUE_OPTS:
                skip = True
            continue
        return tok
    return None


# --------------------------------------------------------------------------- line patterns

_CLI = r"(?:^|[\s/;&|(])(?:docker|podman|nerdctl)(?:\s+(?:-[-\w]+(?:[= ]\S+)?\s+)*)?\s*"
_CMD_PULL = re.compile(_CLI + r"(?:image\s+)?pull\s+(.+)$")
_CMD_RUN = re.compile(_CLI + r"(?:container\s+)?(?:run|create)\s+(.+)$")
_ANNOUNCE = [
    (re.compile(r"^Pull down action image '([^']+)'"), "pull"),
    (re.compile(r"^Pulling docker image (\S+)"), "executor"),
    (re.compile(r"^Using (?:Docker|docker|Kubernetes|kubernetes|Podman|podman|Docker Machine|docker\+machine|Custom|custom)"
                r" executor with image (\S+)"), "executor"),
    (re.compile(r"^Trying to pull (\S+?)\.\.\.$"), "pull"),
    (re.compile(r"^Unable to find image '([^']+)' locally"), "pull"),
]
_PULLING_FROM = re.compile(r"^(\S+): Pulling from (\S+)\s*$")
_DIGEST_LINE = re.compile(r"^Digest:\s*(\S+)\s*$")
_STATUS = re.compile(r"^Status: (?:Downloaded newer image|Image is up to date) for (\S+)\s*$")
_GITLAB_USING = re.compile(r"^Using docker image (\S+) for (\S+) with digest (\S+?)(?:\s|$)")
_BUILDKIT_FROM = re.compile(r"^#\d+ (?:\[[^\]]*\] )?(?:FROM|resolve) (\S+)")


class _Parser:
    def __init__(self, job: str) -> None:
        self.log = JobLog(job=job)
        self.pending: PullEvent | None = None
        self._seen_digests: set[str] = set()

    # -- bookkeeping
    def unparsable(self, line_no: int) -> None:
        self.log.unparsable += 1
        if len(self.log.unparsable_lines) < MAX_UNPARSABLE_LINES:
            self.log.unparsable_lines.append(line_no)

    def new_event(self, ref: ImageReference | None, written: str | None, kind: PullKind, line_no: int, text: str,
                  at: datetime | None) -> PullEvent:
        ev = PullEvent(
            reference=written, name=ref.name if ref else None, tag=ref.tag if ref else None,
            digest=ref.digest if ref else None, digest_source="reference" if ref and ref.digest else None,
            kind=kind, line_no=line_no, line=_trim(text), at=at, evidence=[(line_no, _trim(text))],
        )
        self.log.pulls.append(ev)
        return ev

    @staticmethod
    def add(ev: PullEvent, line_no: int, text: str) -> None:
        if not ev.evidence or ev.evidence[-1][0] != line_no:
            ev.evidence.append((line_no, _trim(text)))

    def set_digest(self, ev: PullEvent, digest: str, line_no: int, text: str) -> None:
        ev.digest = digest
        ev.digest_source = "log"
        self.add(ev, line_no, text)

    def inherit(self, ev: PullEvent) -> None:
        """A run of a tag this job already pulled uses that pull's digest."""
        if ev.digest or ev.name is None:
            return
        for prev in reversed(self.log.pulls[:-1]):
            if prev.name == ev.name and (prev.tag or "latest") == (ev.tag or "latest") and prev.digest:
                ev.digest, ev.digest_source = prev.digest, "inherited"
                return

    def _same(self, ev: PullEvent | None, ref: ImageReference | None) -> bool:
        return ev is not None and ref is not None and ev.name == ref.name

    # -- one logical line
    def line(self, line_no: int, text: str, at: datetime | None) -> None:
        """Record the digests the line mentions, then let the first line form that matches it handle it."""
        for m in _DIGEST_ANY.finditer(text):
            d = "sha256:" + m.group(1).lower()
            if d not in self._seen_digests:
                self._seen_digests.add(d)
                self.log.digests.append(DigestMention(digest=d, line_no=line_no, line=_trim(text), at=at))
        for handle in (self._digest_line, self._pulling_from, self._status, self._gitlab_using, self._announce,
                       self._buildkit_from, self._cmd_pull, self._cmd_run):
            if handle(line_no, text, at):
                return

    # Each handler below returns True when the line has its form (it is then handled, even when unparsable).

    def _digest_line(self, line_no: int, text: str, at: datetime | None) -> bool:
        """``Digest: sha256:...``: the digest of the pull in progress (or a pull of its own)."""
        m = _DIGEST_LINE.match(text)
        if not m:
            return False
        try:
            digest = parse_digest(m.group(1))
        except ValueError:
            self.unparsable(line_no)
            return True
        if self.pending is not None:
            self.set_digest(self.pending, digest, line_no, text)
        else:
            ev = self.new_event(None, None, "output", line_no, text, at)
            ev.digest, ev.digest_source = digest, "log"
        return True

    def _pulling_from(self, line_no: int, text: str, at: datetime | None) -> bool:
        """``latest: Pulling from checkmarx/kics``: a pull starts (or continues)."""
        m = _PULLING_FROM.match(text)
        if not m:
            return False
        tag_or_digest, repo = m.group(1), m.group(2)
        written = f"{repo}@{tag_or_digest}" if tag_or_digest.startswith("sha256:") else f"{repo}:{tag_or_digest}"
        ref = _ref(written)
        if ref is None:
            self.unparsable(line_no)
        elif self.pending is not None and self._same(self.pending, ref):
            self.add(self.pending, line_no, text)
        else:
            self.pending = self.new_event(ref, written, "output", line_no, text, at)
        return True

    def _status(self, line_no: int, text: str, at: datetime | None) -> bool:
        """``Status: Downloaded newer image for X``: the pull in progress ends."""
        m = _STATUS.match(text)
        if not m:
            return False
        ref = _ref(m.group(1))
        if ref is None:
            self.unparsable(line_no)
            return True
        if self.pending is not None and self._same(self.pending, ref):
            self.add(self.pending, line_no, text)
            if self.pending.tag is None and ref.tag:
                self.pending.tag = ref.tag
        else:
            self.new_event(ref, m.group(1), "output", line_no, text, at)
        self.pending = None
        return True

    def _gitlab_using(self, line_no: int, text: str, at: datetime | None) -> bool:
        """GitLab's ``Using docker image X for Y with digest Z``."""
        m = _GITLAB_USING.match(text)
        if not m:
            return False
        ref = _ref(m.group(2))
        with_digest = _ref(m.group(3))
        if ref is None or with_digest is None or with_digest.digest is None:
            self.unparsable(line_no)
            return True
        if self.pending is not None and self._same(self.pending, ref):
            self.set_digest(self.pending, with_digest.digest, line_no, text)
        else:
            ev = self.new_event(ref, m.group(2), "executor", line_no, text, at)
            if ev.digest is None:
                ev.digest, ev.digest_source = with_digest.digest, "log"
        self.pending = None
        return True

    def _announce(self, line_no: int, text: str, at: datetime | None) -> bool:
        """A runner announcing the image it is about to pull (``Pulling docker image X``, ...)."""
        for pattern, kind in _ANNOUNCE:
            m = pattern.match(text)
            if not m:
                continue
            ref = _ref(m.group(1))
            if ref is None:
                self.unparsable(line_no)
            elif self._same(self.pending, ref) and self.pending is not None and self.pending.digest is None:
                self.add(self.pending, line_no, text)
            else:
                self.pending = self.new_event(ref, m.group(1).strip(_QUOTES), kind, line_no, text, at)
            return True
        return False

    def _buildkit_from(self, line_no: int, text: str, at: datetime | None) -> bool:
        """BuildKit's ``#3 [internal] FROM X`` / ``resolve X``."""
        m = _BUILDKIT_FROM.match(text)
        if not m:
            return False
        ref = _ref(m.group(1))
        if ref is not None:
            self.new_event(ref, m.group(1), "build", line_no, text, at)
        return True

    def _cmd_pull(self, line_no: int, text: str, at: datetime | None) -> bool:
        """A ``docker pull X`` command line."""
        m = _CMD_PULL.search(text)
        if not m:
            return False
        arg = _image_arg(m.group(1))
        ref = _ref(arg) if arg else None
        if ref is None:
            if arg and not arg.startswith("$"):
                self.unparsable(line_no)
        elif (self._same(self.pending, ref) and self.pending is not None and self.pending.digest is None
              and self.pending.kind == "pull"):
            self.add(self.pending, line_no, text)  # "Run docker pull X" group title, then the command itself
        else:
            self.pending = self.new_event(ref, arg.strip(_QUOTES) if arg else None, "pull", line_no, text, at)
        return True

    def _cmd_run(self, line_no: int, text: str, at: datetime | None) -> bool:
        """A ``docker run X`` command line (a run of a local build or a variable is not judged)."""
        m = _CMD_RUN.search(text)
        if not m:
            return False
        arg = _image_arg(m.group(1))
        ref = _ref(arg) if arg else None
        if ref is None:
            return True
        last = self.log.pulls[-1] if self.log.pulls else None
        if last is not None and last.kind == "run" and last.name == ref.name and last.tag == ref.tag and last.digest is None:
            self.add(last, line_no, text)  # group title "Run docker run ..." followed by the command
            self.pending = last
            return True
        ev = self.new_event(ref, arg.strip(_QUOTES) if arg else None, "run", line_no, text, at)
        self.inherit(ev)
        self.pending = ev if ev.digest is None or ev.digest_source == "inherited" else None
        return True

def _decode_lines(data: str | bytes) -> list[tuple[str, bool]]:
    """(line, not valid UTF-8) per line, without the final empty line and a leading byte-order mark."""
    if isinstance(data, bytes):
        decoded: list[tuple[str, bool]] = []
        for b in data.split(b"\n"):
            try:
                decoded.append((b.decode("utf-8"), False))
            except UnicodeDecodeError:
                decoded.append((b.decode("utf-8", errors="replace"), True))
    else:
        decoded = [(s, False) for s in data.split("\n")]
    if decoded and decoded[-1][0] == "":
        decoded.pop()
    if decoded and decoded[0][0].startswith("\ufeff"):
        decoded[0] = (decoded[0][0][1:], decoded[0][1])
    return decoded


def parse_job_log(
    data: str | bytes,
    job: str,
    *,
    source: str = "",
    started_at: datetime | None = None,
    workflow: str | None = None,
    url: str | None = None,
    repository: str | None = None,
) -> JobLog:
    """Parse one job log (text or raw bytes) into a :class:`JobLog`.

    ``started_at`` is a fallback for logs without timestamps (e.g. the API's job start);
    the log's own first timestamp wins when present. Never raises on bad content.

    >>> log = parse_job_log("Digest: sha256:" + "a" * 64, "j")
    >>> log.pulls[0].digest[:12]
    'sha256:aaaaa'
    """
    parser = _Parser(job)
    decoded = _decode_lines(data)
    first_ts: datetime | None = None
    logical: tuple[int, str, datetime | None] | None = None

    def flush() -> None:
        if logical is not None:
            no, raw_text, at = logical
            parser.line(no, _visible(raw_text), at)

    for index, (raw, bad_utf8) in enumerate(decoded, start=1):
        parser.log.lines_read += 1
        raw = raw.rstrip("\r")
        if bad_utf8 or "\ufffd" in raw:
            parser.unparsable(index)
            if _is_junk(raw):
                continue
        elif _is_junk(raw):
            parser.unparsable(index)
            continue
        at, rest, continuation, broken = _split_prefix(raw)
        if broken:
            parser.unparsable(index)
            continue
        if at is not None and first_ts is None:
            first_ts = at
        if continuation and logical is not None:
            logical = (logical[0], logical[1] + rest, logical[2] or at)
            continue
        flush()
        logical = (index, rest, at)
    flush()

    log = parser.log
    _runner_facts(log, decoded)
    log.started_at = first_ts or (started_at.astimezone(timezone.utc) if started_at and started_at.tzinfo else started_at)
    log.source = source
    log.workflow = workflow
    log.url = url
    log.repository = repository
    return log


# --------------------------------------------------------------------------- where and with what the job ran

_RUNNER_NAME = re.compile(r"^Runner name: '([^']{1,200})'")
_MACHINE_NAME = re.compile(r"^Machine name: '([^']{1,200})'")
_GITLAB_ON = re.compile(r"^Running on (\S{1,200}) via (\S{1,200})")
_ACTION = re.compile(r"^Download action repository '([^'@\s]{1,200}@[^'\s]{1,200})'(?: \(SHA:([0-9a-fA-F]{40})\))?")


def _runner_facts(log: JobLog, decoded: list[tuple[str, bool]]) -> None:
    """The log's last timestamp, the runner and machine it names, and the actions it downloaded (egress context)."""
    last: datetime | None = None
    for index, (raw, bad) in enumerate(decoded, start=1):
        if bad:
            continue
        at, rest, _cont, broken = _split_prefix(raw.rstrip("\r"))
        if broken:
            continue
        if at is not None:
            last = at
        text = _visible(rest)
        if not text or text[0] not in "RMD":
            continue
        if m := _RUNNER_NAME.match(text):
            log.runner = log.runner or m[1]
        elif m := _MACHINE_NAME.match(text):
            log.machine = log.machine or m[1]
        elif m := _GITLAB_ON.match(text):
            log.runner = log.runner or m[1]
            log.machine = log.machine or m[2]
        elif m := _ACTION.match(text):
            log.actions.append(ActionUse(action=m[1], sha=m[2].lower() if m[2] else None, line_no=index, at=at))
    log.ended_at = last
