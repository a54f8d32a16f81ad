"""A tiny random Stable Diffusion 3 built from config, and LoRA files in the official CoZ layout.

`ensure_tiny_sd3()` builds, once, a diffusers folder (`model_index.json` + subfolders) into the
cache (`$COZ_TRAIN_CACHE`, default `~/.cache/coz_train`) with every component of SD3 medium at
toy width: the MMDiT (`SD3Transformer2DModel`, 2 joint blocks, so the last block's context norm
is `AdaLayerNormContinuous` as in the real model), a 16-channel `AutoencoderKL` with 8x
downsampling and no quant convs (SD3's layout, SD3's scaling/shift factors), CLIP-L and CLIP-G
text encoders with projection, optionally a T5 encoder, and the flow-matching Euler scheduler
(shift 3). `StableDiffusion3Pipeline.from_pretrained(folder)` loads it like the real checkpoint.

The tokenizers are trained offline on an in-code corpus (~0.1 s): a CLIP-style byte-level BPE
(lower-casing, `</w>` word ends, `<|startoftext|>`/`<|endoftext|>`) wrapped as `CLIPTokenizer`,
and a SentencePiece-style Unigram wrapped as `T5Tokenizer`.

`write_official_lora_files` writes random LoRA weights in the exact layout that the official
inference code (github.com/bryanswkim/Chain-of-Zoom, `osediff_sd3.py`) reads, for tests:
- transformer (`model_20001.pkl`): `torch.save` of a flat list `[up_0, down_0, up_1, down_1, ...]`,
  one pair per `nn.Linear` inside each `AdaLayerNormZero` of the MMDiT, in module order
  (block 0 norm1, block 0 norm1_context, block 1 norm1, ...); up is [out, r], down is [r, in];
- VAE encoder (`vae_encoder_20001.pt`): `torch.save` of `vae.encoder.state_dict()` (fp16) after a
  PEFT LoRA adapter named `default_encoder` was added to the encoder's convs, `conv_shortcut`s
  and mid-block attention projections: base weights under `<module>.base_layer.*`, the LoRA under
  `<module>.lora_A.default_encoder.weight` / `<module>.lora_B.default_encoder.weight`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from coz_train.tiny.models import build_once, cache_root

TINY_SD3_VERSION = 1  # bump when the tiny architecture changes so old cache folders are not reused

# Official names of the released files and of the VAE adapter.
TRANSFORMER_LORA_FILE = "model_20001.pkl"
VAE_LORA_FILE = "vae_encoder_20001.pt"
VAE_ADAPTER_NAME = "default_encoder"

# Widths of the tiny model. The CLIP widths add up to the pooled width (SD3: 768 + 1280 = 2048) and
# fit inside the T5 width, which is the joint attention width (SD3: 4096).
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 16, 24, 48

_CORPUS = [
    "fur, whiskers, eye, texture, grass, sky, clouds, brick wall, stone, leaves, water, sand, metal, fabric, skin",
    "hair, feathers, wood grain, rust, paint, road, window, tree bark, a cat, a dog, a red car, the moon",
    "close-up detail of a surface, fine structure, sharp edges, soft shadows, high resolution, photo",
    "red green blue yellow white black brown grey orange purple pink golden silver dark light",
    "The second image is a zoom-in of the first image. What is in the second image? A set of words.",
    "0 1 2 3 4 5 6 7 8 9 astronaut coffee cup rocket galaxy stars cells retina eye macro",
]


def build_clip_tokenizer(vocab_size: int = 400, pad_token: str = "<|endoftext|>"):
    """A CLIP-format BPE (`CLIPTokenizer`) trained on the in-code corpus: CLIP's normaliser,
    pre-tokeniser and `</w>` word ends; vocabulary = 256 bytes, 256 bytes + `</w>`, merges, specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer()  # the empty CLIP pipeline: its normaliser and pre-tokeniser
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = reference.backend_tokenizer.normalizer
    tok.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)

    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]
    ]
    tokens = alphabet + [c + "</w>" for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def build_t5_tokenizer(vocab_size: int = 200):
    """A SentencePiece-style Unigram (`T5Tokenizer`): `<pad>`=0, `</s>`=1, `<unk>`=2, no sentinels."""

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    if [p for p, _ in vocab[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"tiny T5 tokenizer: unexpected special token order {vocab[:3]}")
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _build(out_dir: Path, seed: int, t5: bool) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")  # SD3's CLIP-G tokenizer pads with "!"

    def clip(width: int, tok) -> CLIPTextModelWithProjection:
        config = CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=width,
            intermediate_size=2 * width,
            projection_dim=width,
            num_hidden_layers=2,  # SD3 reads the penultimate hidden state
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return CLIPTextModelWithProjection(config)

    torch.manual_seed(seed)
    text_encoder, text_encoder_2 = clip(CLIP_L_WIDTH, tokenizer), clip(CLIP_G_WIDTH, tokenizer_2)
    text_encoder_3 = tokenizer_3 = None
    if t5:
        tokenizer_3 = build_t5_tokenizer()
        text_encoder_3 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_3),
                d_model=T5_WIDTH,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        out_channels=16,
        pos_embed_max_size=32,  # up to 32x32 patches: 512 px images
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,  # tiled VAE engages above 64 px, so tests at 128 px run the tiled path
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(out_dir)


def ensure_tiny_sd3(seed: int = 0, t5: bool = True) -> str:
    """Build the tiny SD3 (with or without T5) if needed; return its diffusers folder."""
    out_dir = cache_root() / "tiny" / f"sd3{'' if t5 else '-no_t5'}-seed{seed}-v{TINY_SD3_VERSION}"
    return build_once(out_dir, "model_index.json", lambda folder: _build(folder, seed, t5))


def official_transformer_lora_modules(transformer: torch.nn.Module) -> list[str]:
    """Names of the linears the official code wraps, in file order: per joint block, the linear of
    `norm1` and of `norm1_context` where that norm is an `AdaLayerNormZero` (not in the last block,
    whose context branch ends with an `AdaLayerNormContinuous`)."""
    names = []
    for i, block in enumerate(transformer.transformer_blocks):
        for norm in ("norm1", "norm1_context"):
            if type(getattr(block, norm)).__name__ == "AdaLayerNormZero":
                names.append(f"transformer_blocks.{i}.{norm}.linear")
    return names


def official_vae_lora_targets(vae: torch.nn.Module) -> list[str]:
    """The official VAE target rule: every encoder weight (not bias, not norm) whose name contains
    one of conv1/conv2/conv_in/conv_shortcut/conv/conv_out/to_k/to_q/to_v/to_out.0, plus
    `quant_conv` (absent in SD3). Names repeat in the official list (PEFT ignores repeats)."""
    patterns = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]
    targets = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        for pattern in patterns:
            if pattern in name and "encoder" in name:
                targets.append(name.replace(".weight", ""))
            elif "quant_conv" in name and "post_quant_conv" not in name:
                targets.append(name.replace(".weight", ""))
    return targets


def write_official_lora_files(
    sd3_dir: str,
    out_dir: str | Path,
    seed: int = 0,
    rank: int = 4,
    zero: bool = False,
    std: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Write `model_20001.pkl` and `vae_encoder_20001.pt` for the SD3 folder `sd3_dir` into `out_dir`.

    Random LoRA weights: down/A ~ N(0, 1/fan_in), up/B ~ N(0, std^2/rank), so a LoRA moves a layer's
    output by about `std` times its input's scale; with `zero=True` the up/B weights are zero and the
    LoRA is an identity (the official initialisation). Returns {"<module>.up"/"<module>.down": tensor} of
    the transformer LoRA, so a test can check which module got which pair.
    """
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from peft import LoraConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    transformer = SD3Transformer2DModel.from_pretrained(sd3_dir, subfolder="transformer")
    weights, by_name = [], {}
    for name in official_transformer_lora_modules(transformer):
        linear = transformer.get_submodule(name)
        up = torch.randn(linear.out_features, rank, generator=gen) * std / rank**0.5
        down = torch.randn(rank, linear.in_features, generator=gen) / linear.in_features**0.5
        if zero:
            up.zero_()
        weights += [up, down]
        by_name[f"{name}.up"], by_name[f"{name}.down"] = up, down
    torch.save(weights, out_dir / TRANSFORMER_LORA_FILE)

    vae = copy.deepcopy(AutoencoderKL.from_pretrained(sd3_dir, subfolder="vae"))
    vae.add_adapter(
        LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=official_vae_lora_targets(vae)),
        adapter_name=VAE_ADAPTER_NAME,
    )
    with torch.no_grad():
        for name, param in vae.encoder.named_parameters():
            if f"lora_A.{VAE_ADAPTER_NAME}" in name or f"lora_B.{VAE_ADAPTER_NAME}" in name:
                if "lora_A" in name:  # [r, in(, k, k)]: fan_in = in * k * k
                    param.copy_(torch.randn(param.shape, generator=gen) / param[0].numel() ** 0.5)
                else:  # [out, r(, 1, 1)]
                    param.copy_(torch.randn(param.shape, generator=gen) * (0.0 if zero else std / rank**0.5))
    state = {k: v.detach().to(torch.float16).clone() for k, v in vae.encoder.state_dict().items()}
    torch.save(state, out_dir / VAE_LORA_FILE)
    return by_name
