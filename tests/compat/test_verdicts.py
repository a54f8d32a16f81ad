"""The perf tests' junit XML (from a real pytest run) read back and turned into one verdict per switch."""

from coz_train.compat.project import find_checkout, gate_literals
from coz_train.compat.verdicts import (
    BREAKS,
    FAST_PATH,
    GATE,
    HOLDS,
    NO_TEST,
    NOT_RUN,
    REFUSED,
    WITH_TESTED,
    Case,
    nodeid_of,
    subject_of,
)
from coz_train.compat.verdicts import verdicts as verdicts_of

SWITCHES = gate_literals(find_checkout(None).versions_py)[1]


def by_subject(cases, **kwargs):
    return {v.subject: v for v in verdicts_of(cases, SWITCHES, **kwargs)}


def test_the_junit_cases_keep_their_node_ids_and_outcomes(perf_junit):
    _, cases = perf_junit
    outcomes = {case.nodeid: case.outcome for case in cases}
    assert outcomes["tests/perf/test_group_prefix.py::test_equals_trl_path[grouped]"] == "passed"
    assert outcomes["tests/perf/test_group_prefix.py::test_equals_trl_path[interleaved]"] == "failed"
    assert outcomes["tests/perf/test_merge.py::TestMerge::test_bf16_weights_come_back"] == "passed"
    assert outcomes["tests/perf/test_image_cache.py::test_each_image_processed_once"] == "error"
    assert outcomes["tests/perf/test_vision_cache.py"] == "error"  # the file did not import
    assert outcomes["tests/perf/test_trainer_perf.py::test_config_check_refuses_critic_prefix_with_a_critic_server"] \
        == "skipped"


def test_each_switch_gets_the_verdict_of_its_tests(perf_junit):
    _, cases = perf_junit
    found = by_subject(cases, complete=True, gate_widened=True)
    prefix = found["group_prefix"]
    assert prefix.status == BREAKS and prefix.blocking
    assert [c.nodeid for c in prefix.failed] == ["tests/perf/test_group_prefix.py::test_equals_trl_path[interleaved]"]
    assert "logits differ from TRL's" in prefix.failed[0].message
    assert prefix.passed == ["tests/perf/test_group_prefix.py::test_single_completion_token",
                             "tests/perf/test_group_prefix.py::test_equals_trl_path[grouped]"]
    assert found["image_cache"].status == BREAKS and found["vision_cache"].status == BREAKS
    batches = found["group_batches"]  # from the shared file, by the name of the test
    assert batches.status == HOLDS and batches.passed == [
        "tests/perf/test_trainer_perf.py::test_group_shuffle_keeps_groups_together"]
    merge = found["merge_adapters_for_generation"]
    assert merge.status == HOLDS and merge.tests_from == ["tests/perf/test_merge.py", "tests/perf/test_trainer_perf.py"]
    assert found["load_once"].status == REFUSED and found["load_once"].blocking  # the gate refused: not tried
    assert found["critic_prefix"].status == NO_TEST and found["critic_prefix"].skipped  # only skipped: no verdict
    assert found["text_cache"].status == NO_TEST and found["text_cache"].blocking
    assert found[FAST_PATH].status == HOLDS and found[FAST_PATH].passed == [
        "tests/perf/test_trainer_perf.py::test_fast_training_run_gives_the_plain_result"]


def test_the_gate_tests_wait_for_the_edits_only_when_the_gate_was_widened_in_memory(perf_junit):
    _, cases = perf_junit
    gate = by_subject(cases, complete=True, gate_widened=True)[GATE]
    assert gate.status == WITH_TESTED and not gate.blocking
    assert [c.name for c in gate.failed] == ["test_a_switch_on_an_untested_version_stops_naming_the_tested_ones",
                                             "test_the_install_admits_exactly_the_tested_minor_versions"]
    assert by_subject(cases, complete=True, gate_widened=False)[GATE].status == BREAKS


def test_a_selection_leaves_the_other_switches_unjudged(perf_junit):
    _, cases = perf_junit
    found = by_subject(cases, complete=False, gate_widened=True)
    assert found["text_cache"].status == NOT_RUN and not found["text_cache"].blocking


def test_subjects_by_file_then_by_name():
    def subject(nodeid):
        return subject_of(Case(nodeid, "passed"), SWITCHES)

    assert subject("tests/perf/test_compiled_decode.py::test_compiled_rollouts[rollout_prefix]") == "compiled_decode"
    assert subject("tests/perf/test_trainer_perf.py::test_config_check_refuses_critic_prefix_x") == "critic_prefix"
    assert subject("tests/perf/test_fast_path.py::test_plain_installs_nothing") == FAST_PATH
    assert subject("tests/perf/test_versions.py::test_x") == GATE
    assert nodeid_of("tests.perf.test_a.TestB", "test_c[1-2]") == "tests/perf/test_a.py::TestB::test_c[1-2]"
