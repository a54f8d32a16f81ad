"""From the perf tests' junit XML to one verdict per `perf` switch, naming the tests each verdict came from.

A test belongs to a switch by its file (`tests/perf/test_group_prefix.py` -> group_prefix; test_merge.py ->
merge_adapters_for_generation), and in the files shared by several switches (test_trainer_perf.py,
test_fast_path.py) by a switch named in the test's name (`test_group_shuffle_...` -> group_batches). Tests
that name no switch check the fast path as a whole (all switches together); test_capabilities.py checks the
capability check itself. A failure that is the capability check's refusal (a seam the switch needs changed in
the releases tried) is not a test of the switch: it was not tried, and it does not start there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

FAST_PATH = "fast path (all switches together)"
CAPABILITIES = "capability check (coz_train/perf/capabilities.py)"
FILE_SUBJECTS = {"test_merge": "merge_adapters_for_generation", "test_capabilities": CAPABILITIES}
NAME_HINTS = {"group_shuffle": "group_batches", "merged_adapters": "merge_adapters_for_generation"}

HOLDS, BREAKS, NOT_RUN = "holds", "breaks", "not run"
NO_TEST = "no test ran"  # not run in a run of the whole folder: nothing says it holds
REFUSED = "not verified: refused by the capability check"
REFUSAL = "need library internals that changed in this environment"  # coz_train/perf/capabilities.py's error


@dataclass(frozen=True)
class Case:
    nodeid: str  # tests/perf/test_group_prefix.py::test_x[param]
    outcome: str  # passed | failed | error | skipped
    message: str = ""

    @property
    def file(self) -> str:
        return self.nodeid.split("::")[0]

    @property
    def name(self) -> str:
        return self.nodeid.split("::")[-1].split("[")[0]

    @property
    def capability_refusal(self) -> bool:
        """The failure is coz_train/perf/capabilities.py refusing a switch whose seam changed."""
        return REFUSAL in self.message and "seam '" in self.message


def read_junit(path: Path) -> list[Case]:
    """The test cases of a pytest junit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise ValueError(f"{path}: no readable junit XML ({err}); see the perf tests' log.") from err
    cases = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = f"{found.get('message', '')}\n{found.text or ''}".strip()
                break
        cases.append(Case(nodeid_of(classname, name), outcome, message))
    return cases


def nodeid_of(classname: str, name: str) -> str:
    """junit (classname, name) -> pytest node id; a collection error has no classname and the module as name."""
    parts = classname.split(".") if classname else name.split(".")
    modules = [i for i, part in enumerate(parts) if part.startswith("test_") or part.endswith("_test")]
    cut = modules[-1] + 1 if modules else len(parts)
    path = "/".join(parts[:cut]) + ".py"
    rest = [*parts[cut:], name] if classname else []
    return "::".join([path, *rest])


def subject_of(case: Case, switches: tuple[str, ...]) -> str:
    stem = Path(case.file).stem
    for switch in switches:
        if stem == f"test_{switch}":
            return switch
    if FILE_SUBJECTS.get(stem) in (*switches, CAPABILITIES):
        return FILE_SUBJECTS[stem]
    for switch in sorted(switches, key=len, reverse=True):
        if switch in case.name:
            return switch
    for hint, switch in NAME_HINTS.items():
        if hint in case.name and switch in switches:
            return switch
    return FAST_PATH


@dataclass
class Verdict:
    subject: str
    status: str = NOT_RUN
    passed: list[str] = field(default_factory=list)
    failed: list[Case] = field(default_factory=list)
    refused: list[Case] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> bool:
        """Whether this verdict stops the widening."""
        return self.status in (BREAKS, REFUSED, NO_TEST)

    @property
    def tests_from(self) -> list[str]:
        ids = self.passed + [c.nodeid for c in self.failed + self.refused] + self.skipped
        return sorted({nodeid.split("::")[0] for nodeid in ids})

    def as_dict(self) -> dict:
        return {"subject": self.subject, "status": self.status, "tests_from": self.tests_from,
                "passed": self.passed, "skipped": self.skipped,
                "failed": [{"test": c.nodeid, "message": first_line(c.message)} for c in self.failed],
                "refused_by_capability_check": [c.nodeid for c in self.refused]}


def first_line(text: str, limit: int = 200) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def verdicts(cases: list[Case], switches: tuple[str, ...], *, complete: bool) -> list[Verdict]:
    """One verdict per switch, then the fast path as a whole and the capability check.

    `complete`: the whole folder ran (no -k), so a switch no test covered is a gap, not a choice.
    """
    by_subject = {name: Verdict(name) for name in (*switches, FAST_PATH, CAPABILITIES)}
    for case in cases:
        verdict = by_subject[subject_of(case, switches)]
        if case.outcome == "passed":
            verdict.passed.append(case.nodeid)
        elif case.outcome == "skipped":
            verdict.skipped.append(case.nodeid)
        elif verdict.subject != CAPABILITIES and case.capability_refusal:
            verdict.refused.append(case)
        else:
            verdict.failed.append(case)
    for verdict in by_subject.values():
        if verdict.failed:
            verdict.status = BREAKS
        elif verdict.refused:
            verdict.status = REFUSED
        elif verdict.passed:
            verdict.status = HOLDS
        else:
            verdict.status = NO_TEST if complete and verdict.subject in switches else NOT_RUN
    return list(by_subject.values())
