import numpy as np
import pytest
from PIL import Image

from coz_train.data.zoom import crop_box, resampler, start_state, zoom_chain


def gradient(w, h):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def test_start_state_resizes_short_side_and_centre_crops():
    image = gradient(400, 200)
    start = start_state(image, 128)
    assert start.size == (128, 128)
    # the centre column of the crop is the centre column of the image
    reference = image.resize((256, 128), Image.LANCZOS).crop((64, 0, 192, 128))
    assert np.array_equal(np.asarray(start), np.asarray(reference))


def test_centre_crop_box_is_one_quarter_of_each_side():
    assert crop_box(512, 4, "center", None) == (192, 192, 320, 320)
    assert crop_box(128, 4, "center", None) == (48, 48, 80, 80)


def test_random_crop_box_stays_inside_and_follows_the_seed():
    boxes = [crop_box(512, 4, "random", np.random.default_rng(s)) for s in range(50)]
    assert all(0 <= x0 and 0 <= y0 and x1 <= 512 and y1 <= 512 and x1 - x0 == 128 and y1 - y0 == 128 for x0, y0, x1, y1 in boxes)
    assert len(set(boxes)) > 10
    assert crop_box(512, 4, "random", np.random.default_rng(3)) == boxes[3]


def test_chain_states_are_upscaled_crops_of_the_previous_state():
    start = start_state(gradient(300, 300), 128)
    states, boxes = zoom_chain(start, 3, 4, "center", resampler("bicubic"))
    assert len(states) == 4 and len(boxes) == 3
    assert all(s.size == (128, 128) for s in states)
    for k in range(1, 4):
        expected = states[k - 1].crop(boxes[k - 1]).resize((128, 128), Image.BICUBIC)
        assert np.array_equal(np.asarray(states[k]), np.asarray(expected))


def test_unknown_choices_are_named():
    with pytest.raises(ValueError, match="data.upscaler"):
        resampler("magic")
    with pytest.raises(ValueError, match="data.crop"):
        crop_box(128, 4, "corner", None)
