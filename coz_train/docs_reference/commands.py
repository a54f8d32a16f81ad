"""The package's command lines: every module `python -m` runs, what kind of arguments it takes, its help.

A command is a package with a `__main__.py` (`python -m coz_train.eval`) or a module with a
`if __name__ == "__main__":` block (`python -m coz_train.eval.merge`). Its kind is read from its source:

- `hydra`: a `@hydra.main` function; its arguments are overrides of the training config
  (`conf/config.yaml`; `--cfg job` prints the composed config without running anything);
- `argparse`: it builds an `argparse.ArgumentParser` (itself, or the `main` it imports); its `--help` is
  what the module prints for `python -m <module> --help`, run in this process with `runpy`, as `python -m`
  runs it (the parser exits before the command does any work);
- `script`: anything else (the study's subcommands, a tool taking one folder); its docstring says how to
  call it. Such a module is never run here: it might act on `--help` as on a folder name.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import runpy
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import coz_train

PACKAGE_DIR = Path(coz_train.__file__).parent
HELP_COLUMNS = "100"  # argparse wraps its help to the terminal width: a fixed one for the page


@dataclass(frozen=True)
class Command:
    module: str  # coz_train.eval.merge
    path: Path
    kind: str  # hydra | argparse | script
    doc: str  # the module docstring


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__main__" else parts)


def _has_main_block(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            consts = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if "__name__" in names and "__main__" in consts:
                return True
    return False


def _main_source(tree: ast.Module) -> str:
    """The source of the module a `from <module> import main` names (a `__main__.py` that only delegates)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == "main" for a in node.names):
            path = PACKAGE_DIR.parent / Path(*node.module.split("."))
            for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                if candidate.is_file():
                    return candidate.read_text()
    return ""


def _kind(source: str, tree: ast.Module) -> str:
    if "@hydra.main" in source:
        return "hydra"
    if "ArgumentParser(" in source or "ArgumentParser(" in _main_source(tree):
        return "argparse"
    return "script"


def commands(package_dir: Path = PACKAGE_DIR) -> list[Command]:
    """Every command of the package, sorted by module name (`coz_train` first)."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        source = path.read_text()
        tree = ast.parse(source)
        if path.name != "__main__.py" and not _has_main_block(tree):
            continue
        found.append(Command(_module_name(path), path, _kind(source, tree), ast.get_docstring(tree) or ""))
    return sorted(found, key=lambda c: (c.module != "coz_train", c.module))


def argparse_help(module: str) -> str:
    """What `python -m <module> --help` prints, from this process (the module run as `__main__` by runpy)."""
    out = io.StringIO()
    argv, columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv = [module, "--help"]
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise RuntimeError(f"python -m {module} --help exited with {stop.code}") from None
    else:
        raise RuntimeError(f"python -m {module} --help did not exit: is it an argparse command?")
    finally:
        sys.argv = argv
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    text = out.getvalue()
    if not text.startswith("usage:"):
        raise RuntimeError(f"python -m {module} --help printed no usage line: {text[:200]!r}")
    return text
