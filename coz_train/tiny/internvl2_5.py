"""A tiny random InternVL2.5 checkpoint in the hub's layout (OpenGVLab/InternVL2_5-8B), built offline.

The real checkpoint is InternViT (packed `qkv`, layer scale `ls1`/`ls2`, a CLS token) + an MLP
projector `mlp1` + InternLM2 (packed `wqkv`, `w1`/`w2`/`w3`, `output`), a sentencepiece BPE
tokenizer (`tokenizer.model`, byte fallback, `<|im_start|>`/`<|im_end|>` in its vocabulary) with
InternVL's image tokens added after it, and the `internvl2_5` chat template. This builder writes
the same files with the same tensor names and config keys at a tiny size (ViT width 32, patch 32:
49 image tokens per 448-px tile; LM width 64, 2 layers), seeded random weights, and no model code:
the checkpoint's `auto_map` names the remote-code files the hub ships, which are not reproduced
here. It is what `coz_train.critic_convert` is tested on (tests/critic/).

    python -m coz_train.tiny.internvl2_5 <out folder> [seed]
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>"]
IMAGE_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
SP_VOCAB = 512  # sentencepiece pieces (3 control + 6 chat + 256 bytes + merges)

VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=448,
              patch_size=32, qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6,
              hidden_act="gelu", initializer_factor=1.0, initializer_range=0.02, drop_path_rate=0.0, dropout=0.0,
              attention_dropout=0.0, use_flash_attn=False, num_channels=3, architectures=["InternVisionModel"],
              model_type="intern_vit_6b")
LLM = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
           max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000, hidden_act="silu", bias=False,
           rope_scaling={"type": "dynamic", "factor": 2.0}, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
           pad_token_id=2, initializer_range=0.02, use_cache=True, attn_implementation="eager",
           architectures=["InternLM2ForCausalLM"], model_type="internlm2")

CORPUS = [
    "The first image is a wide view. The second image is a zoom-in of a region of the first image.",
    "A prompt was written to describe the second image so that a super-resolution model can restore it.",
    "Rate how accurately and usefully the prompt describes what is in the second image, given the wider view.",
    "Answer with a single integer from 0 to 100, and nothing else. Score: 0 1 2 3 4 5 6 7 8 9 10 50 85 100",
    "fur, bricks, sky, a cat on a wooden fence, grass, leaves, water, hair, fabric, text, sharp edges",
    "Image-1: Image-2: system user assistant InternVL",
]


def sentencepiece_model() -> bytes:
    """A BPE sentencepiece model trained on `CORPUS`: ids 0/1/2 = <unk>/<s>/</s>, byte fallback, no dummy prefix."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=out, model_type="bpe", vocab_size=SP_VOCAB,
        hard_vocab_limit=False, byte_fallback=True, user_defined_symbols=CHAT_TOKENS, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    return out.getvalue()


def tensor_shapes(vocab_size: int, vision: dict | None = None, llm: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, by its hub name (for the tiny sizes unless `vision` / `llm` are given)."""
    v, t = vision or VISION, llm or LLM
    d, ff, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, d),
        "vision_model.embeddings.patch_embedding.weight": (d, 3, patch, patch),
        "vision_model.embeddings.patch_embedding.bias": (d,),
        "vision_model.embeddings.position_embedding": (1, (v["image_size"] // patch) ** 2 + 1, d),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        shapes.update({p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,), p + "attn.proj.weight": (d, d),
                       p + "attn.proj.bias": (d,), p + "mlp.fc1.weight": (ff, d), p + "mlp.fc1.bias": (ff,),
                       p + "mlp.fc2.weight": (d, ff), p + "mlp.fc2.bias": (d,), p + "norm1.weight": (d,),
                       p + "norm1.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,), p + "ls1": (d,),
                       p + "ls2": (d,)})
    h, inter, heads, kv = t["hidden_size"], t["intermediate_size"], t["num_attention_heads"], t["num_key_value_heads"]
    head_dim, shuffled = h // heads, d * 4  # pixel shuffle by 0.5 stacks 2x2 ViT tokens
    shapes.update({"mlp1.0.weight": (shuffled,), "mlp1.0.bias": (shuffled,), "mlp1.1.weight": (h, shuffled),
                   "mlp1.1.bias": (h,), "mlp1.3.weight": (h, h), "mlp1.3.bias": (h,),
                   "language_model.model.tok_embeddings.weight": (vocab_size, h)})
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes.update({p + "attention.wqkv.weight": ((heads + 2 * kv) * head_dim, h), p + "attention.wo.weight": (h, h),
                       p + "feed_forward.w1.weight": (inter, h), p + "feed_forward.w3.weight": (inter, h),
                       p + "feed_forward.w2.weight": (h, inter), p + "attention_norm.weight": (h,),
                       p + "ffn_norm.weight": (h,)})
    shapes.update({"language_model.model.norm.weight": (h,), "language_model.output.weight": (vocab_size, h)})
    return shapes


def random_weights(vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights: std 0.1 matrices (logits that differ between inputs), norms and layer scales near 1."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in tensor_shapes(vocab_size).items():
        noise = torch.randn(shape, generator=generator)
        is_scale = name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ls1", "ls2", "mlp1.0.weight"))
        weights[name] = (1.0 + 0.1 * noise) if is_scale else 0.1 * noise
    return weights


def build(out_dir: Path, seed: int = 0) -> Path:
    """Write the checkpoint folder; returns it."""
    import sentencepiece as spm
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model = sentencepiece_model()
    (out_dir / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    sp_size = sp.get_piece_size()
    vocab_size = sp_size + len(IMAGE_TOKENS)
    added = {str(i): {"content": tok, "special": True} for i, tok in enumerate(["<unk>", "<s>", "</s>"])}
    added.update({str(sp.piece_to_id(tok)): {"content": tok, "special": True} for tok in CHAT_TOKENS})
    added.update({str(sp_size + i): {"content": tok, "special": True} for i, tok in enumerate(IMAGE_TOKENS)})
    for entry in added.values():
        entry.update(lstrip=False, rstrip=False, normalized=False, single_word=False)
    tokenizer_config = {
        "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                                                                None]},
        "added_tokens_decoder": added, "additional_special_tokens": IMAGE_TOKENS, "bos_token": "<s>",
        "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 16384, "padding_side": "right",
    }
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "torch_dtype": "float32",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 448, "max_dynamic_patch": 12,
        "min_dynamic_patch": 1, "ps_version": "v2", "select_layer": -1, "template": "internvl2_5",
        "use_thumbnail": True, "use_backbone_lora": 0, "use_llm_lora": 0,
        "vision_config": dict(VISION), "llm_config": dict(LLM, vocab_size=vocab_size),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
         "additional_special_tokens": IMAGE_TOKENS}, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, sp.piece_to_id("<|im_end|>")]}, indent=2))
    save_file(random_weights(vocab_size, seed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m coz_train.tiny.internvl2_5 <out folder> [seed]")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build(Path(argv[0]), int(argv[1]) if len(argv) > 1 else 0)
    log.info("Tiny InternVL2.5 checkpoint written to %s", out)


if __name__ == "__main__":
    main()
