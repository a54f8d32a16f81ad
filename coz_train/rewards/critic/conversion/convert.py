"""InternVL2.5 (hub layout, remote code) -> transformers' native InternVL (`-hf` layout), no remote code.

InternVL2.5-8B is InternViT-300M + an MLP projector + InternLM2.5-7B. transformers 5 implements
InternViT and the projector natively (`InternVLForConditionalGeneration`), and InternLM2 is the
Llama architecture up to names and a packed attention projection, so the checkpoint maps onto an
`InternVLConfig` with a `llama` text config:
- ViT: `qkv` split into q/k/v (rows [q; k; v]), `attn.proj` -> `projection_layer`, `ls1`/`ls2` ->
  `lambda_1`/`lambda_2`, `norm1`/`norm2` -> `layernorm_before`/`layernorm_after`.
- projector: `mlp1.{0,1,3}` -> `layer_norm`, `linear_1`, `linear_2`.
- InternLM2: `wqkv` rows are grouped per key/value head as [q_1 .. q_g, k, v] (g = heads / kv
  heads), split into q_proj/k_proj/v_proj; `wo` -> o_proj; `w1`/`w3`/`w2` -> gate/up/down;
  `attention_norm`/`ffn_norm` -> input/post_attention_layernorm; `output` -> lm_head. InternLM2's
  dynamic NTK rope maps onto Llama's `dynamic` rope type (the same formula; it only changes
  anything past max_position_embeddings).
- tokenizer: the sentencepiece BPE model becomes a `tokenizers` BPE with byte fallback (as
  InternLM2's own fast tokenizer converts it), BOS added, chat and image tokens as special tokens.
- processor: `InternVLProcessor` with a `GotOcr2ImageProcessor` whose tiling is InternVL's
  `dynamic_preprocess` (closest grid of at most `max_tiles` 448-px tiles + a thumbnail), and a chat
  template writing the `internvl2_5` conversation (its system message, `Image-N:` headers when a
  turn has several images), as the checkpoint's `chat()` builds it.
The converted folder is checked against the upstream code on a tiny checkpoint built like the real
one (tests/critic_convert/test_internvl2_5.py and its fixture's note).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
END_OF_TURN = "<|im_end|>"
SYSTEM_MESSAGES = {  # the conversation templates' default system messages (InternVL's conversation.py)
    "internvl2_5": "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
}


def chat_template(system_message: str) -> str:
    """The `internvl2_5` conversation as a chat template: one `<IMG_CONTEXT>` per image (the processor expands it)."""
    return (
        "{{ bos_token }}"
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + system_message + "<|im_end|>\n{% endif %}"
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length %}"
        "{% set ns = namespace(n=0) %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{% set ns.n = ns.n + 1 %}"
        "{% if images > 1 %}Image-{{ ns.n }}: {% endif %}<IMG_CONTEXT>\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def text_config(llm: dict[str, Any]) -> dict[str, Any]:
    """InternLM2's config as a Llama text config."""
    if llm.get("model_type") != "internlm2":
        raise ValueError(f"llm_config.model_type is '{llm.get('model_type')}': only InternLM2 language models "
                         "(InternVL2/2.5 with InternLM2/2.5) are converted here; Qwen2/Llama-based InternVL "
                         "checkpoints have official -hf conversions (OpenGVLab/*-hf).")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("dynamic", "linear"):
            raise ValueError(f"llm_config.rope_scaling type '{kind}' has no Llama equivalent here.")
        rope.update(rope_type=kind, factor=float(scaling["factor"]))
    return dict(
        model_type="llama", vocab_size=llm["vocab_size"], hidden_size=llm["hidden_size"],
        intermediate_size=llm["intermediate_size"], num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"], num_key_value_heads=llm["num_key_value_heads"],
        hidden_act=llm.get("hidden_act", "silu"), max_position_embeddings=llm["max_position_embeddings"],
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6), rope_parameters=rope, attention_bias=bool(llm.get("bias", False)),
        mlp_bias=False, tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        bos_token_id=llm.get("bos_token_id", 1), eos_token_id=llm.get("eos_token_id", 2),
        pad_token_id=llm.get("pad_token_id", 2),
    )


def vision_config(vit: dict[str, Any]) -> dict[str, Any]:
    return dict(
        hidden_size=vit["hidden_size"], intermediate_size=vit["intermediate_size"],
        num_attention_heads=vit["num_attention_heads"], num_hidden_layers=vit["num_hidden_layers"],
        image_size=vit["image_size"], patch_size=vit["patch_size"], attention_bias=bool(vit.get("qkv_bias", True)),
        use_qk_norm=bool(vit.get("qk_normalization", False)), norm_type=vit.get("norm_type", "layer_norm"),
        layer_norm_eps=vit.get("layer_norm_eps", 1e-6), hidden_act=vit.get("hidden_act", "gelu"),
        use_mean_pooling=True, num_channels=vit.get("num_channels", 3),
    )


def split_wqkv(wqkv: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's packed [(heads + 2 kv_heads) * head_dim, hidden] -> q, k, v weights in Llama's head order."""
    groups = heads // kv_heads
    head_dim = wqkv.shape[0] // (heads + 2 * kv_heads)
    packed = wqkv.reshape(kv_heads, groups + 2, head_dim, wqkv.shape[-1])
    q = packed[:, :groups].reshape(heads * head_dim, -1)
    return q, packed[:, -2].reshape(kv_heads * head_dim, -1), packed[:, -1].reshape(kv_heads * head_dim, -1)


VISION_RENAMES = {"attn.proj.": "attention.projection_layer.", "ls1": "lambda_1", "ls2": "lambda_2",
                  "norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "mlp.fc1.": "mlp.fc1.",
                  "mlp.fc2.": "mlp.fc2."}
TEXT_RENAMES = {"attention.wo.": "self_attn.o_proj.", "feed_forward.w1.": "mlp.gate_proj.",
                "feed_forward.w3.": "mlp.up_proj.", "feed_forward.w2.": "mlp.down_proj.",
                "attention_norm.": "input_layernorm.", "ffn_norm.": "post_attention_layernorm."}
FIXED = {"vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
         "vision_model.embeddings.position_embedding": "model.vision_tower.embeddings.position_embeddings",
         "vision_model.embeddings.patch_embedding.weight": "model.vision_tower.embeddings.patch_embeddings.projection.weight",
         "vision_model.embeddings.patch_embedding.bias": "model.vision_tower.embeddings.patch_embeddings.projection.bias",
         "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
         "mlp1.0.bias": "model.multi_modal_projector.layer_norm.bias",
         "mlp1.1.weight": "model.multi_modal_projector.linear_1.weight",
         "mlp1.1.bias": "model.multi_modal_projector.linear_1.bias",
         "mlp1.3.weight": "model.multi_modal_projector.linear_2.weight",
         "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
         "language_model.model.tok_embeddings.weight": "model.language_model.embed_tokens.weight",
         "language_model.model.norm.weight": "model.language_model.norm.weight",
         "language_model.output.weight": "lm_head.weight"}


def _rename(name: str, renames: dict[str, str], old_prefix: str, new_prefix: str) -> str | None:
    rest = name[len(old_prefix):]
    layer, _, tail = rest.partition(".")
    for old, new in renames.items():
        if tail.startswith(old):
            return f"{new_prefix}{layer}.{new}{tail[len(old):]}"
    return None


def convert_state_dict(hub: dict[str, torch.Tensor], llm: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Hub tensor names -> native ones; every tensor is used exactly once, or this raises."""
    out: dict[str, torch.Tensor] = {}
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    vit_prefix, lm_prefix = "vision_model.encoder.layers.", "language_model.model.layers."
    for name, tensor in hub.items():
        if name in FIXED:
            out[FIXED[name]] = tensor
        elif name.startswith(vit_prefix) and ".attn.qkv." in name:
            layer, kind = name[len(vit_prefix):].split(".")[0], name.rsplit(".", 1)[1]
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                out[f"model.vision_tower.encoder.layer.{layer}.attention.{proj}.{kind}"] = part.contiguous()
        elif name.startswith(vit_prefix) and (new := _rename(name, VISION_RENAMES, vit_prefix,
                                                                "model.vision_tower.encoder.layer.")):
            out[new] = tensor
        elif name.startswith(lm_prefix) and name.endswith(".attention.wqkv.weight"):
            layer = name[len(lm_prefix):].split(".")[0]
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), split_wqkv(tensor, heads, kv_heads), strict=True):
                out[f"model.language_model.layers.{layer}.self_attn.{proj}.weight"] = part.contiguous()
        elif name.startswith(lm_prefix) and (new := _rename(name, TEXT_RENAMES, lm_prefix,
                                                               "model.language_model.layers.")):
            out[new] = tensor
        else:
            raise ValueError(f"Unexpected tensor '{name}' in the InternVL2.5 checkpoint: not converted.")
    return out


def read_hub_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No *.safetensors in {folder}: is it an InternVL2.5 checkpoint folder?")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights
