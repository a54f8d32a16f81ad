"""Chain geometry per step, on a real resampler backbone and a recording prompt source."""

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from coz_train.data.zoom import start_state
from coz_train.eval.backbones import load_backbone
from coz_train.eval.chain import (
    centre_crop,
    check_geometry,
    onestep_chains,
    recursive_chains,
    reference_states,
    resample_chain,
)
from coz_train.eval.colorfix import adain, apply_colorfix, wavelet


@pytest.fixture(scope="module")
def start():
    return start_state(Image.fromarray(skdata.astronaut()), 128)


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_resample_chain_crops_the_centre_of_the_start(start):
    chain = resample_chain(start, "nearest", 4, 3)
    assert len(chain.states) == 4 and chain.prompts == ["", "", ""]
    assert all(s.size == (128, 128) for s in chain.states)
    assert same(chain.states[1], start.crop((48, 48, 80, 80)).resize((128, 128), Image.NEAREST))
    assert same(chain.states[2], start.crop((60, 60, 68, 68)).resize((128, 128), Image.NEAREST))
    assert same(chain.states[3], start.crop((63, 63, 65, 65)).resize((128, 128), Image.NEAREST))


def test_onestep_runs_the_backbone_once_on_the_zoomed_crop(start):
    backbone = load_backbone("bicubic", {}, None)
    [chain] = onestep_chains([start], backbone, 4, 3)
    assert same(chain.states[2], centre_crop(start, 8).resize((128, 128), Image.BICUBIC))  # 16x: the 8 px centre
    assert all(s.size == (128, 128) for s in chain.states)


def test_fixed_input_backbones_get_the_crop_resized_to_their_input():
    from coz_train.eval.backbones.base import fit_input

    crop = Image.new("RGB", (8, 8), (1, 2, 3))
    assert [im.size for im in fit_input([crop], 128, 4)] == [(32, 32)]
    assert fit_input([crop], None, 4)[0] is crop


def test_recursive_chain_feeds_previous_state_and_zoomed_crop(start):
    seen_inputs, seen_pairs = [], []

    class Recorder:
        name, scale, uses_prompt = "recorder", 4, True

        def upscale(self, images, prompts, size=None):
            seen_inputs.append((images, prompts))
            return [im.resize((im.width * 4, im.height * 4), Image.BICUBIC) for im in images]

    def source(pairs):
        seen_pairs.append(pairs)
        return [f"step {len(seen_pairs)}"] * len(pairs)

    chains = recursive_chains([start, start.transpose(Image.FLIP_LEFT_RIGHT)], Recorder(), source, "coz", 4, 3, batch_size=1)
    assert [c.prompts for c in chains] == [["step 1", "step 2", "step 3"]] * 2
    for k in range(1, 4):
        previous, zoomed = seen_pairs[k - 1][0]
        assert same(previous, chains[0].states[k - 1])
        crop = previous.crop((48, 48, 80, 80))
        assert same(zoomed, crop.resize((128, 128), Image.BICUBIC))
        assert same(chains[0].states[k], crop.resize((128, 128), Image.BICUBIC))
    images, prompts = seen_inputs[0]
    assert [im.size for im in images] == [(32, 32)] and prompts == ["step 1"]  # batch_size=1: one image per call
    assert len(seen_inputs) == 2 * 3


def test_geometry_that_cannot_be_zoomed_is_refused():
    check_geometry(512, 4, 4)
    with pytest.raises(ValueError, match="eval.steps"):
        check_geometry(128, 4, 4)


def test_reference_states_exist_only_where_the_original_has_the_pixels():
    original = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 700, 3), dtype=np.uint8))
    refs = reference_states(original, 128, 4, 3)
    assert refs[0] is not None and refs[0].size == (128, 128)
    assert refs[1] is None and refs[2] is None  # 600 px < 128 * 16
    expected = centre_crop(start_state(original, 512), 128)
    assert same(refs[0], expected)


def test_colorfixes_transfer_colour_statistics():
    import torch

    out = torch.rand(1, 3, 32, 32) * 0.5
    ref = torch.rand(1, 3, 32, 32) * 0.2 + 0.7
    fixed = adain(out, ref)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std(dim=(2, 3)), ref.std(dim=(2, 3)), atol=1e-4, rtol=0)
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(wavelet(flat, flat + 0.2), flat + 0.2, atol=1e-5, rtol=0)
    image = Image.new("RGB", (16, 16), (10, 20, 30))
    assert apply_colorfix("none", image, image) is image
    with pytest.raises(ValueError, match="eval.colorfix"):
        apply_colorfix("sepia", image, image)
