"""The library versions the `perf` switches were checked against.

The switches replace private methods of TRL's GRPOTrainer (`_get_per_token_logps_and_entropies`,
`_generate_single_turn`, `_prepare_inputs`) and lean on transformers internals (generation
caches, Qwen-VL forward signatures), which change between minor releases: TRL changed one of
those signatures three times in 2026. A switch on an untested minor version stops the run before
any model loads, naming the tested versions; `perf.allow_untested_versions=true` runs anyway
(then compare against `perf=plain` with `python -m coz_train.bench` before trusting it).
`.ci/constraints.txt` pins the exact versions the test suite passes with.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

TESTED = {"transformers": ("5.24", "5.25"), "trl": ("1.16",)}  # the major.minor releases the whole suite passed on
SWITCHES = ("load_once", "image_cache", "text_cache", "vision_cache", "pixel_handles", "group_prefix",
            "group_batches", "critic_prefix", "merge_adapters_for_generation", "rollout_prefix", "compiled_decode")


def minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def untested_versions() -> dict[str, str]:
    """{package: installed version} for the packages whose minor version was not tested."""
    installed = {name: importlib.metadata.version(name) for name in TESTED}
    return {name: version for name, version in installed.items() if minor(version) not in TESTED[name]}


def check_tested_versions(perf: Any) -> None:
    switches = [f"perf.{name}" for name in SWITCHES if perf.get(name)]
    if not switches or perf.get("allow_untested_versions"):
        return
    untested = untested_versions()
    if untested:
        found = ", ".join(f"{name} {version}" for name, version in untested.items())
        tested = ", ".join(f"{name} {'/'.join(f'{v}.x' for v in versions)}" for name, versions in TESTED.items())
        raise RuntimeError(
            f"{', '.join(switches)} replace parts of TRL / transformers that change between releases; they were "
            f"tested with {tested}, and this environment has {found}. Install the tested versions "
            "(pip install -c .ci/constraints.txt -e .), run with perf=plain, or set perf.allow_untested_versions=true "
            "to try anyway."
        )
