"""coz_train.perf.replacement: a replaced attribute comes back as the very object that was there, or not at all."""

from __future__ import annotations

import types

import pytest

from coz_train.perf.replacement import Replacement


class Owner:
    def method(self) -> str:
        return "class"


def test_an_own_attribute_comes_back_as_the_same_object():
    owner = types.SimpleNamespace(value=object())
    before = owner.value
    change = Replacement(owner, "value", "new", "test").apply()
    assert owner.value == "new" and change.applied
    change.undo()
    assert owner.value is before and not change.applied


def test_a_class_method_shows_through_again_after_undo():
    owner = Owner()
    change = Replacement(owner, "method", lambda: "instance").apply()
    assert owner.method() == "instance"
    change.undo()
    assert owner.method() == "class" and "method" not in owner.__dict__


def test_observed_records_a_change_made_elsewhere_and_applying_twice_is_refused():
    owner = Owner()
    before = Replacement.own_value(owner, "method")
    owner.method = lambda: "patched"
    change = Replacement.observed(owner, "method", "elsewhere", before)
    assert "Owner.method" in str(change) and "(elsewhere)" in str(change)
    with pytest.raises(RuntimeError, match="already applied"):
        change.apply()
    change.undo()
    assert owner.method() == "class"
