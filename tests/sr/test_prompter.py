"""The VLM prompt sources: base and adapter prompts from one model, and adapters that do not fit."""

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from safetensors.torch import save_file

from coz_train.hub import resolve_model
from coz_train.policy import load_vlm
from coz_train.sr.prompter import AdapterError, VLMPrompter, append_user_prompt, check_adapter, prompt_source


@pytest.fixture(scope="module")
def policy_cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke_eval"], tmp_path_factory.mktemp("run")).policy


@pytest.fixture(scope="module")
def adapter(policy_cfg, tmp_path_factory):
    """A PEFT adapter for the tiny policy with non-zero B matrices, so it changes what the VLM writes."""
    model = load_vlm(resolve_model(policy_cfg.name_or_path, "policy.name_or_path"), policy_cfg)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=policy_cfg.lora.target_modules, init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def pairs():
    red, blue = Image.new("RGB", (128, 128), (200, 30, 30)), Image.new("RGB", (128, 128), (30, 30, 200))
    return [[red, blue], [blue, red], [red, red]]


def test_base_and_adapter_prompts_from_one_model(policy_cfg, adapter):
    prompter = VLMPrompter(policy_cfg, str(adapter), "cpu", max_new_tokens=8, do_sample=False, batch_size=2)
    base = prompter.prompts(pairs(), use_adapter=False)
    tuned = prompter.prompts(pairs(), use_adapter=True)
    assert len(base) == len(tuned) == 3 and all(isinstance(p, str) for p in base)
    assert base != tuned
    assert prompter.prompts(pairs(), use_adapter=False) == base  # greedy: deterministic, adapter really off
    plain = VLMPrompter(policy_cfg, None, "cpu", max_new_tokens=8, do_sample=False, batch_size=3)
    assert plain.prompts(pairs(), use_adapter=False) == base  # batching and the disabled adapter change nothing


def test_user_text_is_appended_to_vlm_prompts_as_the_official_prompt_flag(policy_cfg, adapter):
    assert append_user_prompt("a cat on a sofa", "fur, whiskers") == "a cat on a sofa, fur, whiskers,"
    prompter = VLMPrompter(policy_cfg, str(adapter), "cpu", max_new_tokens=8, do_sample=False, batch_size=2)
    single = [[views[1]] for views in pairs()]  # the recursive / onestep view: the zoomed image alone
    for base, items in (("vlm", pairs()), ("vlm+adapter", pairs()), ("vlm", single)):
        vlm = prompt_source(base, prompter, None)(items)
        appended = prompt_source(f"{base}+user", prompter, "fur, whiskers")(items)
        assert appended == [f"{p}, fur, whiskers," for p in vlm]
    assert prompt_source("user", None, "fur, whiskers")(single) == ["fur, whiskers"] * 3  # `user` alone replaces
    assert prompt_source("vlm", prompter, None)(single) != prompt_source("vlm", prompter, None)(pairs())
    with pytest.raises(ValueError, match="eval.user_prompt"):
        prompt_source("vlm+adapter+user", prompter, "")


def test_fixed_sources():
    assert prompt_source("null", None, None)(pairs()) == ["", "", ""]
    assert prompt_source("user", None, "fur, whiskers")(pairs()[:1]) == ["fur, whiskers"]
    with pytest.raises(ValueError, match="eval.user_prompt"):
        prompt_source("user", None, None)
    with pytest.raises(ValueError, match="eval.prompt_sources"):
        prompt_source("tagger", None, None)


def test_adapters_that_are_not_peft_adapters_for_this_base(policy_cfg, adapter, tmp_path):
    with pytest.raises(AdapterError, match="eval.adapter"):
        check_adapter(None)
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        check_adapter(str(tmp_path))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(adapter / "adapter_config.json", no_weights)
    with pytest.raises(AdapterError, match="no adapter weights"):
        check_adapter(str(no_weights))

    wrong_rank = tmp_path / "wrong_rank"
    shutil.copytree(adapter, wrong_rank)
    config = json.loads((wrong_rank / "adapter_config.json").read_text())
    config["r"] = 4  # the saved matrices are rank 8
    (wrong_rank / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="eval.adapter=.*wrong shape.*must match the adapter's base model"):
        VLMPrompter(policy_cfg, str(wrong_rank), "cpu", 8, False, 2)

    t5 = tmp_path / "t5_adapter"
    t5.mkdir()
    shutil.copy(adapter / "adapter_config.json", t5)
    save_file({"base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(8, 32),
               "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": torch.zeros(32, 8)},
              str(t5 / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"not in the policy.*encoder\.block\.0"):
        VLMPrompter(policy_cfg, str(t5), "cpu", 8, False, 2)
