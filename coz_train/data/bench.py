"""What building training chains costs per backbone, and a figure of one image's pairs: bicubic against an SR backbone.

    python -m coz_train.data.bench                                    # seconds per image per depth, on this machine
    python -m coz_train.data.bench --backbones realesrgan_x4plus --device cuda
    python -m coz_train.data.bench --figure docs/figures/training_pairs.png

Timing: one image's chain at `--size` (512 = the paper's process_size), depth by depth, each depth one call of
`coz_train.sr.chain.recursive_chains` (crop, bicubic zoom, the backbone on the crop), the way
`coz_train.data.chains` builds training chains; the model load is reported apart, the first call is not a warm-up
(it is what a build pays). `osediff_sd3` here is the tiny random SD3 of `coz_train.tiny.sd3` (offline): its cost
says nothing about the real SD3-medium, which needs a GPU. Prompts are empty (data.backbone_prompts=null).
The figure: the training pairs [state k-1, zoomed] at depths 1..4 of one shipped image, as `build_zoom_dataset`
makes them with data.upscaler=bicubic and with the chosen backbone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

BACKBONES = ("bicubic", "realesrgan_x4plus", "osediff_sd3")


def backbone_cfg(name: str, workdir: Path) -> dict[str, Any]:
    if name != "osediff_sd3":
        return {}
    from coz_train.tiny.sd3 import ensure_tiny_sd3, write_official_lora_files

    sd3 = ensure_tiny_sd3()
    write_official_lora_files(sd3, workdir / "lora", seed=1)
    return {"sd3": sd3, "lora_dir": str(workdir / "lora"), "dtype": "float32", "text_dtype": "float32"}


def time_backbone(name: str, start: Any, depth: int, device: torch.device, workdir: Path) -> dict[str, Any]:
    from coz_train.sr.backbones import load_backbone
    from coz_train.sr.chain import recursive_chains

    t0 = time.perf_counter()
    backbone = load_backbone(name, backbone_cfg(name, workdir), device)
    load_s = time.perf_counter() - t0
    state, per_depth = start, []
    for k in range(1, depth + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        chain = recursive_chains([state], backbone, lambda pairs: [""] * len(pairs), "bench", 4, 1)[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_depth.append(round(time.perf_counter() - t0, 3))
        state = chain.states[-1]
        log.info("%s depth %d: %.2f s", name, k, per_depth[-1])
    return {"backbone": name + (" (tiny random SD3)" if name == "osediff_sd3" else ""), "load_s": round(load_s, 2),
            "s_per_image_per_depth": per_depth}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other processes on the cores slow every number down
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads, load average {load} at the end")


def bench(names: list[str], size: int, depth: int, image: str, device: torch.device, out: Path | None) -> dict:
    from coz_train.data.images import shipped_images
    from coz_train.data.zoom import start_state

    start = start_state(shipped_images([image])[0][1], size)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [time_backbone(name, start, depth, device, Path(tmp)) for name in names]
    result = {"machine": machine(device), "device": str(device), "process_size": size, "image": image, "rows": rows}
    print(markdown(result))  # noqa: T201 - the command's output
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result


def markdown(result: dict) -> str:
    depth = len(result["rows"][0]["s_per_image_per_depth"])
    head = "| backbone | load (s) | " + " | ".join(f"depth {k} (s)" for k in range(1, depth + 1)) + " |"
    lines = [f"{result['machine']} ({result['device']}), process_size {result['process_size']}, {result['image']}",
             "", head, "|" + " --- |" * (depth + 2)]
    for row in result["rows"]:
        lines.append(f"| {row['backbone']} | {row['load_s']} | " + " | ".join(f"{s:.2f}" for s in row["s_per_image_per_depth"])
                     + " |")
    return "\n".join(lines)


def pairs_figure(backbone: str, image: str, size: int, depth: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hydra import compose, initialize_config_dir

    from coz_train.config import config_dir, register_configs
    from coz_train.data import build_zoom_dataset

    register_configs()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for upscaler in ("bicubic", backbone):
            cfg = compose("config", [f"data.upscaler={upscaler}", f"data.shipped_images=[{image}]", "data.max_images=1",
                                     f"data.process_size={size}", f"data.depth={depth}", f"data.cache_dir={tmp}",
                                     f"output_dir={tmp}"])
            rows[upscaler] = list(build_zoom_dataset(cfg.data, cfg.seed))
    fig, axes = plt.subplots(2, 2 * depth, figsize=(2.0 * 2 * depth, 4.6))
    for r, (upscaler, samples) in enumerate(rows.items()):
        for k, sample in enumerate(samples):
            for i, (im, title) in enumerate(zip(sample["images"], (f"state {k}", f"zoomed {4 ** (k + 1)}x"), strict=True)):
                ax = axes[r, 2 * k + i]
                ax.imshow(im)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"depth {k + 1}: {title}", fontsize=8)
        axes[r, 0].set_ylabel(upscaler, fontsize=10)
    fig.suptitle(f"Training pairs [state k-1, zoomed] of skimage '{image}' at {size} px: bicubic chain vs {backbone} chain",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log.info("Figure: %s", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--image", default="astronaut", help="a skimage.data image")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    parser.add_argument("--figure", type=Path, default=None, help="draw the pairs figure instead of timing")
    parser.add_argument("--figure-backbone", default="realesrgan_x4plus")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.figure:
        pairs_figure(args.figure_backbone, args.image, args.size, args.depth, args.figure)
        return
    from coz_train.devices import rank_device

    bench(args.backbones, args.size, args.depth, args.image, rank_device(args.device), args.out)


if __name__ == "__main__":
    main()
