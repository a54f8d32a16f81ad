"""The `grpo` config section's schema: TRL's `GRPOConfig` fields, read from a snapshot instead of from TRL.

The `grpo` section mirrors TRL's `GRPOConfig` field by field under TRL's own names, so that a misspelt or
mistyped `grpo.*` key stops a run when the config is composed. Building that schema from TRL's dataclass
means importing TRL (and with it transformers, PEFT, bitsandbytes, DeepSpeed): about 8 s before `--help`
could answer. The fields, their checkable types and defaults are therefore kept in `grpo_fields.json`,
written from the installed TRL by

    python -m coz_train.grpo_schema --write     # after installing a new TRL release
    python -m coz_train.grpo_schema --check     # exit 1, naming the differences, when the snapshot is stale

and tests/test_grpo_schema.py fails when the snapshot and the installed TRL disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Optional

SNAPSHOT = Path(__file__).with_name("grpo_fields.json")
SIMPLE = {"bool": bool, "int": int, "float": float, "str": str}


def type_name(annotation: Any) -> str:
    """A GRPOConfig field type as one OmegaConf can check: `int`, `int | None`, ... or `Any` for anything richer."""
    if annotation in SIMPLE.values():
        return annotation.__name__
    text = annotation if isinstance(annotation, str) else str(annotation)
    for name in SIMPLE:
        if text in (f"{name} | None", f"None | {name}", f"Optional[{name}]"):
            return f"{name} | None"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in SIMPLE.values():
            return f"{args[0].__name__} | None"
    return "Any"


def fields_from_trl() -> list[dict[str, Any]]:
    """[{name, type, default}] of the installed TRL's GRPOConfig (imports TRL)."""
    from trl import GRPOConfig

    rows = []
    for f in dataclasses.fields(GRPOConfig):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if hasattr(default, "value") and not isinstance(default, (int, float, str, bool)):
            default = default.value  # enums -> their string value
        rows.append({"name": f.name, "type": type_name(f.type), "default": default})
    return rows


def read_snapshot(path: Path = SNAPSHOT) -> dict[str, Any]:
    return json.loads(path.read_text())


def grpo_section(path: Path = SNAPSHOT) -> type:
    """The `grpo` schema dataclass from the snapshot."""
    specs = []
    for row in read_snapshot(path)["fields"]:
        name, kind, default = row["name"], row["type"], row["default"]
        if isinstance(default, (list, dict)):
            specs.append((name, Any, field(default_factory=lambda d=default: json.loads(json.dumps(d)))))
            continue
        if kind == "Any":
            annotation: Any = Any
        elif kind.endswith(" | None"):
            annotation = Optional[SIMPLE[kind.removesuffix(" | None")]]  # noqa: UP045 - OmegaConf reads typing.Optional
        else:
            annotation = SIMPLE[kind]
        specs.append((name, annotation, field(default=default)))
    return dataclasses.make_dataclass("GRPOSection", specs)


def differences(snapshot: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[str]:
    """What differs between two field lists, one line per field."""
    old, new = {r["name"]: r for r in snapshot}, {r["name"]: r for r in live}
    lines = [f"added in TRL: {name}" for name in new if name not in old]
    lines += [f"removed from TRL: {name}" for name in old if name not in new]
    for name in old.keys() & new.keys():
        for part in ("type", "default"):
            if old[name][part] != new[name][part]:
                lines.append(f"{name}: {part} {old[name][part]!r} -> {new[name][part]!r}")
    return sorted(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coz_train.grpo_schema", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {SNAPSHOT.name} from the installed TRL")
    action.add_argument("--check", action="store_true", help="compare the snapshot with the installed TRL")
    args = parser.parse_args(argv)
    import importlib.metadata

    trl_version = importlib.metadata.version("trl")
    live = fields_from_trl()
    if args.write:
        SNAPSHOT.write_text(json.dumps({"trl": trl_version, "fields": live}, indent=1) + "\n")
        print(f"{SNAPSHOT}: {len(live)} GRPOConfig fields of TRL {trl_version}")
        return 0
    snapshot = read_snapshot()
    changed = differences(snapshot["fields"], live)
    if changed:
        print(f"Error: {SNAPSHOT} (TRL {snapshot['trl']}) differs from the installed TRL {trl_version}: "
              f"{'; '.join(changed)}. Run python -m coz_train.grpo_schema --write and review the diff.", file=sys.stderr)
        return 1
    print(f"{SNAPSHOT.name} matches TRL {trl_version} ({len(live)} fields)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
