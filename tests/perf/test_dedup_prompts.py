"""perf.dedup_prompts: a processor call with repeated prompts processes each distinct one once, bit for bit."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import Qwen2_5_VLProcessor

from coz_train.bench.workload import Shape, grpo_batch, processor_for
from coz_train.perf.dedup_prompts import DedupPrompts
from coz_train.perf.image_cache import PixelHandles, install_image_cache
from coz_train.perf.text_cache import install_text_cache

SHAPE = Shape(groups=2, generations=3, new_tokens=4, image_size=112, warmup=0, reps=1)
SIZES = [((112, 112), (56, 84)), ((56, 56), (84, 56)), ((112, 56), (56, 56))]


def calls(batch):
    """TRL's two processor calls of a step: through the chat template (unpadded lists) and directly (padded)."""
    return {"chat_template": lambda p: p.apply_chat_template(batch["prompts"], add_generation_prompt=True,
                                                              tokenize=True, return_dict=True),
            "padded": lambda p: p(images=batch["images"], padding=True, return_tensors="pt",
                                  text=p.apply_chat_template(batch["prompts"], add_generation_prompt=True,
                                                             tokenize=False))}


def assert_same(got, want):
    assert list(got.keys()) == list(want.keys())
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert type(got[key]) is type(want[key]) and got[key].dtype == want[key].dtype, key
            assert torch.equal(got[key].as_subclass(torch.Tensor), want[key].as_subclass(torch.Tensor)), key
        else:
            assert got[key] == want[key], key


@pytest.mark.parametrize("parts", [(), ("image_cache", "text_cache"), ("image_cache_handles",)])
def test_repeated_prompts_are_processed_once_and_the_output_is_the_processors(parts):
    plain, dedup = processor_for(SHAPE), DedupPrompts(processor_for(SHAPE))
    if "image_cache" in parts or "image_cache_handles" in parts:
        install_image_cache(plain, handles="image_cache_handles" in parts)
        install_image_cache(dedup, handles="image_cache_handles" in parts)
    if "text_cache" in parts:
        install_text_cache(dedup)
    batch = grpo_batch(plain, groups=3, per_group=3, image_sizes=SIZES)  # pads on the left, as TRL does
    dedup.tokenizer.padding_side = plain.tokenizer.padding_side
    for name, call in calls(batch).items():
        want, got = call(plain), call(dedup)
        assert_same(got, want)
        if name == "chat_template":  # each row its own token list, not the distinct prompt's
            assert got["input_ids"][0] == got["input_ids"][1] and got["input_ids"][0] is not got["input_ids"][1]
    if "image_cache_handles" in parts:
        assert isinstance(got["pixel_values"], PixelHandles)
    # 9 rows, 3 distinct prompts: the call, and the chat template twice (rendered and processed, rendered)
    assert (dedup.rows, dedup.processed, dedup.conversations, dedup.rendered) == (9, 3, 18, 6)


def test_the_chat_template_renders_each_distinct_conversation_once():
    plain, dedup = processor_for(SHAPE), DedupPrompts(processor_for(SHAPE))
    batch = grpo_batch(plain, groups=3, per_group=3, image_sizes=SIZES)
    dedup.tokenizer.padding_side = plain.tokenizer.padding_side
    prompts = copy.deepcopy(batch["prompts"])  # every row its own conversation and image objects, as after TRL's copy
    options = dict(add_generation_prompt=True)
    assert dedup.apply_chat_template(prompts, tokenize=False, **options) == \
        plain.apply_chat_template(prompts, tokenize=False, **options)
    assert (dedup.conversations, dedup.rendered) == (9, 3)
    for kwargs in (dict(tokenize=True, return_dict=True),
                   dict(tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs=dict(padding=True))):
        assert_same(dedup.apply_chat_template(prompts, **options, **kwargs),
                    plain.apply_chat_template(prompts, **options, **kwargs))
    ids = dedup.apply_chat_template(prompts, tokenize=True, **options)
    assert ids == plain.apply_chat_template(prompts, tokenize=True, **options) and ids[0] is not ids[1]
    # one conversation a call (TRL's second rendering): each distinct one rendered once, kept by content and options
    rendered = dedup.rendered
    for prompt in prompts:
        assert dedup.apply_chat_template(prompt, tokenize=False, **options) == \
            plain.apply_chat_template(prompt, tokenize=False, **options)
    assert dedup.rendered == rendered + 3
    assert dedup.apply_chat_template(prompts[0], tokenize=False) == plain.apply_chat_template(prompts[0], tokenize=False)
    assert dedup.rendered == rendered + 4  # other options: rendered again
    # the processor's template replaced: rendered again with it
    template = dedup.chat_template
    dedup.chat_template = template.replace("<|im_start|>", "<|im_start|> ")
    assert "<|im_start|> " in dedup.apply_chat_template(prompts[0], tokenize=False, **options)
    dedup.chat_template = template
    # the control: an edited text is another conversation
    edited = copy.deepcopy(prompts[0])
    edited[0]["content"][0]["text"] += " Be brief."
    assert dedup.apply_chat_template(edited, tokenize=False, **options) == \
        plain.apply_chat_template(edited, tokenize=False, **options)
    assert "Be brief." in dedup.apply_chat_template(edited, tokenize=False, **options)


def test_rows_with_equal_text_and_other_images_stay_apart():
    """Every prompt here has the same text (all images 56 px: the same image tokens); only the pixels differ."""
    plain, dedup = processor_for(SHAPE), DedupPrompts(processor_for(SHAPE))
    batch = grpo_batch(plain, groups=3, per_group=2, image_sizes=[((56, 56), (56, 56))] * 3)
    dedup.tokenizer.padding_side = plain.tokenizer.padding_side
    texts = plain.apply_chat_template(batch["prompts"], add_generation_prompt=True, tokenize=False)
    assert len(set(texts)) == 1
    want = plain(images=batch["images"], text=texts, padding=True, return_tensors="pt")
    got = dedup(images=batch["images"], text=texts, padding=True, return_tensors="pt")
    assert_same(got, want)
    assert dedup.processed == 3
    # the control: keyed by text alone, rows 2 and 4 would get row 0's pixels (images 4 and 8 image 0's)
    pieces = torch.split(want["pixel_values"], want["image_grid_thw"].prod(-1).tolist())
    assert len(pieces) == 12 and torch.equal(pieces[0], pieces[2])
    assert not torch.equal(pieces[0], pieces[4]) and not torch.equal(pieces[0], pieces[8])


def test_calls_it_does_not_cover_go_to_the_processor():
    plain, dedup = processor_for(SHAPE), DedupPrompts(processor_for(SHAPE))
    batch = grpo_batch(plain, groups=2, per_group=2, image_sizes=SIZES[:2])
    dedup.tokenizer.padding_side = plain.tokenizer.padding_side
    texts = plain.apply_chat_template(batch["prompts"], add_generation_prompt=True, tokenize=False)
    flat = [im for row in batch["images"] for im in row]  # images not per row: the processor pairs them in order
    assert_same(dedup(images=flat, text=texts, padding=True, return_tensors="pt"),
                plain(images=flat, text=texts, padding=True, return_tensors="pt"))
    # a row whose placeholders do not match its images: the processor pairs images across rows
    shifted = [batch["images"][0][:1], batch["images"][0][1:] + batch["images"][1], *batch["images"][2:]]
    assert_same(dedup(images=shifted, text=texts, padding=True, return_tensors="pt"),
                plain(images=shifted, text=texts, padding=True, return_tensors="pt"))
    assert dedup.rows == 0 and dedup.processed == 0


def test_the_wrapper_is_the_processors_class_and_saves_as_it(tmp_path):
    processor = processor_for(SHAPE)
    dedup = DedupPrompts(processor)
    assert isinstance(dedup, Qwen2_5_VLProcessor) and type(dedup).__name__ == "DedupPromptsQwen2_5_VLProcessor"
    assert dedup.tokenizer is processor.tokenizer and DedupPrompts(dedup).wrapped is processor
    dedup.save_pretrained(tmp_path)
    loaded = Qwen2_5_VLProcessor.from_pretrained(tmp_path)
    assert type(loaded) is Qwen2_5_VLProcessor and dedup.to_dict() == processor.to_dict()
    for other in (copy.copy(dedup), copy.deepcopy(dedup), pickle.loads(pickle.dumps(dedup))):
        assert type(other) is type(dedup) and other.wrapped is not processor and other.rows == 0
