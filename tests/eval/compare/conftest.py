"""Eval runs to compare: one real smoke evaluation per session, and runs made from its chains through the record.

The evaluation (`smoke_run`) is `+experiment=smoke_eval` with the bicubic backbone on 12 crops of the shipped
photographs (real images, 160 px), bicubic and the CoZ chain with null and VLM prompts, two steps (4x, 16x),
BRISQUE and PIQE: a few seconds on one CPU thread, and about 1.5 s for each run `derive` makes. `derive(...)` writes another run folder as the evaluation writes one
(`record.open_record`, `record.write_sample`) from the smoke run's chains, with chosen methods' states
blurred (a planted degradation) or perturbed by seeded noise (the run-to-run variation of a stochastic
backbone, one draw per seed), and those chains scored again with the metrics of `eval.metrics`
(`run.score_chains`; other scores of those chains, derived from them, are left out); the other methods
keep all their scores.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

SMOKE = ["+experiment=smoke_eval", "eval/backbone=bicubic", "eval.methods=[bicubic,recursive_multiscale]",
         "eval.prompt_sources=[null,vlm]", "eval.steps=2", "eval.metrics=[brisque,piqe]", "eval.figures=false"]
SHIPPED = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
CROP = 160

sys.path.insert(0, str(Path(__file__).parent))  # compare_helpers: runs of hand-written scores


@pytest.fixture(scope="session")
def eval_images(tmp_path_factory) -> Path:
    """12 real images: two corner crops of each of six shipped photographs."""
    from skimage import data

    folder = tmp_path_factory.mktemp("eval_images")
    k = 0
    for name in SHIPPED:
        pixels = np.asarray(getattr(data, name)())
        h, w = pixels.shape[:2]
        for top, left in ((0, 0), (h - CROP, w - CROP)):
            Image.fromarray(pixels[top : top + CROP, left : left + CROP]).save(folder / f"{k:04d}.png")
            k += 1
    return folder


@pytest.fixture(scope="session")
def run_smoke(compose_cfg, eval_images, tmp_path_factory) -> Callable[..., Path]:
    """run_smoke(name, *overrides) -> the folder of a real smoke evaluation of the 12 images."""
    from coz_train.eval.run import evaluate

    root = tmp_path_factory.mktemp("eval_runs")

    def run(name: str, *overrides: str) -> Path:
        return evaluate(compose_cfg([*SMOKE, f"eval.image_dir={eval_images}", *overrides], root / name))

    return run


@pytest.fixture(scope="session")
def smoke_run(run_smoke) -> Path:
    return run_smoke("smoke")


def read_chains(run: Path, image: str, steps: int) -> list:
    """The chains of one image of a run folder, as the evaluation saved them."""
    from coz_train.sr.chain import Chain

    folder = run / "per-sample" / image
    chains = []
    for method in dict.fromkeys(m for m, *_ in json.loads((folder / "scores.json").read_text())["scores"]):
        prompts = json.loads((folder / method / "prompts.json").read_text())
        states = [Image.open(folder / method / f"{k}.png").convert("RGB") for k in range(steps + 1)]
        chains.append(Chain(method, states, [prompts[str(k)] for k in range(1, steps + 1)]))
    return chains


def _noisy(image: Image.Image, sd: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sd, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def derive(smoke_run, tmp_path_factory) -> Callable[..., Path]:
    """derive(name, seed=None, blur={method: radius}, noise={method: sd}) -> a run folder made from smoke_run's
    chains: `seed` is the eval seed of its record (None: the smoke run's), states k >= 1 of the `blur` methods
    blurred, of the `noise` methods perturbed by Gaussian noise drawn from (seed, image, method)."""
    import torch

    from coz_train.eval.merge import merge
    from coz_train.eval.record import open_record, recorded_config, write_sample
    from coz_train.eval.run import score_chains
    from coz_train.image_quality import build_metrics

    config = recorded_config(smoke_run)
    steps = config.eval.steps
    scales = [config.eval.scale**k for k in range(1, steps + 1)]
    metrics, _ = build_metrics(list(config.eval.metrics), torch.device("cpu"))
    root = tmp_path_factory.mktemp("derived_runs")
    made: dict[tuple, Path] = {}

    def make(name: str, seed: int | None = None, blur: dict[str, float] | None = None,
             noise: dict[str, float] | None = None) -> Path:
        key = (name, seed, tuple(sorted((blur or {}).items())), tuple(sorted((noise or {}).items())))
        if key in made:
            return made[key]
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = config.copy()
        cfg.seed = config.seed if seed is None else seed
        cfg.output_dir = str(out)
        open_record(out, cfg)
        for folder in sorted((smoke_run / "per-sample").iterdir()):
            image = folder.name
            old = [tuple(s) for s in json.loads((folder / "scores.json").read_text())["scores"]]
            changed = set(blur or {}) | set(noise or {})
            chains = read_chains(smoke_run, image, steps)
            for chain in chains:
                rng = np.random.default_rng([cfg.seed, int(image), len(chain.method), sum(map(ord, chain.method))])
                for k in range(1, steps + 1):
                    if chain.method in (noise or {}):
                        chain.states[k] = _noisy(chain.states[k], noise[chain.method], rng)
                    if chain.method in (blur or {}):
                        chain.states[k] = chain.states[k].filter(ImageFilter.GaussianBlur(blur[chain.method]))
            rescored = score_chains([c for c in chains if c.method in changed], [None] * steps, metrics, scales)
            scores = [s for s in old if s[0] not in changed] + rescored
            write_sample(out, image, chains, scores, {})
        merge(cfg)  # results.csv and results.md, as a finished evaluation has them
        made[key] = out
        return out

    return make
