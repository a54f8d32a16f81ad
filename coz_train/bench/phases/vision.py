"""The vision phase: the step's images through the vision tower, every row's (plain) vs each image once (fast).

The fast path is `perf.vision_cache`'s feature cache, which encodes each distinct image once and hands the
same features to every row of its group.
"""

from __future__ import annotations

import torch

from coz_train.bench.phases.checks import LOGITS_TOL, float32, rel_err
from coz_train.bench.phases.policy import PolicyBench
from coz_train.perf.vision_cache import VisionFeatureCache


def vision_phase(bench: PolicyBench) -> dict:
    own = bench.inner.model.library_image_features
    pixels, grid = bench.batch["pixel_values"], bench.batch["image_grid_thw"]
    with torch.no_grad():
        plain = bench.run(lambda: own(pixels, grid))
        fast = bench.run(lambda: VisionFeatureCache(own, grid.shape[0])(pixels, grid))
    return dict(plain=plain, fast=fast, floor_s=bench.vision_floor(), check=bench.checked(lambda: vision_check(bench)),
                work=dict(images=int(grid.shape[0]), unique_images=2 * bench.shape.groups,
                          unique_patches=bench.unique_patches))


def vision_check(bench: PolicyBench) -> dict:
    """fp32: group 0's image embeddings through the cache (each image once) vs the tower on every row's."""
    own = bench.inner.model.library_image_features
    one = bench.group(0)
    pixels, grid = one["pixel_values"], one["image_grid_thw"]
    with torch.no_grad(), float32(bench.policy, bench.dev):
        a = torch.cat(own(pixels, grid).pooler_output)
        b = torch.cat(VisionFeatureCache(own, grid.shape[0])(pixels, grid).pooler_output)
    err = rel_err(b, a)
    return dict(features_rel_err=err, bit_identical=bool(torch.equal(a, b)), images=int(grid.shape[0]),
                passed=err < LOGITS_TOL)
