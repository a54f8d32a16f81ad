"""The perf switches refuse TRL / transformers versions they were not tested with, unless told."""

import pytest
from omegaconf import OmegaConf

import coz_train.perf.versions as versions
from coz_train.perf.versions import TESTED, check_tested_versions, minor, untested_versions


def test_the_installed_versions_are_the_tested_ones():
    assert untested_versions() == {}, "update coz_train/perf/versions.py TESTED after testing, or install the pins"
    assert minor("5.24.0") == "5.24" and minor("2.14.1+cu130") == "2.14"


def test_a_switch_on_an_untested_version_stops_naming_the_tested_ones(monkeypatch):
    monkeypatch.setattr(versions.importlib.metadata, "version", lambda name: {"trl": "1.19.0"}.get(name, "5.24.3"))
    fast = OmegaConf.create({"group_prefix": True, "allow_untested_versions": False})
    with pytest.raises(RuntimeError, match=r"perf.group_prefix .* tested with transformers 5.24.x/5.25.x, trl 1.16.x.*"
                                           r"has trl 1.19.0.*perf.allow_untested_versions=true"):
        check_tested_versions(fast)
    check_tested_versions(OmegaConf.create({"group_prefix": False}))  # plain: nothing replaced, nothing checked
    check_tested_versions(OmegaConf.merge(fast, {"allow_untested_versions": True}))
    assert set(TESTED) == {"transformers", "trl"}


def test_the_install_admits_exactly_the_tested_minor_versions():
    """pyproject.toml's bounds (the package's metadata) let pip pick only minor versions the suite passed on, so an
    install without the lock (a wheel, an existing environment) gets a tested TRL / transformers, now and after
    their next release."""
    import importlib.metadata

    from packaging.requirements import Requirement

    bounds = {req.name: req.specifier for req in map(Requirement, importlib.metadata.requires("coz_train"))
              if not req.marker}
    for name, minors in TESTED.items():
        major = int(minors[0].split(".")[0])
        admitted = {f"{major}.{m}" for m in range(100) if bounds[name].contains(f"{major}.{m}.0")
                    or bounds[name].contains(f"{major}.{m}.99")}
        assert admitted == set(minors), f"{name}: pyproject.toml admits {sorted(admitted)}, tested {minors}"
        assert not bounds[name].contains(f"{major + 1}.0.0")
