"""Bounds read from pyproject.toml (or the installed metadata), tested against versions, and widened."""

import importlib.metadata

import pytest
from packaging.requirements import Requirement

from coz_train.compat.bounds import (
    LIBRARIES,
    constraint_pins,
    next_minor,
    pinned,
    project_bounds,
    pyproject_requirements,
    widened,
    with_versions,
)
from coz_train.compat.project import find_checkout

PYPROJECT = """\
[project]
name = "coz_train"
dependencies = [
    "torch>=2.6,<2.15",  # tested: 2.14
    "transformers>=5.24,<5.26",  # tested minors only
    "trl>=1.16,<1.17",
    "peft ~= 0.21.0",
    "accelerate>=1.15; python_version >= '3.10'",
]
"""


def test_bounds_come_from_pyproject_with_their_lines_as_written(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    bounds = project_bounds(path)
    assert list(bounds) == list(LIBRARIES)
    assert bounds["transformers"].line == "transformers>=5.24,<5.26" and bounds["transformers"].source == "pyproject.toml"
    assert bounds["transformers"].contains("5.25.0") and not bounds["transformers"].contains("5.26.0")
    assert bounds["peft"].contains("0.21.9") and not bounds["peft"].contains("0.22.0")
    assert bounds["accelerate"].contains("1.99.0")


def test_the_install_takes_the_requirements_with_the_checked_versions_in_place_of_the_bounds(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT + '[project.optional-dependencies]\ntest = ["pytest>=8", "trl[vllm]>=1.16"]\n')
    lines = with_versions(pyproject_requirements(path, "test"), {"transformers": "5.26.0", "accelerate": "1.17.0",
                                                                 "TRL": "1.17.0"})
    assert lines == ["torch>=2.6,<2.15", "transformers==5.26.0", "trl==1.17.0", "peft ~= 0.21.0",
                     'accelerate==1.17.0; python_version >= "3.10"', "pytest>=8", "trl[vllm]==1.17.0"]
    with pytest.raises(ValueError, match=r"no \[project.optional-dependencies\] docs list"):
        pyproject_requirements(path, "docs")


def test_a_missing_library_is_unbounded_and_a_broken_line_is_named(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\ndependencies = ["transformers>=5.24,<5.26"]\n')
    assert project_bounds(path)["trl"].line is None and project_bounds(path)["trl"].contains("9.0.0")
    path.write_text('[project]\ndependencies = ["transformers>=>5.24"]\n')
    with pytest.raises(ValueError, match=r"pyproject.toml: dependency 'transformers>=>5.24' is not a valid requirement"):
        project_bounds(path)
    path.write_text('[project]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"no \[project\] dependencies list"):
        project_bounds(path)


def test_without_a_pyproject_the_installed_metadata_gives_the_bounds(tmp_path):
    bounds = project_bounds(tmp_path / "missing.toml")
    installed = {Requirement(line).name: line for line in importlib.metadata.requires("coz_train")}
    assert bounds["transformers"].source == "installed metadata"
    assert bounds["transformers"].specifier == Requirement(installed["transformers"]).specifier


def test_the_checkouts_own_bounds_admit_its_pinned_versions():
    checkout = find_checkout(None)
    bounds = project_bounds(checkout.pyproject)
    pins = constraint_pins(checkout.constraints.read_text())
    for name in LIBRARIES:
        assert bounds[name].contains(pins[name]), (bounds[name].line, pins[name])


@pytest.mark.parametrize(("line", "version", "expected"), [
    ("transformers>=5.24,<5.26", "5.26.0", "transformers>=5.24,<5.27"),
    ("transformers>=5.24,<5.26", "5.25.3", "transformers>=5.24,<5.26"),  # already inside: unchanged
    ("trl>=1.16,<1.17", "1.18.2", "trl>=1.16,<1.19"),
    ("accelerate<=1.16,>=1.15", "1.17.0", "accelerate<1.18,>=1.15"),  # the order as written
    ("peft ~= 0.21.0", "0.22.1", "peft>=0.21.0,<0.23"),
    ("trl==1.16.*", "1.17.0", "trl>=1.16,<1.18"),
    ("transformers[torch]>=5.24,<5.26; python_version >= '3.10'", "6.0.0",
     "transformers[torch]>=5.24,<6.1; python_version >= '3.10'"),
])
def test_widening_moves_only_the_upper_end_past_the_checked_minor(line, version, expected):
    assert widened(line, version) == expected
    assert Requirement(expected).specifier.contains(version)


@pytest.mark.parametrize(("line", "version", "message"), [
    ("accelerate>=1.15,<1.17", "1.14.0", r"excludes 1.14.0 with >=1.15, which is not an upper bound"),
    ("trl>=1.16,!=1.17.0,<1.17", "1.17.0", r"excludes 1.17.0 with !=1.17.0"),
])
def test_what_is_not_a_widening_is_refused(line, version, message):
    with pytest.raises(ValueError, match=message):
        widened(line, version)


def test_minor_versions():
    assert next_minor("5.26.0") == "5.27" and next_minor("0.21.2") == "0.22" and next_minor("6") == "6.1"


def test_the_derived_constraints_replace_the_pins_and_keep_the_rest():
    text = "# header\naccelerate==1.15.0\nPyYAML==6.0.3\ntorch==2.14.1\ntransformers==5.24.0\n"
    derived = pinned(text, {"transformers": "5.26.0", "accelerate": "1.16.0", "trl": "1.17.0"})
    assert derived.splitlines() == ["# header", "accelerate==1.16.0", "PyYAML==6.0.3", "torch==2.14.1",
                                    "transformers==5.26.0", "trl==1.17.0"]
    assert constraint_pins(derived) == {"accelerate": "1.16.0", "pyyaml": "6.0.3", "torch": "2.14.1",
                                        "transformers": "5.26.0", "trl": "1.17.0"}
    assert constraint_pins(pinned(text, {"transformers": "5.26.0"}, unpin=("pyyaml",))) == {
        "accelerate": "1.15.0", "torch": "2.14.1", "transformers": "5.26.0"}
