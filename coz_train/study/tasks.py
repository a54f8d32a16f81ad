"""One rater's task list: which items, in which order, which side, and where the hidden checks go.

Per rater (seeded by `study.seed` and the rater's number, so `invite` adds raters without touching
anyone's list):
- items: all, or with `study.items_per_rater=m` a window of m items of one seeded shuffle of all items,
  rater r starting at r*m: every item is seen about equally often across raters;
- test blocks in a drawn order (`study.shuffle_tests`), each preceded by that test's instructions, tasks
  shuffled within a block;
- pair mode: the two conditions' sides drawn per task (`condition_left` / `condition_right`); in a pair
  control, `condition` names the degraded side;
- `study.checks.repeats` tasks of each block shown again at least `min_gap` tasks later (sides swapped),
  `check="repeat"` with `repeat_of` the first showing's task id; `study.checks.controls` controls
  (`check="control"`, see `coz_train.study.stimuli`) at random places.
Task ids are `t0001`, `t0002`, ... in showing order, unique per rater.
"""

from __future__ import annotations

import random

from omegaconf import DictConfig

from coz_train.study.stimuli import CONTROL_PREFIX, Stimulus, StimulusSet


def rater_items(items: list[dict], study: DictConfig, index: int) -> list[dict]:
    m = study.items_per_rater
    if m is None or m >= len(items):
        return list(items)
    if m < 1:
        raise ValueError(f"study.items_per_rater={m} must be at least 1 (or null for every item).")
    order = list(items)
    random.Random(f"items:{study.seed}").shuffle(order)
    return [order[(index * m + j) % len(order)] for j in range(m)]


def _entry(stimulus: Stimulus, rng: random.Random, swap: bool | None = None) -> dict:
    panels = [p.to_json() for p in stimulus.panels]
    entry = {"test": stimulus.test, "kind": stimulus.kind, "item": stimulus.item, "scale": stimulus.scale,
             "condition": "", "condition_left": "", "condition_right": "", "check": stimulus.check, "repeat_of": "",
             "panels": panels, "reference": stimulus.reference}
    if stimulus.kind == "mos":
        entry["condition"] = stimulus.conditions[0]
        return entry
    left, right = stimulus.conditions
    if rng.random() < 0.5 if swap is None else swap:
        left, right, panels = right, left, panels[::-1]
    entry.update(condition_left=left, condition_right=right, panels=panels)
    if stimulus.check == "control":  # a pair control's `condition` names its degraded side
        entry["condition"] = next(c for c in stimulus.conditions if c.startswith(CONTROL_PREFIX))
    return entry


def _repeat(entry: dict) -> dict:
    again = {k: v for k, v in entry.items() if not k.startswith("_")}
    again.update(check="repeat", panels=[dict(p) for p in entry["panels"]])
    if entry["kind"] == "pair":  # the same pair with the sides swapped
        again.update(condition_left=entry["condition_right"], condition_right=entry["condition_left"],
                     panels=again["panels"][::-1])
    return again


def _block(stimuli: list[Stimulus], controls: list[Stimulus], study: DictConfig, rng: random.Random) -> list[dict]:
    block = [_entry(s, rng) for s in stimuli]
    rng.shuffle(block)
    checks = study.checks
    if checks.repeats < 0 or checks.controls < 0 or checks.min_gap < 0:
        raise ValueError("study.checks.repeats, .controls and .min_gap must be >= 0.")
    first_half = list(range(max(1, (len(block) + 1) // 2))) if block else []
    for position in sorted(rng.sample(first_half, min(checks.repeats, len(first_half))), reverse=True):
        original = block[position]
        original.setdefault("_ref", f"{id(original)}")
        lowest = min(position + checks.min_gap + 1, len(block))
        block.insert(rng.randint(lowest, len(block)), {**_repeat(original), "_repeat_of_ref": original["_ref"]})
    for stimulus in rng.sample(controls, min(checks.controls, len(controls))):
        block.insert(rng.randint(0, len(block)), _entry(stimulus, rng))
    return block


def rater_tasks(stimuli: StimulusSet, study: DictConfig, index: int) -> list[dict]:
    """The showing order of rater number `index` (0-based), each task a dict (see `_entry`) with its id."""
    rng = random.Random(f"rater:{study.seed}:{index}")
    items = rater_items(stimuli.items, study, index)
    ids = {i["id"] for i in items}
    images = {i["image"] for i in items}
    tests = list(stimuli.ordinary)
    if study.shuffle_tests:
        rng.shuffle(tests)
    tasks: list[dict] = []
    for test in tests:
        ordinary = [s for s in stimuli.ordinary[test] if s.item in ids]
        pool = stimuli.controls.get(test, [])
        own = [s for s in pool if s.item in ids or s.item.split("@")[0] in images] or pool
        tasks += _block(ordinary, own, study, rng)
    by_ref: dict[str, str] = {}
    for n, task in enumerate(tasks, start=1):
        task["task"] = f"t{n:04d}"
        if "_ref" in task:
            by_ref[task.pop("_ref")] = task["task"]
    for task in tasks:
        if "_repeat_of_ref" in task:
            task["repeat_of"] = by_ref[task.pop("_repeat_of_ref")]
    return tasks


def client_view(task: dict) -> dict:
    """What the rater's browser gets: images and text to show, nothing about conditions or checks."""
    return {"task": task["task"], "test": task["test"], "kind": task["kind"], "panels": task["panels"],
            "reference": task["reference"]}
