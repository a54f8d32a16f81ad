"""OSEDiff on Stable Diffusion 3 medium: the one-step, prompt-conditioned 4x SR backbone of Chain-of-Zoom.

Source: the official CoZ inference, github.com/bryanswkim/Chain-of-Zoom (`osediff_sd3.py`:
`StableDiffusion3Base.encode_prompt`, `StableDiffusion3Base.decode`, `inject_lora`,
`inject_lora_vae`, `OSEDiff_SD3_TEST`; `inference_coz.py` for pre/post-processing;
`lora/lora_layers.py`: `LoraInjectedLinear`). Re-implemented here, not copied.

Algorithm, for a batch of LR images x (w x h) and one prompt per image:
1. x is bicubic-upscaled to (4w, 4h) (the official chain hands the backbone the 512 px bicubic zoom
   of a 128 px crop), mapped to [-1, 1].
2. VAE encode with the LoRA'd encoder: z = sample(q(z|x)) * scaling_factor. The official
   inference does NOT subtract `shift_factor` here (its training-side `encode` does); decoding does
   add it back. `encode_shift: true` subtracts it. The official sample is unseeded; here the noise
   is seeded (`seed`), one draw per image, so outputs do not depend on the batch; `latent: mode`
   takes the mean.
3. Prompt: CLIP-L and CLIP-G (77 tokens, padded to 77, truncated) -> penultimate hidden states,
   concatenated on the feature axis and zero-padded to the T5 width; T5-XXL (512 tokens, padded)
   -> last hidden state; the sequence is [CLIP (77); T5 (512)]; pooled = [CLIP-L text_embeds;
   CLIP-G text_embeds]. No negative prompt, no classifier-free guidance. Without T5
   (`t5: false`) the T5 part is zeros, as diffusers' SD3 pipeline does.
4. One flow-matching step at the first timestep of the SD3 scheduler set to 1 step (t = 1000,
   sigma = 1): v = MMDiT(z, t, prompt); z <- z - v.
5. Decode z / scaling_factor + shift_factor, clamp to [-1, 1], map to [0, 1], to 8 bits by
   truncation (torchvision's `ToPILImage` of a float tensor), a (4w, 4h) RGB image.

LoRA (rank 4 in the release), two files in `lora_dir`, loaded with `torch.load(weights_only=True)`
(a pickle with anything but tensors and plain containers is refused, never run):
- `model_20001.pkl` (transformer): a `torch.save`d flat list [up_0, down_0, up_1, down_1, ...], one
  pair per `nn.Linear` inside each `AdaLayerNormZero` of the MMDiT in module order (block i:
  `norm1.linear`, then `norm1_context.linear` where that is an `AdaLayerNormZero`: all blocks but
  the last; 47 pairs for SD3 medium). Applied unmerged: out = W x + b + up(down(x)) (scale 1, no
  alpha/r), in float32 like the official `LoraInjectedLinear`.
- `vae_encoder_20001.pt`: the full `vae.encoder.state_dict()` after PEFT added an adapter named
  `default_encoder` (LoraConfig r=4, lora_alpha left at PEFT's default 8: scale 2) to the encoder's
  convs, `conv_shortcut`s and mid-block attention projections; keys `<m>.base_layer.*`,
  `<m>.lora_A.default_encoder.weight`, `<m>.lora_B.default_encoder.weight`. The official code
  adds the same adapter and `load_state_dict`s the file strictly; here the target modules are
  read off the file's keys and the load is strict too.

Official precision: text encoders fp16, MMDiT and VAE fp32 (the LoRA'd adaLN linears round their
output to fp16). Here `dtype` sets text encoders and MMDiT, `vae_dtype` (default float32) the VAE.

Tiled VAE: the official script parses tile sizes but never uses them (no tiling at 512 px).
`vae_tiling: true` enables diffusers' tiled VAE, which for SD3 (tile = config.sample_size = 1024
px) only engages above 1024 px, so 512 px outputs are unaffected.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from coz_train.sr.backbones.base import register_backbone

DEFAULT_SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"
TRANSFORMER_LORA_FILE = "model_20001.pkl"
VAE_LORA_FILE = "vae_encoder_20001.pt"
VAE_ADAPTER_NAME = "default_encoder"
VAE_LORA_ALPHA = 8  # PEFT's LoraConfig default, which the official `inject_lora_vae` leaves in place
CLIP_MAX_LENGTH, T5_MAX_LENGTH = 77, 512
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_LORA_HELP = (
    "set eval.backbone.lora_dir to a folder with the official OSEDiff-SD3 LoRA files: clone "
    "github.com/bryanswkim/Chain-of-Zoom and point it at its ckpt/ folder (ckpt/SR_LoRA/{t} and "
    "ckpt/SR_VAE/{v} are found there) or copy both files into one folder"
)


class LoRAInjectedLinear(nn.Module):
    """`base(x) + up(down(x))`, all in float32, output in the input's dtype (the official adaLN LoRA)."""

    def __init__(self, base: nn.Linear, up: torch.Tensor, down: torch.Tensor):
        super().__init__()
        self.base = base.float()
        self.lora_down = nn.Linear(base.in_features, down.shape[0], bias=False, device=base.weight.device)
        self.lora_up = nn.Linear(down.shape[0], base.out_features, bias=False, device=base.weight.device)
        with torch.no_grad():
            self.lora_down.weight.copy_(down.float())
            self.lora_up.weight.copy_(up.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return (self.base(h) + self.lora_up(self.lora_down(h))).to(x.dtype)


def adanorm_zero_linears(transformer: nn.Module) -> list[str]:
    """Names of every `nn.Linear` inside an `AdaLayerNormZero`, in module order (the official file order)."""
    names = []
    for parent_name, parent in transformer.named_modules():
        if type(parent).__name__ != "AdaLayerNormZero":
            continue
        for child_name, child in parent.named_modules():
            if isinstance(child, nn.Linear) and child_name:
                names.append(f"{parent_name}.{child_name}")
    return names


def safe_torch_load(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only; any other pickled object
    (which a full unpickler would construct by running code) is refused with an error naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((ln.strip() for ln in str(err).splitlines() if "WeightsUnpickler error" in ln), "")
        if "global" in reason.lower():
            raise ValueError(
                f"Refusing to load the {what} file {path}: it holds pickled objects other than tensors, which "
                f"could run arbitrary code when unpickled. The official files are plain tensor lists/dicts; get an "
                f"untampered copy. ({reason})"
            ) from None
        raise ValueError(
            f"Cannot read the {what} file {path} as a torch file (corrupt, or a Git LFS pointer instead of the "
            f"weights?): {reason or str(err).splitlines()[0]}"
        ) from None
    except RuntimeError as err:  # not a zip/pickle torch file at all (e.g. a truncated download)
        raise ValueError(f"Cannot read the {what} file {path} as a torch file: {str(err).splitlines()[0]}") from None


def apply_transformer_lora(transformer: nn.Module, path: Path) -> list[str]:
    """Wrap the adaLN-Zero linears of `transformer` with the LoRA pairs in the official list file."""
    weights = safe_torch_load(path, "transformer LoRA")
    if not isinstance(weights, (list, tuple)) or not all(isinstance(w, torch.Tensor) for w in weights):
        raise ValueError(
            f"{path}: expected a list of tensors [up_0, down_0, ...] (official layout), got {type(weights)}."
        )
    names = adanorm_zero_linears(transformer)
    if len(weights) != 2 * len(names):
        raise ValueError(
            f"{path}: {len(weights)} tensors, but this transformer has {len(names)} AdaLayerNormZero linears "
            f"(expected {2 * len(names)} tensors): the LoRA is for another model."
        )
    for i, name in enumerate(names):
        up, down = weights[2 * i], weights[2 * i + 1]
        base = transformer.get_submodule(name)
        if up.shape != (base.out_features, down.shape[0]) or down.shape != (up.shape[1], base.in_features):
            raise ValueError(
                f"{path}: LoRA pair {i} has up {tuple(up.shape)}, down {tuple(down.shape)}; {name} is "
                f"Linear({base.in_features}, {base.out_features})."
            )
        parent_name, _, child = name.rpartition(".")
        setattr(transformer.get_submodule(parent_name), child, LoRAInjectedLinear(base, up, down))
    return names


def apply_vae_encoder_lora(vae: nn.Module, path: Path) -> list[str]:
    """Add the `default_encoder` PEFT adapter to the modules named in the file and load it strictly."""
    from peft import LoraConfig

    state = safe_torch_load(path, "VAE encoder LoRA")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of the VAE encoder (official layout), got {type(state)}.")
    suffix = f".lora_A.{VAE_ADAPTER_NAME}.weight"
    modules = sorted(k[: -len(suffix)] for k in state if k.endswith(suffix))
    if not modules:
        raise ValueError(f"{path}: no '*{suffix}' keys: not an official OSEDiff-SD3 VAE encoder LoRA file.")
    ranks = {state[f"{m}{suffix}"].shape[0] for m in modules}
    if len(ranks) != 1:
        raise ValueError(f"{path}: LoRA ranks differ between modules: {sorted(ranks)}.")
    config = LoraConfig(r=ranks.pop(), lora_alpha=VAE_LORA_ALPHA, target_modules=[f"encoder.{m}" for m in modules])
    vae.add_adapter(config, adapter_name=VAE_ADAPTER_NAME)
    try:
        vae.encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit this VAE's encoder: {err}") from None
    return modules


def find_lora_file(lora_dir: Path, name: str, official_subdir: str) -> Path:
    for candidate in (lora_dir / name, lora_dir / official_subdir / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"OSEDiff-SD3 LoRA file '{name}' not found in eval.backbone.lora_dir={lora_dir} "
        f"(nor in {lora_dir / official_subdir}): " + _LORA_HELP.format(t=TRANSFORMER_LORA_FILE, v=VAE_LORA_FILE)
    )


class OSEDiffSD3:
    name = "osediff_sd3"
    scale = 4
    uses_prompt = True

    def __init__(
        self,
        sd3: str,
        lora_dir: str | Path | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        vae_dtype: torch.dtype = torch.float32,
        text_dtype: torch.dtype | None = None,
        transformer_lora: str = TRANSFORMER_LORA_FILE,
        vae_lora: str = VAE_LORA_FILE,
        vae_tiling: bool = True,
        t5: bool = True,
        clip_max_length: int = CLIP_MAX_LENGTH,
        t5_max_length: int = T5_MAX_LENGTH,
        latent: str = "sample",
        seed: int = 42,
        encode_shift: bool = False,
    ):
        from diffusers import StableDiffusion3Pipeline

        text_dtype = text_dtype or dtype

        if lora_dir is None or str(lora_dir) in ("", "None", "null"):
            raise ValueError(
                "eval.backbone.lora_dir is not set: " + _LORA_HELP.format(t=TRANSFORMER_LORA_FILE, v=VAE_LORA_FILE)
            )
        lora_dir = Path(lora_dir).expanduser()
        if not lora_dir.is_dir():
            raise FileNotFoundError(
                f"eval.backbone.lora_dir={lora_dir} is not a folder: "
                + _LORA_HELP.format(t=transformer_lora, v=vae_lora)
            )
        transformer_path = find_lora_file(lora_dir, transformer_lora, "SR_LoRA")
        vae_path = find_lora_file(lora_dir, vae_lora, "SR_VAE")
        if latent not in ("sample", "mode"):
            raise ValueError(f"eval.backbone.latent='{latent}': use 'sample' (official) or 'mode'.")

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype, self.vae_dtype = dtype, vae_dtype
        self.clip_max_length, self.t5_max_length = clip_max_length, t5_max_length
        self.latent, self.seed, self.encode_shift = latent, seed, encode_shift

        extra = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}
        try:
            # the VAE is read straight into vae_dtype: no detour through a lower precision
            dtypes = {"default": dtype, "vae": vae_dtype}
            dtypes.update({name: text_dtype for name in ("text_encoder", "text_encoder_2", "text_encoder_3")})
            pipe = StableDiffusion3Pipeline.from_pretrained(sd3, dtype=dtypes, **extra)
        except (OSError, ValueError) as err:
            local = Path(sd3).expanduser().exists()
            raise FileNotFoundError(
                f"Cannot load Stable Diffusion 3 from eval.backbone.sd3='{sd3}' "
                + (
                    "(a local folder, but not a diffusers SD3 folder)"
                    if local
                    else "(no such local folder; tried the hub)"
                )
                + f": {str(err).splitlines()[0] if str(err) else type(err).__name__}. Set eval.backbone.sd3 to a local "
                f"diffusers folder of {DEFAULT_SD3} (a gated model: accept its licence on the hub, then "
                f"`hf download {DEFAULT_SD3} --local-dir <dir>` with a token) or make the hub reachable."
            ) from None
        self.scheduler = pipe.scheduler
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
        self.transformer, self.vae = pipe.transformer, pipe.vae
        del pipe

        # already in their dtypes (from_pretrained keeps e.g. T5's fp32 modules); only moved here
        for module in [*self.text_encoders, self.transformer]:
            if module is not None:
                module.to(self.device).eval().requires_grad_(False)
        # the LoRA'd adaLN linears are float32 whatever `dtype` is, as in the official code
        self.transformer_lora_modules = apply_transformer_lora(self.transformer, transformer_path)
        self.vae_lora_modules = apply_vae_encoder_lora(self.vae, vae_path)
        self.vae.to(self.device).eval().requires_grad_(False)
        if vae_tiling:
            self.vae.enable_tiling()
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.patch = self.transformer.config.patch_size
        # the latent interface (`coz_train.sr.backbones.base.LatentSRBackbone`, used by the full-image chain)
        self.latent_factor = self.vae_scale  # output px per latent px
        self.latent_multiple = self.vae_scale * self.patch  # a latent tile's side in output px is a multiple of this

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] prompts -> (embeddings [N, 77 + t5_max_length, joint_dim], pooled [N, pooled_dim])."""
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2], strict=True):
            ids = tokenizer(
                prompts, padding="max_length", max_length=self.clip_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        joint_dim = self.transformer.config.joint_attention_dim
        if self.text_encoders[2] is not None:
            ids = self.tokenizers[2](
                prompts,
                padding="max_length",
                max_length=self.t5_max_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            t5 = self.text_encoders[2](ids)[0]
        else:
            t5 = torch.zeros(len(prompts), self.t5_max_length, joint_dim, device=self.device, dtype=self.dtype)
        clip = torch.cat(hidden, dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2).to(self.dtype), torch.cat(pooled, dim=-1).to(self.dtype)

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(x.to(self.vae_dtype)).latent_dist
        z = posterior.mean
        if self.latent == "sample":
            eps = torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(self.seed))
            z = z + posterior.std * eps.to(z.device, z.dtype)  # the same draw for every image: batch-independent
        z = z.float()
        if self.encode_shift:
            z = z - self.vae.config.shift_factor
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_latents(self, images: list[Image.Image]) -> torch.Tensor:
        """Step 2: [N] RGB images of one size, already at the output size (no resize) -> latents [N, C, H/f, W/f]."""
        sizes = {im.size for im in images}
        if len(sizes) != 1:
            raise ValueError(f"osediff_sd3 encodes a batch of one size; got {sorted(sizes)}.")
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
        return self._encode_image(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device) * 2 - 1)

    @torch.no_grad()
    def denoise_latents(self, z: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Steps 3-4: latents [N, C, h, w] and one prompt each -> z - v(z, t=1000, prompt), float32, same shape."""
        prompt_embeds, pooled = self.encode_prompt(list(prompts))
        self.scheduler.set_timesteps(1, device=self.device)
        t = self.scheduler.timesteps[0].expand(z.shape[0])
        v = self.transformer(
            hidden_states=z.to(self.dtype),
            timestep=t,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            return_dict=False,
        )[0]
        return z.float() - v.float()

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, shift: bool = True) -> list[Image.Image]:
        """Step 5: latents [N, C, h, w] -> [N] RGB images (f*w, f*h). `shift=False` leaves out the VAE's shift
        factor, as the official full-image script's `decode_full_latent` does."""
        z = z / self.vae.config.scaling_factor + (self.vae.config.shift_factor if shift else 0.0)
        out = self.vae.decode(z.to(self.vae_dtype), return_dict=False)[0].float()
        out = (out.clamp(-1, 1) * 0.5 + 0.5).mul(255).to(torch.uint8)  # truncation, as ToPILImage
        return [Image.fromarray(a) for a in out.permute(0, 2, 3, 1).cpu().numpy()]

    def upscale(self, images: list[Image.Image], prompts: list[str], size: int | None = None) -> list[Image.Image]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts.")
        if not images:
            return []
        sizes = {im.size for im in images}
        if len(sizes) != 1:
            raise ValueError(f"osediff_sd3 upscales a batch of one size; got {sorted(sizes)}.")
        w, h = sizes.pop()
        # with `size`, the crop goes bicubically straight to the output size, as the official one-step mode
        W, H = (size, size) if size else (w * self.scale, h * self.scale)
        if W % self.latent_multiple or H % self.latent_multiple:
            raise ValueError(
                f"osediff_sd3: the {W}x{H} output must be a multiple of {self.latent_multiple} px (input {w}x{h})."
            )
        z = self.encode_latents([im.convert("RGB").resize((W, H), Image.BICUBIC) for im in images])
        return self.decode_latents(self.denoise_latents(z, prompts))


def _dtype(cfg: Any, key: str, default: str) -> torch.dtype:
    value = str(cfg.get(key, default) or default)
    if value not in DTYPES:
        raise ValueError(f"eval.backbone.{key}='{value}': use one of {sorted(DTYPES)}.")
    return DTYPES[value]


@register_backbone("osediff_sd3", uses_prompt=True)
def build(cfg: Any, device: torch.device) -> OSEDiffSD3:
    return OSEDiffSD3(
        sd3=cfg.get("sd3", DEFAULT_SD3) or DEFAULT_SD3,
        lora_dir=cfg.get("lora_dir", None),
        device=device,
        dtype=_dtype(cfg, "dtype", "float32"),
        vae_dtype=_dtype(cfg, "vae_dtype", "float32"),
        text_dtype=_dtype(cfg, "text_dtype", str(cfg.get("dtype", "float32") or "float32")),
        transformer_lora=cfg.get("transformer_lora", TRANSFORMER_LORA_FILE),
        vae_lora=cfg.get("vae_lora", VAE_LORA_FILE),
        vae_tiling=bool(cfg.get("vae_tiling", True)),
        t5=bool(cfg.get("t5", True)),
        clip_max_length=int(cfg.get("clip_max_length", CLIP_MAX_LENGTH)),
        t5_max_length=int(cfg.get("t5_max_length", T5_MAX_LENGTH)),
        latent=str(cfg.get("latent", "sample")),
        seed=int(cfg.get("seed", 42)),
        encode_shift=bool(cfg.get("encode_shift", False)),
    )
