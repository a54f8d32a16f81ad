"""`printable(text)`: a VLM prompt as it can be drawn, its control characters written as escapes.

A prompt VLM can emit control characters (a stray `\\x10` from a tokenizer's byte fallback). Fonts have no
glyph for them: matplotlib warns `Glyph 16 missing` and draws a box or nothing, and a browser shows nothing,
so a figure or a rating page would hide what the model wrote. Every place that shows a prompt (the chain
figures of `coz_train.eval.figures`, the study's rating page) passes it through here.
"""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # Unicode category Cc, the newline kept


def printable(text: str) -> str:
    """`text` with every control character but the newline written as its `\\xNN` escape."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
