"""coz_train.perf.model: Qwen-VL models load as the library's classes with switchable fast paths, all off."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from coz_train.hub import resolve_model
from coz_train.perf.model import SwitchableBackbone, SwitchableVLM, switchable, switchable_class
from coz_train.policy import load_vlm


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl"])
def test_load_vlm_gives_the_switchable_class_with_every_weight_the_library_loads(smoke_policy_cfg, arch):
    path = resolve_model(f"tiny:{arch}", "policy.name_or_path")
    library = AutoModelForImageTextToText.from_pretrained(path)
    ours = load_vlm(path, smoke_policy_cfg)
    assert isinstance(ours, type(library)) and isinstance(ours, SwitchableVLM)
    assert type(ours).__name__ == f"Switchable{type(library).__name__}"
    assert isinstance(ours.model, type(library.model)) and isinstance(ours.model, SwitchableBackbone)
    mine, theirs = ours.state_dict(), library.state_dict()
    assert mine.keys() == theirs.keys()  # older checkpoints' weight names renamed as for the library's class
    assert all(torch.equal(mine[k], theirs[k].to(mine[k].dtype)) for k in theirs)


def test_with_every_switch_off_forward_and_generate_are_the_librarys(make_policy, make_batch):
    ours, processor = make_policy(lora=False)
    library = AutoModelForImageTextToText.from_pretrained(resolve_model("tiny:qwen2_5_vl", "x")).float()
    library.load_state_dict(ours.state_dict())
    batch = make_batch(processor, groups=2, per_group=2)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, library(**inputs).logits)
        cut = inputs["input_ids"].shape[1] - batch["logits_to_keep"]
        prompts = dict(inputs, input_ids=inputs["input_ids"][:, :cut], attention_mask=inputs["attention_mask"][:, :cut],
                       mm_token_type_ids=inputs["mm_token_type_ids"][:, :cut])
        options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(**prompts, **options), library.generate(**prompts, **options))


def test_a_switch_needs_a_switchable_qwen_vl_model(make_policy):
    from transformers import LlamaConfig, LlamaForCausalLM

    plain = AutoModelForImageTextToText.from_pretrained(resolve_model("tiny:qwen2_5_vl", "x"))
    with pytest.raises(ValueError, match=r"perf\.group_prefix needs the model loaded with coz_train\.policy\.load_vlm"):
        switchable(plain, "perf.group_prefix")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match=r"perf\.rollout_prefix needs a Qwen2-VL or Qwen2\.5-VL model"):
        switchable(llama, "perf.rollout_prefix")
    model, _ = make_policy()  # through PEFT's wrapper
    inner, backbone = switchable(model, "perf.vision_cache")
    assert inner is model.get_base_model() and backbone is inner.model
    assert switchable_class(type(inner)) is type(inner)  # made once per library class
