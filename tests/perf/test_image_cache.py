"""perf.image_cache: processor outputs bit-identical to the plain processor, each distinct image processed once."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from coz_train.bench.workload import Shape, grpo_batch, processor_for
from coz_train.perf.image_cache import CachedImageProcessor, install_image_cache

SHAPE = Shape(groups=2, generations=3, new_tokens=4, image_size=112, warmup=0, reps=1)


def outputs(processor, batch):
    """The three preprocessing calls of a GRPO step: TRL twice (generation, log-prob inputs), the critic once."""
    prompts, images = batch["prompts"], batch["images"]
    first = processor.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
    text = processor.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
    second = processor(images=images, text=text, padding=True, return_tensors="pt")
    single = processor(images=images[0][0], text=["<|vision_start|><|image_pad|><|vision_end|>"], return_tensors="pt")
    return [first, second, single]


def assert_same(a_list, b_list):
    for a, b in zip(a_list, b_list, strict=True):
        assert set(a.keys()) == set(b.keys())
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def test_outputs_bit_identical_and_each_distinct_image_processed_once():
    plain, cached = processor_for(SHAPE), processor_for(SHAPE)
    cache = install_image_cache(cached)
    assert isinstance(cached.image_processor, CachedImageProcessor)
    assert cached.image_processor.merge_size == plain.image_processor.merge_size  # everything else delegates
    batch = grpo_batch(plain, groups=2, per_group=3, image_sizes=[((112, 112), (56, 84)), ((56, 56), (84, 56))])
    assert batch["images"][0][0] is not batch["images"][1][0]  # every row holds its own copies
    assert_same(outputs(plain, batch), outputs(cached, batch))
    assert cache.misses == 4  # 2 groups x 2 images
    assert cache.hits == (12 - 4) + 12 + 1  # first call's repeats, the repeated call served whole, the single image
    assert install_image_cache(cached) is cache  # installed once


def test_a_changed_pixel_is_a_different_image():
    processor = processor_for(SHAPE)
    cache = install_image_cache(processor)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    changed = pixels.copy()
    changed[30, 17, 1] ^= 1
    a, b = Image.fromarray(pixels), Image.fromarray(changed)
    out = processor.image_processor([a, b, a.copy()], return_tensors="pt")
    reference = processor_for(SHAPE).image_processor([a, b, a.copy()], return_tensors="pt")
    assert cache.misses == 2 and cache.hits == 1
    assert torch.equal(out["pixel_values"], reference["pixel_values"])
    first, second, third = torch.split(out["pixel_values"], out["image_grid_thw"].prod(-1).tolist())
    assert not torch.equal(first, second) and torch.equal(first, third)


def test_least_recently_used_images_are_dropped():
    processor = processor_for(SHAPE)
    cache = CachedImageProcessor(processor.image_processor, max_images=2)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(3)]
    for image in images:
        cache([image], return_tensors="pt")
    assert len(cache._entries) == 2 and cache.misses == 3
    cache([images[2]], return_tensors="pt")
    cache([images[0]], return_tensors="pt")  # was dropped: processed again
    assert cache.misses == 4


def test_inputs_it_cannot_serve_go_to_the_real_image_processor():
    processor = processor_for(SHAPE)
    cache = install_image_cache(processor)
    array = np.random.default_rng(2).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    out = processor.image_processor([array], return_tensors="pt")
    reference = processor_for(SHAPE).image_processor([array], return_tensors="pt")
    assert torch.equal(out["pixel_values"], reference["pixel_values"])
    assert cache.hits == cache.misses == 0
