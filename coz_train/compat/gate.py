"""The check's runs with the version gate widened to the installed versions, as the proposed edit would.

`coz_train/perf/versions.py` stops every `perf` switch on a minor version outside TESTED, and the perf tests
have no setting to pass the gate (`perf.allow_untested_versions` is a run setting; the bench's fast paths read
their switches from conf/perf/fast.yaml). So each check's own process adds the installed minor versions to
TESTED before anything runs, which is the edit the report proposes; nothing on disk changes.

    python -m pytest -p coz_train.compat.gate tests/perf      (a pytest plugin)
    python -m coz_train.compat.gate coz_train.bench [overrides]  (runs the module as `python -m` would)
"""

from __future__ import annotations

import importlib.metadata
import runpy
import sys

from coz_train.compat.bounds import minor_of


def widen_tested() -> dict[str, tuple[list[str], str]]:
    """Add the installed minor version of each TESTED library to its entry, in place; {library: (was, added)}."""
    try:
        from coz_train.perf import versions
    except ImportError:
        return {}
    tested = getattr(versions, "TESTED", None)
    if not isinstance(tested, dict):
        return {}
    added = {}
    for name, value in list(tested.items()):
        try:
            installed = minor_of(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        was = [value] if isinstance(value, str) else list(value)
        if installed in was:
            continue
        tested[name] = installed if isinstance(value, str) else type(value)([*was, installed])
        added[name] = (was, installed)
    if added:
        said = ", ".join(f"{name} {'/'.join(was)} + {new}" for name, (was, new) in added.items())
        sys.stderr.write(f"compat: coz_train/perf/versions.py TESTED widened in this process: {said}\n")
    return added


def pytest_configure(config: object) -> None:
    widen_tested()


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m coz_train.compat.gate <module> [arguments]")
    widen_tested()
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
