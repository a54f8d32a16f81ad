"""Structured configs: the schema every composed config is checked against at start-up.

Hydra merges `conf/config.yaml`, the group options and the experiment delta into
`CozTrainConfig`, so a misspelt key or a value of the wrong type stops the run before any
model loads. The `grpo` section mirrors TRL's `GRPOConfig` field by field under TRL's own
names, from a snapshot of TRL's dataclass (`coz_train.grpo_schema`: composing a config imports no TRL).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from coz_train.conf_dir import CONF_DIR_NAME, config_dir  # noqa: F401 - re-exported: the entry points import it here
from coz_train.eval_sections import BackboneSection, EvalConfig, EvalDuringTrainingConfig
from coz_train.grpo_schema import grpo_section


@dataclass
class DataConfig:
    """`data`: the training images and how the zoom pairs are made from them, as CoZ inference sees them
    (coz_train/data/)."""

    image_dir: str | None = None  # a folder of HR images (searched recursively)
    dataset: str | None = None  # a Hugging Face dataset name or local dataset folder
    dataset_split: str = "train"  # the split of data.dataset that is read
    dataset_image_column: str = "image"  # the column of data.dataset that holds the images
    shipped_images: list[str] = field(default_factory=list)  # skimage.data names when no folder/dataset
    max_images: int | None = None  # use at most this many source images (sorted order)
    process_size: int = 512  # short side resize + centre crop, as CoZ inference
    scale: int = 4  # each zoom step crops 1/scale of each side
    depth: int = 4  # zoom depths 1..depth: 4x, 16x, 64x, 256x
    crop: str = "center"  # center (as inference) | random
    chains_per_image: int = 1  # with crop=random: independent random chains per image
    # how state k is made from the crop of state k-1: a resampler (bicubic | lanczos | bilinear | nearest,
    # fast, state k = the zoomed image) or a registered SR backbone (realesrgan_x4plus | osediff_sd3 | ...,
    # the official recursive_multiscale chain; see coz_train/data/chains.py)
    upscaler: str = "bicubic"
    small_images: str = "upscale"  # images with short side < process_size: upscale | skip
    max_image_pixels: int = 178_956_970  # larger images are refused (decompression-bomb guard)
    cache_dir: str | None = None  # Arrow cache of built samples; default ~/.cache/coz_train/zoom_pairs
    single_image_prompt: bool = False  # the paper's single-image variant (`recursive` mode)
    # --- chains made by an SR backbone (data.upscaler=<backbone>); none of these matter for resamplers
    # keys of conf/eval/backbone/<upscaler>.yaml (the eval.backbone schema); null = the value in that file
    backbone: DataBackboneSection = field(default_factory=lambda: DataBackboneSection())
    backbone_prompts: str | None = None  # prompts for a prompt-conditioned backbone: null | vlm (base policy) | text
    backbone_prompt_text: str | None = None  # the fixed prompt of backbone_prompts=text
    backbone_prompt_tokens: int = 32  # backbone_prompts=vlm: max new tokens (the official release's 32), greedy
    backbone_batch_size: int = 4  # images per backbone / VLM call
    chunk_images: int = 16  # source images per cached part: the unit of resume and of sharding
    device: str = "auto"  # where the backbone and prompt VLM run: auto (cuda if available) | cpu | cuda:N
    shard: int = 0  # python -m coz_train.data: build the parts of shard `shard` of `num_shards` only
    num_shards: int = 1  # python -m coz_train.data: how many shards the parts are split into (see shard)


@dataclass
class LoraSection:
    """`policy.lora`: the LoRA adapter GRPO trains (PEFT `LoraConfig` fields), as the released CoZ adapter."""

    r: int = 8  # LoRA rank (the released adapter: 8)
    lora_alpha: int = 32  # LoRA scaling alpha (the released adapter: 32)
    lora_dropout: float = 0.05  # dropout on the LoRA input (the released adapter: 0.05)
    bias: str = "none"  # none | all | lora_only: which biases train (PEFT's bias option; the released adapter: none)
    # Language-model linears only (vision tower stays frozen); a regex PEFT matches on full names, written so
    # that both module layouts (transformers 5 here, 4.49 in the official inference) resolve it alike.
    target_modules: str = (
        r"^model\.(language_model\.)?layers\.\d+\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    )


@dataclass
class PolicyConfig:
    """`policy`: the prompt VLM that GRPO trains (Qwen2.5-VL-3B in the paper), its image budget, LoRA and frozen
    parts."""

    name_or_path: str = MISSING  # hub id, local folder, or tiny:<arch>[@seed] for offline runs
    revision: str | None = None  # hub revision (branch, tag or commit) of name_or_path; None: the default branch
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | eager
    min_pixels: int | None = None  # processor image budget; None keeps the model's default
    max_pixels: int | None = None  # processor image budget, upper bound; None keeps the model's default
    freeze_vision_tower: bool = True  # false: the vision tower trains fully, beside the LoRA adapter
    freeze_projector: bool = True  # false: the vision-language projector trains fully, beside the LoRA adapter
    trust_remote_code: bool = False  # run the checkpoint's own model code (Qwen2.5-VL does not need it)
    lora: LoraSection = field(default_factory=LoraSection)
    # an existing LoRA adapter folder to start GRPO from (e.g. the released CoZ checkpoint-10000), either layout;
    # its own config (r, alpha, modules) replaces policy.lora, and it is also the KL reference
    init_adapter: str | None = None


@dataclass
class CriticConfig:
    """`critic`: the frozen critic VLM of the critic reward (InternVL2.5-8B in the paper), where it runs and how
    it scores."""

    name_or_path: str = MISSING  # hub id, local folder, tiny:<arch>[@seed] or random:<hub id>
    backend: str = "hf"  # hf: transformers image-text-to-text | internvl_remote: InternVL chat remote code
    revision: str | None = None  # hub revision (branch, tag or commit) of name_or_path; None: the default branch
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | eager; None: transformers' default
    device: str = "auto"  # auto (the training device) | cpu | cuda:N
    scoring: str = "generate"  # generate (parse the number, as the paper) | logits (expected score)
    score_max: int = 100  # the instruction asks for an integer 0..score_max; reward = score / score_max
    batch_size: int = 8  # candidates scored per call (halved on out-of-memory)
    max_new_tokens: int = 8  # scoring=generate: tokens the critic may write for its answer
    min_pixels: int | None = None  # processor image budget (Qwen-VL critics); None keeps the model's default
    max_pixels: int | None = None  # processor image budget, upper bound; None keeps the model's default
    trust_remote_code: bool = False  # run the checkpoint's own model code (backend=internvl_remote needs it)
    image_backend: str | None = None  # pil | torchvision: the image processor's backend (None: transformers' default)
    max_tiles: int = 6  # InternVL critics: 448-px tiles per image (+ a thumbnail), as InternVL's dynamic_preprocess
    instruction: str = MISSING  # the question asked with the two images; {prompt} and {score_max} are filled in
    # backend=server: an OpenAI-compatible chat-completions endpoint (python -m coz_train.critic_server, vLLM, SGLang)
    url: str | None = None  # e.g. http://127.0.0.1:8000
    served_model: str | None = None  # the "model" field of requests; default: name_or_path
    timeout_s: float = 120.0  # backend=server: seconds per request
    retries: int = 3  # attempts after the first, with exponential backoff
    concurrency: int = 8  # requests in flight from one rank
    top_logprobs: int | None = None  # logits mode over a server: K alternatives asked for (default max(20, score_max + 1))
    token_env: str = "COZ_CRITIC_TOKEN"  # the environment variable holding the shared token, if any


@dataclass
class ServerConfig:
    """The critic server (python -m coz_train.critic_server)."""

    host: str = "127.0.0.1"  # loopback by default; any other address requires a token
    port: int = 8000  # the port the critic server listens on
    token_env: str = "COZ_CRITIC_TOKEN"  # shared secret read from this environment variable
    max_request_mb: float = 32.0  # larger request bodies are refused (413)
    max_images: int = 8  # per request
    max_image_pixels: int = 4096 * 4096  # decoded pixels per image (checked from the header, before decoding)
    max_request_pixels: int = 4 * 4096 * 4096  # decoded pixels of all images of one request
    max_prompt_tokens: int = 2048  # text tokens per request (a long text holds the batcher for every client)
    max_batch: int = 16  # requests scored together
    batch_wait_ms: int = 20  # how long the server waits to fill a batch
    request_deadline_s: float = 120.0  # the whole request must arrive within this (a trickling client is dropped)


@dataclass
class RewardFailureConfig:
    """What a failing reward (critic out of memory, server down, non-finite score) does to a step."""

    retries: int = 2  # attempts after the first, per reward call
    backoff_s: float = 2.0  # the wait before the first retry in seconds, doubled for each further one
    deadline_s: float = 300.0  # one total deadline per reward call, retries (the critic client's too) inside it
    on_failure: str = "stop"  # stop: the run stops with the error | skip: the step gets no reward (no update), logged


@dataclass
class TripwireConfig:
    """`tripwires`: checks at every logging step that flag or stop a collapsing run (coz_train/tripwires.py,
    docs/tripwires.md). A wire trips once its metric is past its threshold for `patience` consecutive logging
    steps; null disarms a wire."""

    enabled: bool = True  # false: no wire is checked and no tripwire/<wire> metric is logged
    action: str = "warn"  # warn: a WARNING, a train.log record, tripwire/<wire>=1 | stop: also save a checkpoint and end the run
    patience: int = 3  # consecutive logging steps a metric must stay past its threshold before its wire trips
    min_mean_length: float | None = 4.0  # mean_length wire: TRL's completions/mean_length (tokens) below this
    length_drop: float | None = 3.0  # length_drop wire: the mean length below its early level divided by this
    early_checks: int = 5  # the mean of the run's first N logged mean lengths is its early level (length_drop)
    max_empty_or_non_latin: float | None = 0.5  # empty_or_non_latin wire: above this share of a step's completions with no letter or mostly non-Latin letters
    min_latin_share: float = 0.5  # a completion whose letters are less than this share Latin counts as non-Latin
    max_kl: float | None = 0.5  # kl wire: TRL's mean per-token KL to the reference above this (logged when grpo.beta != 0)
    min_entropy: float | None = 0.02  # entropy wire: TRL's mean per-token entropy of the policy (nats) below this
    max_zero_std_frac: float | None = 0.9  # zero_spread wire: TRL's frac_reward_zero_std (groups whose rewards all agree) above this


@dataclass
class PerfConfig:
    """Speed switches (docs/performance.md). Each keeps the training result of the plain path (all false)."""

    load_once: bool = False  # each training row read and its images decoded once per generation batch (TRL: 8 x G)
    image_cache: bool = False  # CPU preprocessing (resize, patchify) once per distinct image, for policy and critic
    text_cache: bool = False  # the policy processor tokenizes each distinct prompt of a call once (TRL: G copies)
    dedup_prompts: bool = False  # the policy processor's call runs each distinct prompt (text + images) once
    vision_cache: bool = False  # frozen vision tower: each distinct image is encoded once, reused by every pass
    vision_cache_images: int = 64  # images kept across steps (least recently used are dropped)
    pixel_handles: bool = False  # with both caches: a handle per pixel row instead of the expanded pixel rows
    group_prefix: bool = False  # log-prob and training passes: each group's prompt runs once, its KV cache shared
    group_batches: bool = False  # micro-batches hold whole groups (shuffled by group), so group_prefix pays in training
    critic_prefix: bool = False  # critic: the images + instruction prefix runs once per group (hf backend, Qwen-VL)
    merge_adapters_for_generation: bool = False  # rollouts with LoRA merged into the weights (restored bit for bit)
    rollout_prefix: bool = False  # rollouts prefill each group's prompt once (KV cache repeated to the G rows)
    compiled_decode: bool = False  # rollouts: static KV cache, compiled decode steps (CUDA graphs on a GPU)


@dataclass
class BenchConfig:
    """`python -m coz_train.bench`: the trainer's GRPO steps plain vs fast, and phase checks (docs/performance.md)."""

    size: str = "tiny"  # tiny (CPU, seconds) | mid (real widths, 2 layers) | real (3B policy + 7B critic, GPU)
    step: bool = True  # time whole trainer steps of the run config (conf/experiment/bench_<size>.yaml)
    # phase checks with their own batches; null: all of them, none at bench.size=real on a CPU
    phases: list[str] | None = None
    device: str = "auto"  # auto: the GPU if there is one | cpu | cuda:N
    dtype: str = "auto"  # phase checks: auto (bfloat16 on a GPU, float32 on the CPU) | bfloat16 | float32
    groups: int | None = None  # phase checks: prompts per step (default: real 8, tiny 2)
    generations: int | None = None  # phase checks: completions per prompt (default: real 8, tiny 4)
    new_tokens: int | None = None  # phase checks: completion length (default: real 64, tiny 8)
    image_size: int | None = None  # phase checks: square crop side in px (default: real 504, tiny 112)
    warmup: int | None = None  # untimed runs (steps) per measurement (default: real 1, tiny 1)
    reps: int | None = None  # timed runs (steps), median reported (default: real 3, tiny 2)
    check: bool = True  # equality checks of every optimised phase against the plain one (float32); false: none
    critic_scoring: str = "logits"  # critic phase: logits (next-token logits) | generate (greedy critic.max_new_tokens)
    static_cache: bool = False  # also time the fast rollout with a static KV cache (report only, not compiled: as TRL)
    compiled_decode: bool = False  # also the step (and rollout phase) with perf.compiled_decode; the first compiles
    ablate: list[str] = field(default_factory=list)  # perf switches turned off in the step's fast paths (what each buys)
    out: str = "bench.json"  # relative to the run folder


@dataclass
class LoggingConfig:
    """`logging`: the wandb run (offline automatically without credentials) and the rollout samples logged."""

    wandb: bool = True  # false: no wandb run (as mode=disabled)
    project: str = "coz_train"  # the wandb project
    run_name: str | None = None  # default: <experiment>-<time>
    mode: str = "auto"  # auto (offline without credentials) | online | offline | disabled
    sample_every: int = 10  # log a table of prompts, images and rewards every N steps
    sample_count: int = 4  # rollouts in each sample table


def _data_backbone_section() -> type:
    """`data.backbone`: every key of `BackboneSection` but `name` (that is data.upscaler), each optional.

    None means "the value of conf/eval/backbone/<data.upscaler>.yaml" (else the schema default), so
    `data.backbone.lora_dir=/models/osediff` sets one key and the rest follow the eval backbone's file.
    """
    specs = []
    for f in dataclasses.fields(BackboneSection):
        if f.name == "name":
            continue
        kind = f.type if not isinstance(f.type, str) else {"int": int, "str": str, "bool": bool, "float": float}.get(
            f.type.replace(" | None", ""), Any)
        specs.append((f.name, Optional[kind], field(default=None)))  # noqa: UP045 - OmegaConf reads typing.Optional
    return dataclasses.make_dataclass("DataBackboneSection", specs)


DataBackboneSection = _data_backbone_section()


GRPOSection = grpo_section()  # TRL's GRPOConfig fields, from the snapshot coz_train/grpo_fields.json


@dataclass
class CozTrainConfig:
    """The training config (conf/config.yaml): the top-level keys and one section per component."""

    seed: int = 0  # applied to python, numpy, torch, data order, random crops and sampling
    cpu_threads: int | None = None  # torch intra-op threads; the smoke run uses 1 (small steps stall with more)
    experiment_name: str = "default"  # the run folder is outputs/<experiment_name>/<time>; the wandb run's name
    output_dir: str = MISSING  # the run folder (Hydra's run dir by default)
    resume: str = "none"  # none | auto | <checkpoint path>
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    # name -> {weight: float, ...params}; names must be registered in coz_train.rewards
    rewards: dict[str, Any] = field(default_factory=dict)
    reward_failure: RewardFailureConfig = field(default_factory=RewardFailureConfig)
    tripwires: TripwireConfig = field(default_factory=TripwireConfig)  # checks against a collapsing run (docs/tripwires.md)
    server: ServerConfig = field(default_factory=ServerConfig)
    # TRL's GRPOConfig fields under TRL's own names (conf/grpo/default.yaml: the paper's values and their sources)
    grpo: GRPOSection = field(default_factory=GRPOSection)  # type: ignore[valid-type]
    perf: PerfConfig = field(default_factory=PerfConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_during_training: EvalDuringTrainingConfig = field(default_factory=EvalDuringTrainingConfig)


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def run_stamp() -> str:
    """The run folder's time stamp, the same on every rank of one launch.

    Each rank composes its own config, and `${now:}` could differ between them by a second. Ranks
    started by one launcher (torchrun, accelerate launch) share it as their parent, so its start
    time names the run. COZ_RUN_STAMP overrides; multi-node jobs set hydra.run.dir explicitly.
    """
    stamp = os.environ.get("COZ_RUN_STAMP")
    if stamp:
        return stamp
    started = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        try:
            ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
            boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
            started = boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(started))
    os.environ["COZ_RUN_STAMP"] = stamp  # stable for the rest of this process
    return stamp


def rank_zero_only(value: Any, other: Any = None) -> Any:
    """`value` on rank 0, `other` elsewhere: only rank 0 writes the run's log file and .hydra/ folder."""
    return value if _rank() == 0 else other


def register_configs() -> None:
    ConfigStore.instance().store(name="coz_train_schema", node=CozTrainConfig)
    resolvers = {
        "coz_run_stamp": run_stamp,
        "coz_rank0": rank_zero_only,
        "coz_rank0_log": lambda path: rank_zero_only(path, os.devnull),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
