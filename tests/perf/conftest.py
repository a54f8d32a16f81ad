"""Fixtures for the perf tests: the smoke policy config, the tiny policy with LoRA, GRPO-shaped batches."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from policy_batch import permute_rows, tiny_policy  # noqa: E402

from coz_train.bench.workload import grpo_batch  # noqa: E402


@pytest.fixture(scope="session")
def smoke_policy_cfg(compose_cfg, tmp_path_factory):
    """The `policy` section of `+experiment=smoke` (tiny Qwen2.5-VL, LoRA on the language model)."""
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("perf") / "run").policy


@pytest.fixture(scope="session")
def policy_cfg_with(smoke_policy_cfg):
    """policy_cfg_with({"freeze_projector": False, "lora.r": 4}) -> a copy of the smoke policy section, changed."""
    from omegaconf import OmegaConf

    def change(changes: dict):
        cfg = copy.deepcopy(smoke_policy_cfg)
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, merge=False)
        return cfg

    return change


@pytest.fixture
def make_policy(smoke_policy_cfg):
    """make_policy(policy_cfg=None, lora=True, seed=0) -> (fp32 tiny policy with random LoRA B, processor)."""

    def make(policy_cfg=None, lora: bool = True, seed: int = 0):
        return tiny_policy(smoke_policy_cfg if policy_cfg is None else policy_cfg, lora=lora, seed=seed)

    return make


@pytest.fixture(scope="session")
def make_batch():
    """make_batch(processor, groups=2, per_group=3, max_completion=6, seed=0, image_sizes=None) -> TRL-shaped batch."""
    return grpo_batch


@pytest.fixture(scope="session")
def shuffle_rows():
    """shuffle_rows(batch, permutation) -> the batch with its rows (and their images) reordered."""
    return permute_rows


@pytest.fixture(autouse=True)
def no_shared_image_store_from_earlier_tests():
    """The image caches that `install_image_cache` puts on processors of one class share a store while one of them
    lives; an earlier test's cache kept alive only by a reference cycle (a model and its vision cache) would share
    its room and its images with this test's. Collected here when there is one, so each test starts alone."""
    import gc

    from coz_train.perf import image_cache

    if len(image_cache._STORES):
        gc.collect()
    yield
