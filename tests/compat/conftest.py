"""A real pytest run over a small generated tests/perf folder, its junit XML read back as test cases."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from coz_train.compat.verdicts import read_junit

REFUSAL = ("perf.load_once need library internals that changed in this environment (transformers 5.26.0, trl 1.16.0, "
           "peft 0.21.2, torch 2.14.1):\n- perf.load_once: seam 'torch Dataset rows': DataLoader no longer calls "
           "__getitems__.\nSet perf.load_once=false, or install the tested versions with pip install -c "
           ".ci/constraints.txt -e . (python -m coz_train.perf.capabilities lists every seam).")

PERF_TESTS = {
    "test_group_prefix.py": """
        import pytest

        def test_single_completion_token():
            pass

        @pytest.mark.parametrize("rows", ["grouped", "interleaved"])
        def test_equals_trl_path(rows):
            assert rows == "grouped", "logits differ from TRL's"
    """,
    "test_trainer_perf.py": """
        import pytest

        def test_group_shuffle_keeps_groups_together():
            pass

        def test_merged_adapters_restore_the_weights():
            pass

        def test_fast_training_run_gives_the_plain_result():
            pass

        def test_config_check_refuses_critic_prefix_with_a_critic_server():
            pytest.skip("no critic server here")
    """,
    "test_merge.py": """
        class TestMerge:
            def test_bf16_weights_come_back(self):
                pass
    """,
    "test_load_once.py": f"""
        def test_a_batch_is_read_once():
            raise RuntimeError({REFUSAL!r})
    """,
    "test_image_cache.py": """
        import pytest

        @pytest.fixture
        def images():
            raise OSError("no images")

        def test_each_image_processed_once(images):
            pass
    """,
    "test_vision_cache.py": """
        import a_module_that_is_not_there  # noqa: F401

        def test_never_collected():
            pass
    """,
    "test_capabilities.py": """
        def test_every_seam_holds_on_the_installed_versions():
            assert False, "['backbone forward(cache=)'] == []"

        def test_the_switches_are_the_configs():
            pass
    """,
}


@pytest.fixture(scope="session")
def perf_junit(tmp_path_factory):
    """(junit XML path, its cases) of a real pytest run over the generated tests/perf folder."""
    root = tmp_path_factory.mktemp("perf_project")
    (root / "pytest.ini").write_text("[pytest]\n")
    folder = root / "tests" / "perf"
    folder.mkdir(parents=True)
    for name, source in PERF_TESTS.items():
        (folder / name).write_text(textwrap.dedent(source))
    junit = root / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    command = [sys.executable, "-m", "pytest", "tests/perf", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    return junit, read_junit(junit)
