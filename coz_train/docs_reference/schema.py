"""A structured-config schema as documentation: its sections and keys with type, values and help text.

The schema is the dataclass tree Hydra checks every composed config against (`CozTrainConfig`,
`StudyConfig`). A key's help text is the trailing comment of its field (`source_comments`); a section's is
its class docstring, else the comment of the field that holds it. Two sections are built at import time
and have no source of their own: `data.backbone` takes the help of the eval backbone's fields
(`BackboneSection`, whose keys it repeats, each optional), and `grpo` mirrors TRL's `GRPOConfig`, whose own
field metadata holds the help (read from the installed TRL).

Values: `value` is what a run gets without overrides (the primary config composed with its defaults list,
interpolations left as written), `default` what the dataclass says.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from coz_train.docs_reference.source_comments import ClassHelp, class_help, yaml_header

MISSING_VALUE = "???"  # OmegaConf's MISSING: a value that must be given (also a dataclass default)


@dataclass(frozen=True)
class Key:
    path: str  # dotted, from the root: data.upscaler
    type: str
    value: Any  # in the composed default config
    default: Any  # in the dataclass
    help: str


@dataclass(frozen=True)
class Section:
    path: str  # dotted; "" for the top level
    doc: str
    keys: tuple[Key, ...]


@dataclass(frozen=True)
class Option:
    name: str
    about: str  # the file's leading comment
    default: bool  # picked by the primary config's defaults list


@cache
def _source_help(path: str) -> dict[str, ClassHelp]:
    return class_help(Path(path))


def _class_source_help(cls: type) -> ClassHelp | None:
    try:
        path = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None
    return _source_help(path).get(cls.__name__) if path else None


@cache
def trl_grpo_help() -> dict[str, str]:
    """TRL's help text of every GRPOConfig field (its dataclass metadata)."""
    from trl import GRPOConfig

    return {f.name: " ".join(str(f.metadata.get("help", "")).split()) for f in dataclasses.fields(GRPOConfig)}


@cache
def derived_help() -> dict[str, Callable[[str], str]]:
    """Help of the sections built at import time, by class name: where their fields' help comes from."""
    from coz_train.eval_sections import BackboneSection

    backbone = _class_source_help(BackboneSection)
    return {
        "DataBackboneSection": lambda name: backbone.fields.get(name, "") if backbone else "",
        "GRPOSection": lambda name: trl_grpo_help().get(name, ""),
    }


def field_help(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls` (or of the class it inherits the field from)."""
    derived = derived_help()
    for klass in cls.__mro__:
        if klass.__name__ in derived:
            return derived[klass.__name__](name)
        found = _class_source_help(klass)
        if found and name in found.fields:
            return found.fields[name]
    return ""


def class_doc(cls: type) -> str:
    found = _class_source_help(cls)
    return " ".join(found.doc.split()) if found else ""


def type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if annotation is Any:
        return "Any"
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        rest = [type_name(a) for a in args if a is not type(None)]
        return f"{' | '.join(rest)} | None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING_VALUE


def _lookup(tree: Any, path: str) -> Any:
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def sections(schema: type, composed: dict | None = None, prefix: str = "", doc: str = "") -> list[Section]:
    """Every section of `schema` (depth first, the top level first) with its keys; `composed`: the default
    config as a plain container (`OmegaConf.to_container(cfg, resolve=False)`)."""
    keys: list[Key] = []
    nested: list[Section] = []
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        default = _default(f)
        if dataclasses.is_dataclass(default):
            sub_doc = class_doc(type(default)) or field_help(schema, f.name)
            nested += sections(type(default), composed, f"{path}.", sub_doc)
            continue
        keys.append(
            Key(
                path,
                type_name(f.type),
                _lookup(composed, path) if composed is not None else default,
                default,
                field_help(schema, f.name),
            )
        )
    return [Section(prefix.rstrip("."), doc or class_doc(schema), tuple(keys)), *nested]


def compose_default(config_name: str, register: Callable[[], None]) -> tuple[dict, dict[str, str]]:
    """The primary config `config_name` composed without overrides (plain, interpolations as written), and the
    option each config group picked."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from coz_train.conf_dir import config_dir

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True)
    choices = {str(k): str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None}
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    return tree, choices


def group_options(conf: Path, choices: dict[str, str]) -> dict[str, list[Option]]:
    """Config group (as a dotted section path, `eval.backbone`) -> its options, one YAML file each."""
    out: dict[str, list[Option]] = {}
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        group = folder.relative_to(conf).as_posix()
        out[group.replace("/", ".")] = [
            Option(p.stem, yaml_header(p), choices.get(group) == p.stem) for p in sorted(folder.glob("*.yaml"))
        ]
    return out
