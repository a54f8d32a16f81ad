"""The files of a checkout the compatibility check reads, read without importing the package's heavy parts.

`coz_train/perf/versions.py` is parsed, not imported: its TESTED and SWITCHES literals are what the report
needs, and importing it here would tie the check's own process to the versions installed next to it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # coz_train/


@dataclass(frozen=True)
class Checkout:
    root: Path

    @property
    def pyproject(self) -> Path:
        return self.root / "pyproject.toml"

    @property
    def constraints(self) -> Path:
        return self.root / ".ci" / "constraints.txt"

    @property
    def versions_py(self) -> Path:
        return self.root / "coz_train" / "perf" / "versions.py"

    @property
    def perf_tests(self) -> Path:
        return self.root / "tests" / "perf"


def find_checkout(given: Path | None) -> Checkout:
    """The checkout given, else the one this package was loaded from, else the current folder."""
    if given is not None:
        root = given.resolve()
    elif (PACKAGE.parent / "pyproject.toml").is_file():
        root = PACKAGE.parent
    else:
        root = Path.cwd().resolve()
    checkout = Checkout(root)
    for needed in (checkout.pyproject, checkout.constraints, checkout.versions_py):
        if not needed.is_file():
            raise ValueError(f"{needed} is missing: --checkout must name a coz_train source checkout "
                             "(with pyproject.toml, .ci/constraints.txt and coz_train/perf/versions.py).")
    return checkout


def gate_literals(versions_py: Path) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """(TESTED as {library: (major.minor, ...)}, SWITCHES) from coz_train/perf/versions.py's source."""
    values: dict[str, object] = {}
    for node in ast.parse(versions_py.read_text(), filename=str(versions_py)).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("TESTED", "SWITCHES") and node.value is not None:
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError as err:
                        raise ValueError(f"{versions_py}: {target.id} is not a literal ({err}); the compatibility "
                                         "check reads it from the source.") from err
    missing = {"TESTED", "SWITCHES"} - set(values)
    if missing:
        raise ValueError(f"{versions_py}: no {' / '.join(sorted(missing))} assignment; the compatibility check reads "
                         "the tested versions and the switch names from there.")
    tested_raw, switches = values["TESTED"], values["SWITCHES"]
    if not isinstance(tested_raw, dict) or not isinstance(switches, (tuple, list)):
        raise ValueError(f"{versions_py}: TESTED must be a dict and SWITCHES a tuple of names.")
    tested = {str(name): (value,) if isinstance(value, str) else tuple(value) for name, value in tested_raw.items()}
    return tested, tuple(switches)
