import pytest
from peft import get_peft_model

from coz_train.hub import resolve_model
from coz_train.policy import load_processor, load_vlm, lora_config


@pytest.fixture(scope="module")
def policy_cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("run")).policy


def lora_names(model):
    return sorted({n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n})


def test_paper_adapter_targets_language_model_linears_only(policy_cfg):
    model = load_vlm(resolve_model(policy_cfg.name_or_path, "policy.name_or_path"), policy_cfg)
    peft_model = get_peft_model(model, lora_config(policy_cfg, model))
    names = lora_names(peft_model)
    assert names and all(".language_model." in n for n in names)
    suffixes = {n.rsplit(".", 1)[1] for n in names}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # vision tower and projector frozen
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 32, 0.05, "none")


@pytest.mark.parametrize(("tower", "projector"), [(True, False), (False, True), (False, False)])
def test_freeze_switches(policy_cfg, tower, projector):
    cfg = policy_cfg.copy()
    cfg.freeze_vision_tower, cfg.freeze_projector = tower, projector
    model = load_vlm(resolve_model(cfg.name_or_path, "policy.name_or_path"), cfg)
    peft_model = get_peft_model(model, lora_config(cfg, model))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any(".merger." in n for n in trainable) == (not projector)
    assert any(".visual.blocks." in n for n in trainable) == (not tower)
    assert not any(".language_model." in n for n in trainable)


def test_pixel_budget_is_applied(policy_cfg):
    processor = load_processor(resolve_model(policy_cfg.name_or_path, "policy.name_or_path"), policy_cfg)
    assert processor.image_processor.size["longest_edge"] == policy_cfg.max_pixels
