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


def test_each_state_frames_the_window_the_next_step_zoomed_into() -> None:
    from matplotlib.patches import Rectangle
    from skimage import data as skdata

    from coz_train.data.zoom import start_state
    from coz_train.sr.backbones import load_backbone
    from coz_train.sr.chain import recursive_chains, resample_chain, step_boxes, zoom_windows

    start = start_state(Image.fromarray(skdata.astronaut()), 128)
    windows = zoom_windows(128, 4, 2, (0.1, 0.9))  # (0, 96, 32, 128), then (9, 111, 17, 119) of the start
    resampled = resample_chain(start, "bicubic", 4, 2, windows)
    [recursive] = recursive_chains([start], load_backbone("bicubic", {}, None), lambda items: [""] * len(items),
                                   "recursive_multiscale-null", 4, 2, boxes=[step_boxes(windows, 128, 4)])
    fig = draw_chains([resampled, recursive, *_chains()], 4)
    try:
        frames = [[(p.get_xy(), p.get_width(), p.get_height()) for p in ax.patches if isinstance(p, Rectangle)]
                  for ax in fig.axes]
    finally:
        plt.close(fig)
    # on pixel edges: the start frames step 1's window; state 1 (the window, at 128 px) frames step 2's, 4x larger
    expected = [[((-0.5, 95.5), 32, 32)], [((35.5, 59.5), 32, 32)], []]
    assert frames[:3] == expected and frames[3:6] == expected  # the resample chain and the recursive one alike
    assert frames[6:] == [[]] * 6  # chains that record no windows: nothing drawn
