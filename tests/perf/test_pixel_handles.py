"""perf.pixel_handles: a handle per pixel row instead of the expanded rows; the model's outputs bit-identical."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from coz_train.perf.fast_path import FastPath
from coz_train.perf.image_cache import install_image_cache
from coz_train.perf.prefix import unwrap
from coz_train.perf.vision_cache import install_vision_cache, is_handles

INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
SIZES = [((112, 112), (56, 84)), ((56, 56), (56, 56))]


def encoded(processor, batch: dict) -> dict:
    """The batch's prompts and completions through `processor` (handles when it hands them out)."""
    out = processor(images=batch["images"], text=processor.apply_chat_template(batch["prompts"], tokenize=False,
                                                                               add_generation_prompt=True),
                    padding=True, return_tensors="pt")
    keep = batch["logits_to_keep"]
    return dict(out, input_ids=torch.cat([out["input_ids"], batch["input_ids"][:, -keep:]], dim=1),
                attention_mask=torch.cat([out["attention_mask"], batch["attention_mask"][:, -keep:]], dim=1),
                mm_token_type_ids=torch.cat([out["mm_token_type_ids"], batch["mm_token_type_ids"][:, -keep:]], dim=1))


def logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: inputs[k] for k in INPUT_KEYS}).logits


def test_handles_give_bit_identical_logits_and_encode_each_image_once(make_policy, make_batch):
    model, processor = make_policy()
    model.eval()
    batch = make_batch(processor, groups=2, per_group=3, image_sizes=SIZES)  # 12 images, 4 distinct
    plain = encoded(processor, batch)
    expected = logits(model, plain)

    images = install_image_cache(processor, handles=True)
    vision = install_vision_cache(model, max_images=16)
    vision.pixel_source = images
    handled = encoded(processor, batch)
    assert is_handles(handled["pixel_values"]) and not is_handles(plain["pixel_values"])
    assert handled["pixel_values"].shape == (plain["pixel_values"].shape[0], 1)  # one value per pixel row
    assert torch.equal(handled["image_grid_thw"], plain["image_grid_thw"])
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert torch.equal(handled[key], plain[key]), key
    rows = plain["image_grid_thw"].prod(-1).tolist()
    for h, p in zip(torch.split(handled["pixel_values"], rows), torch.split(plain["pixel_values"], rows), strict=True):
        assert torch.equal(images.pixels_of(int(h[0, 0])), p)  # a handle names the image's own pixel rows
    assert torch.equal(logits(model, handled), expected)
    assert (vision.misses, vision.hits) == (4, 8)
    assert torch.equal(logits(model, handled), expected) and vision.misses == 4  # the second pass: all hits


def test_handles_cut_mid_image_or_no_longer_held_are_refused(make_policy, make_batch):
    model, processor = make_policy()
    batch = make_batch(processor, groups=1, per_group=1, image_sizes=SIZES[:1])
    images = install_image_cache(processor, max_images=1, handles=True)
    vision = install_vision_cache(model, max_images=16)
    vision.pixel_source = images
    handled = encoded(processor, batch)
    handles, grid = handled["pixel_values"], handled["image_grid_thw"]
    encode = unwrap(model).model.get_image_features
    shifted = torch.roll(handles, 1, dims=0)  # the first image's last row now starts the batch
    with pytest.raises(ValueError, match="rows hold different handles"):
        encode(shifted, grid)
    first = int(handles[0, 0])
    others = [Image.new("RGB", (56, 56), (9, 9, 9)), Image.new("RGB", (56, 56), (1, 2, 3))]
    processor.image_processor(images=others)  # max_images=1: the batch's images are pushed out
    with pytest.raises(KeyError, match=f"pixel handle {first} names no stored image"):
        encode(handles, grid)
    vision.clear()


def test_pixel_handles_step_aside_without_both_caches(make_config, caplog):
    """`perf=fast perf.vision_cache=false` (the ZeRO-3 advice) runs: the handles have nothing to ride on, so that
    switch steps aside, says so, and the image cache hands out plain pixel rows."""
    from coz_train.perf.image_cache import CachedImageProcessor
    from coz_train.train import build_trainer

    trainer, _ = build_trainer(make_config("+experiment=smoke", "logging.wandb=false", "perf=plain"))
    trainer.remove_fast_path()
    with caplog.at_level("INFO", logger="coz_train.perf.fast_path"):
        fast_path = trainer.install_fast_path(FastPath({"pixel_handles": True, "image_cache": True}))
    assert "perf.pixel_handles steps aside" in caplog.text
    assert not fast_path.on("pixel_handles")
    cached = trainer.processing_class.__dict__["image_processor"]
    assert isinstance(cached, CachedImageProcessor) and cached.handles is False
    trainer.remove_fast_path()
    with caplog.at_level("INFO", logger="coz_train.perf.fast_path"):  # control: with both caches it stays on
        caplog.clear()
        both = trainer.install_fast_path(FastPath({"pixel_handles": True, "image_cache": True, "vision_cache": True}))
    assert both.on("pixel_handles") and "steps aside" not in caplog.text
    assert trainer.processing_class.__dict__["image_processor"].handles is True
