"""The one YAML loader of every file digestguard reads (inventories, advisory packs).

YAML as people write it has traps that silently change what a file says, and
an incident tool must refuse them loudly instead, naming the file, the line and the key:

* **duplicate keys**: a second ``images:`` or ``secrets:`` silently replaces the
  first in plain PyYAML; here it is an error naming both lines;
* **aliases that expand**: ``&a [*b, *b, ...]`` chains blow a few hundred bytes up
  to millions of nodes (measured: 483 bytes -> 69 MB on every plan hash); the
  expanded size of all aliases together is bounded by :data:`MAX_ALIAS_NODES`;
* **nesting**: deeper than :data:`MAX_DEPTH` levels is refused before the
  (recursive) composer runs, so a 20k-deep file cannot crash the process;
* **encodings**: the file must be UTF-8 (a UTF-8 byte-order mark is accepted);
  UTF-16 or Latin-1 text is refused with the offset of the first bad byte.

The checks run over libyaml's event stream (no recursion) before the document
is built with libyaml's safe loader (when present) plus a duplicate-key check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from digestguard.errors import InputError

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted."""
MAX_ALIAS_NODES = 10_000
"""How many nodes all aliases of one file may stand for together, once expanded."""

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: large inventories load fast
_parse_loader: Any = _Base


class _UniqueKeyLoader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a mapping that names the same key twice."""

    source = "<yaml>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                where = f"{self.source}:{key_node.start_mark.line + 1}"
                raise InputError(where, "a mapping key must be a plain value") from None
            line = key_node.start_mark.line + 1
            if key in seen:
                raise InputError(f"{self.source}:{line}", f"duplicate key (first at line {seen[key]}); "
                                 "a second one would silently replace the first", str(key))
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped); InputError naming the first bad byte otherwise."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputError(source, f"not UTF-8 text: byte {e.start} is {data[e.start]:#04x}{hint}; "
                                 "save the file as UTF-8") from None


def _check_events(text: str, source: str) -> None:
    """Refuse too-deep nesting and alias expansion beyond the bound, from the event stream (no recursion)."""
    stack: list[int] = []  # nodes counted so far inside each open collection
    anchors_open: list[str | None] = []
    sizes: dict[str, int] = {}
    expanded = 0
    for ev in yaml.parse(text, Loader=_parse_loader):
        line = ev.start_mark.line + 1 if ev.start_mark else 0
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append(0)
            anchors_open.append(ev.anchor)
            if len(stack) > MAX_DEPTH:
                raise InputError(f"{source}:{line}", f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size = stack.pop() + 1
            anchor = anchors_open.pop()
            if anchor:
                sizes[anchor] = size
            if stack:
                stack[-1] += size
        elif isinstance(ev, yaml.ScalarEvent):
            if ev.anchor:
                sizes[ev.anchor] = 1
            if stack:
                stack[-1] += 1
        elif isinstance(ev, yaml.AliasEvent):
            size = sizes.get(ev.anchor, 1)
            expanded += size
            if expanded > MAX_ALIAS_NODES:
                raise InputError(f"{source}:{line}", f"aliases expand to more than {MAX_ALIAS_NODES} nodes "
                                 f"(alias *{ev.anchor} stands for {size}); write the values out", f"*{ev.anchor}")
            if stack:
                stack[-1] += size


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document from ``text`` with every check above; InputError naming ``source`` and line."""
    try:
        _check_events(text, source)
        loader = _UniqueKeyLoader(text)
        loader.source = source
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(where, f"not valid YAML: {problem}") from None
    except RecursionError:
        raise InputError(source, f"nested too deeply (more than {MAX_DEPTH} levels)") from None


def load_yaml_file(path: str | Path, what: str = "file") -> Any:
    """Read ``path`` (UTF-8 only) and parse it with :func:`load_yaml_text`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(str(path), f"cannot read {what}: {e.strerror}") from None
    return load_yaml_text(decode_utf8(data, str(path)), str(path))
