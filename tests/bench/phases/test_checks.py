"""The checks' helpers on hand-written inputs: a check that raises, greedy decodings compared up to a flip."""

from __future__ import annotations

import torch

from coz_train.bench.phases.checks import greedy_compare, guarded_check
from coz_train.bench.phases.timing import Device


def test_guarded_check_is_none_when_checks_are_off():
    dev = Device(torch.device("cpu"), torch.float32, 1.0, 1.0)
    assert guarded_check(False, dev, lambda: 1 / 0) is None
    failed = guarded_check(True, dev, lambda: 1 / 0)
    assert failed["passed"] is False and failed["error"].startswith("ZeroDivisionError")


def test_greedy_compare_reads_logits_up_to_the_first_flip_only():
    torch.manual_seed(0)
    plain = torch.randn(2, 5, 11)
    fast = plain + 1e-7 * torch.randn(2, 5, 11)
    fast[1, 3:] = torch.randn(2, 11)  # after row 1 flips at step 2 its inputs differ: logits say nothing
    tokens = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    flipped = [[1, 2, 3, 4, 5], [1, 2, 7, 8, 9]]
    result = greedy_compare(tokens, flipped, list(plain), list(fast))
    assert result["passed"] and not result["tokens_identical"]
    assert result["steps_compared"] == 3 and result["row_steps_compared"] == 8
    assert result["greedy_token_agreement"] == 0.7 and result["first_disagreements"][0]["step"] == 2
    fast[0, 0] += 1.0  # a real difference within the compared steps fails
    assert not greedy_compare(tokens, flipped, list(plain), list(fast))["passed"]
