"""The report: the exact edits when everything holds, the broken switch and its tests when something breaks."""

import json
from pathlib import Path

from coz_train.compat.bounds import Bound
from coz_train.compat.checks import CHECKS, CheckRun
from coz_train.compat.report import Library, Outcome, build, render
from coz_train.compat.verdicts import Case, verdicts

SWITCHES = ("load_once", "group_prefix", "group_batches")


def libraries(transformers: str = "5.26.0") -> list[Library]:
    return [
        Library("transformers", Bound("transformers", "transformers>=5.24,<5.26", "pyproject.toml"), "5.26.0", "PyPI",
                transformers, "5.25.0"),
        Library("trl", Bound("trl", "trl>=1.16,<1.17", "pyproject.toml"), "1.16.0", "PyPI", "1.16.0", "1.16.0"),
        Library("accelerate", Bound("accelerate", "accelerate>=1.15,<1.17", "pyproject.toml"), "1.16.0", "given",
                "1.16.0", "1.16.0"),
    ]


def seams(changed: str | None = None) -> dict:
    """The capability check's JSON: every seam holds, or `changed` (the cache keyword seam) does not."""
    listed = [("backbone forward(cache=)", ["group_prefix", "critic_prefix", "rollout_prefix"]),
              ("TRL shuffle_sequence_dict", ["group_batches"]), ("torch Dataset rows", ["load_once"])]
    return {"versions": {"transformers": "5.26.0"}, "seams": [
        {"name": name, "switches": switches, "holds": name != changed,
         "why": "Qwen2_5_VLModel.forward has no `cache` parameter" if name == changed else ""}
        for name, switches in listed]}


def finished(tmp_path: Path, name: str, returncode: int, log: str = "") -> CheckRun:
    path = tmp_path / f"{name}.log"
    path.write_text(log)
    return CheckRun(name, [["python", "-m", name]], path, returncode=returncode, seconds=12.0)


def outcome(tmp_path, found, runs, install=None, transformers="5.26.0", capabilities=None) -> Outcome:
    return Outcome(tmp_path, tmp_path / ".compat-venv", "created", tmp_path / "logs", libraries(transformers), install,
                   runs, found, CHECKS, None, capabilities if capabilities is not None else seams(), seconds=600.0)


def all_pass(tmp_path):
    """Every seam and every switch holds."""
    cases = [Case(f"tests/perf/test_{name}.py::test_equal", "passed") for name in SWITCHES]
    cases.append(Case("tests/perf/test_trainer_perf.py::test_fast_training_run_gives_the_plain_result", "passed"))
    cases.append(Case("tests/perf/test_capabilities.py::test_every_seam_holds_on_the_installed_versions", "passed"))
    found = verdicts(cases, SWITCHES, complete=True)
    runs = [finished(tmp_path, name, 0) for name in CHECKS]
    return found, runs


def test_when_everything_holds_the_report_gives_the_exact_edits(tmp_path):
    found, runs = all_pass(tmp_path)
    checked = outcome(tmp_path, found, runs, install=finished(tmp_path, "install", 0))
    checked.repinned = {"huggingface_hub": "2.5.0"}  # --unpin huggingface_hub: the version pip picked
    report = build(checked)
    assert report["holds"] and not report["problems"] and not report["partial"]
    assert report["edits"] == {"pyproject.toml": ['"transformers>=5.24,<5.27",'],
                               ".ci/constraints.txt": ["transformers==5.26.0", "huggingface_hub==2.5.0"], "other": []}
    assert report["capabilities"][0] == {"switch": "group_prefix", "status": "holds",
                                         "seams": ["backbone forward(cache=)"], "changed": []}
    text = render(report)
    assert "BREAKS" not in text and "do not widen" not in text
    assert "Everything checked holds.\nEdits that widen the project to the versions checked:" in text
    for line in ('    "transformers>=5.24,<5.27",', '    transformers==5.26.0', "  transformers  transformers>=5.24,<5.26"):
        assert line in text
    assert "perf.group_batches" in text and "holds" in text
    assert "  perf.group_batches   holds    TRL shuffle_sequence_dict" in text
    assert json.loads(json.dumps(report)) == report  # JSON as it is


def test_checking_the_pinned_versions_leaves_nothing_to_widen(tmp_path):
    found, runs = all_pass(tmp_path)
    report = build(outcome(tmp_path, found, runs, transformers="5.25.0"))
    assert report["holds"] and not any(report["edits"].values())
    assert report["notes"][0].startswith("transformers: the checks ran on 5.25.0, not on 5.26.0 (the newest release)")
    assert "Nothing to widen" in render(report)


def test_a_broken_switch_is_named_with_its_failing_tests_and_no_edits(tmp_path, perf_junit):
    _, cases = perf_junit
    found = verdicts(cases, ("load_once", "group_prefix", "group_batches", "image_cache", "vision_cache"),
                     complete=True)
    runs = [finished(tmp_path, "capabilities", 0), finished(tmp_path, "perf-tests", 1),
            finished(tmp_path, "smoke-plain", 0),
            finished(tmp_path, "smoke-fast", 1, "step 3\nTraceback (most recent call last):\nKeyError: 'logits'\n")]
    report = build(outcome(tmp_path, found, runs))
    assert not report["holds"] and report["edits"] is None
    assert "perf.group_prefix breaks: tests/perf/test_group_prefix.py::test_equals_trl_path[interleaved]" in \
        report["problems"]
    assert "perf.load_once: not verified: refused by the capability check" in report["problems"]
    text = render(report)
    assert "BREAKS: do not widen." in text and "Edits" not in text
    assert "FAILED tests/perf/test_group_prefix.py::test_equals_trl_path[interleaved]: AssertionError: logits" in text
    assert f"smoke run, perf=fast failed (exit 1); see {tmp_path / 'smoke-fast.log'}" in text
    assert "      | KeyError: 'logits'" in text  # the failed run's log tail


def test_a_failed_install_stops_the_widening(tmp_path):
    install = finished(tmp_path, "install", 1, "ERROR: ResolutionImpossible\n")
    report = build(outcome(tmp_path, None, [], install=install, capabilities={}))
    assert not report["holds"]
    assert report["problems"][0].startswith("the install failed (exit 1): the new releases do not install with the rest")


def test_a_changed_seam_names_its_switches_and_stops_the_widening(tmp_path):
    found, runs = all_pass(tmp_path)
    runs[0] = finished(tmp_path, "capabilities", 1)  # the capability check exits 1 when a seam changed
    report = build(outcome(tmp_path, found, runs, capabilities=seams(changed="backbone forward(cache=)")))
    assert not report["holds"] and report["edits"] is None
    why = "Qwen2_5_VLModel.forward has no `cache` parameter"
    assert report["problems"] == [f"perf.{switch}: the capability check refuses it: seam 'backbone forward(cache=)' "
                                  f"changed ({why})" for switch in ("group_prefix", "critic_prefix", "rollout_prefix")]
    text = render(report)
    assert f"  perf.rollout_prefix  CHANGED  seam 'backbone forward(cache=)': {why}" in text
    assert "  perf.load_once       holds    torch Dataset rows" in text
    assert "BREAKS: do not widen." in text and "capability check (perf seams) failed" not in text
