"""Telling the package's own errors from library errors, for the command lines' error display (free of
heavy imports, so a command that fails early also fails fast)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def raised_by_coz_train(err: BaseException) -> bool:
    """An error this package raised itself (a checked setting, a missing file, a failed reward): its message
    carries the advice, so the traceback would only hide it. Errors raised inside libraries keep theirs."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)
