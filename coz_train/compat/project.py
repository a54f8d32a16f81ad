"""The files of a checkout the compatibility check reads, read without importing the package's heavy parts.

`coz_train/perf/capabilities.py` is parsed, not imported: its SWITCHES literal is what the report needs, and
its checks are run in the scratch venv (`python -m coz_train.perf.capabilities`), on the releases tried, not
on the versions installed next to the check's own process.
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
    def capabilities_py(self) -> Path:
        return self.root / "coz_train" / "perf" / "capabilities.py"

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
    for needed in (checkout.pyproject, checkout.constraints, checkout.capabilities_py):
        if not needed.is_file():
            raise ValueError(f"{needed} is missing: --checkout must name a coz_train source checkout "
                             "(with pyproject.toml, .ci/constraints.txt and coz_train/perf/capabilities.py).")
    return checkout


def switch_names(capabilities_py: Path) -> tuple[str, ...]:
    """SWITCHES (the `perf` switch names) from coz_train/perf/capabilities.py's source."""
    for node in ast.parse(capabilities_py.read_text(), filename=str(capabilities_py)).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == "SWITCHES" for target in targets):
                try:
                    switches = ast.literal_eval(node.value)
                except ValueError as err:
                    raise ValueError(f"{capabilities_py}: SWITCHES is not a literal ({err}); the compatibility check "
                                     "reads it from the source.") from err
                if not isinstance(switches, (tuple, list)) or not all(isinstance(s, str) for s in switches):
                    raise ValueError(f"{capabilities_py}: SWITCHES must be a tuple of switch names.")
                return tuple(switches)
    raise ValueError(f"{capabilities_py}: no SWITCHES assignment; the compatibility check reads the switch names "
                     "from there.")
