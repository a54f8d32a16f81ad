"""The study's images of a zoom region (the low-resolution reference, the outlined input, the zoomed view) cut the
region the eval chain zoomed into, centre or chosen point, and the windows an eval run records are read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coz_train.study.media import low_resolution_region, outlined_input, region_in_state, zoomed_view
from coz_train.study.runs import centre_windows, read_windows

RED = (255, 32, 32)


def noise(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize(("size", "scale", "steps"), [(128, 4, 3), (512, 4, 4), (81, 3, 4), (96, 2, 5)])
def test_the_centre_windows_are_the_chains_default_windows(size, scale, steps):
    from coz_train.sr.chain import zoom_windows

    assert centre_windows(size, scale, steps) == zoom_windows(size, scale, steps)


@pytest.mark.parametrize("centre", [(0.5, 0.5), (0.25, 0.25), (0.9, 0.1), (0.0, 1.0)])
def test_the_zoomed_view_is_the_image_the_chain_zoomed(centre):
    """The CoZ chain's own zoomed images (bicubic backbone), against the study's view of its saved states."""
    from coz_train.sr.backbones.resample import Resampler
    from coz_train.sr.chain import recursive_chains, step_boxes, zoom_windows

    size, scale, steps = 128, 4, 3
    windows = zoom_windows(size, scale, steps, centre)
    bicubic, no_prompts = Resampler("bicubic", Image.BICUBIC), lambda items: [""] * len(items)
    chain = recursive_chains([noise(size)], bicubic, no_prompts, "recursive_multiscale", scale, steps,
                             boxes=[step_boxes(windows, size, scale)])[0]
    for k in range(1, steps + 1):
        shown = windows[k - 2] if k > 1 else (0, 0, size, size)
        box = region_in_state(windows[k - 1], shown, size)
        assert box == step_boxes(windows, size, scale)[k - 1]
        assert np.array_equal(np.asarray(zoomed_view(chain.states[k - 1], box)), np.asarray(chain.zoomed[k - 1]))


def test_the_low_resolution_region_shows_the_windows_pixels_as_blocks():
    start = noise(128)
    window = (24, 40, 32, 48)  # an 8 px window off the centre: 16 x 16 blocks at 128 px
    region = np.asarray(low_resolution_region(start, window))
    pixels = np.asarray(start)
    assert region.shape == pixels.shape
    for row in range(8):
        for col in range(8):
            block = region[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
            assert (block == pixels[40 + row, 24 + col]).all()


def test_the_outline_frames_the_window_and_stays_visible_and_inside():
    start = Image.new("RGB", (128, 128), (0, 0, 0))
    outlined = np.asarray(outlined_input(start, (24, 40, 56, 72)))  # width 1 at 128 px
    red = np.all(outlined == RED, axis=-1)
    assert red[39, 23:57].all() and red[72, 23:57].all() and red[39:73, 23].all() and red[39:73, 56].all()
    assert not red[40:72, 24:56].any()  # the region itself is untouched
    assert red.sum() == 4 * 33  # nothing else
    tiny = np.all(np.asarray(outlined_input(start, (30, 30, 32, 32))) == RED, axis=-1)  # 2 px: a 6 px frame around it
    assert red_box(tiny) == (27, 27, 35, 35)
    corner = np.all(np.asarray(outlined_input(start, (126, 0, 128, 2))) == RED, axis=-1)  # kept inside the image
    assert red_box(corner) == (121, 0, 128, 7)


def red_box(red: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(red)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def test_the_recorded_windows_are_read_back_and_a_broken_file_is_named(tmp_path: Path):
    image = tmp_path / "astronaut"
    image.mkdir()
    assert read_windows(image, 4, 3) is None  # a run older than the windows file: the caller takes the centre
    windows = {"bicubic": [[16, 16, 48, 48], [28, 28, 36, 36], [30, 30, 32, 32]]}
    (image / "windows.json").write_text(json.dumps({"start_size": 128, "windows": windows}))
    assert read_windows(image, 4, 3) == {"bicubic": ((16, 16, 48, 48), (28, 28, 36, 36), (30, 30, 32, 32))}
    (image / "windows.json").write_text(json.dumps({"start_size": 128, "windows": {"bicubic": [[16, 16, 48]]}}))
    with pytest.raises(ValueError, match=r"astronaut/windows\.json is not the windows file an eval run writes"):
        read_windows(image, 4, 3)
    (image / "windows.json").write_text(json.dumps({"start_size": 128, "windows": {"bicubic": [[0, 0, 64, 64]]}}))
    with pytest.raises(ValueError, match=r"bicubic's window 1 \(0, 0, 64, 64\) is not a 32 px square inside the 128"):
        read_windows(image, 4, 3)
