"""Critic reward: a critic VLM sees both zoom images and the candidate prompt and scores it.

The critic gets [previous state, zoomed image] and an instruction (`critic.instruction`) asking
for an integer 0..`critic.score_max` for how accurately and usefully the prompt describes the
zoomed image given the wider view; the reward is score / score_max in [0, 1].

Scoring modes (`critic.scoring`):
- `generate`: the critic writes its answer (greedy) and the first number in it is the score, as
  in the paper. An answer without a number in range gives None for that completion (TRL then
  leaves it out of the group baseline); the fraction is logged as `critic/unparsable`.
- `logits`: one forward pass; the score is the expectation of the next-token distribution
  restricted to the tokens "0".."score_max". Cheaper and never unparsable, but every score must be
  a single token: tokenizers that split numbers into digits (Qwen, InternLM) need score_max <= 9.

Backends (`critic.backend`):
- `hf`: any transformers image-text-to-text model with a chat template (Qwen2.5-VL-7B, native
  InternVL "-hf" checkpoints, ...); both scoring modes; candidates scored in batches.
- `internvl_remote`: InternVL2/2.5 checkpoints whose language model transformers does not
  implement (InternVL2.5-8B uses InternLM2.5), loaded with `trust_remote_code` and scored through
  the checkpoint's documented `chat` API with its 448-px tiling; `generate` mode only.

The critic is frozen: eval mode, no gradients, on `critic.device`.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.hub import resolve_model
from coz_train.policy.load import load_processor, load_vlm, torch_dtype
from coz_train.rewards.registry import register
from coz_train.rewards.text import completion_text

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)")


def parse_score(answer: str, score_max: int) -> float | None:
    """The first number in the answer, if it lies in [0, score_max]; else None (never a fake 0)."""
    match = _NUMBER.search(answer)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= score_max else None


def critic_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class HFCritic:
    """A transformers image-text-to-text critic scoring batches of (images, prompt text)."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        path = resolve_model(cfg.name_or_path, "critic.name_or_path", cfg.revision)
        self.cfg, self.device = cfg, device
        self.processor = load_processor(path, cfg)
        self.processor.tokenizer.padding_side = "left"  # last position = next token for every row
        self.model = _frozen(load_vlm(path, cfg).to(device))
        self.score_token_ids = self._score_tokens() if cfg.scoring == "logits" else None

    def _score_tokens(self) -> torch.Tensor:
        tokenizer = self.processor.tokenizer
        ids = []
        for value in range(self.cfg.score_max + 1):
            pieces = tokenizer.encode(str(value), add_special_tokens=False)
            if len(pieces) != 1:
                raise ValueError(
                    f"critic.scoring=logits needs every score 0..{self.cfg.score_max} to be one token, but "
                    f"'{value}' is {len(pieces)} tokens for {self.cfg.name_or_path}: set critic.score_max=9 "
                    "or use critic.scoring=generate."
                )
            ids.append(pieces[0])
        return torch.tensor(ids, device=self.device)

    def conversation(self, images: list, text: str) -> list[dict]:
        instruction = self.cfg.instruction.format(prompt=text, score_max=self.cfg.score_max)
        parts = [{"type": "image", "image": image} for image in images]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": instruction}]}]

    @torch.no_grad()
    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        inputs = self.processor.apply_chat_template(
            [self.conversation(imgs, text) for imgs, text in zip(images, texts, strict=True)],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
        ).to(self.device)
        if self.score_token_ids is not None:
            logits = self.model(**inputs).logits[:, -1, :].float()  # [N, vocab]
            probs = torch.softmax(logits[:, self.score_token_ids], dim=-1)  # [N, score_max + 1]
            values = torch.arange(self.cfg.score_max + 1, device=self.device, dtype=probs.dtype)
            return (probs @ values).tolist()
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [parse_score(answer, self.cfg.score_max) for answer in answers]


class InternVLRemoteCritic:
    """InternVL2/2.5 through its own remote code: `model.chat` with per-image tile counts."""

    MEAN, STD, TILE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 448

    def __init__(self, cfg: DictConfig, device: torch.device, max_tiles: int = 6):
        if cfg.scoring != "generate":
            raise ValueError("critic.backend=internvl_remote supports critic.scoring=generate only.")
        if not cfg.trust_remote_code:
            raise ValueError(f"{cfg.name_or_path} needs its remote code: set critic.trust_remote_code=true.")
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(cfg.name_or_path, "critic.name_or_path", cfg.revision)
        self.cfg, self.device, self.max_tiles = cfg, device, max_tiles
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=True, use_fast=False)
        dtype = torch_dtype(cfg.dtype)
        self.dtype = torch.bfloat16 if dtype == "auto" else dtype
        model = AutoModel.from_pretrained(path, revision=cfg.revision, dtype=self.dtype, trust_remote_code=True)
        self.model = _frozen(model.to(device))

    def tiles(self, image: Any) -> torch.Tensor:
        """The checkpoint's dynamic tiling: the grid (<= max_tiles) closest to the aspect ratio, plus a thumbnail."""
        import torchvision.transforms.functional as F

        w, h = image.size
        grids = sorted({(i, j) for n in range(1, self.max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1) if i * j <= self.max_tiles}, key=lambda g: g[0] * g[1])
        cols, rows = min(grids, key=lambda g: abs(w / h - g[0] / g[1]))
        resized = image.resize((cols * self.TILE, rows * self.TILE))
        crops = [resized.crop((c * self.TILE, r * self.TILE, (c + 1) * self.TILE, (r + 1) * self.TILE)) for r in range(rows) for c in range(cols)]
        if len(crops) > 1:
            crops.append(image.resize((self.TILE, self.TILE)))
        tensors = [F.normalize(F.to_tensor(c.convert("RGB")), self.MEAN, self.STD) for c in crops]
        return torch.stack(tensors)  # [tiles, 3, 448, 448]

    @torch.no_grad()
    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        scores = []
        for imgs, text in zip(images, texts, strict=True):
            tiles = [self.tiles(image) for image in imgs]
            pixel_values = torch.cat(tiles).to(self.device, self.dtype)
            header = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(imgs)))
            question = header + self.cfg.instruction.format(prompt=text, score_max=self.cfg.score_max)
            answer = self.model.chat(
                self.tokenizer,
                pixel_values,
                question,
                dict(max_new_tokens=self.cfg.max_new_tokens, do_sample=False),
                num_patches_list=[t.shape[0] for t in tiles],
            )
            scores.append(parse_score(answer, self.cfg.score_max))
        return scores


BACKENDS = {"hf": HFCritic, "internvl_remote": InternVLRemoteCritic}


class CriticReward:
    """TRL reward function scoring each completion with the critic, in batches of critic.batch_size."""

    __name__ = "critic"

    def __init__(self, backend: Any, score_max: int, batch_size: int):
        self.backend, self.score_max, self.batch_size = backend, score_max, batch_size

    def _score_with_backoff(self, images: list, texts: list[str]) -> list[float | None]:
        """Score in batches; on out-of-memory halve the batch and retry, down to one candidate."""
        out: list[float | None] = []
        batch, start = self.batch_size, 0
        while start < len(texts):
            try:
                out += self.backend.score(images[start : start + batch], texts[start : start + batch])
                start += batch
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)
                torch.cuda.empty_cache()
                log.warning("Critic out of memory: retrying with batch size %d (critic.batch_size=%d)", batch, self.batch_size)
        return out

    def __call__(self, prompts: list | None = None, completions: list | None = None, images: list | None = None,
                 log_metric: Any = None, **kwargs: Any) -> list[float | None]:
        completions = completions or []
        if images is None or len(images) != len(completions):
            raise ValueError("The critic reward needs the samples' `images` column ([previous state, zoomed image]).")
        texts = [completion_text(c) for c in completions]
        scores = self._score_with_backoff(list(images), texts)
        rewards = [None if s is None or not math.isfinite(s) else s / self.score_max for s in scores]
        if log_metric is not None and rewards:
            log_metric("critic/unparsable", sum(r is None for r in rewards) / len(rewards))
        return rewards


@register("critic")
def build_critic_reward(params: dict[str, Any], cfg: DictConfig) -> CriticReward:
    critic = cfg.critic
    if critic.backend not in BACKENDS:
        raise ValueError(f"critic.backend='{critic.backend}' is not one of {sorted(BACKENDS)}.")
    if critic.scoring not in ("generate", "logits"):
        raise ValueError(f"critic.scoring='{critic.scoring}' must be 'generate' or 'logits'.")
    backend = BACKENDS[critic.backend](critic, critic_device(critic.device))
    log.info("Critic %s loaded (%s backend, %s scoring)", critic.name_or_path, critic.backend, critic.scoring)
    return CriticReward(backend, critic.score_max, critic.batch_size)
