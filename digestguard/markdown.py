"""Text from outside (CI metadata, vendor answers, inventory names) made inert for each output, one function per output.

- :func:`md_cell` / :func:`md_table`: Markdown for Prefect artifacts, the approval form and pull request bodies
  (no table breakage, no raw HTML, no link, image, mention or autolink).
- :func:`md_code`: the same text inside a Markdown code span (`` `...` ``) that it cannot leave.
- :func:`mrkdwn`: Slack mrkdwn (no link, mention, channel ping, code-span break or autolink);
  :func:`slack_plain` for Slack ``plain_text`` (headers).
- :func:`html_text`: HTML text and attribute values.
- :func:`md_link`, :func:`mrkdwn_link`, :func:`html_link`: a clickable link only to a URL whose origin is one
  the inventory names (:func:`link_allowed`); any other URL is shown as inert text.

"Inert" means: whatever a job name, branch, tag, log line, vendor error or advisory says, the reader sees
those characters and nothing else. A URL in such text is defanged (``https[:]//evil[.]example``) so neither
GitHub's, Prefect's nor Slack's autolinker makes it clickable; an ``@name`` that could ping someone gets a
zero-width space after the ``@``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = ["defang", "html_link", "html_text", "link_allowed", "md_cell", "md_code", "md_link", "md_pre", "md_table",
           "mrkdwn", "mrkdwn_link", "origin_of", "slack_plain"]

_ZWSP = "\u200b"
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*)://([^\s/?#<>|`\]\)]*)")
_WWW = re.compile(r"(?i)\bwww\.")
_MENTION = re.compile(r"(?<![\w.\-/+])@(?=[\w\[!])")  # @team, @here, @[...]: not user@host, not image@sha256
_MD_SPECIAL = str.maketrans({"|": "\\|", "<": "&lt;", ">": "&gt;", "&": "&amp;", "[": "\\[", "]": "\\]",
                             "`": "\\`", "\r": " ", "\n": " ", "\t": " "})
_CODE_SPECIAL = str.maketrans({"`": "ˋ", "|": "\\|", "\r": " ", "\n": " ", "\t": " "})
_PRE_SPECIAL = str.maketrans({"\r": " ", "\n": " "})
_PLAIN_SPECIAL = str.maketrans({"<": "‹", ">": "›"})
_MRKDWN_SPECIAL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "ˋ"})


def defang(text: str) -> str:
    """URLs in ``text`` made unclickable but readable: ``https://evil.example/x`` -> ``https[:]//evil[.]example/x``."""
    text = _URL.sub(lambda m: f"{m.group(1)}[:]//{m.group(2).replace('.', '[.]')}", text)
    return _WWW.sub("www[.]", text)


def _inert(text: Any, table: dict[int, str], *, mentions: bool = False) -> str:
    """``text`` with ``table``'s characters escaped, then URLs defanged and pings broken (in that order, so the
    defanging brackets are not escaped again)."""
    s = defang(("" if text is None else str(text)).translate(table))
    return s if mentions else _MENTION.sub("@" + _ZWSP, s)


def md_cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell or list item: one line, no pipes, no raw HTML, no link,
    no image, no code span, no mention, no autolinked URL."""
    return _inert(text, _MD_SPECIAL)


def md_code(text: Any) -> str:
    """``text`` for inside a Markdown code span: a backtick cannot close it, a newline cannot end the line."""
    return _inert(text, _CODE_SPECIAL)


def md_pre(text: Any) -> str:
    """One line for inside a fenced code block (log evidence): no fence can close it, no URL or mention survives
    a later conversion to Slack mrkdwn."""
    return _inert(text, _PRE_SPECIAL).replace("```", "'''")


def md_table(rows: Sequence[Mapping[str, Any]], limit: int, *, more: str = "more row(s)",
             code: Iterable[str] = ()) -> list[str]:
    """A Markdown table of ``rows`` (columns from the first row), at most ``limit`` rows, then one line saying
    how many more. Every cell goes through :func:`md_cell` (columns named in ``code`` through :func:`md_code`,
    shown as code)."""
    if not rows:
        return []
    cols = list(rows[0].keys())
    as_code = set(code)

    def cell(c: str, v: Any) -> str:
        if c in as_code and v not in (None, ""):
            return f"`{md_code(v)}`"
        return md_cell(v)

    out = ["| " + " | ".join(md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        out.append("| " + " | ".join(cell(c, r.get(c, "")) for c in cols) + " |")
    if len(rows) > limit:
        out.append(f"| … {len(rows) - limit} {more} |" + " |" * (len(cols) - 1))
    return out


def mrkdwn(text: Any, *, mentions: bool = False) -> str:
    """Slack mrkdwn escaping: ``&``, ``<`` and ``>`` (so no link, mention or channel ping can be injected), a
    backtick that cannot end a code span, no ``@here``-style ping, no autolinked URL. ``mentions`` keeps an
    ``@handle`` as written: only for names the inventory gives (the approvers a request is meant to reach)."""
    return _inert(text, _MRKDWN_SPECIAL, mentions=mentions)


def slack_plain(text: Any) -> str:
    """Text for a Slack ``plain_text`` object (a header): shown as typed, so angle brackets become ``‹ ›`` (no
    ``<!channel>`` or ``<url|label>`` can ever be read as markup), URLs are defanged and pings broken."""
    return _inert(text, _PLAIN_SPECIAL)


def html_text(text: Any) -> str:
    """HTML text or attribute value."""
    return html.escape("" if text is None else str(text), quote=True)


# --------------------------------------------------------------------------- links


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lowercased; None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}" + (f":{port}" if port else "")


def link_allowed(url: str | None, origins: Iterable[str]) -> bool:
    """True when ``url`` is an http(s) URL without userinfo or control characters on one of ``origins``."""
    if not url or any(c in url for c in "|<> \"'`\n\r\t\\"):
        return False
    origin = origin_of(url)
    return origin is not None and origin in set(origins)


def md_link(url: str | None, label: Any, origins: Iterable[str]) -> str:
    """``[label](url)`` when the URL is allowed, else the label and the URL as inert text."""
    if link_allowed(url, origins):
        return f"[{md_cell(label)}]({url})"
    return md_cell(label) + (f" ({md_cell(url)})" if url else "")


def mrkdwn_link(url: str | None, label: Any, origins: Iterable[str]) -> str:
    """Slack ``<url|label>`` when the URL is allowed, else the label and the URL as inert text."""
    if link_allowed(url, origins):
        return f"<{url}|{mrkdwn(label)}>"
    return mrkdwn(label) + (f" ({mrkdwn(url)})" if url else "")


def html_link(url: str | None, label: Any, origins: Iterable[str]) -> str:
    """``<a href>`` when the URL is allowed, else the label (and the URL) as text."""
    if link_allowed(url, origins):
        return f'<a href="{html_text(url)}" rel="noopener noreferrer">{html_text(label)}</a>'
    return html_text(label) + (f' <span class="inert-url">({html_text(url)})</span>' if url else "")
