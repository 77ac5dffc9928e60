"""Text from outside (CI metadata, vendor answers, inventory names) made inert for each output, one function per output.

- :func:`md_cell` / :func:`md_table`: Markdown for Prefect artifacts, the approval form and pull request bodies
  (no table breakage, no raw HTML).
- :func:`mrkdwn`: Slack mrkdwn, where only ``&``, ``<`` and ``>`` are control characters.
- :func:`html_text`: HTML text and attribute values.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

_MD_SPECIAL = str.maketrans({"|": "\\|", "<": "&lt;", ">": "&gt;", "\r": " ", "\n": " "})


def md_cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell or list item: one line, no pipes, no raw HTML."""
    return "" if text is None else str(text).translate(_MD_SPECIAL)


def md_table(rows: Sequence[Mapping[str, Any]], limit: int, *, more: str = "more row(s)") -> list[str]:
    """A Markdown table of ``rows`` (columns from the first row), at most ``limit`` rows, then one line saying how many more."""
    if not rows:
        return []
    cols = list(rows[0].keys())
    out = ["| " + " | ".join(md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        out.append("| " + " | ".join(md_cell(r.get(c, "")) for c in cols) + " |")
    if len(rows) > limit:
        out.append(f"| … {len(rows) - limit} {more} |" + " |" * (len(cols) - 1))
    return out


def mrkdwn(text: Any) -> str:
    """Slack mrkdwn escaping: ``&``, ``<`` and ``>`` (so no link, mention or channel ping can be injected)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def html_text(text: Any) -> str:
    """HTML text or attribute value."""
    return html.escape(str(text), quote=True)
