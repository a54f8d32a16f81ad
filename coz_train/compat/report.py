"""The compatibility report: per library its bound and versions, per `perf` switch whether the capability check
lets it start on the releases tried (its seams) and whether it holds (and from which tests), the smoke and
bench runs, and either the exact edits that widen the project to the versions checked (pyproject.toml's
bounds, which admit only the minor versions the suite passed on, and .ci/constraints.txt's pins), or what
broke and "do not widen". Built as one JSON-ready dict; `render` writes it as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coz_train.compat.bounds import Bound, widened
from coz_train.compat.checks import CHECKS, TITLES, CheckRun
from coz_train.compat.verdicts import BREAKS, CAPABILITIES, FAST_PATH, FILE_SUBJECTS, Verdict, first_line

SHOWN = 5  # failing tests shown per switch in the text report


@dataclass
class Library:
    name: str
    bound: Bound
    newest: str
    newest_from: str  # "PyPI" | "given"
    installed: str | None
    pinned: str | None  # in .ci/constraints.txt

    @property
    def checked_outside_bound(self) -> bool:
        return self.installed is not None and not self.bound.contains(self.installed)

    def as_dict(self) -> dict:
        return {"name": self.name, "bound": self.bound.line, "bound_from": self.bound.source, "newest": self.newest,
                "newest_from": self.newest_from, "newest_inside_bound": self.bound.contains(self.newest),
                "installed": self.installed, "pinned": self.pinned}


@dataclass
class Outcome:
    """Everything one compatibility run found."""

    checkout: Path
    venv: Path
    venv_note: str
    logs: Path
    libraries: list[Library]
    install: CheckRun | None
    runs: list[CheckRun]
    verdicts: list[Verdict] | None  # None: the perf tests did not run (or left no junit XML)
    selected: tuple[str, ...]
    keyword: str | None
    capabilities: dict | None = None  # the capability check's JSON ({"versions", "seams"}); None: it did not run
    repinned: dict[str, str] = field(default_factory=dict)  # --unpin: {package: version pip picked}
    seconds: float = 0.0


def capability_switches(capabilities: dict | None) -> list[dict] | None:
    """Per switch, from the capability check's seams: `holds` or `changed`, the seams it needs, what changed."""
    if capabilities is None:
        return None
    by_switch: dict[str, dict] = {}
    for seam in capabilities.get("seams", []):
        for switch in seam["switches"]:
            entry = by_switch.setdefault(switch, {"switch": switch, "status": "holds", "seams": [], "changed": []})
            entry["seams"].append(seam["name"])
            if not seam["holds"]:
                entry["status"] = "changed"
                entry["changed"].append({"seam": seam["name"], "why": seam["why"]})
    return list(by_switch.values())


def problems(out: Outcome) -> list[str]:
    """What stops the widening, one line each (empty: everything checked holds)."""
    found = []
    if out.install is not None and not out.install.passed:
        found.append(f"the install failed (exit {out.install.returncode}): the new releases do not install with the "
                     f"rest of .ci/constraints.txt; see {out.install.log}")
    for lib in out.libraries:
        if lib.installed is None:
            found.append(f"{lib.name} is not installed in {out.venv}")
    for run in out.runs:
        if run.name == "perf-tests" and out.verdicts is not None and run.returncode in (0, 1):
            continue  # judged per switch below
        if run.name == "capabilities" and out.capabilities is not None and run.returncode in (0, 1):
            continue  # judged per switch below
        if run.name == "perf-tests" and run.returncode == 5:
            found.append(f"no perf test ran (pytest collected none{' for -k ' + out.keyword if out.keyword else ''}); "
                         f"see {run.log}")
        elif not run.passed:
            why = "timed out" if run.timed_out else f"exit {run.returncode}"
            found.append(f"{TITLES[run.name]} failed ({why}); see {run.log}")
    for entry in capability_switches(out.capabilities) or []:
        found += [f"perf.{entry['switch']}: the capability check refuses it: seam '{c['seam']}' changed ({c['why']})"
                  for c in entry["changed"]]
    for verdict in out.verdicts or []:
        if verdict.status == BREAKS:
            tests = ", ".join(c.nodeid for c in verdict.failed[:3])
            more = f" and {len(verdict.failed) - 3} more" if len(verdict.failed) > 3 else ""
            found.append(f"{label(verdict.subject)} breaks: {tests}{more}")
        elif verdict.blocking:
            found.append(f"{label(verdict.subject)}: {verdict.status}")
    if out.verdicts is not None and any(r.name == "perf-tests" and r.returncode == 1 for r in out.runs) and not any(
            v.failed or v.refused for v in out.verdicts):
        found.append("pytest failed but its junit XML names no failing test; see the perf tests' log")
    return found


def label(subject: str) -> str:
    return subject if subject in (FAST_PATH, CAPABILITIES) else f"perf.{subject}"


def edits(out: Outcome) -> dict[str, list[str]]:
    """The exact lines that widen the project to the versions checked, per file (empty lists: nothing to do)."""
    pyproject, other = [], []
    for lib in out.libraries:
        if lib.bound.line and lib.installed and lib.checked_outside_bound:
            try:
                pyproject.append(f'"{widened(lib.bound.line, lib.installed)}",')
            except ValueError as err:
                other.append(f"pyproject.toml: {err}")
    constraints = [f"{lib.name}=={lib.installed}" for lib in out.libraries if lib.installed and lib.pinned != lib.installed]
    constraints += [f"{name}=={version}" for name, version in out.repinned.items()]
    return {"pyproject.toml": pyproject, ".ci/constraints.txt": constraints, "other": other}


def build(out: Outcome) -> dict:
    """The report as a JSON-ready dict; `holds` says whether everything checked holds."""
    found = problems(out)
    partial = set(out.selected) != set(CHECKS) or bool(out.keyword)
    notes = [f"{lib.name}: the checks ran on {lib.installed}, not on {lib.newest} "
             f"({'given' if lib.newest_from == 'given' else 'the newest release'}); the edits are for {lib.installed}"
             for lib in out.libraries if lib.installed and lib.installed != lib.newest]
    if partial:
        notes.append(f"a partial run (--only {' '.join(out.selected)}{' -k ' + out.keyword if out.keyword else ''}): "
                     "run the whole check before making the edits")
    return {"holds": not found, "partial": partial, "seconds": round(out.seconds, 1),
            "checkout": str(out.checkout), "venv": str(out.venv), "venv_note": out.venv_note, "logs": str(out.logs),
            "libraries": [lib.as_dict() for lib in out.libraries],
            "install": None if out.install is None else run_dict(out.install),
            "capabilities": capability_switches(out.capabilities),
            "switches": None if out.verdicts is None else [v.as_dict() for v in out.verdicts],
            "runs": [run_dict(run) for run in out.runs],
            "problems": found, "notes": notes,
            "edits": edits(out) if not found else None}


def run_dict(run: CheckRun) -> dict:
    status = "not run" if run.returncode is None else "pass" if run.passed else "fail"
    return {"name": run.name, "title": TITLES[run.name], "status": status, "returncode": run.returncode,
            "timed_out": run.timed_out, "seconds": round(run.seconds, 1), "log": str(run.log),
            "commands": run.commands, "junit": None if run.junit is None else str(run.junit),
            "tail": "" if run.passed or run.returncode is None else run.tail()}


def render(report: dict) -> str:
    """The report as text, for the terminal."""
    lines = [f"coz_train compatibility check ({report['seconds'] / 60:.1f} min)",
             f"  checkout {report['checkout']}", f"  venv     {report['venv']} ({report['venv_note']})",
             f"  logs     {report['logs']}", "", "Libraries (bound from "
             f"{report['libraries'][0]['bound_from'] if report['libraries'] else '-'}):"]
    lines.append(f"  {'library':<14}{'bound':<30}{'newest':<16}{'installed':<12}newest inside bound")
    for lib in report["libraries"]:
        newest = f"{lib['newest']} ({lib['newest_from']})"
        inside = "yes" if lib["newest_inside_bound"] else "NO"
        lines.append(f"  {lib['name']:<14}{lib['bound'] or '(none)':<30}{newest:<16}{lib['installed'] or '-':<12}{inside}")
    if report["install"]:
        lines += ["", f"Install: {report['install']['status']} ({report['install']['seconds']:.0f} s), "
                      f"log {report['install']['log']}"]
    if report["capabilities"] is not None:
        lines += ["", "Capability check (coz_train/perf/capabilities.py: what each switch needs of the libraries):"]
        width = max((len(f"perf.{c['switch']}") for c in report["capabilities"]), default=0) + 2
        for entry in report["capabilities"]:
            name = f"perf.{entry['switch']}"
            if entry["status"] == "holds":
                lines.append(f"  {name:<{width}}holds    {', '.join(entry['seams'])}")
            else:
                lines += [f"  {name:<{width}}CHANGED  seam '{c['seam']}': {c['why']}" for c in entry["changed"]]
    if report["switches"] is not None:
        lines += ["", "perf switches (tests/perf; each verdict from the tests named):"]
        width = max(len(label(v["subject"])) for v in report["switches"]) + 2
        for verdict in report["switches"]:
            lines += switch_lines(verdict, width)
    if report["runs"]:
        lines += ["", "Runs:"]
        for run in report["runs"]:
            lines.append(f"  {run['title']:<34}{run['status']:<6}{run['seconds']:>7.0f} s   log {run['log']}")
            if run["status"] == "fail" and run["tail"] and not (run["name"] == "perf-tests" and report["switches"]):
                lines += [f"      | {line}" for line in run["tail"].splitlines()[-8:]]
    if report["notes"]:
        lines += ["", "Notes:", *(f"  - {note}" for note in report["notes"])]
    lines.append("")
    if report["problems"]:
        lines += ["BREAKS: do not widen.", *(f"  - {p}" for p in report["problems"])]
        return "\n".join(lines)
    lines.append("Everything checked holds." + (" (partial run)" if report["partial"] else ""))
    lines += edit_lines(report["edits"])
    return "\n".join(lines)


def switch_lines(verdict: dict, width: int) -> list[str]:
    name = label(verdict["subject"])
    counts = f"{len(verdict['passed'])} passed"
    if verdict["failed"]:
        counts += f", {len(verdict['failed'])} failed"
    if verdict["refused_by_capability_check"]:
        counts += f", {len(verdict['refused_by_capability_check'])} refused by the capability check"
    if verdict["skipped"]:
        counts += f", {len(verdict['skipped'])} skipped"
    source = ", ".join(Path(f).name for f in verdict["tests_from"]) or "-"
    lines = [f"  {name:<{width}}{verdict['status']:<16}{counts}: {source}"]
    lines += [f"      FAILED {f['test']}: {f['message']}" for f in verdict["failed"][:SHOWN]]
    if len(verdict["failed"]) > SHOWN:
        lines.append(f"      ... and {len(verdict['failed']) - SHOWN} more (the JSON report and the log list them all)")
    lines += [f"      refused by the capability check: {t}" for t in verdict["refused_by_capability_check"]]
    own = {f"test_{verdict['subject']}"} | {stem for stem, s in FILE_SUBJECTS.items() if s == verdict["subject"]}
    if verdict["subject"] not in (FAST_PATH, CAPABILITIES):
        lines += [f"      from {t}" for t in verdict["passed"] if Path(t.split("::")[0]).stem not in own][:4]
    return lines


def edit_lines(found: dict[str, list[str]]) -> list[str]:
    if not any(found.values()):
        return ["Nothing to widen: the bounds and .ci/constraints.txt already hold the versions checked."]
    lines = ["Edits that widen the project to the versions checked:"]
    where = {"pyproject.toml": "pyproject.toml [project] dependencies (replace the library's line)",
             ".ci/constraints.txt": ".ci/constraints.txt (replace the library's line)", "other": "also"}
    for key, title in where.items():
        if found.get(key):
            lines += [f"  {title}:", *(f"    {line}" for line in found[key])]
    lines += ["  then run the whole suite (.ci/run) and update the README's \"Tested versions\" line."]
    return lines


def summary_line(report: dict) -> str:
    return "holds" if report["holds"] else "breaks: " + first_line("; ".join(report["problems"]), 300)
