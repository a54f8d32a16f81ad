"""One error style for every command line of the package.

An error the package raises itself (a checked setting, a missing folder or model, an unknown option) is
shown as one line on stderr, `Error: <what went wrong> <how to fix it> (<where the traceback is>)`, and the
command exits with 1: its message carries the advice, and a traceback would only bury it. Errors raised
inside libraries keep their traceback (`coz_train.errors.raised_by_coz_train` tells them apart).

- Hydra commands (`python -m coz_train`, `.data`, `.eval`, `.critic_server`, `.bench`) run their work
  inside `hydra_errors()`; the traceback goes to the run folder's `<job>.log` through the `coz_train.record`
  logger (conf/config.yaml: the log file only), and `HYDRA_FULL_ERROR=1` shows it on the console instead.
  Their `__main__` starts with `run_hydra(main)`, which first composes the config with the command line's
  overrides, as Hydra is about to, so that a misspelt key, a value of the wrong type or an unknown config
  option is one line naming the key and the closest valid ones (Hydra would print its multi-line report
  before the command's own code runs). Only the config files are read; no model library is imported.
- argparse commands (`.eval.checkpoints`, `.eval.merge`, `.critic_convert`) write no log file: `--debug`
  shows the traceback (`add_debug_switch`, `run_argparse`).
- `python -m coz_train.study` has subcommands of its own; it calls `report` (`HYDRA_FULL_ERROR=1` as for
  the Hydra commands).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

from coz_train.errors import raised_by_coz_train

T = TypeVar("T")

RECORD = "coz_train.record"  # the run's log file only (conf/config.yaml's hydra.job_logging)
DEBUG = "--debug"
# Hydra's own switches after which the overrides are not checked here: help and completion print no run,
# another primary config has another schema, and a sweep composes one config per job.
UNCHECKED = {"-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion", "-m", "--multirun",
             "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"}
MAX_LISTED = 20  # a section with more keys than this is not listed in an error line


def error_line(what: str, hint: str = "") -> None:
    """`Error: <what> (<hint>)` on stderr, as one line."""
    sys.stderr.write(f"Error: {flatten(what)}{f' ({hint})' if hint else ''}\n")
    sys.stderr.flush()


def fail(what: str, hint: str = "") -> NoReturn:
    """Stop the command with one `Error:` line and exit code 1 (a check of the command's own input)."""
    error_line(what, hint)
    raise SystemExit(1)


def flatten(text: str) -> str:
    """A message of several lines (advice in bullet points, say) as one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def message(err: BaseException) -> str:
    """What an error says, without the quotes a KeyError puts around its message."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err)
    return flatten(text) or type(err).__name__


def report(err: BaseException, *, full: bool, hint: str, record: logging.Logger | None = None,
           own: tuple[type[BaseException], ...] = ()) -> bool:
    """Show a command's error: True when it went to stderr as one `Error:` line (the caller exits with 1),
    False when the caller should raise it again for its traceback: an error raised inside a library, or any
    error when `full` is set. `own`: library error types the command treats as its own (a Hydra command's
    config errors); `record`: a logger that gets the traceback either way."""
    if record is not None:
        record.error("The run stopped: %s: %s", type(err).__name__, err, exc_info=err)
    if full:
        return False
    line = config_error_line(err)
    if line is None:
        if not (raised_by_coz_train(err) or isinstance(err, own)):
            return False
        line = message(err)
    error_line(line, hint)
    return True


def hydra_full_error() -> bool:
    """`HYDRA_FULL_ERROR=1`, read as Hydra reads it: tracebacks in full."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def run_log() -> str | None:
    """The run's log file, where the `coz_train.record` logger writes (None on ranks other than 0, or when
    Hydra's job logging is off)."""
    for handler in logging.getLogger(RECORD).handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename != os.path.abspath(os.devnull):
            return handler.baseFilename
    return None


@contextlib.contextmanager
def hydra_errors() -> Iterator[None]:
    """The body of a `@hydra.main` function: the package's own errors as one line, exit code 1, their
    traceback in the run's log file (`HYDRA_FULL_ERROR=1` shows it on the console instead)."""
    try:
        yield
    except Exception as err:
        log = run_log()
        hint = f"the traceback is in {log}; HYDRA_FULL_ERROR=1 shows it here" if log else \
            "HYDRA_FULL_ERROR=1 shows the traceback"
        if not report(err, full=hydra_full_error(), hint=hint,
                      record=logging.getLogger(RECORD) if log else None):
            raise
        raise SystemExit(1) from None


def add_debug_switch(parser: argparse.ArgumentParser) -> None:
    """An argparse command's `--debug`: the traceback of an error instead of its one line."""
    parser.add_argument(DEBUG, action="store_true", help="show an error's traceback instead of its one-line message")


def run_argparse(main: Callable[[list[str]], T], argv: Sequence[str] | None = None) -> T:
    """Run an argparse command's `main(argv)` (its parser has `add_debug_switch`); the package's own errors as
    one line and exit code 1, unless `--debug` is given."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(args)
    except Exception as err:
        if not report(err, full=DEBUG in args, hint=f"{DEBUG} shows the traceback"):
            raise
        raise SystemExit(1) from None


def run_hydra(main: Callable[[], Any], job: str | None = None, config_name: str = "config") -> None:
    """Start a Hydra command: `main` is its `@hydra.main` function, called once the command line's overrides
    have passed `check_overrides`. `job`: the job name, so the run folder's log is `<job>.log` (unless the
    command line sets `hydra.job.name`); without it, conf/config.yaml's `train`."""
    if job and not any(arg.startswith("hydra.job.name=") for arg in sys.argv[1:]):
        # first: at the end it could be read as the value of a Hydra switch (`--info [...]`)
        sys.argv.insert(1, f"hydra.job.name={job}")
    check_overrides(sys.argv[1:], config_name)
    main()


def command_line_overrides(args: Sequence[str]) -> list[str] | None:
    """The `key=value` (and `~key`) arguments Hydra reads as overrides; None when one of Hydra's own switches
    says they are not to be checked here."""
    if any(arg.split("=", 1)[0] in UNCHECKED for arg in args):
        return None
    return [arg for arg in args if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]


def check_overrides(args: Sequence[str], config_name: str = "config") -> None:
    """Compose `conf/<config_name>.yaml` with the command line's overrides, as Hydra is about to, and stop
    with one `Error:` line for a misspelt key, a value of the wrong type or an unknown config option (each
    named, with the closest valid ones). Any other composition error is left to Hydra's own report, and
    `HYDRA_FULL_ERROR=1` leaves them all to it."""
    overrides = command_line_overrides(args)
    if not overrides or hydra_full_error():
        return
    from hydra import compose, initialize_config_dir

    from coz_train.config import config_dir, register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except Exception as err:  # noqa: BLE001 - what is not explained here, Hydra reports when it composes again
        line = config_error_line(err)
        if line is not None:
            fail(line)


def config_error_line(err: BaseException) -> str | None:
    """One line for a config error that a command line override caused (Hydra's composition of `key=value`:
    an unknown key, a value of the wrong type; of `group=option` or `+group=option`: an unknown option);
    None for any other error."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(err, MissingConfigException):
        if not (err.options and err.missing_cfg_file and "/" in err.missing_cfg_file):
            return None
        group, _, option = err.missing_cfg_file.rpartition("/")
        return unknown_option(group, option, list(err.options))
    if not isinstance(err, ConfigCompositionException):
        return None
    cause, head = err.__cause__, (str(err).splitlines() or [""])[0]
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and head.startswith("Could not override '"):
        return unknown_key(head.split("'")[1], cause)
    override = head.removeprefix("Error merging override ")
    if isinstance(cause, ValidationError) and override != head and not override.startswith(("+", "~")):
        return wrong_value(override, cause)
    return None


def unknown_option(group: str, option: str, options: list[str]) -> str:
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    return (f"Could not find '{group}/{option}': the config group {group} has no option '{option}'; its options: "
            f"{', '.join(options)}" + (f" (the closest: {', '.join(close)})" if close else ""))


def unknown_key(overridden: str, cause: Any) -> str:
    """`grpo.max_stepz=3`: the key, where it is missing, and the closest keys there (`polcy.lora.r=4`: the
    closest to `polcy`, with the rest of the key)."""
    full_key, key = str(cause.full_key), str(cause.key)
    section = full_key[: -len(key)].rstrip(".") if full_key.endswith(key) else full_key.rpartition(".")[0]
    rest = overridden[len(full_key):] if overridden.startswith(full_key) else ""
    keys = [str(k) for k in cause.parent_node.keys() if k != "hydra"] if cause.parent_node is not None else []
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    prefix = f"{section}." if section else ""
    line = f"Could not override '{overridden}': {section or 'the config'} has no key '{key}'"
    if close:
        return f"{line}; the closest: {', '.join(prefix + k + rest for k in close)}"
    if keys and len(keys) <= MAX_LISTED:
        return f"{line}; its keys: {', '.join(keys)}"
    listing = f" --package {section}" if section else ""
    return f"{line}; `python -m coz_train --cfg job{listing}` lists its keys"


def wrong_value(override: str, cause: Any) -> str:
    """`grpo.max_steps=abc`: what OmegaConf says of the value, and the key's value before the override."""
    full_key = str(cause.full_key)
    line = f"Could not override '{full_key}' with '{override.partition('=')[2]}': {cause.msg.splitlines()[0]}"
    try:
        now = cause.parent_node[cause.key] if cause.parent_node is not None else None
    except Exception:  # noqa: BLE001 - a missing value or an interpolation only Hydra's run resolves
        now = None
    return f"{line} (the config has {full_key}={now})" if isinstance(now, (bool, int, float, str)) else line
