"""`random:<hub id>`: the published architectures from the shipped configs, the full-vocabulary tokenizer, the cache."""

from __future__ import annotations

import random
import re

import pytest
import torch
from PIL import Image

from coz_train.hub import ModelNotAvailableError, resolve_model
from coz_train.tiny.published import CONFIGS, FIRST_SPECIAL_ID, PARAMETERS, SPECIAL_TOKENS
from coz_train.tiny.random_models import (
    RANDOM_VERSION,
    build_processor,
    parse_random,
    random_model_config,
    random_model_folder,
)

POLICY, CRITIC = "random:Qwen/Qwen2.5-VL-3B-Instruct", "random:Qwen/Qwen2.5-VL-7B-Instruct"


def meta_model(name: str) -> torch.nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(random_model_config(name))


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_names_parse_and_bad_names_stop_with_the_known_ones():
    assert parse_random(POLICY) == ("Qwen/Qwen2.5-VL-3B-Instruct", None, 0)
    assert parse_random(CRITIC + ":2layers@3") == ("Qwen/Qwen2.5-VL-7B-Instruct", 2, 3)
    assert random_model_folder(POLICY + "@1").name == f"Qwen--Qwen2.5-VL-3B-Instruct-seed1-v{RANDOM_VERSION}"
    with pytest.raises(ValueError, match="Bad random model name"):
        parse_random("random:Qwen/Qwen2.5-VL-3B-Instruct@x")
    with pytest.raises(ValueError, match=r"knows \['Qwen/Qwen2.5-VL-3B-Instruct', 'Qwen/Qwen2.5-VL-7B-Instruct'\]"):
        parse_random("random:Qwen/Qwen2.5-VL-72B-Instruct")


def test_the_composed_run_config_builds_the_published_architectures(make_config):
    """The command line of docs/performance.md, composed: both names give the published sizes (meta device)."""
    cfg = make_config("+experiment=grpo_qwen", "critic=qwen2_5_vl_7b", f"policy.name_or_path={POLICY}",
                      f"critic.name_or_path={CRITIC}")
    policy, critic = meta_model(cfg.policy.name_or_path), meta_model(cfg.critic.name_or_path)
    assert parameters(policy) == PARAMETERS["Qwen/Qwen2.5-VL-3B-Instruct"]  # 3.75B, the published size
    assert parameters(critic) == PARAMETERS["Qwen/Qwen2.5-VL-7B-Instruct"]  # 8.29B
    assert round(parameters(policy) / 1e9, 2) == 3.75 and round(parameters(critic) / 1e9, 2) == 8.29
    assert policy.lm_head.weight is policy.model.language_model.embed_tokens.weight  # tied in the 3B
    assert critic.lm_head.weight is not critic.model.language_model.embed_tokens.weight
    assert policy.lm_head.weight.shape == (151936, 2048) and critic.lm_head.weight.shape == (152064, 3584)
    assert len(policy.model.language_model.layers) == 36 and len(critic.model.language_model.layers) == 28
    assert len(policy.model.visual.blocks) == 32 and policy.config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    # the LoRA of the paper's recipe finds its modules in the real architecture: 7 per layer
    targets = [n for n, _ in policy.named_modules() if re.match(cfg.policy.lora.target_modules, n)]
    assert len(targets) == 7 * 36


def test_layers_keep_the_widths_and_a_full_attention_vision_block():
    model = meta_model(POLICY + ":2layers")
    assert len(model.model.language_model.layers) == 2 and len(model.model.visual.blocks) == 2
    assert model.config.vision_config.fullatt_block_indexes == [1]
    assert model.lm_head.weight.shape == (151936, 2048) and model.config.text_config.hidden_size == 2048


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def test_the_tokenizer_has_the_real_vocabulary_and_special_token_ids(processor):
    tokenizer = processor.tokenizer
    assert len(tokenizer) == FIRST_SPECIAL_ID + len(SPECIAL_TOKENS) == 151665
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(151643, 151665))
    for hub_id, config in CONFIGS.items():  # the config's ids are the tokenizer's
        for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                    "bos_token_id", "eos_token_id"):
            assert config[key] == {"bos_token_id": tokenizer.pad_token_id,
                                   "eos_token_id": tokenizer.eos_token_id}.get(key, config[key]), (hub_id, key)
        assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert config["vocab_size"] >= len(tokenizer)
    assert all(len(tokenizer.encode(str(d), add_special_tokens=False)) == 1 for d in range(10))  # logits scoring
    # what a random model writes decodes to words and encodes back to as many tokens
    rng = random.Random(0)
    written = [rng.randrange(256, FIRST_SPECIAL_ID) for _ in range(64)]
    text = tokenizer.decode(written, skip_special_tokens=True)
    assert len(text.split()) == 64 and tokenizer.encode(text, add_special_tokens=False) == written


def test_the_processor_has_the_published_image_budget_and_the_run_config_gives_324_tokens(processor):
    from coz_train.policy.load import set_pixel_budget

    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    set_pixel_budget(processor, None, 262144)  # conf/policy/qwen2_5_vl_3b.yaml
    out = processor.image_processor(images=[Image.new("RGB", (512, 512))], return_tensors="pt")
    assert int(out["image_grid_thw"].prod()) // 4 == 324  # 504 x 504 px


def test_a_random_model_builds_once_into_a_loadable_folder():
    """The whole folder at one layer (the real widths and vocabulary: ~0.9 GB in bfloat16)."""
    from omegaconf import OmegaConf

    from coz_train.policy import load_processor, load_vlm

    name = POLICY + ":1layers"
    path = resolve_model(name, "policy.name_or_path")
    assert path == str(random_model_folder(name)) and resolve_model(name, "policy.name_or_path") == path
    section = OmegaConf.create(dict(revision=None, trust_remote_code=False, min_pixels=None, max_pixels=262144,
                                    dtype="auto", attn_implementation="sdpa"))
    model, processor = load_vlm(path, section), load_processor(path, section)
    assert model.dtype == torch.bfloat16 and model.lm_head.weight.shape == (151936, 2048)
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert len(processor.tokenizer) == 151665 and model.generation_config.eos_token_id == [151645, 151643]
    weights = model.model.language_model.layers[0].mlp.up_proj.weight.float()
    assert abs(weights.std().item() - 0.02) < 1e-3 and weights.mean().abs().item() < 1e-3
    assert torch.equal(model.model.language_model.norm.weight, torch.ones_like(model.model.language_model.norm.weight))
    rebuilt = meta_model(name)  # same parameter names and shapes as the architecture built from the config
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}


def test_an_unavailable_hub_model_suggests_its_random_stand_in(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"policy.name_or_path=random:Qwen/Qwen2.5-VL-3B-Instruct"):
        resolve_model("Qwen/Qwen2.5-VL-3B-Instruct", "policy.name_or_path")
