"""Progress bars with an ETA for long work, written to the log.

tqdm draws the bar; its output goes through the caller's logger as one line per refresh (no
carriage returns in a log file or a SLURM output), at most every `COZ_PROGRESS_INTERVAL` seconds
(30; 0 writes every update).
"""

from __future__ import annotations

import logging
import os
from typing import Any


class _LogStream:
    """A file for tqdm that writes each refresh of the bar as one log line."""

    def __init__(self, log: logging.Logger):
        self.log = log

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.log.info("%s", text)

    def flush(self) -> None:
        pass


def progress_bar(total: int, desc: str, log: logging.Logger, unit: str = "img") -> Any:
    """A tqdm bar over `total` items that logs `desc: 40%|####  | 4/10 [00:08<00:12, 2.0s/img]`."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=_LogStream(log), ascii=True, ncols=100,
                mininterval=float(os.environ.get("COZ_PROGRESS_INTERVAL", "30")))
