"""Help texts from source comments: the `# comment` of a dataclass field, and of a key in a YAML file.

A structured-config field documents itself with a trailing comment (`scale: int = 4  # each zoom step ...`).
Read with `tokenize` and `ast`, not by importing, so that the comment is the help text exactly as written:

- the trailing comment of the field's statement (of its last line, for a statement over several lines);
- without one, the comment lines right above the field (no blank line between; a `# ---` line is a
  separator, not help);
- comment lines right below a field with a trailing comment continue it when the next field has a trailing
  comment of its own (a help text wrapped onto the next line).

Tool pragmas (`noqa`, `type: ignore`, `pragma`) are not help text.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

PRAGMA = re.compile(r"\s*(noqa\b.*|type:\s*ignore.*|pragma\b.*)$")


@dataclass(frozen=True)
class ClassHelp:
    """What the source says of one class: its docstring and each annotated field's help text."""

    doc: str
    fields: dict[str, str]


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """(line -> trailing comment, line -> whole-line comment), without the `#` and pragmas."""
    trailing: dict[int, str] = {}
    alone: dict[int, str] = {}
    code_lines: set[int] = set()
    skip = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for tok in tokens:
        if tok.type not in skip:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        text = PRAGMA.sub("", tok.string.lstrip("#")).strip()
        line = tok.start[0]
        if line in code_lines:
            trailing[line] = text
        else:
            alone[line] = text
    return trailing, alone


def _block(alone: dict[int, str], first: int, last: int) -> list[str]:
    """The comment-only lines first..last in order, when every line between is one (else those after a gap)."""
    lines: list[str] = []
    for line in range(first, last + 1):
        if line in alone:
            lines.append(alone[line])
        else:
            lines = []  # a blank line or code: what came before is not about this field
    return lines


def _join(lines: list[str]) -> str:
    return " ".join(line for line in lines if line and not line.startswith("---")).strip()


def class_help(path: Path) -> dict[str, ClassHelp]:
    """Every class of a Python file: its docstring and its annotated fields' help texts."""
    source = Path(path).read_text()
    trailing, alone = _comments(source)
    out: dict[str, ClassHelp] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = [s for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        own = {
            f.target.id: next((trailing[n] for n in range(f.end_lineno, f.lineno - 1, -1) if trailing.get(n)), "")
            for f in fields
        }
        helps = dict(own)
        previous_end = node.body[0].lineno - 1 if node.body else node.lineno
        previous: ast.AnnAssign | None = None
        for stmt in node.body:
            above = _block(alone, previous_end + 1, stmt.lineno - 1)
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and above:
                name = stmt.target.id
                continues = (
                    previous is not None
                    and own.get(previous.target.id)
                    and own[name]
                    and len(above) == stmt.lineno - 1 - previous.end_lineno
                )  # right below it, no gap
                if continues:
                    helps[previous.target.id] = _join([own[previous.target.id], *above])
                elif not own[name]:
                    helps[name] = _join(above)
            previous = stmt if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) else None
            previous_end = stmt.end_lineno
        out[node.name] = ClassHelp(doc=ast.get_docstring(node) or "", fields=helps)
    return out


YAML_KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[\w@/.+-]+):(?P<rest>.*)$")


def _split_comment(text: str) -> tuple[str, str]:
    """(value, comment) of the rest of a YAML line; a `#` inside quotes is not a comment."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def yaml_comments(path: Path) -> dict[str, str]:
    """Dotted key -> its trailing comment (and the comment-only lines below it, indented past the comment's
    column, that continue it) in a YAML file of plain `key: value` maps."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last_key, last_column = "", -1
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if last_key and line.index("#") >= last_column > 0:
                out[last_key] = f"{out[last_key]} {stripped.lstrip('#').strip()}".strip()
            continue
        match = YAML_KEY.match(line)
        if not match or match["dash"]:
            last_key = "" if stripped else last_key
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        _, comment = _split_comment(match["rest"])
        last_key, last_column = (key, line.index("#", len(line) - len(match["rest"]))) if comment else ("", -1)
        if comment:
            out[key] = comment
    return out


def yaml_header(path: Path) -> str:
    """The comment block a YAML file starts with (Hydra's `@package` line and indented examples left out)."""
    lines: list[str] = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.strip().startswith("@package") or text.startswith("   "):
            continue
        lines.append(text.strip())
    return " ".join(lines).strip()
