"""Find image references (and GitHub Action uses) in a repository checkout, with exact spans.

Why a text scanner and not a YAML/Dockerfile parser: the pin stage must change
*only* the bytes of each reference and keep everything else (comments, quoting,
key order, CRLF line endings) byte for byte. A parser that re-renders the file
cannot promise that, so every format here is read as text, line by line, with
small format-aware rules that give the exact character span of each reference.

Two kinds of hits:

- ``certain``: the position says "this is an image" (``image:``, ``FROM``,
  ``docker run <image>``, ``uses: docker://``, ``container:`` in a workflow, a
  variable named ``*_IMAGE``). The lint gate judges these.
- not certain: a YAML value or shell variable that merely *parses* as a
  reference and carries a tag or digest (``SCANNER: checkmarx/kics:latest``).
  The pin stage rewrites these only when they name an affected repository.

A bare word in a comment or in prose is never a hit: comment lines are skipped
and prose does not parse as a reference.

The walk (``scan_tree``) is built to be cheap: ``tasks.scan.files.walk_files``, one ``read`` per
file, a bytes substring prefilter for the names the caller cares about, and
parsing only for recognised formats that pass the prefilter.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from digestguard.errors import InputError
from digestguard.reference import ImageReference, is_digest, try_parse_reference
from tasks.scan.ci_files import PROSE_SUFFIXES, YAML_KINDS, classify
from tasks.scan.files import walk_files

MAX_FILE_BYTES = 2 * 1024 * 1024

# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Found:
    """One image reference. ``start``/``end`` are character offsets into the decoded file text.

    ``ref`` is None when the text holds a variable (``checkmarx/kics:${VERSION}``): such a
    reference cannot be pinned in place and is reported instead.
    """

    path: str
    line: int
    col_start: int
    col_end: int
    start: int
    end: int
    text: str
    ref: ImageReference | None
    context: str
    certain: bool
    classification: str = "image"
    resolved: ImageReference | None = None  # indirect: what the variables make of it (None: unresolvable)
    via: tuple[int, int] | None = None  # indirect: the span of the one definition that pin rewrites instead
    #   (``ENV_FILE_VIA`` when that definition is in the Compose ``.env``)

    @property
    def pinnable(self) -> bool:
        """An ``image`` or ``uncertain`` reference pin can rewrite in place (its text is the whole reference)."""
        return self.ref is not None and self.classification in ("image", "uncertain")

    @property
    def target(self) -> ImageReference | None:
        """The image this reference pulls: its own parse, or what its variables resolve to."""
        if self.classification in ("image", "uncertain"):
            return self.ref
        return self.resolved if self.classification == "indirect" else None


CLASSIFICATIONS = ("image", "built-here", "not-an-image", "indirect", "uncertain")
ENV_FILE_VIA = (-1, -1)  # ``Found.via`` of a reference held by a variable of the Compose ``.env`` (scanned itself)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str
    line: int
    col: int
    quote: str = ""


@dataclass(frozen=True)
class HelmImage:
    """A Helm-style ``repository:``/``tag:`` (+ optional ``registry:``/``digest:``) mapping."""

    path: str
    line: int
    repository: Span
    tag: Span | None
    digest: Span | None
    registry: Span | None
    ref: ImageReference | None  # registry/repository, no tag, no digest

    @property
    def text(self) -> str:
        name = f"{self.registry.text}/{self.repository.text}" if self.registry and self.registry.text else self.repository.text
        out = name + (f":{self.tag.text}" if self.tag and self.tag.text else "")
        if self.digest and self.digest.text:
            out += f"@{self.digest.text}"
        return out


@dataclass(frozen=True)
class ActionUse:
    """``uses: owner/repo[/path]@ref`` in a workflow or action file."""

    path: str
    line: int
    col_start: int
    start: int  # of owner/repo...
    ref_start: int
    ref_end: int
    value_end: int  # after the closing quote, if any
    text: str  # owner/repo[/path]@ref
    repository: str  # owner/repo, lowercase
    ref: str
    has_comment: bool


@dataclass
class FileScan:
    path: str
    kind: str
    text: str
    found: list[Found] = field(default_factory=list)
    helm: list[HelmImage] = field(default_factory=list)
    actions: list[ActionUse] = field(default_factory=list)


@dataclass(frozen=True)
class ScanSkip:
    path: str
    line: int | None
    reason: str


@dataclass
class ScanResult:
    root: str
    files: list[FileScan] = field(default_factory=list)
    skipped: list[ScanSkip] = field(default_factory=list)
    mentions: list[str] = field(default_factory=list)  # unrecognised files naming a needle
    scanned: int = 0


# --------------------------------------------------------------------------------------------
# Text helpers


class _Text:
    """File text plus a line index, so every hit knows its line and column."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.starts = [0]
        i = text.find("\n")
        while i != -1:
            self.starts.append(i + 1)
            i = text.find("\n", i + 1)
        self.hits: dict[tuple[int, int], Found] = {}
        self.actions: list[ActionUse] = []
        self.vars: dict[str, tuple[str, int, int]] = {}  # name -> (value, start, end) of its first definition
        self.pending: list[tuple[int, int, str, dict[str, tuple[str, int, int]] | None]] = []
        #   indirect references to resolve once the file is read, each with the variables in its scope
        #   (None: the whole file's; a Dockerfile ``FROM`` sees only global ``ARG``s, a stage its own)
        self.scope: dict[str, tuple[str, int, int]] | None = None  # set while a Dockerfile instruction is read
        self.env: dict[str, str] = {}  # values from outside the file (a Compose ``.env``): resolvable, not rewritable

    def define(self, name: str, value_start: int, value_end: int) -> None:
        """Record a variable definition (first one wins) for resolving indirect references."""
        if name not in self.vars:
            self.vars[name] = (self.text[value_start:value_end], value_start, value_end)

    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def lines(self) -> Iterator[tuple[int, int, str]]:
        """(line number, start offset, content without the line ending)."""
        text = self.text
        n = len(self.starts)
        for i, s in enumerate(self.starts):
            e = self.starts[i + 1] - 1 if i + 1 < n else len(text)
            line = text[s:e]
            if line.endswith("\r"):
                line = line[:-1]
            yield i + 1, s, line

    def in_comment(self, pos: int, markers: tuple[str, ...]) -> bool:
        """True when offset ``pos`` sits inside a comment of its line."""
        ls = self.starts[self.line_of(pos) - 1]
        le = self.text.find("\n", ls)
        return _is_comment_before(self.text[ls:le if le != -1 else len(self.text)], pos - ls, markers)

    def emit(self, start: int, end: int, context: str, certain: bool, need_tag: bool = False,
             classification: str | None = None) -> None:
        """Record ``text[start:end]`` as a reference when it is one (variables only when certain).

        A value with variables in an image position is queued for :meth:`resolve_indirect`.
        ``classification`` overrides the default (``image`` when certain, else ``uncertain``).
        """
        if end <= start or (start, end) in self.hits:
            prev = self.hits.get((start, end))
            if prev is not None and certain and not prev.certain:
                cls = classification or ("image" if prev.classification == "uncertain" else prev.classification)
                self.hits[(start, end)] = Found(**{**prev.__dict__, "certain": True, "context": context,
                                                   "classification": cls})
            return
        value = self.text[start:end]
        if "$" in value or "{" in value:
            if certain and classification is None:
                self.pending.append((start, end, context, None if self.scope is None else dict(self.scope)))
            return
        else:
            ref = try_parse_reference(value)
            if ref is None or ref.repository == "library/scratch" and not ref.tag:
                return
            if need_tag and not (ref.tag or ref.digest):
                return
        cls = classification or ("image" if certain else "uncertain")
        self.hits[(start, end)] = self._found(start, end, ref, context, certain, cls)

    def _found(self, start: int, end: int, ref: ImageReference | None, context: str, certain: bool, cls: str,
               resolved: ImageReference | None = None, via: tuple[int, int] | None = None) -> Found:
        line = self.line_of(start)
        col = start - self.starts[line - 1]
        return Found(self.path, line, col, col + (end - start), start, end, self.text[start:end], ref, context, certain,
                     cls, resolved, via)

    def resolve_indirect(self) -> None:
        """Classify every queued reference built from variables (see :func:`_resolve_indirect`)."""
        parts_of_composites: set[tuple[int, int]] = set()
        whole: set[tuple[int, int]] = set()
        file_vars = self.vars
        for start, end, context, scope in self.pending:
            self.vars = file_vars if scope is None else scope
            try:
                _resolve_indirect(self, start, end, context, parts_of_composites, whole)
            finally:
                self.vars = file_vars
        # a definition used only as a *part* of a composite reference is no reference of its own:
        # rewriting it would break the composite (``FROM ${IMAGE}:${TAG}`` with ``ARG IMAGE=kics``)
        for s, e in parts_of_composites - whole:
            hit = self.hits.get((s, e))
            if hit is not None and hit.classification in ("image", "uncertain"):
                del self.hits[(s, e)]

    def results(self) -> list[Found]:
        return [self.hits[k] for k in sorted(self.hits)]


_VAR = re.compile(r"\$(?:\{(?P<b>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-=+?])(?P<d>(?:[^${}]|\$\{[^{}]*\}|\$(?!\{))*))?\}|\((?P<p>[A-Za-z_][A-Za-z0-9_]*)\)"
                  r"|(?P<n>[A-Za-z_][A-Za-z0-9_]*))")


def _lookup(t: _Text, name: str, depth: int = 0) -> tuple[str | None, tuple[int, int] | None]:
    """(value, span of the definition that holds it whole) of variable ``name``; (None, None) when unknown."""
    if name in t.vars:
        value, s, e = t.vars[name]
        m = _VAR.fullmatch(value)
        if m and depth < 3:  # ``KICS="${KICS_IMAGE:-checkmarx/kics:latest}"``: the default is the definition
            inner = m.group("b") or m.group("p") or m.group("n")
            # ``IMG=${IMG:-default}`` refers to the environment's IMG, not to itself
            got, span = _lookup(t, inner, depth + 1) if inner != name else (None, None)
            op = m.group("op") or ""
            if op.endswith("+"):  # ``${X:+alt}``: the alternative when X is set, else nothing
                if not got:
                    return None, None
                ds = s + m.start("d")
                return m.group("d"), (ds, ds + len(m.group("d")))
            if got is not None:
                return got, span
            if m.group("d") is not None and not op.endswith("?"):  # ``${X:?msg}``: an error, not a default
                ds = s + m.start("d")
                return m.group("d"), (ds, ds + len(m.group("d")))
            return None, None
        if "$" in value:
            got = _expand(t, value, depth + 1)
            return got, None
        return value, (s, e)
    if name in t.env:
        return t.env[name], None
    return None, None


def _expand(t: _Text, value: str, depth: int = 0) -> str | None:
    """``value`` with every variable replaced; None when one has no value."""
    out: list[str] = []
    pos = 0
    for m in _VAR.finditer(value):
        out.append(value[pos:m.start()])
        name = m.group("b") or m.group("p") or m.group("n")
        got = _lookup(t, name, depth)[0] if depth < 4 else None
        if m.group("op") in (":+", "+"):  # ``${REGISTRY:+${REGISTRY}/}``: alternative or nothing
            got = (_expand(t, m.group("d"), depth + 1) if "$" in m.group("d") else m.group("d")) if got else ""
        elif got is None:
            got = m.group("d") if m.group("d") is not None and m.group("op") in (":-", "-", ":=", "=") else None
        if got is None:
            return None
        out.append(got)
        pos = m.end()
    out.append(value[pos:])
    return "".join(out)


def _resolve_indirect(t: _Text, start: int, end: int, context: str, parts: set[str], whole: set[str]) -> None:
    """One reference built from variables, classified.

    - ``$X`` / ``${X}`` with ``X`` defined whole in this file: the definition becomes an ``image``
      reference (pin rewrites it there) and this one is ``indirect`` with ``via`` pointing at it;
    - ``${X:-image:tag}`` with ``X`` not defined here: the default is the ``image`` (rewritten in place);
    - anything else (``${REG}/${IMG}:${TAG}``): ``indirect``, resolved when every variable has a
      value in the file (or its ``.env``), never rewritten (no single span holds the whole reference).
    """
    value = t.text[start:end]
    m = _VAR.fullmatch(value)
    if m:
        name = m.group("b") or m.group("p") or m.group("n")
        whole.add(t.vars.get(name, ("", -1, -1))[1:])
        got, span = _lookup(t, name)
        op = m.group("op") or ""
        if op.endswith("+"):  # ``${X:+alt}``: the alternative when X is set, else nothing
            ds = start + m.start("d")
            got, span = (m.group("d"), (ds, ds + len(m.group("d")))) if got else (None, None)
        elif op.endswith("?"):
            pass  # ``${X:?message}``: X's value or an error; the message is no default
        elif got is None and m.group("d") is not None and op in (":-", "-"):
            ds = start + m.start("d")
            got, span = m.group("d"), (ds, ds + len(m.group("d")))
        ref = try_parse_reference(got) if got is not None and "$" not in got else None
        if ref is not None and span is None and name in t.env and name not in t.vars and is_image_name(name):
            # held whole by an image-named variable of the Compose ``.env``: that file is scanned
            # itself and its definition is the reference pin rewrites and lint judges
            t.hits[(start, end)] = t._found(start, end, None, context, True, "indirect", ref, ENV_FILE_VIA)
            return
        if ref is not None and span is not None:
            t.emit(span[0], span[1], f"{context}<-{name}", True)
            if span[0] >= start and span[1] <= end:  # the default sits inside this reference: it IS the reference
                return
        t.hits[(start, end)] = t._found(start, end, None, context, True, "indirect", ref,
                                        span if ref is not None else None)
        return
    for vm in _VAR.finditer(value):
        parts.add(t.vars.get(vm.group("b") or vm.group("p") or vm.group("n"), ("", -1, -1))[1:])
    got = _expand(t, value)
    ref = try_parse_reference(got) if got is not None else None
    t.hits[(start, end)] = t._found(start, end, None, context, True, "indirect", ref, None)


def _is_comment_before(line: str, col: int, markers: tuple[str, ...] = ("#",)) -> bool:
    """True when position ``col`` of ``line`` sits inside a comment."""
    stripped = line.lstrip()
    if any(stripped.startswith(m) for m in markers):
        return True
    head = line[:col]
    for m in markers:
        i = head.find(m)
        while i != -1:
            if i == 0 or head[i - 1] in " \t":
                return True
            i = head.find(m, i + 1)
    return False


def name_hint(text: str) -> ImageReference | None:
    """The image an unresolvable reference names, judged by its text before the first variable
    (``checkmarx/kics:${VERSION}`` -> ``checkmarx/kics``); None when a variable comes first."""
    head = re.split(r"[$@{]", text, maxsplit=1)[0].rstrip(":")
    slash, colon = head.rfind("/"), head.rfind(":")
    if colon > slash:
        head = head[:colon]
    return try_parse_reference(head) if head and not head.endswith("/") else None


_HINT_SUFFIXES = ("image", "img", "image_name", "image_ref", "imagename", "imageref", "image_uri", "container_image")


def is_image_name(var: str) -> bool:
    """True for variable/key names that say they hold an image (``KICS_IMAGE``, ``baseImage``, ``image-ref``)."""
    n = var.lower().replace("-", "_")
    return n.endswith(_HINT_SUFFIXES) and not n.endswith(("pull_policy", "_tag"))


# --------------------------------------------------------------------------------------------
# docker/podman commands, docker:// URLs, shell/Makefile assignments

_DOCKER_CMD = re.compile(r"(?<![\w/.$-])(?:docker|podman|nerdctl)(?:[ \t]+(?:container|image))?[ \t]+(run|pull|create)(?=[ \t])")
_BOOL_LONG = frozenset({"--rm", "--detach", "--interactive", "--tty", "--privileged", "--init", "--read-only", "--quiet",
                        "--publish-all", "--no-healthcheck", "--oom-kill-disable", "--sig-proxy", "--all-tags",
                        "--disable-content-trust", "--help", "--use-api-socket", "--no-stream"})
_BOOL_SHORT = frozenset("ditPqa")
_TOKEN_STOP = frozenset(" \t\r\n;|&)`\"'<>")


def _tokens(text: str, pos: int) -> Iterator[tuple[int, int, str]]:
    """Shell words from ``pos`` to the end of the command: (start, end, value) with quotes removed.

    Adjacent quoted and unquoted parts form one word (``-v "$PWD":/src`` is two words, not
    three). A word that is one quoted string spans its inside, so an image written as
    ``"checkmarx/kics:latest"`` is rewritten without touching its quotes.
    """
    n = len(text)
    while pos < n:
        c = text[pos]
        if c in " \t":
            pos += 1
            continue
        if c == "\\":
            if text.startswith("\n", pos + 1):
                pos += 2
                continue
            if text.startswith("\r\n", pos + 1):
                pos += 3
                continue
        if c in "\r\n;|&)`#<>":
            return
        start = pos
        parts: list[str] = []
        quoted_only = True
        while pos < n and text[pos] not in " \t\r\n;|&)`<>":
            ch = text[pos]
            if ch in "\"'":
                close = text.find(ch, pos + 1)
                if close == -1 or "\n" in text[pos + 1:close]:
                    # the command itself sits in a string (``sh "docker pull x"``): its quote ends it
                    if parts:
                        value = "".join(parts)
                        yield (start, pos, value)
                    return
                parts.append(text[pos + 1:close])
                pos = close + 1
                continue
            if ch == "\\" and pos + 1 < n and text[pos + 1] in "\r\n":
                break
            quoted_only = False
            seg = pos
            while pos < n and text[pos] not in _TOKEN_STOP and text[pos] not in "\"'":
                if text[pos] == "\\" and pos + 1 < n and text[pos + 1] in "\r\n":
                    break
                if text[pos] == "$" and text.startswith("(", pos + 1):  # ``$(IMAGE)`` (make) is one word
                    close = text.find(")", pos)
                    if close != -1 and "\n" not in text[pos:close]:
                        pos = close + 1
                        continue
                pos += 1
            if pos == seg:  # a stop character this loop does not end words on (e.g. '(' or '$')
                pos += 1
            parts.append(text[seg:pos])
        value = "".join(parts)
        if quoted_only and len(parts) == 1 and pos - start >= 2:
            yield start + 1, pos - 1, value
        else:
            yield start, pos, value


def _command_image(text: str, pos: int) -> tuple[int, int] | None:
    """Span of the image operand of ``docker run|create|pull`` whose options start at ``pos``."""
    takes_value = False
    for start, end, tok in _tokens(text, pos):
        if takes_value:
            takes_value = False
            continue
        if tok == "--":
            continue
        if tok.startswith("--"):
            if "=" not in tok and tok not in _BOOL_LONG:
                takes_value = True
            continue
        if tok.startswith("-") and len(tok) > 1:
            for i, ch in enumerate(tok[1:], 1):
                if ch in _BOOL_SHORT:
                    continue
                takes_value = i == len(tok) - 1
                break
            continue
        return start, end
    return None


_DOCKER_URL = re.compile(r"docker://([A-Za-z0-9][A-Za-z0-9._/:@${}-]*)")
_ASSIGN = re.compile(
    r"^\ufeff?[ \t]*(?:export[ \t]+|readonly[ \t]+|local[ \t]+|declare[ \t]+(?:-\w+[ \t]+)*|override[ \t]+|ARG[ \t]+|ENV[ \t]+"
    r"|def[ \t]+|(?:final[ \t]+)?String[ \t]+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)[ \t]*(?:\?=|::=|:=|\+=|=)(?!=)[ \t]*",
)


def _scan_commands(t: _Text, comment_markers: tuple[str, ...] = ("#",)) -> None:
    text = t.text
    for m in _DOCKER_CMD.finditer(text):
        if t.in_comment(m.start(), comment_markers):
            continue
        span = _command_image(text, m.end())
        if span:
            t.emit(span[0], span[1], f"{m.group(0).split()[0]}-{m.group(1)}", True)
    for m in _DOCKER_URL.finditer(text):
        if t.in_comment(m.start(), comment_markers):
            continue
        t.emit(m.start(1), m.end(1), "docker-url", True)


def _assignment(t: _Text, line_start: int, line: str, context: str) -> None:
    m = _ASSIGN.match(line)
    if not m:
        return
    pos = m.end()
    if pos >= len(line):
        return
    c = line[pos]
    if c in "\"'":
        close = line.find(c, pos + 1)
        if close == -1:
            return
        s, e = pos + 1, close
    else:
        e = pos
        while e < len(line) and line[e] not in " \t;#)\"'":
            if line[e] == "$" and line[e + 1:e + 2] in ("{", "("):  # ``${VAR:-image:tag}``, ``$(REG)`` are one word
                close = line.find("}" if line[e + 1] == "{" else ")", e)
                e = close + 1 if close != -1 else len(line)
                continue
            e += 1
        s = pos
    name = m.group("name")
    t.define(name, line_start + s, line_start + e)
    _definition(t, name, line_start + s, line_start + e, context)


_ASSIGN_DEFAULT = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):?=(?P<d>[^${}\s\"']+)\}")


def _shell_assign_defaults(t: _Text) -> None:
    """``: "${KICS:=checkmarx/kics:latest}"`` (or any ``${X:=d}``/``${X=d}``) sets X when unset: a definition
    of X (when the file has none before it) whose value is the default, rewritten in place."""
    for m in _ASSIGN_DEFAULT.finditer(t.text):
        if t.in_comment(m.start(), ("#",)):
            continue
        name = m.group("name")
        if name not in t.vars:
            t.define(name, m.start("d"), m.end("d"))
            _definition(t, name, m.start("d"), m.end("d"), "shell:assign-default")


def _definition(t: _Text, name: str, s: int, e: int, context: str) -> None:
    """The value ``text[s:e]`` of variable ``name``: an image reference when its name says so, or when
    it merely parses as one with a ``/`` and a tag (``uncertain``); ``${X:-default}`` judged by its default."""
    certain = is_image_name(name)
    value = t.text[s:e]
    vm = _VAR.fullmatch(value)
    if vm and vm.group("d") is not None:
        inner = vm.group("b")
        if certain or is_image_name(inner):
            t.emit(s, e, context, True)
        elif "/" in vm.group("d") and vm.group("op") in (":-", "-", ":=", "="):
            ds = s + vm.start("d")
            t.emit(ds, ds + len(vm.group("d")), context, False, need_tag=True)
        return
    if not certain and "/" not in value:
        return
    t.emit(s, e, context, certain, need_tag=not certain)


# --------------------------------------------------------------------------------------------
# YAML (line based, no re-rendering)

_YAML_HEAD = re.compile(r"^\ufeff?(?P<ws>[ \t]*)(?P<dash>(?:-[ \t]+)*)"
                        r"(?:(?P<key>[A-Za-z_][\w.-]*|\"[^\"\n]*\"|'[^'\n]*')[ \t]*:(?=[ \t]|$))?")
_BLOCK_SCALAR = re.compile(r"^[|>][-+0-9]*[ \t]*(?:#.*)?$")
_USES = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?P<sub>/[^@\s]*)?@(?P<ref>[^\s@]+)$")
_HELM_KEYS = ("repository", "tag", "digest", "registry")


def _yaml_scalar(line: str, pos: int) -> tuple[int, int, str] | None:
    """(start, end, quote) of the scalar at ``pos``; empty spans for ``key:`` with no value."""
    n = len(line)
    while pos < n and line[pos] in " \t":
        pos += 1
    if pos >= n or line[pos] == "#":
        return pos, pos, ""
    c = line[pos]
    if c in "\"'":
        close = line.find(c, pos + 1)
        if close == -1:
            return None
        return pos + 1, close, c
    if c in "|>{[&*!%@`":
        return None
    end = line.find(" #", pos)
    if end == -1:
        end = line.find("\t#", pos)
    if end == -1:
        end = n
    while end > pos and line[end - 1] in " \t":
        end -= 1
    return pos, end, ""


@dataclass
class _Frame:
    indent: float
    key: str | None
    children: dict[str, Span] = field(default_factory=dict)
    line: int = 0


class _Mappings:
    """The YAML mappings open at the current line (innermost last), and the Helm pairs of those already closed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stack: list[_Frame] = [_Frame(-1, None)]
        self.helm: list[HelmImage] = []

    def _close(self, frame: _Frame) -> None:
        parent = self.stack[-1].key if self.stack and self.stack[-1] is not frame else None
        pair = _helm_pair(self.path, frame) or (_kustomize_image(self.path, frame) if parent == "images" else None)
        if pair is not None:
            self.helm.append(pair)

    def enter(self, ws: int, dash: str, key: str | None) -> None:
        """A line at indent ``ws`` (``dash``: a list item) closes the deeper mappings; ``- key:`` opens an item."""
        if dash:
            while len(self.stack) > 1 and self.stack[-1].indent > ws:
                self._close(self.stack.pop())
            if key:
                self.stack.append(_Frame(ws + 0.5, "-"))
        else:
            while len(self.stack) > 1 and self.stack[-1].indent >= ws:
                self._close(self.stack.pop())

    def parents(self) -> list[str]:
        """The keys of the open mappings, innermost first (``-`` for a list item)."""
        return [f.key for f in reversed(self.stack) if f.key is not None]

    def finish(self) -> list[HelmImage]:
        while len(self.stack) > 1:
            self._close(self.stack.pop())
        self._close(self.stack[0])
        return self.helm


def _helm_pair(path: str, frame: _Frame) -> HelmImage | None:
    """The Helm-style ``repository:``/``tag:`` mapping a closed YAML mapping holds, if it is one."""
    ch = frame.children
    repo = ch.get("repository")
    tag = ch.get("tag")
    if tag is None and (frame.key or "").lower().endswith("image"):
        tag = ch.get("version")  # ``coreImage: {repository, version}`` (Bitnami charts)
    if repo is None or tag is None or not repo.text:
        return None
    reg = ch.get("registry")
    name = f"{reg.text}/{repo.text}" if reg and reg.text else repo.text
    ref = try_parse_reference(name) if "$" not in name and "{" not in name else None
    if ref is not None and (ref.tag or ref.digest):
        return None  # repository already carries a tag/digest: not the Helm pair shape
    digest = ch.get("digest")
    at = tag.text.find("@")
    if digest is None and at > 0 and is_digest(tag.text[at + 1:].lower()):
        # ``tag: 11.5.0@sha256:...``: pinned inside the tag; the digest part is its own span
        digest = Span(tag.start + at + 1, tag.end, tag.text[at + 1:], tag.line, tag.col + at + 1, tag.quote)
        tag = Span(tag.start, tag.start + at, tag.text[:at], tag.line, tag.col, tag.quote)
    return HelmImage(path, repo.line, repo, tag, digest, reg, ref)


def _kustomize_image(path: str, frame: _Frame) -> HelmImage | None:
    """A Kustomize ``images:`` entry (``name`` + ``newName``/``newTag``/``digest``): the image it makes
    is ``newName`` (else ``name``) with ``newTag`` and ``digest``, split across keys like Helm's."""
    ch = frame.children
    if frame.key != "-" or "name" not in ch or not any(k in ch for k in ("newName", "newTag", "digest")):
        return None
    repo = ch.get("newName") or ch["name"]
    if not repo.text or "$" in repo.text:
        return None
    ref = try_parse_reference(repo.text)
    if ref is None or ref.tag or ref.digest:
        return None
    return HelmImage(path, repo.line, repo, ch.get("newTag"), ch.get("digest"), None, ref)


def _action_use(path: str, lineno: int, line: str, line_start: int, scalar: tuple[int, int, str]) -> ActionUse | None:
    """The ``owner/repo@ref`` of a ``uses:`` value at ``scalar`` (start, end, quote) of ``line``, if it is one."""
    s, e, quote = scalar
    value = line[s:e]
    um = _USES.match(value)
    if not um:
        return None
    abs_s, abs_e = line_start + s, line_start + e
    return ActionUse(path, lineno, s, abs_s, abs_s + um.start("ref"), abs_s + um.end("ref"), abs_e + (1 if quote else 0),
                     value, um.group("repo").lower(), um.group("ref"), "#" in line[e + (1 if quote else 0):])


_NOT_IMAGE_KEYS = ("repo", "path", "working-directory", "url", "context", "file")


def _yaml_rule(kind: str, key: str | None, parents: list[str], dash: bool, value: str, azure_aliases: set[str],
               only_image_keys: bool) -> tuple[str, bool | str | None] | None:
    """(context, certain) when a YAML scalar at ``key`` (under ``parents``, innermost first) is an image reference.

    ``certain`` None: the position names something that is not an OCI image (``not-an-image``);
    a string: that classification (``built-here``).
    """
    parent = parents[0] if parents else None
    lkey = key.lower() if key else None
    if lkey == "image" and kind == "circleci" and parent == "machine":
        return "circleci:machine.image", None  # a VM image, not an OCI image
    if lkey == "pipe" and kind == "bitbucket":
        return "bitbucket:pipe", None  # a pipe repository; ``pipe: docker://...`` is the docker:// scanner's
    if lkey == "bundle" and kind == "tekton":
        return "tekton:bundle", True  # an OCI bundle, tagged or not
    if kind == "github-workflow" and parent == "services" and key and parents[1:2] != ["-"]:
        return "github:services", True  # ``services: {redis: redis:7}`` short form
    if kind == "cloudbuild" and lkey == "name" and parents[:2] == ["-", "steps"]:
        return "cloudbuild:steps.name", True
    if kind == "cloudbuild" and parent == "images" and lkey is None:
        return "cloudbuild:images", "built-here"  # images the build pushes
    if lkey == "image":
        return "yaml:image", True
    if lkey == "name" and parent == "image":
        return "yaml:image.name", True
    if kind == "gitlab-ci" and parent == "services" and lkey is None:
        return "gitlab:services", True
    if kind == "gitlab-ci" and lkey == "name" and parents[:2] == ["-", "services"]:
        return "gitlab:services.name", True
    if lkey == "container" and kind in ("github-workflow", "azure"):
        if kind == "azure" and (dash or value in azure_aliases):  # `- container: alias` defines a name
            return None
        return "yaml:container", True
    if only_image_keys or lkey in _HELM_KEYS:
        return None
    if key and is_image_name(key):
        return f"yaml:{key}", True
    if "/" in value and lkey not in _NOT_IMAGE_KEYS:
        return f"yaml:{key or '-'}", False
    return None


def _scan_yaml(t: _Text, kind: str, only_image_keys: bool = False) -> list[HelmImage]:
    """Image references in YAML text; also collects Helm-style image mappings and action uses.

    One pass over the lines with a stack of open mappings (indent, key, children) and the
    block-scalar state; which scalar is an image is :func:`_yaml_rule`'s call.
    """
    azure_aliases: set[str] = set()
    if kind == "azure":
        azure_aliases = {m.group(1) for m in re.finditer(r"^[ \t]*-[ \t]+container:[ \t]*['\"]?([\w.-]+)", t.text, re.M)}
    maps = _Mappings(t.path)
    siblings: list[tuple[_Frame, int, int, str]] = []
    block_indent: int | None = None
    lines = list(t.lines())
    for idx, (lineno, ls, line) in enumerate(lines):
        stripped = line.strip()
        if block_indent is not None:
            indent = len(line) - len(line.lstrip(" \t"))
            if not stripped or indent > block_indent:
                if stripped and not stripped.startswith("#") and not only_image_keys:
                    _assignment(t, ls, line, "yaml-block")
                continue
            block_indent = None
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        m = _YAML_HEAD.match(line)
        ws, dash, key = len(m.group("ws")), m.group("dash"), m.group("key")
        if key and key[0] in "\"'":
            key = key[1:-1]
        key_indent = ws + len(dash)
        maps.enter(ws, dash, key)
        if not key and not dash:
            continue
        sc = _yaml_scalar(line, m.end())
        if sc is None:
            rest = line[m.end():].lstrip()
            if key and _BLOCK_SCALAR.match(rest):
                block_indent = key_indent if not dash else ws
                one = _block_single_line(lines, idx, block_indent) if rest.startswith((">-", "|-")) else None
                if one is not None:  # ``bundle: >-`` + one line: that line is the value
                    _yaml_value(t, kind, key, maps, one, siblings,
                                (bool(dash), t.text[one[0]:one[1]], azure_aliases, only_image_keys))
            elif key and rest[:1] in "\"'":
                _yaml_continued(t, kind, key, maps.parents(), lines, idx, ls + len(line) - len(rest),
                                (bool(dash), azure_aliases, only_image_keys))
            continue
        s, e, quote = sc
        value = line[s:e]
        if key:
            maps.stack[-1].children.setdefault(key, Span(ls + s, ls + e, value, lineno, s, quote))
            if not value and not quote:  # a parent mapping/sequence (or a bare ``key:``)
                maps.stack.append(_Frame(key_indent, key, line=lineno))
                continue
        if not value:
            continue
        if value.startswith("docker://"):
            continue  # the docker:// scanner owns these spans
        if key == "uses" and kind in ("github-workflow", "github-action"):
            use = _action_use(t.path, lineno, line, ls, (s, e, quote))
            if use is not None:
                t.actions.append(use)
            continue
        _yaml_value(t, kind, key, maps, (ls + s, ls + e), siblings,
                    (bool(dash), value, azure_aliases, only_image_keys))
    helm = maps.finish()
    _yaml_siblings(t, siblings)
    return helm


_GITLAB_PROXY = re.compile(r"\$(?:CI_DEPENDENCY_PROXY_(?:DIRECT_)?GROUP_IMAGE_PREFIX|\{CI_DEPENDENCY_PROXY_(?:DIRECT_)?GROUP_IMAGE_PREFIX\})/")


def _block_single_line(lines: list[tuple[int, int, str]], idx: int, indent: int) -> tuple[int, int] | None:
    """The span of the one content line of the block scalar opened on ``lines[idx]``; None for 0 or 2+ lines."""
    found: tuple[int, int] | None = None
    for _, ls, line in lines[idx + 1:]:
        stripped = line.strip()
        if stripped and len(line) - len(line.lstrip(" \t")) <= indent:
            break
        if not stripped:
            continue
        if found is not None:
            return None
        lead = len(line) - len(line.lstrip(" \t"))
        found = (ls + lead, ls + lead + len(stripped))
    return found


_CONTINUATION = re.compile(r"\\\r?\n[ \t]*")


def _yaml_continued(t: _Text, kind: str, key: str, parents: list[str], lines: list[tuple[int, int, str]], idx: int,
                    start: int, rule_args: tuple[bool, set[str], bool]) -> None:
    """A quoted image value continued over lines with ``\\`` (Drone's ``image: "node:10\\`` + ``@sha256:..."``):
    found, judged by what it reads as, never rewritten in place (``indirect`` with no definition: a person pins it)."""
    quote = t.text[start]
    close = t.text.find(quote, start + 1)
    last = lines[min(idx + 6, len(lines) - 1)]
    if close == -1 or close > last[1] + len(last[2]):
        return
    raw = t.text[start + 1:close]
    value = _CONTINUATION.sub("", raw)
    if "\n" in value or value == raw:
        return
    dash, aliases, only_image_keys = rule_args
    rule = _yaml_rule(kind, key, parents, dash, value, aliases, only_image_keys)
    ref = try_parse_reference(value)
    if rule is None or rule[1] is not True or ref is None:
        return
    s, e = start + 1, close
    t.hits[(s, e)] = t._found(s, e, None, rule[0] + "(continued-lines)", True, "indirect", ref, None)


def _yaml_value(t: _Text, kind: str, key: str | None, maps: _Mappings, span: tuple[int, int],
                siblings: list[tuple[_Frame, int, int, str]], rule_args: tuple[bool, str, set[str], bool]) -> None:
    """One non-empty YAML scalar at ``span``: a variable definition, a sibling rule's candidate, a reference.

    ``rule_args``: (list item, value, Azure container aliases, only image keys) for :func:`_yaml_rule`.
    """
    s, e = span
    parents = maps.parents()
    if key and parents and parents[0] in ("variables", "env"):
        t.define(key, s, e)
    if kind == "compose" and key == "image":
        siblings.append((maps.stack[-1], s, e, "build"))
    if kind == "tekton" and key == "value":
        siblings.append((maps.stack[-1], s, e, "bundle"))
    rule = _yaml_rule(kind, key, parents, *rule_args)
    if rule is None:
        return
    if kind == "gitlab-ci" and rule[1] is True:
        pm = _GITLAB_PROXY.match(t.text, s, e)
        if pm:  # the GitLab Dependency Proxy serves Docker Hub images under this prefix
            t.emit(pm.end(), e, rule[0] + "+dependency-proxy", True)
            return
    if rule[1] is None or isinstance(rule[1], str):
        t.emit(s, e, rule[0], False, classification=rule[1] or "not-an-image")
    else:
        t.emit(s, e, rule[0], rule[1], need_tag=not rule[1])


def _yaml_siblings(t: _Text, siblings: list[tuple[_Frame, int, int, str]]) -> None:
    """Rules that need the whole mapping: Compose ``image:`` beside ``build:`` names the image built
    here (not one pulled); a Tekton resolver param ``{name: bundle, value: ...}`` is a bundle image."""
    for frame, s, e, rule in siblings:
        if rule == "build" and "build" in frame.children:
            t.pending = [p for p in t.pending if (p[0], p[1]) != (s, e)]
            t.hits[(s, e)] = t._found(s, e, try_parse_reference(t.text[s:e]), "compose:image+build", False, "built-here")
        elif rule == "bundle" and (frame.children.get("name") or Span(0, 0, "", 0, 0)).text == "bundle":
            t.emit(s, e, "tekton:resolver.bundle", True)


# --------------------------------------------------------------------------------------------
# Dockerfile, Jenkinsfile

_DIRECTIVE = re.compile(r"^\ufeff?[ \t]*#[ \t]*(?P<k>[A-Za-z]+)[ \t]*=[ \t]*(?P<v>\S+)[ \t]*$")
_HEREDOC = re.compile(r"<<-?[ \t]*(?P<q>[\"']?)(?P<w>[A-Za-z_][A-Za-z0-9_]*)(?P=q)")


def _df_instructions(t: _Text) -> Iterator[tuple[str, int, int]]:
    """(INSTRUCTION, start of its arguments, end of the instruction) for each Dockerfile instruction.

    Follows the BuildKit parser: parser directives (``# syntax=``, ``# escape=``) only before the
    first other line; lines continued with the escape character (``\\`` or a backtick) join,
    comment lines inside a continuation are dropped; heredoc bodies (``RUN <<EOF``) are not
    instructions. A UTF-8 byte-order mark before the first line is ignored.
    """
    escape = "\\"
    lines = list(t.lines())
    i, n = 0, len(lines)
    directives = True
    while i < n:
        lineno, ls, line = lines[i]
        body = line[1:] if i == 0 and line.startswith("\ufeff") else line
        off = ls + (len(line) - len(body))
        stripped = body.strip()
        if directives:
            dm = _DIRECTIVE.match(body)
            if dm:
                if dm.group("k").lower() == "escape" and dm.group("v") in ("`", "\\"):
                    escape = dm.group("v")
                elif dm.group("k").lower() == "syntax":
                    vs = off + dm.start("v")
                    t.emit(vs, vs + len(dm.group("v")), "dockerfile:syntax", True)
                i += 1
                continue
            directives = False
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        lead = len(body) - len(body.lstrip())
        word_end = lead
        while word_end < len(body) and not body[word_end].isspace():
            word_end += 1
        while word_end > lead + 1 and body[word_end - 1] == escape:  # ``FROM\`` continues at once
            word_end -= 1
        instr = body[lead:word_end].upper()
        args = off + word_end
        j = i
        while lines[j][2].rstrip().endswith(escape) and j + 1 < n:
            j += 1
            while j + 1 < n and (not lines[j][2].strip() or lines[j][2].lstrip().startswith("#")):
                j += 1
        end = lines[j][1] + len(lines[j][2])
        yield instr, args, end
        i = j + 1
        for hm in _HEREDOC.finditer(t.text, args, end):
            word = hm.group("w")
            while i < n and lines[i][2].strip() != word:
                i += 1
            i += 1


def _df_words(t: _Text, pos: int, end: int) -> list[tuple[int, int, str]]:
    """Whitespace-separated words of ``text[pos:end]``; an escaped line break (and comment lines after it) is space."""
    text = t.text
    out: list[tuple[int, int, str]] = []
    i = pos
    while i < end:
        c = text[i]
        if c in " \t\r\n":
            if c == "\n":
                k = i + 1
                while k < end and text[k] in " \t":
                    k += 1
                if text.startswith("#", k):  # a comment line inside a continuation
                    nl = text.find("\n", k)
                    i = nl if nl != -1 and nl < end else end
                    continue
            i += 1
            continue
        if c in "\\`" and i + 1 < end and text[i + 1] in "\r\n":
            i += 1
            continue
        s = i
        while i < end and text[i] not in " \t\r\n" and not (text[i] in "\\`" and i + 1 < end and text[i + 1] in "\r\n"):
            i += 1
        out.append((s, i, text[s:i]))
    return out


def _df_source(t: _Text, s: int, e: int, stages: set[str], context: str) -> None:
    """An image named by ``FROM``/``--from=``/``from=``: skipped when it is a stage (by name or index)."""
    v = t.text[s:e]
    if v.lower() in stages or v.isdigit() or v.lower() == "scratch":
        return
    t.emit(s, e, context, True)


def _scan_dockerfile(t: _Text) -> None:
    """Every instruction that names an image: ``FROM``, ``COPY --from``, ``RUN --mount=...,from=``, ``# syntax=``.

    ``ARG`` and ``ENV`` values are variables (resolved for ``FROM $VAR`` by :func:`_resolve_indirect`).
    Build stages (``AS name``) are not images; ``ONBUILD`` wraps the instruction it names.
    """
    instrs = list(_df_instructions(t))
    stages: set[str] = set()
    global_args: dict[str, tuple[str, int, int]] = {}
    stage_vars: dict[str, tuple[str, int, int]] | None = None  # None: before the first FROM
    for instr, a, e in instrs:
        if instr == "FROM":
            words = _df_words(t, a, e)
            for k, (_, _, w) in enumerate(words):
                if w.upper() == "AS" and k + 1 < len(words):
                    stages.add(words[k + 1][2].lower())
    for instr, a, e in instrs:
        words = _df_words(t, a, e)
        if instr == "ONBUILD" and words:
            instr = words[0][2].upper()
            words = words[1:]
        if instr in ("ARG", "ENV"):
            scope = global_args if stage_vars is None else stage_vars
            for name, vs, ve in _df_definitions(t, instr, words):
                if vs < 0:  # ``ARG NAME``: a global ARG made visible in this stage, else empty
                    if stage_vars is not None and name in global_args:
                        scope[name] = global_args[name]
                    else:
                        scope.pop(name, None)
                    continue
                scope[name] = (t.text[vs:ve], vs, ve)
                t.define(name, vs, ve)
                t.scope = scope
                _definition(t, name, vs, ve, "dockerfile:" + instr)
                t.scope = None
            continue
        if instr == "FROM":
            img = next((w for w in words if not w[2].startswith("--")), None)
            if img is not None:
                t.scope = global_args  # FROM sees only the ARGs declared before the first FROM
                _df_source(t, img[0], img[1], stages, "dockerfile:FROM")
                t.scope = None
            stage_vars = {}
            continue
        t.scope = stage_vars if stage_vars is not None else global_args
        for ws, _, w in words:
            if not w.startswith("--"):
                break
            if instr in ("COPY", "ADD") and w.startswith("--from="):
                _df_source(t, ws + 7, ws + len(w), stages, f"dockerfile:{instr}--from")
            elif instr == "RUN" and w.startswith("--mount="):
                off = ws + 8
                for field_ in w[8:].split(","):
                    if field_.startswith("from="):
                        _df_source(t, off + 5, off + len(field_), stages, "dockerfile:RUN--mount")
                    off += len(field_) + 1
        t.scope = None
    _scan_commands(t)


def _df_definitions(t: _Text, instr: str, words: list[tuple[int, int, str]]) -> Iterator[tuple[str, int, int]]:
    """(name, value start, value end) of each variable an ``ARG``/``ENV`` instruction defines.

    ``ARG A=x B="y"`` defines two; ``ARG A`` yields (A, -1, -1); ``ENV NAME value`` (the legacy
    form) takes the rest of the instruction as the value. Quotes around a value are not part of it.
    """
    if instr == "ENV" and len(words) >= 2 and "=" not in words[0][2]:
        if re.fullmatch(r"[A-Za-z_]\w*", words[0][2]):
            yield words[0][2], words[1][0], words[-1][1]
        return
    for ws, we, w in words:
        name, eq, value = w.partition("=")
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            continue
        if not eq:
            if instr == "ARG":
                yield name, -1, -1
            continue
        vs = ws + len(name) + 1
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            yield name, vs + 1, we - 1
        else:
            yield name, vs, we


_GROOVY_IMAGE = re.compile(r"\bimage[ \t]*(?::|\()?[ \t]*(['\"])(?P<v>[^'\"\n]*)\1")
_GROOVY_AGENT = re.compile(r"\bdocker[ \t]+(['\"])(?P<v>[^'\"\n]*)\1")


def _scan_jenkinsfile(t: _Text) -> list[HelmImage]:
    text = t.text
    for rx, ctx in ((_GROOVY_IMAGE, "jenkins:image"), (_GROOVY_AGENT, "jenkins:docker")):
        for m in rx.finditer(text):
            if t.in_comment(m.start(), ("//", "#")):
                continue
            t.emit(m.start("v"), m.end("v"), ctx, True)
    for _, ls, line in t.lines():
        if not line.lstrip().startswith(("//", "*", "/*")):
            _assignment(t, ls, line, "jenkins:assignment")
    _scan_commands(t, ("//", "#"))
    return _scan_yaml(t, "yaml", only_image_keys=True)


_JSON_IMAGE = re.compile(r'"image"[ \t]*:[ \t]*"(?P<v>[^"\\\n]*)"')
_QUADLET_IMAGE = re.compile(r"^[ \t]*Image[ \t]*=[ \t]*(?P<v>[^\s#;]+)[ \t]*$", re.M)


_JSON_FEATURES = re.compile(r'"features"[ \t\r\n]*:[ \t\r\n]*\{')
_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _scan_devcontainer(t: _Text) -> None:
    """devcontainer.json: ``"image"`` and the OCI features (``"features": {"ghcr.io/org/f/node:1": {...}}``);
    its ``//`` and ``/* */`` comments are skipped (the format is JSON with comments).

    A feature is an OCI artifact whose install script runs in the build, so it is an ``image``
    reference; pin writes it as ``name@digest`` (the devcontainer CLI refuses a tag with a digest).
    Only keys naming a registry (``host.tld/...``) are features of that kind; local (``./f``) and
    URL features name no registry artifact.
    """
    for m in _JSON_IMAGE.finditer(t.text):
        if not t.in_comment(m.start(), ("//",)):
            t.emit(m.start("v"), m.end("v"), "devcontainer:image", True)
    text = t.text
    for fm in _JSON_FEATURES.finditer(text):
        if t.in_comment(fm.start(), ("//",)):
            continue
        depth, i = 1, fm.end()
        while i < len(text) and depth > 0:
            c = text[i]
            if c == '"':
                sm = _JSON_STRING.match(text, i)
                if sm is None:
                    break
                after = text[sm.end():sm.end() + 64].lstrip()
                key = sm.group(0)[1:-1]
                if depth == 1 and after.startswith(":") and "." in key.split("/", 1)[0] and "/" in key:
                    t.emit(sm.start() + 1, sm.end() - 1, "devcontainer:feature", True)
                i = sm.end()
                continue
            if text.startswith("//", i):
                nl = text.find("\n", i)
                i = len(text) if nl == -1 else nl
                continue
            if text.startswith("/*", i):
                close = text.find("*/", i + 2)
                i = len(text) if close == -1 else close + 2
                continue
            depth += 1 if c == "{" else -1 if c == "}" else 0
            i += 1


_TF_BLOCK = re.compile(r'^[ \t]*(?P<what>resource|data)[ \t]+"(?P<type>[\w-]+)"[ \t]+"[^"]*"[ \t]*\{')
_TF_ATTR = re.compile(r'^[ \t]*(?P<k>image|name)[ \t]*=[ \t]*"(?P<v>[^"\n]*)"')
_TF_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _scan_terraform(t: _Text) -> None:
    """Terraform: the images the Docker and Kubernetes providers pull.

    ``image = "..."`` anywhere inside a ``docker_container``/``docker_service``/``kubernetes_*``
    block (containers, init containers, job templates); ``name = "..."`` of a ``docker_image``
    resource and a ``docker_registry_image`` data source (the image read); a ``docker_registry_image``
    *resource* is the image this configuration pushes (``built-here``). ``image`` in other
    resources (a cloud VM's boot image) is not an OCI image and is not read. ``"${var.x}"`` values
    are indirect; bare expressions (``var.image``) hold no text to read.
    """
    block: tuple[str, str] | None = None
    depth = 0
    for _, ls, line in t.lines():
        code = line.split("#", 1)[0] if "#" in line and '"' not in line.split("#", 1)[0] else line
        if code.lstrip().startswith(("//", "#", "/*", "*")):
            continue
        if depth == 0:
            bm = _TF_BLOCK.match(code)
            if bm:
                block = (bm.group("what"), bm.group("type"))
        am = _TF_ATTR.match(code)
        if am and block is not None:
            what, typ = block
            key = am.group("k")
            s, e = ls + am.start("v"), ls + am.end("v")
            if key == "image" and typ.startswith(("docker_container", "docker_service", "kubernetes_")):
                t.emit(s, e, f"terraform:{typ}.image", True)
            elif key == "name" and depth == 1 and typ == "docker_image" and what == "resource":
                t.emit(s, e, "terraform:docker_image.name", True)
            elif key == "name" and depth == 1 and typ == "docker_registry_image":
                if what == "data":
                    t.emit(s, e, "terraform:docker_registry_image.name", True)
                else:
                    t.emit(s, e, "terraform:docker_registry_image.name", False, classification="built-here")
        bare = _TF_STRING.sub('""', code)
        depth += bare.count("{") - bare.count("}")
        if depth <= 0:
            depth = 0
            if "}" in bare:
                block = None


_QUADLET_TRANSPORTS = ("dir:", "docker-archive:", "oci-archive:", "oci:", "containers-storage:", "sif:")


def _scan_quadlet(t: _Text) -> None:
    """Quadlet units (``.container``, ``.image``, ``.volume``): ``Image=`` in any section.

    ``docker://`` and ``docker-daemon:`` prefixes are transports (the reference follows them);
    local transports (``oci-archive:``, ``containers-storage:``...) name no registry image;
    ``Image=app.build`` is the image another unit builds here, ``Image=app.image`` names an
    ``.image`` unit (scanned as a file of its own).
    """
    for m in _QUADLET_IMAGE.finditer(t.text):
        v, s, e = m.group("v"), m.start("v"), m.end("v")
        if v.startswith(_QUADLET_TRANSPORTS):
            continue
        for prefix in ("docker://", "docker-daemon:"):
            if v.startswith(prefix):
                s += len(prefix)
                v = v[len(prefix):]
        if v.endswith(".build"):
            t.emit(s, e, "quadlet:Image", False, classification="built-here")
        elif v.endswith(".image"):
            t.emit(s, e, "quadlet:Image", False, classification="not-an-image")
        else:
            t.emit(s, e, "quadlet:Image", True)


# --------------------------------------------------------------------------------------------
# Entry points


def scan_text(path: str, text: str, kind: str, env: dict[str, str] | None = None) -> FileScan:
    """Every reference in one file's text, by format ``kind`` (see :func:`tasks.scan.ci_files.classify`).

    ``env``: variables from outside the file (a Compose project's ``.env``) for resolving
    indirect references; they make a reference resolvable, never rewritable here.
    """
    if kind == "yaml" and "tekton.dev/" in text and re.search(r"^apiVersion:[ \t]*['\"]?tekton\.dev/", text, re.M):
        kind = "tekton"  # Tekton resources live under any name; their apiVersion says what they are
    t = _Text(path, text)
    t.env = dict(env or {})
    fs = FileScan(path, kind, text)
    if kind in YAML_KINDS:
        fs.helm = _scan_yaml(t, kind)
        _scan_commands(t)
    elif kind == "dockerfile":
        _scan_dockerfile(t)
    elif kind == "jenkinsfile":
        fs.helm = _scan_jenkinsfile(t)
    elif kind == "devcontainer":
        _scan_devcontainer(t)
    elif kind == "quadlet":
        _scan_quadlet(t)
    elif kind == "terraform":
        _scan_terraform(t)
    elif kind == "dotenv":
        # only image-named variables: a .env holds secrets too, and no other value is read as a reference
        for _, ls, line in t.lines():
            m = _ASSIGN.match(line)
            if m and is_image_name(m.group("name")) and not line.lstrip().startswith("#"):
                _assignment(t, ls, line, "dotenv:assignment")
    elif kind in ("makefile", "shell"):
        for _, ls, line in t.lines():
            if not line.lstrip().startswith("#"):
                _assignment(t, ls, line, f"{kind}:assignment")
        if kind == "shell":
            _shell_assign_defaults(t)
        _scan_commands(t)
    t.resolve_indirect()
    fs.actions = t.actions
    fs.found = t.results()
    return fs


def scan_tree(
    root: str | os.PathLike[str],
    needles: Sequence[str] | None = None,
    *,
    always: Iterable[str] = ("github-workflow", "github-action"),
    report_mentions: bool = True,
) -> ScanResult:
    """Scan a checkout.

    ``needles`` None: parse every recognised file (the lint gate). Otherwise parse only
    recognised files whose bytes contain a needle (formats in ``always`` are parsed
    regardless, for action uses), and list unrecognised non-prose files that contain one
    in ``mentions`` so nothing that names an affected image goes unseen.
    """
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_s):
        raise InputError(str(root), "not a directory")
    root_real = os.path.realpath(root_s)
    bneedles = _minimal([n.encode() for n in needles]) if needles is not None else None
    always_s = frozenset(always)
    res = ScanResult(root_s)
    for rel, entry in walk_files(root_s):
        if entry.is_symlink():
            skip = _symlink_skip(rel, entry.path, root_real)
            if skip is not None:
                res.skipped.append(skip)
            continue
        kind = _UNSET
        if bneedles is None:
            kind = classify(rel)
            if kind is None:
                continue
        res.scanned += 1
        out = _scan_one(rel, entry.path, kind, bneedles, always_s, report_mentions)
        if isinstance(out, FileScan):
            res.files.append(out)
        elif isinstance(out, ScanSkip):
            res.skipped.append(out)
        elif out is not None:
            res.mentions.append(out)
    _gitlab_includes(res, root_s)
    _compose_env_files(res, root_s)
    res.files.sort(key=lambda f: f.path)
    res.skipped.sort(key=lambda s: (s.path, s.line or 0))
    res.mentions.sort()
    return res


_INCLUDE_ITEM = re.compile(r"^[ \t]*(?:-[ \t]+)?(?:local:[ \t]*)?['\"]?(?P<p>/?[^\s'\"#:]+\.ya?ml)['\"]?[ \t]*(?:#.*)?$")
_INCLUDE_INLINE = re.compile(r"^include:[ \t]*['\"]?(?P<p>/?[^\s'\"#:]+\.ya?ml)['\"]?[ \t]*(?:#.*)?$", re.M)


def _gitlab_include_paths(text: str) -> list[str]:
    """Repository-local files a GitLab CI file ``include:``s (``local:`` entries and bare paths).

    ``project:``/``remote:``/``template:``/``component:`` entries name files outside the
    repository and are left alone; a ``file:`` under ``project:`` is another repository's.
    """
    out = [m.group("p") for m in _INCLUDE_INLINE.finditer(text)]
    inside = False
    other_repo = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace() and not line.startswith("-"):
            inside = line.startswith("include:") and not line[len("include:"):].strip()
            continue
        if not inside:
            continue
        item = line.lstrip()
        if item.startswith("- "):
            other_repo = False
        if re.match(r"(?:-[ \t]+)?(?:project|remote|template|component):", item):
            other_repo = True
            continue
        if other_repo or item.startswith(("file:", "- file:", "rules:", "inputs:")):
            continue
        m = _INCLUDE_ITEM.match(line)
        if m:
            out.append(m.group("p"))
    return out


def _gitlab_includes(res: ScanResult, root: str) -> None:
    """Re-read the files a ``.gitlab-ci.yml`` includes from the repository as GitLab CI (wildcards allowed)."""
    by_path = {fs.path: i for i, fs in enumerate(res.files)}
    todo = [fs for fs in res.files if fs.kind == "gitlab-ci"]
    seen: set[str] = set()
    while todo:
        fs = todo.pop()
        for pattern in _gitlab_include_paths(fs.text):
            pat = pattern.lstrip("/")
            matches = [p for p in by_path if fnmatch.fnmatchcase(p, pat)] if any(c in pat for c in "*?[") else [pat]
            for rel in matches:
                i = by_path.get(rel)
                if i is None or rel in seen or res.files[i].kind == "gitlab-ci":
                    continue
                seen.add(rel)
                res.files[i] = scan_text(rel, res.files[i].text, "gitlab-ci")
                todo.append(res.files[i])


_COMPOSE_CMD = re.compile(r"(?<![\w/.-])(?:docker[ \t]+compose|docker-compose|podman[ \t]+compose|podman-compose)"
                          r"(?P<args>(?:[ \t]+[^\s;|&#]+)*)")
_COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


def _compose_env_refs(text: str) -> list[str]:
    """The files a Compose file's services name under ``env_file:`` (a string, a list, or ``- path:`` items)."""
    out: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(?P<ws>[ \t]*)env_file:[ \t]*(?P<v>.*?)[ \t]*(?:#.*)?$", line)
        if not m:
            continue
        v = m.group("v")
        if v.startswith("["):
            out += [x.strip().strip("'\"") for x in v.strip("[]").split(",") if x.strip()]
            continue
        if v:
            out.append(v.strip("'\""))
            continue
        indent = len(m.group("ws"))
        for nxt in lines[i + 1:]:
            if not nxt.strip() or nxt.lstrip().startswith("#"):
                continue
            if len(nxt) - len(nxt.lstrip()) <= indent and not nxt.lstrip().startswith("-"):
                break
            im = re.match(r"^[ \t]*(?:-[ \t]+)?(?:path:[ \t]*)?['\"]?(?P<p>[^\s'\"#]+)['\"]?[ \t]*(?:#.*)?$", nxt)
            if im and not re.match(r"^[ \t]*(?:-[ \t]+)?(?:required|format):", nxt):
                out.append(im.group("p"))
    return out


def _compose_commands(text: str) -> list[tuple[list[str], list[str]]]:
    """``[(compose files, env files)]`` of each ``docker compose ... --env-file X [-f F]`` command in ``text``."""
    out = []
    for m in _COMPOSE_CMD.finditer(text):
        words = [w.strip("'\"") for w in m.group("args").split()]
        files: list[str] = []
        envs: list[str] = []
        k = 0
        while k < len(words):
            w = words[k]
            for opt, into in (("--env-file", envs), ("--file", files), ("-f", files)):
                if w == opt and k + 1 < len(words):
                    into.append(words[k + 1])
                    k += 1
                    break
                if w.startswith(opt + "=") and opt != "-f":
                    into.append(w[len(opt) + 1:])
                    break
            k += 1
        if envs:
            out.append((files, envs))
    return out


def _compose_env_files(res: ScanResult, root: str) -> None:
    """Env files beyond a Compose project's ``.env``, read the way Compose and its callers use them.

    - ``env_file:`` of a service: the container's environment (not interpolation): the file is
      scanned for image-named variables like a ``.env``, so a reference it holds is found and pinned;
    - ``docker compose --env-file X [-f F]`` in a script, Makefile or CI file: X is F's interpolation
      environment (before its ``.env``), so ``image: ${KICS_IMAGE}`` resolves; X is scanned as well.

    Paths are taken relative to the naming file's folder, then the repository root; files outside the
    repository and symlinks are never read.
    """
    env = _EnvFiles(res, root)
    env_for: dict[str, dict[str, str]] = {}
    for fs in list(res.files):
        base = os.path.dirname(fs.path)
        if fs.kind == "compose":
            for name in _compose_env_refs(fs.text):
                env.read(base, name)
        if fs.kind == "dotenv" or "compose" not in fs.text:
            continue
        for files, envs in _compose_commands(fs.text):
            values: dict[str, str] = {}
            for name in envs:
                for k, v in env.read(base, name).items():
                    values.setdefault(k, v)
            targets = [env.locate(base, f) for f in files] if files else \
                [env.locate(base, n) or env.locate("", n) for n in _COMPOSE_NAMES]
            for rel in targets if values else ():
                if rel is not None:
                    merged = env_for.setdefault(rel, {})
                    for k, v in values.items():
                        merged.setdefault(k, v)
    for rel, values in env_for.items():
        i = env.by_path.get(rel)
        if i is not None and res.files[i].kind == "compose":
            folder = os.path.dirname(os.path.join(root, rel))
            res.files[i] = scan_text(rel, res.files[i].text, "compose", env={**read_dotenv(folder), **values})


class _EnvFiles:
    """Env files named by Compose files and commands: located inside the repository, scanned once as dotenv."""

    def __init__(self, res: ScanResult, root: str) -> None:
        self.res = res
        self.root = root
        self.root_real = os.path.realpath(root)
        self.by_path = {fs.path: i for i, fs in enumerate(res.files)}

    def locate(self, base: str, name: str) -> str | None:
        """``name`` relative to ``base`` (then the root) as a repository path; None outside it, for symlinks, or missing."""
        if "$" in name or name.startswith("/"):
            return None
        for folder in (base, ""):
            rel = os.path.normpath(os.path.join(folder, name)).replace(os.sep, "/")
            full = os.path.join(self.root, rel)
            if rel.startswith("../") or not os.path.realpath(full).startswith(self.root_real + os.sep):
                continue
            if os.path.isfile(full) and not os.path.islink(full):
                return rel
        return None

    def read(self, base: str, name: str) -> dict[str, str]:
        """The variables of env file ``name`` (empty when it cannot be read); scanned into the result once."""
        rel = self.locate(base, name)
        if rel is None:
            return {}
        data = _read_capped(os.path.join(self.root, rel))
        if not isinstance(data, bytes) or b"\0" in data:
            return {}
        text = data.decode("utf-8", "replace")
        if rel not in self.by_path:
            self.by_path[rel] = len(self.res.files)
            self.res.files.append(scan_text(rel, text, "dotenv"))
            if rel in self.res.mentions:  # an unrecognised file naming a needle: recognised now
                self.res.mentions.remove(rel)
        return _parse_dotenv(text)


def _symlink_skip(rel: str, path: str, root_real: str) -> ScanSkip | None:
    """Why a symlinked file of a recognised format is not scanned (symlinks are never followed); None for others."""
    if classify(rel) is None:
        return None
    target = os.path.realpath(path)
    if target == root_real or target.startswith(root_real + os.sep):
        return ScanSkip(rel, None, "symlink to a file inside the repository (scanned at its own path)")
    return ScanSkip(rel, None, "symlink pointing outside the repository (not followed)")


def _scan_one(
    rel: str, path: str, kind: str | None | object, bneedles: list[bytes] | None, always: frozenset[str], report_mentions: bool,
) -> FileScan | ScanSkip | str | None:
    """One regular file of the walk: its scan, a skip, a mention (the path of an unrecognised file naming a needle), or None.

    ``kind`` is the file's format when the caller classified it already, else ``_UNSET``
    (with needles, classification waits until the bytes pass the prefilter).
    """
    data = _read_capped(path)
    if isinstance(data, str):
        kind = classify(rel) if kind is _UNSET else kind
        return ScanSkip(rel, None, data) if kind is not None or bneedles is not None else None
    if data is None:  # oversized
        kind = classify(rel) if kind is _UNSET else kind
        if kind is not None or (bneedles and _big_file_mentions(path, bneedles)):
            return ScanSkip(rel, None, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
        return None
    if bneedles is not None:
        hit = False
        for n in bneedles:
            if n in data:
                hit = True
                break
        if not hit and not ("/.github/" in rel or rel.startswith(".github/") or rel.endswith(("action.yml", "action.yaml"))):
            return None
        kind = classify(rel)
        if not hit:
            if kind not in always:
                return None
            lowered = data.lower()
            if not any(n in lowered for n in bneedles):
                return None
    if b"\0" in data:
        return ScanSkip(rel, None, "binary file") if kind is not None or bneedles is not None else None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return ScanSkip(rel, None, f"not UTF-8 (byte {e.start})")
    if kind is None:
        return rel if report_mentions and not rel.lower().endswith(PROSE_SUFFIXES) else None
    assert isinstance(kind, str)
    return scan_text(rel, text, kind, env=read_dotenv(os.path.dirname(path)) if kind == "compose" else None)


_DOTENV = re.compile(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*?)[ \t]*$")


def read_dotenv(folder: str) -> dict[str, str]:
    """A Compose project's ``.env`` (``KEY=value`` lines, quotes removed); empty when there is none."""
    data = _read_capped(os.path.join(folder, ".env"))
    if not isinstance(data, bytes):
        return {}
    return _parse_dotenv(data.decode("utf-8", "replace"))


def _parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=value`` lines of an env file (quotes removed, first definition wins)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _DOTENV.match(line)
        if m and not line.lstrip().startswith("#"):
            v = m.group(2)
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            out.setdefault(m.group(1), v)
    return out


_UNSET: object = object()
_CHUNK = 1 << 16


def _minimal(needles: list[bytes]) -> list[bytes]:
    """Drop needles that contain another needle (a file matching the longer one matches the shorter)."""
    uniq = sorted(set(needles), key=len)
    out: list[bytes] = []
    for n in uniq:
        if not any(m in n for m in out):
            out.append(n)
    return out


def _read_capped(path: str) -> bytes | str | None:
    """The file's bytes; None when larger than the cap; a reason string when it cannot be read.

    ``os.open``/``os.read`` with ``O_NOFOLLOW`` instead of ``open()``: a third of the cost per
    file on a 10,000-file walk, and a symlink swapped in after the walk is never followed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        return f"cannot read: {e.strerror}"
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        parts = [data]
        total = len(data)
        while True:
            chunk = os.read(fd, _CHUNK * 4)
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                return None
            parts.append(chunk)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    finally:
        os.close(fd)


def _big_file_mentions(path: str, needles: list[bytes]) -> bool:
    """Chunked needle search in an oversized file (so a skip is reported only where it matters)."""
    keep = max(len(n) for n in needles)
    tail = b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                buf = tail + chunk
                if any(n in buf for n in needles):
                    return True
                tail = buf[-keep:]
    except OSError:
        return True
    return False


def scan_file(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> FileScan | None:
    """Scan one file (for hooks handed file names); None when its format is not recognised."""
    p = Path(path)
    rel = os.path.relpath(p, root) if root else p.name
    kind = classify(rel.replace(os.sep, "/")) or classify(p.name)
    if kind is None:
        return None
    text = p.read_bytes().decode("utf-8")
    return scan_text(rel.replace(os.sep, "/"), text, kind)
