"""Adapters that cross between this project and the official Chain-of-Zoom inference, both ways.

The official-environment tests run `official_side.py` with the Python of a second environment
holding the official pins (transformers 4.49, peft 0.15.2; `.ci/official-env` builds it), over the
same tiny base weights with a 4.49-style config.json.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file, save_file

from coz_train.hub import resolve_model
from coz_train.policy import load_processor, load_vlm, lora_config
from coz_train.policy.adapters import (
    OFFICIAL_LORA_FIELDS,
    AdapterError,
    checkpoint_name,
    load_adapter,
    load_adapter_weights,
    make_portable,
)
from coz_train.sr.prompter import VLMPrompter

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RELEASED_TARGETS = r"^(model).*\.(q_proj|o_proj|gate_proj|down_proj|k_proj|up_proj|v_proj)$"
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def policy_cfg(compose_cfg, tmp_path_factory):
    return compose_cfg(["+experiment=smoke"], tmp_path_factory.mktemp("run")).policy


@pytest.fixture(scope="module")
def base_path(policy_cfg):
    return resolve_model(policy_cfg.name_or_path, "policy.name_or_path")


def fresh_base(policy_cfg, base_path):
    return load_vlm(base_path, policy_cfg).eval()


@pytest.fixture(scope="module")
def tuned(policy_cfg, base_path):
    """The project's LoRA on the tiny policy, with known non-zero weights (as after training)."""
    model = load_vlm(base_path, policy_cfg)
    peft_model = get_peft_model(model, lora_config(policy_cfg, model))
    generator = torch.Generator().manual_seed(3)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    return peft_model.eval()


@pytest.fixture(scope="module")
def project_adapter(tuned, tmp_path_factory):
    folder = tmp_path_factory.mktemp("project_adapter")
    tuned.save_pretrained(str(folder))
    make_portable(folder, tuned)
    return folder


@pytest.fixture(scope="module")
def inputs(policy_cfg, base_path, tmp_path_factory):
    processor = load_processor(base_path, policy_cfg)
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 90, 200))]
    messages = [{"role": "user", "content": [{"type": "image", "image": im} for im in images]}]
    batch = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                          return_tensors="pt")
    batch = {k: v.contiguous() for k, v in batch.items()}
    # the official side gets what transformers 4.49 takes (it finds image tokens by id, not by mm_token_type_ids)
    path = tmp_path_factory.mktemp("inputs") / "inputs.safetensors"
    save_file({k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}, str(path))
    return batch, path


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def lora_modules(model):
    return sorted({n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n})


def released_format(project_adapter, folder):
    """The same weights as the released checkpoint-10000 stores them: its tensor names and its config."""
    folder.mkdir()
    tensors = load_file(str(project_adapter / "adapter_model.safetensors"))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
              "bias": "none", "modules_to_save": [], "target_modules": RELEASED_TARGETS, "fan_in_fan_out": False,
              "inference_mode": True, "init_lora_weights": True, "base_model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_saved_adapter_is_in_the_official_layout(tuned, project_adapter):
    names = list(load_file(str(project_adapter / "adapter_model.safetensors")))
    assert names and all(re.match(r"^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+\.lora_[AB]\.weight$", n)
                         for n in names), names[:4]
    config = json.loads((project_adapter / "adapter_config.json").read_text())
    assert set(config) <= OFFICIAL_LORA_FIELDS
    pattern = config["target_modules"]
    current = [n for n, _ in tuned.get_base_model().named_modules() if n]
    legacy = [checkpoint_name(n, "qwen2_5_vl") for n in current]
    wanted = lora_modules(tuned.get_base_model())
    assert {n.rsplit(".", 1)[1] for n in wanted} == PROJECTIONS and not any("visual" in n for n in wanted)
    # both layouts resolve the pattern to exactly the language model's projections: never the vision MLP
    assert sorted(n for n in current if re.fullmatch(pattern, n)) == wanted
    assert sorted(n for n in legacy if re.fullmatch(pattern, n)) == sorted(checkpoint_name(n, "qwen2_5_vl")
                                                                           for n in wanted)
    assert any(re.fullmatch(r".*visual.*mlp\.gate_proj", n) for n in current)  # the trap exists in this model


def test_adapter_saved_here_reloads_here_in_full(policy_cfg, base_path, tuned, project_adapter, inputs):
    batch, _ = inputs
    reloaded = load_adapter(fresh_base(policy_cfg, base_path), project_adapter, is_trainable=False)
    assert lora_modules(reloaded) == lora_modules(tuned)
    torch.testing.assert_close(logits(reloaded, batch), logits(tuned, batch), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(fresh_base(policy_cfg, base_path), batch), logits(tuned, batch), atol=1e-4)


def test_released_format_gives_the_same_logits_and_prompts(policy_cfg, base_path, tuned, project_adapter, inputs,
                                                            tmp_path):
    batch, _ = inputs
    released = released_format(project_adapter, tmp_path / "checkpoint-10000")
    # what a plain PEFT load does with it under transformers 5: LoRA on the vision MLP too, nothing loaded
    naive = PeftModel.from_pretrained(fresh_base(policy_cfg, base_path), str(released)).eval()
    assert any("visual" in n for n in lora_modules(naive))
    torch.testing.assert_close(logits(naive, batch), logits(fresh_base(policy_cfg, base_path), batch))

    loaded = load_adapter(fresh_base(policy_cfg, base_path), released, is_trainable=False)
    assert lora_modules(loaded) == lora_modules(tuned)  # the language model only
    torch.testing.assert_close(logits(loaded, batch), logits(tuned, batch), rtol=1e-5, atol=1e-5)

    frames = [[Image.new("RGB", (64, 64), (i * 40, 200 - i * 30, 90)), Image.new("RGB", (64, 64), (20, i * 50, 160))]
              for i in range(3)]
    ours = VLMPrompter(policy_cfg, str(project_adapter), "cpu", max_new_tokens=8, do_sample=False, batch_size=3)
    theirs = VLMPrompter(policy_cfg, str(released), "cpu", max_new_tokens=8, do_sample=False, batch_size=3)
    assert theirs.prompts(frames, use_adapter=True) == ours.prompts(frames, use_adapter=True)
    assert theirs.prompts(frames, use_adapter=False) == ours.prompts(frames, use_adapter=False)


def test_partial_or_foreign_adapters_stop_the_load(policy_cfg, base_path, project_adapter, tmp_path):
    tensors = load_file(str(project_adapter / "adapter_model.safetensors"))
    config = (project_adapter / "adapter_config.json").read_text()

    def variant(name, changed, config_text=config):
        folder = tmp_path / name
        folder.mkdir()
        save_file(changed, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(config_text)
        return folder

    dropped = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    missing = variant("missing", {k: v for k, v in tensors.items() if k != dropped})
    with pytest.raises(AdapterError, match=r"does not set 1 weights.*layers\.1\.mlp\.up_proj\.lora_B"):
        load_adapter(fresh_base(policy_cfg, base_path), missing, is_trainable=False)

    foreign_name = "base_model.model.model.layers.0.self_attn.x_proj.lora_A.weight"
    foreign = variant("foreign", {**tensors, foreign_name: torch.zeros(8, 32)})
    with pytest.raises(AdapterError, match=r"not in the policy.*layers\.0\.self_attn\.x_proj"):
        load_adapter(fresh_base(policy_cfg, base_path), foreign, is_trainable=False)
    ours = load_adapter(fresh_base(policy_cfg, base_path), project_adapter, is_trainable=True)
    with pytest.raises(AdapterError, match=r"fit no module.*x_proj"):
        load_adapter_weights(ours, foreign)

    wrong_rank = variant("wrong_rank", tensors, json.dumps({**json.loads(config), "r": 4}))
    with pytest.raises(AdapterError, match="wrong shape"):
        load_adapter(fresh_base(policy_cfg, base_path), wrong_rank, is_trainable=False)
    with pytest.raises(AdapterError, match="eval.adapter='.*' is not a PEFT adapter folder"):
        VLMPrompter(policy_cfg, str(tmp_path), "cpu", 8, False, 2)


# ------------------------------------------------------------------------ against the official environment


def official_python() -> Path:
    configured = os.environ.get("COZ_TRAIN_OFFICIAL_PYTHON")
    path = Path(configured) if configured else REPO / ".official-venv" / "bin" / "python"
    if not path.is_file():
        if configured:
            pytest.fail(f"COZ_TRAIN_OFFICIAL_PYTHON={configured} does not exist: run .ci/official-env")
        pytest.skip("no official Chain-of-Zoom environment: run .ci/official-env (CI does)")
    return path


def legacy_config(config: dict) -> dict:
    """A transformers-5 Qwen2.5-VL config.json in the form transformers 4.49 reads (as the hub's)."""
    text = dict(config["text_config"])
    rope = text.pop("rope_parameters")
    for key in ("model_type", "layer_types", "dtype"):
        text.pop(key, None)
    vision = {k: v for k, v in config["vision_config"].items() if k != "rope_parameters"}
    out = {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "dtype")}
    out.update(text, rope_theta=rope["rope_theta"], torch_dtype="float32",
               rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]},
               vision_config={**vision, "model_type": "qwen2_5_vl"})
    return out


@pytest.fixture(scope="module")
def legacy_base(base_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy_base")
    shutil.copy(Path(base_path) / "model.safetensors", folder)  # saved with the 4.49 tensor names already
    config = json.loads((Path(base_path) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(legacy_config(config)))
    return folder


def run_official(*args) -> tuple[torch.Tensor, list[str]]:
    out = Path(args[-1])
    result = subprocess.run([str(official_python()), str(HERE / "official_side.py"), *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(str(out))["logits"], json.loads(Path(f"{out}.warnings.json").read_text())


def test_both_environments_compute_the_same_base_model(base_path, policy_cfg, legacy_base, inputs, tmp_path):
    batch, inputs_file = inputs
    official, _ = run_official("base", legacy_base, "-", inputs_file, tmp_path / "logits.safetensors")
    torch.testing.assert_close(official, logits(fresh_base(policy_cfg, base_path), batch), rtol=1e-4, atol=1e-4)


def test_official_inference_loads_an_adapter_saved_here(policy_cfg, base_path, legacy_base, tuned, project_adapter,
                                                         inputs, tmp_path):
    batch, inputs_file = inputs
    official, caught = run_official("load", legacy_base, project_adapter, inputs_file, tmp_path / "logits.safetensors")
    assert not [w for w in caught if "missing adapter keys" in w or "Unexpected keyword" in w or "not found" in w]
    ours = load_adapter(fresh_base(policy_cfg, base_path), project_adapter, is_trainable=False)
    torch.testing.assert_close(official, logits(ours, batch), rtol=1e-4, atol=1e-4)
    base = logits(fresh_base(policy_cfg, base_path), batch)
    assert not torch.allclose(official, base, atol=1e-3)  # the adapter changes the function, so this can fail


def test_adapter_written_by_the_official_stack_evaluates_here(policy_cfg, base_path, legacy_base, inputs, tmp_path):
    batch, inputs_file = inputs
    adapter = tmp_path / "official_adapter"
    official, _ = run_official("save", legacy_base, adapter, inputs_file, tmp_path / "logits.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"] == RELEASED_TARGETS
    assert all(k.startswith("base_model.model.model.layers.") for k in load_file(str(adapter / "adapter_model.safetensors")))
    ours = load_adapter(fresh_base(policy_cfg, base_path), adapter, is_trainable=False)
    assert lora_modules(ours) and not any("visual" in n for n in lora_modules(ours))
    torch.testing.assert_close(logits(ours, batch), official, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(official, logits(fresh_base(policy_cfg, base_path), batch), atol=1e-3)


def test_trained_vision_modules_cross_layouts_too(policy_cfg, base_path, inputs, tmp_path):
    """With the projector unfrozen (PEFT modules_to_save) its weights travel with the adapter, in either layout."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(policy_cfg, {"freeze_projector": False})
    model = load_vlm(base_path, cfg)
    peft_model = get_peft_model(model, lora_config(cfg, model))
    generator = torch.Generator().manual_seed(5)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            param.data = param.data + torch.randn(param.shape, generator=generator) * 0.1
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path))
    make_portable(tmp_path, peft_model)
    names = list(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert any(n.startswith("base_model.model.visual.merger.") for n in names), names
    assert not any(".language_model." in n or n.startswith("base_model.model.model.visual.") for n in names)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"] == ["visual.merger"]
    batch, _ = inputs
    reloaded = load_adapter(load_vlm(base_path, cfg).eval(), tmp_path, is_trainable=False)
    torch.testing.assert_close(logits(reloaded, batch), logits(peft_model, batch), rtol=1e-5, atol=1e-5)
