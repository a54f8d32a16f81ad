"""Which pairs a comparison compares: methods within a group, or the same method across groups.

- `--baseline <method>` (a result name such as `recursive_multiscale-vlm`): within each group that has it,
  every other method against it. "Does the adapter beat the base VLM?" is
  `--baseline recursive_multiscale-vlm` (add `--methods recursive_multiscale-vlm+adapter` to ask only that).
- `--baseline <group or run>` (a group's name, or one of the run folders given): every other group against
  it, method by method. "Does my adapter beat the released one?" is `<my runs> <released run> --baseline
  <released run>`.
- No baseline: with one group, every pair of its methods; with several, every pair of groups.

Across groups only the methods a group's subject can change are compared by default: those with a prompt
source other than `null` (a VLM or a user prompt); nearest, bicubic and `-null` chains are the same in every
group of one protocol. `--methods` names the methods to compare (on either side). Within a pair, `a` is
compared against `b` (the difference is a - b): the baseline is `b`; without one, the earlier of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from coz_train.eval.compare.groups import Group
from coz_train.image_quality.registry import METRIC_NAMES


@dataclass(frozen=True)
class Side:
    group: Group
    method: str


@dataclass(frozen=True)
class Pair:
    a: Side
    b: Side
    metric: str
    scale: int

    @property
    def within(self) -> bool:
        return self.a.group is self.b.group

    def names(self, several_groups: bool) -> tuple[str, str]:
        """How a sentence or table names a and b: methods within a group (with the group's name when the report
        has several groups), groups across (with the method where the two sides differ)."""
        if self.within:
            suffix = f" ({self.a.group.name})" if several_groups else ""
            return self.a.method + suffix, self.b.method + suffix
        if self.a.method == self.b.method:
            return self.a.group.name, self.b.group.name
        return f"{self.a.group.name}:{self.a.method}", f"{self.b.group.name}:{self.b.method}"


def metric_name(metric: str) -> str:
    """How a sentence names a metric: MUSIQ, NIQE; derived names (consistency_ssim) and the judge's score
    (hallucination) as they are."""
    return metric.upper() if metric in METRIC_NAMES else metric


def prompt_dependent(method: str) -> bool:
    """Whether a method's results depend on its prompts (a source other than `null`)."""
    _, _, source = method.partition("-")
    return bool(source) and source.split("/")[0] != "null"


def find_group(groups: list[Group], name: str) -> Group | None:
    """The group named `name`, or the group of the run folder `name`."""
    for group in groups:
        if group.name == name:
            return group
    path = Path(name).expanduser()
    if path.exists():
        for group in groups:
            if any(run.path.resolve() == path.resolve() for run in group.runs):
                return group
    return None


def _method_pairs(group: Group, baseline: str | None, methods: list[str] | None) -> list[tuple[Side, Side]]:
    chosen = [m for m in group.methods if methods is None or m in methods or m == baseline]
    if baseline is not None:
        return [(Side(group, m), Side(group, baseline)) for m in chosen if m != baseline] \
            if baseline in group.methods else []
    return [(Side(group, later), Side(group, earlier)) for earlier, later in combinations(chosen, 2)]


def _group_pairs(a: Group, b: Group, methods: list[str] | None) -> list[tuple[Side, Side]]:
    shared = [m for m in a.methods if m in b.methods]
    chosen = [m for m in shared if (m in methods if methods is not None else prompt_dependent(m))]
    return [(Side(a, m), Side(b, m)) for m in chosen]


def plan_pairs(groups: list[Group], baseline: str | None, methods: list[str] | None, metrics: list[str],
               scales: list[int]) -> list[Pair]:
    """Every (a, b) side pair times every metric and scale, in the order the tables show them."""
    every_method = list(dict.fromkeys(m for g in groups for m in g.methods))
    unknown = [m for m in methods or [] if m not in every_method]
    if unknown:
        raise ValueError(f"--methods: {unknown} are not methods of the runs (they have {every_method}).")
    sides: list[tuple[Side, Side]] = []
    if baseline is not None and baseline in every_method:
        for group in groups:
            sides += _method_pairs(group, baseline, methods)
    elif baseline is not None:
        base = find_group(groups, baseline)
        if base is None:
            raise ValueError(f"--baseline {baseline!r} is neither a method of the runs ({every_method}) nor a group "
                             f"({[g.name for g in groups]}) nor one of the run folders given.")
        if len(groups) == 1:
            raise ValueError(f"--baseline {baseline!r}: every run is in its group {base.name!r} (they differ only in a "
                             "seed), so there is no other group to compare with it: --no-seed-groups compares the "
                             "runs one by one, --group name=run,... groups them by hand.")
        for group in groups:
            if group is not base:
                sides += _group_pairs(group, base, methods)
    elif len(groups) == 1:
        sides = _method_pairs(groups[0], None, methods)
    else:
        for earlier, later in combinations(groups, 2):
            sides += _group_pairs(later, earlier, methods)
    if not sides:
        raise ValueError("Nothing to compare: no pair of methods or groups with these runs and options (across "
                         "groups only methods with a VLM or user prompt are compared unless --methods names others; "
                         "a method baseline needs a group that has it and another method).")
    return [Pair(a, b, metric, scale) for metric in metrics for a, b in sides for scale in scales]
