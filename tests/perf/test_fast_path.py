"""coz_train.perf.fast_path: the trainer installs the `perf` switches as one object that logs each change and
takes every one of them off again."""

from __future__ import annotations

import logging

import pytest
import trl.trainer.grpo_trainer as trl_grpo
from trl.trainer.utils import shuffle_sequence_dict

from coz_train.perf.dedup_prompts import DedupPrompts
from coz_train.perf.fast_path import FastPath
from coz_train.perf.group_batches import group_shuffle
from coz_train.perf.group_prefix import SharedPrompt
from coz_train.perf.image_cache import CachedImageProcessor
from coz_train.perf.load_once import RowsOnce
from coz_train.perf.prefix import unwrap
from coz_train.perf.replacement import Replacement
from coz_train.perf.rollout_prefix import RolloutPrefix
from coz_train.perf.trl_seams import CompletionScoring
from coz_train.perf.vision_cache import VisionFeatureCache
from coz_train.train import build_trainer

FAST = ["+experiment=smoke", "logging.wandb=false", "perf=fast", "perf.critic_prefix=false",
        "perf.compiled_decode=true"]


def test_install_logs_each_change_and_remove_puts_every_object_back(make_config, caplog):
    with caplog.at_level(logging.INFO, logger="coz_train.perf.fast_path"):
        trainer, _ = build_trainer(make_config(*FAST))
    fast_path = trainer.fast_path
    inner = unwrap(trainer.model)
    assert isinstance(trainer.processing_class, DedupPrompts)
    processor = trainer.processing_class.wrapped
    assert trainer.processing_class.__dict__ is processor.__dict__
    assert isinstance(processor.__dict__["image_processor"], CachedImageProcessor)
    assert isinstance(inner.model.vision_cache, VisionFeatureCache)
    assert isinstance(inner.model.shared_prompt, SharedPrompt) and isinstance(inner.rollout_prefix, RolloutPrefix)
    assert inner.merge_adapters_for_generation and inner.compiled_decode
    assert trl_grpo.shuffle_sequence_dict is group_shuffle
    # no method set on an instance by the fast path but the one named TRL seam (TRL's fused forward, wrapped)
    assert not {"generate", "get_image_features"} & set(inner.__dict__) and "forward" not in inner.model.__dict__
    assert isinstance(inner.forward, CompletionScoring) and inner.forward.shared_prompt is inner.model.shared_prompt
    installed = next(r.getMessage() for r in caplog.records if "fast path installed" in r.getMessage())
    dataset = trainer.train_dataset
    assert isinstance(dataset, RowsOnce) and fast_path.vision_caches[0].pixel_source is fast_path.image_cache
    for text in ("train_dataset", "image_processor", ".tokenizer", "processing_class", "Model.vision_cache", "pixel_source",
                 "Model.shared_prompt", "ForConditionalGeneration.rollout_prefix",
                 "merge_adapters_for_generation", "compiled_decode", "shuffle_sequence_dict",
                 "ForConditionalGeneration.forward -> coz_train.perf.trl_seams.CompletionScoring"):
        assert text in installed, text
    changes = list(fast_path.changes)
    assert len(changes) == 12

    trainer.remove_fast_path()
    assert trainer.fast_path is None and fast_path.changes == [] and trainer.processing_class is processor
    real = fast_path.image_cache._wrapped
    assert processor.__dict__["image_processor"] is real
    assert inner.model.vision_cache is None and inner.model.shared_prompt is None and inner.rollout_prefix is None
    assert not inner.merge_adapters_for_generation and not inner.compiled_decode
    assert trl_grpo.shuffle_sequence_dict is shuffle_sequence_dict
    for change in changes:  # each owner holds exactly what it held before (its own object, or nothing)
        assert Replacement.own_value(change.owner, change.name) is change.previous, change
    assert trainer.generation_config.disable_compile  # TRL's own config, never replaced
    assert trainer.train_dataset is dataset.dataset and fast_path.vision_caches[0].pixel_source is None

    # installable again, on the same trainer
    again = trainer.install_fast_path(FastPath({"image_cache": True}))
    assert [c.name for c in again.changes] == ["image_processor"]
    with pytest.raises(RuntimeError, match="installed already"):
        trainer.install_fast_path(FastPath({"image_cache": True}))
    trainer.remove_fast_path()
    assert processor.__dict__["image_processor"] is real


def test_plain_installs_nothing(make_config, caplog):
    with caplog.at_level(logging.INFO, logger="coz_train.perf.fast_path"):
        trainer, _ = build_trainer(make_config("+experiment=smoke", "logging.wandb=false", "perf=plain"))
    assert trainer.fast_path.changes == [] and not trainer.fast_path.any_on
    assert not any("fast path installed" in r.getMessage() for r in caplog.records)
    inner = unwrap(trainer.model)
    assert inner.rollout_prefix is None and inner.model.shared_prompt is None and inner.model.vision_cache is None
