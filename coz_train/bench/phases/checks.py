"""Equality checks of a phase's fast path against its plain one, and their tolerances.

Checks compare the fast path with the plain one in float32 (the model is converted for the check and
back, which is exact for bfloat16 weights) on one group or a few rows, with negative controls that must
fail. A phase's `check` is None when checks are off (`bench.check=false`); a check that raises (e.g. out
of memory) gives {"error": ..., "passed": False} and keeps the phase's timings.

Tolerances sit above the float32 noise floor at the real depth (36 policy / 28 critic layers, where
float32 rounding alone reaches ~1e-5 relative on logits): logits, log-probs and features < 1e-4,
LoRA gradients < 1e-3; a negative control must be off by more than 100x the measured error and
more than 1e-3.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator

import torch

from coz_train.bench.phases.timing import Device, free_memory

log = logging.getLogger(__name__)

LOGITS_TOL = 1e-4  # float32 logits, log-probs and vision features, relative (norm) error
GRAD_TOL = 1e-3  # float32 LoRA gradients, relative (norm) error
CONTROL_MIN = 1e-3  # a negative control is off by more than this and by more than 100x the measured error


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def control_off(control: float, err: float) -> bool:
    """A negative control is far enough off: more than 100x the measured error and more than CONTROL_MIN."""
    return control > max(100 * err, CONTROL_MIN)


def guarded_check(enabled: bool, dev: Device, fn: Callable[[], dict]) -> dict | None:
    """None when checks are off; otherwise fn's result, or {"error", "passed": False} when it raises,
    so that a check running out of memory does not cost the phase's timings."""
    if not enabled:
        return None
    free_memory(dev)
    try:
        result = fn()
    except Exception as err:
        log.error("check failed to run: %s: %s", type(err).__name__, err)
        result = {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-3000:],
                  "passed": False}
    free_memory(dev)
    return result


def greedy_compare(plain_tokens: list[list[int]], fast_tokens: list[list[int]],
                   plain_logits: list[torch.Tensor], fast_logits: list[torch.Tensor]) -> dict:
    """Greedy decodings, plain vs fast, row by row: each step's logits up to and including the first step
    where the two paths' tokens disagree (after it the inputs differ, so the logits say nothing).
    A flip there is a near tie of the plain logits when the compared logits agree; it is reported, not
    failed. Passes when the compared logits agree within LOGITS_TOL and every row's first step was compared."""
    a_parts, b_parts, compared, flips, equal, total = [], [], [], [], 0, 0
    for ta, tb, la, lb in zip(plain_tokens, fast_tokens, plain_logits, fast_logits, strict=True):
        n = min(len(ta), len(tb), len(la), len(lb))
        first = next((i for i in range(n) if ta[i] != tb[i]), None)
        steps = n if first is None else first + 1
        if first is not None:
            flips.append(dict(step=first, plain_token=ta[first], fast_token=tb[first],
                              plain_logit_gap=float(la[first, ta[first]] - la[first, tb[first]])))
        elif len(ta) != len(tb):  # one row stopped (end of sequence) where the other did not
            flips.append(dict(step=n, plain_len=len(ta), fast_len=len(tb)))
        a_parts.append(la[:steps])
        b_parts.append(lb[:steps])
        compared.append(steps)
        equal += sum(int(x == y) for x, y in zip(ta, tb, strict=False))
        total += max(len(ta), len(tb))
    err = rel_err(torch.cat(b_parts), torch.cat(a_parts))
    return dict(logits_rel_err=err, greedy_token_agreement=equal / max(total, 1),
                tokens_identical=plain_tokens == fast_tokens,
                steps_compared=min(compared), row_steps_compared=sum(compared),
                decode_steps=max(len(t) for t in plain_tokens), first_disagreements=flips[:8],
                passed=err < LOGITS_TOL and min(compared) >= 1)


@contextlib.contextmanager
def float32(model: torch.nn.Module, dev: Device) -> Iterator[None]:
    """The model in float32 with TF32 off; every parameter and buffer back to its own dtype afterwards."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for t in tensors:
            t.data = t.data.float()
        yield
    finally:
        for t, dtype in zip(tensors, dtypes, strict=True):
            t.data = t.data.to(dtype)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
