"""The rollouts TRL keeps for its completion table: the one place the project reads GRPOTrainer's `_logs`.

TRL hands its reward functions the completions, but gives callbacks no view of them. Its trainer keeps
the last generation batch, gathered from every rank, in the private dict `trainer._logs` (`prompt`,
`completion`, `rewards`, `advantages`, `images`, ...) for its own completion table, which stays off here
(`log_completions=false`: it fails on image prompts). The sample table (`coz_train.callbacks.SampleLogger`)
and the non-Latin tripwire (`coz_train.tripwires`) read that dict through `rollout_log`, once, when the
trainer is built: a TRL release that moves it stops the run there, naming the setting that needs it,
instead of leaving a table empty or a wire unarmed (tests/test_rollout_log.py checks the installed TRL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def rollout_log(trainer: Any, reader: str, off: str, keys: tuple[str, ...] = ("completion",)) -> Mapping[str, Any]:
    """`trainer._logs`, checked to hold `keys`; when it does not, the error says to set `reader` (a config key) to `off`."""
    logs = getattr(trainer, "_logs", None)
    missing = [key for key in keys if not isinstance(logs, dict) or key not in logs]
    if missing:
        import trl

        raise RuntimeError(
            f"{reader} reads the rollouts from TRL's GRPOTrainer._logs {list(keys)}, which TRL {trl.__version__} "
            f"does not keep ({missing} missing): set {reader}={off}, or use the TRL version in .ci/constraints.txt."
        )
    return logs
