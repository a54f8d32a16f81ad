"""The benchmark's table and JSON: each phase plain vs fast, against its floor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STEP_PHASES = ("preprocess", "rollout", "critic", "logps", "train")  # one GRPO step (vision is inside them)
GOAL_S, STRETCH_S = 4.0, 2.5


REPORT_ONLY = {"fast_static": "report only, not in step", "fast_compiled": "report only; in step +compiled"}


def step_summary(phases: dict, size: str) -> dict | None:
    """The step's phases added up (each phase's `fast` path; the report-only rollouts are not in it); with a
    `fast_compiled` rollout, also the step with `perf.compiled_decode` on (`compiled`). The goal applies to the
    paper's setting (`bench.size=real`) only."""
    done = [p for p in STEP_PHASES if p in phases and "plain" in phases[p]]
    if not done:
        return None
    plain = sum(phases[p]["plain"]["s"] for p in done)
    fast = sum(phases[p]["fast"]["s"] for p in done)
    floor = sum(phases[p]["floor_s"] for p in done)
    peaks = [phases[p]["fast"].get("peak_GB") for p in done if phases[p]["fast"].get("peak_GB") is not None]
    complete = len(done) == len(STEP_PHASES)
    judged = size == "real" and complete
    step = dict(phases=done, complete=complete, plain_s=plain, fast_s=fast, floor_s=floor,
                speedup=plain / fast, fast_peak_GB=max(peaks) if peaks else None,
                goal_s=GOAL_S if size == "real" else None, stretch_s=STRETCH_S if size == "real" else None,
                meets_goal=fast <= GOAL_S if judged else None, meets_stretch=fast <= STRETCH_S if judged else None)
    compiled = phases.get("rollout", {}).get("fast_compiled", {})
    if "s" in compiled:
        with_compiled = fast - phases["rollout"]["fast"]["s"] + compiled["s"]
        step["compiled"] = dict(
            fast_s=with_compiled, speedup=plain / with_compiled, first_call_s=compiled["first_call_s"],
            meets_goal=with_compiled <= GOAL_S if judged else None,
            meets_stretch=with_compiled <= STRETCH_S if judged else None)
    return step


def verdict(check: dict | None) -> str:
    """The check column: - (checks off), pass, FAIL, or the error that stopped the check."""
    if not check:
        return "-"
    if "error" in check:
        return f"CHECK ERROR {check['error'][:50]}"
    return "pass" if check.get("passed") else "FAIL"


def agreement_text(timing: dict) -> str:
    """A compiled rollout's greedy tokens against the eager fast path's, in the benchmark's dtype."""
    agreement = timing.get("agreement")
    if not agreement:
        return ""
    if "error" in agreement:
        return f"; agreement ERROR {agreement['error'][:40]}"
    return f"; greedy tokens {agreement['greedy_token_agreement']:.0%} equal"


def goal_text(step: dict) -> str:
    if step["goal_s"] is None:
        return "goal: bench.size=real"
    if step["meets_goal"] is None:
        return "goal: all step phases"
    return f"goal {step['goal_s']} s: {'met' if step['meets_goal'] else 'not met'}"


def _ratio(seconds: float, floor: float | None) -> float | None:
    return seconds / floor if floor else None


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict) -> str:
    head = ["phase", "path", "seconds", "tokens/s", "floor s", "x floor", "speed-up", "peak GB", "check"]
    lines = []
    for name, phase in result["phases"].items():
        if "error" in phase:
            lines.append([name, "-", "-", "-", "-", "-", "-", "-", f"ERROR {phase['error'][:60]}"])
            continue
        for path in ("plain", "fast", *REPORT_ONLY):
            if path not in phase:
                continue
            t = phase[path]
            if "error" in t:
                lines.append(["", path, "-", "-", "-", "-", "-", "-", f"ERROR {t['error'][:60]}"])
                continue
            lines.append([
                name if path == "plain" else "", path, _fmt(t["s"]), _fmt(t.get("tok_per_s"), ".0f"),
                _fmt(phase["floor_s"] or None, ".4f"), _fmt(_ratio(t["s"], phase["floor_s"]), ".1f"),
                "1.00" if path == "plain" else _fmt(phase["plain"]["s"] / t["s"], ".2f"), _fmt(t.get("peak_GB"), ".1f"),
                {"fast": verdict(phase.get("check")), **REPORT_ONLY}.get(path, "") + agreement_text(t),
            ])
    step = result.get("step")
    if step:
        label = "step" if step["complete"] else "step (partial)"
        lines.append([label, "plain", _fmt(step["plain_s"]), "-", _fmt(step["floor_s"] or None, ".4f"),
                      _fmt(_ratio(step["plain_s"], step["floor_s"]), ".1f"), "1.00", "-", ""])
        lines.append(["", "fast", _fmt(step["fast_s"]), "-", _fmt(step["floor_s"] or None, ".4f"),
                      _fmt(_ratio(step["fast_s"], step["floor_s"]), ".1f"), _fmt(step["speedup"], ".2f"),
                      _fmt(step["fast_peak_GB"], ".1f"), goal_text(step)])
        if "compiled" in step:
            compiled = step["compiled"]
            lines.append(["", "+compiled", _fmt(compiled["fast_s"]), "-", _fmt(step["floor_s"] or None, ".4f"),
                          _fmt(_ratio(compiled["fast_s"], step["floor_s"]), ".1f"), _fmt(compiled["speedup"], ".2f"),
                          "-", goal_text(dict(step, **compiled))])
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    render = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in [head, *lines]]
    render.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(render)


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)
