"""`python -m coz_train.data +experiment=<name> [key=value ...]`: build the training zoom pairs ahead of training.

Takes the same config as training (`python -m coz_train`), so the samples land under the key training looks
up; training then loads them instead of building. Worth it for chains made by an SR backbone:

    python -m coz_train.data +experiment=grpo_qwen data.image_dir=/data/LSDIR data.upscaler=realesrgan_x4plus
    python -m coz_train.data +experiment=grpo_qwen data.image_dir=/data/LSDIR data.upscaler=osediff_sd3 \
        data.backbone.lora_dir=/models/osediff_sd3 data.backbone_prompts=vlm
    # one shard of N (slurm/data.sbatch runs them as an array job); an unsharded run merges them
    python -m coz_train.data ... data.shard=3 data.num_shards=16

Interrupted builds continue where they stopped (finished parts are kept). With a resampler upscaler
shards make no sense (the build is cheap): the whole set is built.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from coz_train.cli import hydra_errors, run_hydra
from coz_train.config import config_dir, register_configs

register_configs()
log = logging.getLogger(__name__)


def prebuild(cfg: DictConfig) -> str:
    """Build (or find) this config's samples, or with data.num_shards > 1 one shard's parts; returns the folder."""
    import torch

    from coz_train.data.chains import build_shard, uses_backbone
    from coz_train.data.dataset import build_zoom_dataset, cache_target, check_data_config, image_source

    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    data = cfg.data
    check_data_config(data)
    if data.num_shards > 1 and uses_backbone(data):
        source = image_source(data)
        return str(build_shard(data, cfg.seed, cfg.policy, source, cache_target(data, cfg.seed, cfg.policy, source)))
    if data.num_shards > 1:
        log.info("data.upscaler=%s is a resampler: building the whole set, not shard %d/%d",
                 data.upscaler, data.shard, data.num_shards)
        data.shard, data.num_shards = 0, 1
    ds = build_zoom_dataset(data, cfg.seed, cfg.policy)
    folder = ds.cache_files[0]["filename"].rsplit("/", 1)[0] if ds.cache_files else "(in memory)"
    log.info("Training samples ready: %d rows in %s", len(ds), folder)
    return folder


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    with hydra_errors():
        prebuild(cfg)


if __name__ == "__main__":
    run_hydra(main, job="data")  # the run folder's log is data.log, not train.log
