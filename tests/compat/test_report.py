"""The report: the exact edits when everything holds, the broken switch and its tests when something breaks."""

import json
from pathlib import Path

from coz_train.compat.bounds import Bound
from coz_train.compat.checks import CheckRun
from coz_train.compat.report import Library, Outcome, build, render
from coz_train.compat.verdicts import Case, verdicts

SWITCHES = ("load_once", "group_prefix", "group_batches")
TESTED = {"transformers": ("5.24", "5.25"), "trl": ("1.16",)}


def libraries(transformers: str = "5.26.0") -> list[Library]:
    return [
        Library("transformers", Bound("transformers", "transformers>=5.24,<5.26", "pyproject.toml"), "5.26.0", "PyPI",
                transformers, "5.25.0", TESTED["transformers"]),
        Library("trl", Bound("trl", "trl>=1.16,<1.17", "pyproject.toml"), "1.16.0", "PyPI", "1.16.0", "1.16.0",
                TESTED["trl"]),
        Library("accelerate", Bound("accelerate", "accelerate>=1.15,<1.17", "pyproject.toml"), "1.16.0", "given",
                "1.16.0", "1.16.0", None),
    ]


def finished(tmp_path: Path, name: str, returncode: int, log: str = "") -> CheckRun:
    path = tmp_path / f"{name}.log"
    path.write_text(log)
    return CheckRun(name, [["python", "-m", name]], path, returncode=returncode, seconds=12.0)


def outcome(tmp_path, found, runs, install=None, transformers="5.26.0", selected=None) -> Outcome:
    return Outcome(tmp_path, tmp_path / ".compat-venv", "created", tmp_path / "logs", libraries(transformers), install,
                   runs, found, selected or ("perf-tests", "smoke-plain", "smoke-fast", "bench"), None,
                   {"transformers": "5.26"} if transformers == "5.26.0" else {}, seconds=600.0)


GATE_TEST = "tests/perf/test_versions.py::test_the_install_admits_exactly_the_tested_minor_versions"


def all_pass(tmp_path, widened=True):
    """Every switch holds; with the gate widened in memory, its bookkeeping test fails as it does before the edits."""
    cases = [Case(f"tests/perf/test_{name}.py::test_equal", "passed") for name in SWITCHES]
    cases.append(Case("tests/perf/test_trainer_perf.py::test_fast_training_run_gives_the_plain_result", "passed"))
    cases.append(Case(GATE_TEST, "failed", "AssertionError: transformers: pyproject.toml admits ['5.24', '5.25'], "
                                           "tested ('5.24', '5.25', '5.26')") if widened else Case(GATE_TEST, "passed"))
    found = verdicts(cases, SWITCHES, complete=True, gate_widened=widened)
    runs = [finished(tmp_path, name, 0) for name in ("perf-tests", "smoke-plain", "smoke-fast", "bench")]
    return found, runs


def test_when_everything_holds_the_report_gives_the_exact_edits(tmp_path):
    found, runs = all_pass(tmp_path)
    checked = outcome(tmp_path, found, runs, install=finished(tmp_path, "install", 0))
    checked.repinned = {"huggingface_hub": "2.5.0"}  # --unpin huggingface_hub: the version pip picked
    report = build(checked, TESTED)
    assert report["holds"] and not report["problems"]
    assert report["edits"] == {
        "pyproject.toml": ['"transformers>=5.24,<5.27",'],
        "coz_train/perf/versions.py": ['TESTED = {"transformers": ("5.24", "5.25", "5.26"), "trl": ("1.16",)}'],
        ".ci/constraints.txt": ["transformers==5.26.0", "huggingface_hub==2.5.0"],
        "other": [f"{GATE_TEST} failed with TESTED widened in memory only (AssertionError: transformers: pyproject.toml "
                  "admits ['5.24', '5.25'], tested ('5.24', '5.25', '5.26')): it checks the version bookkeeping; update "
                  "what it names and run it after the edits"]}
    text = render(report)
    assert "BREAKS" not in text and "do not widen" not in text
    assert "Everything checked holds.\nEdits that widen the project to the versions checked:" in text
    for line in ('    "transformers>=5.24,<5.27",', '    transformers==5.26.0', "  transformers  transformers>=5.24,<5.26"):
        assert line in text
    assert "perf.group_batches" in text and "holds" in text
    assert json.loads(json.dumps(report)) == report  # JSON as it is


def test_checking_the_pinned_versions_leaves_nothing_to_widen(tmp_path):
    found, runs = all_pass(tmp_path, widened=False)
    report = build(outcome(tmp_path, found, runs, transformers="5.25.0"), TESTED)
    assert report["holds"] and not any(report["edits"].values())
    assert report["notes"][0].startswith("transformers: the checks ran on 5.25.0, not on 5.26.0 (the newest release)")
    assert "Nothing to widen" in render(report)


def test_a_broken_switch_is_named_with_its_failing_tests_and_no_edits(tmp_path, perf_junit):
    _, cases = perf_junit
    found = verdicts(cases, ("load_once", "group_prefix", "group_batches", "image_cache", "vision_cache"),
                     complete=True, gate_widened=True)
    runs = [finished(tmp_path, "perf-tests", 1), finished(tmp_path, "smoke-plain", 0),
            finished(tmp_path, "smoke-fast", 1, "step 3\nTraceback (most recent call last):\nKeyError: 'logits'\n")]
    report = build(outcome(tmp_path, found, runs), TESTED)
    assert not report["holds"] and report["edits"] is None
    assert "perf.group_prefix breaks: tests/perf/test_group_prefix.py::test_equals_trl_path[interleaved]" in \
        report["problems"]
    assert "perf.load_once: not verified: refused by the version gate" in report["problems"]
    text = render(report)
    assert "BREAKS: do not widen." in text and "Edits" not in text
    assert "FAILED tests/perf/test_group_prefix.py::test_equals_trl_path[interleaved]: AssertionError: logits" in text
    assert f"smoke run, perf=fast failed (exit 1); see {tmp_path / 'smoke-fast.log'}" in text
    assert "      | KeyError: 'logits'" in text  # the failed run's log tail


def test_a_failed_install_stops_the_widening(tmp_path):
    install = finished(tmp_path, "install", 1, "ERROR: ResolutionImpossible\n")
    report = build(outcome(tmp_path, None, [], install=install), TESTED)
    assert not report["holds"]
    assert report["problems"][0].startswith("the install failed (exit 1): the new releases do not install with the rest")
