"""Chain geometry per step, on real backbones (a resampler; the tiny OSEDiff-SD3) and recording prompt sources."""

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from coz_train.data.zoom import start_state
from coz_train.image_quality import psnr
from coz_train.sr.backbones import load_backbone
from coz_train.sr.chain import (
    IN_PREVIOUS,
    IN_START,
    centre_crop,
    check_centre,
    check_geometry,
    onestep_chains,
    recursive_chains,
    reference_states,
    resample_chain,
    step_boxes,
    zoom_windows,
)
from coz_train.sr.colorfix import adain, apply_colorfix, wavelet
from coz_train.sr.prompter import prompt_source


@pytest.fixture(scope="module")
def start():
    return start_state(Image.fromarray(skdata.astronaut()), 128)


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def px(image):
    return np.asarray(image, dtype=np.int16)


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


class RecordingSource:
    """A prompt source that keeps what it was shown and writes one distinct prompt per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, items):
        self.calls.append(items)
        return [f"step {len(self.calls)}"] * len(items)


def test_onestep_prompt_source_sees_only_the_zoomed_crop_of_the_start(start):
    backbone, source = load_backbone("bicubic", {}, None), RecordingSource()
    chains = onestep_chains([start, start.rotate(90)], backbone, 4, 3, source, "onestep-vlm", batch_size=1)
    assert [c.method for c in chains] == ["onestep-vlm"] * 2
    assert [c.prompts for c in chains] == [["step 1", "step 2", "step 3"]] * 2
    for k, items in enumerate(source.calls, start=1):
        assert [len(views) for views in items] == [1, 1]  # one image per chain, never [previous, zoomed]
        for chain, [zoomed] in zip(chains, items, strict=True):
            assert same(zoomed, centre_crop(chain.states[0], 128 // 4**k).resize((128, 128), Image.BICUBIC))


def test_recursive_prompt_source_sees_only_the_zoomed_crop_of_the_previous_state(start):
    backbone = load_backbone("bicubic", {}, None)
    single, multi = RecordingSource(), RecordingSource()
    starts = [start, start.transpose(Image.FLIP_TOP_BOTTOM)]
    chains = recursive_chains(starts, backbone, single, "recursive-vlm", 4, 3, batch_size=1, single_image=True)
    both = recursive_chains(starts, backbone, multi, "recursive_multiscale-vlm", 4, 3, single_image=False)
    assert [c.prompts for c in chains] == [["step 1", "step 2", "step 3"]] * 2
    for k in range(1, 4):
        for i, chain in enumerate(chains):
            [zoomed] = single.calls[k - 1][i]
            expected = centre_crop(chain.states[k - 1], 32).resize((128, 128), Image.BICUBIC)
            assert same(zoomed, expected)
            assert same(chain.states[k], expected)  # the bicubic backbone on the 32 px crop
            assert [len(views) for views in multi.calls[k - 1]] == [2, 2]
            assert same(multi.calls[k - 1][i][1], zoomed)  # the same zoom; only what the source sees differs
            assert same(multi.calls[k - 1][i][0], both[i].states[k - 1])


@pytest.fixture(scope="module")
def osediff(tmp_path_factory):
    """The real OSEDiff-SD3 backbone on the tiny random SD3: its output depends on the prompt."""
    from coz_train.tiny.sd3 import ensure_tiny_sd3, write_official_lora_files

    sd3, folder = ensure_tiny_sd3(), tmp_path_factory.mktemp("osediff_lora")
    write_official_lora_files(sd3, folder, seed=1)
    return load_backbone("osediff_sd3", {"sd3": sd3, "lora_dir": str(folder), "dtype": "float32"}, None)


def test_onestep_and_recursive_prompts_reach_the_backbone(start, osediff):
    user = prompt_source("user", None, "fur, whiskers")
    null = prompt_source("null", None, None)
    [prompted] = onestep_chains([start], osediff, 4, 2, user, "onestep-user")
    [plain] = onestep_chains([start], osediff, 4, 2, null, "onestep-null")
    assert prompted.prompts == ["fur, whiskers"] * 2 and plain.prompts == ["", ""]
    for k in (1, 2):
        crop = centre_crop(start, 128 // 4**k)
        [direct] = osediff.upscale([crop], ["fur, whiskers"], size=128)
        assert np.abs(px(prompted.states[k]) - px(direct)).max() <= 1
        assert np.abs(px(prompted.states[k]) - px(plain.states[k])).mean() > 0.5  # the prompt changed the image
    [rec] = recursive_chains([start], osediff, user, "recursive-user", 4, 1, single_image=True)
    [direct] = osediff.upscale([centre_crop(start, 32)], ["fur, whiskers"])
    assert np.abs(px(rec.states[1]) - px(direct)).max() <= 1


def test_fixed_input_backbones_get_the_crop_resized_to_their_input():
    from coz_train.sr.backbones.base import fit_input

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


# A chosen zoom centre: (0.1, 0.9) of a 128 px start is the point (12.8, 115.2). Step 1's 32 px window around it,
# clamped inside the start, is (0, 96, 32, 128); step 2's 8 px window around it, (8.8, 111.2) rounded to whole
# start pixels, is (9, 111, 17, 119); step 3's 2 px window, (11.8, 114.2) rounded, is (12, 114, 14, 116).
CORNER = (0.1, 0.9)
CORNER_WINDOWS = [(0, 96, 32, 128), (9, 111, 17, 119), (12, 114, 14, 116)]


def test_zoom_windows_follow_the_point_and_stay_nested_inside_the_start():
    assert zoom_windows(128, 4, 3, CORNER) == CORNER_WINDOWS
    assert zoom_windows(128, 4, 3) == zoom_windows(128, 4, 3, (0.5, 0.5)) == [(48, 48, 80, 80), (60, 60, 68, 68),
                                                                             (63, 63, 65, 65)]
    assert zoom_windows(128, 4, 3, (1.0, 0.0)) == [(96, 0, 128, 32), (120, 0, 128, 8), (126, 0, 128, 2)]
    # each window in the previous state's pixels (state k-1 shows W_{k-1} at 128 px): the recursive chains' crops
    assert step_boxes(CORNER_WINDOWS, 128, 4) == [(0, 96, 32, 128), (36, 60, 68, 92), (48, 48, 80, 80)]
    assert step_boxes(zoom_windows(512, 4, 4), 512, 4) == [(192, 192, 320, 320)] * 4  # the official centre crops


def test_a_resample_chain_zooms_into_the_chosen_windows_pixel_for_pixel(start):
    chain = resample_chain(start, "nearest", 4, 3, zoom_windows(128, 4, 3, CORNER))
    for k, window in enumerate(CORNER_WINDOWS, start=1):
        assert same(chain.states[k], start.crop(window).resize((128, 128), Image.NEAREST))
    assert chain.boxes == CORNER_WINDOWS and chain.boxes_in == IN_START
    assert chain.windows() == [tuple(float(v) for v in w) for w in CORNER_WINDOWS]


def test_every_method_zooms_into_the_same_region(start):
    backbone, null = load_backbone("bicubic", {}, None), prompt_source("null", None, None)
    windows = zoom_windows(128, 4, 3, CORNER)
    resampled = resample_chain(start, "bicubic", 4, 3, windows)
    [onestep] = onestep_chains([start], backbone, 4, 3, null, "onestep-null", windows=[windows])
    [recursive] = recursive_chains([start], backbone, null, "recursive-null", 4, 3, boxes=[step_boxes(windows, 128, 4)])
    expected = [tuple(float(v) for v in w) for w in CORNER_WINDOWS]
    assert resampled.windows() == onestep.windows() == recursive.windows() == expected
    assert recursive.boxes_in == IN_PREVIOUS and recursive.boxes == step_boxes(windows, 128, 4)
    for k in range(1, 4):
        assert same(onestep.states[k], resampled.states[k])  # the bicubic backbone on the same start crop
        # the recursive chain bicubic-upscales 4x per step: the same region, a little smoother than one resize
        assert psnr(recursive.states[k], resampled.states[k]) > 25
        assert psnr(recursive.states[k], resample_chain(start, "bicubic", 4, 3).states[k]) < 20  # not the centre


def test_reference_states_follow_the_windows():
    original = Image.fromarray(skdata.retina()).resize((600, 600), Image.BICUBIC)
    windows = zoom_windows(128, 4, 2, CORNER)
    refs = reference_states(original, 128, 4, 2, windows)
    assert refs[1] is None  # 600 px < 128 * 16
    assert same(refs[0], start_state(original, 512).crop((0, 384, 128, 512)))  # W_1 = (0, 96, 32, 128), 4x larger
    start = start_state(original, 128)
    assert psnr(start.crop(windows[0]).resize((128, 128), Image.BICUBIC), refs[0]) > 25  # the same region


@pytest.mark.parametrize("centre, message", [
    ((1.2, 0.5), r"outside the image"),
    ((0.5, float("nan")), r"outside the image"),
    ((-0.1, 0.0), r"outside the image"),
    ((0.5, 0.5, 0.5), r"\[x, y\]"),
])
def test_bad_zoom_centres_are_refused_naming_where(centre, message):
    with pytest.raises(ValueError, match=rf"eval\.zoom_centre: .*{message}"):
        check_centre(centre, "eval.zoom_centre")


def test_geometry_whose_windows_are_not_whole_pixels_is_refused():
    check_geometry(192, 4, 3)  # the last window is 3 start pixels
    with pytest.raises(ValueError, match=r"multiple of 64"):
        check_geometry(96, 4, 3)  # 1.5 px
