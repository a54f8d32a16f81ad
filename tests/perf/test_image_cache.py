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
    assert len(cache.store.entries) == 2 and cache.misses == 3
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


def test_equally_configured_processors_share_their_preprocessed_images():
    """The policy's and a Qwen critic's processors (one class, one configuration) preprocess each image once between
    them; each output stays bit-identical to its own plain processor's."""
    policy, critic, plain = processor_for(SHAPE), processor_for(SHAPE), processor_for(SHAPE)
    first, second = install_image_cache(policy, handles=True), install_image_cache(critic)
    assert first.store is second.store
    batch = grpo_batch(plain, groups=2, per_group=3, image_sizes=[((112, 112), (56, 84)), ((56, 56), (84, 56))])
    flat = [im for row in batch["images"] for im in row]
    reference = plain.image_processor(flat, return_tensors="pt")
    handles = policy.image_processor(flat, return_tensors="pt")
    assert (first.misses, first.store.processed) == (4, 4)
    out = critic.image_processor([im.copy() for im in flat], return_tensors="pt")  # other objects, same pixels
    assert (second.misses, second.hits, first.store.processed) == (0, 12, 4)  # nothing preprocessed again
    assert torch.equal(out["pixel_values"], reference["pixel_values"])
    assert torch.equal(out["image_grid_thw"], reference["image_grid_thw"])
    rows = reference["image_grid_thw"].prod(-1).tolist()
    for h, p in zip(torch.split(handles["pixel_values"], rows), torch.split(reference["pixel_values"], rows),
                    strict=True):
        assert torch.equal(second.pixels_of(int(h[0, 0])), p)  # a handle either cache handed out reads the same


def test_differently_configured_processors_do_not_share_an_image():
    """Control: a critic processor with another pixel budget preprocesses the images itself, and gets its own
    (different) patches, bit-identical to its plain twin's."""
    policy, critic, plain_critic = processor_for(SHAPE), processor_for(SHAPE), processor_for(SHAPE)
    for processor in (critic, plain_critic):
        processor.image_processor.size = dict(processor.image_processor.size, longest_edge=56 * 56)
    first, second = install_image_cache(policy), install_image_cache(critic)
    assert first.store is second.store  # one class: one store, the configuration in every key
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    big = policy.image_processor([image], return_tensors="pt")
    small = critic.image_processor([image], return_tensors="pt")
    assert second.misses == 1 and first.store.processed == 2
    assert torch.equal(small["pixel_values"], plain_critic.image_processor([image], return_tensors="pt")["pixel_values"])
    assert big["pixel_values"].shape[0] == 4 * small["pixel_values"].shape[0]


def test_stored_pixels_are_each_images_own_output_and_the_model_leaves_them_as_they_were(make_policy, make_batch):
    """On the CPU the store keeps each image's rows as the output of the image processor's call on it (no
    concatenation of all unseen images, no copy per image); nothing downstream writes into them: after the tower has
    read them through pixel handles in a forward and a LoRA backward pass, they still equal a fresh preprocessing."""
    from coz_train.perf.vision_cache import install_vision_cache

    model, processor = make_policy()
    model.train()
    batch = make_batch(processor, groups=2, per_group=2, image_sizes=[((112, 112), (56, 84)), ((56, 56), (84, 56))])
    plain = processor_for(SHAPE)
    plain.image_processor.size = dict(processor.image_processor.size)
    cache = install_image_cache(processor, handles=True)
    vision = install_vision_cache(model, max_images=16)
    vision.pixel_source = cache
    text = processor.apply_chat_template(batch["prompts"], add_generation_prompt=True, tokenize=False)
    inputs = processor(images=batch["images"], text=text, padding=True, return_tensors="pt")
    entries = list(cache.store.entries.values())
    assert len(entries) == 4 and len({p.untyped_storage().data_ptr() for p, _, _ in entries}) == 4  # one call each
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p, _, _ in entries)  # not a slice
    model(**inputs).logits.float().pow(2).mean().backward()
    assert vision.misses == 4 and any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    flat = [im for row in batch["images"] for im in row]
    expected = plain.image_processor(flat, return_tensors="pt")
    rows = expected["image_grid_thw"].prod(-1).tolist()
    seen = {}
    for h, p in zip(torch.split(inputs["pixel_values"], rows), torch.split(expected["pixel_values"], rows), strict=True):
        seen[int(h[0, 0])] = p
    for handle, pixels in seen.items():
        assert torch.equal(cache.pixels_of(handle), pixels)


def test_digests_read_pillows_pixel_memory_and_tell_images_apart():
    """The digest hashes Pillow's own pixel memory (Arrow export, no copy) where it can, the packed bytes where it
    cannot (rows in several blocks); equal pixels give equal digests either way within a route, a changed pixel or
    a changed palette another digest."""
    import numpy as np
    from PIL import Image

    from coz_train.perf.image_cache import digest, pixel_memory

    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image, same = Image.fromarray(pixels), Image.fromarray(pixels.copy())
    assert type(pixel_memory(image)).__name__ == "Buffer" and len(pixel_memory(image)) == 48 * 64 * 4
    assert digest(image) == digest(same)
    changed = pixels.copy()
    changed[47, 63, 2] ^= 1
    assert digest(Image.fromarray(changed)) != digest(image)
    palette = image.convert("P")
    other = palette.copy()
    other.putpalette([255 - v for v in palette.getpalette()])
    assert digest(palette) != digest(other) and pixel_memory(palette)[:48 * 64] == palette.tobytes()
    large = Image.new("RGB", (4096, 4096), (1, 2, 3))  # Pillow keeps its rows in several blocks: the packed bytes
    assert pixel_memory(large) == large.tobytes()
