"""The command line of `python -m coz_train.compat` (its __main__ calls `main`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from packaging.utils import canonicalize_name

from coz_train.cli import error_line
from coz_train.compat.bounds import (
    LIBRARIES,
    constraint_pins,
    pinned,
    project_bounds,
    pyproject_requirements,
    with_versions,
)
from coz_train.compat.checks import CHECKS, TITLES, CheckRun, check_command, check_environment, run_check
from coz_train.compat.project import find_checkout, switch_names
from coz_train.compat.releases import PYPI, given_versions, newest_releases
from coz_train.compat.report import Library, Outcome, build, render
from coz_train.compat.venv import install_commands, installed_versions, layered_over, prepare_venv, venv_python
from coz_train.compat.verdicts import Verdict, read_junit, verdicts

USAGE_EXAMPLES = """examples:
  python -m coz_train.compat                                   the newest releases on PyPI, every check
  python -m coz_train.compat --versions transformers==5.26.0   that release by hand, the others from PyPI
  python -m coz_train.compat --reuse --only perf-tests -k group_prefix
  python -m coz_train.compat --venv "$VIRTUAL_ENV" --no-install --only perf-tests   the active environment

exit status: 0 everything checked holds, 1 something breaks (or could not be verified), 2 the check could
not run (a usage error, a missing file, PyPI unreachable)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m coz_train.compat", epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Does the project hold on the newest releases of " + ", ".join(LIBRARIES) + "? Installs the "
                    "checkout into a scratch venv with those releases, runs the capability check (what each perf switch "
                    "needs of the libraries), the perf equality tests, the smoke runs and the tiny benchmark there, "
                    "and says what to widen, or what broke.")
    p.add_argument("--versions", nargs="+", metavar="NAME==VERSION", default=[],
                   help="releases to check, given by hand (the libraries not named: the newest on PyPI)")
    p.add_argument("--venv", type=Path, help="the scratch venv (default: <checkout>/.compat-venv)")
    p.add_argument("--reuse", action="store_true", help="keep the scratch venv when it exists (still installs into it)")
    p.add_argument("--no-install", action="store_true",
                   help="install nothing: run the checks in the venv as it is (e.g. --venv \"$VIRTUAL_ENV\")")
    p.add_argument("--isolated", action="store_true",
                   help="install everything into the scratch venv (as .ci/run does; GBs) instead of layering it over "
                        "the environment running the check")
    p.add_argument("--unpin", nargs="+", metavar="NAME", default=[],
                   help="drop these packages' pins from the constraints (a release that needs a newer "
                        "huggingface_hub, say); the report gives the versions pip picked as constraints lines")
    p.add_argument("--only", nargs="+", choices=CHECKS, metavar="CHECK",
                   help=f"run only these checks ({', '.join(CHECKS)}); default: all")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k for the perf tests")
    p.add_argument("--out", type=Path, help="also write the report as JSON to this file")
    p.add_argument("--logs", type=Path, help="folder for the logs and runs (default: <checkout>/outputs/compat/<time>)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per check before it is stopped (3600)")
    p.add_argument("--checkout", type=Path, help="the source checkout (default: the one this package runs from)")
    p.add_argument("--pypi", default=PYPI, help=f"the JSON API to ask for the newest releases ({PYPI})")
    return p


def say(text: str) -> None:
    sys.stderr.write(f"compat: {text}\n")
    sys.stderr.flush()


def install(args: argparse.Namespace, root: Path, pyproject: Path, constraints: str, checked: dict[str, str],
            venv: Path, logs: Path, env: dict[str, str]) -> tuple[CheckRun, str]:
    """Make (or reuse) the scratch venv and install the checkout with the versions checked; (the install, a note)."""
    note = prepare_venv(venv, reuse=args.reuse, isolated=args.isolated)
    derived = logs / "constraints.txt"  # .ci/constraints.txt with the releases checked in place of its pins
    derived.write_text(pinned(constraints, checked, tuple(args.unpin)))
    requirements = logs / "requirements.txt"
    lines = with_versions(pyproject_requirements(pyproject, "test"), checked)
    requirements.write_text("# pyproject.toml's dependencies and [test] extra, the libraries at the versions checked\n"
                            + "\n".join(lines) + "\n")
    say(f"{note}; installing (log {logs / 'install.log'})")
    done = run_check(CheckRun("install", install_commands(venv, root, requirements, derived), logs / "install.log"),
                     root, env, args.timeout)
    say(f"install: {'done' if done.passed else 'FAILED'} in {done.seconds:.0f} s")
    return done, note


def read_capabilities(path: Path) -> dict | None:
    """The capability check's JSON report ({"versions", "seams"}), None when it wrote none."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("seams"), list) else None


def run_checks(args: argparse.Namespace, root: Path, venv: Path, logs: Path, env: dict[str, str],
               switches: tuple[str, ...]) -> tuple[list[CheckRun], list[Verdict] | None, dict | None]:
    """The selected checks in turn; (their runs, the perf switches' verdicts when the perf tests ran, the
    capability check's report when it ran)."""
    runs: list[CheckRun] = []
    found = capabilities = None
    for name in dict.fromkeys(args.only or CHECKS):
        command, output = check_command(name, venv_python(venv), logs, args.keyword)
        if output is not None:
            output.unlink(missing_ok=True)  # a --logs folder used before: no results from an earlier run
        junit = output if name == "perf-tests" else None
        say(f"{TITLES[name]}: running (log {logs / (name + '.log')})")
        check = run_check(CheckRun(name, [command], logs / f"{name}.log", junit=junit), root, env, args.timeout)
        runs.append(check)
        say(f"{TITLES[name]}: {'pass' if check.passed else 'FAIL'} in {check.seconds:.0f} s")
        if junit is not None and junit.is_file():
            found = verdicts(read_junit(junit), switches, complete=not args.keyword)
        if name == "capabilities" and output is not None:
            capabilities = read_capabilities(output)
    return runs, found, capabilities


def run(args: argparse.Namespace) -> dict:
    start = time.monotonic()
    checkout = find_checkout(args.checkout)
    switches = switch_names(checkout.capabilities_py)
    bounds = project_bounds(checkout.pyproject)
    given = given_versions(args.versions, LIBRARIES)
    venv = (args.venv or checkout.root / ".compat-venv").absolute()
    if args.no_install and (args.reuse or args.isolated or args.unpin):
        raise ValueError("--no-install runs in the venv as it is: leave out --reuse, --isolated and --unpin with it.")
    if args.no_install and not venv_python(venv).is_file():
        raise ValueError(f"--no-install: {venv} has no {venv_python(venv).relative_to(venv)}; name an existing venv "
                         "with --venv, or leave --no-install out to create one.")
    logs = (args.logs or checkout.root / "outputs" / "compat" / time.strftime("%Y-%m-%d_%H-%M-%S")).absolute()
    logs.mkdir(parents=True, exist_ok=True)
    newest = newest_releases(LIBRARIES, given, args.pypi)
    say("checking " + ", ".join(f"{name} {version} ({where})" for name, (version, where) in newest.items()))
    constraints = checkout.constraints.read_text()
    env = check_environment(venv)
    installed_run, venv_note = None, "used as it is, --no-install"
    if not args.no_install:
        checked = {name: version for name, (version, _) in newest.items()}
        installed_run, venv_note = install(args, checkout.root, checkout.pyproject, constraints, checked, venv, logs,
                                           env)
    if layered_over(venv) and "layered" not in venv_note:
        venv_note += f", layered over {layered_over(venv)}"
    installed = installed_versions(venv_python(venv), (*LIBRARIES, *args.unpin))
    pins = constraint_pins(constraints)
    repinned = {name: version for name in args.unpin
                if (version := installed[name]) and pins.get(canonicalize_name(name)) != version}
    libraries = [Library(name, bounds[name], newest[name][0], newest[name][1], installed[name], pins.get(name))
                 for name in LIBRARIES]
    runs, found, capabilities = [], None, None
    if installed_run is None or installed_run.passed:
        runs, found, capabilities = run_checks(args, checkout.root, venv, logs, env, switches)
    outcome = Outcome(checkout.root, venv, venv_note, logs, libraries, installed_run, runs, found,
                      tuple(dict.fromkeys(args.only or CHECKS)), args.keyword, capabilities, repinned,
                      time.monotonic() - start)
    return build(outcome)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors exit 2 here
    try:
        report = run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, subprocess.CalledProcessError) as err:
        error_line(str(err))  # the check could not run: exit 2, as argparse's usage errors do
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(render(report))
    return 0 if report["holds"] else 1
