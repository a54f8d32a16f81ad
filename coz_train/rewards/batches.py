"""Running a reward's model over many candidates in batches, halving the batch when it runs out of memory."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def in_batches(run: Callable[[int, int], list], total: int, batch_size: int, what: str, key: str) -> list:
    """`run(start, stop)` over [0, total) in batches of `batch_size`, results concatenated in order.

    On out-of-memory the batch is halved and the same candidates retried, down to one candidate (then the
    error propagates, and `reward_failure` decides). `what` and `key` (the config key of the batch size)
    name the model in the warning.
    """
    out: list = []
    batch, start = batch_size, 0
    while start < total:
        try:
            out += run(start, min(total, start + batch))
            start += batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("%s out of memory: retrying with batch size %d (%s=%d)", what, batch, key, batch_size)
    return out
