"""Every `python -m coz_train...` command of the README and the docs pages is checked as its command would
check it before doing any work, so a renamed key, option or experiment fails here rather than a reader.

How (compose-only, in this process: a process per command would cost ~1.5 s of start-up each):
- Hydra commands (`coz_train`, `.data`, `.eval`, `.critic_server`, `.bench`): the `key=value` arguments are
  composed with `conf/config.yaml` through Hydra's compose API, as the command composes them (`.bench` with
  its own defaults, `bench.with_defaults`); a path or a placeholder is a string to Hydra and is never opened.
  Hydra's own switches (`--cfg job`, `--package <section>`, `--help`) are allowed; any other argument is not.
- `rewards.<name>.<param>` arguments: the reward and the parameter must be registered (a Hydra composition
  cannot see that: `rewards` is a free-form map).
- `.eval.checkpoints`: its own `sweep_config` (composition only) with the overrides after the run folder.
- `.study`: the subcommand must be one of its commands, and the overrides compose with `conf/study.yaml`
  (`coz_train.study.config.load_config`).
- argparse commands: every `--option` the page writes must be one the command's `--help` lists.
- other commands (`.tiny.internvl2_5`): the module must exist.
A command of a module that is not a command of the package fails. Placeholders: see `commands_in_docs`.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from commands_in_docs import DocCommand, commands_in, documentation_files  # noqa: E402

from coz_train.docs_reference.commands import argparse_help, commands  # noqa: E402

OVERRIDE = re.compile(r"^(~[\w.@/-]+|[+]{0,2}[\w.@/-]+=.*)$", re.S)
HYDRA_SWITCHES = {
    "--cfg": {"job", "hydra", "all"},
    "-c": {"job", "hydra", "all"},
    "--package": None,
    "-p": None,
    "--help": set(),
    "-h": set(),
    "--hydra-help": set(),
    "--info": set(),
    "--resolve": set(),
}

ALL_COMMANDS = [c for path in documentation_files() for c in commands_in(path)]
DOC_COMMANDS = list({(c.module, c.args): c for c in reversed(ALL_COMMANDS)}.values())[::-1]  # each once
KINDS = {c.module: c.kind for c in commands()}


@cache
def help_text(module: str) -> str:
    return argparse_help(module)


def hydra_overrides(command: DocCommand) -> list[str]:
    overrides, args = [], list(command.args)
    while args:
        arg = args.pop(0)
        if OVERRIDE.match(arg):
            overrides.append(arg)
        elif arg in HYDRA_SWITCHES:
            values = HYDRA_SWITCHES[arg]  # None: takes any value (--package data); a set: these values, if any
            if (values is None and args) or (values and args and args[0] in values):
                args.pop(0)
        else:
            pytest.fail(
                f"{command.source}: `{arg}` in `{command.text}` is neither a key=value override nor a "
                f"Hydra switch of python -m {command.module}"
            )
    return overrides


@pytest.fixture(scope="module", autouse=True)
def hydra_for_this_module():
    """One Hydra initialisation serves the compositions of this module (the study's and the checkpoint
    command's own checks set up their own); none is left behind for other tests."""
    from hydra.core.global_hydra import GlobalHydra

    yield
    GlobalHydra.instance().clear()


def compose_training(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from coz_train.config import config_dir, register_configs

    if not GlobalHydra.instance().is_initialized():
        register_configs()
        initialize_config_dir(config_dir=config_dir(), version_base="1.3")  # kept until the module ends
    compose("config", overrides=overrides)


def check_rewards(command: DocCommand, overrides: list[str]) -> None:
    if not any(o.lstrip("+~").startswith("rewards.") for o in overrides):
        return
    from coz_train.docs_reference.registries import rewards  # imports every reward's module: only when needed

    params = {r.name: {p.name for p in r.params} for r in rewards()}
    for override in overrides:
        parts = override.lstrip("+~").split("=", 1)[0].split(".")
        if parts[0] != "rewards" or len(parts) < 2:
            continue
        assert parts[1] in params, f"{command.source}: rewards.{parts[1]} is no registered reward: {sorted(params)}"
        if len(parts) > 2:
            assert parts[2] in params[parts[1]], (
                f"{command.source}: rewards.{parts[1]}.{parts[2]} is not a parameter of {parts[1]}: "
                f"{sorted(params[parts[1]])}"
            )


def check(command: DocCommand) -> None:
    kind = KINDS.get(command.module)
    assert kind is not None, f"{command.source}: python -m {command.module} is not a command of the package"
    overrides = [a for a in command.args if OVERRIDE.match(a)]
    if command.module == "coz_train.study":
        from coz_train.study.__main__ import COMMANDS, split_args
        from coz_train.study.config import load_config

        if command.args:
            assert command.args[0] in COMMANDS, f"{command.source}: `{command.args[0]}` is no study command"
            load_config(split_args(list(command.args[1:]))[1])
        return
    if command.module == "coz_train.eval.checkpoints":
        from coz_train.eval.checkpoints import sweep_config

        sweep_config(Path("PLACEHOLDER"), overrides)
        return
    if kind == "hydra":
        overrides = hydra_overrides(command)
        if command.module == "coz_train.bench":
            from coz_train.bench.__main__ import with_defaults

            overrides = [o for o in with_defaults(overrides) if OVERRIDE.match(o)]
        compose_training(overrides)
        check_rewards(command, overrides)
    elif kind == "argparse":
        listed = help_text(command.module)
        for arg in command.args:
            if arg.startswith("-"):
                option = arg.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", listed), (
                    f"{command.source}: python -m {command.module} has no option {option} (its --help: {listed})"
                )


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=[f"{c.source}:{c.module}" for c in DOC_COMMANDS])
def test_documented_command_composes(command: DocCommand):
    check(command)


def test_the_docs_hold_commands_of_every_kind():
    """The extraction finds what the pages hold: Hydra, argparse, study and sbatch commands, README's too."""
    modules = {c.module for c in ALL_COMMANDS}
    assert {"coz_train", "coz_train.eval", "coz_train.study", "coz_train.eval.merge"} <= modules
    assert any(c.source.startswith("README.md") for c in ALL_COMMANDS)
    assert any("sbatch" in c.text for c in ALL_COMMANDS)


@pytest.mark.parametrize(
    "text",
    [
        "python -m coz_train +experiment=smoke grpo.max_stepz=3",  # a misspelt key
        "python -m coz_train +experiment=smok",  # a missing experiment
        "python -m coz_train critic=internvl2_5_8b_remot",  # an unknown option
        "python -m coz_train +experiment=smoke +rewards.critc.weight=0",  # an unknown reward (Hydra adds it)
        "python -m coz_train +experiment=smoke +rewards.repetition.m=3",  # an unknown reward parameter
        "python -m coz_train.eval +experiment=smoke_eval eval.methodz=[nearest]",
        "python -m coz_train.study build <run> study.name=x study.rater=3",  # the study's schema
        "python -m coz_train.study buidl <run> study.name=x",
        "python -m coz_train.image_quality --fetch-parms",  # an argparse option
        "python -m coz_train.evaluate +experiment=smoke_eval",  # no such command
        "python -m coz_train.eval.checkpoints <run> eval.max_image=3",
        "python -m coz_train +experiment=smoke data/LSDIR",  # a stray positional argument
    ],
)
def test_a_broken_command_fails(tmp_path, text):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    page = tmp_path / "page.md"
    page.write_text(f"Run it:\n\n```bash\n{text}\n```\n")
    (command,) = commands_in(page)
    with pytest.raises((AssertionError, pytest.fail.Exception, HydraException, OmegaConfBaseException)):
        check(command)
