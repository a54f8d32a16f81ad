"""The evaluation's sections of the schema: `eval` (`EvalConfig`, with its backbone, hallucination judge and
full-image chain) and `eval_during_training`, which takes every `eval` key. `coz_train.config.CozTrainConfig`
holds them beside the training sections; `data.backbone` is built from `BackboneSection` there.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackboneSection:
    """`eval.backbone`: the SR backbone of the chain, picked by name (conf/eval/backbone/<name>.yaml), and its
    settings."""

    name: str = "realesrgan_x4plus"  # realesrgan_x4plus | osediff_sd3 | bicubic | nearest
    tile: int = 0  # realesrgan: tile size in LR pixels (0 = whole image)
    tile_pad: int = 16  # realesrgan: overlap of neighbouring tiles in LR pixels
    sd3: str | None = None  # osediff_sd3: SD3 hub id or local diffusers folder
    lora_dir: str | None = None  # osediff_sd3: folder with the OSEDiff LoRA files (or an official ckpt/)
    transformer_lora: str = "model_20001.pkl"  # osediff_sd3: the transformer LoRA file in lora_dir (official name)
    vae_lora: str = "vae_encoder_20001.pt"  # osediff_sd3: the VAE encoder LoRA file in lora_dir (official name)
    dtype: str = "float32"  # osediff_sd3: transformer (and text encoders unless text_dtype is set)
    text_dtype: str | None = None  # osediff_sd3: the text encoders' dtype; None: dtype
    vae_dtype: str = "float32"  # osediff_sd3: the VAE's dtype
    vae_tiling: bool = True  # osediff_sd3: diffusers' tiled VAE (engages above 1024 px only)
    t5: bool = True  # false: zeros instead of T5, as diffusers allows
    clip_max_length: int = 77  # osediff_sd3: prompt tokens of the CLIP text encoders
    t5_max_length: int = 512  # official CoZ value (diffusers' SD3 pipeline uses 256)
    latent: str = "sample"  # sample (official) | mode
    seed: int = 42  # the VAE latent sample's noise
    encode_shift: bool = False  # official test code does not subtract the VAE shift factor


# The hallucination judge's question (docs/judge.md): the project's own, as OracleZoom's is not public.
JUDGE_QUESTION = (
    "The first image is a wide view. The second image shows a region of the first image, enlarged by a "
    "super-resolution model. Does the second image contain hallucinated content: objects, structures, textures or "
    "text that the corresponding region of the first image does not support, or that contradict it? Blur, noise and "
    "missing detail are not hallucinations. Answer 1 if the second image contains hallucinated content and 0 if it "
    "does not, and nothing else."
)


@dataclass
class JudgeConfig:
    """`eval.judge`: a VLM judging each zoomed output against the wider view it was zoomed from (metric
    `hallucination`, lower is better; coz_train/eval/judge/, docs/judge.md). The keys are the critic's where they
    mean the same; presets in conf/eval/judge/."""

    name_or_path: str | None = None  # the judge model (hub id, local folder, tiny:<arch>[@seed]); null: no judge
    backend: str = "hf"  # the critic's backends: hf (in this process) | internvl_remote | server (url below)
    revision: str | None = None  # hub revision (branch, tag or commit) of name_or_path; None: the default branch
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32 (hf, internvl_remote)
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | eager; None: transformers' default
    device: str = "auto"  # auto (this rank's GPU, else cpu) | cpu | cuda:N (hf, internvl_remote)
    scoring: str = "generate"  # generate: the first number of the answer | logits: expected answer (P("1") at score_max 1)
    score_max: int = 1  # the instruction asks for an integer 0..score_max; hallucination = answer / score_max
    instruction: str = JUDGE_QUESTION  # the fixed question asked with [wider view, zoomed output]; {score_max} is filled in
    batch_size: int = 8  # (wider view, zoomed output) pairs per judge call (halved on out-of-memory)
    max_new_tokens: int = 8  # scoring=generate: tokens the judge may write for its answer
    min_pixels: int | None = None  # processor image budget (Qwen-VL judges); None keeps the model's default
    max_pixels: int | None = None  # processor image budget, upper bound; None keeps the model's default
    trust_remote_code: bool = False  # run the checkpoint's own model code (backend=internvl_remote needs it)
    image_backend: str | None = None  # pil | torchvision: the image processor's backend (None: transformers' default)
    max_tiles: int = 6  # InternVL judges: 448-px tiles per image (+ a thumbnail), as InternVL's dynamic_preprocess
    url: str | None = None  # backend=server: the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001 (vLLM)
    served_model: str | None = None  # backend=server: the "model" field of requests; default: name_or_path
    timeout_s: float = 300.0  # backend=server: seconds per request
    retries: int = 3  # backend=server: attempts after the first, with exponential backoff
    concurrency: int = 8  # backend=server: requests in flight from one rank
    top_logprobs: int | None = None  # logits mode over a server: K alternatives asked for (default max(20, score_max + 1))
    token_env: str = "COZ_JUDGE_TOKEN"  # backend=server: the environment variable holding the server's token, if any
    cache_dir: str | None = None  # where answers are cached (keyed by settings and images); null: <run>/judge_cache


@dataclass
class FullImageConfig:
    """`eval.full_image`: the `full` method, the official full-image CoZ (inference_coz_full.py; docs/full-image.md)."""

    steps: int = 1  # zoom steps of the whole image (official rec_num 1); state k is P * scale^k px square
    tile_size: int = 128  # tile side in px of the previous state: x4 = 512 px = 64 SD3 latents (official latent_tiled_size)
    tile_overlap: int = 32  # px shared by neighbouring tiles, same units: 16 SD3 latents (official latent_tiled_overlap)
    max_new_tokens: int = 16  # length limit of each tile's VLM prompt (the official full-image script's 16)
    max_side: int = 8192  # refuse steps whose last state is wider (px): 8192 allows 2 steps at P=512 (441 tiles)
    vae_decode_shift: bool = False  # latent backbones: add the VAE shift factor back when decoding (official: not)
    score_whole: bool = True  # also score each whole state (rows full-<source>/whole of results.csv, not results.md)


@dataclass
class EvalConfig:
    """`eval`: the Chain-of-Zoom evaluation (python -m coz_train.eval): images, methods and prompt sources, the SR
    backbone, metrics, shards."""

    image_dir: str | None = None  # eval images; default: the shipped images below
    shipped_images: list[str] = field(default_factory=list)  # skimage.data names evaluated when image_dir is null
    max_images: int | None = None  # the first N of the sorted list (unusable ones among them are skipped)
    process_size: int = 512  # short side resize + centre crop of each image (the paper: 512x512)
    scale: int = 4  # each zoom step takes the centre 1/scale of each side
    steps: int = 4  # 4x, 16x, 64x, 256x
    # nearest | bicubic | onestep | recursive | recursive_multiscale
    methods: list[str] = field(default_factory=lambda: ["nearest", "bicubic", "onestep", "recursive_multiscale"])
    # null | user | vlm | vlm+adapter | vlm+user | vlm+adapter+user, for recursive and recursive_multiscale;
    # a bare `null` on the command line arrives as None and means "null"
    prompt_sources: list[str | None] = field(default_factory=lambda: ["null", "vlm"])
    onestep_prompt_sources: list[str | None] = field(default_factory=lambda: ["null"])  # the same names, for onestep
    user_prompt: str | None = None  # the `user` source; appended to the VLM prompt by the +user sources
    adapter: str | None = None  # a training run's adapter folder, for the vlm+adapter source
    max_new_tokens: int = 32  # prompt length of the VLM sources (the release with the GRPO adapter: 32)
    do_sample: bool = False  # false: greedy prompts
    colorfix: str = "none"  # none | adain | wavelet
    small_images: str = "upscale"  # images with short side < process_size: upscale | skip
    max_image_pixels: int = 178_956_970  # larger images are refused (decompression-bomb guard)
    # niqe | piqe | brisque | musiq | maniqa | clipiqa (no reference) | psnr | ssim (where the original has the pixels)
    metrics: list[str] = field(default_factory=lambda: ["niqe", "piqe", "brisque", "musiq", "maniqa", "clipiqa", "psnr", "ssim"])
    consistency_metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim"])  # full-reference metrics (psnr, ssim, lpips, dists) of each state downsampled against the crop it was made from (results consistency_<m>) and of the deepest state against the last ground truth (projected_<m>); [] = off (docs/consistency.md)
    zoom_centre: list[float] | None = None  # [x, y]: every method zooms into this point of each image, as fractions 0..1 of the start state (0, 0 = top left); null = the image centre (docs/consistency.md)
    zoom_centres: str | None = None  # a CSV (header image,x,y) or JSON ({"<image>": [x, y]}) file of per-image zoom centres, overriding zoom_centre for the images it names (docs/consistency.md)
    device: str = "auto"  # auto (this rank's GPU, else cpu) | cpu | cuda:N
    batch_size: int = 4  # images per backbone / VLM call
    figures: bool = True  # write each image's chains.png (all methods side by side, prompts under each step)
    shard: int = 0  # evaluate images[shard::num_shards] only (a SLURM array task); ranks split it again
    num_shards: int = 1  # how many shards the image list is split into (see shard)
    backbone: BackboneSection = field(default_factory=BackboneSection)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the VLM hallucination judge (off while name_or_path is null)
    full_image: FullImageConfig = field(default_factory=FullImageConfig)  # the `full` method's steps and tiles


@dataclass
class EvalDuringTrainingConfig(EvalConfig):
    """`eval_during_training`: the `eval` keys, run on held-out images with the adapter being trained
    (coz_train/eval/during_training.py). `adapter` stays null: the live policy is the `vlm+adapter` source."""

    every: int = 0  # evaluate every N optimizer steps; 0 = off
