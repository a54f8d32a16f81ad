"""Config keys named in hand-written pages, checked against the schemas.

A page names a key in inline code: `data.upscaler`, `grpo.max_steps=10`, `study.checks.repeats`. Every such
name whose first part is a section of the training or the study config (`data`, `grpo`, `study`, ...) must be
a key or a section of one of them, or a reward's parameter (`rewards.<name>.<param>`). File names that look
like keys (`study.sqlite`, `eval.log`) and names with placeholders (`data.backbone.*`, `rewards/<name>/mean`)
are not keys. Code blocks are left to the command check (tests/docs/test_doc_commands.py): their
`key=value` arguments are composed there.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from functools import cache

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
KEY = re.compile(r"^\+{0,2}([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)+)(?:=\S*)?$")
FILE_ENDINGS = {
    "py",
    "yaml",
    "yml",
    "json",
    "jsonl",
    "md",
    "png",
    "csv",
    "sqlite",
    "txt",
    "log",
    "html",
    "pkl",
    "pt",
    "safetensors",
    "sbatch",
    "toml",
    "pth",
    "bin",
    "param",
}


@dataclass(frozen=True)
class Unknown:
    line: int
    key: str
    closest: tuple[str, ...]


def _paths(schema: type, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        out.add(path)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out |= _paths(type(default), f"{path}.")
    return out


@cache
def known_keys() -> frozenset[str]:
    """Every key and section of the training and study configs, and every reward parameter."""
    from coz_train.config import CozTrainConfig
    from coz_train.docs_reference.registries import rewards
    from coz_train.eval_sections import BackboneSection
    from coz_train.study.config import StudyConfig

    keys = _paths(CozTrainConfig) | _paths(StudyConfig)
    for reward in rewards():
        keys.add(f"rewards.{reward.name}")
        keys |= {f"rewards.{reward.name}.{p.name}" for p in reward.params}
    backbone = {f.name for f in dataclasses.fields(BackboneSection)}
    keys |= {f"rewards.sr_quality.backbone.{name}" for name in backbone if "rewards.sr_quality.backbone" in keys}
    return frozenset(keys)


@cache
def roots() -> frozenset[str]:
    return frozenset(k.split(".")[0] for k in known_keys() if "." in k)


def named_keys(markdown: str) -> list[tuple[int, str]]:
    """(line, key) for every config key a page names in inline code outside code blocks."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)  # keep line numbers
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for span in CODE_SPAN.findall(line):
            for token in span.split():
                match = KEY.match(token)
                if not match:
                    continue
                key = match.group(1)
                if key.split(".")[0] in roots() and key.rsplit(".", 1)[1] not in FILE_ENDINGS:
                    found.append((number, key))
    return found


def unknown_keys(markdown: str) -> list[Unknown]:
    keys = known_keys()
    return [
        Unknown(line, key, tuple(difflib.get_close_matches(key, keys, n=3, cutoff=0.7)))
        for line, key in named_keys(markdown)
        if key not in keys
    ]
