"""The image and text caches are plain wrappers that say what they are: real subclasses of the wrapped class that
share its state, named as the cache, saved as the library's own class."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from coz_train.bench.workload import Shape, processor_for
from coz_train.perf.image_cache import CachedImageProcessor, install_image_cache
from coz_train.perf.text_cache import DedupTokenizer, install_text_cache

SHAPE = Shape(groups=2, generations=3, new_tokens=4, image_size=112, warmup=0, reps=1)


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (56, 56, 3), dtype=np.uint8))


@pytest.fixture
def cached():
    """(processor with both caches installed, its plain image processor, its plain tokenizer)"""
    processor = processor_for(SHAPE)
    images, tokenizer = processor.image_processor, processor.tokenizer
    install_image_cache(processor)
    install_text_cache(processor)
    return processor, images, tokenizer


@pytest.mark.parametrize("attribute, base, prefix", [("image_processor", CachedImageProcessor, "Cached"),
                                                      ("tokenizer", DedupTokenizer, "Dedup")])
def test_the_wrapper_is_a_subclass_of_the_wrapped_class_and_says_so(cached, attribute, base, prefix):
    processor, *plain = cached
    real = plain[0] if attribute == "image_processor" else plain[1]
    wrapper = getattr(processor, attribute)
    kind = type(real)
    assert type(wrapper).__name__ == f"{prefix}{kind.__name__}" and type(wrapper).__mro__[1:3] == (base, kind)
    assert wrapper.__class__ is type(wrapper) and isinstance(wrapper, kind) and isinstance(wrapper, base)
    assert not any("__class__" in vars(k) for k in type(wrapper).__mro__[:-1])  # nothing answers for the class
    assert repr(wrapper).startswith(prefix)
    assert type(getattr(processor_for(SHAPE), attribute)) is kind  # other processors keep the library's class
    assert type(base(getattr(processor_for(SHAPE), attribute))) is type(wrapper)  # one subclass per wrapped class
    assert base(wrapper)._wrapped is real  # wrapping a wrapper wraps what it wraps


def test_attributes_are_the_wrapped_objects_and_the_cache_state_is_not(cached):
    processor, images, tokenizer = cached
    assert processor.image_processor.merge_size == images.merge_size and len(processor.tokenizer) == len(tokenizer)
    processor.image_processor.merge_size = 3  # a write reaches the wrapped object, and the other way round
    images.do_resize = False
    assert images.merge_size == 3 and processor.image_processor.do_resize is False
    processor.tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token == tokenizer.eos_token
    assert {"hits", "misses", "handles", "store", "_wrapped"}.isdisjoint(vars(images))
    assert {"texts", "tokenized", "_wrapped"}.isdisjoint(vars(tokenizer))


def test_a_saved_processor_loads_back_as_the_librarys_classes(cached, tmp_path):
    from transformers import AutoProcessor

    processor, images, tokenizer = cached
    processor.image_processor([image(0), image(1), image(0)])  # a cache with entries: none of it is saved
    processor.tokenizer(["a", "a", "b"])
    plain = processor_for(SHAPE)
    processor.save_pretrained(tmp_path / "cached")
    plain.save_pretrained(tmp_path / "plain")
    for name in ("processor_config.json", "tokenizer_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "cached" / name).read_text() == (tmp_path / "plain" / name).read_text(), name
    # control: the library's own to_dict, run on the wrapper, would name the wrapper's class
    assert type(images).to_dict(processor.image_processor)["image_processor_type"] == f"Cached{type(images).__name__}"
    saved = json.loads((tmp_path / "cached" / "processor_config.json").read_text())
    assert saved["image_processor"]["image_processor_type"] == type(images).__name__
    assert json.loads((tmp_path / "cached" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        type(tokenizer).__name__
    type(tokenizer).save_pretrained(processor.tokenizer, tmp_path / "control")  # control: the library's own save
    assert json.loads((tmp_path / "control" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        f"Dedup{type(tokenizer).__name__}"
    loaded = AutoProcessor.from_pretrained(tmp_path / "cached")
    assert type(loaded) is type(processor)
    assert type(loaded.image_processor) is type(images) and type(loaded.tokenizer) is type(tokenizer)
    assert torch.equal(loaded.image_processor([image(2)])["pixel_values"], images([image(2)])["pixel_values"])

    processor.image_processor.save_pretrained(tmp_path / "alone")  # the image processor on its own, too
    alone = json.loads((tmp_path / "alone" / "preprocessor_config.json").read_text())
    assert alone["image_processor_type"] == type(images).__name__


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_copies_are_new_wrappers_with_empty_caches_of_copies(cached, how):
    processor, images, tokenizer = cached
    processor.image_processor([image(0)])
    processor.tokenizer(["a", "a"])
    make = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": lambda x: pickle.loads(pickle.dumps(x))}[how]
    for wrapper, real in ((processor.image_processor, images), (processor.tokenizer, tokenizer)):
        twin = make(wrapper)
        assert type(twin) is type(wrapper) and twin._wrapped is not real and vars(twin) is vars(twin._wrapped)
    image_twin, text_twin = make(processor.image_processor), make(processor.tokenizer)
    assert image_twin.hits == image_twin.misses == 0 and len(image_twin.store.entries) == 0
    assert text_twin.texts == text_twin.tokenized == 0
    assert torch.equal(image_twin([image(0)])["pixel_values"], images([image(0)])["pixel_values"])
    assert image_twin.misses == 1 and processor.image_processor.misses == 1  # the original's cache untouched
