"""Progress bars with an ETA for long work, written to the log; console logging that keeps off open bars.

`progress_bar`: tqdm draws the bar; its output goes through the caller's logger as one line per
refresh (no carriage returns or cursor moves in a log file or a SLURM output), at most every
`COZ_PROGRESS_INTERVAL` seconds (30; 0 writes every update). The bar is pinned to position 0: a bar
opened while another tqdm bar is open (datasets' "Generating train split" around the zoom-pair
builder) would otherwise take position 1 and write cursor-up codes (`ESC[A`) as lines of the log.
The final count is logged once: closing the bar does not repeat a line the last update logged.

`console_through_tqdm`: while a terminal bar is open (the trainer's step bar on stderr), console log
lines go through `tqdm.write`, which clears the bar, writes the line and redraws the bar below it,
so a log line never lands on the bar's line. tqdm's own `logging_redirect_tqdm` is not used: it adds
a console handler to a logger that had none and drops the replaced handler's level.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # ANSI cursor / erase codes


class _LogStream:
    """A file for tqdm that writes each refresh of the bar as one log line."""

    def __init__(self, log: logging.Logger):
        self.log = log

    def write(self, text: str) -> None:
        text = _CONTROL.sub("", text).strip("\r\n ")
        if text:
            self.log.info("%s", text)

    def flush(self) -> None:
        pass


class _LogBar(tqdm):
    def close(self) -> None:
        if not self.disable and getattr(self, "last_print_n", None) == self.n:
            self.leave = False  # the last update logged the final count already: no second, identical line
        super().close()


def progress_bar(total: int, desc: str, log: logging.Logger, unit: str = "img") -> Any:
    """A tqdm bar over `total` items that logs `desc: 40%|####  | 4/10 [00:08<00:12, 2.0s/img]`."""
    return _LogBar(total=total, desc=desc, unit=unit, file=_LogStream(log), ascii=True, ncols=100, position=0,
                   mininterval=float(os.environ.get("COZ_PROGRESS_INTERVAL", "30")))


class _ThroughTqdm(logging.StreamHandler):
    """Stands in for a console handler (same stream, level, format, filters): each line goes through `tqdm.write`."""

    def __init__(self, original: logging.StreamHandler):
        super().__init__(original.stream)
        self.setLevel(original.level)
        self.setFormatter(original.formatter)
        for log_filter in original.filters:
            self.addFilter(log_filter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _is_console(handler: logging.Handler) -> bool:
    return (type(handler) is logging.StreamHandler  # not FileHandler, nor a test's capturing handler
            and handler.stream in (sys.stdout, sys.stderr))


@contextmanager
def console_through_tqdm() -> Iterator[None]:
    """Within this block every console handler (of the root logger and of loggers with their own, such as
    transformers') writes through `tqdm.write`; file handlers are left as they are."""
    loggers = [logging.getLogger()] + [logger for logger in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(logger, logging.Logger)]
    swapped: list[tuple[logging.Logger, list[logging.Handler]]] = []
    for logger in loggers:
        if any(_is_console(h) for h in logger.handlers):
            swapped.append((logger, logger.handlers))
            logger.handlers = [_ThroughTqdm(h) if _is_console(h) else h for h in logger.handlers]
    try:
        yield
    finally:
        for logger, handlers in swapped:
            logger.handlers = handlers
