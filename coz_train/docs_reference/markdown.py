"""Markdown pieces of the reference pages: table cells that hold any text, values as code, tables."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# characters that would end a table cell or start markup in a cell of plain text
PLAIN = str.maketrans({"|": "&#124;", "*": "&#42;", "_": "&#95;", "[": "&#91;", "]": "&#93;", "\\": "&#92;"})
VALUE_WIDTH = 60  # longer values are cut (the YAML file holds them whole)


def _plain(text: str) -> str:
    return html.escape(text, quote=False).translate(PLAIN)


def code(text: str) -> str:
    """Inline code that survives a table cell (pipes and markup characters as entities)."""
    return f"<code>{_plain(text)}</code>"


def cell(text: str) -> str:
    """A help text as one table cell: its backtick spans as code, everything else as plain text."""
    text = " ".join(str(text).split())
    out, last = [], 0
    for match in CODE_SPAN.finditer(text):
        out += [_plain(text[last : match.start()]), code(match.group(2))]
        last = match.end()
    out.append(_plain(text[last:]))
    return "".join(out)


def value_text(value: Any) -> str:
    """A config value as YAML writes it (null, true, [a, b]), cut to VALUE_WIDTH characters."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False).replace('"', "")
    elif isinstance(value, str) and value == "":
        text = '""'
    else:
        text = str(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def value(value: Any) -> str:
    return code(value_text(value))


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fenced(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def heading(level: int, title: str, anchor: str) -> str:
    """A heading with a fixed id (attr_list), so hand-written pages can link `page.md#<anchor>`."""
    return f"{'#' * level} {title} {{ #{anchor} }}\n"
