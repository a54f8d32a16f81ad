"""perf.vision_cache: each distinct image is encoded once, the outputs are bit-identical, trained vision is refused."""

import pytest
import torch

from coz_train.perf.prefix import unwrap
from coz_train.perf.vision_cache import VisionCacheRefused, install_vision_cache
from coz_train.train import build_trainer, check_perf_config

INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
MIXED_SIZES = [((112, 112), (56, 84)), ((56, 56), (56, 56))]
# four images of one shape: only their content tells them apart
ONE_SHAPE = [((56, 56), (56, 56)), ((56, 56), (56, 56))]


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUT_KEYS}).logits


def per_image(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(pixel rows, grid [1, 3]) of each image in the batch."""
    grids = batch["image_grid_thw"]
    pixels = torch.split(batch["pixel_values"], grids.prod(-1).tolist())
    return [(p, grids[i : i + 1]) for i, p in enumerate(pixels)]


@pytest.mark.parametrize(("arch", "image_sizes"), [
    ("qwen2_5_vl", MIXED_SIZES), ("qwen2_5_vl", ONE_SHAPE), ("qwen2_vl", MIXED_SIZES),
], ids=["mixed-shapes", "one-shape", "qwen2_vl"])
def test_cached_forward_is_bit_identical_and_encodes_each_image_once(make_policy, policy_cfg_with, make_batch,
                                                                      arch, image_sizes):
    model, processor = make_policy(policy_cfg_with({"name_or_path": f"tiny:{arch}"}))
    model.eval()
    # 2 prompts x 3 rollouts, two images each: 12 images, 4 distinct
    batch = make_batch(processor, groups=2, per_group=3, image_sizes=image_sizes)
    assert batch["image_grid_thw"].shape[0] == 12
    expected = logits(model, batch)

    cache = install_vision_cache(model, max_images=16)
    assert install_vision_cache(model, max_images=16) is cache  # installing twice keeps the one cache
    got = logits(model, batch)
    assert torch.equal(got, expected)
    assert (cache.misses, cache.hits) == (4, 8)

    again = logits(model, batch)
    assert torch.equal(again, expected)
    assert (cache.misses, cache.hits) == (4, 20)  # the second pass is all hits


def test_lookup_is_by_content_and_the_cache_is_bounded(make_policy, make_batch):
    model, processor = make_policy()
    model.eval()
    images = per_image(make_batch(processor, groups=2, per_group=1, image_sizes=ONE_SHAPE))
    encode = unwrap(model).model.library_image_features  # the library's own method, beside the cache
    with torch.no_grad():
        reference = [encode(p, g).pooler_output[0] for p, g in images]
    cache = install_vision_cache(model, max_images=2)

    def cached(i: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
        pixels = images[i][0] if pixels is None else pixels
        with torch.no_grad():
            return unwrap(model).model.get_image_features(pixels, images[i][1]).pooler_output[0]

    a, b, c = 0, 1, 2
    # an image that shares the lookup key of image a (same shape, same sampled pixels) but differs in one pixel
    sampled = {int(i) for i in torch.linspace(0, images[a][0].numel() - 1, cache.SAMPLES, dtype=torch.float64).long()}
    changed = next(i for i in range(images[a][0].numel()) if i not in sampled)
    near_a = images[a][0].clone()
    near_a.view(-1)[changed] += 1.0
    assert cache._fingerprints(near_a, [near_a.shape[0]]) == cache._fingerprints(images[a][0], [near_a.shape[0]])
    with torch.no_grad():
        near_a_reference = encode(near_a, images[a][1]).pooler_output[0]
    assert not torch.equal(near_a_reference, reference[a])

    steps = [  # (image, pixels, hit?)
        (a, None, False), (a, None, True),
        (a, near_a, False),  # same shape and lookup key, other content: a miss
        (b, None, False),  # 3 > 2 images: the least recently used key goes (a and near_a share it)
        (a, None, False), (b, None, True),  # b is now the most recently used, a the least
        (c, None, False), (b, None, True), (a, None, False),  # c pushed out a, not b: least recently used, not oldest
    ]
    for i, pixels, hit in steps:
        hits, misses = cache.hits, cache.misses
        features = cached(i, pixels)
        assert torch.equal(features, near_a_reference if pixels is not None else reference[i])
        assert (cache.hits - hits, cache.misses - misses) == ((1, 0) if hit else (0, 1)), (i, hit)
        assert sum(len(v) for v in cache.entries.values()) <= 2


@pytest.mark.parametrize("changes", [
    {"lora.target_modules": r"^model\.(visual\.blocks\.\d+\.attn\.qkv|language_model\.layers\.\d+\.self_attn\.q_proj)$"},
    {"freeze_vision_tower": False},
    {"freeze_projector": False},
], ids=["lora-on-vision", "vision-tower-trained", "projector-trained"])
def test_cache_refuses_trainable_vision_weights(make_policy, policy_cfg_with, changes):
    model, _ = make_policy(policy_cfg_with(changes))
    inner = unwrap(model)
    assert any(p.requires_grad for n, p in inner.model.visual.named_parameters())
    with pytest.raises(VisionCacheRefused, match=r"perf\.vision_cache"):
        install_vision_cache(model, max_images=16)
    assert "get_image_features" not in vars(inner.model)  # nothing patched


def test_config_check_refuses_a_trained_projector_before_loading(make_config, no_model_loads):
    overrides = ["+experiment=smoke", "perf=fast", "perf.critic_prefix=false", "logging.wandb=false"]
    with pytest.raises(ValueError, match=r"perf\.vision_cache=true needs a frozen vision tower and projector"):
        build_trainer(make_config(*overrides, "policy.freeze_projector=false"))
    with pytest.raises(ValueError, match=r"perf\.vision_cache=true needs a frozen vision tower and projector"):
        build_trainer(make_config(*overrides, "policy.freeze_vision_tower=false"))
    # controls: without the cache, or with the vision side frozen, setup goes on to load the data and models
    with pytest.raises(no_model_loads):
        build_trainer(make_config(*overrides, "policy.freeze_projector=false", "perf.vision_cache=false"))
    with pytest.raises(no_model_loads):
        build_trainer(make_config(*overrides))


def test_config_check_refuses_a_non_qwen_vl_policy(make_config, tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path / "llama")
    for switch in ("perf.vision_cache", "perf.group_prefix"):
        cfg = make_config("+experiment=smoke", "perf=plain", f"{switch}=true")
        with pytest.raises(ValueError, match=rf"{switch}=true supports Qwen2-VL"):
            check_perf_config(cfg, str(tmp_path / "llama"))
    check_perf_config(make_config("+experiment=smoke", "perf=plain"), str(tmp_path / "llama"))  # all off: no check
