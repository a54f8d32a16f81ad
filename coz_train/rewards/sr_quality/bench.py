"""What the SR-quality reward costs per reward call (one GRPO generation batch), and the FLOPs behind a GPU estimate.

    python -m coz_train.rewards.sr_quality.bench                        # tiny SD3 + NIQE on this CPU, 2 x 4 at 128 px
    python -m coz_train.rewards.sr_quality.bench --size 512 --groups 1 --generations 8 --reference-aware
    python -m coz_train.rewards.sr_quality.bench --flops 512            # FLOPs of OSEDiff-SD3 per candidate

The timing runs the reward itself (`SRQualityReward`) on the tiny random SD3 of `coz_train.tiny.sd3` with random
LoRA files in the official layout, through the real OSEDiff-SD3 code path, and the real metric: `groups` start
states (shipped photographs) x `generations` distinct prompts, one warm-up call, then the median of `reps` calls,
split into the backbone and the metric as the reward logs them (`sr_quality/backbone_s`, `sr_quality/metric_s`).

`--flops` counts, with torch's FlopCounterMode on the meta device (no weights, no memory), the floating-point
operations of one OSEDiff-SD3 candidate at that output size: CLIP-L, CLIP-G and T5-XXL (512 tokens) on the prompt,
the VAE encoder, one MMDiT pass, the VAE decoder, built from SD3-medium's published component configurations. A GPU
time is an estimate from these counts and the GPU's peak rates (docs/sr_quality.md, "Cost").
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = ["fur, whiskers, eye", "brick wall, stone", "sky, clouds", "a red car, metal", "leaves, tree bark",
           "water, sand", "fabric, texture", "hair, skin"]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def reward_inputs(groups: int, generations: int, size: int, scale: int = 4) -> dict:
    """`groups` start states (size px) x `generations` prompts, as TRL hands a reward one generation batch."""
    import skimage.data
    from PIL import Image

    from coz_train.data.zoom import crop_box, start_state

    if generations > len(PROMPTS):
        raise ValueError(f"--generations {generations}: at most {len(PROMPTS)} distinct prompts here.")
    starts = [start_state(Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()).convert("RGB"), size)
              for i in range(groups)]
    box = list(crop_box(size, scale, "center", None))
    return {"completions": [p for _ in starts for p in PROMPTS[:generations]],
            "images": [[s, None] for s in starts for _ in range(generations)],
            "crop_box": [box] * (groups * generations)}


def time_reward(groups: int, generations: int, size: int, reps: int, metric: str, reference_aware: bool) -> dict:
    from coz_train.rewards.sr_quality.reward import SRQualityReward, frozen_backbone, load_metric
    from coz_train.rewards.sr_quality.settings import parse_settings
    from coz_train.sr.backbones import load_backbone
    from coz_train.tiny.sd3 import ensure_tiny_sd3, write_official_lora_files

    device = torch.device("cpu")
    sd3 = ensure_tiny_sd3()
    with tempfile.TemporaryDirectory() as lora:
        write_official_lora_files(sd3, lora, seed=1)
        backbone = frozen_backbone(load_backbone("osediff_sd3", {"sd3": sd3, "lora_dir": lora, "dtype": "float32"}, device))
    reward = SRQualityReward(backbone, load_metric(metric, device),
                             parse_settings({"metric": metric, "reference_aware": reference_aware}))
    inputs = reward_inputs(groups, generations, size)
    runs = []
    for rep in range(reps + 1):
        logged: dict[str, float] = {}
        started = time.perf_counter()
        reward(**inputs, log_metric=lambda k, v, logged=logged: logged.__setitem__(k, v))
        if rep:  # the first call warms up
            runs.append({"total_s": time.perf_counter() - started, "backbone_s": logged["sr_quality/backbone_s"],
                         "metric_s": logged["sr_quality/metric_s"]})
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    candidates = groups * generations
    return {"backbone": "osediff_sd3 (tiny random SD3)", "metric": metric, "reference_aware": reference_aware,
            "size": size, "candidates": candidates, "threads": torch.get_num_threads(), "reps": reps,
            "per_call_s": median, "per_candidate_s": {k: v / candidates for k, v in median.items()}}


def osediff_sd3_flops(size: int) -> dict[str, float]:
    """TFLOPs of one OSEDiff-SD3 candidate at a size x size output, per component (meta device, no weights)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    # SD3-medium's component configurations (stabilityai/stable-diffusion-3-medium-diffusers, */config.json)
    with torch.device("meta"):
        mmdit = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                      attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                      caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                      pos_embed_max_size=192)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
                            use_post_quant_conv=False)
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                            num_hidden_layers=12, num_attention_heads=12,
                                                            projection_dim=768))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                            num_hidden_layers=32, num_attention_heads=20,
                                                            projection_dim=1280, hidden_act="gelu"))
        t5 = T5EncoderModel(T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                     feed_forward_proj="gated-gelu"))
    meta = {"device": "meta"}
    image, latent = torch.zeros(1, 3, size, size, **meta), torch.zeros(1, 16, size // 8, size // 8, **meta)
    clip_ids, t5_ids = (torch.zeros(1, n, dtype=torch.long, **meta) for n in (77, 512))
    passes = {
        "clip_l": lambda: clip_l(clip_ids, output_hidden_states=True),
        "clip_g": lambda: clip_g(clip_ids, output_hidden_states=True),
        "t5_xxl": lambda: t5(t5_ids),
        "vae_encoder": lambda: vae.encode(image),
        "mmdit": lambda: mmdit(hidden_states=latent, timestep=torch.zeros(1, **meta),
                               pooled_projections=torch.zeros(1, 2048, **meta),
                               encoder_hidden_states=torch.zeros(1, 77 + 512, 4096, **meta), return_dict=False),
        "vae_decoder": lambda: vae.decode(latent),
    }
    flops = {}
    for name, run in passes.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            run()
        flops[name] = counter.get_total_flops() / 1e12
    return flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coz_train.rewards.sr_quality.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=2, help="prompts (start states) per reward call")
    parser.add_argument("--generations", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--size", type=int, default=128, help="state size in px (the smoke run's 128; the paper's 512)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--metric", default="niqe")
    parser.add_argument("--reference-aware", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--flops", type=int, metavar="SIZE", help="count OSEDiff-SD3's FLOPs at this size instead")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.flops:
        flops = osediff_sd3_flops(args.flops)
        result = {"size": args.flops, "tflops": {k: round(v, 3) for k, v in flops.items()},
                  "total_tflops": round(sum(flops.values()), 3)}
    else:
        result = time_reward(args.groups, args.generations, args.size, args.reps, args.metric, args.reference_aware)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
