"""perf.pixel_handles: a handle per pixel row instead of the expanded rows; the model's outputs bit-identical."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from coz_train.perf.fast_path import FastPath
from coz_train.perf.image_cache import PixelHandles, install_image_cache
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
    assert type(handled["pixel_values"]) is PixelHandles and is_handles(handled["pixel_values"])
    assert not is_handles(plain["pixel_values"]) and not is_handles(handled["pixel_values"].as_subclass(torch.Tensor))
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


def trl_batches(fields: dict, seed: int) -> list[dict]:
    """What TRL 1.16's GRPO trainer does to the processor's fields between the processor and the model: split the
    pixel rows by sample, shuffle the rows, cut the generation batch into 2 steps, merge the pixel rows back, move
    to the device, and slice out each micro-batch's rows (`_get_per_token_logps_and_entropies`)."""
    from transformers.feature_extraction_utils import BatchFeature
    from trl.trainer.grpo_trainer import split_pixel_values_by_grid, unsplit_pixel_values_by_grid
    from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

    torch.manual_seed(seed)
    split = shuffle_sequence_dict(split_pixel_values_by_grid(fields))
    chunks = [unsplit_pixel_values_by_grid(c) for c in split_tensor_dict(split, 2)]
    moved = [dict(BatchFeature({k: v for k, v in c.items() if k != "num_images"}).to("cpu"), **{
        "num_images": c["num_images"], "pixel_values": c["pixel_values"].to("cpu", non_blocking=True)})
        for c in chunks]
    out = []
    for chunk in moved:
        rows = torch.stack([s.sum() for s in torch.split(chunk["image_grid_thw"].prod(-1), chunk["num_images"])])
        cum = torch.cat([torch.tensor([0]), rows.cumsum(0)])
        out.append(dict(chunk, pixel_values=chunk["pixel_values"][cum[1].item():cum[-1].item()],
                        image_grid_thw=chunk["image_grid_thw"][chunk["num_images"][0]:]))
    return out


def test_handles_stay_handles_through_trls_batching(make_policy, make_batch):
    _, processor = make_policy(lora=False)
    batch = make_batch(processor, groups=2, per_group=3, image_sizes=SIZES)
    plain = dict(encoded(processor, batch), num_images=batch["num_images"])
    images = install_image_cache(processor, handles=True)
    handled = dict(encoded(processor, batch), num_images=batch["num_images"])
    for plain_chunk, chunk in zip(trl_batches(plain, 0), trl_batches(handled, 0), strict=True):
        handles = chunk["pixel_values"]
        assert type(handles) is PixelHandles and is_handles(handles) and handles.dtype == torch.int64
        assert not is_handles(plain_chunk["pixel_values"])
        rows = chunk["image_grid_thw"].prod(-1).tolist()
        assert torch.equal(torch.cat([images.pixels_of(int(h[0, 0])) for h in torch.split(handles, rows)]),
                           plain_chunk["pixel_values"])  # the same images, in the same (shuffled) order
    assert type(handled["pixel_values"].to("meta")) is PixelHandles  # to another device, too
    with pytest.raises(RuntimeError, match="pixel handles are not pixels"):  # what get_image_features does first
        handled["pixel_values"].type(torch.float32)


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
