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
- `server`: an OpenAI-compatible chat-completions endpoint at `critic.url` (nothing loads here,
  `critic.name_or_path` need not exist locally). One request per candidate, the images as PNG data
  URLs and the same instruction text as `hf`; `critic.concurrency` requests in flight,
  `critic.timeout_s` per request, `critic.retries` retries with exponential backoff on connection
  errors, timeouts and 5xx (never on 4xx), then `CriticUnavailableError` (never a fake score).
  `Authorization: Bearer $<critic.token_env>` is sent when that variable is set.
  Which scoring mode works with which server:
  - `python -m coz_train.critic_server` (this package): both modes, computed by the same code as
    `hf` (greedy; raw-logit logprobs). It answers any `top_logprobs` (-1 = the whole vocabulary),
    so `logits` is exactly the in-process score when K covers the score tokens (see below).
  - vLLM / SGLang OpenAI servers: `generate` always; `logits` through `logprobs: true` +
    `top_logprobs: K` when the server returns them (else a clear CriticRequestError). vLLM (checked
    in its chat-completions protocol and sampling params): `top_logprobs` without `logprobs: true`
    is a 400; K is capped by the server's `--max-logprobs` (default 20; -1 = the vocabulary), a
    larger K is a 400 "Requested sample logprobs of N, which is greater than max allowed: 20";
    its default `--logprobs-mode raw_logprobs` reports the raw logits' log-probabilities (before
    temperature, penalties and logits processors), as the in-process `logits` mode uses; the
    answer is `choices[0].logprobs.content[i].top_logprobs` = [{token, logprob, bytes}].
  In `logits` mode the expectation is over the score tokens "0".."score_max" found among the K
  returned tokens, renormalised; exact only when all score_max + 1 of them are in the top K
  (K >= score_max + 1 is necessary, not sufficient; a missing score token is less likely than
  every returned token). No score token in the top K gives None for that candidate. K is
  `ServerCritic(top_logprobs=...)`, else `critic.top_logprobs` if the config has that key, else
  max(20, score_max + 1) (OpenAI's and vLLM's default maximum). Serve two images per prompt (vLLM:
  `--limit-mm-per-prompt '{"image": 2}'`) and give vLLM's `--api-key` to `critic.token_env`.

The critic is frozen: eval mode, no gradients, on `critic.device`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from http.client import HTTPException
from typing import Any

import torch
from omegaconf import DictConfig

from coz_train.hub import resolve_model
from coz_train.perf import critic_prefix
from coz_train.perf.critic_prefix import Generation
from coz_train.perf.prefix import check_supported
from coz_train.policy.load import encode_chats, load_processor, load_vlm, torch_dtype
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


def instruction_text(cfg: Any, text: str) -> str:
    """The critic's instruction for one candidate prompt (shared by every backend)."""
    return cfg.instruction.format(prompt=text, score_max=cfg.score_max)


def critic_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class HFCritic:
    """A transformers image-text-to-text critic scoring batches of (images, prompt text).

    The pieces (`conversation`, `encode`, `next_token_logits`, `generate`) are shared with the critic
    server (`coz_train.critic_server`), which runs the same code on conversations it receives.

    `shared_prefix` (`perf.critic_prefix`, Qwen2-VL / Qwen2.5-VL critics): conversations with the same
    images run their common prefix once and only their own suffixes on top (`coz_train.perf.critic_prefix`);
    same scores as the plain path within float rounding.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, shared_prefix: bool = False):
        path = resolve_model(cfg.name_or_path, "critic.name_or_path", cfg.revision)
        self._setup(cfg, device, load_processor(path, cfg), load_vlm(path, cfg), shared_prefix)

    @classmethod
    def from_parts(cls, cfg: DictConfig, device: torch.device, processor: Any, model: torch.nn.Module,
                   shared_prefix: bool = False) -> HFCritic:
        """A critic around a model and processor already in memory (the benchmark builds them from config)."""
        critic = cls.__new__(cls)
        critic._setup(cfg, device, processor, model, shared_prefix)
        return critic

    def _setup(self, cfg: DictConfig, device: torch.device, processor: Any, model: torch.nn.Module,
               shared_prefix: bool) -> None:
        self.cfg, self.device, self.shared_prefix = cfg, device, shared_prefix
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # last position = next token for every row
        self.model = _frozen(model.to(device))
        if shared_prefix:
            check_supported(self.model, "perf.critic_prefix")
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
        parts = [{"type": "image", "image": image} for image in images]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": instruction_text(self.cfg, text)}]}]

    def encode(self, conversations: list[list[dict]]) -> Any:
        return encode_chats(self.processor, conversations).to(self.device)

    @torch.no_grad()
    def next_token_logits(self, conversations: list[list[dict]]) -> torch.Tensor:
        """Raw logits of the first answer token, [N, vocab] float32."""
        if self.shared_prefix:
            return critic_prefix.next_token_logits(self.model, self.encode(conversations), conversations,
                                                   self.processor.tokenizer.pad_token_id)
        return self.model(**self.encode(conversations)).logits[:, -1, :].float()

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], max_new_tokens: int, output_logits: bool = False) -> Generation:
        """Greedy decoding of a batch; rows are cut after their first end-of-sequence token."""
        if self.shared_prefix:
            return critic_prefix.generate(self.model, self.encode(conversations), conversations, max_new_tokens,
                                          eos_token_ids=self.eos_token_ids,
                                          pad_token_id=self.processor.tokenizer.pad_token_id,
                                          output_logits=output_logits)
        inputs = self.encode(conversations)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  return_dict_in_generate=True, output_logits=output_logits)
        new = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        logits = torch.stack(out.logits, dim=1).float() if output_logits else None  # [N, steps, vocab]
        return Generation.cut(new, self.eos_token_ids, logits, inputs["attention_mask"].sum(dim=1).tolist())

    def decode(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def score_conversations(self, conversations: list[list[dict]]) -> list[float | None]:
        if self.score_token_ids is not None:
            logits = self.next_token_logits(conversations)  # [N, vocab]
            probs = torch.softmax(logits[:, self.score_token_ids], dim=-1)  # [N, score_max + 1]
            values = torch.arange(self.cfg.score_max + 1, device=self.device, dtype=probs.dtype)
            return (probs @ values).tolist()
        answers = [self.decode(t) for t in self.generate(conversations, self.cfg.max_new_tokens).tokens]
        return [parse_score(answer, self.cfg.score_max) for answer in answers]

    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        return self.score_conversations([self.conversation(imgs, t) for imgs, t in zip(images, texts, strict=True)])


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
            question = header + instruction_text(self.cfg, text)
            answer = self.model.chat(
                self.tokenizer,
                pixel_values,
                question,
                dict(max_new_tokens=self.cfg.max_new_tokens, do_sample=False),
                num_patches_list=[t.shape[0] for t in tiles],
            )
            scores.append(parse_score(answer, self.cfg.score_max))
        return scores


class CriticUnavailableError(RuntimeError):
    """The critic server could not be reached (or kept failing) after every retry."""


class CriticRequestError(RuntimeError):
    """The critic server refused a request (4xx) or answered something that is not a chat completion."""


def png_data_url(image: Any) -> str:
    """A PIL image (or an HxW[xC] uint8 array) as a lossless `data:image/png;base64,...` URL."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        image = Image.fromarray(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def expected_score(top_logprobs: list[dict], score_max: int) -> float | None:
    """E[score] over the score tokens "0".."score_max" among `top_logprobs`, renormalised; None if none is there."""
    wanted = {str(v): v for v in range(score_max + 1)}
    found: dict[int, float] = {}
    for entry in top_logprobs:
        value = wanted.get(entry.get("token")) if isinstance(entry, dict) else None
        logprob = entry.get("logprob") if value is not None else None
        if value is not None and value not in found and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            found[value] = float(logprob)
    if not found:
        return None
    top = max(found.values())
    weights = {v: math.exp(lp - top) for v, lp in found.items()}
    return sum(v * w for v, w in weights.items()) / sum(weights.values())


class _Retryable(Exception):
    pass


class ServerCritic:
    """A critic behind an OpenAI-compatible chat-completions server (see the module docstring)."""

    DEFAULT_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs (and OpenAI's maximum)

    def __init__(self, cfg: DictConfig, device: Any = None, *, backoff_s: float = 1.0, top_logprobs: int | None = None):
        if not cfg.url:
            raise ValueError(
                "critic.backend=server needs critic.url, the critic server's address "
                "(e.g. critic.url=http://127.0.0.1:8000; start one with python -m coz_train.critic_server)."
            )
        url = str(cfg.url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"critic.url='{cfg.url}' must start with http:// or https://.")
        self.base_url = url.removesuffix("/chat/completions").removesuffix("/v1")  # accept .../v1[/chat/completions]
        self.url = self.base_url + "/v1/chat/completions"
        self.cfg, self.backoff_s = cfg, backoff_s
        self.model_name = cfg.served_model or cfg.name_or_path
        if cfg.scoring == "logits" and cfg.score_max > 9:
            log.warning("critic.scoring=logits over a server reads the scores 0..%d as single tokens; tokenizers "
                        "that split numbers into digits (Qwen, InternLM) never produce the scores above 9.",
                        cfg.score_max)
        if top_logprobs is None:
            top_logprobs = cfg.top_logprobs if "top_logprobs" in cfg else None
        self.top_logprobs = max(self.DEFAULT_TOP_LOGPROBS, cfg.score_max + 1) if top_logprobs is None else top_logprobs
        token = os.environ.get(cfg.token_env) if cfg.token_env else None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # direct, never via a proxy
        self._pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="critic-client")
        self._lock = threading.Lock()
        self.attempts = 0  # HTTP attempts made, retries included
        self._probe()

    def _probe(self) -> None:
        """One quick GET /health: a warning (not an error) if the server is not up yet."""
        request = urllib.request.Request(self.base_url + "/health", headers=self._headers)
        try:
            with self._opener.open(request, timeout=min(5.0, self.cfg.timeout_s)) as response:
                body = response.read()
            model = json.loads(body).get("model") if body.lstrip().startswith(b"{") else None  # vLLM: empty body
            if model is not None and model != self.model_name:
                log.warning("The critic server at %s serves '%s', but requests name '%s' (critic.served_model).",
                            self.base_url, model, self.model_name)
        except (OSError, HTTPException, ValueError) as err:
            log.warning("The critic server at %s is not answering yet (%s); requests will retry.", self.base_url, err)

    def payload(self, images: list, text: str) -> dict:
        content = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images]
        content.append({"type": "text", "text": instruction_text(self.cfg, text)})
        body: dict[str, Any] = {"model": self.model_name, "messages": [{"role": "user", "content": content}],
                                "temperature": 0}
        if self.cfg.scoring == "logits":
            body.update(max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            body.update(max_tokens=self.cfg.max_new_tokens)
        return body

    def _post(self, data: bytes) -> dict:
        request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.cfg.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_message(err)
            if err.code >= 500:
                raise _Retryable(f"HTTP {err.code}: {detail}") from None
            raise CriticRequestError(f"The critic server at {self.url} refused the request: HTTP {err.code}: {detail}") from None
        except (OSError, HTTPException) as err:  # refused, reset, timed out, closed mid-response
            raise _Retryable(f"{type(err).__name__}: {getattr(err, 'reason', None) or err}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise CriticRequestError(f"The critic server at {self.url} answered with something that is not JSON: "
                                     f"{body[:200]!r}") from None

    def request(self, body: dict) -> dict:
        """POST one chat completion, retrying connection errors, timeouts and 5xx with exponential backoff."""
        data = json.dumps(body).encode()
        attempts, last = 1 + max(0, self.cfg.retries), None
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(60.0, self.backoff_s * 2 ** (attempt - 1)))
            with self._lock:
                self.attempts += 1
            try:
                return self._post(data)
            except _Retryable as err:
                last = err
                log.warning("Critic request to %s failed (attempt %d/%d): %s", self.url, attempt + 1, attempts, err)
        raise CriticUnavailableError(
            f"The critic server at {self.url} is unavailable: {attempts} attempts failed "
            f"(critic.retries={self.cfg.retries}, critic.timeout_s={self.cfg.timeout_s}); last error: {last}"
        )

    def score_response(self, response: dict) -> float | None:
        try:
            choice = response["choices"][0]
            if self.cfg.scoring == "generate":
                return parse_score(choice["message"].get("content") or "", self.cfg.score_max)
            logprobs = choice.get("logprobs")
            if not logprobs or logprobs.get("content") is None:
                raise CriticRequestError(
                    f"The critic server at {self.url} returned no logprobs: it does not support them; "
                    "use critic.scoring=generate.")
            tokens = logprobs["content"]
            return expected_score(tokens[0].get("top_logprobs") or [], self.cfg.score_max) if tokens else None
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise CriticRequestError(f"The critic server at {self.url} answered an unexpected shape ({err!r}): "
                                     f"{json.dumps(response)[:300]}") from None

    def _score_one(self, images: list, text: str) -> float | None:
        return self.score_response(self.request(self.payload(images, text)))

    def score(self, images: list[list], texts: list[str]) -> list[float | None]:
        futures = [self._pool.submit(self._score_one, imgs, text) for imgs, text in zip(images, texts, strict=True)]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _error_message(err: urllib.error.HTTPError) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    try:
        raw = err.read()
    except (OSError, HTTPException):
        return err.reason or ""
    try:
        body = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else error
        return str(message if message is not None else body)[:500]
    except ValueError:
        return raw[:300].decode("utf-8", "replace") or str(err.reason)


BACKENDS = {"hf": HFCritic, "internvl_remote": InternVLRemoteCritic, "server": ServerCritic}


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


def critic_prefix_wanted(cfg: DictConfig) -> bool:
    """`perf.critic_prefix`, refused (before anything loads) for backends it cannot apply to."""
    perf = cfg.get("perf")
    wanted = bool(perf.get("critic_prefix", False)) if perf is not None else False
    if wanted and cfg.critic.backend != "hf":
        hint = (" (with critic.backend=server, start the critic server with perf.critic_prefix=true instead)"
                if cfg.critic.backend == "server" else "")
        raise ValueError(f"perf.critic_prefix works with critic.backend=hf, not '{cfg.critic.backend}': "
                         f"set perf.critic_prefix=false{hint}.")
    return wanted


@register("critic")
def build_critic_reward(params: dict[str, Any], cfg: DictConfig) -> CriticReward:
    critic = cfg.critic
    if critic.backend not in BACKENDS:
        raise ValueError(f"critic.backend='{critic.backend}' is not one of {sorted(BACKENDS)}.")
    if critic.scoring not in ("generate", "logits"):
        raise ValueError(f"critic.scoring='{critic.scoring}' must be 'generate' or 'logits'.")
    shared_prefix = critic_prefix_wanted(cfg)
    if critic.backend == "server":
        backend = ServerCritic(critic)
        log.info("Critic %s at %s (%s scoring)", backend.model_name, backend.url, critic.scoring)
    else:
        extra = {"shared_prefix": True} if shared_prefix else {}
        backend = BACKENDS[critic.backend](critic, critic_device(critic.device), **extra)
        if critic.backend == "hf" and cfg.get("perf") is not None and cfg.perf.get("image_cache", False):
            from coz_train.perf.image_cache import install_image_cache

            install_image_cache(backend.processor)
        log.info("Critic %s loaded (%s backend, %s scoring%s)", critic.name_or_path, critic.backend, critic.scoring,
                 ", shared prefix" if shared_prefix else "")
    return CriticReward(backend, critic.score_max, critic.batch_size)
