"""perf.text_cache: a tokenizer call with repeated texts tokenizes each distinct one once, bit-identical output."""

from __future__ import annotations

import pytest
import torch

from coz_train.bench.workload import Shape, grpo_batch, processor_for
from coz_train.perf.text_cache import DedupTokenizer, install_text_cache

SHAPE = Shape(groups=2, generations=3, new_tokens=4, image_size=112, warmup=0, reps=1)


def as_list(value):
    return value.tolist() if hasattr(value, "tolist") else value


@pytest.mark.parametrize("kwargs", [dict(padding=True, return_tensors="pt"), dict(padding=True), dict(),
                                    dict(padding="max_length", max_length=40, truncation=True, return_tensors="np")],
                         ids=["padded-pt", "padded-lists", "unpadded", "max-length-np"])
def test_repeated_texts_are_tokenized_once_and_the_output_is_the_tokenizers(kwargs):
    plain = processor_for(SHAPE).tokenizer
    tokenizer = DedupTokenizer(processor_for(SHAPE).tokenizer)
    texts = ["a cat on a wall"] * 3 + ["the second image is a zoom-in of the first"] * 3 + ["a cat on a wall"]
    want, got = plain(texts, **kwargs), tokenizer(texts, **kwargs)
    assert set(got.keys()) == set(want.keys())
    for key in want:
        assert type(got[key]) is type(want[key]) and as_list(got[key]) == as_list(want[key]), key
    assert (tokenizer.texts, tokenizer.tokenized) == (7, 2)
    assert len(got.encodings) == 7 and got.encodings[6].ids == want.encodings[6].ids
    assert tokenizer("one text") == plain("one text") and tokenizer.texts == 7  # not a list: the real tokenizer


def test_the_processor_with_the_text_cache_gives_trls_inputs_bit_for_bit():
    plain, cached = processor_for(SHAPE), processor_for(SHAPE)
    cache = install_text_cache(cached)
    assert install_text_cache(cached) is cache and cached.tokenizer.pad_token_id == plain.tokenizer.pad_token_id
    batch = grpo_batch(plain, groups=2, per_group=3, image_sizes=[((112, 112), (56, 84)), ((56, 56), (84, 56))])
    for processor_out in [lambda p: p.apply_chat_template(batch["prompts"], add_generation_prompt=True, tokenize=True,
                                                          return_dict=True),
                          lambda p: p(images=batch["images"], padding=True, return_tensors="pt",
                                      text=p.apply_chat_template(batch["prompts"], add_generation_prompt=True,
                                                                 tokenize=False))]:
        want, got = processor_out(plain), processor_out(cached)
        assert set(got.keys()) == set(want.keys())
        for key in want:
            assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(want[key])), key
    # 2 calls x 6 rows; the prompts are one text (the processor sizes every image to 112 px: the same image tokens)
    assert (cache.texts, cache.tokenized) == (12, 2)
