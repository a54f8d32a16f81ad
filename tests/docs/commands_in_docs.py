"""The `python -m coz_train...` commands of the README and the docs pages, as a reader would copy them.

Where commands are found: fenced code blocks (continuation lines joined, `#` comments dropped, `&&` / `;` /
`|` separating commands) and inline code spans that start with `python -m coz_train`. A command is
`python -m <module> ...`, `accelerate launch ... -m <module> ...` or `sbatch ... slurm/<script> ...` (the
module is the one the script hands its arguments, `-m <module> "$@"`). Blocks of another language (`python`, `yaml`, `text`) hold no
commands.

Placeholders, and what the checks make of them (compose-only: Hydra composes a config and touches no path,
so `/data/LSDIR` or `outputs/grpo_qwen/<time>/adapter` is just a string):
- `<...>` inside an argument stands for something the reader supplies; it is replaced by a plain word
  (`PLACEHOLDER`), since Hydra's override grammar (and the shell) would read `<` as syntax;
- an argument `...` means "the arguments above", an argument that is only a placeholder (`<overrides>`, `<run>`)
  arguments or a folder the reader supplies; both are dropped (folders are not checked);
- `[--flag value]` in square brackets is an optional argument written in usage style; the brackets are dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
INLINE = re.compile(r"(?<!`)`(python -m coz_train[^`]*)`(?!`)")
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
MODULE = re.compile(r"^coz_train(\.\w+)*$")


@dataclass(frozen=True)
class DocCommand:
    source: str  # file:line
    module: str
    args: tuple[str, ...]
    text: str  # as written, for messages


def _shell_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """(line number, command text) of a shell block, continuation lines joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", first_line
    for offset, line in enumerate(block.splitlines()):
        if not pending:
            start = first_line + offset
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def _split(text: str) -> list[list[str]]:
    """The commands of one shell line as token lists (comments dropped, split at && ; |)."""
    lexer = shlex.shlex(PLACEHOLDER.sub("PLACEHOLDER", text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    try:
        tokens = list(lexer)
    except ValueError as err:  # an unclosed quote: prose in a block without a language, or a broken command
        if re.search(r"-m\s+coz_train", text):
            raise ValueError(f"cannot split {text!r} as a shell line: {err}") from None
        return []
    for token in tokens:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def _sbatch_module(script: str) -> str | None:
    path = REPO / script
    if not path.is_file():
        return None
    found = re.search(r"-m\s+(coz_train[\w.]*)\s+\"\$@\"", path.read_text())  # the module handed "$@"
    return found.group(1) if found else None


def _command(tokens: list[str], source: str, text: str) -> DocCommand | None:
    module, rest = None, []
    if "-m" in tokens:
        i = tokens.index("-m")
        if (
            i + 1 < len(tokens)
            and MODULE.match(tokens[i + 1])
            and (tokens[0].startswith("python") or "launch" in tokens)
        ):
            module, rest = tokens[i + 1], tokens[i + 2 :]
    if module is None and tokens[0] == "sbatch":
        script = next((t for t in tokens if t.endswith(".sbatch")), None)
        if script:
            module = _sbatch_module(script) or f"<no -m coz_train in {script}>"
            rest = tokens[tokens.index(script) + 1 :]
    if module is None:
        return None
    args = []
    for arg in rest:
        if arg in ("...", "PLACEHOLDER"):  # "the arguments above", or arguments the reader supplies (<overrides>)
            continue
        arg = arg[1:] if arg.startswith("[-") else arg  # usage style: [--max-tiles 6]
        arg = arg[:-1] if arg.endswith("]") and "[" not in arg else arg
        args.append(arg)
    return DocCommand(source, module, tuple(args), text.strip())


def commands_in(path: Path) -> list[DocCommand]:
    markdown = path.read_text()
    name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    found: list[DocCommand] = []
    for match in FENCE.finditer(markdown):
        if match.group(1).lower() not in SHELL_LANGS:
            continue
        first = markdown.count("\n", 0, match.start(2)) + 1
        for line, text in _shell_lines(match.group(2), first):
            for tokens in _split(text):
                command = _command(tokens, f"{name}:{line}", text)
                if command:
                    found.append(command)
    outside = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    for number, line in enumerate(outside.splitlines(), start=1):
        for span in INLINE.findall(line):
            for tokens in _split(span):
                command = _command(tokens, f"{name}:{number}", span)
                if command:
                    found.append(command)
    return found


def documentation_files() -> list[Path]:
    """The README, every hand-written page of the site (the generated reference is not in docs/), the run cards
    and CONTRIBUTING.md: the pages a reader copies commands from. (slurm/README.md writes its array task's
    arguments symbolically, `data.shard=i`: not a command to copy.)"""
    return [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "recipes").glob("*.md")),
    ]
