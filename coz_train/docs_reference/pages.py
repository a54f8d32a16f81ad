"""The reference pages as Markdown, each written from the code by one function (`PAGES`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coz_train.conf_dir import config_dir
from coz_train.docs_reference import commands as cmds
from coz_train.docs_reference import registries
from coz_train.docs_reference.markdown import cell, code, fenced, heading, table, value
from coz_train.docs_reference.schema import MISSING_VALUE, Key, Option, Section, compose_default, group_options
from coz_train.docs_reference.schema import sections as schema_sections
from coz_train.docs_reference.source_comments import yaml_comments

GENERATED = (
    "*Written from the code each time the site is built (`coz_train/docs_reference`): change the source it "
    "names, not this page.*\n"
)


def _value_cell(key: Key) -> str:
    text = value(key.value)
    if key.default != key.value:
        text += "<br>schema: " + ("required" if key.default == MISSING_VALUE else value(key.default))
    return text


def _options(options: list[Option]) -> str:
    rows = [[code(o.name) + (" (default)" if o.default else ""), cell(o.about)] for o in options]
    return table(["option", "what it is"], rows)


def _section(section: Section, options: dict[str, list[Option]], group_file: Path | None, level: int = 2) -> str:
    title = f"`{section.path}`" if section.path else "Top-level keys"
    out = [heading(level, title, section.path or "top-level"), cell(section.doc) + "\n" if section.doc else ""]
    if section.path in options:
        out.append(f"Options (`{section.path.replace('.', '/')}=<option>`):\n\n{_options(options[section.path])}")
    if section.path == "grpo" and group_file is not None:
        out.append(_grpo_tables(section, group_file))
    else:
        rows = [[code(k.path), code(k.type), _value_cell(k), cell(k.help)] for k in section.keys]
        out.append(table(["key", "type", "value", "help"], rows))
    return "\n".join(part for part in out if part)


def _grpo_tables(section: Section, group_file: Path) -> str:
    """`grpo`: the fields the group file sets (with its source notes), then every other field of TRL's."""
    notes = yaml_comments(group_file)
    name = section.path + "."
    set_here = [k for k in section.keys if k.path.removeprefix(name) in notes or k.value != k.default]
    rest = [k for k in section.keys if k not in set_here]
    first = table(
        ["key", "value", "TRL default", f"note in conf/grpo/{group_file.name}", "TRL's help"],
        [
            [
                code(k.path),
                value(k.value),
                value(k.default),
                cell(notes.get(k.path.removeprefix(name), "")),
                cell(k.help),
            ]
            for k in set_here
        ],
    )
    second = table(
        ["key", "type", "default", "TRL's help"],
        [[code(k.path), code(k.type), value(k.default), cell(k.help)] for k in rest],
    )
    return (
        f"Set by `conf/grpo/{group_file.name}`:\n\n{first}\nEvery other field of TRL's `GRPOConfig`, at TRL's "
        f"default (`grpo.<field>=...` sets one):\n\n{second}"
    )


def config_page(title: str, intro: str, schema: type, config_name: str, register: Callable[[], None]) -> str:
    composed, choices = compose_default(config_name, register)
    conf = Path(config_dir())
    options = group_options(conf, choices) if config_name == "config" else {}
    out = [f"# {title}\n", GENERATED, intro]
    if options:
        groups = [g for g in options if g not in ("experiment",) and not g.startswith("hydra")]
        out.append(heading(2, "Experiments", "experiments"))
        out.append(
            "`+experiment=<name>` applies one of `conf/experiment/`, a delta over the defaults:\n\n"
            + _options(options.get("experiment", []))
        )
        out.append(heading(2, "Config groups", "config-groups"))
        rows = [
            [
                code(g.replace(".", "/")),
                ", ".join(code(o.name) + (" (default)" if o.default else "") for o in options[g]),
            ]
            for g in groups
        ]
        others = {g: options[g] for g in options if g.startswith("hydra")}
        rows += [[code(g.replace(".", "/")), ", ".join(code(o.name) for o in opts)] for g, opts in others.items()]
        out.append(table(["group", "options"], rows))
    for section in schema_sections(schema, composed):
        group = choices.get(section.path.replace(".", "/"))
        group_file = conf / section.path.replace(".", "/") / f"{group}.yaml" if group else None
        out.append(_section(section, options, group_file, level=2 if section.path.count(".") == 0 else 3))
    return "\n".join(out)


def configuration_page() -> str:
    from coz_train.config import CozTrainConfig, register_configs

    intro = (
        "Every key of the training config: `python -m coz_train`, `.data`, `.eval`, `.critic_server`, `.bench` "
        "and `.eval.checkpoints` compose `conf/config.yaml` with their `key=value` overrides and check the "
        "result against the dataclasses of `coz_train/config.py` (the evaluation's sections: `coz_train/eval_sections.py`). *value* is what a run gets without "
        "overrides (interpolations as written); *schema* is the dataclass default where the config files "
        "change it. Help texts are the trailing comments of the fields; `grpo` has TRL's own.\n\n"
        "`python -m coz_train --cfg job` prints a composed config without running anything "
        "(`--package data` prints one section).\n"
    )
    return config_page("Configuration reference", intro, CozTrainConfig, "config", register_configs)


def study_configuration_page() -> str:
    from coz_train.study.config import StudyConfig, register_study_config

    intro = (
        "Every key of `conf/study.yaml`, the config of `python -m coz_train.study build | serve | invite | "
        "analyze` (schema: `coz_train/study/config.py`), given as `key=value` after the command's folders.\n"
    )
    return config_page("Study configuration reference", intro, StudyConfig, "study", register_study_config)


def commands_page() -> str:
    out = [
        "# Commands\n",
        GENERATED,
        "Every command of the package, found as the `__main__.py` files and the modules with a `__main__` block "
        "under `coz_train/`. Hydra commands take `key=value` overrides of the "
        "[training config](configuration.md); the others their own arguments.\n",
    ]
    kinds = {"hydra": "Hydra command", "argparse": "argparse command", "script": "command"}
    for command in cmds.commands():
        out.append(heading(2, f"`python -m {command.module}`", command.module))
        out.append(f"*{kinds[command.kind]}* · `{command.path.relative_to(cmds.PACKAGE_DIR.parent)}`\n")
        if command.doc:
            out.append(fenced(command.doc))
        if command.kind == "hydra":
            out.append(
                "Arguments: overrides of the [training config](configuration.md) (`key=value`, "
                "`group=option`, `+experiment=<name>`). `--cfg job` prints the composed config and runs "
                "nothing; `--help` is Hydra's help.\n"
            )
        elif command.kind == "argparse":
            out.append(fenced(cmds.argparse_help(command.module)))
    return "\n".join(out)


def registries_page() -> str:
    out = ["# Registries\n", GENERATED]
    out.append(heading(2, "Rewards", "rewards"))
    out.append(
        "`rewards.<name>.weight` and the reward's parameters (`coz_train/rewards/registry.py`; "
        "`@register(name, params=...)`). Values and notes: `conf/rewards/coz.yaml`; weight 0 turns a "
        "reward off.\n"
    )
    for reward in registries.rewards():
        out.append(heading(3, f"`{reward.name}`", f"reward-{reward.name}"))
        if reward.doc:
            out.append(cell(reward.doc) + "\n")
        rows = [
            [
                code(f"rewards.{reward.name}.{p.name}"),
                value(p.value) if p.value is not None else "not in `conf/rewards/coz.yaml`",
                cell(p.help),
            ]
            for p in reward.params
        ]
        out.append(table(["key", "value", "note"], rows))
    out.append(heading(2, "SR backbones", "backbones"))
    out.append(
        "`eval/backbone=<name>`, `data.upscaler=<name>`, `rewards.sr_quality.backbone.name=<name>` "
        "(`coz_train/sr/backbones`); settings: `conf/eval/backbone/<name>.yaml` and the `eval.backbone` "
        "section of the [configuration](configuration.md#eval.backbone).\n"
    )
    rows = [
        [code(b.name), "yes" if b.uses_prompt else "no", code(b.module), cell(b.doc), cell(b.config)]
        for b in registries.backbones()
    ]
    out.append(table(["name", "reads the prompt", "module", "what it is", "config file"], rows))
    out.append(heading(2, "Metrics", "metrics"))
    out.append(
        "`eval.metrics`, `rewards.sr_quality.metric` (`coz_train/image_quality/registry.py`, "
        "`METRIC_NAMES`). `python -m coz_train.image_quality --check` lists those computable here.\n"
    )
    rows = [[code(m.name), "higher" if m.higher_is_better else "lower", cell(m.about)] for m in registries.metrics()]
    out.append(table(["name", "better", "what it is"], rows))
    return "\n".join(out)


PAGES: dict[str, Callable[[], str]] = {
    "reference/configuration.md": configuration_page,
    "reference/study-configuration.md": study_configuration_page,
    "reference/commands.md": commands_page,
    "reference/registries.md": registries_page,
}
