"""Real-size models with random weights, built from the configs that ship in the package: `random:<hub id>`.

`random:Qwen/Qwen2.5-VL-3B-Instruct` (the policy) and `random:Qwen/Qwen2.5-VL-7B-Instruct` (a critic) in
`policy.name_or_path` / `critic.name_or_path` build the published architecture (`coz_train.tiny.published`)
with seeded random weights, once, into the cache (`$COZ_TRAIN_CACHE/random/`, like the tiny models), and
from then on load from that folder with the same `from_pretrained` code as the real checkpoint. Nothing is
downloaded, so a run at the real size (speed, memory) needs no hub access:

    python -m coz_train +experiment=grpo_qwen critic=qwen2_5_vl_7b \
        policy.name_or_path=random:Qwen/Qwen2.5-VL-3B-Instruct critic.name_or_path=random:Qwen/Qwen2.5-VL-7B-Instruct

Names: `random:<hub id>[:<N>layers][@<seed>]`. `:<N>layers` keeps the widths and vocabulary and builds N
language-model layers and N vision blocks (e.g. `:2layers`, a CPU check of every real shape); `@<seed>`
(default 0) seeds the weights. The weights are drawn as transformers initialises the architecture, in
bfloat16 (the published checkpoints' dtype), on the CPU's cores in seeded chunks (`fill_random`), so a name
gives the same weights on every machine.

The tokenizer is not the real one (that would need a download): it is a byte-level BPE with the real
vocabulary size and the real special tokens at their real ids (`build_full_vocabulary_tokenizer`: 151,643
ordinary tokens, `<|endoftext|>` = 151643 ... `<|file_sep|>` = 151664), under the published embedding of
151,936 rows (152,064 for the 7B), so the output head costs what the real one does. Its ordinary tokens
are bytes and space-led lower-case words: what a random model writes decodes to words and encodes back to
as many tokens, so the critic reads completions as long as the real tokenizer would make them. Prompt text
tokenizes into somewhat more tokens than with the real tokenizer (~50 instead of ~30 for the CoZ system
prompt, against 648 image tokens). The image processor is the published one (`preprocessor_config.json`).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from coz_train.tiny.models import build_once, cache_root
from coz_train.tiny.published import FIRST_SPECIAL_ID, GENERATION, PREPROCESSOR, SPECIAL_TOKENS, published_config
from coz_train.tiny.tokenizer import build_full_vocabulary_tokenizer

RANDOM_VERSION = 1  # bump when what a random: folder holds changes, so old cache folders are not reused
_NAME = re.compile(r"^random:(?P<hub_id>[^:@]+)(?::(?P<layers>\d+)layers)?(?:@(?P<seed>\d+))?$")


def parse_random(name: str) -> tuple[str, int | None, int]:
    """`random:Qwen/Qwen2.5-VL-3B-Instruct:2layers@1` -> ("Qwen/Qwen2.5-VL-3B-Instruct", 2, 1)."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"Bad random model name '{name}': use random:<hub id>[:<N>layers][@<seed>], "
                         "e.g. random:Qwen/Qwen2.5-VL-3B-Instruct.")
    layers = int(match["layers"]) if match["layers"] else None
    if layers == 0:
        raise ValueError(f"'{name}': a model needs at least one layer.")
    published_config(match["hub_id"])  # an unknown hub id stops here, with the known ones
    return match["hub_id"], layers, int(match["seed"] or 0)


def random_model_folder(name: str) -> Path:
    hub_id, layers, seed = parse_random(name)
    depth = f"-{layers}layers" if layers else ""
    return cache_root() / "random" / f"{hub_id.replace('/', '--')}{depth}-seed{seed}-v{RANDOM_VERSION}"


def random_model_config(name: str) -> Any:
    """The transformers config that `name` builds (from the published values; `:<N>layers` applied)."""
    from transformers import Qwen2_5_VLConfig

    hub_id, layers, _ = parse_random(name)
    return Qwen2_5_VLConfig.from_dict(published_config(hub_id, layers))


def build_processor() -> Any:
    """The published Qwen2.5-VL processor around the full-vocabulary offline tokenizer."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = build_full_vocabulary_tokenizer(FIRST_SPECIAL_ID, SPECIAL_TOKENS)
    pixels = {k: PREPROCESSOR[k] for k in ("min_pixels", "max_pixels")}
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**PREPROCESSOR),
                               video_processor=Qwen2VLVideoProcessor(**pixels), tokenizer=tokenizer,
                               chat_template=tokenizer.chat_template)


def fill_random(model: torch.nn.Module, seed: int, std: float) -> None:
    """Seeded random weights as transformers initialises this architecture (matrices and convolutions
    normal(0, std), biases 0, norm weights 1), drawn in chunks of 4M values on every CPU core: each chunk from
    its own generator, seeded by (seed, parameter, chunk), so the weights do not depend on the thread count
    (torch draws normal values on one thread: the 12B values of both models would take minutes)."""
    chunk = 1 << 22
    jobs = []
    unique = {id(p): (name, p) for name, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    for index, (name, param) in enumerate(sorted(unique.values(), key=lambda item: item[0])):
        flat = param.data.view(-1)
        if param.ndim == 1:
            flat.fill_(0.0 if name.endswith(".bias") else 1.0)
            continue
        jobs += [(flat[start:start + chunk], (seed << 40) + (index << 20) + start // chunk)
                 for start in range(0, flat.numel(), chunk)]

    def draw(job: tuple[torch.Tensor, int]) -> None:
        job[0].normal_(0.0, std, generator=torch.Generator().manual_seed(job[1]))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(draw, jobs))


def build_random_model(name: str, out_dir: Path) -> None:
    """Config, generation config, processor and seeded random bfloat16 weights of `name`, saved in `out_dir`."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = random_model_config(name)
    with no_init_weights():  # drawn below, in parallel
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.tie_weights()  # the 3B's output head is its embedding (skipped with the initialisation)
    fill_random(model, parse_random(name)[2], config.text_config.initializer_range)
    model.generation_config = GenerationConfig(**GENERATION)
    model.save_pretrained(out_dir)
    build_processor().save_pretrained(out_dir)


def ensure_random_model(name: str) -> str:
    """Build the model named `random:<hub id>[:<N>layers][@<seed>]` if needed; return its folder."""
    return build_once(random_model_folder(name), "config.json",
                      lambda folder: build_random_model(name, folder))
