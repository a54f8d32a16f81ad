"""The benchmark's tables and JSON: the trainer's step per phase and path against the floors, and the phase checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coz_train.bench.step_timer import PHASES as STEP_PHASES

GOAL_S, STRETCH_S = 4.0, 2.5
CPU_GOAL_S = 0.2  # the CPU-side work of a step at the paper's setting, on one core

REPORT_ONLY = {"fast_static": "report only", "fast_compiled": "report only"}


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


def judge(step: dict, size: str, stand_in: bool) -> dict:
    """Goal verdicts of each path's median step: the 4 s goal (2.5 s stretch) for bench.size=real on real models,
    the CPU share's 0.2 s at the paper's setting (bench.size=real, also with stand-in models)."""
    out = {}
    for name, path in step.get("paths", {}).items():
        if "s" not in path:
            continue
        real = size == "real"
        out[name] = dict(meets_goal=path["s"] <= GOAL_S if real and not stand_in else None,
                         meets_stretch=path["s"] <= STRETCH_S if real and not stand_in else None,
                         cpu_meets_goal=path["cpu_s"] <= CPU_GOAL_S if real else None)
    return out


def _ratio(seconds: float | None, floor: float | None) -> float | None:
    return seconds / floor if seconds is not None and floor else None


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def render(head: list[str], lines: list[list[Any]]) -> str:
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    rows = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in [head, *lines]]
    rows.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(rows)


def phase_table(phases: dict) -> str:
    """The phase checks, each on its own batch: timings of the phase alone, plain vs fast, and the check."""
    head = ["phase", "path", "seconds", "tokens/s", "floor s", "x floor", "speed-up", "peak GB", "check"]
    lines = []
    for name, phase in phases.items():
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
    return render(head, lines)


def step_table(step: dict, size: str) -> str:
    """Per-step medians of the trainer's step per phase, each path a column, against the phase's floor."""
    paths = {name: p for name, p in step["paths"].items() if "s" in p}
    names = list(paths)
    failed = [f"{n}: {p['error'][:80]}" for n, p in step["paths"].items() if "error" in p]
    if not names:
        return "\n".join(["trainer step: no path ran", *[f"FAILED {f}" for f in failed]])
    floors = step.get("floors") or {}
    stand_in = step["config"]["stand_in_models"]
    head = ["step phase", *[f"{n} s" for n in names], "floor s", *[f"{n} x floor" for n in names[1:]]]
    lines = []
    for phase in STEP_PHASES:
        floor = floors.get(phase)
        lines.append([phase, *[_fmt(paths[n]["phases"][phase]) for n in names], _fmt(floor or None, ".4f"),
                      *[_fmt(_ratio(paths[n]["phases"][phase], floor), ".1f") for n in names[1:]]])
    total = floors.get("step")
    lines.append(["step", *[_fmt(paths[n]["s"]) for n in names], _fmt(total or None, ".4f"),
                  *[_fmt(_ratio(paths[n]["s"], total), ".1f") for n in names[1:]]])
    lines.append(["speed-up", "1.00", *[_fmt(paths[names[0]]["s"] / paths[n]["s"], ".2f") for n in names[1:]],
                  "", *["" for _ in names[1:]]])
    lines.append(["cpu share", *[_fmt(paths[n]["cpu_s"]) for n in names], "", *["" for _ in names[1:]]])
    lines.append(["cpu share, CPU time", *[_fmt(paths[n].get("cpu_process_s")) for n in names], "",
                  *["" for _ in names[1:]]])
    lines.append(["gc s (mean)", *[_fmt(paths[n].get("gc_mean_s")) for n in names], "", *["" for _ in names[1:]]])
    lines.append(["in models", *[_fmt(paths[n]["model_s"]) for n in names], "", *["" for _ in names[1:]]])
    lines.append(["peak GB", *[_fmt(paths[n]["peak_GB"], ".1f") for n in names], "", *["" for _ in names[1:]]])
    lines.append(["first step s", *[_fmt(paths[n]["first_step_s"]) for n in names], "", *["" for _ in names[1:]]])
    text = render(head, lines)
    verdicts = judge(step, size, stand_in)
    notes = []
    for name, v in verdicts.items():
        if v["meets_goal"] is not None:
            notes.append(f"{name}: goal {GOAL_S} s {'met' if v['meets_goal'] else 'not met'}"
                         f" (stretch {STRETCH_S} s {'met' if v['meets_stretch'] else 'not met'})")
        if v["cpu_meets_goal"] is not None:
            notes.append(f"{name}: cpu share {paths[name]['cpu_s']:.3f} s, goal {CPU_GOAL_S} s "
                         f"{'met' if v['cpu_meets_goal'] else 'not met'}")
    notes += reward_notes(paths, names, step["config"].get("lora_dropout", 0.0))
    for name in names:
        cpu = paths[name].get("cpu_phases") or {}
        notes.append(f"{name}: cpu share by phase: " + ", ".join(f"{p} {v:.3f}" for p, v in cpu.items()))
        cpu = paths[name].get("cpu_process_phases")
        if cpu:
            notes.append(f"{name}: cpu share by phase, CPU time: " + ", ".join(f"{p} {v:.3f}" for p, v in cpu.items())
                         + f"; {paths[name].get('gc_full', 0)} full garbage collections in the timed steps")
    config = step["config"]
    setting = (f"{config['prompts']} prompts x {config['generations']} completions of up to "
               f"{config['max_completion_length']} tokens, policy {config['policy']}, critic {config['critic']}"
               + (" (stand-ins: the cpu share is the measurement)" if stand_in else ""))
    return "\n".join([f"trainer step: {setting}", text, *notes, *[f"FAILED {f}" for f in failed]])


def reward_notes(paths: dict, names: list[str], lora_dropout: float) -> list[str]:
    """Whether each fast path's step rewards equal plain's. The paths start from the same weights and random state;
    with LoRA dropout on, the shared-prompt switches draw one dropout mask per shared prompt (plain: one per row)
    and merged rollouts none, so their random draws part at the first rollout and the sampled completions differ:
    equal rewards are then not expected (with lora_dropout 0 they are, bench_tiny and bench.size=real alike)."""
    notes = []
    base = paths.get("plain", {}).get("rewards")
    for name in names[1:]:
        other = paths[name].get("rewards")
        if base and other and len(base) == len(other):
            note = (f"{name}: step rewards {'equal to' if other == base else 'differ from'} plain's "
                    f"(max |diff| {max(abs(a - b) for a, b in zip(base, other, strict=True)):.2g})")
            if other != base and lora_dropout > 0:
                note += (f": expected with policy.lora.lora_dropout={lora_dropout:g}, under which the fast path "
                         "draws fewer dropout masks and the sampled completions part; compare with "
                         "policy.lora.lora_dropout=0")
            notes.append(note)
    return notes


def table(result: dict) -> str:
    parts = []
    if result.get("phases"):
        parts.append("phase checks (each on its own batch):\n" + phase_table(result["phases"]))
    step = result.get("step")
    if step and "error" in step:
        parts.append(f"trainer step: ERROR {step['error'][:200]}")
    elif step:
        parts.append(step_table(step, result["meta"]["size"]))
    return "\n\n".join(parts)


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)
