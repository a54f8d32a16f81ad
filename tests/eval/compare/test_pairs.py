"""Which pairs are compared: a method baseline within each group, a group baseline (by name or run folder) across
groups, every pair without one; across groups only the prompted methods unless --methods names others."""

from __future__ import annotations

import numpy as np
import pytest
from compare_helpers import group, scored_run

from coz_train.eval.compare.pairs import plan_pairs, prompt_dependent

METHODS = ["nearest", "recursive_multiscale-null", "recursive_multiscale-vlm", "recursive_multiscale-vlm+adapter"]


def run(name: str, root=None, methods=METHODS):
    values = {m: np.arange(3.0) for m in methods}
    return scored_run(name, values) if root is None else scored_run(name, values, root=root)


def names(pairs) -> list[tuple[str, str, str, str]]:
    return [(p.a.group.name, p.a.method, p.b.group.name, p.b.method) for p in pairs]


def test_a_method_baseline_compares_every_other_method_of_each_group_with_it() -> None:
    g = group("mine", run("s1"), run("s2"))
    pairs = plan_pairs([g], "recursive_multiscale-vlm", None, ["musiq"], [64, 256])
    assert names(pairs[::2]) == [("mine", m, "mine", "recursive_multiscale-vlm")
                                 for m in METHODS if m != "recursive_multiscale-vlm"]
    assert [p.scale for p in pairs[:2]] == [64, 256]
    only = plan_pairs([g], "recursive_multiscale-vlm", ["recursive_multiscale-vlm+adapter"], ["musiq"], [64])
    assert names(only) == [("mine", "recursive_multiscale-vlm+adapter", "mine", "recursive_multiscale-vlm")]
    assert only[0].within and only[0].names(False) == ("recursive_multiscale-vlm+adapter", "recursive_multiscale-vlm")


def test_a_group_or_run_baseline_compares_the_prompted_methods_across_groups(tmp_path) -> None:
    (tmp_path / "released").mkdir()
    mine, released = group("mine", run("s1"), run("s2")), group("released", run("released", root=tmp_path))
    by_name = plan_pairs([mine, released], "released", None, ["musiq"], [64])
    by_folder = plan_pairs([mine, released], str(tmp_path / "released"), None, ["musiq"], [64])
    expected = [("mine", m, "released", m) for m in ("recursive_multiscale-vlm", "recursive_multiscale-vlm+adapter")]
    assert names(by_name) == names(by_folder) == expected  # nearest and -null chains are the same in both
    assert not by_name[0].within and by_name[0].names(True) == ("mine", "released")
    asked = plan_pairs([mine, released], "released", ["nearest"], ["musiq"], [64])
    assert names(asked) == [("mine", "nearest", "released", "nearest")]


def test_without_a_baseline_every_pair_later_against_earlier() -> None:
    one = plan_pairs([group("g", run("a"))], None, None, ["musiq"], [64])
    assert len(one) == 6 and names(one)[0] == ("g", "recursive_multiscale-null", "g", "nearest")
    three = [group(n, run(n)) for n in ("x", "y", "z")]
    pairs = plan_pairs(three, None, ["recursive_multiscale-vlm"], ["musiq"], [64])
    assert [(p.a.group.name, p.b.group.name) for p in pairs] == [("y", "x"), ("z", "x"), ("z", "y")]


def test_bad_choices_are_named() -> None:
    g = group("g", run("a"))
    with pytest.raises(ValueError, match=r"--baseline 'vlm' is neither a method.*nor a group \(\['g'\]\)"):
        plan_pairs([g], "vlm", None, ["musiq"], [64])
    with pytest.raises(ValueError, match=r"--methods: \['onestep-vlm'\] are not methods"):
        plan_pairs([g], None, ["onestep-vlm"], ["musiq"], [64])
    only_null = group("h", run("b", methods=["nearest", "recursive_multiscale-null"]))
    with pytest.raises(ValueError, match="Nothing to compare"):
        plan_pairs([only_null, group("k", run("c", methods=["nearest"]))], None, None, ["musiq"], [64])


def test_prompt_dependent_methods() -> None:
    assert [prompt_dependent(m) for m in METHODS] == [False, False, True, True]
    assert prompt_dependent("onestep-user") and not prompt_dependent("bicubic")
