"""The chain figure draws a prompt's control characters as escapes: no missing-glyph warning, nothing hidden."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from coz_train.eval.figures import chain_figure, draw_chains
from coz_train.printable import printable
from coz_train.sr.chain import Chain

PROMPT = "grey stone wall\x10 moss\tand lichen"


def _chains() -> list[Chain]:
    states = [Image.new("RGB", (32, 32), (40 * k, 90, 160)) for k in range(3)]
    return [Chain("recursive-vlm", states, [PROMPT, "sand"]), Chain("nearest", states, ["", ""])]


def test_printable_escapes_control_characters_and_keeps_the_rest() -> None:
    assert printable(PROMPT) == "grey stone wall\\x10 moss\\x09and lichen"
    assert printable("two\nlines, ünïcode, \x7f\x85") == "two\nlines, ünïcode, \\x7f\\x85"


def test_a_prompt_with_control_characters_renders_without_a_missing_glyph(tmp_path: Path) -> None:
    path = tmp_path / "chains.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chain_figure(_chains(), 4, path)
    assert not [w for w in caught if "missing from font" in str(w.message)], [str(w.message) for w in caught]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = draw_chains(_chains(), 4)
    try:
        drawn = fig.axes[1].get_xlabel()
    finally:
        plt.close(fig)
    assert "\\x10" in drawn and "\\x09" in drawn and "\x10" not in drawn
    assert drawn.replace("\n", " ") == printable(PROMPT)
