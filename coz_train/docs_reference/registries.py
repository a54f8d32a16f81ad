"""What the package's registries hold, for the reference: rewards, SR backbones, metrics.

Read from the registries themselves (`coz_train.rewards.registry`, `coz_train.sr.backbones`,
`coz_train.image_quality.registry.METRIC_NAMES`), so a reward, backbone or metric registered tomorrow is on
the page without anyone writing it there. Nothing is built: no model, weight or metric file loads.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coz_train.conf_dir import config_dir
from coz_train.docs_reference.source_comments import yaml_comments, yaml_header

REWARDS_FILE = "rewards/coz.yaml"  # the rewards group's option: every reward with its parameters


@dataclass(frozen=True)
class Param:
    name: str
    value: Any  # in conf/rewards/coz.yaml; None when the file leaves it out
    help: str  # the file's comment on it


@dataclass(frozen=True)
class RewardInfo:
    name: str
    doc: str
    params: tuple[Param, ...]  # weight first


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    uses_prompt: bool
    module: str
    doc: str  # the module docstring's first paragraph
    config: str  # conf/eval/backbone/<name>.yaml's leading comment


@dataclass(frozen=True)
class MetricInfo:
    name: str
    about: str
    higher_is_better: bool


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__) if getattr(obj, "__doc__", None) else ""


def _reward_doc(build: Any) -> str:
    """The builder's docstring; else that of the class it returns; else that of the function it binds with
    `named(<function>, ...)`."""
    if _doc(build):
        return _doc(build)
    globals_ = getattr(build, "__globals__", {})
    returned = inspect.signature(build).return_annotation
    if isinstance(returned, str) and isinstance(globals_.get(returned), type):
        return _doc(globals_[returned])
    tree = ast.parse(textwrap.dedent(inspect.getsource(build)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "named" and node.args:
            bound = globals_.get(getattr(node.args[0], "id", ""))
            if bound is not None:
                return _doc(bound)
    return ""


def rewards() -> list[RewardInfo]:
    import coz_train.rewards  # noqa: F401 - registers every reward
    from coz_train.rewards import registry

    path = Path(config_dir()) / REWARDS_FILE
    comments = yaml_comments(path)
    values = yaml.safe_load(path.read_text()) or {}
    out = []
    for name in registry.registered():
        spec = registry.reward_spec(name)
        given = values.get(name) or {}
        params = [Param(p, given.get(p), comments.get(f"{name}.{p}", "")) for p in ("weight", *sorted(spec.params))]
        out.append(RewardInfo(name, _reward_doc(spec.build), tuple(params)))
    return out


def backbones() -> list[BackboneInfo]:
    from coz_train.sr.backbones import BACKBONE_MODULES, backbone_uses_prompt, registered_backbones

    out = []
    for name in registered_backbones():
        module = f"coz_train.sr.backbones.{BACKBONE_MODULES[name]}"
        doc = _doc(importlib.import_module(module)).split("\n\n")[0]
        shipped = Path(config_dir()) / "eval" / "backbone" / f"{name}.yaml"
        config = yaml_header(shipped) if shipped.is_file() else ""
        out.append(BackboneInfo(name, backbone_uses_prompt(name), module, " ".join(doc.split()), config))
    return out


def metrics() -> list[MetricInfo]:
    from coz_train.image_quality.registry import METRIC_NAMES, higher_is_better

    return [MetricInfo(name, about, higher_is_better(name)) for name, about in METRIC_NAMES.items()]
