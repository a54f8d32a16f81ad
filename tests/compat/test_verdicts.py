"""The perf tests' junit XML (from a real pytest run) read back and turned into one verdict per switch."""

from coz_train.compat.project import find_checkout, switch_names
from coz_train.compat.verdicts import (
    BREAKS,
    CAPABILITIES,
    FAST_PATH,
    HOLDS,
    NO_TEST,
    NOT_RUN,
    REFUSED,
    Case,
    nodeid_of,
    subject_of,
)
from coz_train.compat.verdicts import verdicts as verdicts_of

SWITCHES = switch_names(find_checkout(None).capabilities_py)


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
    found = by_subject(cases, complete=True)
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
    assert found["load_once"].status == REFUSED and found["load_once"].blocking  # a seam changed: not tried
    assert found["critic_prefix"].status == NO_TEST and found["critic_prefix"].skipped  # only skipped: no verdict
    assert found["text_cache"].status == NO_TEST and found["text_cache"].blocking
    assert found[FAST_PATH].status == HOLDS and found[FAST_PATH].passed == [
        "tests/perf/test_trainer_perf.py::test_fast_training_run_gives_the_plain_result"]


def test_the_capability_checks_own_tests_are_a_verdict_of_their_own(perf_junit):
    _, cases = perf_junit
    check = by_subject(cases, complete=True)[CAPABILITIES]
    assert check.status == BREAKS and check.blocking  # a seam changed on the release: it does not widen
    assert [c.name for c in check.failed] == ["test_every_seam_holds_on_the_installed_versions"]
    assert check.passed == ["tests/perf/test_capabilities.py::test_the_switches_are_the_configs"]


def test_a_selection_leaves_the_other_switches_unjudged(perf_junit):
    _, cases = perf_junit
    found = by_subject(cases, complete=False)
    assert found["text_cache"].status == NOT_RUN and not found["text_cache"].blocking


def test_subjects_by_file_then_by_name():
    def subject(nodeid):
        return subject_of(Case(nodeid, "passed"), SWITCHES)

    assert subject("tests/perf/test_compiled_decode.py::test_compiled_rollouts[rollout_prefix]") == "compiled_decode"
    assert subject("tests/perf/test_trainer_perf.py::test_config_check_refuses_critic_prefix_x") == "critic_prefix"
    assert subject("tests/perf/test_fast_path.py::test_plain_installs_nothing") == FAST_PATH
    assert subject("tests/perf/test_capabilities.py::test_x") == CAPABILITIES
    assert nodeid_of("tests.perf.test_a.TestB", "test_c[1-2]") == "tests/perf/test_a.py::TestB::test_c[1-2]"
