"""The step bench's paths: plain and fast (and the ablations), each keeping the run's version setting."""

import pytest

from coz_train.bench.step import step_paths
from coz_train.perf.versions import check_tested_versions


def test_every_path_keeps_the_runs_allow_untested_versions(monkeypatch):
    import coz_train.perf.versions as versions

    monkeypatch.setattr(versions.importlib.metadata, "version", lambda name: "9.99.0")  # an untested release
    for allow in (False, True):
        paths = dict(step_paths(compiled_decode=True, ablate=["vision_cache"], allow_untested_versions=allow))
        assert sorted(paths) == ["fast", "fast_compiled", "plain"]
        assert paths["fast"]["vision_cache"] is False and paths["fast_compiled"]["compiled_decode"] is True
        assert {perf["allow_untested_versions"] for perf in paths.values()} == {allow}
        if allow:
            check_tested_versions(paths["fast"])  # the bench runs the fast path as the run asked
        else:
            with pytest.raises(RuntimeError, match="tested with"):
                check_tested_versions(paths["fast"])
